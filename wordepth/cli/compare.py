"""``wordepth-compare``: compare evaluation results as a Markdown table and a bar chart (PNG).

    wordepth-compare runs/paper/metrics.json runs/ours/metrics.json \\
        --labels paper ours --out compare.png --markdown compare.md

(``python scripts/compare.py ...`` is the same.) The table is printed as well; see
`wordepth.compare` for what the chart shows.
"""
from __future__ import annotations

import argparse

import cv2

from wordepth.errors import UserError, user_errors
from wordepth.compare import bar_chart, default_label, load_metrics, markdown_table
from wordepth.outputs import check_outputs, write_array, write_text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="wordepth-compare",
                                description="Compare metrics JSON files: bar chart PNG and Markdown table.")
    p.add_argument("files", nargs="+", help="metrics JSON files (as written by eval.py --metrics_json)")
    p.add_argument("--labels", nargs="+", default=None, help="one name per file (default: file names)")
    p.add_argument("--out", default=None, help="bar chart PNG to write")
    p.add_argument("--markdown", default=None, help="Markdown table to write (it is printed anyway)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    labels = args.labels or [default_label(f) for f in args.files]
    if len(labels) != len(args.files):
        raise SystemExit(f"error: {len(labels)} --labels for {len(args.files)} files")
    with user_errors():
        check_outputs({"--markdown": args.markdown, "--out": args.out}, inputs=args.files)
        if args.out and not cv2.haveImageWriter(args.out):
            raise UserError(f"--out {args.out}: cannot write a picture with this extension; use .png")
        results = [load_metrics(f) for f in args.files]
        table = markdown_table(results, labels)
        print(table, end="")
        if args.markdown:
            write_text(args.markdown, table)
        if args.out:
            write_array(args.out, bar_chart(results, labels))
    return 0


if __name__ == "__main__":
    main()

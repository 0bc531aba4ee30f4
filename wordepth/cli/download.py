"""``wordepth-download``: fetch the original release's split files, captions and CLIP text features.

Copies ``data_splits/``, ``text/`` and ``text_feat/`` of the original repository into this
project's layout (`wordepth.data.original_release`)::

    wordepth-download --out .
    wordepth-download --what splits text --out data/
    wordepth-download --repo_url file:///path/to/local/WorDepth

(``python scripts/download.py ...`` is the same.) Existing files are kept unless
``--overwrite``. A folder missing upstream is reported as a warning.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from wordepth.cli import common
from wordepth.errors import user_errors
from wordepth.outputs import check_outputs
from wordepth.data.original_release import DEFAULT_REPO_URL, FOLDERS, DownloadError, fetch_original_data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False,
        prog="wordepth-download",
        description="Fetch data_splits/, text/ and text_feat/ from the original WorDepth repository.")
    parser.add_argument("--repo_url", default=DEFAULT_REPO_URL,
                        help="git URL of the original repository (a local clone needs file://)")
    parser.add_argument("--ref", default="HEAD", help="branch or tag to fetch (default: the remote's default branch)")
    parser.add_argument("--out", default=".", help="project root to write the folders into")
    parser.add_argument("--what", nargs="+", choices=sorted(FOLDERS), default=list(FOLDERS),
                        help="which folders to fetch (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace files that already exist")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Fetch the requested folders and copy them under ``--out``."""
    args = build_parser().parse_args(argv)
    common.setup_logging()
    with user_errors(DownloadError):
        check_outputs({"--out": args.out}, folders=["--out"])
        copied, skipped = fetch_original_data(args.out, args.what, args.repo_url, args.ref, args.overwrite)
    print(f"{copied} files copied, {skipped} skipped (already present; --overwrite replaces them) "
          f"into {Path(args.out).resolve()}")


if __name__ == "__main__":
    main()

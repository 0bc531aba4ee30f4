"""``wordepth-text``: the text pipeline for a dataset split, one subcommand per step.

::

    wordepth-text caption  --images my_photos/ --dataset mine --split test     # CoCa captions
    wordepth-text extract  --dataset mine --split test --packed                # CLIP text features
    wordepth-text prepare  --images my_photos/ --dataset mine --split test     # both, then pack
    wordepth-text mean     --dataset mine --split train --out mean.pt          # the caption-free fallback

``wordepth-text SUBCOMMAND --help`` lists the options of each; ``python scripts/text.py SUBCOMMAND``
is the same command.
"""
from __future__ import annotations

import argparse

from wordepth.cli import caption, common, extract, mean, prepare

SUBCOMMANDS = {"caption": caption, "extract": extract, "prepare": prepare, "mean": mean}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False,
        prog="wordepth-text", description="Captions and CLIP text features for an image set.",
        epilog="Run `wordepth-text SUBCOMMAND --help` for the options of a step.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, module in SUBCOMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION,
                                           allow_abbrev=False))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    common.setup_logging()
    SUBCOMMANDS[args.command].run(args)


if __name__ == "__main__":
    main()

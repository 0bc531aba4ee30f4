"""``wordepth-text mean``: the mean caption feature of a split, the caption-free fallback of inference.

::

    wordepth-text mean --text_feat_dir text_feat --dataset nyu --split train --out mean_text_features.pt

Adds ``<dataset>_<split>_mean`` (1024,) and ``_count`` to ``--out`` (other entries are kept), in the
format of the means of the original release shipped as ``wordepth/assets/mean_text_features.pt``;
``wordepth-predict --mean_features FILE`` and ``Predictor(mean_features=FILE)`` use it.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from wordepth.cli import common
from wordepth.data.text_features import mean_feature, packed_paths, write_mean_features
from wordepth.errors import user_errors
from wordepth.outputs import OutputError, check_outputs

DESCRIPTION = "Average the caption features of a split (the caption-free fallback of inference)."
PROG = "wordepth-text mean"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this command."""
    parser.add_argument("--text_feat_dir", type=Path, default=Path("text_feat"), help="text feature root")
    parser.add_argument("--dataset", required=True, help="dataset folder under --text_feat_dir (nyu, kitti, ...)")
    parser.add_argument("--split", default="train", help="split folder (default: train)")
    parser.add_argument("--out", type=Path, default=Path("mean_text_features.pt"), help="file to add the mean to")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> Path:
    with user_errors():
        check_outputs({"--out": args.out}, inputs=packed_paths(args.text_feat_dir, args.dataset, args.split))
        features = (Path(args.text_feat_dir) / args.dataset / args.split).resolve()
        if Path(args.out).resolve().is_relative_to(features):
            raise OutputError(f"--out {args.out} is inside the folder of the features it averages ({features}); "
                              "choose a file outside it")
        mean, count = mean_feature(args.text_feat_dir, args.dataset, args.split, progress=not args.no_progress)
        out = write_mean_features(args.out, args.dataset, args.split, mean, count)
    logging.getLogger(__name__).info("mean of %d features of %s/%s (norm %.3f) written to %s", count,
                                     args.dataset, args.split, float(mean.norm()), out)
    return out


def main(argv: list[str] | None = None) -> None:
    common.setup_logging()
    run(common.parser(PROG, DESCRIPTION, add_arguments).parse_args(argv))


if __name__ == "__main__":
    main()

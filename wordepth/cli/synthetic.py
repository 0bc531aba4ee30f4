"""``wordepth-synthetic``: a small synthetic NYU and/or KITTI dataset in the original layouts.

Images, depth PNGs, split files, captions and CUDA-tagged text features
(`wordepth.data.generated.synthetic`), e.g.

    wordepth-synthetic --out data/synthetic --dataset both --n_train 16 --n_test 8

(``python scripts/synthetic.py ...`` is the same.)
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from wordepth.errors import user_errors
from wordepth.outputs import check_outputs
from wordepth.data.generated.synthetic import make_synthetic_dataset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False,
        prog="wordepth-synthetic", description="Write a small synthetic NYU and/or KITTI dataset (original layouts).")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--dataset", choices=("nyu", "kitti", "both"), default="nyu")
    parser.add_argument("--n_train", type=int, default=8, help="training images per dataset")
    parser.add_argument("--n_test", type=int, default=4, help="test images per dataset")
    parser.add_argument("--height", type=int, default=None, help="image height (default 480 NYU, 375 KITTI)")
    parser.add_argument("--width", type=int, default=None, help="image width (default 640 NYU, 1242 KITTI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of a synthetic dataset already in --out (default: refuse)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.n_train < 0 or args.n_test < 0:
        parser.error("--n_train and --n_test must be >= 0")
    datasets = ("nyu", "kitti") if args.dataset == "both" else (args.dataset,)
    log = logging.getLogger(__name__)
    with user_errors():
        check_outputs({"--out": args.out}, folders=["--out"])
    with tqdm(total=len(datasets) * (args.n_train + args.n_test), unit="image", disable=args.no_progress) as bar:
        for name in datasets:
            with user_errors():
                paths = make_synthetic_dataset(
                    args.out, name, args.n_train, args.n_test, args.height, args.width, args.seed, bar.update,
                    overwrite=args.overwrite,
                )
            log.info("%s: train split %s, test split %s", name, paths["train_split"], paths["test_split"])
    return 0


if __name__ == "__main__":
    main()

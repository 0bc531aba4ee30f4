"""``wordepth-text caption``: one COCO-style caption per image with an open_clip CoCa model.

Captions are written to `<text_dir>/<dataset>/<split>/<image path without
extension>.txt`, one line each, mirroring the image paths::

    # every image under a folder
    wordepth-text caption --images my_photos/ --dataset mine --split test
    # the images of a split file, relative to --data_path (like training)
    wordepth-text caption --filenames_file data_splits/nyudepthv2_test_files_with_gt.txt \\
        --data_path /data/nyu_v2/official_splits/test/ --dataset nyu --split test
    # offline: a local copy of the CoCa weights
    wordepth-text caption ... --weights_path ~/weights/coca_ViT-L-14_mscoco.bin

(``python scripts/text.py caption ...`` is the same.) Images that already have a caption
file are skipped (resumable) unless `--overwrite`. The original release used ExpansionNet v2
captions; CoCa's describe the same things in different words.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable

from torch import nn

from wordepth.cli import common
from wordepth.errors import user_errors
from wordepth.outputs import check_outputs
from wordepth.text.clip_features import WeightsUnavailableError
from wordepth.text.pipeline import caption_split

DESCRIPTION = "Caption images with CoCa into the text/ layout."
PROG = "wordepth-text caption"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this command."""
    common.add_image_source_args(parser)
    common.add_layout_args(parser)
    common.add_model_args(parser, "caption")
    common.add_cache_dir_arg(parser)
    common.add_device_arg(parser)
    parser.add_argument("--batch_size", type=int, default=8, help="images per generate call")
    common.add_generation_args(parser)
    parser.add_argument("--overwrite", action="store_true", help="recaption images that have a caption file")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return common.parser(PROG, DESCRIPTION, add_arguments).parse_args(argv)


def run(
    args: argparse.Namespace,
    model: nn.Module | None = None,
    preprocess: Callable | None = None,
    tokenizer: Callable | None = None,
) -> list[str]:
    """Caption as `args` say; `model`/`preprocess`/`tokenizer` replace loading CoCa (tests).

    Returns:
        The image entries whose caption file was written.
    """
    common.check_positive(args, "batch_size")
    settings = common.caption_settings(args)
    with user_errors():
        check_outputs({"--text_dir": args.text_dir}, folders=["--text_dir"])
    images = common.images_from_args(args)
    captioner = None if model is None else (model, preprocess, tokenizer)
    with user_errors(WeightsUnavailableError):
        return caption_split(images, args.text_dir, args.dataset, args.split, settings, device=args.device,
                             batch_size=args.batch_size, overwrite=args.overwrite,
                             captioner=captioner)


def main(argv: list[str] | None = None) -> None:
    common.setup_logging()
    run(parse_args(argv))


if __name__ == "__main__":
    main()

"""``wordepth-text prepare``: captions, CLIP text features and the packed store for a new image set.

Runs the three steps of the text pipeline (`wordepth.text.pipeline`) for one dataset split:

1. caption every image with CoCa -> `<text_dir>/<dataset>/<split>/<image path>.txt`;
2. encode the captions with the frozen CLIP RN50 text encoder ->
   `<text_feat_dir>/<dataset>/<split>/<image path>.pt` ((1, 1024) float16);
3. pack them -> `<text_feat_dir>/<dataset>/<split>.packed.{npy,json}`.

::

    wordepth-text prepare --images my_photos/ --dataset mine --split test
    wordepth-text prepare --filenames_file splits/mine_train.txt --data_path /data/mine \\
        --dataset mine --split train --device cuda

(``python scripts/text.py prepare ...`` is the same.) Both models' weights are checked
before anything is written; offline, pass `--caption_weights_path` and `--clip_weights_path`.
Finished files are kept (resumable) unless `--overwrite`.
"""
from __future__ import annotations

import argparse

from wordepth.cli import common
from wordepth.errors import user_errors
from wordepth.outputs import check_outputs
from wordepth.text.clip_features import WeightsUnavailableError
from wordepth.text.pipeline import prepare_split

DESCRIPTION = "Caption images, extract CLIP text features and pack them."
PROG = "wordepth-text prepare"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this command."""
    common.add_image_source_args(parser)
    common.add_layout_args(parser, text_feat_dir=True)
    common.add_model_args(parser, "caption", prefix="caption_")
    common.add_model_args(parser, "clip", prefix="clip_")
    common.add_cache_dir_arg(parser)
    common.add_device_arg(parser)
    parser.add_argument("--batch_size", type=int, default=8, help="images per caption batch")
    parser.add_argument("--feat_batch_size", type=int, default=64, help="captions per CLIP forward pass")
    common.add_generation_args(parser)
    parser.add_argument("--overwrite", action="store_true", help="redo captions and features that exist")
    parser.add_argument("--no_packed", action="store_true", help="skip writing the packed store")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return common.parser(PROG, DESCRIPTION, add_arguments).parse_args(argv)


def run(args: argparse.Namespace, captioner: tuple | None = None, encoder: tuple | None = None) -> dict:
    """The three steps as `args` say.

    Args:
        args: parsed options.
        captioner: (model, preprocess, tokenizer) to use instead of loading CoCa (tests).
        encoder: (model, tokenizer) to use instead of loading CLIP (tests).

    Returns:
        Summary: `captions_written`, `features_written`, `dim`, `packed` (path or None).
    """
    common.check_positive(args, "batch_size", "feat_batch_size")
    caption = common.caption_settings(args, prefix="caption_")
    with user_errors():
        check_outputs({"--text_dir": args.text_dir, "--text_feat_dir": args.text_feat_dir},
                      inputs=[args.filenames_file], folders=["--text_dir", "--text_feat_dir"])
    images = common.images_from_args(args)
    with user_errors(WeightsUnavailableError):
        return prepare_split(images, args.text_dir, args.text_feat_dir, args.dataset, args.split, caption,
                             common.clip_settings(args, prefix="clip_"), device=args.device,
                             batch_size=args.batch_size, feat_batch_size=args.feat_batch_size,
                             overwrite=args.overwrite, packed=not args.no_packed, captioner=captioner, encoder=encoder)


def main(argv: list[str] | None = None) -> None:
    common.setup_logging()
    run(parse_args(argv))


if __name__ == "__main__":
    main()

"""One COCO-style caption per image with an open_clip CoCa model.

Captions are written to `<text_dir>/<dataset>/<split>/<image path without
extension>.txt`, one line each, mirroring the image paths::

    # every image under a folder
    python scripts/caption_images.py --images my_photos/ --dataset mine --split test
    # the images of a split file, relative to --data_path (like training)
    python scripts/caption_images.py --filenames_file data_splits/nyudepthv2_test_files_with_gt.txt \\
        --data_path /data/nyu_v2/official_splits/test/ --dataset nyu --split test
    # offline: a local copy of the CoCa weights
    python scripts/caption_images.py ... --weights_path ~/weights/coca_ViT-L-14_mscoco.bin

Images that already have a caption file are skipped (resumable) unless
`--overwrite`. The original release used ExpansionNet v2 captions; CoCa's
describe the same things in different words.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, "") and str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/...`: find wordepth

import open_clip  # noqa: E402
from torch import nn  # noqa: E402

from wordepth.data.splits import SplitFileError  # noqa: E402
from wordepth.text.captioning import (  # noqa: E402
    DEFAULT_CAPTION_MODEL,
    DEFAULT_CAPTION_PRETRAINED,
    GENERATION_TYPES,
    caption_images,
    caption_path,
    collect_images,
    load_captioner,
)
from wordepth.text.clip_features import WeightsUnavailableError, resolve_device  # noqa: E402

logger = logging.getLogger(__name__)


def add_image_args(parser: argparse.ArgumentParser) -> None:
    """`--images DIR` or `--filenames_file` + `--data_path`, plus the output layout."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", default=None, help="folder of images (searched recursively)")
    source.add_argument("--filenames_file", default=None, help="split file whose rgb entries are captioned")
    parser.add_argument("--data_path", default=None, help="root the split file's rgb entries are relative to")
    parser.add_argument("--dataset", required=True, help="dataset folder name, e.g. nyu, kitti, mine")
    parser.add_argument("--split", required=True, help="split folder name, e.g. train, test")
    parser.add_argument("--text_dir", default="./text", help="caption root")


def add_generation_args(parser: argparse.ArgumentParser) -> None:
    """CoCa generation options."""
    parser.add_argument("--seq_len", type=int, default=30, help="maximum caption length in tokens")
    parser.add_argument("--min_seq_len", type=int, default=5, help="minimum caption length in tokens")
    parser.add_argument("--generation_type", default="auto", choices=GENERATION_TYPES,
                        help="auto: beam_search when `transformers` is installed, else greedy (built in)")
    parser.add_argument("--num_beams", type=int, default=6, help="beams for beam_search (a multiple of 3)")


def generation_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of `caption_images` for the generation options."""
    if args.seq_len <= args.min_seq_len:
        raise SystemExit(f"error: --seq_len ({args.seq_len}) must be larger than --min_seq_len ({args.min_seq_len})")
    kwargs = {"seq_len": args.seq_len, "generation_type": args.generation_type, "min_seq_len": args.min_seq_len}
    if args.generation_type in ("auto", "beam_search"):
        kwargs["num_beams"] = args.num_beams
    return kwargs


def images_from_args(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The (rgb entry, image file) pairs named by the image options; one-line errors."""
    if args.filenames_file is not None and args.data_path is None:
        raise SystemExit("error: --filenames_file needs --data_path (the root its rgb entries are relative to)")
    try:
        return collect_images(args.images, args.filenames_file, args.data_path)
    except (FileNotFoundError, ValueError, SplitFileError) as err:
        raise SystemExit(f"error: {err}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="Caption images with CoCa into the text/ layout.")
    add_image_args(parser)
    parser.add_argument("--model", default=DEFAULT_CAPTION_MODEL, help="open_clip CoCa model")
    parser.add_argument("--pretrained", default=DEFAULT_CAPTION_PRETRAINED, help="open_clip pretrained tag")
    parser.add_argument("--weights_path", default=None, help="local CoCa weights file for offline use")
    parser.add_argument("--cache_dir", default=None, help="download cache (default: Hugging Face cache)")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--batch_size", type=int, default=8, help="images per generate call")
    add_generation_args(parser)
    parser.add_argument("--overwrite", action="store_true", help="recaption images that have a caption file")
    return parser.parse_args(argv)


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
    if args.batch_size < 1:
        raise SystemExit("error: --batch_size must be at least 1")
    gen = generation_kwargs(args)
    images = images_from_args(args)
    todo = [item for item in images if args.overwrite or not caption_path(
        args.text_dir, args.dataset, args.split, item[0]).is_file()]
    if todo and model is None:
        try:  # weights are checked before any file is written
            model, preprocess = load_captioner(
                args.model, args.pretrained, args.weights_path, resolve_device(args.device), args.cache_dir
            )
        except WeightsUnavailableError as err:
            raise SystemExit(f"error: {err}") from None
        tokenizer = open_clip.get_tokenizer(args.model)
    written = []
    if todo:
        written = caption_images(
            todo, args.text_dir, args.dataset, args.split, model, preprocess, tokenizer,
            batch_size=args.batch_size, overwrite=True, **gen,
        )
    logger.info("%s/%s: wrote %d captions, skipped %d existing, under %s",
                args.dataset, args.split, len(written), len(images) - len(written), Path(args.text_dir))
    return written


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    run(parse_args(argv))


if __name__ == "__main__":
    main()

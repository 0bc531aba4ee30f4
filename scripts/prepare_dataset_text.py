"""Captions, CLIP text features and the packed store for a new image set, in one command.

Runs the three steps of the text pipeline for one dataset split:

1. caption every image with CoCa -> `<text_dir>/<dataset>/<split>/<image path>.txt`;
2. encode the captions with the frozen CLIP RN50 text encoder ->
   `<text_feat_dir>/<dataset>/<split>/<image path>.pt` ((1, 1024) float16);
3. pack them -> `<text_feat_dir>/<dataset>/<split>.packed.{npy,json}`.

::

    python scripts/prepare_dataset_text.py --images my_photos/ --dataset mine --split test
    python scripts/prepare_dataset_text.py --filenames_file splits/mine_train.txt --data_path /data/mine \\
        --dataset mine --split train --device cuda

Both models' weights are checked before anything is written; offline, pass
`--caption_weights_path` and `--clip_weights_path`. Finished files are kept
(resumable) unless `--overwrite`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, "") and str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/...`: find wordepth

import open_clip  # noqa: E402

from wordepth.data.splits import SplitFileError  # noqa: E402
from wordepth.data.text_features import feature_path, load_feature_file, pack_features  # noqa: E402
from wordepth.text.captioning import (  # noqa: E402
    DEFAULT_CAPTION_MODEL,
    DEFAULT_CAPTION_PRETRAINED,
    GENERATION_TYPES,
    caption_images,
    caption_path,
    collect_images,
    load_captioner,
    read_caption,
)
from wordepth.text.clip_features import (  # noqa: E402
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    WeightsUnavailableError,
    load_text_encoder,
    resolve_device,
    resolve_weights,
    write_text_features,
)

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="Caption images, extract CLIP text features and pack them.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", default=None, help="folder of images (searched recursively)")
    source.add_argument("--filenames_file", default=None, help="split file whose rgb entries are used")
    parser.add_argument("--data_path", default=None, help="root the split file's rgb entries are relative to")
    parser.add_argument("--dataset", required=True, help="dataset folder name, e.g. mine")
    parser.add_argument("--split", required=True, help="split folder name, e.g. train, test")
    parser.add_argument("--text_dir", default="./text", help="caption root")
    parser.add_argument("--text_feat_dir", default="./text_feat", help="feature root")
    parser.add_argument("--caption_model", default=DEFAULT_CAPTION_MODEL, help="open_clip CoCa model")
    parser.add_argument("--caption_pretrained", default=DEFAULT_CAPTION_PRETRAINED, help="CoCa pretrained tag")
    parser.add_argument("--caption_weights_path", default=None, help="local CoCa weights file (offline)")
    parser.add_argument("--clip_model", default=DEFAULT_CLIP_MODEL, help="open_clip text model (original: RN50)")
    parser.add_argument("--clip_pretrained", default=DEFAULT_CLIP_PRETRAINED, help="CLIP pretrained tag")
    parser.add_argument("--clip_weights_path", default=None, help="local CLIP weights file (offline)")
    parser.add_argument("--cache_dir", default=None, help="download cache (default: Hugging Face / ~/.cache/clip)")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--batch_size", type=int, default=8, help="images per caption batch")
    parser.add_argument("--feat_batch_size", type=int, default=64, help="captions per CLIP forward pass")
    parser.add_argument("--seq_len", type=int, default=30, help="maximum caption length in tokens")
    parser.add_argument("--min_seq_len", type=int, default=5, help="minimum caption length in tokens")
    parser.add_argument("--generation_type", default="auto", choices=GENERATION_TYPES,
                        help="auto: beam_search when `transformers` is installed, else greedy (built in)")
    parser.add_argument("--num_beams", type=int, default=6, help="beams for beam_search (a multiple of 3)")
    parser.add_argument("--overwrite", action="store_true", help="redo captions and features that exist")
    parser.add_argument("--no_packed", action="store_true", help="skip writing the packed store")
    return parser.parse_args(argv)


def _check_args(args: argparse.Namespace) -> None:
    if args.batch_size < 1 or args.feat_batch_size < 1:
        raise SystemExit("error: --batch_size and --feat_batch_size must be at least 1")
    if args.seq_len <= args.min_seq_len:
        raise SystemExit(f"error: --seq_len ({args.seq_len}) must be larger than --min_seq_len ({args.min_seq_len})")
    if args.filenames_file is not None and args.data_path is None:
        raise SystemExit("error: --filenames_file needs --data_path (the root its rgb entries are relative to)")


def run(args: argparse.Namespace, captioner: tuple | None = None, encoder: tuple | None = None) -> dict:
    """The three steps as `args` say.

    Args:
        args: parsed options.
        captioner: (model, preprocess, tokenizer) to use instead of loading CoCa (tests).
        encoder: (model, tokenizer) to use instead of loading CLIP (tests).

    Returns:
        Summary: `captions_written`, `features_written`, `dim`, `packed` (path or None).
    """
    _check_args(args)
    try:
        images = collect_images(args.images, args.filenames_file, args.data_path)
    except (FileNotFoundError, ValueError, SplitFileError) as err:
        raise SystemExit(f"error: {err}") from None
    layout = (args.dataset, args.split)
    caption_todo = [
        item for item in images if args.overwrite or not caption_path(args.text_dir, *layout, item[0]).is_file()
    ]
    todo_keys = {rgb for rgb, _ in caption_todo}
    feature_todo = [
        rgb for rgb, _ in images
        if args.overwrite or rgb in todo_keys or not feature_path(args.text_feat_dir, *layout, rgb).is_file()
    ]
    device = resolve_device(args.device)

    # Both models' weights before any file is written.
    try:
        if caption_todo and captioner is None:
            resolve_weights(args.caption_model, args.caption_pretrained, args.caption_weights_path, args.cache_dir)
        if feature_todo and encoder is None:
            resolve_weights(args.clip_model, args.clip_pretrained, args.clip_weights_path, args.cache_dir)
    except WeightsUnavailableError as err:
        raise SystemExit(f"error: {err}") from None

    # 1. captions
    written_captions: list[str] = []
    if caption_todo:
        if captioner is None:
            model, preprocess = load_captioner(
                args.caption_model, args.caption_pretrained, args.caption_weights_path, device, args.cache_dir
            )
            captioner = (model, preprocess, open_clip.get_tokenizer(args.caption_model))
        gen = {"seq_len": args.seq_len, "min_seq_len": args.min_seq_len, "generation_type": args.generation_type}
        if args.generation_type in ("auto", "beam_search"):
            gen["num_beams"] = args.num_beams
        written_captions = caption_images(
            caption_todo, args.text_dir, *layout, *captioner, batch_size=args.batch_size, overwrite=True, **gen
        )
        captioner = None  # free the captioner before loading CLIP

    # 2. features (also for every caption rewritten just now)
    captions = {rgb: read_caption(caption_path(args.text_dir, *layout, rgb)) for rgb in feature_todo}
    features_written = 0
    if captions:
        if encoder is None:
            encoder = load_text_encoder(
                args.clip_model, args.clip_pretrained, args.clip_weights_path, device, args.cache_dir
            )
        features_written = write_text_features(
            captions, args.text_feat_dir, *layout, *encoder, batch_size=args.feat_batch_size, overwrite=True
        )
    dim = int(load_feature_file(feature_path(args.text_feat_dir, *layout, images[0][0])).numel())

    # 3. packed store
    packed = None
    if not args.no_packed:
        packed = pack_features(args.text_feat_dir, *layout, entries=[rgb for rgb, _ in images])
    logger.info(
        "%s/%s: %d images, %d captions and %d feature files written (dim %d)%s",
        *layout, len(images), len(written_captions), features_written, dim, f", packed into {packed}" if packed else "",
    )
    return {"captions_written": len(written_captions), "features_written": features_written,
            "dim": dim, "packed": packed}


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    run(parse_args(argv))


if __name__ == "__main__":
    main()

"""CLIP text features for captions, in the original release's layout.

Each caption `<text_dir>/<dataset>/<split>/<image path without extension>.txt`
becomes `<text_feat_dir>/<dataset>/<split>/<same path>.pt`: the frozen CLIP
ResNet-50 text feature, L2-normalised, a (1, 1024) float16 tensor::

    # every caption under text/nyu/test/
    python scripts/extract_text_feat.py --text_dir text --dataset nyu --split test
    # the captions of a split file's images, plus the packed store
    python scripts/extract_text_feat.py --filenames_file data_splits/nyudepthv2_test_files_with_gt.txt \\
        --text_dir text --dataset nyu --split test --packed
    # offline: a local copy of the weights
    python scripts/extract_text_feat.py ... --weights_path ~/weights/RN50.pt

Existing feature files are skipped (resumable) unless `--overwrite`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, "") and str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python scripts/...`: find wordepth

from torch import nn  # noqa: E402

from wordepth.data.splits import SplitFileError, read_split  # noqa: E402
from wordepth.data.text_features import feature_path, load_feature_file, pack_features  # noqa: E402
from wordepth.text.captioning import caption_path, read_caption  # noqa: E402
from wordepth.text.clip_features import (  # noqa: E402
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    WeightsUnavailableError,
    load_text_encoder,
    pending_features,
    resolve_device,
    write_text_features,
)

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description="Extract CLIP text features from caption files.")
    parser.add_argument("--text_dir", default="./text", help="caption root (<text_dir>/<dataset>/<split>/...txt)")
    parser.add_argument("--dataset", required=True, help="dataset folder name, e.g. nyu, kitti")
    parser.add_argument("--split", required=True, help="split folder name, e.g. train, test")
    parser.add_argument("--filenames_file", default=None,
                        help="split file: encode the captions of its rgb entries (default: every caption file)")
    parser.add_argument("--text_feat_dir", default="./text_feat", help="output feature root")
    parser.add_argument("--packed", action="store_true",
                        help="also write the packed store <text_feat_dir>/<dataset>/<split>.packed.{npy,json}")
    parser.add_argument("--model", default=DEFAULT_CLIP_MODEL, help="open_clip text model (original: RN50)")
    parser.add_argument("--pretrained", default=DEFAULT_CLIP_PRETRAINED,
                        help="open_clip pretrained tag (original: openai)")
    parser.add_argument("--weights_path", default=None,
                        help="local weights file (open_clip checkpoint, safetensors or OpenAI's RN50.pt) for offline use")
    parser.add_argument("--cache_dir", default=None, help="download cache (default: Hugging Face / ~/.cache/clip)")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")
    parser.add_argument("--batch_size", type=int, default=64, help="captions per forward pass")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--skip_existing", dest="overwrite", action="store_false",
                      help="keep existing feature files (default)")
    mode.add_argument("--overwrite", dest="overwrite", action="store_true", help="recompute existing feature files")
    parser.set_defaults(overwrite=False)
    return parser.parse_args(argv)


def gather_captions(args: argparse.Namespace) -> dict[str, str]:
    """Image path -> caption, from a split file or every caption file of the split."""
    if args.filenames_file is not None:
        try:
            rgbs = [entry.rgb for entry in read_split(args.filenames_file)]
        except (FileNotFoundError, SplitFileError) as err:
            raise SystemExit(f"error: {err}") from None
        paths = {rgb: caption_path(args.text_dir, args.dataset, args.split, rgb) for rgb in dict.fromkeys(rgbs)}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise SystemExit(
                f"error: {len(missing)} of {len(paths)} captions of {args.filenames_file} are missing, "
                f"e.g. {missing[0]}; write them with scripts/caption_images.py"
            )
    else:
        folder = Path(args.text_dir) / args.dataset / args.split
        if not folder.is_dir():
            raise SystemExit(f"error: caption folder not found: {folder}")
        paths = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*.txt"))}
        if not paths:
            raise SystemExit(f"error: no caption files (*.txt) under {folder}")
    captions = {rgb: read_caption(path) for rgb, path in paths.items()}
    empty = [str(paths[rgb]) for rgb, text in captions.items() if not text]
    if empty:
        raise SystemExit(f"error: {len(empty)} caption files are empty, e.g. {empty[0]}")
    return captions


def run(args: argparse.Namespace, model: nn.Module | None = None, tokenizer=None) -> dict:
    """Extract features as `args` say; `model`/`tokenizer` replace loading the encoder (tests).

    Returns:
        Summary: `written`, `skipped`, `dim` (feature width D) and `packed` (path or None).
    """
    if args.batch_size < 1:
        raise SystemExit("error: --batch_size must be at least 1")
    captions = gather_captions(args)
    todo = pending_features(captions, args.text_feat_dir, args.dataset, args.split, args.overwrite)
    if todo and model is None:
        try:  # weights are checked before any file is written
            model, tokenizer = load_text_encoder(
                args.model, args.pretrained, args.weights_path, resolve_device(args.device), args.cache_dir
            )
        except WeightsUnavailableError as err:
            raise SystemExit(f"error: {err}") from None
    written = 0
    if todo:
        written = write_text_features(
            todo, args.text_feat_dir, args.dataset, args.split, model, tokenizer, args.batch_size, overwrite=True
        )
    first = feature_path(args.text_feat_dir, args.dataset, args.split, next(iter(captions)))
    dim = int(load_feature_file(first).numel())
    packed = None
    if args.packed:
        packed = pack_features(args.text_feat_dir, args.dataset, args.split, entries=list(captions))
    logger.info(
        "%s/%s: wrote %d feature files, skipped %d existing (dim %d) under %s",
        args.dataset, args.split, written, len(captions) - written, dim, Path(args.text_feat_dir),
    )
    return {"written": written, "skipped": len(captions) - written, "dim": dim, "packed": packed}


def main(argv: list[str] | None = None) -> None:
    """Entry point."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    run(parse_args(argv))


if __name__ == "__main__":
    main()

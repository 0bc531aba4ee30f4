"""``wordepth-pack-text``: pack per-image text features (``text_feat/<dataset>/<split>/**/*.pt``) into one array.

Writes ``<text_feat_dir>/<dataset>/<split>.packed.npy`` (float16, N x D) and
``<split>.packed.json`` (keys and dim); the datasets then read rows of a memory map
instead of one file per sample (`wordepth.data.text_features.pack_features`).

    wordepth-pack-text --text_feat_dir ./text_feat --dataset nyu --split train \\
        [--filenames_file data_splits/nyudepthv2_train_files_with_gt.txt]

(``python scripts/pack_text.py ...`` is the same.)
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from wordepth.data.registry import unregistered_note
from wordepth.data.splits import read_split
from wordepth.data.text_features import pack_features
from wordepth.errors import user_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False,
        prog="wordepth-pack-text", description="Pack per-image text features into one memory-mapped array.")
    parser.add_argument("--text_feat_dir", type=Path, default=Path("text_feat"), help="text feature root")
    parser.add_argument("--dataset", required=True,
                        help="dataset folder under --text_feat_dir: a registered dataset (nyu, kitti, yours) to train "
                             "on it")
    parser.add_argument("--split", choices=("train", "test"), required=True)
    parser.add_argument(
        "--filenames_file", type=Path, default=None,
        help="split file whose rgb entries to pack (default: every .pt file under the folder)",
    )
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with user_errors():
        note = unregistered_note(args.dataset)
        if note:
            logging.getLogger(__name__).warning("%s", note)
        entries = [e.rgb for e in read_split(args.filenames_file)] if args.filenames_file else None
        out = pack_features(args.text_feat_dir, args.dataset, args.split, entries, progress=not args.no_progress)
    logging.getLogger(__name__).info("wrote %s and %s", out, out.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    main()

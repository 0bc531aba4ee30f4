"""``wordepth-text extract``: CLIP text features for captions, in the original release's layout.

Each caption `<text_dir>/<dataset>/<split>/<image path without extension>.txt`
becomes `<text_feat_dir>/<dataset>/<split>/<same path>.pt`: the frozen CLIP
ResNet-50 text feature, L2-normalised, a (1, 1024) float16 tensor::

    # every caption under text/nyu/test/
    wordepth-text extract --text_dir text --dataset nyu --split test
    # the captions of a split file's images, plus the packed store
    wordepth-text extract --filenames_file data_splits/nyudepthv2_test_files_with_gt.txt \\
        --text_dir text --dataset nyu --split test --packed
    # offline: a local copy of the weights
    wordepth-text extract ... --weights_path ~/weights/RN50.pt

(``python scripts/text.py extract ...`` is the same.) Existing feature files are skipped
(resumable) unless `--overwrite`.
"""
from __future__ import annotations

import argparse

from torch import nn

from wordepth.cli import common
from wordepth.errors import user_errors
from wordepth.outputs import check_outputs
from wordepth.text.clip_features import WeightsUnavailableError
from wordepth.text.pipeline import extract_split, gather_captions

DESCRIPTION = "Extract CLIP text features from caption files."
PROG = "wordepth-text extract"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this command."""
    common.add_layout_args(parser, text_feat_dir=True)
    parser.add_argument("--filenames_file", default=None,
                        help="split file: encode the captions of its rgb entries (default: every caption file)")
    parser.add_argument("--packed", action="store_true",
                        help="also write the packed store <text_feat_dir>/<dataset>/<split>.packed.{npy,json}")
    common.add_model_args(parser, "clip")
    common.add_cache_dir_arg(parser)
    common.add_device_arg(parser)
    parser.add_argument("--batch_size", type=int, default=64, help="captions per forward pass")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--skip_existing", dest="overwrite", action="store_false",
                      help="keep existing feature files (default)")
    mode.add_argument("--overwrite", dest="overwrite", action="store_true", help="recompute existing feature files")
    parser.set_defaults(overwrite=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return common.parser(PROG, DESCRIPTION, add_arguments).parse_args(argv)


def run(args: argparse.Namespace, model: nn.Module | None = None, tokenizer=None) -> dict:
    """Extract features as `args` say; `model`/`tokenizer` replace loading the encoder (tests).

    Returns:
        Summary: `written`, `skipped`, `dim` (feature width D) and `packed` (path or None).
    """
    common.check_positive(args, "batch_size")
    with user_errors(WeightsUnavailableError):
        check_outputs({"--text_feat_dir": args.text_feat_dir}, inputs=[args.filenames_file],
                      folders=["--text_feat_dir"])
        captions = gather_captions(args.text_dir, args.dataset, args.split, args.filenames_file)
        return extract_split(captions, args.text_feat_dir, args.dataset, args.split, common.clip_settings(args),
                             device=args.device, batch_size=args.batch_size,
                             overwrite=args.overwrite, packed=args.packed,
                             encoder=None if model is None else (model, tokenizer))


def main(argv: list[str] | None = None) -> None:
    common.setup_logging()
    run(parse_args(argv))


if __name__ == "__main__":
    main()

"""Argument groups shared by several commands, each defined once.

User errors are turned into one ``error:`` line by :func:`wordepth.errors.user_errors` (one policy for
every command). The text modules import open_clip only when a model is built, so ``--help`` and the
training commands do not pay for it.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from wordepth.errors import user_errors
from wordepth.variants import VARIANTS

if TYPE_CHECKING:  # annotations only: the text pipeline (torch, open_clip) is imported where it is used
    from wordepth.text.pipeline import CaptionSettings, ClipSettings

# The text and data modules (torch) are imported by the helpers that use them, so that a command that
# does not (the web app before its page is served, ``--help``) does not import torch.


def parser(prog: str, description: str, add_arguments: Callable[[argparse.ArgumentParser], None]
           ) -> argparse.ArgumentParser:
    """An argument parser with the options `add_arguments` adds."""
    p = argparse.ArgumentParser(allow_abbrev=False, prog=prog, description=description)
    add_arguments(p)
    return p


def dataset_names() -> list[str]:
    """The registered datasets' names, for options and their help; a dataset plugin that cannot be
    imported (``$WORDEPTH_DATASETS``) ends the command with one ``error:`` line."""
    from wordepth.data.registry import dataset_names as registered  # torch: not for the app's page

    with user_errors():
        return registered()


def setup_logging() -> None:
    """INFO messages to stderr as ``INFO: ...`` (the commands' progress lines)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")


def add_variant_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup,
                    help: str = "which released model an original checkpoint holds (they do not record it)") -> None:
    """``--variant``: a released model by name (:mod:`wordepth.variants`); ``help`` says what the command
    does with it."""
    parser.add_argument("--variant", choices=sorted(VARIANTS), default=None, help=help)


def add_device_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--device``."""
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")


def add_model_args(parser: argparse.ArgumentParser, which: str, prefix: str = "") -> None:
    """``--{prefix}model``, ``--{prefix}pretrained``, ``--{prefix}weights_path`` of the captioner or CLIP.

    Args:
        which: ``caption`` (CoCa) or ``clip`` (the CLIP text encoder).
        prefix: for commands that load both, e.g. ``caption_`` -> ``--caption_model``.
    """
    from wordepth.text.captioning import DEFAULT_CAPTION_MODEL, DEFAULT_CAPTION_PRETRAINED
    from wordepth.text.clip_features import DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED

    if which == "caption":
        what, model, pretrained, formats = "CoCa captioner", DEFAULT_CAPTION_MODEL, DEFAULT_CAPTION_PRETRAINED, ""
    else:
        what, model, pretrained = "CLIP text model (original: RN50)", DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED
        formats = " (open_clip checkpoint, safetensors or OpenAI's RN50.pt)"
    parser.add_argument(f"--{prefix}model", default=model, help=f"open_clip {what}")
    parser.add_argument(f"--{prefix}pretrained", default=pretrained, help="open_clip pretrained tag")
    parser.add_argument(f"--{prefix}weights_path", default=None, help=f"local weights file{formats} for offline use")


def add_cache_dir_arg(parser: argparse.ArgumentParser) -> None:
    """``--cache_dir`` of weight downloads."""
    parser.add_argument("--cache_dir", default=None, help="download cache (default: Hugging Face / ~/.cache/clip)")


def add_layout_args(parser: argparse.ArgumentParser, text_feat_dir: bool = False) -> None:
    """``--dataset``, ``--split``, ``--text_dir`` (and ``--text_feat_dir``): where captions/features go."""
    parser.add_argument("--dataset", required=True, help="dataset folder name, e.g. nyu, kitti, mine")
    parser.add_argument("--split", required=True, help="split folder name, e.g. train, test")
    parser.add_argument("--text_dir", default="./text", help="caption root (<text_dir>/<dataset>/<split>/...txt)")
    if text_feat_dir:
        parser.add_argument("--text_feat_dir", default="./text_feat", help="feature root")


def add_image_source_args(parser: argparse.ArgumentParser) -> None:
    """``--images DIR`` or ``--filenames_file`` + ``--data_path``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", default=None, help="folder of images (searched recursively)")
    source.add_argument("--filenames_file", default=None, help="split file whose rgb entries are used")
    parser.add_argument("--data_path", default=None, help="root the split file's rgb entries are relative to")


def add_generation_args(parser: argparse.ArgumentParser) -> None:
    """CoCa generation options."""
    from wordepth.text.captioning import GENERATION_TYPES

    parser.add_argument("--seq_len", type=int, default=30, help="maximum caption length in tokens")
    parser.add_argument("--min_seq_len", type=int, default=5, help="minimum caption length in tokens")
    parser.add_argument("--generation_type", default="auto", choices=GENERATION_TYPES,
                        help="auto: beam_search when `transformers` is installed, else greedy (built in)")
    parser.add_argument("--num_beams", type=int, default=6, help="beams for beam_search (a multiple of 3)")


def require_suffix(path: str, suffix: str) -> None:
    """A one-line error unless the output file ``path`` ends in ``suffix`` (e.g. ``.onnx``)."""
    if not path.endswith(suffix):
        raise SystemExit(f"error: {path}: the output must end in {suffix}")


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Each named option is at least 1 (one-line error otherwise)."""
    bad = [f"--{name}" for name in names if getattr(args, name) < 1]
    if bad:
        raise SystemExit(f"error: {' and '.join(bad)} must be at least 1")


def caption_settings(args: argparse.Namespace, prefix: str = "") -> CaptionSettings:
    """`CaptionSettings` from `add_model_args(..., "caption", prefix)`, `add_cache_dir_arg`, `add_generation_args`."""
    from wordepth.text.pipeline import CaptionSettings

    if args.seq_len <= args.min_seq_len:
        raise SystemExit(f"error: --seq_len ({args.seq_len}) must be larger than --min_seq_len ({args.min_seq_len})")
    return CaptionSettings(
        model=getattr(args, f"{prefix}model"), pretrained=getattr(args, f"{prefix}pretrained"),
        weights_path=getattr(args, f"{prefix}weights_path"), cache_dir=args.cache_dir, seq_len=args.seq_len,
        min_seq_len=args.min_seq_len, generation_type=args.generation_type, num_beams=args.num_beams)


def clip_settings(args: argparse.Namespace, prefix: str = "") -> ClipSettings:
    """`ClipSettings` from `add_model_args(..., "clip", prefix)` and `add_cache_dir_arg`."""
    from wordepth.text.pipeline import ClipSettings

    return ClipSettings(model=getattr(args, f"{prefix}model"), pretrained=getattr(args, f"{prefix}pretrained"),
                        weights_path=getattr(args, f"{prefix}weights_path"), cache_dir=args.cache_dir)


def images_from_args(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """The (name, file) pairs named by `add_image_source_args`; one-line errors."""
    if args.filenames_file is not None and args.data_path is None:
        raise SystemExit("error: --filenames_file needs --data_path (the root its rgb entries are relative to)")
    from wordepth.data.images import collect_images

    with user_errors():
        return collect_images(args.images, args.filenames_file, args.data_path)

"""The text pipeline for one dataset split: caption the images, encode the captions, pack the features.

1. `caption_split`: one CoCa caption per image ->
   `<text_dir>/<dataset>/<split>/<image path without extension>.txt`;
2. `extract_split`: the frozen CLIP text feature of each caption (RN50 by default) ->
   `<text_feat_dir>/<dataset>/<split>/<image path without extension>.pt` ((1, D) float16),
   optionally packed into `<text_feat_dir>/<dataset>/<split>.packed.{npy,json}`;
3. `prepare_split`: both, then the packed store, with both models' weights checked before any
   file is written.

Every step keeps finished files (resumable) unless `overwrite`. The command line is
``wordepth-text caption|extract|prepare`` (`wordepth.cli.text`).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from wordepth.errors import UserError
from wordepth.runtime import default_device
from wordepth.data.registry import unregistered_note
from wordepth.data.splits import read_split
from wordepth.data.text_features import FeatureWidthError, feature_path, load_feature_file, pack_features
from wordepth.text.captioning import (
    DEFAULT_CAPTION_MODEL,
    DEFAULT_CAPTION_PRETRAINED,
    caption_images,
    caption_path,
    load_captioner,
    read_caption,
)
from wordepth.text.clip_features import (
    DEFAULT_CLIP_MODEL,
    DEFAULT_CLIP_PRETRAINED,
    clip_text_width,
    get_tokenizer,
    load_text_encoder,
    pending_features,
    resolve_weights,
    text_feature_dim,
    write_text_features,
)

logger = logging.getLogger(__name__)

Captioner = tuple[nn.Module, Callable, Callable]  # (CoCa model, image preprocess, tokenizer)
Encoder = tuple[nn.Module, Callable]  # (CLIP model, tokenizer)


@dataclass(frozen=True)
class OpenClipWeights:
    """An open_clip model and where its weights come from: a pretrained tag (cached or downloaded) or a file."""

    model: str
    pretrained: str | None = None  # None (and no weights_path): random weights
    weights_path: str | os.PathLike | None = None  # a local file; takes precedence over the tag
    cache_dir: str | None = None  # download cache (default: Hugging Face / ~/.cache/clip)

    def check(self) -> None:
        """Raise WeightsUnavailableError when the weights are neither on disk nor downloadable."""
        resolve_weights(self.model, self.pretrained, self.weights_path, self.cache_dir)


@dataclass(frozen=True)
class CaptionSettings(OpenClipWeights):
    """The CoCa captioner and its generation options."""

    model: str = DEFAULT_CAPTION_MODEL
    pretrained: str | None = DEFAULT_CAPTION_PRETRAINED
    seq_len: int = 30  # maximum caption length in tokens
    min_seq_len: int = 5
    generation_type: str = "auto"  # see captioning.GENERATION_TYPES
    num_beams: int = 6  # for beam search

    def generation_kwargs(self) -> dict:
        """Keyword arguments of `caption_images` for the generation options."""
        kwargs = {"seq_len": self.seq_len, "min_seq_len": self.min_seq_len, "generation_type": self.generation_type}
        if self.generation_type in ("auto", "beam_search"):
            kwargs["num_beams"] = self.num_beams
        return kwargs

    def load(self, device: torch.device) -> Captioner:
        """The model, its preprocess and tokenizer (raises WeightsUnavailableError first when weights are missing)."""
        model, preprocess = load_captioner(self.model, self.pretrained, weights_path=self.weights_path, device=device,
                                           cache_dir=self.cache_dir)
        return model, preprocess, get_tokenizer(self.model)


@dataclass(frozen=True)
class ClipSettings(OpenClipWeights):
    """The frozen CLIP text encoder."""

    model: str = DEFAULT_CLIP_MODEL
    pretrained: str | None = DEFAULT_CLIP_PRETRAINED

    def load(self, device: torch.device) -> Encoder:
        """The model and its tokenizer (raises WeightsUnavailableError first when weights are missing)."""
        return load_text_encoder(self.model, self.pretrained, self.weights_path, device, self.cache_dir)


def note_dataset(dataset: str) -> None:
    """Warns (one line) when training and evaluation cannot read ``dataset``'s features: it is not registered.

    Raises:
        UserError: not a plain folder name.
    """
    note = unregistered_note(dataset)
    if note:
        logger.warning("%s", note)


def check_kept_features(kept: Sequence[str], text_feat_dir: str | os.PathLike, dataset: str, split: str,
                        clip: ClipSettings, encoder: Encoder | None) -> None:
    """Refuse to keep existing feature files of another width than the encoder's (another CLIP model
    wrote them): a folder of mixed widths cannot be trained on. One kept file is read; the width is
    the model's by name (no weights loaded), else the given encoder's; unknown otherwise (no check).

    Raises:
        FeatureWidthError: naming the file, both widths and the fix.
    """
    if not kept:
        return
    width = text_feature_dim(*encoder) if encoder is not None else clip_text_width(clip.model)
    path = feature_path(text_feat_dir, dataset, split, kept[0])
    have = int(load_feature_file(path).numel())
    if width is not None and have != width:
        raise FeatureWidthError(f"{path} is a {have}-d text feature, but {clip.model} gives {width}-d ones: the existing "
                        "files were written with another CLIP model; add --overwrite to recompute them all "
                        "(or write to another --text_feat_dir)")


# ----------------------------------------------------------------------------- 1. captions


def caption_split(images: Sequence[tuple[str, Path]], text_dir: str | os.PathLike, dataset: str, split: str,
                  settings: CaptionSettings = CaptionSettings(), *, device: str | torch.device | None = None,
                  batch_size: int = 8, overwrite: bool = False, captioner: Captioner | None = None) -> list[str]:
    """Caption the images (from `wordepth.data.images.collect_images`) that have no caption file yet.

    Args:
        captioner: (model, preprocess, tokenizer) to use instead of loading `settings`' model (tests).

    Returns:
        The image names whose caption file was written.

    Raises:
        WeightsUnavailableError: the CoCa weights are missing (before any file is written).
    """
    note_dataset(dataset)
    todo = [item for item in images if overwrite or not caption_path(text_dir, dataset, split, item[0]).is_file()]
    written: list[str] = []
    if todo:
        if captioner is None:
            captioner = settings.load(default_device(device))
        written = caption_images(todo, text_dir, dataset, split, *captioner, batch_size=batch_size, overwrite=True,
                                 **settings.generation_kwargs())
    logger.info("%s/%s: wrote %d captions, skipped %d existing, under %s",
                dataset, split, len(written), len(images) - len(written), Path(text_dir))
    return written


# ----------------------------------------------------------------------------- 2. features


def gather_captions(
    text_dir: str | os.PathLike, dataset: str, split: str, filenames_file: str | os.PathLike | None = None
) -> dict[str, str]:
    """Image name -> caption: of a split file's rgb entries, or of every caption file of the split.

    Raises:
        FileNotFoundError: the split file or the caption folder does not exist.
        UserError: captions are missing or empty, or there are none.
    """
    unregistered_note(dataset)  # a plain folder name, else one error line
    if filenames_file is not None:
        rgbs = [entry.rgb for entry in read_split(filenames_file)]
        paths = {rgb: caption_path(text_dir, dataset, split, rgb) for rgb in dict.fromkeys(rgbs)}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise UserError(
                f"{len(missing)} of {len(paths)} captions of {filenames_file} are missing, "
                f"e.g. {missing[0]}; write them with `wordepth-text caption`"
            )
    else:
        folder = Path(text_dir) / dataset / split
        if not folder.is_dir():
            raise FileNotFoundError(f"caption folder not found: {folder}")
        paths = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*.txt"))}
        if not paths:
            raise UserError(f"no caption files (*.txt) under {folder}")
    captions = {rgb: read_caption(path) for rgb, path in paths.items()}
    empty = [str(paths[rgb]) for rgb, text in captions.items() if not text]
    if empty:
        raise UserError(f"{len(empty)} caption files are empty, e.g. {empty[0]}")
    return captions


def extract_split(captions: dict[str, str], text_feat_dir: str | os.PathLike, dataset: str, split: str,
                  settings: ClipSettings = ClipSettings(), *, device: str | torch.device | None = None,
                  batch_size: int = 64, overwrite: bool = False, packed: bool = False,
                  encoder: Encoder | None = None) -> dict:
    """Encode the captions (from `gather_captions`) whose feature file is missing; optionally pack them.

    Args:
        encoder: (model, tokenizer) to use instead of loading `settings`' model (tests).

    Returns:
        Summary: `written`, `skipped`, `dim` (feature width D) and `packed` (path or None).

    Raises:
        WeightsUnavailableError: the CLIP weights are missing (before any file is written).
    """
    note_dataset(dataset)
    todo = pending_features(captions, text_feat_dir, dataset, split, overwrite)
    check_kept_features([rgb for rgb in captions if rgb not in todo], text_feat_dir, dataset, split, settings, encoder)
    written = 0
    if todo:
        if encoder is None:
            encoder = settings.load(default_device(device))
        written = write_text_features(todo, text_feat_dir, dataset, split, *encoder, batch_size, overwrite=True)
    first = feature_path(text_feat_dir, dataset, split, next(iter(captions)))
    dim = int(load_feature_file(first).numel())
    packed_path = pack_features(text_feat_dir, dataset, split, entries=list(captions)) if packed else None
    logger.info("%s/%s: wrote %d feature files, skipped %d existing (dim %d) under %s",
                dataset, split, written, len(captions) - written, dim, Path(text_feat_dir))
    return {"written": written, "skipped": len(captions) - written, "dim": dim, "packed": packed_path}


# ----------------------------------------------------------------------------- 1 + 2 + 3


def prepare_split(
    images: Sequence[tuple[str, Path]],
    text_dir: str | os.PathLike,
    text_feat_dir: str | os.PathLike,
    dataset: str,
    split: str,
    caption: CaptionSettings = CaptionSettings(),
    clip: ClipSettings = ClipSettings(),
    *,
    device: str | torch.device | None = None,
    batch_size: int = 8,
    feat_batch_size: int = 64,
    overwrite: bool = False,
    packed: bool = True,
    captioner: Captioner | None = None,
    encoder: Encoder | None = None,
) -> dict:
    """Captions, CLIP features and the packed store for a set of images.

    Args:
        images: (name, file) pairs from `wordepth.data.images.collect_images`.
        batch_size: images per caption batch; `feat_batch_size`: captions per CLIP forward pass.
        captioner: (model, preprocess, tokenizer) to use instead of loading CoCa (tests).
        encoder: (model, tokenizer) to use instead of loading CLIP (tests).

    Returns:
        Summary: `captions_written`, `features_written`, `dim`, `packed` (path or None).

    Raises:
        WeightsUnavailableError: either model's weights are missing (before any file is written).
    """
    note_dataset(dataset)
    layout = (dataset, split)
    caption_todo = [item for item in images if overwrite or not caption_path(text_dir, *layout, item[0]).is_file()]
    todo_keys = {rgb for rgb, _ in caption_todo}
    feature_todo = [
        rgb for rgb, _ in images
        if overwrite or rgb in todo_keys or not feature_path(text_feat_dir, *layout, rgb).is_file()
    ]
    feature_kept = sorted({rgb for rgb, _ in images} - set(feature_todo))
    check_kept_features(feature_kept, text_feat_dir, *layout, clip, encoder)
    device = default_device(device)

    # Both models' weights before any file is written.
    if caption_todo and captioner is None:
        caption.check()
    if feature_todo and encoder is None:
        clip.check()

    # 1. captions
    written_captions: list[str] = []
    if caption_todo:
        if captioner is None:
            captioner = caption.load(device)
        written_captions = caption_images(caption_todo, text_dir, *layout, *captioner, batch_size=batch_size,
                                          overwrite=True, **caption.generation_kwargs())
        captioner = None  # free the captioner before loading CLIP

    # 2. features (also for every caption rewritten just now)
    captions = {rgb: read_caption(caption_path(text_dir, *layout, rgb)) for rgb in feature_todo}
    features_written = 0
    if captions:
        if encoder is None:
            encoder = clip.load(device)
        features_written = write_text_features(captions, text_feat_dir, *layout, *encoder,
                                               batch_size=feat_batch_size, overwrite=True)
    dim = int(load_feature_file(feature_path(text_feat_dir, *layout, images[0][0])).numel())

    # 3. packed store
    packed_path = pack_features(text_feat_dir, *layout, entries=[rgb for rgb, _ in images]) if packed else None
    logger.info(
        "%s/%s: %d images, %d captions and %d feature files written (dim %d)%s", *layout, len(images),
        len(written_captions), features_written, dim, f", packed into {packed_path}" if packed_path else "",
    )
    return {"captions_written": len(written_captions), "features_written": features_written,
            "dim": dim, "packed": packed_path}

"""One COCO-style caption per image with an open_clip CoCa model.

The original release captioned NYU and KITTI with ExpansionNet v2; that model
is not packaged, so new images are captioned here with CoCa fine-tuned on
MS-COCO (`coca_ViT-L-14`, `mscoco_finetuned_laion2b_s13b_b90k`), which writes
the same kind of one-sentence description ("A bathroom with a sink and a
mirror.") in different wording.

Captions live at `<text_dir>/<dataset>/<split>/<image path without extension>.txt`,
one line each. Every file written holds exactly one non-empty line: when the
generated text has no letters or digits (e.g. a randomly initialised model),
`FALLBACK_CAPTION` is written instead.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from wordepth.data.text_features import key_path
from wordepth.errors import UserError
from wordepth.outputs import write_text
from wordepth.text.clip_features import create_open_clip_model

logger = logging.getLogger(__name__)

DEFAULT_CAPTION_MODEL = "coca_ViT-L-14"
DEFAULT_CAPTION_PRETRAINED = "mscoco_finetuned_laion2b_s13b_b90k"
FALLBACK_CAPTION = "An image."
# 'auto' is open_clip's beam search when `transformers` is installed (open_clip
# needs it for beam_search/top_p/top_k), otherwise the built-in greedy decoder.
GENERATION_TYPES = ("auto", "beam_search", "top_p", "top_k", "greedy")

_SOT = "<start_of_text>"
_EOT = "<end_of_text>"


# ----------------------------------------------------------------------------- caption files


def caption_path(text_dir: str | os.PathLike, dataset: str, split: str, rgb: str) -> Path:
    """`<text_dir>/<dataset>/<split>/<image path without extension>.txt`.

    Raises:
        PathEscapeError: ``rgb`` would leave the split's folder (``../..``).
    """
    return key_path(Path(text_dir) / dataset / split, rgb, ".txt")


def read_caption(path: str | os.PathLike) -> str:
    """The caption in a caption file (its first non-empty line, stripped).

    Raises:
        UserError: the file is not UTF-8 text.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"caption file {path} is not UTF-8 text ({err.reason} at byte {err.start}): "
                        "save it as UTF-8") from None
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def write_caption(path: str | os.PathLike, caption: str) -> None:
    """Write one caption as a single line, atomically (parents created)."""
    caption = " ".join(caption.split()) or FALLBACK_CAPTION
    write_text(path, caption + "\n")


# ----------------------------------------------------------------------------- text clean-up


def clean_caption(text: str) -> str:
    """Generated text -> one sentence: "a bathroom with a sink . " -> "A bathroom with a sink."

    Drops the start/end markers (and anything after the end marker), joins
    punctuation to the previous word, capitalises the first letter and ends the
    sentence with a full stop. Text without a letter or digit gives
    `FALLBACK_CAPTION`.
    """
    text = text.split(_EOT)[0].replace(_SOT, " ")
    text = " ".join(text.split())
    text = re.sub(r"\s+([.,!?;:])", r"\1", text)
    text = re.sub(r"\s+('(?:s|t|re|ve|m|ll|d))\b", r"\1", text)
    text = text.strip(" .,;:")
    if not any(ch.isalnum() for ch in text):
        return FALLBACK_CAPTION
    text = text[0].upper() + text[1:]
    if text[-1] not in ".!?":
        text += "."
    return text


def decode_tokens(tokens: torch.Tensor, tokenizer: Callable | None = None) -> str:
    """Token ids of one generated sequence -> raw text (markers removed, stops at end-of-text)."""
    import open_clip  # open_clip: heavy (0.3 s), only when a model is resolved, built or run

    decoder = getattr(tokenizer, "decoder", None)
    if decoder is None or not hasattr(tokenizer, "decode"):
        return open_clip.decode(tokens).split(_EOT)[0].replace(_SOT, "")
    sot = getattr(tokenizer, "sot_token_id", None)
    eot = getattr(tokenizer, "eot_token_id", None)
    ids = []
    for t in tokens.tolist():
        if t == eot:
            break
        if t != sot and t in decoder:  # ids outside the vocabulary (random weights) are dropped
            ids.append(t)
    return tokenizer.decode(ids)


# ----------------------------------------------------------------------------- generation


def load_captioner(model_name: str = DEFAULT_CAPTION_MODEL, pretrained: str | None = DEFAULT_CAPTION_PRETRAINED,
                   **options) -> tuple[nn.Module, Callable]:
    """CoCa model (eval mode) and its image transform; `pretrained=None`: random weights.

    ``options``: ``weights_path``, ``device``, ``cache_dir`` of
    :func:`wordepth.text.clip_features.create_open_clip_model`.

    Raises:
        WeightsUnavailableError: before building anything, when weights are missing.
    """
    return create_open_clip_model(model_name, pretrained, **options)


def _has_transformers() -> bool:
    import open_clip  # open_clip: heavy (0.3 s), only when a model is resolved, built or run

    return bool(getattr(open_clip.coca_model, "_has_transformers", False))


@torch.no_grad()
def greedy_generate(model: nn.Module, images: torch.Tensor, seq_len: int = 30, min_seq_len: int = 5) -> torch.Tensor:
    """Greedy CoCa decoding without `transformers` (open_clip's `top_k` with k=1).

    Args:
        model: open_clip CoCa model.
        images: (B, 3, H, W) preprocessed images.
        seq_len: maximum length including the start token.
        min_seq_len: the end token is blocked while shorter than this.

    Returns:
        (B, L) token ids starting with the start token, L <= seq_len.
    """
    sot, eot, pad = 49406, 49407, getattr(model, "pad_id", 0)
    image_latent, image_embs = model._encode_image(images)
    out = torch.full((images.shape[0], 1), sot, dtype=torch.long, device=images.device)  # (B, 1)
    done = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
    while out.shape[1] < seq_len and not done.all():
        logits = model(images, out, image_latent=image_latent, image_embs=image_embs, output_labels=False)["logits"]
        logits = logits[:, -1].float()  # (B, V)
        if out.shape[1] < min_seq_len:
            logits[:, eot] = float("-inf")
        nxt = logits.argmax(dim=-1)  # (B,)
        if out.shape[1] + 1 == seq_len:
            nxt = torch.full_like(nxt, eot)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        out = torch.cat([out, nxt[:, None]], dim=1)
        done |= nxt == eot
    return out


@torch.no_grad()
def generate_captions(
    model: nn.Module,
    images: torch.Tensor,
    tokenizer: Callable | None = None,
    seq_len: int = 30,
    generation_type: str = "auto",
    **generate_kwargs,
) -> list[str]:
    """Clean one-sentence captions for a batch of preprocessed images.

    Args:
        model: open_clip CoCa model.
        images: (B, 3, H, W).
        tokenizer: the model's tokenizer (for decoding); default open_clip's.
        seq_len: maximum generated length in tokens.
        generation_type: one of `GENERATION_TYPES`.
        **generate_kwargs: passed to `CoCa.generate` (e.g. `num_beams`, `top_p`).
    """
    if generation_type not in GENERATION_TYPES:
        raise UserError(f"generation_type must be one of {GENERATION_TYPES}, got '{generation_type}'")
    min_seq_len = generate_kwargs.get("min_seq_len", 5)
    if seq_len <= min_seq_len:
        raise UserError(f"seq_len ({seq_len}) must be larger than min_seq_len ({min_seq_len})")
    if generation_type == "auto":
        generation_type = "beam_search" if _has_transformers() else "greedy"
    model.eval()
    if generation_type == "greedy":
        tokens = greedy_generate(model, images, seq_len=seq_len, min_seq_len=min_seq_len)
    else:
        if not _has_transformers():
            raise RuntimeError(
                f"generation_type '{generation_type}' needs the `transformers` package (open_clip's CoCa.generate); "
                "install it or use --generation_type greedy"
            )
        tokens = model.generate(images, seq_len=seq_len, generation_type=generation_type, **generate_kwargs)
    return [clean_caption(decode_tokens(row.cpu(), tokenizer)) for row in tokens]


def _load_image(path: str | os.PathLike, preprocess: Callable) -> torch.Tensor:
    with Image.open(path) as img:
        return preprocess(img.convert("RGB"))  # (3, H, W)


def caption_images(
    images: Sequence[tuple[str, str | os.PathLike]],
    text_dir: str | os.PathLike,
    dataset: str,
    split: str,
    model: nn.Module,
    preprocess: Callable,
    tokenizer: Callable | None = None,
    batch_size: int = 8,
    seq_len: int = 30,
    generation_type: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    **generate_kwargs,
) -> list[str]:
    """Caption images into the `text/` layout, skipping those already captioned.

    Args:
        images: (image path as in the split file, file on disk) pairs.
        text_dir, dataset, split: the output layout (`caption_path`).
        model, preprocess: from `load_captioner`.
        tokenizer: for decoding; default open_clip's.
        batch_size: images per `generate` call.
        seq_len, generation_type, **generate_kwargs: see `generate_captions`.
        overwrite: recaption images whose caption file exists.
        progress: show a tqdm bar.

    Returns:
        The image paths (as given) whose caption file was written.
    """
    todo = [(rgb, f) for rgb, f in images if overwrite or not caption_path(text_dir, dataset, split, rgb).is_file()]
    if len(todo) < len(images):
        logger.info("skipping %d images that already have captions", len(images) - len(todo))
    device = next(model.parameters()).device
    written: list[str] = []
    with tqdm(total=len(todo), desc=f"captions {dataset}/{split}", unit="img", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            pixels = torch.stack([_load_image(f, preprocess) for _, f in batch]).to(device)  # (B, 3, H, W)
            captions = generate_captions(model, pixels, tokenizer, seq_len, generation_type, **generate_kwargs)
            for (rgb, _), caption in zip(batch, captions):
                write_caption(caption_path(text_dir, dataset, split, rgb), caption)
                logger.debug("%s: %s", rgb, caption)
            written.extend(rgb for rgb, _ in batch)
            bar.update(len(batch))
    return written

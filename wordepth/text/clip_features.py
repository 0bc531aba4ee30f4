"""Frozen CLIP text features for captions, in the original release's format.

The original release encodes each caption with the frozen CLIP ResNet-50 text
encoder (`RN50`, OpenAI weights), L2-normalises the output and stores it per
image as a (1, 1024) float16 tensor. This module loads such an encoder through
open_clip, resolves its weights without surprises on offline machines, and
writes features in that layout (see `wordepth.data.text_features`).

Weights are resolved *before* any work is done: a local `weights_path` must
exist; a named pretrained tag is looked up in the Hugging Face cache and in
open_clip's URL cache (`~/.cache/clip`), and downloaded only when
`HF_HUB_OFFLINE` is not set. Otherwise `WeightsUnavailableError` names the
weights needed and the `--weights_path` flag.
"""
from __future__ import annotations

import contextlib
import logging
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from wordepth.data.text_features import describe_load_error, feature_path, save_feature_file
from wordepth.errors import UserError
from wordepth.models.wordepth import WorDepthConfig, no_random_init

logger = logging.getLogger(__name__)

DEFAULT_CLIP_MODEL = WorDepthConfig.clip_model  # the released models' (RN50); a model records its own
DEFAULT_CLIP_PRETRAINED = "openai"

# Keys of OpenAI's TorchScript archives that are not parameters of open_clip's CLIP.
_OPENAI_JIT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights are neither on disk nor downloadable."""


# ----------------------------------------------------------------------------- helpers


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hf_offline() -> bool:
    """Whether Hugging Face downloads are disabled (`HF_HUB_OFFLINE`), read now."""
    return _env_true("HF_HUB_OFFLINE")


def hf_cache_dir() -> str:
    """The Hugging Face hub cache, from the environment as it is now.

    huggingface_hub reads these variables once at import; reading them again
    lets a caller (or a test) redirect the cache after import.
    """
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return os.path.expandvars(os.path.expanduser(explicit))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(os.path.expandvars(os.path.expanduser(home)), "hub")


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a TorchScript zip such as OpenAI's `RN50.pt` (has `constants.pkl`)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _describe(model_name: str, pretrained: str, cfg: Mapping) -> str:
    sources = []
    if cfg.get("hf_hub"):
        files = " or ".join(name for _, name in _hf_candidates(cfg["hf_hub"]))
        sources.append(f"Hugging Face hub '{os.path.split(cfg['hf_hub'])[0]}' ({files})")
    if cfg.get("url"):
        sources.append(cfg["url"])
    return f"open_clip model '{model_name}' with pretrained tag '{pretrained}'" + (
        f" (from {' or '.join(sources)})" if sources else ""
    )


# ----------------------------------------------------------------------------- weights


def _hf_candidates(hf_hub: str) -> list[tuple[str, str]]:
    """(repo id, filename) pairs to try for an open_clip `hf_hub` entry."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME  # open_clip: heavy, only here

    repo_id, filename = os.path.split(hf_hub)
    if not filename:  # 'org/model/' means open_clip's default file names
        return [(repo_id, HF_SAFE_WEIGHTS_NAME), (repo_id, HF_WEIGHTS_NAME)]
    names = [filename]
    if filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return [(repo_id, name) for name in names]


def _try_hf(hf_hub: str, cache_dir: str, local_only: bool) -> str | None:
    import open_clip  # open_clip: heavy (0.3 s), only when a model is resolved, built or run

    if not hf_hub or not open_clip.pretrained.has_hf_hub():
        return None
    for repo_id, filename in _hf_candidates(hf_hub):
        try:
            return open_clip.pretrained.hf_hub_download(
                repo_id=repo_id, filename=filename, cache_dir=cache_dir, local_files_only=local_only
            )
        except Exception as err:  # not cached / not on the hub / hub unreachable
            logger.debug("hf hub %s/%s unavailable (local_only=%s): %s", repo_id, filename, local_only, err)
            if not local_only and type(err).__name__ == "LocalEntryNotFoundError":
                break  # the hub could not be reached (after retries): do not retry for the next file name
    return None


def resolve_weights(
    model_name: str,
    pretrained: str | None = None,
    weights_path: str | os.PathLike | None = None,
    cache_dir: str | None = None,
) -> str | None:
    """Find (or, when online, download) the weights file for an open_clip model.

    Args:
        model_name: open_clip model name, e.g. `RN50`.
        pretrained: open_clip pretrained tag (e.g. `openai`) or a file path;
            None (with no `weights_path`) means random weights.
        weights_path: local weights file; takes precedence over the tag.
        cache_dir: cache for both the hub and URL downloads (open_clip's
            `cache_dir`); default: the Hugging Face cache and `~/.cache/clip`.

    Returns:
        The local file path, or None for random weights.

    Raises:
        WeightsUnavailableError: the weights are not on disk and cannot be downloaded.
    """
    import open_clip  # open_clip: heavy (0.3 s), only when a model is resolved, built or run

    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if path.is_dir():
            raise WeightsUnavailableError(f"--weights_path {weights_path} is a folder, not a weights file")
        if not path.is_file():
            raise WeightsUnavailableError(f"--weights_path {weights_path} does not exist (weights for '{model_name}')")
        return str(path)
    if not pretrained:
        return None
    if Path(pretrained).expanduser().is_file():
        return str(Path(pretrained).expanduser())
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise WeightsUnavailableError(
            f"unknown pretrained tag '{pretrained}' for open_clip model '{model_name}' (known tags: {known}); "
            "pass a local file with --weights_path"
        )
    what = _describe(model_name, pretrained, cfg)
    hf_dir = cache_dir or hf_cache_dir()
    url = cfg.get("url", "")
    url_file = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url) if url else None

    # 1. Already on disk: the hub cache, then open_clip's URL cache.
    found = _try_hf(cfg.get("hf_hub", ""), hf_dir, local_only=True)
    if found is None and url_file is not None and url_file.is_file():
        found = str(url_file)
    if found is not None:
        logger.info("using cached weights for %s: %s", what, found)
        return found

    # 2. Download, unless offline.
    if hf_offline():
        raise WeightsUnavailableError(
            f"{what} is not in the local cache (HF cache {hf_dir}"
            + (f", {url_file}" if url_file else "")
            + ") and HF_HUB_OFFLINE is set; download it on a connected machine or pass the file with --weights_path"
        )
    errors = []
    found = _try_hf(cfg.get("hf_hub", ""), hf_dir, local_only=False)
    if found is None and url:
        try:
            found = open_clip.pretrained.download_pretrained_from_url(url, cache_dir=str(url_file.parent))
        except Exception as err:  # no network, checksum mismatch, ...
            errors.append(str(err))
    if found is None:
        detail = f": {errors[-1]}" if errors else ""
        raise WeightsUnavailableError(
            f"could not download {what}{detail}; download it on a connected machine or pass the file with --weights_path"
        )
    return found


def load_weights(model: nn.Module, path: str) -> None:
    """Load a full open_clip checkpoint, safetensors file or OpenAI TorchScript archive."""
    import open_clip  # open_clip: heavy (0.3 s), only when a model is resolved, built or run

    if is_torchscript_archive(path):
        # OpenAI's own release (~/.cache/clip/RN50.pt) is TorchScript, which
        # torch.load(weights_only=True) refuses; its state_dict has open_clip's keys.
        state_dict = torch.jit.load(path, map_location="cpu").state_dict()
        for key in _OPENAI_JIT_EXTRA_KEYS:
            state_dict.pop(key, None)
        model.load_state_dict(state_dict, strict=True)
    else:
        open_clip.load_checkpoint(model, path, strict=True, weights_only=True)


def _load_failure(err: Exception) -> str:
    """Why a weights file could not be loaded, in one line."""
    text = str(err)
    if "Missing key" in text or "Unexpected key" in text or "size mismatch" in text:
        return "its parameters do not match the model (weights of another model?)"
    return describe_load_error(err)


def create_open_clip_model(
    model_name: str,
    pretrained: str | None = None,
    weights_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
) -> tuple[nn.Module, Callable]:
    """Build an open_clip model in eval mode with its evaluation image transform.

    Weights are resolved first (`resolve_weights`), so nothing is built when
    they are unavailable. The architecture and preprocessing follow the tag's
    configuration (e.g. QuickGELU for OpenAI weights) also when the weights come
    from `weights_path`.
    """
    import open_clip  # open_clip: heavy (0.3 s), only when a model is resolved, built or run

    path = resolve_weights(model_name, pretrained, weights_path, cache_dir)
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained else {}
    quick_gelu = bool(tag_cfg.get("quick_gelu", False)) or (path is not None and is_torchscript_archive(path))
    # the tag's preprocessing; random weights only without a file (the file's strict load writes every
    # weight, so their random initialisation, 1.1 s of 1.8 s for RN50 on 2 CPU cores, is skipped)
    with contextlib.nullcontext() if path is None else no_random_init():
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name,
            pretrained=None,
            force_quick_gelu=quick_gelu,
            image_mean=tag_cfg.get("mean"),
            image_std=tag_cfg.get("std"),
            image_interpolation=tag_cfg.get("interpolation"),
            image_resize_mode=tag_cfg.get("resize_mode"),
        )
    if path is None:
        logger.warning("open_clip model '%s' has random weights (no pretrained tag or weights file)", model_name)
    else:
        logger.info("loading %s weights from %s", model_name, path)
        try:
            load_weights(model, path)
        except Exception as err:  # a truncated download, a pickle needing code, another model's weights
            raise WeightsUnavailableError(
                f"cannot load {path} as weights of open_clip model '{model_name}': {_load_failure(err)}. Pass an "
                "open_clip checkpoint, a safetensors file or OpenAI's RN50.pt with --weights_path") from None
    model.to(device).eval().requires_grad_(False)
    return model, preprocess


# ----------------------------------------------------------------------------- text encoder


def load_text_encoder(
    model_name: str = DEFAULT_CLIP_MODEL,
    pretrained: str | None = DEFAULT_CLIP_PRETRAINED,
    weights_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
) -> tuple[nn.Module, Callable]:
    """The frozen CLIP model and its tokenizer (`pretrained=None`: random weights).

    Raises:
        WeightsUnavailableError: before building anything, when weights are missing.
    """
    model, _ = create_open_clip_model(model_name, pretrained, weights_path, device, cache_dir)
    return model, get_tokenizer(model_name)


def get_tokenizer(model_name: str) -> Callable:
    """open_clip's tokenizer of a model (CLIP or CoCa)."""
    import open_clip  # open_clip: heavy (0.3 s), only when a model is resolved, built or run

    return open_clip.get_tokenizer(model_name)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_captions(
    model: nn.Module,
    tokenizer: Callable,
    captions: Sequence[str],
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """CLIP text features of captions, L2-normalised.

    Args:
        model: open_clip model with `encode_text`.
        tokenizer: its tokenizer (list of str -> (N, 77) token ids).
        captions: N captions.
        batch_size: captions per forward pass.
        device: where to run; default: the model's device.

    Returns:
        (N, D) float32 tensor on the CPU (D: the model's width, 1024 for RN50).
    """
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(captions), batch_size):
        tokens = tokenizer(list(captions[start:start + batch_size])).to(device)  # (B, 77)
        feats = model.encode_text(tokens).float()  # (B, D)
        chunks.append(F.normalize(feats, dim=-1).cpu())
    model.train(was_training)
    if not chunks:
        return torch.zeros(0, text_feature_dim(model, tokenizer))
    return torch.cat(chunks)  # (N, D)


def text_feature_dim(model: nn.Module, tokenizer: Callable) -> int:
    """Width D of the model's text features (1024 for RN50)."""
    return encode_captions(model, tokenizer, [""]).shape[1]


def clip_text_width(model_name: str) -> int | None:
    """The text-feature width of an open_clip model by name (``ViT-B-32`` -> 512), read from open_clip's model
    config file without importing open_clip (seconds); None for a name open_clip does not ship."""
    import importlib.util
    import json

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations or "/" in model_name or "\\" in model_name:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model_configs" / f"{model_name}.json"
    try:
        return int(json.loads(path.read_text(encoding="utf-8"))["embed_dim"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------- feature files


def pending_features(
    captions: Mapping[str, str], text_feat_dir: str | os.PathLike, dataset: str, split: str, overwrite: bool = False
) -> dict[str, str]:
    """The captions (image path -> caption) whose feature file still has to be written."""
    if overwrite:
        return dict(captions)
    return {rgb: text for rgb, text in captions.items() if not feature_path(text_feat_dir, dataset, split, rgb).is_file()}


def write_text_features(
    captions: Mapping[str, str],
    text_feat_dir: str | os.PathLike,
    dataset: str,
    split: str,
    model: nn.Module,
    tokenizer: Callable,
    batch_size: int = 64,
    overwrite: bool = False,
    progress: bool = True,
) -> int:
    """Encode captions and save one (1, D) float16 file per image.

    Files are written at `<text_feat_dir>/<dataset>/<split>/<image path without
    extension>.pt`, batch by batch so an interrupted run resumes. Each distinct
    caption is encoded once, so identical captions get identical features.

    Args:
        captions: image path (as in the split file) -> caption.
        text_feat_dir, dataset, split: the output layout.
        model, tokenizer: from `load_text_encoder`.
        batch_size: captions per forward pass.
        overwrite: rewrite existing files instead of skipping them.
        progress: show a tqdm bar.

    Returns:
        The number of files written.
    """
    todo = pending_features(captions, text_feat_dir, dataset, split, overwrite)
    skipped = len(captions) - len(todo)
    if skipped:
        logger.info("skipping %d existing feature files (use --overwrite to recompute)", skipped)
    by_caption: dict[str, list[str]] = {}
    for rgb, text in todo.items():
        by_caption.setdefault(text, []).append(rgb)
    unique = list(by_caption)
    written = 0
    with tqdm(total=len(todo), desc=f"text features {dataset}/{split}", unit="img", disable=not progress) as bar:
        for start in range(0, len(unique), batch_size):
            batch = unique[start:start + batch_size]
            feats = encode_captions(model, tokenizer, batch, batch_size=batch_size)  # (B, D)
            for text, feat in zip(batch, feats):
                for rgb in by_caption[text]:
                    save_feature_file(feature_path(text_feat_dir, dataset, split, rgb), feat.unsqueeze(0))  # (1, D)
                    written += 1
                    bar.update(1)
    return written

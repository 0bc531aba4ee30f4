"""Loading and saving checkpoints: the original release's layout, this project's, Swin-L weights.

Every file is read with ``torch.load(weights_only=True)``: unpickling never runs code. The only
non-tensor objects allowed are the numpy pieces the original release stores (a numpy int32 array
``best_eval_steps``).

Layouts recognised by :func:`inspect_checkpoint`:

- ``original``: ``{'global_step', 'model': {'module.backbone...': ...}, 'best_eval_*'}``, the
  network wrapped in DataParallel; Swin downsampling at the *end* of stages 1-3.
- ``wordepth``: this project's, ``{'format': 'wordepth', 'config': {...}, 'model': {...}, ...}``.
- ``swin_imagenet``: the Swin release's classification weights (``{'model': {'layers.0.blocks...'}}``).
- ``state_dict``: a bare network state dict (with or without ``module.``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from wordepth.models.wordepth import WorDepth, WorDepthConfig, preset_config
from wordepth.variants import Variant, get_variant, grid_dataset, variant_of

log = logging.getLogger(__name__)

FORMAT = "wordepth"
FORMAT_VERSION = 1

_reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
# numpy objects found in the original release's checkpoints (saved with numpy 1.x or 2.x).
NUMPY_SAFE_GLOBALS = [
    _reconstruct,
    (_reconstruct, "numpy.core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    type(np.dtype(np.int32)),
    type(np.dtype(np.int64)),
    type(np.dtype(np.float32)),
    type(np.dtype(np.float64)),
]


class CheckpointError(RuntimeError):
    """A file that cannot be used as asked; the message says what it looks like instead."""


def safe_load(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` and the numpy allow-list of the original release.

    ``mmap=True`` maps the file instead of reading it (a 1 GB ``.pth``: 2.3-3.5 -> 1.4-1.6 s on 2 CPU
    cores): for weights that are copied into a network right away, since the tensors stay backed
    by the file (never for state kept while the file may be rewritten, such as a resumed
    optimizer's). Files in torch's legacy (pre-zip) format cannot be mapped and are read.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            if mmap:
                try:
                    return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
                except Exception:  # torch's legacy (pre-zip) format cannot be mapped; other errors recur below
                    pass
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle errors, truncated zips, disallowed globals
        msg = str(err).strip().splitlines()
        detail = next((line for line in msg if "Unsupported global" in line or "error" in line.lower()),
                      msg[0] if msg else type(err).__name__)
        raise CheckpointError(
            f"cannot read {path} as a weights-only checkpoint ({detail.strip()}). "
            "Files that need arbitrary code to unpickle are refused; a truncated download also ends here."
        ) from None


# --------------------------------------------------------------------------- key mapping
_ORIG_DOWNSAMPLE = re.compile(r"^backbone\.layers\.(\d+)\.downsample\.")
_OURS_DOWNSAMPLE = re.compile(r"^backbone\.layers\.(\d+)\.downsample\.")


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop a DataParallel/DDP ``module.`` prefix (and ``_orig_mod.`` from torch.compile) if present."""
    out = {}
    for k, v in state.items():
        for p in (prefix, "_orig_mod."):
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def original_to_project(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map original-release (or this project's) network keys onto this project's modules.

    The original Swin puts patch merging at the end of stages 1-3 (``layers.i.downsample``); timm
    puts it at the start of stages 2-4 (``layers.i+1.downsample``). ``relative_position_index`` is a
    constant buffer that timm rebuilds, so it is dropped.
    """
    state = strip_prefix(state)
    # only the original layout has patch merging in stage 1; this project's keys pass unchanged
    original_layout = any(k.startswith("backbone.layers.0.downsample.") for k in state)
    out = {}
    for k, v in state.items():
        if k.endswith("relative_position_index"):
            continue
        if original_layout:
            k = _ORIG_DOWNSAMPLE.sub(lambda m: f"backbone.layers.{int(m.group(1)) + 1}.downsample.", k)
        out[k] = v
    return out


def project_to_original(model: WorDepth) -> dict[str, torch.Tensor]:
    """This project's network as an original-release state dict (``module.`` keys)."""
    out = {}
    for k, v in model.state_dict().items():
        k = _OURS_DOWNSAMPLE.sub(lambda m: f"backbone.layers.{int(m.group(1)) - 1}.downsample.", k)
        out["module." + k] = v
    for name, module in model.named_modules():
        if hasattr(module, "relative_position_index") and name.endswith("attn"):
            out[f"module.{name}.relative_position_index"] = module.relative_position_index.clone()
    return out


def inspect_checkpoint(obj: Any) -> str:
    """Which layout a loaded checkpoint object has: see the module docstring."""
    if not isinstance(obj, dict):
        return "unknown"
    if obj.get("format") == FORMAT:
        return "wordepth"
    inner = obj.get("model", obj.get("state_dict", obj))
    if not isinstance(inner, dict) or not inner:
        return "unknown"
    keys = [k for k in inner if isinstance(k, str)]
    if not keys or not all(torch.is_tensor(inner[k]) for k in keys[:50]):
        return "unknown"
    bare = [k[len("module."):] if k.startswith("module.") else k for k in keys]
    if any(k.startswith("backbone.") for k in bare) and any(k.startswith("text_encoder.") for k in bare):
        return "original" if "model" in obj else "state_dict"
    if any(k.startswith("layers.0.blocks.") for k in bare) and "patch_embed.proj.weight" in bare:
        return "swin_imagenet"
    return "unknown"


def _describe(obj: Any) -> str:
    kind = inspect_checkpoint(obj)
    if kind == "swin_imagenet":
        return "Swin ImageNet classification weights (use them as --pretrain, not as a WorDepth checkpoint)"
    if kind == "unknown":
        if isinstance(obj, dict):
            return f"an unrecognised dict with keys {sorted(map(str, obj))[:8]}"
        return f"a {type(obj).__name__}, not a checkpoint dict"
    return {"original": "an original WorDepth release checkpoint", "wordepth": "a checkpoint of this project",
            "state_dict": "a bare WorDepth state dict"}[kind]


def load_network_state(model: WorDepth, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load a network state dict (original or project keys) with a readable error on mismatch.

    The absolute position embedding is resized (bicubic) if its grid differs from the model's.
    """
    state = original_to_project(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state))
              if state[k].shape != own[k].shape and k != "backbone.absolute_pos_embed"]
    if missing or unexpected or shapes:
        def head(items: list[str]) -> str:
            return ", ".join(items[:6]) + (f" ... (+{len(items) - 6} more)" if len(items) > 6 else "")
        parts = [f"{source} does not match the WorDepth network ({model.cfg.backbone.embed_dim}-d Swin)."]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {head(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {head(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {head(shapes)}")
        raise CheckpointError("\n  ".join(parts))
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source} holds non-finite weights (NaN/inf) in {len(bad)} tensor(s), e.g. {bad[0]}: "
                              "the training diverged or the file is damaged")
    ape = state["backbone.absolute_pos_embed"]
    if ape.shape != own["backbone.absolute_pos_embed"].shape:
        log.warning("resizing the absolute position embedding from %s to %s",
                    tuple(ape.shape[2:]), tuple(own["backbone.absolute_pos_embed"].shape[2:]))
        state = dict(state)
        state["backbone.absolute_pos_embed"] = torch.nn.functional.interpolate(
            ape.float(), size=own["backbone.absolute_pos_embed"].shape[2:], mode="bicubic", align_corners=False)
    model.load_state_dict(state, strict=True)


def config_from_original(state: dict[str, torch.Tensor], **overrides) -> WorDepthConfig:
    """Network config of an original-release state dict: Swin-L with the APE grid it was trained at."""
    state = strip_prefix(state)
    ape = state.get("backbone.absolute_pos_embed")
    if ape is None:
        raise CheckpointError("state dict has no backbone.absolute_pos_embed: not a WorDepth network")
    grid = tuple(int(s) for s in ape.shape[2:])
    embed = int(ape.shape[1])
    preset = "swin_large" if embed == 192 else None
    if preset is None:
        raise CheckpointError(f"unsupported backbone width {embed} in an original-layout checkpoint")
    return preset_config(preset, ape_grid=grid, **overrides)


def load_checkpoint(path: str | os.PathLike, variant: str | None = None, legacy: bool | None = None,
                    max_depth: float | None = None, prior_mean: float | None = None, map_location: Any = "cpu",
                    **overrides) -> WorDepth:
    """Build the network stored in ``path`` and return it in eval mode.

    Works for the original release's checkpoints (``.pth``), this project's, and ``.safetensors``
    files written by :func:`save_safetensors`. Original checkpoints do not record which model they
    hold: name it with ``variant`` ('nyu', 'nyu_legacy', 'kitti', 'kitti_legacy'); without it they
    load as the current NYU model. This project's files record their settings and need nothing.

    Args:
        path: checkpoint file.
        variant: a released model by name (:mod:`wordepth.variants`); sets legacy, max depth and
            prior mean. A mismatch that can be seen (a KITTI-sized position embedding with an NYU
            variant, or another variant recorded in the file) is warned about in one line.
        legacy: skip connections in the decoder (the paper's model, ``--lagacy``); overrides the variant.
        max_depth: maximum depth (used by the training loss only); overrides the variant.
        prior_mean: log-depth prior of the output layer (1.54 NYU, 2.54 KITTI); overrides the variant.
        map_location: where tensors are loaded.
        **overrides: other :class:`WorDepthConfig` fields.
    """
    # mapped: the weights are copied into the new network below and the file's tensors dropped
    obj = load_safetensors(path) if Path(path).suffix == ".safetensors" else safe_load(path, map_location, mmap=True)
    given: dict[str, Any] = {}
    if variant is not None:
        chosen = get_variant(variant)
        warn_variant_mismatch(obj, chosen, str(path))
        given.update(chosen.model_fields)
    given.update({k: v for k, v in dict(legacy=legacy, max_depth=max_depth, prior_mean=prior_mean).items()
                  if v is not None})
    given.update(overrides)
    if variant is None and legacy is None and inspect_checkpoint(obj) in ("original", "state_dict"):
        log.info("%s: original-release checkpoint, loaded as the current NYU model; name another with "
                 "variant= / --variant (nyu_legacy: the paper's model)", path)
    return network_from_checkpoint(obj, str(path), lambda stored: given).eval()


def checkpoint_grid(obj: Any) -> tuple[int, int] | None:
    """The position-embedding grid a loaded checkpoint was trained at (None if it cannot be seen)."""
    kind = inspect_checkpoint(obj)
    if kind == "wordepth":
        grid = obj["config"]["model"].get("backbone", {}).get("ape_grid")
        return tuple(grid) if grid else None
    if kind in ("original", "state_dict"):
        ape = strip_prefix(obj["model"] if kind == "original" else obj).get("backbone.absolute_pos_embed")
        return None if ape is None else tuple(int(s) for s in ape.shape[2:])
    return None


def warn_variant_mismatch(obj: Any, chosen: Variant, source: str) -> None:
    """One-line warnings when a checkpoint visibly holds another variant than the one named."""
    if inspect_checkpoint(obj) == "wordepth":
        recorded = variant_of(WorDepthConfig.from_dict(obj["config"]["model"]))
        if recorded is not None and recorded != chosen.name:
            log.warning("%s records variant %r but variant %r was given: using the settings of %r", source,
                        recorded, chosen.name, chosen.name)
            return
    grid = checkpoint_grid(obj)
    seen = grid_dataset(grid) if grid is not None else None
    if seen is not None and seen.name != chosen.dataset.name:
        log.warning("%s has a %s-sized position embedding (%dx%d) but variant %r was given (a %s model)",
                    source, seen.name.upper(), grid[0], grid[1], chosen.name, chosen.dataset.name.upper())


def network_from_checkpoint(obj: Any, source: str, overrides: Callable[[dict | None], dict]) -> WorDepth:
    """The network stored in a loaded checkpoint object, with its weights.

    Args:
        obj: what :func:`safe_load` returned.
        source: the file name, for messages.
        overrides: called with the checkpoint's own model config (this project's layout) or None
            (the original layout records none); returns the :class:`WorDepthConfig` fields to set.
    """
    kind = inspect_checkpoint(obj)
    if kind == "wordepth":
        try:
            stored = obj["config"]["model"]
            cfg = WorDepthConfig.from_dict(stored)
            state = obj["model"]
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{source} is this project's checkpoint but its config is missing or malformed "
                                  f"({type(err).__name__}: {err}); re-save it, or load its weights with the "
                                  "matching --preset") from None
        cfg = cfg.replace(**overrides(stored))
    elif kind in ("original", "state_dict"):
        state = obj["model"] if kind == "original" else obj
        cfg = config_from_original(state, **overrides(None))
    else:
        raise CheckpointError(f"{source} is not a WorDepth checkpoint: it looks like {_describe(obj)}.")
    model = WorDepth(cfg, init_weights=False)  # every weight is loaded below (strictly)
    load_network_state(model, state, source=source)
    return model


# --------------------------------------------------------------------------- Swin-L ImageNet weights
def swin_imagenet_to_backbone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Swin classification weights (original release or timm layout) -> backbone state (timm names)."""
    state = strip_prefix(state.get("model", state))
    original_layout = "layers.0.downsample.reduction.weight" in state
    out = {}
    for k, v in state.items():
        if k.startswith(("head", "norm.")) or k.endswith(("relative_position_index", "attn_mask")):
            continue
        if original_layout:
            k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", k)
        out[k] = v
    return out


def load_swin_pretrained(backbone: nn.Module, source: str) -> tuple[list[str], list[str]]:
    """Initialise the backbone from ImageNet weights.

    Args:
        source: a file in the Swin release layout (``swin_large_patch4_window12_384_22k.pth``) or
            ``timm:<model name>`` (e.g. ``timm:swin_large_patch4_window12_384.ms_in22k``), which timm
            downloads (needs internet).

    Returns:
        (missing, unexpected) keys; the APE and the stage norms are new, as in the original.
    """
    if source.startswith("timm:"):
        import timm

        name = source[len("timm:"):]
        try:
            ref = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as err:
            raise CheckpointError(
                f"could not get timm weights {name!r} ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
                "Without internet, download swin_large_patch4_window12_384_22k.pth elsewhere and pass its path."
            ) from None
        state = ref.state_dict()
    else:
        if not Path(source).is_file():
            raise FileNotFoundError(
                f"Swin weights not found: {source}. Download swin_large_patch4_window12_384_22k.pth from "
                "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
                "swin_large_patch4_window12_384_22k.pth, or pass --pretrain "
                "timm:swin_large_patch4_window12_384.ms_in22k (needs internet)")
        obj = safe_load(source)
        if inspect_checkpoint(obj) != "swin_imagenet":
            raise CheckpointError(f"{source} is not Swin ImageNet weights: it looks like {_describe(obj)}.")
        state = obj
    state = swin_imagenet_to_backbone(state)
    own = backbone.state_dict()
    bad = [k for k in state if k in own and state[k].shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{source}: shapes differ from the backbone for {bad[:5]} "
                              "(a different Swin size or window?)")
    result = backbone.load_state_dict(state, strict=False)
    new = [k for k in result.missing_keys if not k.startswith(("norm", "absolute_pos_embed"))]
    if new:
        raise CheckpointError(f"{source}: backbone weights missing for {new[:5]} (+{max(len(new) - 5, 0)})")
    return list(result.missing_keys), list(result.unexpected_keys)


# --------------------------------------------------------------------------- saving
def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash or a full disk never leaves a truncated file at ``path``; the previous file stays.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError):
            raise CheckpointError(f"could not write {path}: {err.strerror or err}; the previous file is kept") from err
        raise


def save_original_checkpoint(model: WorDepth, path: str | os.PathLike, global_step: int,
                             best_higher: torch.Tensor | None = None, best_lower: torch.Tensor | None = None,
                             best_steps: np.ndarray | None = None) -> None:
    """Write ``model`` in the original release's layout, loadable by the original code."""
    atomic_save({
        "global_step": int(global_step),
        "model": project_to_original(model),
        "best_eval_measures_higher_better": torch.zeros(3) if best_higher is None else best_higher.cpu(),
        "best_eval_measures_lower_better": torch.zeros(6) + 1e3 if best_lower is None else best_lower.cpu(),
        "best_eval_steps": np.zeros(9, dtype=np.int32) if best_steps is None else np.asarray(best_steps, np.int32),
    }, path)


# --------------------------------------------------------------------------- safetensors
def save_safetensors(model: WorDepth, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the network as ``path`` (``.safetensors``: tensors only, no pickle) and ``path.json``.

    The network config (and its variant name) goes into the safetensors header and into the small
    JSON beside it, so :func:`load_checkpoint` needs no flags. Returns both paths.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: the file name must end in .safetensors")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "variant": variant_of(model.cfg),
            "config": {"model": model.cfg.to_dict()}}
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp), metadata={"wordepth": json.dumps(meta)})
    os.replace(tmp, path)
    sidecar = path.with_suffix(".json")
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    return path, sidecar


def load_safetensors(path: str | os.PathLike) -> dict:
    """A ``.safetensors`` file of :func:`save_safetensors` as a checkpoint dict of this project's layout.

    The config comes from the file's header, else from the JSON beside it; a bare safetensors
    state dict (no config) is treated like a bare state dict of the original network.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {path} as a safetensors file ({err})") from None
    meta = json.loads(header["wordepth"]) if "wordepth" in header else None
    sidecar = path.with_suffix(".json")
    if meta is None and sidecar.is_file():
        meta = json.loads(sidecar.read_text())
    if meta is None:
        return state
    return {"format": FORMAT, "config": meta["config"], "model": state}

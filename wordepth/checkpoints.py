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
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import timm
import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from wordepth.errors import UserError
from wordepth.models.wordepth import WorDepth, WorDepthConfig, preset_config
from wordepth.outputs import disk_hint, write_atomic, write_json, write_reason
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


class CheckpointError(UserError, RuntimeError):
    """A file that cannot be used as asked; the message says what it looks like instead."""


def safe_load(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` and the numpy allow-list of the original release.

    ``mmap=True`` maps the file instead of reading it (a 1 GB ``.pth``: 2.3-3.5 -> 1.4-1.6 s on 2 CPU
    cores): for weights that are copied into a network right away, since the tensors stay backed
    by the file (never for state kept while the file may be rewritten, such as a resumed
    optimizer's). Files in torch's legacy (pre-zip) format cannot be mapped and are read. A
    ``.safetensors`` file is read by :func:`load_safetensors`.
    """
    path = Path(path)
    if path.suffix == ".safetensors":  # tensors only: read without pickle
        return load_safetensors(path)
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


def _mismatch(own: dict[str, tuple], given: dict[str, tuple], source: str, embed_dim: int) -> str | None:
    """Why a state (its keys and shapes) does not fit a network's; None when it fits.

    The absolute position embedding may differ in its grid (it is resized), not in its width.
    """
    def head(items: list[str]) -> str:
        return ", ".join(items[:6]) + (f" ... (+{len(items) - 6} more)" if len(items) > 6 else "")

    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    ape = "backbone.absolute_pos_embed"

    def differs(k: str) -> bool:
        a, b = tuple(given[k]), tuple(own[k])
        return (a[:2] != b[:2] or len(a) != len(b)) if k == ape else a != b

    shapes = [f"{k}: file {tuple(given[k])} vs model {tuple(own[k])}" for k in sorted(set(own) & set(given))
              if differs(k)]
    if not (missing or unexpected or shapes):
        return None
    parts = [f"{source} does not match the WorDepth network ({embed_dim}-d Swin)."]
    if missing:
        parts.append(f"missing keys ({len(missing)}): {head(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {head(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}): {head(shapes)}")
    return "\n  ".join(parts)


def load_network_state(model: WorDepth, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load a network state dict (original or project keys) with a readable error on mismatch.

    The absolute position embedding is resized (bicubic) if its grid differs from the model's.
    An integer tensor where the network has float weights (a quantized file) is refused, not cast.
    """
    state = original_to_project(state)
    own = model.state_dict()
    problem = _mismatch({k: tuple(v.shape) for k, v in own.items()}, {k: tuple(v.shape) for k, v in state.items()},
                        source, model.cfg.backbone.embed_dim)
    if problem:
        raise CheckpointError(problem)
    ints = [k for k, v in state.items() if own[k].is_floating_point() and not v.is_floating_point()]
    if ints:
        raise CheckpointError(f"{source} holds {state[ints[0]].dtype} values where the network has float weights "
                              f"({len(ints)} tensor(s), e.g. {ints[0]}): a quantized or damaged file; it is not cast")
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


# --------------------------------------------------------------------------- validating a recorded config
# What a stored config may hold: checked before any network is built (a config can come from any
# file, and a width of 8192 or a negative latent size must not reach the constructors).
_INT_RANGES = {"embed_dim": (1, 1024), "window_size": (1, 64), "text_dim": (1, 65536), "latent_dim": (1, 4096)}
_MAX_APE_CELLS = 2**20  # 4096 x 4096 input pixels; KITTI's Swin-L grid is 88 x 304
_MAX_STAGES = 6


def config_problem(cfg: WorDepthConfig) -> str | None:
    """What is wrong with a network config's types and ranges (None if nothing): before building it."""
    def is_int(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return (is_int(v) or isinstance(v, (float, np.floating))) and bool(np.isfinite(v))

    bb = cfg.backbone
    for name, (lo, hi) in _INT_RANGES.items():
        value = getattr(bb if hasattr(bb, name) and name in ("embed_dim", "window_size") else cfg, name)
        if not is_int(value) or not lo <= value <= hi:
            return f"{name} {value!r} must be an integer from {lo} to {hi}"
    for name in ("depths", "num_heads"):
        value = getattr(bb, name)
        if (not isinstance(value, tuple) or not 1 <= len(value) <= _MAX_STAGES
                or not all(is_int(v) and 1 <= v <= 64 for v in value)):
            return f"backbone.{name} {value!r} must be 1 to {_MAX_STAGES} integers from 1 to 64"
    if len(bb.depths) != len(bb.num_heads):
        return f"backbone.depths {bb.depths} and num_heads {bb.num_heads} differ in length"
    for i, heads in enumerate(bb.num_heads):
        if (bb.embed_dim * 2**i) % heads:
            return f"stage {i + 1}: {bb.embed_dim * 2**i} channels cannot be split into {heads} heads"
    grid = bb.ape_grid
    if (not isinstance(grid, tuple) or len(grid) != 2 or not all(is_int(v) and v >= 1 for v in grid)
            or grid[0] * grid[1] > _MAX_APE_CELLS):
        return f"backbone.ape_grid {grid!r} must be two positive integers with at most {_MAX_APE_CELLS} cells"
    checks = [("backbone.mlp_ratio", bb.mlp_ratio, 0, 16), ("backbone.drop_path_rate", bb.drop_path_rate, 0, 1),
              ("max_depth", cfg.max_depth, 1e-6, 1e6), ("prior_mean", cfg.prior_mean, -100, 100),
              ("alter_prob", cfg.alter_prob, 0, 1), ("weight_kld", cfg.weight_kld, 0, 1e6),
              ("variance_focus", cfg.variance_focus, -1e6, 1e6)]
    for name, value, lo, hi in checks:
        if not is_num(value) or not lo <= value <= hi:
            return f"{name} {value!r} must be a number from {lo:g} to {hi:g}"
    for name, value in (("legacy", cfg.legacy), ("backbone.fused_attn", bb.fused_attn)):
        if not isinstance(value, bool):
            return f"{name} {value!r} must be true or false"
    return None


def stored_config(obj: dict, source: str) -> tuple[dict, WorDepthConfig]:
    """The config dict a checkpoint of this project records, and its validated :class:`WorDepthConfig`."""
    try:
        stored = obj["config"]["model"]
        if not isinstance(stored, dict):
            raise TypeError(f"the model config is a {type(stored).__name__}, not a mapping")
        cfg = WorDepthConfig.from_dict(stored)
        problem = config_problem(cfg)
        if problem:
            raise ValueError(problem)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source} is this project's checkpoint but its config is missing or malformed "
                              f"({type(err).__name__}: {err}); re-save it, or load its weights with the "
                              "matching --preset") from None
    return stored, cfg


@lru_cache(maxsize=8)
def network_shapes(cfg: WorDepthConfig) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of the network ``cfg`` describes, computed on the meta device (no memory)."""
    with torch.device("meta"):
        net = WorDepth(cfg, init_weights=False)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def check_shapes(cfg: WorDepthConfig, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Refuse, before building anything, a state whose keys or shapes (original or project keys) do not fit ``cfg``."""
    problem = config_problem(cfg)
    if problem:
        raise CheckpointError(f"{source}: the settings asked for are invalid: {problem}")
    try:
        own = network_shapes(cfg)
    except Exception as err:  # a combination the constructors refuse
        raise CheckpointError(f"{source}: its config cannot build a network "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    problem = _mismatch(own, original_to_project(shapes), source, cfg.backbone.embed_dim)
    if problem:
        raise CheckpointError(problem)


# --------------------------------------------------------------------------- the one loader
class LoadedNetwork(NamedTuple):
    """What :func:`load_network` returns: the network and what its file records.

    ``info``: ``kind`` (the layout, :func:`inspect_checkpoint`), ``source`` (the name used in messages),
    ``stored`` (the model config the file records; None for the original release's files), ``variant``
    (of the loaded network, or None), ``meta`` (a ``.safetensors`` file's metadata and the JSON beside
    it, e.g. ``demo``; scalar entries of a ``.pth`` such as ``global_step``).
    """

    model: WorDepth
    info: dict


def load_network(source: str | os.PathLike | dict, variant: str | None = None, legacy: bool | None = None,
                 max_depth: float | None = None, prior_mean: float | None = None,
                 overrides: dict | Callable[[dict | None], dict] | None = None,
                 device: str | torch.device = "cpu", name: str | None = None) -> LoadedNetwork:
    """The one way to load a network: a checkpoint file or an object already loaded, in eval mode.

    Works for the original release's checkpoints (``.pth``), this project's, and ``.safetensors``
    files written by :func:`save_safetensors`. Original checkpoints do not record which model they
    hold: name it with ``variant`` ('nyu', 'nyu_legacy', 'kitti', 'kitti_legacy'); without it they
    load as the current NYU model. This project's files record their settings and need nothing.
    The recorded config is validated (types, ranges) and the tensors' shapes compared with the
    network it describes before anything is built.

    Args:
        source: a file, or what :func:`safe_load` / :func:`load_safetensors` returned.
        variant: a released model by name (:mod:`wordepth.variants`); sets legacy, max depth and
            prior mean. A visible mismatch (a KITTI-sized position embedding with an NYU variant, or
            another variant recorded in the file) is warned about in one line.
        legacy, max_depth, prior_mean: override the variant and ``overrides``.
        overrides: other :class:`WorDepthConfig` fields; or a function of the recorded config (None
            for the original layout) returning them (the training command's flags).
        device: where the network is put.
        name: the file's name in messages (default: ``source`` when it is a path).

    Raises:
        CheckpointError: a file that is not a usable WorDepth checkpoint, said in one line.
        FileNotFoundError: no such file.
    """
    is_path = isinstance(source, (str, os.PathLike))
    name = name or (str(source) if is_path else "checkpoint")
    obj = safe_load(source, mmap=True) if is_path else source  # mapped: copied into the network below
    kind = inspect_checkpoint(obj)
    fields: dict[str, Any] = {}
    if variant is not None:
        chosen = get_variant(variant)
        warn_variant_mismatch(obj, chosen, name)
        fields.update(chosen.model_fields)
    if kind == "wordepth":
        stored, cfg = stored_config(obj, name)
        state = obj["model"]
        if not isinstance(state, dict):
            raise CheckpointError(f"{name} is this project's checkpoint but holds no network state dict")
    elif kind in ("original", "state_dict"):
        stored, state = None, (obj["model"] if kind == "original" else obj)
        cfg = config_from_original(state)
        if variant is None and legacy is None:
            log.info("%s: original-release checkpoint, loaded as the current NYU model; name another with "
                     "variant= / --variant (nyu_legacy: the paper's model)", name)
    else:
        raise CheckpointError(f"{name} is not a WorDepth checkpoint: it looks like {_describe(obj)}.")
    fields.update(overrides(stored) if callable(overrides) else (overrides or {}))
    fields.update({k: v for k, v in dict(legacy=legacy, max_depth=max_depth, prior_mean=prior_mean).items()
                   if v is not None})
    cfg = cfg.replace(**fields)
    check_shapes(cfg, {k: tuple(v.shape) for k, v in state.items() if torch.is_tensor(v)}, name)
    model = WorDepth(cfg, init_weights=False)  # every weight is loaded below (strictly)
    load_network_state(model, state, source=name)
    meta = dict(obj.get("meta") or {}) if kind == "wordepth" else {}
    if isinstance(obj, dict):
        meta.update({k: v for k, v in obj.items() if isinstance(v, (int, float, str, bool)) and k != "format"})
    info = {"kind": kind, "source": name, "stored": stored, "variant": variant_of(model.cfg), "meta": meta}
    return LoadedNetwork(model.to(device).eval(), info)


def load_checkpoint(path: str | os.PathLike, variant: str | None = None, legacy: bool | None = None,
                    max_depth: float | None = None, prior_mean: float | None = None, map_location: Any = "cpu",
                    **overrides) -> WorDepth:
    """The network stored in ``path`` (the public one-liner): ``load_network(...).model``; see :func:`load_network`."""
    return load_network(path, variant, legacy, max_depth, prior_mean, overrides, device=map_location).model


def checkpoint_grid(obj: Any) -> tuple[int, int] | None:
    """The position-embedding grid a loaded checkpoint was trained at (None if it cannot be seen)."""
    kind = inspect_checkpoint(obj)
    if kind == "wordepth":
        try:
            grid = obj["config"]["model"].get("backbone", {}).get("ape_grid")
            return tuple(int(g) for g in grid) if grid else None
        except (AttributeError, TypeError, ValueError):
            return None
    if kind in ("original", "state_dict"):
        ape = strip_prefix(obj["model"] if kind == "original" else obj).get("backbone.absolute_pos_embed")
        return None if ape is None else tuple(int(s) for s in ape.shape[2:])
    return None


def warn_variant_mismatch(obj: Any, chosen: Variant, source: str) -> None:
    """One-line warnings when a checkpoint visibly holds another variant than the one named."""
    if inspect_checkpoint(obj) == "wordepth":
        _, cfg = stored_config(obj, source)
        recorded = variant_of(cfg)
        if recorded is not None and recorded != chosen.name:
            log.warning("%s records variant %r but variant %r was given: using the settings of %r", source,
                        recorded, chosen.name, chosen.name)
            return
    grid = checkpoint_grid(obj)
    seen = grid_dataset(grid) if grid is not None else None
    if seen is not None and seen.name != chosen.dataset.name:
        log.warning("%s has a %s-sized position embedding (%dx%d) but variant %r was given (a %s model)",
                    source, seen.name.upper(), grid[0], grid[1], chosen.name, chosen.dataset.name.upper())


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
SIDECAR_SUFFIX = ".json"  # OUT.safetensors -> OUT.safetensors.json (cannot collide with another OUT.json)
_MAX_HEADER_BYTES = 100 * 2**20


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON written beside a ``.safetensors`` file: ``OUT.safetensors.json``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_sidecar(path: str | os.PathLike, strict: bool = True) -> dict | None:
    """The JSON beside a ``.safetensors`` file, or None.

    ``OUT.safetensors.json`` first; files made before it was named so have ``OUT.json``, which is read
    only when it is this project's (``"format": "wordepth"``: an evaluation's ``OUT.json`` is not).

    Raises:
        CheckpointError: (``strict``) the sidecar is not valid JSON or not a mapping, naming it.
    """
    path = Path(path)
    for sidecar, ours_only in ((sidecar_path(path), False), (path.with_suffix(".json"), True)):
        if not sidecar.is_file():
            continue
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            if ours_only:
                continue
            if strict:
                raise CheckpointError(f"{sidecar} (the settings of {path.name}) is not valid JSON ({err}); "
                                      f"re-convert with wordepth-convert") from None
            return None
        if isinstance(meta, dict) and (not ours_only or meta.get("format") == FORMAT):
            return meta
        if not ours_only and strict:
            raise CheckpointError(f"{sidecar} (the settings of {path.name}) holds a {type(meta).__name__}, "
                                  "not the mapping wordepth-convert writes")
    return None


def save_safetensors(model: WorDepth, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the network as ``path`` (``.safetensors``: tensors only, no pickle) and ``path.json``
    (``OUT.safetensors.json``), each atomically (:func:`wordepth.outputs.write_atomic`).

    The network config (and its variant name) goes into the safetensors header and into the small
    JSON beside it, so :func:`load_checkpoint` needs no flags. Returns both paths.

    Raises:
        OutputError: a file cannot be written (the previous one is kept).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: the file name must end in .safetensors")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "variant": variant_of(model.cfg),
            "config": {"model": model.cfg.to_dict()}}
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata={"wordepth": json.dumps(meta)}), fsync=True)
    sidecar = write_json(sidecar_path(path), meta)
    return path, sidecar


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """The metadata and the tensor shapes of a ``.safetensors`` file, from its header alone (no tensor read).

    Raises:
        CheckpointError: not a safetensors file (too short, a header longer than the file, not JSON).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > size - 8 or n > _MAX_HEADER_BYTES:
            raise CheckpointError(f"cannot read {path} as a safetensors file (its header length says {n} bytes, "
                                  f"the file has {size}): truncated, or not a safetensors file")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path} as a safetensors file (its header is not valid JSON: {err}); "
                              "truncated or damaged") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"cannot read {path} as a safetensors file (its header is a "
                              f"{type(header).__name__}, not a mapping)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: its safetensors metadata is a {type(metadata).__name__}, not a mapping")
    shapes = {}
    for key, entry in header.items():
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise CheckpointError(f"cannot read {path} as a safetensors file (tensor {key!r} has no valid shape)")
        shapes[key] = tuple(shape)
    return metadata, shapes


def _wordepth_meta(path: Path, metadata: dict[str, str]) -> dict | None:
    """This project's settings from a header's metadata, else from the JSON beside the file; None if neither."""
    if "wordepth" in metadata:
        try:
            meta = json.loads(metadata["wordepth"])
        except (TypeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: its safetensors metadata 'wordepth' is not valid JSON ({err}): "
                                  "truncated or edited; re-convert with wordepth-convert") from None
        source = f"{path}: its safetensors metadata"
        side = read_sidecar(path, strict=False) or {}
        if isinstance(meta, dict) and "demo" in side:
            meta = {**meta, "demo": side["demo"]}
    else:
        meta, source = read_sidecar(path), f"{sidecar_path(path)} (the settings of {path.name})"
        if meta is None:
            return None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{source} is a {type(meta).__name__}, not the mapping wordepth-convert writes")
    if not isinstance(meta.get("config"), dict) or not isinstance(meta["config"].get("model"), dict):
        raise CheckpointError(f"{source} has no network config ('config': {{'model': ...}}); "
                              "re-convert with wordepth-convert")
    return meta


def load_safetensors(path: str | os.PathLike) -> dict:
    """A ``.safetensors`` file of :func:`save_safetensors` as a checkpoint dict of this project's layout.

    The config comes from the file's header, else from the JSON beside it (``OUT.safetensors.json``,
    or ``OUT.json`` of files made before). It is validated, and the shapes it implies compared with
    the header's, before any tensor is read. A bare safetensors state dict (no config) is treated
    like a bare state dict of the original network.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    metadata, shapes = read_safetensors_header(path)
    meta = _wordepth_meta(path, metadata)
    if meta is not None:
        _, cfg = stored_config(meta, str(path))
        check_shapes(cfg, shapes, str(path))
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {path} as a safetensors file ({err})") from None
    if meta is None:
        return state
    return {"format": FORMAT, "config": meta["config"], "model": state,
            "meta": {k: v for k, v in meta.items() if k != "config"}}


# --------------------------------------------------------------------------- writing a run's checkpoints


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, no permission); the previous file is kept."""


def write_checkpoint(path: str | os.PathLike, save: Callable[[Path], None]) -> Path:
    """``save(path)``, an atomic checkpoint write (:func:`atomic_save`), with any failure in one line.

    Raises:
        CheckpointWriteError: ``could not write PATH: <reason>; the previous file is kept``.
    """
    path = Path(path)
    try:
        save(path)
    except CheckpointWriteError:
        raise
    except CheckpointError as err:  # atomic_save's own message for an OSError
        raise CheckpointWriteError(str(err)) from None
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        reason = write_reason(err)
        hint = "" if reason == "No space left on device" else disk_hint(path.parent)
        raise CheckpointWriteError(f"could not write {path}: {reason}{hint}; the previous file is kept") from None
    return path

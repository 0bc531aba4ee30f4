"""Identifying what a file holds: its layout, the network it describes, and whether that network fits.

A config recorded in a file is validated (types, ranges) and the shapes it implies compared with the
file's tensors before any network is built: a config can come from any file, and a width of 8192
or a negative latent size must not reach the constructors.
"""
from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wordepth.checkpoints.layouts import FORMAT, _read_sidecar, original_to_project, strip_prefix
from wordepth.checkpoints.reading import CheckpointError
from wordepth.models.wordepth import PRESETS, WorDepth, WorDepthConfig, preset_config
from wordepth.variants import Variant, grid_dataset, variant_of

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- layouts
def inspect_checkpoint(obj: Any) -> str:
    """Which layout a loaded checkpoint object has: 'original', 'wordepth', 'swin_imagenet',
    'state_dict' or 'unknown' (:mod:`wordepth.checkpoints.layouts`)."""
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


def describe(obj: Any) -> str:
    """What a loaded object looks like, for messages."""
    kind = inspect_checkpoint(obj)
    if kind == "swin_imagenet":
        return "Swin ImageNet classification weights (use them as --pretrain, not as a WorDepth checkpoint)"
    if kind == "unknown":
        if isinstance(obj, dict):
            return f"an unrecognised dict with keys {sorted(map(str, obj))[:8]}"
        return f"a {type(obj).__name__}, not a checkpoint dict"
    return {"original": "an original WorDepth release checkpoint", "wordepth": "a checkpoint of this project",
            "state_dict": "a bare WorDepth state dict"}[kind]


def is_demo_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds the demo model: a ``.safetensors`` file whose JSON beside it says so."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        return "demo" in (_read_sidecar(path, strict=False) or {})
    except OSError:
        return False


# --------------------------------------------------------------------------- the network a file describes
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
        value = getattr(bb if name in ("embed_dim", "window_size") else cfg, name)
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


def _stored_config(obj: dict, source: str) -> tuple[dict, WorDepthConfig]:
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


def config_from_original(state: dict[str, torch.Tensor], source: str = "checkpoint") -> WorDepthConfig:
    """Network config of an original-layout state dict: the preset of its Swin width (Swin-L for the
    original release; this project's tiny preset for a tiny run's best checkpoints), with the
    position-embedding grid it was trained at."""
    state = strip_prefix(state)
    ape = state.get("backbone.absolute_pos_embed")
    if ape is None or not torch.is_tensor(ape) or ape.ndim != 4:
        raise CheckpointError(f"{source} has no backbone.absolute_pos_embed of 4 dimensions: not a WorDepth network")
    embed = int(ape.shape[1])
    preset = next((name for name, bb in PRESETS.items() if bb.embed_dim == embed), None)
    if preset is None:
        widths = ", ".join(f"{bb.embed_dim} ({name})" for name, bb in PRESETS.items())
        raise CheckpointError(f"{source}: unsupported backbone width {embed} in an original-layout checkpoint "
                              f"(known: {widths})")
    return preset_config(preset, ape_grid=tuple(int(s) for s in ape.shape[2:]))


def mismatch(own: dict[str, tuple], given: dict[str, tuple], source: str, embed_dim: int) -> str | None:
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
    problem = mismatch(own, original_to_project(shapes), source, cfg.backbone.embed_dim)
    if problem:
        raise CheckpointError(problem)


# --------------------------------------------------------------------------- which released model
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
        _, cfg = _stored_config(obj, source)
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

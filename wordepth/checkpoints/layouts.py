"""Format conversion: the original release's keys <-> this project's, and a ``.safetensors`` file's settings.

Layouts (what :func:`wordepth.checkpoints.identify.inspect_checkpoint` tells apart):

- ``original``: ``{'global_step', 'model': {'module.backbone...': ...}, 'best_eval_*'}``, the network
  wrapped in DataParallel; Swin downsampling at the *end* of stages 1-3.
- ``wordepth``: this project's, ``{'format': 'wordepth', 'config': {...}, 'model': {...}, ...}``. A
  ``.safetensors`` file holds the ``model`` part; its header metadata (and ``OUT.safetensors.json``
  beside it) the rest.
- ``swin_imagenet``: the Swin release's classification weights (``{'model': {'layers.0.blocks...'}}``).
- ``state_dict``: a bare network state dict (with or without ``module.``).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from wordepth.checkpoints.reading import CheckpointError

FORMAT = "wordepth"
FORMAT_VERSION = 1
SIDECAR_SUFFIX = ".json"  # OUT.safetensors -> OUT.safetensors.json (cannot collide with another OUT.json)

_DOWNSAMPLE = re.compile(r"^backbone\.layers\.(\d+)\.downsample\.")


# --------------------------------------------------------------------------- original <-> project keys
def strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """Drop a DataParallel/DDP ``module.`` prefix (and ``_orig_mod.`` from torch.compile) if present."""
    out = {}
    for k, v in state.items():
        for p in (prefix, "_orig_mod."):
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def original_to_project(state: dict) -> dict:
    """Map original-release (or this project's) network keys onto this project's modules.

    The original Swin puts patch merging at the end of stages 1-3 (``layers.i.downsample``); timm
    puts it at the start of stages 2-4 (``layers.i+1.downsample``). ``relative_position_index`` is a
    constant buffer that timm rebuilds, so it is dropped. The values pass unchanged (tensors, or
    their shapes when only a header was read).
    """
    state = strip_prefix(state)
    # only the original layout has patch merging in stage 1; this project's keys pass unchanged
    original_layout = any(k.startswith("backbone.layers.0.downsample.") for k in state)
    out = {}
    for k, v in state.items():
        if k.endswith("relative_position_index"):
            continue
        if original_layout:
            k = _DOWNSAMPLE.sub(lambda m: f"backbone.layers.{int(m.group(1)) + 1}.downsample.", k)
        out[k] = v
    return out


def project_to_original(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """This project's network as an original-release state dict (``module.`` keys)."""
    out = {}
    for k, v in model.state_dict().items():
        k = _DOWNSAMPLE.sub(lambda m: f"backbone.layers.{int(m.group(1)) - 1}.downsample.", k)
        out["module." + k] = v
    for name, module in model.named_modules():
        if hasattr(module, "relative_position_index") and name.endswith("attn"):
            out[f"module.{name}.relative_position_index"] = module.relative_position_index.clone()
    return out


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


# --------------------------------------------------------------------------- project <-> safetensors
def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON written beside a ``.safetensors`` file: ``OUT.safetensors.json``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def safetensors_meta(model: torch.nn.Module, variant: str | None) -> dict:
    """What a ``.safetensors`` file records besides its tensors (header metadata and the JSON beside it)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "variant": variant,
            "config": {"model": model.cfg.to_dict()}}


def _read_sidecar(path: Path, strict: bool = True) -> dict | None:
    """The JSON beside a ``.safetensors`` file, or None.

    ``OUT.safetensors.json`` first; files converted before it was named so have ``OUT.json``, which
    is read only when it is this project's (``"format": "wordepth"``: an evaluation's ``OUT.json`` is
    not).

    Raises:
        CheckpointError: (``strict``) the sidecar is not valid JSON or not a mapping, naming it.
    """
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


def safetensors_settings(path: str | os.PathLike, metadata: dict[str, str]) -> dict | None:
    """This project's settings of a ``.safetensors`` file: from its header's metadata, else from the
    JSON beside it; None if neither (a bare state dict). The sidecar's ``demo`` entry is added.

    Raises:
        CheckpointError: settings that are not valid JSON, not a mapping or without a network config.
    """
    path = Path(path)
    if "wordepth" in metadata:
        try:
            meta = json.loads(metadata["wordepth"])
        except (TypeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: its safetensors metadata 'wordepth' is not valid JSON ({err}): "
                                  "truncated or edited; re-convert with wordepth-convert") from None
        source = f"{path}: its safetensors metadata"
        side = _read_sidecar(path, strict=False) or {}
        if isinstance(meta, dict) and "demo" in side:
            meta = {**meta, "demo": side["demo"]}
    else:
        meta, source = _read_sidecar(path), f"{sidecar_path(path)} (the settings of {path.name})"
        if meta is None:
            return None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{source} is a {type(meta).__name__}, not the mapping wordepth-convert writes")
    if not isinstance(meta.get("config"), dict) or not isinstance(meta["config"].get("model"), dict):
        raise CheckpointError(f"{source} has no network config ('config': {{'model': ...}}); "
                              "re-convert with wordepth-convert")
    return meta


"""The two loaders: :func:`load_checkpoint` (a network, from any file) and :func:`load_training_state`
(everything a run resumes from)."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from wordepth.checkpoints.identify import (_stored_config, check_shapes, config_from_original, describe,
                                           inspect_checkpoint, mismatch, warn_variant_mismatch)
from wordepth.checkpoints.layouts import FORMAT, original_to_project, safetensors_settings
from wordepth.checkpoints.reading import (CheckpointError, _read_pth, _read_safetensors_header,
                                          _read_safetensors_tensors, check_file)
from wordepth.models.wordepth import WorDepth
from wordepth.variants import get_variant, variant_of

log = logging.getLogger(__name__)


class LoadedNetwork(NamedTuple):
    """What :func:`load_checkpoint` returns with ``with_info=True``: the network and what its file records.

    ``info``: ``kind`` (the layout, :func:`~wordepth.checkpoints.inspect_checkpoint`), ``source`` (the
    name used in messages), ``stored`` (the model config the file records; None for the original
    release's files), ``variant`` (of the loaded network, or None), ``meta`` (a ``.safetensors``
    file's metadata and the JSON beside it, e.g. ``demo``; scalar entries of a ``.pth`` such as
    ``global_step``).
    """

    model: WorDepth
    info: dict


def _read(path: str | os.PathLike, mmap: bool = False) -> Any:
    """A file as a checkpoint object, without running code: a ``.pth`` as saved, a ``.safetensors``
    file of :func:`~wordepth.checkpoints.save_safetensors` in this project's layout.

    A ``.safetensors`` file's config comes from its header, else from the JSON beside it. It is
    validated, and the shapes it implies compared with the header's, before any tensor is read. A
    bare safetensors state dict (no config) is treated like a bare state dict of the network.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        return _read_pth(path, mmap=mmap)
    check_file(path)
    metadata, shapes = _read_safetensors_header(path)
    meta = safetensors_settings(path, metadata)
    if meta is not None:
        _, cfg = _stored_config(meta, str(path))
        check_shapes(cfg, shapes, str(path))
    state = _read_safetensors_tensors(path)
    if meta is None:
        return state
    return {"format": FORMAT, "config": meta["config"], "model": state,
            "meta": {k: v for k, v in meta.items() if k != "config"}}


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every value is finite: one summing pass (a NaN or an inf makes the sum non-finite), and the
    exact test only when the sum is not finite (it can overflow); ``isfinite().all()`` is ~10x slower."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _load_state(model: WorDepth, state: dict[str, torch.Tensor], source: str = "checkpoint",
                assign: bool = False) -> None:
    """Load a network state dict (original or project keys) into ``model``, with a readable error on mismatch.

    The absolute position embedding is resized (bicubic) if its grid differs from the model's.
    An integer tensor where the network has float weights (a quantized file) is refused, not cast.
    ``assign``: the network keeps the tensors of ``state`` (cast where the dtype differs) instead of
    copying them: with a memory-mapped file the weights are never copied (only for a ``state`` that
    nothing else holds).
    """
    state = original_to_project(state)
    own = model.state_dict()
    problem = mismatch({k: tuple(v.shape) for k, v in own.items()}, {k: tuple(v.shape) for k, v in state.items()},
                       source, model.cfg.backbone.embed_dim)
    if problem:
        raise CheckpointError(problem)
    ints = [k for k, v in state.items() if own[k].is_floating_point() and not v.is_floating_point()]
    if ints:
        raise CheckpointError(f"{source} holds {state[ints[0]].dtype} values where the network has float weights "
                              f"({len(ints)} tensor(s), e.g. {ints[0]}): a quantized or damaged file; it is not cast")
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not _all_finite(v)]
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
    if assign:  # the tensors become the weights: the model's dtypes (a float16 file -> float32)
        state = {k: v.to(own[k].dtype) if torch.is_tensor(v) and v.dtype != own[k].dtype else v
                 for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=assign)


def load_checkpoint(source: str | os.PathLike | dict, variant: str | None = None, *, legacy: bool | None = None,
                    max_depth: float | None = None, prior_mean: float | None = None,
                    overrides: dict | Callable[[dict | None], dict] | None = None,
                    device: str | torch.device = "cpu", name: str | None = None,
                    with_info: bool = False) -> WorDepth | LoadedNetwork:
    """The network a checkpoint holds, in eval mode: the one way to load a network.

    Works for the original release's checkpoints (``.pth``), this project's (``.pth``), and
    ``.safetensors`` files written by :func:`~wordepth.checkpoints.save_safetensors`. Original
    checkpoints do not record which model they hold: name it with ``variant`` ('nyu', 'nyu_legacy',
    'kitti', 'kitti_legacy'); without it they load as the current NYU model. This project's files
    record their settings and need nothing. The recorded config is validated (types, ranges) and the
    tensors' shapes compared with the network it describes before anything is built.

    Args:
        source: a file, or what :func:`load_training_state` returned (not read twice).
        variant: a released model by name (:mod:`wordepth.variants`); sets legacy, max depth and
            prior mean. A visible mismatch (a KITTI-sized position embedding with an NYU variant, or
            another variant recorded in the file) is warned about in one line.
        legacy, max_depth, prior_mean: override the variant and ``overrides``.
        overrides: other :class:`~wordepth.models.wordepth.WorDepthConfig` fields; or a function of
            the recorded config (None for the original layout) returning them (the training command's flags).
        device: where the network is put.
        name: the file's name in messages (default: ``source`` when it is a path).
        with_info: return a :class:`LoadedNetwork` ``(model, info)``: what the file records.

    Raises:
        CheckpointError: a file that is not a usable WorDepth checkpoint, said in one line.
        FileNotFoundError: no such file.
    """
    is_path = isinstance(source, (str, os.PathLike))
    name = name or (str(source) if is_path else "checkpoint")
    obj = _read(source, mmap=True) if is_path else source  # mapped: copied into the network below
    kind = inspect_checkpoint(obj)
    fields: dict[str, Any] = {}
    if variant is not None:
        chosen = get_variant(variant)
        warn_variant_mismatch(obj, chosen, name)
        fields.update(chosen.model_fields)
    if kind == "wordepth":
        stored, cfg = _stored_config(obj, name)
        state = obj["model"]
        if not isinstance(state, dict):
            raise CheckpointError(f"{name} is this project's checkpoint but holds no network state dict")
    elif kind in ("original", "state_dict"):
        stored, state = None, (obj["model"] if kind == "original" else obj)
        cfg = config_from_original(state, name)
        if variant is None and legacy is None:
            log.info("%s: original-release checkpoint, loaded as the current NYU model; name another with "
                     "variant= / --variant (nyu_legacy: the paper's model)", name)
    else:
        raise CheckpointError(f"{name} is not a WorDepth checkpoint: it looks like {describe(obj)}.")
    fields.update(overrides(stored) if callable(overrides) else (overrides or {}))
    fields.update({k: v for k, v in dict(legacy=legacy, max_depth=max_depth, prior_mean=prior_mean).items()
                   if v is not None})
    cfg = cfg.replace(**fields)
    check_shapes(cfg, {k: tuple(v.shape) for k, v in state.items() if torch.is_tensor(v)}, name)
    if is_path:  # a file we mapped: its tensors become the weights; the network is built without memory
        with torch.device("meta"):
            model = WorDepth(cfg, init_weights=False)
        _load_state(model, state, source=name, assign=True)
        model.init_non_persistent_buffers()
    else:
        model = WorDepth(cfg, init_weights=False)  # every weight is loaded below (strictly)
        _load_state(model, state, source=name)
    model = model.to(device).eval()
    if not with_info:
        return model
    meta = dict(obj.get("meta") or {}) if kind == "wordepth" else {}
    if isinstance(obj, dict):
        meta.update({k: v for k, v in obj.items() if isinstance(v, (int, float, str, bool)) and k != "format"})
    info = {"kind": kind, "source": name, "stored": stored, "variant": variant_of(model.cfg), "meta": meta}
    return LoadedNetwork(model, info)


def load_training_state(path: str | os.PathLike, mmap: bool = False) -> dict:
    """Everything a checkpoint holds for resuming a run, read without running code.

    This project's ``last.pth`` (layout ``wordepth``): the network's state dict, its config, the
    optimizer, the progress (``global_step``, ``epoch``, ``step_in_epoch``), the random states and
    the best metrics; give it to :func:`load_checkpoint` for the network and to
    :meth:`wordepth.engine.Trainer.load_state_dict` for the rest. The original release's files hold
    the network and ``global_step``. ``mmap=True`` maps the file: for reading a few entries (never
    for an optimizer state kept while the file may be rewritten).

    Raises:
        CheckpointError: not a checkpoint dict, or a file that needs code to unpickle.
        FileNotFoundError: no such file.
    """
    obj = _read(path, mmap=mmap)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a checkpoint: it looks like {describe(obj)}.")
    return obj

"""Writing checkpoints, through :mod:`wordepth.outputs` like every other file the project writes.

Each file goes to a temporary file beside it, is flushed to disk, then replaces the old one: a crash
or a full disk never leaves a truncated checkpoint, and the file gets the mode of every other output
(``0666`` less the umask). A failure is one line, :class:`wordepth.outputs.OutputError`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from wordepth.checkpoints.layouts import project_to_original, safetensors_meta, sidecar_path
from wordepth.errors import UserError
from wordepth.outputs import write_atomic, write_json, write_torch
from wordepth.variants import variant_of


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> Path:
    """``obj`` (this project's layout: a run's ``last.pth``) at ``path``, atomically.

    Raises:
        OutputError: ``could not write PATH: <reason>; the previous file is kept``.
    """
    return write_torch(path, obj)


def save_original_checkpoint(model: torch.nn.Module, path: str | os.PathLike, global_step: int,
                             best_higher: torch.Tensor | None = None, best_lower: torch.Tensor | None = None,
                             best_steps: np.ndarray | None = None, selection: dict | None = None) -> Path:
    """Write ``model`` in the original release's layout, loadable by the original code; ``selection``:
    how it was chosen (plain data, :func:`wordepth.recorded.selection_record`), an extra key the original ignores."""
    obj = {
        "global_step": int(global_step),
        "model": project_to_original(model),
        "best_eval_measures_higher_better": torch.zeros(3) if best_higher is None else best_higher.cpu(),
        "best_eval_measures_lower_better": torch.zeros(6) + 1e3 if best_lower is None else best_lower.cpu(),
        "best_eval_steps": np.zeros(9, dtype=np.int32) if best_steps is None else np.asarray(best_steps, np.int32),
    }
    if selection is not None:
        obj["selection"] = dict(selection)
    return write_torch(path, obj)


def save_safetensors(model: torch.nn.Module, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write the network as ``path`` (``.safetensors``: tensors only, no pickle) and ``OUT.safetensors.json``.

    The network config (and its variant name) goes into the safetensors header and into the small
    JSON beside it, so :func:`wordepth.checkpoints.load_checkpoint` needs no flags. Returns both paths.

    Raises:
        UserError: a name that does not end in ``.safetensors``.
        OutputError: a file cannot be written (the previous one is kept).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise UserError(f"{path}: the file name must end in .safetensors")
    meta = safetensors_meta(model, variant_of(model.cfg))
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata={"wordepth": json.dumps(meta)}), fsync=True)
    return path, write_json(sidecar_path(path), meta)

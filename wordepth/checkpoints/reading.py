"""Safe reading: a ``.pth`` with ``torch.load(weights_only=True)``, a ``.safetensors`` file without pickle.

Unpickling never runs code. The only non-tensor objects allowed are the numpy pieces the original
release stores (a numpy int32 array ``best_eval_steps``). A ``.safetensors`` header is checked (its
length, valid JSON, one entry per tensor name, a shape per tensor) before any tensor is read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wordepth.errors import UserError

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
_MAX_HEADER_BYTES = 100 * 2**20


class CheckpointError(UserError, RuntimeError):
    """A file that cannot be used as asked; the message says what it looks like instead."""


def check_file(path: Path) -> None:
    """Refuse a folder or a missing file, naming it."""
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")


def _read_pth(path: str | os.PathLike, mmap: bool = False) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True`` and the numpy allow-list of the original release.

    ``mmap=True`` maps the file instead of reading it (a 1 GB ``.pth``: 2.3-3.5 -> 1.4-1.6 s on 2 CPU
    cores): for weights that are copied into a network right away, since the tensors stay backed
    by the file (never for state kept while the file may be rewritten, such as a resumed
    optimizer's). Files in torch's legacy (pre-zip) format cannot be mapped and are read.
    """
    path = Path(path)
    check_file(path)
    try:
        with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            if mmap:
                try:
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except Exception:  # torch's legacy (pre-zip) format cannot be mapped; other errors recur below
                    pass
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated zips, disallowed globals
        msg = str(err).strip().splitlines()
        detail = next((line for line in msg if "Unsupported global" in line or "error" in line.lower()),
                      msg[0] if msg else type(err).__name__)
        raise CheckpointError(
            f"cannot read {path} as a weights-only checkpoint ({detail.strip()}). "
            "Files that need arbitrary code to unpickle are refused; a truncated download also ends here."
        ) from None


def _unique_keys(path: Path):
    """A ``json.loads`` hook refusing a name given twice (the last one would silently win)."""
    def pairs(items: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for key, value in items:
            if key in out:
                raise CheckpointError(f"cannot read {path} as a safetensors file (its header gives {key!r} twice): "
                                      "malformed; convert it again from its .pth with wordepth-convert")
            out[key] = value
        return out
    return pairs


def _read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """The metadata and the tensor shapes of a ``.safetensors`` file, from its header alone (no tensor read).

    Raises:
        CheckpointError: not a safetensors file (too short, a header longer than the file, not JSON,
            a tensor name given twice, a tensor without a shape).
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
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys(path))
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


def _read_safetensors_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a ``.safetensors`` file whose header :func:`_read_safetensors_header` checked."""
    from safetensors import SafetensorError, safe_open  # only where a .safetensors file is read

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read {path} as a safetensors file ({err})") from None

"""Depth map files: the one reader (16-bit PNGs storing ``round(depth_m * scale)``, or ``.npy`` arrays
in metres) and the PNG writer.

NYU stores millimetres (scale 1000), KITTI metres x 256 (``wordepth.data.facts``); 0 means no
measurement. A dataset whose facts declare no PNG scale reads ``.npy`` metres. Depth maps are
float32 ``(H, W)`` metres.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from wordepth.data.facts import NYU
from wordepth.errors import UserError

if TYPE_CHECKING:  # annotations only: this module does not import torch (the app's page is served without it)
    import torch

__all__ = ["as_depth_map", "depth_to_png16", "png16_to_depth", "read_depth", "read_depth_npy", "read_depth_png",
           "to_numpy", "write_depth_png"]

logger = logging.getLogger(__name__)


def to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """A tensor (any device, any dtype) or array as a numpy array."""
    torch = sys.modules.get("torch")  # no tensor exists before torch is imported: this module does not import it
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def as_depth_map(depth: np.ndarray | torch.Tensor, what: str = "depth") -> np.ndarray:
    """(H, W), (1, H, W) or (1, 1, H, W) -> (H, W) float32."""
    d = to_numpy(depth).astype(np.float32, copy=False)
    while d.ndim > 2 and d.shape[0] == 1:
        d = d[0]
    if d.ndim != 2:
        raise ValueError(f"{what} must be an (H, W) map, got shape {tuple(to_numpy(depth).shape)}")
    return d


def depth_to_png16(depth_m: np.ndarray | torch.Tensor, scale: float = NYU.depth_png_scale) -> np.ndarray:
    """Metres -> uint16 (H, W): ``round(depth * scale)``; 1000 = millimetres (NYU), 256 = KITTI.

    Invalid values (not finite, negative) become 0; values beyond 65535 / scale are clipped (with
    a warning).
    """
    d = as_depth_map(depth_m).astype(np.float64)
    d = np.where(np.isfinite(d) & (d > 0), d, 0.0) * scale
    if (d > 65535).any():
        logger.warning("depth beyond %.3f m clipped in the 16-bit PNG (scale %g)", 65535 / scale, scale)
    return np.rint(np.clip(d, 0, 65535)).astype(np.uint16)


def png16_to_depth(png: np.ndarray, scale: float = NYU.depth_png_scale) -> np.ndarray:
    """uint16 (H, W) -> metres, float32 (0 stays 0 = invalid)."""
    return np.asarray(png).astype(np.float32) / np.float32(scale)


def read_depth_png(path: str | os.PathLike, scale: float) -> np.ndarray:
    """Reads a 16-bit depth PNG as float32 (H, W) metres (raw value / scale).

    Args:
        path: the PNG.
        scale: 1000 for NYU (millimetres), 256 for KITTI.

    Raises:
        FileNotFoundError: the file is missing.
        UserError: the file cannot be decoded or is not single-channel uint16.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"depth map not found: {path}")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise UserError(f"cannot decode depth map {path}")
    if raw.ndim != 2:
        raise UserError(f"depth map {path} has shape {raw.shape}, expected a single channel")
    if raw.dtype != np.uint16:
        raise UserError(f"depth map {path} is {raw.dtype}, expected uint16 (else the units would be wrong)")
    return png16_to_depth(raw, scale)


def read_npy(path: Path, what: str, kinds: str = "biuf") -> np.ndarray:
    """A plain numeric array from a ``.npy`` file (no pickles, no structured or object dtype): the one
    reader of ``.npy`` inputs (depth maps, zero-shot masks). ``what`` names the file in errors."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {what} {path} as a .npy array ({err})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in kinds or array.dtype.names is not None:
        raise UserError(f"{what} {path} holds {getattr(array, 'dtype', type(array).__name__)}, expected a plain "
                        "numeric array")
    return array


def read_depth_npy(path: str | os.PathLike) -> np.ndarray:
    """Reads a ``.npy`` depth map in metres, (H, W) or (H, W, 1), as float32 (H, W); NaN, inf and values
    <= 0 become 0 (no measurement).

    Raises:
        FileNotFoundError: the file is missing.
        UserError: not a numeric ``.npy`` array (pickles are refused) or not one map.
    """
    path = Path(path)
    raw = read_npy(path, "depth map", kinds="fiu")
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[:, :, 0]
    if raw.ndim != 2:
        raise UserError(f"depth map {path} has shape {raw.shape}, expected (H, W) metres")
    depth = raw.astype(np.float32)
    return np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(0))


def read_depth(path: str | os.PathLike, png_scale: float | None) -> np.ndarray:
    """Reads a depth map as float32 (H, W) metres: a ``.npy`` array in metres, or a 16-bit PNG in units of
    ``1 / png_scale`` metres (the dataset's ``DatasetFacts.depth_png_scale``).

    Raises:
        FileNotFoundError: the file is missing.
        UserError: an unreadable file, or a PNG for a dataset that declares no PNG scale.
    """
    if Path(path).suffix.lower() == ".npy":
        return read_depth_npy(path)
    if png_scale is None:
        raise UserError(f"depth map {path}: this dataset's depth maps are .npy arrays in metres (its facts "
                        "declare no depth_png_scale); give .npy files or declare the PNG scale")
    return read_depth_png(path, png_scale)


def write_depth_png(path: str | os.PathLike, depth_m: np.ndarray | torch.Tensor, scale: float) -> Path:
    """Write metres as a 16-bit PNG (see :func:`depth_to_png16`); creates folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), depth_to_png16(depth_m, scale)):
        raise OSError(f"could not write {path}")
    return path

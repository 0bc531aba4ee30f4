"""Point clouds from metric depth: pinhole back-projection, PLY files and glTF (GLB) files for web viewers."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

from wordepth.data.depth_png import as_depth_map

if TYPE_CHECKING:  # tensors are accepted; the module itself does not import torch
    import torch

__all__ = ["backproject", "write_glb", "write_ply"]


def backproject(depth: np.ndarray | torch.Tensor, focal: float | tuple[float, float],
                cx: float | None = None, cy: float | None = None) -> np.ndarray:
    """Pinhole back-projection of every pixel, (H*W, 3) float32 in row-major pixel order.

    Pixel ``(u, v)`` (column, row) has its centre at the integer coordinates ``(u, v)``, so
    ``X = (u - cx) * Z / fx``, ``Y = (v - cy) * Z / fy``, ``Z = depth[v, u]``, with the principal
    point defaulting to ``cx = W / 2``, ``cy = H / 2``. Axes follow OpenCV: x right, y down, z
    forward. Point ``v * W + u`` belongs to pixel ``(u, v)``; invalid depths give points at
    ``Z = 0`` (the camera centre) so the count is always H*W.

    Args:
        depth: (H, W) metres.
        focal: focal length in pixels, or (fx, fy).
        cx, cy: principal point in pixels.
    """
    d = as_depth_map(depth)
    H, W = d.shape
    fx, fy = (float(focal), float(focal)) if np.isscalar(focal) else (float(focal[0]), float(focal[1]))
    cx = W / 2.0 if cx is None else float(cx)
    cy = H / 2.0 if cy is None else float(cy)
    z = np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)
    v, u = np.meshgrid(np.arange(H, dtype=np.float32), np.arange(W, dtype=np.float32), indexing="ij")
    x = (u - cx) * z / fx
    y = (v - cy) * z / fy
    return np.stack([x, y, z], axis=-1).reshape(-1, 3).astype(np.float32)


def write_ply(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray | None = None,
              binary: bool = True) -> Path:
    """Write a point cloud as PLY (binary little-endian or ASCII).

    Args:
        path: output file (folders are created).
        points: (N, 3) float coordinates.
        colors: (N, 3) uint8 RGB per point, or None.
        binary: binary_little_endian (compact) if True, else ascii.
    """
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    n = pts.shape[0]
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape != (n, 3):
            raise ValueError(f"colors must be ({n}, 3), got {colors.shape}")
        colors = colors.astype(np.uint8)
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", f"element vertex {n}",
              "property float x", "property float y", "property float z"]
    if colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    header.append("end_header")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        if binary:
            fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
            if colors is not None:
                fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
            rec = np.empty(n, dtype=fields)
            rec["x"], rec["y"], rec["z"] = pts[:, 0], pts[:, 1], pts[:, 2]
            if colors is not None:
                rec["red"], rec["green"], rec["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
            f.write(rec.tobytes())
        else:
            for i in range(n):
                line = f"{pts[i, 0]:.6g} {pts[i, 1]:.6g} {pts[i, 2]:.6g}"
                if colors is not None:
                    line += f" {colors[i, 0]} {colors[i, 1]} {colors[i, 2]}"
                f.write((line + "\n").encode("ascii"))
    return path


def write_glb(path: str | os.PathLike, points: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """Write a point cloud as binary glTF 2.0 (``.glb``): one primitive in POINTS mode, unlit colours.

    Web viewers (three.js, Babylon.js, Gradio's ``Model3D``) read GLB, not PLY point clouds. The
    points are given in OpenCV's camera axes (x right, y down, z forward, as :func:`backproject`
    returns them) and written in glTF's (x right, y up, z towards the viewer): y and z are negated.

    Args:
        path: output file (folders are created).
        points: (N, 3) float coordinates, OpenCV axes.
        colors: (N, 3) uint8 RGB per point, or None (white).
    """
    pts = np.asarray(points, dtype=np.float32).reshape(-1, 3) * np.float32([1, -1, -1])  # OpenCV -> glTF axes
    n = pts.shape[0]
    if n == 0:
        raise ValueError("a GLB point cloud needs at least one point")
    rgba = np.full((n, 4), 255, np.uint8)  # 4 bytes a vertex: glTF aligns vertex attributes to 4 bytes
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape != (n, 3):
            raise ValueError(f"colors must be ({n}, 3), got {colors.shape}")
        rgba[:, :3] = colors.astype(np.uint8)
    binary = pts.tobytes() + rgba.tobytes()  # both are multiples of 4 bytes
    gltf = {
        "asset": {"version": "2.0", "generator": "wordepth"},
        "extensionsUsed": ["KHR_materials_unlit"],  # points have no normals: show their colours as they are
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
        "materials": [{"pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0},
                       "extensions": {"KHR_materials_unlit": {}}}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "material": 0, "mode": 0}]}],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": pts.nbytes, "target": 34962},
                        {"buffer": 0, "byteOffset": pts.nbytes, "byteLength": rgba.nbytes, "target": 34962}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": n, "type": "VEC3",
                       "min": pts.min(0).tolist(), "max": pts.max(0).tolist()},
                      {"bufferView": 1, "componentType": 5121, "normalized": True, "count": n, "type": "VEC4"}],
    }
    text = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)  # chunks are 4-byte aligned; JSON pads with spaces
    body = (struct.pack("<II", len(text), 0x4E4F534A) + text  # JSON chunk
            + struct.pack("<II", len(binary), 0x004E4942) + binary)  # BIN chunk
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<III", 0x46546C67, 2, 12 + len(body)) + body)  # 'glTF', version 2, length
    return path

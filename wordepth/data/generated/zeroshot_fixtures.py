"""Small SUN RGB-D, iBims-1 and DIODE sets in their real on-disk formats, for tests and trials.

Each set is written the way the dataset is distributed (docs/zeroshot.md): SUN RGB-D JPEGs with
bit-rotated 16-bit PNG depth and the toolbox's two-field split file; iBims-1 MATLAB v5 ``.mat``
files (``scipy.io.savemat``) with ``imagelist.txt``; DIODE PNGs with ``*_depth.npy`` (H, W, 1) and
``*_depth_mask.npy``. Scenes are the synthetic rooms of `wordepth.data.generated.synthetic`, with holes,
masked regions and (SUN RGB-D) depths beyond 8.192 m, where the bit rotation wraps. Captions and
CUDA-tagged text features are written in the layout the datasets read.

    from wordepth.data.generated.zeroshot_fixtures import make_zeroshot_fixtures
    fx = make_zeroshot_fixtures("data/zeroshot_demo")   # then: wordepth-eval-zeroshot --data_root ...
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import scipy.io

from wordepth.data.generated.synthetic import caption_feature, render_nyu_scene
from wordepth.data.text_features import feature_path, key_path, make_cuda_tagged_file
from wordepth.data.facts import ZEROSHOT_DATASETS, zeroshot_facts
from wordepth.outputs import write_array, write_atomic, write_text

__all__ = ["encode_sunrgbd_depth", "make_zeroshot_fixtures"]

_ROOMS = ("bathroom", "kitchen", "bedroom", "office", "living room")


def encode_sunrgbd_depth(millimetres: np.ndarray) -> np.ndarray:
    """Millimetres -> SUN RGB-D's stored uint16, the 16 bits rotated left by 3 (the inverse of
    ``(v >> 3) | (v << 13)``)."""
    mm = np.asarray(millimetres, dtype=np.uint16)
    return (mm << np.uint16(3)) | (mm >> np.uint16(13))


def _write_png(path: Path, image: np.ndarray, jpeg: bool = False) -> None:
    write_array(path, image, params=[cv2.IMWRITE_JPEG_QUALITY, 95] if jpeg else [])


def _write_text(root: Path, name: str, key: str, caption: str) -> None:
    split = zeroshot_facts(name).text_split
    write_text(key_path(root / "text" / name / split, key, ".txt"), caption + "\n")
    make_cuda_tagged_file(feature_path(root / "text_feat", name, split, key), caption_feature(caption))


def _scene(rng: np.random.Generator, hw: tuple[int, int], scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, str]:
    room = _ROOMS[int(rng.integers(len(_ROOMS)))]
    image, depth, objects = render_nyu_scene(rng, room, *hw)
    return image, depth * scale, f"A {room} with a {objects[0]}."


def _holes(rng: np.random.Generator, hw: tuple[int, int], frac: float = 0.05) -> np.ndarray:
    return rng.random(hw) < frac


def _sunrgbd(root: Path, n: int, hw: tuple[int, int], seed: int) -> dict:
    base = root / "sunrgbd"
    lines, known = [], {}
    for i in range(n):
        rng = np.random.default_rng([seed, 1, i])
        image, depth, caption = _scene(rng, hw)
        mm = np.rint(depth * 1000.0)
        mm[: hw[0] // 6, : hw[1] // 4] = 9500  # beyond 8.192 m: the stored value wraps around
        mm[_holes(rng, hw)] = 0
        mm = mm.astype(np.uint16)
        scene = f"SUNRGBD/kv2/kinect2data/{i:06d}_2014-05-26_14-23-37_260595134347_rgbf{i:06d}-resize"
        rgb, dep = f"{scene}/image/{i:07d}.jpg", f"{scene}/depth/{i:07d}.png"
        _write_png(base / rgb, image, jpeg=True)
        _write_png(base / dep, encode_sunrgbd_depth(mm))
        _write_text(root, "sunrgbd", rgb, caption)
        lines.append(f"{rgb} {dep}")  # the toolbox's split file: two fields, no focal
        known[rgb] = {"depth": mm.astype(np.float32) / np.float32(1000.0), "mask": np.ones(hw, bool)}
    write_text(base / zeroshot_facts("sunrgbd").split_file, "\n".join(lines) + "\n")
    return known


def _ibims(root: Path, n: int, hw: tuple[int, int], seed: int) -> dict:
    base = root / "ibims"
    folder = base / "ibims1_core_mat"
    names, known = [], {}
    for i in range(n):
        rng = np.random.default_rng([seed, 2, i])
        image, depth, caption = _scene(rng, hw)
        depth = depth.astype(np.float32)
        depth[_holes(rng, hw)] = 0.0
        mask_invalid = np.ones(hw, np.uint8)  # 1 = keep, as in iBims-1
        mask_invalid[hw[0] // 2:, : hw[1] // 5] = 0
        mask_transp = np.ones(hw, np.uint8)
        mask_transp[: hw[0] // 3, -hw[1] // 4:] = 0
        focal = 560.0 * hw[1] / 640
        calib = np.array([[focal, 0, hw[1] / 2], [0, focal, hw[0] / 2], [0, 0, 1]], np.float64)
        name = f"{_ROOMS[i % len(_ROOMS)].replace(' ', '')}_{i:02d}"
        data = {"rgb": image, "depth": depth, "edges": np.zeros(hw, np.uint8), "calib": calib,
                "mask_invalid": mask_invalid, "mask_transp": mask_transp,
                "mask_wall": np.zeros(hw, np.uint8), "mask_wall_paras": np.zeros((0, 0)),
                "mask_table": np.zeros(hw, np.uint8), "mask_table_paras": np.zeros((0, 0)),
                "mask_floor": np.zeros(hw, np.uint8), "mask_floor_paras": np.zeros((0, 0))}
        write_atomic(folder / f"{name}.mat",
                     lambda tmp, data=data: scipy.io.savemat(tmp, {"data": data}, format="5", do_compression=True))
        _write_text(root, "ibims", name, caption)
        names.append(name)
        known[name] = {"depth": depth, "mask": (mask_invalid & mask_transp).astype(bool), "rgb": image,
                       "focal": focal}
    write_text(base / "imagelist.txt", "\n".join(names) + "\n")
    return known


def _diode(root: Path, name: str, n: int, hw: tuple[int, int], seed: int) -> dict:
    kind, scale, code = ("indoors", 1.0, 3) if name == "diode_indoor" else ("outdoor", 6.0, 4)
    folder = root / "diode" / "val" / kind
    known = {}
    for i in range(n):
        rng = np.random.default_rng([seed, code, i])
        image, depth, caption = _scene(rng, hw, scale)
        depth = depth.astype(np.float32)
        mask = ~_holes(rng, hw, 0.1)
        depth[~mask] = 0.0
        key = f"scene_{i // 2:05d}/scan_{i:05d}/{i // 2:05d}_{i:05d}_{kind}_{i * 10:03d}_010"
        _write_png(folder / f"{key}.png", image)
        write_atomic(folder / f"{key}_depth.npy", lambda tmp, d=depth[:, :, None]: np.save(tmp, d))
        write_atomic(folder / f"{key}_depth_mask.npy", lambda tmp, m=mask.astype(np.float32): np.save(tmp, m))
        _write_text(root, name, key, caption)
        known[key] = {"depth": depth, "mask": mask}
    return known


def make_zeroshot_fixtures(root: str | os.PathLike, datasets: tuple[str, ...] = tuple(ZEROSHOT_DATASETS),
                           n: int = 2, hw: tuple[int, int] = (96, 128), seed: int = 0) -> dict:
    """Writes ``n`` samples of each dataset under ``root`` in the layout `--data_root` expects.

    Args:
        root: output folder: ``sunrgbd/``, ``ibims/``, ``diode/val/{indoors,outdoor}/``, ``text/``,
            ``text_feat/``.
        datasets: which of ``sunrgbd``, ``ibims``, ``diode_indoor``, ``diode_outdoor``.
        n: samples per dataset.
        hw: image size.
        seed: everything written is a function of it.

    Returns:
        ``data_root``, ``text_dir``, ``text_feat_dir`` and, per dataset name, ``{key: {"depth":
        float32 metres as the loader must return it, "mask": bool validity mask, ...}}``.
    """
    root = Path(root)
    out: dict = {"data_root": root, "text_dir": root / "text", "text_feat_dir": root / "text_feat"}
    for name in datasets:
        zeroshot_facts(name)  # unknown names fail here
        if name == "sunrgbd":
            out[name] = _sunrgbd(root, n, hw, seed)
        elif name == "ibims":
            out[name] = _ibims(root, n, hw, seed)
        else:
            out[name] = _diode(root, name, n, hw, seed)
    return out

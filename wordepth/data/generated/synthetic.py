"""Small synthetic NYU/KITTI-style datasets in the original layouts, for tests and demos.

Scenes are rendered by ray casting simple geometry (room planes and boxes for NYU,
road, buildings and cars for KITTI) through a pinhole camera; the image is shaded
darker with distance and textured in world coordinates, so depth is learnable
from the image. The caption names the scene type, which sets its depth range, and
the text feature is a deterministic function of the caption (a normalised sum of
hashed word vectors), so identical captions give identical features and the text
carries information about scale.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from wordepth.data.depth_png import write_depth_png
from wordepth.data.text_features import feature_path, key_path, make_cuda_tagged_file
from wordepth.data.facts import KITTI, NYU
from wordepth.errors import UserError
from wordepth.outputs import OutputError, write_array, write_atomic, write_text

__all__ = ["caption_feature", "make_synthetic_dataset", "render_nyu_scene", "render_kitti_scene"]


# room type -> (back wall distance range in metres, objects)
_ROOMS = {
    "bathroom": ((2.0, 3.2), ("sink", "toilet", "mirror", "towel")),
    "kitchen": ((2.6, 4.4), ("table", "refrigerator", "chair", "counter")),
    "bedroom": ((3.0, 5.0), ("bed", "lamp", "dresser", "pillow")),
    "office": ((3.6, 6.0), ("desk", "chair", "computer", "bookshelf")),
    "living room": ((4.6, 7.6), ("couch", "television", "coffee table", "rug")),
}
# street kind -> (building distance range to the side in metres, or None for open road)
_STREETS = {
    "narrow city street": (3.5, 5.0),
    "city street": (5.0, 8.0),
    "residential street": (7.0, 11.0),
    "country road": None,
}
_NUMBERS = ("no", "one", "two", "three", "four")


# ---------------------------------------------------------------- text


def default_text_dim() -> int:
    """The network's default feature width, ``WorDepthConfig.text_dim`` (its one home; imported when needed:
    the model module imports timm)."""
    from wordepth.models.wordepth import WorDepthConfig

    return WorDepthConfig.text_dim


def caption_feature(caption: str, dim: int | None = None) -> torch.Tensor:
    """Deterministic unit-norm (1, dim) float16 feature of a caption (hashed bag of words); ``dim`` default:
    :func:`default_text_dim`."""
    dim = dim or default_text_dim()
    words = re.findall(r"[a-z0-9]+", caption.lower())
    vec = np.zeros(dim, dtype=np.float64)
    for word in words or [""]:
        seed = int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "little")
        vec += np.random.default_rng(seed).standard_normal(dim)
    vec /= np.linalg.norm(vec)
    return torch.from_numpy(vec.astype(np.float16)).reshape(1, dim)


# ---------------------------------------------------------------- rendering helpers


def _rays(height: int, width: int, focal: float, cy: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel ray slopes (u, v) = ((x - cx) / f, (y - cy) / f)."""
    u = (np.arange(width, dtype=np.float64) + 0.5 - width / 2) / focal
    v = (np.arange(height, dtype=np.float64) + 0.5 - cy) / focal
    return np.broadcast_to(u[None, :], (height, width)), np.broadcast_to(v[:, None], (height, width))


def _hit(depth: np.ndarray, label: np.ndarray, z: np.ndarray, mask: np.ndarray, lab: int) -> None:
    """Writes surface ``lab`` at depth ``z`` where it is in front (in place)."""
    closer = mask & (z > 0) & (z < depth)
    depth[closer] = z[closer]
    label[closer] = lab


def _shade(
    rng: np.random.Generator,
    depth: np.ndarray,
    label: np.ndarray,
    colors: np.ndarray,
    texture: np.ndarray,
    falloff: float,
) -> np.ndarray:
    """uint8 RGB image: surface colour x texture, darker with distance, plus noise."""
    base = colors[label]  # (H, W, 3)
    dist = np.where(np.isfinite(depth), depth, 0.0)
    light = 1.0 / (1.0 + falloff * dist)
    img = base * (0.55 + 0.45 * texture)[..., None] * light[..., None] * 255.0
    img += rng.normal(0.0, 2.5, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_nyu_scene(
    rng: np.random.Generator, room: str, height: int = 480, width: int = 640
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Renders an indoor room.

    Returns:
        image uint8 (H, W, 3) RGB, depth float64 (H, W) metres (dense, <= 10 m),
        and the names of the objects placed (boxes).
    """
    (lo, hi), objects = _ROOMS[room]
    focal = NYU.focal * width / NYU.full_hw[1]
    u, v = _rays(height, width, focal, height / 2)
    cam_h = rng.uniform(1.1, 1.6)
    ceil_h = rng.uniform(2.5, 3.0) - cam_h
    back = rng.uniform(lo, hi)
    left, right = rng.uniform(1.0, 2.6), rng.uniform(1.0, 2.6)
    depth = np.full((height, width), back)
    label = np.zeros((height, width), dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        _hit(depth, label, cam_h / v, v > 0, 1)  # floor
        _hit(depth, label, -ceil_h / v, v < 0, 2)  # ceiling
        _hit(depth, label, -left / u, u < 0, 3)  # left wall
        _hit(depth, label, right / u, u > 0, 4)  # right wall
    names = list(rng.choice(len(objects), size=rng.integers(1, 4), replace=False))
    for k, obj in enumerate(names):
        zb = rng.uniform(1.0, max(1.2, back - 0.3))
        wb, hb = rng.uniform(0.4, 1.4), rng.uniform(0.4, 1.6)
        x0 = rng.uniform(-left, right - wb)
        inside = (u * zb >= x0) & (u * zb <= x0 + wb) & (v * zb >= cam_h - hb) & (v * zb <= cam_h)
        _hit(depth, label, np.full_like(depth, zb), inside, 5 + k)
    # world coordinates for textures: X = u z, Z = z
    X, Z = u * depth, depth
    floor_tex = ((np.floor(X / 0.5) + np.floor(Z / 0.5)) % 2).astype(np.float64)
    wall_tex = 0.5 + 0.5 * np.cos(2 * np.pi * (X + Z) / 0.8)
    tex = np.where(label == 1, floor_tex, np.where(label >= 5, 0.8, wall_tex))
    colors = rng.uniform(0.35, 1.0, size=(8, 3))
    image = _shade(rng, depth, label, colors, tex, falloff=0.12)
    return image, np.minimum(depth, 9.99), [objects[i] for i in names]


def render_kitti_scene(
    rng: np.random.Generator, street: str, height: int = 375, width: int = 1242
) -> tuple[np.ndarray, np.ndarray, int]:
    """Renders a road scene.

    Returns:
        image uint8 (H, W, 3) RGB, depth float64 (H, W) metres (inf for sky / beyond
        80 m), and the number of cars.
    """
    focal = KITTI.focal * width / KITTI.full_hw[1]
    cy = 0.461 * height
    u, v = _rays(height, width, focal, cy)
    cam_h = 1.65
    depth = np.full((height, width), np.inf)
    label = np.zeros((height, width), dtype=np.int64)  # 0 sky
    with np.errstate(divide="ignore", invalid="ignore"):
        _hit(depth, label, cam_h / v, v > 0, 1)  # road
        walls = _STREETS[street]
        if walls is not None:
            for side, lab in ((-1, 2), (1, 3)):
                dist = rng.uniform(*walls)
                top = rng.uniform(4.0, 12.0)
                z = side * dist / u
                _hit(depth, label, z, (np.sign(u) == side) & (v * z >= cam_h - top), lab)
    n_cars = int(rng.integers(0, 5))
    for k in range(n_cars):
        zc = rng.uniform(5.0, 40.0)
        x0 = rng.choice([-1, 1]) * rng.uniform(1.5, 4.5) - 0.9
        inside = (u * zc >= x0) & (u * zc <= x0 + 1.8) & (v * zc >= cam_h - 1.5) & (v * zc <= cam_h)
        _hit(depth, label, np.full_like(depth, zc), inside, 4 + k)
    depth[depth > 80.0] = np.inf
    finite = np.isfinite(depth)
    X = np.where(finite, u * depth, 0.0)
    Z = np.where(finite, depth, 0.0)
    lane = (np.abs(X) < 0.08) & (np.floor(Z / 3.0) % 2 == 0)
    road_tex = np.where(lane, 1.0, 0.35)
    window = ((np.floor(Z / 1.5) + np.floor((v * Z) / 1.2)) % 2).astype(np.float64)
    sky_tex = 1.0 - np.clip(v * focal / height + 0.5, 0, 1) * 0.3
    tex = np.select([label == 0, label == 1, label <= 3], [sky_tex, road_tex, window], 0.8)
    colors = rng.uniform(0.3, 1.0, size=(9, 3))
    colors[0] = (0.55, 0.75, 0.95)
    colors[1] = (0.5, 0.5, 0.5)
    image = _shade(rng, np.where(finite, depth, 60.0), label, colors, tex, falloff=0.025)
    return image, depth, n_cars


# ---------------------------------------------------------------- writers


def _write_rgb(path: Path, image: np.ndarray) -> None:
    write_array(path, image, params=[cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else [])


def _write_depth(path: Path, depth: np.ndarray, scale: float) -> None:
    write_atomic(path, lambda tmp: write_depth_png(tmp, depth, scale))


def _write_caption(root: Path, dataset: str, split: str, rgb: str, caption: str, text_dim: int) -> None:
    write_text(key_path(root / "text" / dataset / split, rgb, ".txt"), caption + "\n")
    make_cuda_tagged_file(feature_path(root / "text_feat", dataset, split, rgb), caption_feature(caption, text_dim))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _nyu_sample(root: Path, split: str, index: int, rng: np.random.Generator, hw: tuple[int, int],
                text_dim: int) -> str:
    room = list(_ROOMS)[int(rng.integers(len(_ROOMS)))]
    image, depth, objects = render_nyu_scene(rng, room, *hw)
    slug = room.replace(" ", "_")
    if split == "train":
        scene, base, lead = f"{slug}_{index // 4:04d}", root / "nyu" / "sync", "/"
    else:
        scene, base, lead = slug, root / "nyu" / "official_splits" / "test", ""
    rgb, dep = f"{scene}/rgb_{index:05d}.jpg", f"{scene}/sync_depth_{index:05d}.png"
    _write_rgb(base / rgb, image)
    _write_depth(base / dep, depth, NYU.depth_png_scale)
    caption = f"{_article(room).capitalize()} {room} with {' and '.join(f'{_article(o)} {o}' for o in objects[:2])}."
    _write_caption(root, "nyu", split, rgb, caption, text_dim)
    focal = NYU.focal * hw[1] / NYU.full_hw[1]
    return f"{lead}{rgb} {lead}{dep} {focal:.4f}"


def _kitti_sample(root: Path, split: str, index: int, rng: np.random.Generator, hw: tuple[int, int],
                  text_dim: int) -> str:
    street = list(_STREETS)[int(rng.integers(len(_STREETS)))]
    image, depth, n_cars = render_kitti_scene(rng, street, *hw)
    # sparse "LiDAR": about 25% of the pixels below the top third, never sky
    lidar = rng.random(depth.shape) < 0.25
    lidar[: hw[0] // 3] = False
    sparse = np.where(lidar & np.isfinite(depth), depth, np.inf)
    drive_no = (2 if split == "test" else 1) + 10 * (index // 4)
    drive = f"2011_09_26_drive_{drive_no:04d}_sync"
    frame = f"{index * 3:010d}.png"
    rgb = f"2011_09_26/{drive}/image_02/data/{frame}"
    dep = f"{drive}/proj_depth/groundtruth/image_02/{frame}"
    _write_rgb(root / "kitti" / "raw" / rgb, image)
    _write_depth(root / "kitti" / "gt" / dep, sparse, KITTI.depth_png_scale)
    cars = "no cars" if n_cars == 0 else f"{_NUMBERS[n_cars]} car{'s' if n_cars > 1 else ''}"
    caption = f"A {street} with {cars} parked on the side of the road."
    _write_caption(root, "kitti", split, rgb, caption, text_dim)
    focal = KITTI.focal * hw[1] / KITTI.full_hw[1]
    return f"{rgb} {dep} {focal:.4f}"


def synthetic_paths(root: str | os.PathLike, dataset: str = "nyu") -> dict[str, Path]:
    """The paths of a synthetic dataset under ``root`` (as `make_synthetic_dataset` returns them)."""
    root = Path(root)
    if dataset == "nyu":
        base = root / "nyu"
        paths = {
            "data_path": base / "sync",
            "gt_path": base / "sync",
            "data_path_eval": base / "official_splits" / "test",
            "gt_path_eval": base / "official_splits" / "test",
            "train_split": base / "nyudepthv2_train_files_with_gt.txt",
            "test_split": base / "nyudepthv2_test_files_with_gt.txt",
        }
    else:
        base = root / "kitti"
        paths = {
            "data_path": base / "raw",
            "gt_path": base / "gt",
            "data_path_eval": base / "raw",
            "gt_path_eval": base / "gt",
            "train_split": base / "eigen_train_files_with_gt.txt",
            "test_split": base / "eigen_test_files_with_gt.txt",
        }
    return {"root": root, **paths, "text_dir": root / "text", "text_feat_dir": root / "text_feat"}


def make_synthetic_dataset(
    root: str | os.PathLike,
    dataset: str = "nyu",
    n_train: int = 8,
    n_test: int = 4,
    height: int | None = None,
    width: int | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    overwrite: bool = True,
    text_dim: int | None = None,
) -> dict[str, Path]:
    """Writes a small dataset in the original layout under ``root``.

    NYU: ``nyu/sync/<scene>/rgb_*.jpg`` + ``sync_depth_*.png`` (train),
    ``nyu/official_splits/test/<room>/...`` (test), split files
    ``nyu/nyudepthv2_{train,test}_files_with_gt.txt``. KITTI:
    ``kitti/raw/2011_09_26/<drive>/image_02/data/*.png``,
    ``kitti/gt/<drive>/proj_depth/groundtruth/image_02/*.png`` (sparse),
    ``kitti/eigen_{train,test}_files_with_gt.txt``. Both: captions at
    ``text/<dataset>/<split>/<rgb>.txt`` and CUDA-tagged (1, text_dim) float16 features at
    ``text_feat/<dataset>/<split>/<rgb>.pt``.

    Args:
        root: output folder.
        dataset: ``nyu`` or ``kitti``.
        n_train: training images.
        n_test: test images.
        height: image height (default 480 NYU, 375 KITTI).
        width: image width (default 640 NYU, 1242 KITTI).
        seed: everything written is a function of it.
        progress: called with 1 after each image (e.g. a tqdm bar's ``update``).
        overwrite: replace the files of an earlier synthetic dataset of ``dataset`` under ``root``;
            False refuses (:class:`~wordepth.outputs.OutputError`) when its split files exist.
        text_dim: the width of the caption features (default: ``WorDepthConfig.text_dim``, the model's).

    Returns:
        Paths: ``root``, ``data_path``, ``gt_path``, ``data_path_eval``, ``gt_path_eval``,
        ``train_split``, ``test_split``, ``text_dir``, ``text_feat_dir``.
    """
    if dataset not in ("nyu", "kitti"):
        raise UserError(f"unknown dataset {dataset!r}: expected 'nyu' or 'kitti'")
    default = NYU.full_hw if dataset == "nyu" else KITTI.full_hw
    hw = (height or default[0], width or default[1])
    if hw[0] < 8 or hw[1] < 8:
        raise UserError(f"image size {hw[0]}x{hw[1]} is too small")
    root = Path(root)
    if not overwrite:
        paths = synthetic_paths(root, dataset)
        there = [paths[k] for k in ("train_split", "test_split") if paths[k].exists()]
        if there:
            raise OutputError(f"--out {root} already holds a synthetic {dataset} dataset ({there[0]}); choose another "
                              "folder, or pass --overwrite to replace its files")
    text_dim = text_dim or default_text_dim()
    make = _nyu_sample if dataset == "nyu" else _kitti_sample
    code = 1 if dataset == "nyu" else 2
    lines: dict[str, list[str]] = {}
    for split, count, split_code in (("train", n_train, 0), ("test", n_test, 1)):
        lines[split] = []
        for i in range(count):
            rng = np.random.default_rng([seed, code, split_code, i])
            lines[split].append(make(root, split, i, rng, hw, text_dim))
            if progress is not None:
                progress(1)
    paths = synthetic_paths(root, dataset)
    write_text(paths["train_split"], "".join(line + "\n" for line in lines["train"]))
    write_text(paths["test_split"], "".join(line + "\n" for line in lines["test"]))
    return paths

"""Image/depth I/O and the original training augmentation, vectorised with cv2/numpy.

Samples are dicts: ``image`` uint8 (H, W, 3) RGB and ``depth`` float32 (H, W) metres
while augmenting; :func:`to_tensors` turns them into the network's inputs
(``image`` float32 (3, H, W) ImageNet-normalised, ``depth`` float32 (1, H, W)).

The random draws follow the original data loader, in its order: rotation angle,
crop x then y (only when the image is larger than the input), flip coin, colour
coin, then gamma, brightness and the three channel gains. The original drew the
channel gains from numpy's global generator and everything else from Python's
``random``; here one ``random.Random`` makes every draw, so a sample can be replayed.

The colour augmentation (gamma, brightness, channel gains, clip) and the ImageNet
normalisation are a per-channel function of the 8-bit input value, so they run as
one lookup table computed with the original's float32 operations (bit-identical
to computing them pixel by pixel).
"""
from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from wordepth.data.facts import KB_CROP_HW, NYU_FULL_HW, NYU_VALID_BOX
from wordepth.errors import UserError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AugmentParams",
    "read_image",
    "kb_crop_offsets",
    "kb_crop",
    "nyu_valid_box",
    "zero_depth_outside",
    "crop_to_box",
    "rotate",
    "crop",
    "hflip",
    "draw_augment_params",
    "apply_geometric",
    "color_lut",
    "image_to_tensor",
    "to_tensors",
    "sample_rng",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentParams:
    """The random draws of one training sample.

    Attributes:
        angle: rotation in degrees, counter-clockwise (0: none).
        crop_y: top of the random crop (0 when no crop is drawn).
        crop_x: left of the random crop.
        flip: horizontal flip.
        color: whether the colour augmentation is applied.
        gamma: gamma exponent.
        brightness: brightness gain.
        colors: per-channel (R, G, B) gains.
    """

    angle: float = 0.0
    crop_y: int = 0
    crop_x: int = 0
    flip: bool = False
    color: bool = False
    gamma: float = 1.0
    brightness: float = 1.0
    colors: tuple[float, float, float] = (1.0, 1.0, 1.0)


# ---------------------------------------------------------------- I/O


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an 8-bit colour image as uint8 (H, W, 3) RGB.

    Raises:
        FileNotFoundError: the file is missing.
        UserError: the file cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    data = path.read_bytes()
    # cv2 decodes a truncated JPEG without complaint (grey fill): check the end-of-image marker
    if data.startswith(b"\xff\xd8\xff") and not data.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9"):
        raise UserError(f"truncated JPEG {path} (no end-of-image marker): re-download or re-extract it")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if bgr is None:
        raise UserError(f"cannot decode image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------- crops


def kb_crop_offsets(height: int, width: int) -> tuple[int, int]:
    """(top, left) of the KITTI benchmark crop to 352x1216 (bottom-centred)."""
    h, w = KB_CROP_HW
    if height < h or width < w:
        raise UserError(f"KB crop needs an image of at least {h}x{w}, got {height}x{width}")
    return height - h, (width - w) // 2


def kb_crop(sample: dict) -> dict:
    """Crops ``image`` (and ``depth`` when present) to the KITTI benchmark 352x1216 window."""
    height, width = sample["image"].shape[:2]
    top, left = kb_crop_offsets(height, width)
    return crop_to_box(sample, (top, top + KB_CROP_HW[0], left, left + KB_CROP_HW[1]))


def nyu_valid_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of NYU's registered-depth region for an image size.

    Exactly rows 45:472, cols 43:608 for 480x640; scaled proportionally for other
    sizes (small synthetic data).
    """
    if (height, width) == NYU_FULL_HW:
        return NYU_VALID_BOX
    top, bottom, left, right = NYU_VALID_BOX
    sy, sx = height / NYU_FULL_HW[0], width / NYU_FULL_HW[1]
    return round(top * sy), round(bottom * sy), round(left * sx), round(right * sx)


def zero_depth_outside(sample: dict, box: tuple[int, int, int, int]) -> dict:
    """Sets ``depth`` to 0 outside ``box`` = (top, bottom, left, right)."""
    top, bottom, left, right = box
    depth = sample["depth"].copy()
    depth[:top] = 0
    depth[bottom:] = 0
    depth[:, :left] = 0
    depth[:, right:] = 0
    return {**sample, "depth": depth}


def crop_to_box(sample: dict, box: tuple[int, int, int, int]) -> dict:
    """Crops ``image`` and ``depth`` (when not None) to ``box`` = (top, bottom, left, right)."""
    top, bottom, left, right = box
    out = {**sample, "image": sample["image"][top:bottom, left:right]}
    if sample.get("depth") is not None:
        out["depth"] = sample["depth"][top:bottom, left:right]
    return out


# ---------------------------------------------------------------- geometric augmentation


def _fix16(v: float) -> int:
    """Pillow's 16.16 fixed-point conversion of a coefficient: ``floor(v * 65536 + 0.5)``."""
    return math.floor(v * 65536.0 + 0.5)


def _rotation_source(height: int, width: int, angle: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the original's nearest-neighbour rotation of the depth PNG takes each pixel from.

    The original pins Pillow 10.1.0, which opens a 16-bit PNG in mode ``I`` (32-bit integers); there
    ``Image.rotate(angle, NEAREST)`` maps output pixels to source pixels in 16.16 fixed-point
    arithmetic (Pillow >= 10.3 opens the PNG as ``I;16``, rotated in floating point, which picks
    another source pixel near rounding ties for 0.2-0.5% of a 480x640 map). This computes that
    fixed-point mapping with numpy, so it does not depend on the installed Pillow:

    * the matrix is Pillow's: the inverse rotation about the image centre ``(w/2, h/2)``, its sine
      and cosine rounded to 15 decimals;
    * each coefficient becomes ``floor(c * 65536 + 0.5)``, the offsets include half a pixel, and the
      source index is the accumulated value shifted right by 16 (a floor).

    Returns the source rows, columns and the mask of covered pixels (the rest is filled with 0).
    """
    turn = angle % 360.0
    rows, cols = np.indices((height, width), dtype=np.int64)
    if turn == 0.0 or turn == 180.0:  # Pillow copies or transposes; no resampling
        if turn == 180.0:
            rows, cols = rows[::-1, ::-1], cols[::-1, ::-1]
        return rows, cols, np.ones((height, width), dtype=bool)
    if turn in (90.0, 270.0) and height == width:  # Pillow transposes a square image
        rows, cols = (np.rot90(rows), np.rot90(cols)) if turn == 90.0 else (np.rot90(rows, -1), np.rot90(cols, -1))
        return np.ascontiguousarray(rows), np.ascontiguousarray(cols), np.ones((height, width), dtype=bool)
    rad = -math.radians(turn)
    a, b = round(math.cos(rad), 15), round(math.sin(rad), 15)
    d, e = round(-math.sin(rad), 15), round(math.cos(rad), 15)
    cx, cy = width / 2.0, height / 2.0
    c = a * -cx + b * -cy + cx  # source x = a*x + b*y + c
    f = d * -cx + e * -cy + cy  # source y = d*x + e*y + f
    corners = [(x, y) for x in (0, width) for y in (0, height)]
    if any(abs(a * x + b * y + c) >= 32768.0 or abs(d * x + e * y + f) >= 32768.0 for x, y in corners):
        raise UserError(f"depth map of {height}x{width} is too large to rotate as the original does "
                         "(Pillow's fixed-point path needs coordinates below 32768)")
    a0, a1, a3, a4 = _fix16(a), _fix16(b), _fix16(d), _fix16(e)
    a2 = _fix16(c + a * 0.5 + b * 0.5)
    a5 = _fix16(f + d * 0.5 + e * 0.5)
    src_c = (a2 + rows * a1 + cols * a0) >> 16  # (H, W)
    src_r = (a5 + rows * a4 + cols * a3) >> 16  # (H, W)
    covered = (src_c >= 0) & (src_c < width) & (src_r >= 0) & (src_r < height)
    return src_r, src_c, covered


def rotate(sample: dict, angle: float) -> dict:
    """Rotates counter-clockwise by ``angle`` degrees about the centre as the original does.

    The uint8 image goes through ``PIL.Image.rotate`` (bilinear; Pillow's fixed-point filter
    truncates where other libraries round, so only Pillow gives the original's values); the
    depth takes the pixels that the original's Pillow (10.1.0, mode ``I``) takes in its
    nearest-neighbour rotation of the 16-bit PNG (:func:`_rotation_source`). Uncovered corners
    become 0. Both are tested bit-exactly: the image against Pillow, the depth against a golden
    made with Pillow 10.1.0.
    """
    image = Image.fromarray(np.ascontiguousarray(sample["image"]))
    out = {**sample, "image": np.asarray(image.rotate(angle, resample=Image.BILINEAR))}
    if sample.get("depth") is not None:
        depth = sample["depth"]
        src_r, src_c, covered = _rotation_source(*depth.shape, angle)
        h, w = depth.shape[:2]
        picked = depth[src_r.clip(0, h - 1), src_c.clip(0, w - 1)]
        out["depth"] = np.where(covered, picked, 0).astype(depth.dtype)
    return out


def crop(sample: dict, y: int, x: int, height: int, width: int) -> dict:
    """Crops ``image`` and ``depth`` to ``height`` x ``width`` at (y, x)."""
    h, w = sample["image"].shape[:2]
    if y < 0 or x < 0 or y + height > h or x + width > w:
        raise ValueError(f"crop {height}x{width} at ({y}, {x}) does not fit in {h}x{w}")
    return crop_to_box(sample, (y, y + height, x, x + width))


def hflip(sample: dict) -> dict:
    """Flips ``image`` and ``depth`` left-right."""
    out = {**sample, "image": cv2.flip(np.ascontiguousarray(sample["image"]), 1)}
    if sample.get("depth") is not None:
        out["depth"] = cv2.flip(np.ascontiguousarray(sample["depth"]), 1)
    return out


def draw_augment_params(
    rng: random.Random,
    image_hw: tuple[int, int],
    out_hw: tuple[int, int],
    degree: float | None,
    brightness_range: tuple[float, float],
) -> AugmentParams:
    """Draws one sample's augmentation in the original's order.

    Args:
        rng: the random source.
        image_hw: size of the image entering rotation/crop.
        out_hw: network input size; a crop offset is drawn only when it differs.
        degree: maximum rotation (U(-degree, degree)), or None for no rotation.
        brightness_range: (0.75, 1.25) for NYU, (0.9, 1.1) for KITTI.
    """
    angle = (rng.random() - 0.5) * 2 * degree if degree is not None else 0.0
    crop_y = crop_x = 0
    if tuple(image_hw) != tuple(out_hw):
        (h, w), (oh, ow) = image_hw, out_hw
        if oh > h or ow > w:
            raise UserError(f"input size {oh}x{ow} (--input_height x --input_width) is larger than the image "
                             f"{h}x{w}")
        crop_x = rng.randint(0, w - ow)
        crop_y = rng.randint(0, h - oh)
    flip = rng.random() > 0.5
    color = rng.random() > 0.5
    if not color:
        return AugmentParams(angle, crop_y, crop_x, flip)
    gamma = rng.uniform(0.9, 1.1)
    brightness = rng.uniform(*brightness_range)
    colors = (rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1), rng.uniform(0.9, 1.1))
    return AugmentParams(angle, crop_y, crop_x, flip, True, gamma, brightness, colors)


def apply_geometric(sample: dict, params: AugmentParams, out_hw: tuple[int, int]) -> dict:
    """Rotation, crop to ``out_hw`` and flip of ``params`` (the original's order)."""
    if params.angle != 0.0:
        sample = rotate(sample, params.angle)
    if tuple(sample["image"].shape[:2]) != tuple(out_hw):
        sample = crop(sample, params.crop_y, params.crop_x, *out_hw)
    if params.flip:
        sample = hflip(sample)
    return sample


# ---------------------------------------------------------------- to tensors


def color_lut(params: AugmentParams | None = None) -> np.ndarray:
    """(3, 256) float32 table: 8-bit value -> augmented, normalised channel value.

    Follows the original's float32 arithmetic: v/255, ``** gamma``, ``* brightness``,
    ``*= colour`` (a float64 product cast back), clip to [0, 1], then
    ``(x - mean) / std`` as torchvision's Normalize.
    """
    base = np.arange(256, dtype=np.float32) / np.float32(255.0)
    lut = np.empty((3, 256), dtype=np.float32)
    for c in range(3):
        x = base
        if params is not None and params.color:
            x = x**params.gamma  # float32 ** Python float stays float32
            x = x * params.brightness
            x = (x.astype(np.float64) * params.colors[c]).astype(np.float32)
            x = np.clip(x, np.float32(0.0), np.float32(1.0))
        lut[c] = (x - np.float32(IMAGENET_MEAN[c])) / np.float32(IMAGENET_STD[c])
    return lut


def image_to_tensor(image: np.ndarray, params: AugmentParams | None = None) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W), colour-augmented when ``params.color``, normalised."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    lut = color_lut(params)
    height, width = image.shape[:2]
    out = np.empty((3, height, width), dtype=np.float32)
    for c, plane in enumerate(cv2.split(np.ascontiguousarray(image))):
        cv2.LUT(plane, lut[c].reshape(1, 256), dst=out[c])
    return torch.from_numpy(out)


def to_tensors(sample: dict, params: AugmentParams | None = None) -> dict:
    """Converts ``image`` and ``depth`` to the network's tensors (see module docstring)."""
    out = {**sample, "image": image_to_tensor(sample["image"], params)}
    if sample.get("depth") is not None:
        out["depth"] = torch.from_numpy(np.ascontiguousarray(sample["depth"], dtype=np.float32)[None])
    return out


def sample_rng(seed: int | None, epoch: int, index: int) -> random.Random:
    """Random source for one sample.

    With a seed: a function of (seed, epoch, index) only, independent of worker
    assignment. Without: drawn from Python's global ``random``, which DataLoader
    seeds differently in each worker and epoch (as the original relied on).
    """
    if seed is None:
        return random.Random(random.getrandbits(64))
    return random.Random(f"wordepth:{seed}:{epoch}:{index}")

"""A scale-ambiguous synthetic dataset: one image, several metric scales, a caption that names the scale.

Each *layout* is a room (floor, ceiling, three textured walls) with two furniture boxes, ray-cast
through a pinhole camera in a unit-scale world. The same rendered image is then paired with the
depth map multiplied by each scale factor (x0.5 "dollhouse", x1 "bedroom", x2 "large hall"):
scaling the whole world about the camera leaves every pixel unchanged, so the image alone cannot
tell the scale. The caption names it, together with the two objects of the layout, e.g.
"a dollhouse with a bed and a table" / "a bedroom with a bed and a table" /
"a large hall with a bed and a table".

This is the paper's claim in miniature: a language prior can resolve the scale ambiguity that
monocular depth leaves open. The experiment ``experiments/scale_ambiguity`` trains and compares
models on it; :mod:`wordepth.demo.toy` trains the small model that the web app's ``--demo`` ships.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "FOCAL_PER_WIDTH",
    "OBJECTS",
    "SCALES",
    "ScaleAmbiguitySplit",
    "caption_for",
    "make_split",
    "render_layout",
]

# scale factor -> the words of the caption that name it
SCALES: dict[float, str] = {0.5: "a dollhouse", 1.0: "a bedroom", 2.0: "a large hall"}

# object -> box size ranges in the unit-scale world (width x, height y, depth z), metres
OBJECTS: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "bed": ((1.4, 1.8), (0.45, 0.6), (1.9, 2.1)),
    "table": ((0.9, 1.4), (0.7, 0.8), (0.7, 0.9)),
    "wardrobe": ((0.9, 1.3), (1.8, 2.1), (0.5, 0.65)),
    "chair": ((0.45, 0.55), (0.85, 1.0), (0.45, 0.55)),
    "sofa": ((1.7, 2.2), (0.75, 0.9), (0.8, 1.0)),
    "bookshelf": ((0.7, 1.0), (1.6, 2.0), (0.3, 0.4)),
}

FOCAL_PER_WIDTH = 0.6  # focal length / image width: an 80 degree horizontal field of view


def caption_for(scale: float, objects: tuple[str, str]) -> str:
    """The caption of a layout shown at ``scale``, e.g. 'a dollhouse with a bed and a table'."""
    return f"{SCALES[scale]} with a {objects[0]} and a {objects[1]}"


# ---------------------------------------------------------------- rendering


def _box_hit(d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ray/axis-aligned-box intersection (slab method) for rays ``t * d`` from the origin.

    Args:
        d: (H, W, 3) ray directions in world coordinates.
        lo, hi: (3,) box corners.

    Returns:
        t (H, W) of the entry point (inf where missed) and the entry face's axis (0 x, 1 y, 2 z).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = lo / d
        t2 = hi / d
    t_near = np.minimum(t1, t2)
    t_far = np.maximum(t1, t2)
    axis = np.argmax(t_near, axis=-1)
    t_in = t_near.max(axis=-1)
    t_out = t_far.min(axis=-1)
    hit = (t_in <= t_out) & (t_in > 0)
    return np.where(hit, t_in, np.inf), axis


def render_layout(rng: np.random.Generator, height: int = 64, width: int = 96, supersample: int = 2
                  ) -> tuple[np.ndarray, np.ndarray, tuple[str, str]]:
    """Ray-casts one room layout in the unit-scale world.

    The camera sits at the origin, pitched down by 5-25 degrees and turned by up to 25 degrees
    (world y points down, z forward);
    the room is a box (floor, ceiling, left/right/back wall) with two furniture boxes on the floor.
    The image is rendered at ``supersample`` times the size and area-averaged; depth (distance
    along the optical axis, as in NYU) is sampled at the pixel centres.

    Returns:
        image uint8 (H, W, 3) RGB, depth float64 (H, W) metres at scale 1 (about 1.1 m to 4.6 m),
        and the two objects placed.
    """
    back = rng.uniform(2.8, 4.2)
    left, right = rng.uniform(1.3, 2.4), rng.uniform(1.3, 2.4)
    cam_h = rng.uniform(1.1, 1.5)
    ceil = rng.uniform(2.5, 2.9) - cam_h
    pitch = np.deg2rad(rng.uniform(5.0, 25.0))
    yaw = np.deg2rad(rng.uniform(-25.0, 25.0))
    names = tuple(str(n) for n in rng.choice(list(OBJECTS), size=2, replace=False))
    boxes = []
    for k, name in enumerate(names):
        (w0, w1), (h0, h1), (d0, d1) = OBJECTS[name]
        w, h, dz = rng.uniform(w0, w1), rng.uniform(h0, h1), rng.uniform(d0, d1)
        # the first object stands on the left, the second on the right
        x0 = rng.uniform(-left, -0.2 - w / 2) if k == 0 else rng.uniform(0.2 - w / 2, max(0.0, right - w))
        z0 = rng.uniform(1.6, max(1.65, back - dz - 0.1))
        boxes.append((np.array([x0, cam_h - h, z0]), np.array([x0 + w, cam_h, z0 + dz])))
    palette = rng.uniform(0.25, 1.0, size=(7, 3))  # floor, ceiling, left, right, back, box 1, box 2
    tile = rng.uniform(0.35, 0.6)
    stripe = rng.uniform(0.25, 0.5)
    light = rng.uniform(0.6, 1.0)
    cos_p, sin_p = np.cos(pitch), np.sin(pitch)
    cos_y, sin_y = np.cos(yaw), np.sin(yaw)

    def cast(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        f = FOCAL_PER_WIDTH * w
        u = np.broadcast_to(((np.arange(w) + 0.5 - w / 2) / f)[None, :], (h, w))
        v = np.broadcast_to(((np.arange(h) + 0.5 - h / 2) / f)[:, None], (h, w))
        # camera ray (u, v, 1) pitched down, then turned by the yaw, in world coordinates;
        # rotations keep the ray parameter, so a point t * d has camera depth t
        y, z = v * cos_p + sin_p, cos_p - v * sin_p
        d = np.stack([u * cos_y + z * sin_y, y, z * cos_y - u * sin_y], axis=-1)  # (h, w, 3)
        dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]
        depth = np.full((h, w), np.inf)
        label = np.zeros((h, w), dtype=np.int64)
        normal_axis = np.zeros((h, w), dtype=np.int64)
        with np.errstate(divide="ignore", invalid="ignore"):
            surfaces = [(np.where(dy > 0, cam_h / dy, np.inf), 0, 1),  # floor
                        (np.where(dy < 0, -ceil / dy, np.inf), 1, 1),  # ceiling
                        (np.where(dx < 0, -left / dx, np.inf), 2, 0),  # left wall
                        (np.where(dx > 0, right / dx, np.inf), 3, 0),  # right wall
                        (np.where(dz > 0, back / dz, np.inf), 4, 2)]  # back wall
        for k, (lo, hi) in enumerate(boxes):
            t, axis = _box_hit(d, lo, hi)
            surfaces.append((t, 5 + k, axis))
        for t, lab, axis in surfaces:
            closer = t < depth
            depth = np.where(closer, t, depth)
            label = np.where(closer, lab, label)
            normal_axis = np.where(closer, axis, normal_axis)
        X, Z = dx * depth, dz * depth  # world coordinates for the textures
        checker = (np.floor(X / tile) + np.floor(Z / tile)) % 2
        stripes = 0.5 + 0.5 * np.cos(2 * np.pi * (X + Z) / stripe)
        tex = np.select([label == 0, label == 1, label <= 4],
                        [0.55 + 0.45 * checker, np.ones_like(X), 0.7 + 0.3 * stripes], 0.9 + 0.1 * checker)
        facing = np.choose(normal_axis, [light, 0.75 * light + 0.25, np.ones_like(X)])  # side, top, front
        shade = tex * facing / (1.0 + 0.1 * depth)
        return depth, palette[label] * shade[..., None]

    _, colour = cast(height * supersample, width * supersample)
    image = cv2.resize(colour.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    image = np.clip(image * 255.0 + rng.normal(0.0, 2.0, size=image.shape), 0, 255).astype(np.uint8)
    depth, _ = cast(height, width)
    return image, depth, names


# ---------------------------------------------------------------- splits


@dataclass
class ScaleAmbiguitySplit:
    """Every (layout, scale) pair of a split; sample i shows layout ``layout[i]`` at ``scale[i]``.

    Attributes:
        images: (N, H, W, 3) uint8 RGB; identical for the scales of a layout.
        depth: (N, H, W) float32 metres, the layout's unit-scale depth times ``scale[i]``.
        scale: (N,) float32 scale factors.
        layout: (N,) int64 layout index within the split.
        captions: N captions naming the scale and the two objects.
    """

    images: np.ndarray
    depth: np.ndarray
    scale: np.ndarray
    layout: np.ndarray
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)


def make_split(n_layouts: int, seed: int, height: int = 64, width: int = 96,
               scales: tuple[float, ...] = tuple(SCALES)) -> ScaleAmbiguitySplit:
    """Renders ``n_layouts`` layouts (seeded) and pairs each with every scale.

    Different seeds give different layouts, so a test split made with another seed holds scenes
    not seen in training.
    """
    rng = np.random.default_rng(seed)
    images, depth, scale, layout, captions = [], [], [], [], []
    for i in range(n_layouts):
        image, unit_depth, names = render_layout(rng, height, width)
        for s in scales:
            images.append(image)
            depth.append((unit_depth * s).astype(np.float32))
            scale.append(s)
            layout.append(i)
            captions.append(caption_for(s, names))
    return ScaleAmbiguitySplit(np.stack(images), np.stack(depth), np.asarray(scale, np.float32),
                               np.asarray(layout, np.int64), captions)


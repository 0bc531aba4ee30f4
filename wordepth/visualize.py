"""Pictures of depth: colour maps, colour bars, error maps, grids and evaluation panels.

Everything here works on numpy arrays (torch tensors are accepted and moved to the CPU) and
draws with OpenCV only. Colour images are ``uint8`` RGB ``(H, W, 3)``; :func:`save_png` converts
to OpenCV's BGR when writing.

Conventions:

- depth maps are ``(H, W)`` in metres; a pixel that is zero, negative or not finite is *invalid*
  and drawn black;
- error maps show ``|pred - gt| / gt`` on valid ground-truth pixels with a fixed scale
  ``[0, vmax]`` (0.2 by default), so colours are comparable across images;

16-bit depth PNGs: :mod:`wordepth.data.depth_png`; point clouds: :mod:`wordepth.pointcloud`.
"""
from __future__ import annotations

import heapq
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from typing import TYPE_CHECKING

import cv2
import numpy as np

from wordepth.data.depth_png import as_depth_map as _as_map, to_numpy as _to_numpy
from wordepth.errors import UserError

if TYPE_CHECKING:  # tensors are accepted, but this module does not import torch (the web app draws its page first)
    import torch


def __getattr__(name: str):
    """``IMAGENET_MEAN`` / ``IMAGENET_STD`` (their home is `wordepth.data.transforms`, which imports torch)."""
    if name in ("IMAGENET_MEAN", "IMAGENET_STD"):
        from wordepth.data import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

logger = logging.getLogger(__name__)


CMAPS = {
    "turbo": cv2.COLORMAP_TURBO,
    "magma": cv2.COLORMAP_MAGMA,
    "inferno": cv2.COLORMAP_INFERNO,
    "plasma": cv2.COLORMAP_PLASMA,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "jet": cv2.COLORMAP_JET,
}

FONT = cv2.FONT_HERSHEY_SIMPLEX
BLACK = (0, 0, 0)

__all__ = [
    "CMAPS",
    "WorstImages",
    "abs_rel_error_map",
    "add_colorbar",
    "add_title",
    "colormap_lut",
    "colorize",
    "denormalize",
    "make_grid",
    "save_eval_visuals",
    "save_png",
    "worst_summary",
]


# --------------------------------------------------------------------------- helpers
def _as_rgb(img: np.ndarray | torch.Tensor) -> np.ndarray:
    """uint8 (H, W), (H, W, 1) or (H, W, 3) -> uint8 (H, W, 3)."""
    a = _to_numpy(img)
    if a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {a.shape}")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


def colormap_lut(cmap: str = "turbo") -> np.ndarray:
    """The 256 RGB colours of a colour map, (256, 3) uint8; index 0 is the low end."""
    if cmap not in CMAPS:
        raise UserError(f"unknown colour map {cmap!r}; choose one of {sorted(CMAPS)}")
    ramp = np.arange(256, dtype=np.uint8)[:, None]  # (256, 1)
    return cv2.applyColorMap(ramp, CMAPS[cmap])[:, 0, ::-1].copy()  # BGR -> RGB


def _apply_lut(values: np.ndarray, valid: np.ndarray, vmin: float, vmax: float, cmap: str) -> np.ndarray:
    """Map ``values`` linearly from [vmin, vmax] onto the colour map; invalid pixels black."""
    span = vmax - vmin if vmax > vmin else 1.0
    t = np.clip((np.nan_to_num(values, nan=vmin) - vmin) / span, 0.0, 1.0)
    idx = np.rint(t * 255).astype(np.uint8)
    rgb = colormap_lut(cmap)[idx]  # (H, W, 3)
    rgb[~valid] = 0
    return rgb


def _font_scale(height: int) -> float:
    """A legible Hershey font scale for an image or strip of this height."""
    return float(np.clip(height / 640.0, 0.35, 1.2))


def _text_size(text: str, scale: float, thickness: int = 1) -> tuple[int, int, int]:
    (w, h), base = cv2.getTextSize(text, FONT, scale, thickness)
    return w, h, base


def _ascii(text: str) -> str:
    """Hershey fonts draw ASCII only."""
    return text.encode("ascii", "replace").decode("ascii")


def _wrap(text: str, width: int, scale: float, thickness: int = 1) -> list[str]:
    """Greedy word wrap so each line fits in ``width`` pixels."""
    lines: list[str] = []
    line = ""
    for word in _ascii(text).split():
        trial = f"{line} {word}".strip()
        if line and _text_size(trial, scale, thickness)[0] > width:
            lines.append(line)
            line = word
        else:
            line = trial
    if line or not lines:
        lines.append(line)
    return lines


# --------------------------------------------------------------------------- colour
def colorize(depth: np.ndarray | torch.Tensor, vmin: float | None = None, vmax: float | None = None,
             cmap: str = "turbo", valid: np.ndarray | None = None) -> np.ndarray:
    """Colour a depth map.

    Args:
        depth: (H, W) map (also (1, H, W) or (1, 1, H, W)); numpy array or tensor.
        vmin: value drawn with the low end of the map; default the smallest valid value.
        vmax: value drawn with the high end; default the largest valid value.
        cmap: one of :data:`CMAPS` ('turbo', 'magma', 'inferno', ...).
        valid: (H, W) bool mask of pixels to colour; default finite and > 0. Others are black.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    d = _as_map(depth)
    if valid is None:
        valid = np.isfinite(d) & (d > 0)
    else:
        valid = np.asarray(valid, dtype=bool) & np.isfinite(d)
    if valid.any():
        if vmin is None:
            vmin = float(d[valid].min())
        if vmax is None:
            vmax = float(d[valid].max())
    vmin = 0.0 if vmin is None else float(vmin)
    vmax = 1.0 if vmax is None else float(vmax)
    return _apply_lut(d, valid, vmin, vmax, cmap)


def add_colorbar(img: np.ndarray, vmin: float, vmax: float, label: str = "m", cmap: str = "turbo",
                 n_ticks: int = 5) -> np.ndarray:
    """Append a vertical colour bar with tick labels to the right of ``img``.

    The bar runs from ``vmin`` (bottom) to ``vmax`` (top) in the same colour map; ``label`` (the
    unit) is written above it.

    Args:
        img: (H, W, 3) uint8 RGB (or (H, W) grey).
        vmin, vmax: the values at the ends of the colour scale of ``img``.
        label: unit text above the bar.
        cmap: the colour map ``img`` was drawn with.
        n_ticks: number of tick labels (>= 2).

    Returns:
        (H, W + panel, 3) uint8 RGB, white panel.
    """
    img = _as_rgb(img)
    H = img.shape[0]
    scale = _font_scale(H) * 0.9
    _, th, base = _text_size("0", scale)
    ticks = np.linspace(float(vmin), float(vmax), max(2, int(n_ticks)))
    labels = [f"{v:.3g}" for v in ticks]
    top = min(H // 3, 2 * th + 2 * base + 4)  # room for the unit label
    bottom = min(H // 4, th // 2 + base + 2)
    bar_h = max(2, H - top - bottom)
    bar_w = max(6, H // 24)
    gap = 4
    text_w = max(_text_size(s, scale)[0] for s in labels + [_ascii(label)])
    x_text = gap + bar_w + 8  # after the tick marks
    panel_w = x_text + text_w + gap
    panel = np.full((H, panel_w, 3), 255, np.uint8)

    ramp = np.linspace(1.0, 0.0, bar_h)[:, None].repeat(bar_w, axis=1)  # top = vmax
    panel[top:top + bar_h, gap:gap + bar_w] = _apply_lut(ramp, np.ones_like(ramp, bool), 0.0, 1.0, cmap)
    cv2.rectangle(panel, (gap - 1, top - 1), (gap + bar_w, top + bar_h), BLACK, 1)
    for v, s in zip(ticks, labels):
        frac = 0.0 if vmax == vmin else (v - vmin) / (vmax - vmin)
        y = int(round(top + (1.0 - frac) * (bar_h - 1)))
        cv2.line(panel, (gap + bar_w, y), (gap + bar_w + 4, y), BLACK, 1)
        cv2.putText(panel, s, (x_text, int(np.clip(y + th // 2, th, H - base))), FONT, scale, BLACK, 1, cv2.LINE_AA)
    if label:
        cv2.putText(panel, _ascii(label), (gap, max(th, top - base - 4)), FONT, scale, BLACK, 1, cv2.LINE_AA)
    return np.concatenate([img, panel], axis=1)


def add_title(img: np.ndarray, text: str, scale: float | None = None) -> np.ndarray:
    """Prepend a white strip with ``text`` (word-wrapped to the image width) above ``img``."""
    img = _as_rgb(img)
    H, W = img.shape[:2]
    scale = float(np.clip(W / 1800.0, 0.4, 1.0)) if scale is None else scale
    _, th, base = _text_size("Ag", scale)
    lines = _wrap(text, W - 8, scale)
    line_h = th + base + 4
    strip = np.full((len(lines) * line_h + 6, W, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(strip, line, (4, 3 + th + i * line_h), FONT, scale, BLACK, 1, cv2.LINE_AA)
    return np.concatenate([strip, img], axis=0)


def denormalize(image: np.ndarray | torch.Tensor, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> np.ndarray:
    """ImageNet-normalised (3, H, W) (or (1, 3, H, W)) image -> (H, W, 3) uint8 RGB (``mean``, ``std``:
    default ImageNet's)."""
    from wordepth.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # torch: only where images are tensors

    mean = IMAGENET_MEAN if mean is None else mean
    std = IMAGENET_STD if std is None else std
    x = _to_numpy(image).astype(np.float32)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got shape {x.shape}")
    x = x * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    return np.ascontiguousarray(np.rint(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8).transpose(1, 2, 0))


def abs_rel_error_map(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, vmax: float = 0.2,
                      cmap: str = "turbo") -> np.ndarray:
    """Absolute relative error ``|pred - gt| / gt`` coloured on the fixed scale [0, vmax].

    Pixels without valid ground truth (gt <= 0 or not finite) or with a non-finite prediction are
    black; errors above ``vmax`` take the top colour.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    p, g = _as_map(pred, "pred"), _as_map(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ in size")
    valid = np.isfinite(g) & (g > 0) & np.isfinite(p)
    err = np.zeros_like(g)
    err[valid] = np.abs(p[valid] - g[valid]) / g[valid]
    return _apply_lut(err, valid, 0.0, float(vmax), cmap)


# --------------------------------------------------------------------------- layout
def make_grid(images: Sequence[np.ndarray], ncols: int, labels: Sequence[str | None] | None = None,
              pad: int = 4, cell_width: int | None = None) -> np.ndarray:
    """Tile images row by row on a white background.

    Args:
        images: uint8 RGB (or grey) images, any sizes; each cell is as large as the largest.
        ncols: images per row.
        labels: optional text per image, written in a strip above it (None/'' for none).
        pad: white pixels between cells.
        cell_width: if given, images wider than this are shrunk (aspect kept) to fit.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    if ncols < 1:
        raise ValueError(f"ncols must be at least 1, got {ncols}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    tiles = [_as_rgb(im) for im in images]
    if cell_width is not None:
        tiles = [cv2.resize(t, (cell_width, max(1, round(t.shape[0] * cell_width / t.shape[1]))),
                            interpolation=cv2.INTER_AREA) if t.shape[1] > cell_width else t for t in tiles]
    ch = max(t.shape[0] for t in tiles)
    cw = max(t.shape[1] for t in tiles)
    has_labels = labels is not None and any(labels)
    scale = float(np.clip(cw / 700.0, 0.35, 1.0))
    _, th, base = _text_size("Ag", scale)
    label_h = th + base + 6 if has_labels else 0
    nrows = (len(tiles) + ncols - 1) // ncols
    ncols = min(ncols, len(tiles))
    H = nrows * (ch + label_h) + (nrows + 1) * pad
    W = ncols * cw + (ncols + 1) * pad
    grid = np.full((H, W, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        y = pad + r * (ch + label_h + pad)
        x = pad + c * (cw + pad)
        if has_labels and labels[i]:
            text = _ascii(str(labels[i]))
            while len(text) > 1 and _text_size(text, scale)[0] > cw:  # clip to the cell
                text = text[:-2] + "~"
            cv2.putText(grid, text, (x, y + th + 2), FONT, scale, BLACK, 1, cv2.LINE_AA)
        grid[y + label_h:y + label_h + t.shape[0], x:x + t.shape[1]] = t
    return grid


# --------------------------------------------------------------------------- files
def save_png(path: str | os.PathLike, image: np.ndarray | torch.Tensor) -> Path:
    """Write an RGB uint8 (H, W, 3), grey uint8 (H, W) or uint16 (H, W) image; creates folders."""
    path = Path(path)
    a = _to_numpy(image)
    if a.ndim == 3 and a.shape[2] == 3:
        if a.dtype != np.uint8:
            raise ValueError(f"colour PNGs must be uint8, got {a.dtype}")
        a = a[:, :, ::-1]  # RGB -> BGR for OpenCV
    elif a.ndim != 2 or a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"cannot write an array of shape {a.shape} and dtype {a.dtype} as PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(a)):
        raise OSError(f"could not write {path}")
    return path


# --------------------------------------------------------------------------- evaluation pictures
def _match_input(image_hw: tuple[int, int], m: np.ndarray, what: str) -> np.ndarray:
    """Bring a gt/pred map to the input's size: a larger map (KITTI's full frame around a KB crop)
    is cropped at the KB-crop offset (bottom, horizontally centred)."""
    h, w = image_hw
    H, W = m.shape
    if (H, W) == (h, w):
        return m
    if H >= h and W >= w:
        top, left = H - h, (W - w) // 2
        return m[top:top + h, left:left + w]
    raise ValueError(f"{what} {H}x{W} is smaller than the input image {h}x{w}")


def _eval_panels(image: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor,
                 pred: np.ndarray | torch.Tensor, vmax_depth: float | None, cmap: str,
                 err_vmax: float) -> dict[str, np.ndarray]:
    rgb = denormalize(image)
    hw = rgb.shape[:2]
    g = _match_input(hw, _as_map(gt, "gt"), "gt")
    p = _match_input(hw, _as_map(pred, "pred"), "pred")
    if vmax_depth is None:
        valid = np.isfinite(g) & (g > 0)
        vmax_depth = float(g[valid].max()) if valid.any() else float(np.nanmax(p))
    return {
        "input": rgb,
        "gt": colorize(g, 0.0, vmax_depth, cmap),
        "pred": colorize(p, 0.0, vmax_depth, cmap),
        "abs_rel": abs_rel_error_map(p, g, err_vmax, cmap),
    }


def save_eval_visuals(out_dir: str | os.PathLike, name: str, image: np.ndarray | torch.Tensor,
                      gt: np.ndarray | torch.Tensor, pred: np.ndarray | torch.Tensor,
                      vmax_depth: float | None, cmap: str = "turbo", err_vmax: float = 0.2) -> list[Path]:
    """Write ``<name>_input.png``, ``<name>_gt.png``, ``<name>_pred.png``, ``<name>_abs_rel.png``.

    All four have the input's size. Depths share the scale ``[0, vmax_depth]`` (the dataset's
    maximum evaluation depth; None: the image's largest ground-truth depth); the error map uses
    the fixed scale ``[0, err_vmax]``. Invalid ground truth is black.

    Args:
        out_dir: folder (created).
        name: file name stem, e.g. ``kitchen_0028b_rgb_00045``; '/' are replaced by '_'.
        image: ImageNet-normalised (3, H, W) network input.
        gt: (H, W) ground truth in metres, 0 = invalid. A larger map (KITTI's full frame while
            the input is the 352x1216 KB crop) is cropped at the KB-crop offset.
        pred: (H, W) prediction in metres (same rules as gt).
        vmax_depth: top of the depth colour scale in metres.

    Returns:
        The four paths written.
    """
    panels = _eval_panels(image, gt, pred, vmax_depth, cmap, err_vmax)
    stem = str(name).replace("/", "_").replace("\\", "_")
    return [save_png(Path(out_dir) / f"{stem}_{key}.png", img) for key, img in panels.items()]


def worst_summary(out_dir: str | os.PathLike, records: Sequence[tuple], n: int = 8,
                  vmax_depth: float | None = None, cmap: str = "turbo", err_vmax: float = 0.2,
                  filename: str = "worst_abs_rel.png", cell_width: int = 320) -> Path:
    """One PNG of the ``n`` images with the highest abs_rel, one row each: input | gt | pred | error.

    Args:
        out_dir: folder (created).
        records: ``(name, abs_rel, image, gt, pred)`` tuples with the types of
            :func:`save_eval_visuals` (:class:`WorstImages` keeps only the worst while evaluating).
        n: rows.
        vmax_depth: depth colour scale top; None: each row's largest ground-truth depth.
        filename: output name inside ``out_dir``.
        cell_width: wider images are shrunk to this width.

    Returns:
        The path written.
    """
    if not records:
        raise ValueError("worst_summary needs at least one record")
    worst = sorted(records, key=lambda r: float(r[1]), reverse=True)[:max(1, n)]
    tiles, labels = [], []
    for name, abs_rel, image, gt, pred in worst:
        panels = _eval_panels(image, gt, pred, vmax_depth, cmap, err_vmax)
        tiles += [panels["input"], panels["gt"], panels["pred"], panels["abs_rel"]]
        labels += [f"{name}", "ground truth", "prediction", f"abs_rel {float(abs_rel):.4f} (0-{err_vmax:g})"]
    grid = make_grid(tiles, ncols=4, labels=labels, cell_width=cell_width)
    return save_png(Path(out_dir) / filename, grid)


class WorstImages:
    """Keeps the ``n`` records with the highest abs_rel seen so far (for :func:`worst_summary`).

    Tensors are copied to the CPU, so an evaluation loop can call :meth:`add` on every image
    without holding the whole test set.
    """

    def __init__(self, n: int = 8):
        self.n = int(n)
        self._heap: list[tuple[float, int, tuple]] = []
        self._count = 0

    def add(self, name: str, abs_rel: float, image, gt, pred) -> None:
        """Offer one image; kept only if it is among the ``n`` worst."""
        abs_rel = float(abs_rel)
        if self.n <= 0 or (len(self._heap) >= self.n and abs_rel <= self._heap[0][0]):
            return
        rec = (name, abs_rel, _to_numpy(image).copy(), _to_numpy(gt).copy(), _to_numpy(pred).copy())
        self._count += 1
        item = (abs_rel, self._count, rec)
        if len(self._heap) < self.n:
            heapq.heappush(self._heap, item)
        else:
            heapq.heapreplace(self._heap, item)

    @property
    def records(self) -> list[tuple]:
        """Kept records, worst first."""
        return [rec for _, _, rec in sorted(self._heap, key=lambda t: (-t[0], t[1]))]

    def __len__(self) -> int:
        return len(self._heap)

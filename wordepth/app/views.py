"""The app's views as plain functions of files, arrays and strings (no Gradio; the tests call them directly).

Every view checks what it is given (:mod:`wordepth.app.uploads`), runs the predictor's public API
(``infer``, ``prior``, ``encode``, ``caption``) and writes its files into one folder per request
(:class:`ResultStore`, which keeps the last few and deletes the rest).
"""
from __future__ import annotations

import contextlib
import html
import itertools
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from wordepth import visualize as vis
from wordepth.app.uploads import AppError, Limits, MIN_SIDE, NOT_AN_IMAGE, check_video, read_photo
from wordepth.data.depth_png import depth_to_png16
from wordepth.data.generated import scale_rooms
from wordepth.demo import examples as demo_examples
from wordepth.inference.video import browser_playable, preview_copy, read_frames, side_by_side
from wordepth.outputs import video_writer, write_array, write_atomic, write_text
from wordepth.pointcloud import backproject, write_glb, write_ply

__all__ = ["AppText", "DepthApp", "ResultStore", "colorbar_html", "demo_text", "slug"]

log = logging.getLogger("wordepth.app")

NO_IMAGE = "Upload a photo first (or pick an example below it)."
NO_CAPTION = "Type a caption first."
MAX_POINTS = 150_000  # points in the 3D view (larger depth maps are subsampled on a regular grid)
MAX_PLY_POINTS = 1_000_000  # points in the PLY download
MIN_BAR_HEIGHT = 480  # the colour PNG is drawn at least this tall, so that its bar's labels are legible
DISPLAY_SIDE = 1280  # longest side of the images shown in the page (downloads keep the working size)
RATIO_CMAP = "viridis"
SCALES = ("fixed", "auto", "range")  # colour scale: 0 to the model's max depth, each map's range, the user's
MAX_SEED = 2**31 - 1
MAX_K = 8


def slug(text: str, n: int = 32) -> str:
    """A short file-name-safe form of a caption: ``a-large-hall-with-a-sofa``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n].strip("-") or "depth"


def colorbar_html(vmin: float, vmax: float, unit: str = "m", cmap: str = "turbo", n_ticks: int = 5,
                  title: str = "") -> str:
    """A horizontal colour bar (CSS gradient of the colour map) with tick labels, in HTML.

    A range of (almost) one value is drawn as one colour with one label (``ratio 1.00 everywhere``).
    """
    lut = vis.colormap_lut(cmap)
    head = f'<div style="font-size:0.85em">{html.escape(title)}</div>' if title else ""
    if not math.isfinite(vmin) or not math.isfinite(vmax) or abs(vmax - vmin) <= 1e-6 * max(1.0, abs(vmax)):
        r, g, b = lut[128].tolist()
        return (f'<div class="wd-colorbar">{head}<div style="height:14px;border:1px solid #888;'
                f'background:rgb({r},{g},{b})"></div><div style="text-align:center;font-size:0.85em">'
                f'{html.escape(unit)} {vmin:.2f} everywhere</div></div>')
    stops = ", ".join(f"rgb({r},{g},{b}) {100 * i / 255:.1f}%"
                      for i, (r, g, b) in enumerate(lut.tolist()) if i % 15 == 0 or i == 255)
    ticks = "".join(f"<span>{v:.3g}</span>" for v in np.linspace(vmin, vmax, n_ticks))
    return (f'<div class="wd-colorbar">{head}<div style="height:14px;border:1px solid #888;'
            f'background:linear-gradient(to right, {stops})"></div>'
            f'<div style="display:flex;justify-content:space-between;font-size:0.85em">{ticks}</div>'
            f'<div style="text-align:center;font-size:0.85em">{html.escape(unit)}</div></div>')


@dataclass
class AppText:
    """What the app says about its model.

    ``captioner``: whether *caption it for me* can work (None: ask the predictor); ``prior_photo``:
    whether the caption-only tab needs a photo (the paper's legacy models; None: ask the predictor).
    """

    title: str = "WorDepth: a sentence sets the scale of the scene"
    about: str = ""  # Markdown under the title (the demo says it is a toy model)
    examples: list[tuple[Path, str]] = field(default_factory=list)  # example photos and a caption for each
    captions: list[str] = field(default_factory=list)  # captions filled in at the start (compare: first, last)
    captioner: bool | None = None
    prior_photo: bool | None = None


DEMO_ABOUT = (
    "**This is a toy model**, not a depth model for real photos: a WorDepth of 2 million parameters trained for "
    "600 steps (two minutes on a CPU) on synthetic rooms of 64×96 pixels, from the scale-ambiguity experiment of "
    "this repository (experiments/scale_ambiguity). Every training room was shown three times, with *the same "
    "picture* and its depth multiplied by 0.5, 1 or 2; only the caption said which: {scales}, followed by the "
    "room's two pieces of furniture ({objects}). The picture cannot tell the scale; the sentence does. Try the "
    "first example room with **{first}** and then **{last}**, or compare both in the second tab. Other sentences "
    "give arbitrary scales: the text encoder is a CLIP RN50 with random weights (on purpose: the model learnt "
    "these words as labels only), and it has never seen a real photo."
)


def demo_text(examples_dir: str | os.PathLike) -> AppText:
    """What the app says with the toy demo model, and its example rooms (rendered into ``examples_dir``)."""
    rooms = demo_examples.example_images(examples_dir)
    scales = list(scale_rooms.SCALES)  # the first room at every scale, the others at one each
    examples = [(path, scale_rooms.caption_for(s, objects)) for i, (path, objects) in enumerate(rooms)
                for s in (scales if i == 0 else scales[i % 3:i % 3 + 1])]
    return AppText(title="WorDepth toy demo: a sentence sets the scale of the room",
                   about=DEMO_ABOUT.format(scales=", ".join(f"'{w} with …'" for w in scale_rooms.SCALES.values()),
                                           objects=", ".join(scale_rooms.OBJECTS), first=demo_examples.DEMO_CAPTIONS[0],
                                           last=demo_examples.DEMO_CAPTIONS[-1]),
                   examples=examples, captions=list(demo_examples.DEMO_CAPTIONS), captioner=False, prior_photo=False)


class ResultStore:
    """One folder per request under ``root``; only the last ``keep`` are kept, and a temporary root (a new
    one when ``root`` is None) is removed by :meth:`cleanup` (the app calls it at exit).

    With ``max_mb``, every new request first trims ``cache`` (default ``root``; the app passes Gradio's
    temporary folder, which holds the uploads, Gradio's copies of the images shown, and ``root``) to
    at most ``max_mb`` megabytes, oldest files first. The two newest request folders (the result a
    page shows and the one being made) and files younger than ``min_age_s`` (uploads in use) are
    never removed, so a download link works while its page shows it.
    """

    def __init__(self, root: str | os.PathLike | None = None, keep: int = 8, temporary: bool | None = None,
                 max_mb: float | None = None, cache: str | os.PathLike | None = None, min_age_s: float = 60.0):
        self.temporary = root is None if temporary is None else temporary
        self.root = Path(tempfile.mkdtemp(prefix="wordepth-app-")) if root is None else Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.max_bytes = None if max_mb is None else int(max_mb * 2**20)
        self.cache = Path(cache) if cache is not None else self.root
        self.min_age_s = min_age_s
        self._count = itertools.count(1)
        self._lock = threading.Lock()
        self._runs: list[Path] = []

    def new(self, name: str) -> tuple[Path, str]:
        """A new request folder and the prefix for its files (``<slug>_<HHMMSS>_<n>``, unique per server)."""
        with self._lock:
            n = next(self._count)
            prefix = f"{slug(name)}_{time.strftime('%H%M%S')}_{n}"
            path = self.root / f"{n:05d}"
            path.mkdir(parents=True, exist_ok=True)
            self._runs.append(path)
            while len(self._runs) > self.keep:
                shutil.rmtree(self._runs.pop(0), ignore_errors=True)
            self._trim()
        return path, prefix

    def _trim(self) -> int:
        """Remove the oldest files of ``cache`` until it holds at most ``max_bytes``; returns the bytes removed."""
        if self.max_bytes is None or not self.cache.is_dir():
            return 0
        files = []
        for f in self.cache.rglob("*"):
            try:
                if f.is_file() and not f.is_symlink():
                    st = f.stat()
                    files.append((st.st_mtime, st.st_size, f))
            except OSError:  # removed meanwhile (Gradio cleans up too)
                continue
        total = sum(size for _, size, _ in files)
        if total <= self.max_bytes:
            return 0
        shown = [p.resolve() for p in self._runs[-2:]]
        young = time.time() - self.min_age_s
        removed = 0
        for mtime, size, f in sorted(files, key=lambda t: t[0]):
            if total <= self.max_bytes:
                break
            if mtime > young or any(p in f.resolve().parents for p in shown):
                continue
            try:
                f.unlink()
            except OSError:
                continue
            total -= size
            removed += size
        for d in sorted((d for d in self.cache.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
            if d != self.root and d not in self._runs:
                with contextlib.suppress(OSError):
                    d.rmdir()  # only when empty
        self._runs = [p for p in self._runs if p.is_dir()]
        if removed:
            log.info("temporary files over --cache_mb %.0f: removed %.1f MB (oldest first)", self.max_bytes / 2**20,
                     removed / 2**20)
        return removed

    def cleanup(self) -> None:
        """Delete the request folders written by this server (and the root, when it is a temporary one)."""
        with self._lock:
            for path in self._runs:
                shutil.rmtree(path, ignore_errors=True)
            self._runs.clear()
            if self.temporary:
                shutil.rmtree(self.root, ignore_errors=True)


def _display(img: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """``img`` shrunk so that its longest side is at most ``side`` (what the page shows)."""
    h, w = img.shape[:2]
    if max(h, w) <= side:
        return img
    f = side / max(h, w)
    return cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)


def _range_text(vmin: float, vmax: float) -> str:
    return f"{vmin:.2f} to {vmax:.2f} m"


class DepthApp:
    """The app's views as functions of files, arrays and strings; files go to a :class:`ResultStore`.

    Args:
        predictor: a :class:`wordepth.Predictor` (or :class:`wordepth.inference.predictor.DemoPredictor`), or a function
            that loads one (called by :meth:`start_loading` in a thread, so the page is served meanwhile).
        out_dir: where result files are written (default: a new temporary folder, removed at exit).
        cmap: default colour map of the depth maps.
        limits: upload, pixel and disk limits (:class:`~wordepth.app.uploads.Limits`).
        temporary: remove ``out_dir`` at :meth:`ResultStore.cleanup` (default: only a folder made here).
    """

    def __init__(self, predictor: Any, out_dir: str | os.PathLike | None = None, cmap: str = "turbo",
                 limits: Limits = Limits(), temporary: bool | None = None, cache: str | os.PathLike | None = None,
                 max_pixels: int | None | str = "model"):
        self.limits = limits
        self.cmap = cmap
        self.max_pixels = max_pixels
        self.store = ResultStore(out_dir, keep=limits.keep_results, temporary=temporary, max_mb=limits.cache_mb,
                                 cache=cache)
        self.out_dir = self.store.root
        self._ready = threading.Event()
        self._load_error: str | None = None
        self.load_error: BaseException | None = None
        self._loader: Callable[[], Any] | None = None
        self._predictor = None
        self._originals: dict[str, str] = {}  # a preview made by :meth:`video_preview` -> the upload it shows
        self.load_seconds: float | None = None
        if callable(predictor) and not hasattr(predictor, "infer"):
            self._loader = predictor
        else:
            self._set(predictor)

    # ------------------------------------------------------------------ the model, perhaps still loading
    def _set(self, predictor) -> None:
        if self.max_pixels != "model":  # else the predictor's own default: the model's training area
            predictor.max_pixels = self.max_pixels or None  # 0: no limit
        self._predictor = predictor
        facts = predictor.dataset
        self.focal_per_width = getattr(predictor, "focal_per_width", None) or facts.focal / facts.full_hw[1]
        self.png_scale = facts.depth_png_scale
        self.max_depth = float(getattr(getattr(predictor.model, "cfg", None), "max_depth", facts.max_depth))
        self._ready.set()

    def start_loading(self) -> threading.Thread:
        """Load the model in a thread (the views wait for it); returns the thread."""
        def load():
            t0 = time.perf_counter()
            try:
                self._set(self._loader())
                self.load_seconds = time.perf_counter() - t0
                log.info("model ready in %.1f s", self.load_seconds)
            except Exception as err:  # noqa: BLE001 - shown in the page; the command ends with it
                self.load_error = err
                self._load_error = f"The model could not be loaded: {err}"
                self._ready.set()

        thread = threading.Thread(target=load, name="wordepth-app-load", daemon=True)
        thread.start()
        return thread

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._load_error is None

    def model_status(self) -> str:
        """One line on the model: loading, ready, or why it failed."""
        if not self._ready.is_set():
            return "Loading the model… (the page works; results come once it is loaded)"
        if self._load_error:
            return self._load_error
        return ""

    @property
    def predictor(self):
        if not self._ready.wait(timeout=600):
            raise AppError("The model is still loading: try again in a minute.")
        if self._load_error:
            raise AppError(self._load_error)
        return self._predictor

    def can_caption(self) -> bool:
        from wordepth.inference.predictor import DemoPredictor  # torch: the model is loaded by now

        return not isinstance(self.predictor, DemoPredictor)

    def prior_needs_photo(self) -> bool:
        return bool(self.predictor.model.cfg.legacy)

    # ------------------------------------------------------------------ inputs
    def photo(self, image: Any) -> tuple[np.ndarray, str]:
        """A path (an upload) or an RGB array -> (H, W, 3) uint8 RGB at the working size, and a note."""
        if image is None or (isinstance(image, str) and not image):
            raise AppError(NO_IMAGE)
        if isinstance(image, (str, os.PathLike)):
            p = read_photo(image, self.limits)
            return p.rgb, p.note
        rgb = np.asarray(image)
        if rgb.dtype != np.uint8:
            raise AppError(f"{NOT_AN_IMAGE} (got an array of type {rgb.dtype})")
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or min(rgb.shape[:2]) < MIN_SIDE:
            raise AppError(f"{NOT_AN_IMAGE} (got an array of shape {rgb.shape})")
        if rgb.shape[0] * rgb.shape[1] > self.limits.max_image_mp * 1e6:
            raise AppError(f"That image is {rgb.shape[1]}×{rgb.shape[0]} pixels: the app takes photos up to "
                           f"{self.limits.max_image_mp:g} megapixels.")
        rgb, note = np.ascontiguousarray(rgb[:, :, :3]), ""
        work = self.limits.work_mp * 1e6
        if rgb.shape[0] * rgb.shape[1] > work:
            f = math.sqrt(work / (rgb.shape[0] * rgb.shape[1]))
            note = f"the {rgb.shape[1]}×{rgb.shape[0]} photo was shrunk"
            rgb = cv2.resize(rgb, (int(rgb.shape[1] * f), int(rgb.shape[0] * f)), interpolation=cv2.INTER_AREA)
            note += f" to {rgb.shape[1]}×{rgb.shape[0]} px"
        return rgb, note

    def check_photo(self, image: Any) -> str:
        """What the app says right after an upload: its size and any note, or an :class:`AppError`."""
        rgb, note = self.photo(image)
        return f"Photo ready: {note}." if note else f"Photo {rgb.shape[1]}×{rgb.shape[0]} px ready."

    @staticmethod
    def _caption(caption: str | None, missing: str = NO_CAPTION) -> str:
        caption = " ".join(str(caption or "").split())
        if not caption:
            raise AppError(missing)
        if len(caption) > 1000:
            raise AppError(f"That caption is {len(caption)} characters long: keep it under 1000 (CLIP reads "
                           "the first 77 tokens only).")
        return caption

    def _scale(self, lo: float, hi: float, scale: str = "fixed", vmin: float | None = None,
               vmax: float | None = None) -> tuple[float, float, str]:
        """The colour scale (vmin, vmax) and its name, from the maps' range ``lo..hi`` and the setting."""
        if scale == "auto":
            if hi - lo < 1e-6:
                lo, hi = lo - 0.5, hi + 0.5
            return lo, hi, "automatic: this result's own range"
        if scale == "range":
            try:
                vmin, vmax = float(vmin), float(vmax)
            except (TypeError, ValueError):
                raise AppError("Give the colour range as two numbers of metres (from, to).") from None
            if not (math.isfinite(vmin) and math.isfinite(vmax) and 0 <= vmin < vmax <= 1000):
                raise AppError(f"The colour range must satisfy 0 ≤ from < to ≤ 1000 m; got {vmin:g} to {vmax:g}.")
            return vmin, vmax, f"fixed by you: {vmin:g} to {vmax:g} m"
        if scale != "fixed":
            raise AppError(f"Unknown colour scale {scale!r}: use one of {', '.join(SCALES)}.")
        return 0.0, self.max_depth, f"fixed: 0 to {self.max_depth:g} m (the model's largest depth)"

    def _cmap(self, cmap: str | None) -> str:
        cmap = cmap or self.cmap
        if cmap not in vis.CMAPS:
            raise AppError(f"Unknown colour map {cmap!r}: use one of {', '.join(sorted(vis.CMAPS))}.")
        return cmap

    def _device(self) -> str:
        return str(self.predictor.device)

    def _infer(self, rgbs: list[np.ndarray], captions: list[str]) -> list[np.ndarray]:
        try:
            return self.predictor.infer(rgbs, captions)
        except MemoryError as err:
            raise AppError(f"Not enough memory for this photo: {err}") from None

    def _colour_png(self, path: Path, depth: np.ndarray, vmin: float, vmax: float, cmap: str,
                    unit: str = "m") -> Path:
        """The colour map with its bar, drawn at least :data:`MIN_BAR_HEIGHT` tall so the labels are legible."""
        h, w = depth.shape
        if h < MIN_BAR_HEIGHT:
            f = MIN_BAR_HEIGHT / h
            depth = cv2.resize(depth, (round(w * f), MIN_BAR_HEIGHT), interpolation=cv2.INTER_NEAREST)
        return write_array(path, vis.add_colorbar(vis.colorize(depth, vmin, vmax, cmap), vmin, vmax, unit, cmap))

    # ------------------------------------------------------------------ views
    def caption(self, image: Any) -> str:
        """A caption for the photo from the predictor's captioner (CoCa)."""
        rgb, _ = self.photo(image)
        try:
            return self.predictor.caption([rgb])[0]
        except (RuntimeError, OSError, ValueError, NotImplementedError) as err:  # no weights offline, no captioner
            raise AppError(f"No caption: {err}") from None

    def depth(self, image: Any, caption: str | None, scale: str = "fixed", vmin: float | None = None,
              vmax: float | None = None, cmap: str | None = None, cloud: bool = True) -> dict:
        """Depth of a photo with a caption.

        Returns a dict: ``color`` (H, W, 3) colour map at the working size, ``photo`` (the photo at that
        size), ``colorbar`` (HTML), ``files`` (16-bit PNG, colour PNG with its bar, PLY, .npy, a zip of
        them all), ``glb`` (point cloud for the 3D view, None without ``cloud``), ``info`` (HTML: the
        caption, time, size, depth range, colour scale, focal length), ``depth`` (H, W) metres,
        ``caption``, ``note``, ``seconds``.
        """
        rgb, note = self.photo(image)
        caption = self._caption(caption)
        cmap = self._cmap(cmap)
        t0 = time.perf_counter()
        depth = self._infer([rgb], [caption])[0]
        seconds = time.perf_counter() - t0
        lo, hi = float(depth.min()), float(depth.max())
        c_lo, c_hi, scale_name = self._scale(lo, hi, scale, vmin, vmax)
        color = vis.colorize(depth, c_lo, c_hi, cmap)
        run, prefix = self.store.new(caption)
        focal = self.focal_per_width * rgb.shape[1]
        write_array(run / f"{prefix}_depth.npy", depth)
        step = max(1, math.ceil(math.sqrt(depth.size / MAX_PLY_POINTS)))
        points = backproject(depth[::step, ::step], focal / step, cx=rgb.shape[1] / 2 / step,
                             cy=rgb.shape[0] / 2 / step)
        colors = rgb[::step, ::step].reshape(-1, 3)
        files = [write_array(run / f"{prefix}_depth16.png", depth_to_png16(depth, self.png_scale)),
                 self._colour_png(run / f"{prefix}_color.png", depth, c_lo, c_hi, cmap),
                 write_atomic(run / f"{prefix}_points.ply", lambda tmp: write_ply(tmp, points, colors)),
                 run / f"{prefix}_depth.npy"]
        points = colors = None  # the cloud is written: free it
        glb = self._glb(run / f"{prefix}_points.glb", depth, rgb, focal) if cloud else None
        write_text(run / f"{prefix}_caption.txt", caption + "\n")
        files.append(_zip(run / f"{prefix}_all.zip", files + [run / f"{prefix}_caption.txt"]))
        info = (f"<b>“{html.escape(caption)}”</b>: depth {_range_text(lo, hi)}, median "
                f"{float(np.median(depth)):.2f} m · {rgb.shape[1]}×{rgb.shape[0]} px · inference {seconds:.2f} s "
                f"({html.escape(self._device())}) · colours {html.escape(scale_name)} · 16-bit PNG: "
                f"{self.png_scale:g} units per metre · focal length {focal:.1f} px")
        return {"color": color, "photo": rgb, "colorbar": colorbar_html(c_lo, c_hi, "metres", cmap, title=scale_name),
                "files": files, "glb": glb, "info": info, "depth": depth, "caption": caption, "note": note,
                "seconds": seconds}

    def _glb(self, path: Path, depth: np.ndarray, rgb: np.ndarray, focal: float) -> Path:
        step = max(1, math.ceil(math.sqrt(depth.size / MAX_POINTS)))
        points = backproject(depth[::step, ::step], focal / step, cx=rgb.shape[1] / 2 / step,
                             cy=rgb.shape[0] / 2 / step)
        return write_atomic(path, lambda tmp: write_glb(tmp, points, rgb[::step, ::step].reshape(-1, 3)))

    def point_cloud(self, npy: str | os.PathLike, image: Any) -> Path:
        """The 3D view's GLB for a depth map saved by :meth:`depth` (its ``.npy``) and its photo."""
        depth = np.load(npy)
        rgb, _ = self.photo(image)
        if rgb.shape[:2] != depth.shape:
            raise AppError("The photo changed since the depth was estimated: press Estimate depth again.")
        return self._glb(Path(npy).with_name(Path(npy).name.replace("_depth.npy", "_points.glb")), depth, rgb,
                         self.focal_per_width * rgb.shape[1])

    def compare(self, image: Any, caption_a: str | None, caption_b: str | None, scale: str = "auto",
                vmin: float | None = None, vmax: float | None = None, cmap: str | None = None) -> dict:
        """Depth of one photo with two captions, on one colour scale, and their ratio B / A.

        Returns a dict: ``a``, ``b`` (colour maps), ``ratio`` (colour map of B / A), ``colorbar``,
        ``ratio_colorbar`` (HTML), ``info`` (HTML), ``depth_a``, ``depth_b`` (metres), ``files``.
        """
        rgb, note = self.photo(image)
        caption_a = self._caption(caption_a, "Type caption A first.")
        caption_b = self._caption(caption_b, "Type caption B first.")
        cmap = self._cmap(cmap)
        t0 = time.perf_counter()
        depth_a, depth_b = self._infer([rgb, rgb], [caption_a, caption_b])
        seconds = time.perf_counter() - t0
        lo = float(min(depth_a.min(), depth_b.min()))
        hi = float(max(depth_a.max(), depth_b.max()))
        c_lo, c_hi, scale_name = self._scale(lo, hi, scale, vmin, vmax)
        ratio = depth_b / np.maximum(depth_a, 1e-6)
        r_lo, r_hi = float(ratio.min()), float(ratio.max())
        median = float(np.median(ratio))
        same = r_hi - r_lo <= 1e-3 * max(1.0, abs(r_hi))
        spread = f"{r_lo:.2f} everywhere" if same else f"median; {r_lo:.2f} to {r_hi:.2f}"
        info = (f"A <b>“{html.escape(caption_a)}”</b>: median depth <b>{float(np.median(depth_a)):.2f} m</b> · "
                f"B <b>“{html.escape(caption_b)}”</b>: <b>{float(np.median(depth_b)):.2f} m</b> · "
                f"B / A = <b>{median:.2f}</b> ({spread}) · inference {seconds:.2f} s "
                f"({html.escape(self._device())}) for both · colours {html.escape(scale_name)}")
        run, prefix = self.store.new(f"{caption_a} vs {caption_b}")
        write_array(run / f"{prefix}_depths.npz", {"a": depth_a, "b": depth_b, "ratio": ratio})
        write_text(run / f"{prefix}_captions.txt", f"A: {caption_a}\nB: {caption_b}\n")
        files = [self._colour_png(run / f"{prefix}_A_color.png", depth_a, c_lo, c_hi, cmap),
                 self._colour_png(run / f"{prefix}_B_color.png", depth_b, c_lo, c_hi, cmap),
                 run / f"{prefix}_depths.npz", run / f"{prefix}_captions.txt"]
        ratio_lo, ratio_hi = (r_lo - 0.5, r_hi + 0.5) if same else (r_lo, r_hi)
        return {"a": vis.colorize(depth_a, c_lo, c_hi, cmap), "b": vis.colorize(depth_b, c_lo, c_hi, cmap),
                "ratio": vis.colorize(ratio, ratio_lo, ratio_hi, RATIO_CMAP),
                "colorbar": colorbar_html(c_lo, c_hi, "metres", cmap, title=scale_name),
                "ratio_colorbar": colorbar_html(r_lo, r_lo if same else r_hi, "ratio B / A", RATIO_CMAP),
                "info": info, "depth_a": depth_a, "depth_b": depth_b, "files": files, "note": note,
                "seconds": seconds, "captions": (caption_a, caption_b)}

    def prior(self, caption: str | None, k: Any = 4, seed: Any = 0, image: Any = None, scale: str = "auto",
              vmin: float | None = None, vmax: float | None = None, cmap: str | None = None) -> dict:
        """``k`` depth maps sampled from the caption alone (the paper's model also needs the photo).

        Returns a dict: ``grid`` (the samples side by side, one colour scale), ``colorbar`` (HTML),
        ``info`` (HTML), ``samples`` (k, h, w) metres, ``files`` (.npy of the samples, the grid PNG).
        """
        caption = self._caption(caption)
        k, seed = _whole(k, "samples (K)", 1, MAX_K), _whole(seed, "seed", 0, MAX_SEED)
        cmap = self._cmap(cmap)
        rgb = None
        if self.prior_needs_photo():
            if image is None:
                raise AppError("The paper's (legacy) model samples its prior with image features: upload a photo "
                               "in this tab too.")
            rgb, _ = self.photo(image)
        t0 = time.perf_counter()
        samples = self.predictor.prior(caption, k=k, seed=seed, image=rgb)  # (k, h, w)
        seconds = time.perf_counter() - t0
        lo, hi = float(samples.min()), float(samples.max())
        c_lo, c_hi, scale_name = self._scale(lo, hi, scale, vmin, vmax)
        zoom = max(1, math.ceil(256 / samples.shape[2]))  # small maps (the toy model's) drawn larger
        tiles = [vis.colorize(cv2.resize(s, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR), c_lo, c_hi,
                              cmap) for s in samples]
        grid = vis.make_grid(tiles, ncols=min(k, 4), labels=[f"sample {i + 1}" for i in range(k)])
        medians = ", ".join(f"{float(np.median(s)):.2f}" for s in samples)
        run, prefix = self.store.new(caption)
        files = [write_array(run / f"{prefix}_samples.png", grid), write_array(run / f"{prefix}_samples.npy", samples)]
        info = (f"<b>“{html.escape(caption)}”</b>: {k} samples of {samples.shape[2]}×{samples.shape[1]} px, seed "
                f"{seed}, median depths {medians} m · sampling {seconds:.2f} s ({html.escape(self._device())}) · "
                f"colours {html.escape(scale_name)}")
        return {"grid": grid, "colorbar": colorbar_html(c_lo, c_hi, "metres", cmap, title=scale_name), "info": info,
                "samples": samples, "files": files, "seconds": seconds}

    def video_preview(self, video: Any) -> tuple[Path | None, str]:
        """A copy of an uploaded clip that browsers play (WebM/VP8), when the upload is not one (an MPEG-4
        part 2 ``mp4v`` file, an AVI, a MOV); None when it plays as it is. :meth:`video` still reads the
        upload itself. Returns (the preview or None, a note)."""
        path, w, h, n_max, _ = check_video(video, self.limits)
        if browser_playable(path):
            return None, ""
        run, prefix = self.store.new(Path(path).stem)
        try:
            preview = preview_copy(path, run / f"{prefix}_preview.webm", max_frames=n_max)
        except (OSError, ValueError):
            return None, "This clip cannot be previewed in the browser; Depth video still reads it."
        self._originals[str(preview)] = str(path)
        return preview, f"Previewing a WebM copy of this {Path(path).suffix or 'video'} clip ({w}×{h})."

    def video(self, video: Any, caption: str | None, scale: str = "fixed", vmin: float | None = None,
              vmax: float | None = None, cmap: str | None = None) -> dict:
        """Depth for a clip with one caption: each frame beside its depth, as a WebM (VP8) the browser plays.

        Frames come from :func:`wordepth.inference.video.read_frames` and are drawn by
        :func:`wordepth.inference.video.side_by_side`; at most ``limits.max_video_frames`` frames, each shrunk to
        at most 0.5 megapixels. Returns ``video`` (path), ``info`` (HTML), ``frames``, ``seconds``.
        """
        video = self._originals.get(str(video), video) if video is not None else video  # the upload, not its preview
        path, w, h, n_max, fps = check_video(video, self.limits)
        caption = self._caption(caption)
        cmap = self._cmap(cmap)
        f = min(1.0, math.sqrt(0.5e6 / (w * h)))
        size = (max(MIN_SIDE, int(w * f)) // 2 * 2, max(MIN_SIDE, int(h * f)) // 2 * 2)
        run, prefix = self.store.new(caption)
        out = run / f"{prefix}_depth.webm"
        t0 = time.perf_counter()
        try:
            frames, _, _ = read_frames(path)
        except (ValueError, FileNotFoundError):
            raise AppError("That file is not a video that can be read: upload an MP4, WebM, AVI or MOV clip.") from None
        done = {"n": 0, "scale_name": ""}

        def encode(tmp: Path) -> None:  # into write_atomic's temporary file: no half-written video is left
            writer, n, c_lo, c_hi = None, 0, 0.0, 1.0
            try:
                for frame in frames:
                    if n == n_max:
                        break
                    if frame.shape[:2] != (h, w):
                        raise AppError("That video changes its frame size midway: the app cannot read it.")
                    frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA) if f < 1 else frame
                    depth = self._infer([frame], [caption])[0]
                    if n == 0:
                        c_lo, c_hi, done["scale_name"] = self._scale(float(depth.min()), float(depth.max()), scale,
                                                                     vmin, vmax)
                    panel = side_by_side(frame, depth, c_lo, c_hi, cmap)
                    panel = panel[:panel.shape[0] // 2 * 2, :panel.shape[1] // 2 * 2]
                    if writer is None:
                        try:
                            writer = video_writer(tmp, fps, panel.shape[1], panel.shape[0], suffix=".webm")
                        except OSError:
                            raise AppError("This server's OpenCV cannot write WebM (VP8) video.") from None
                    writer.write(np.ascontiguousarray(panel[:, :, ::-1]))
                    n += 1
            finally:
                if writer is not None:
                    writer.release()
                frames.close()
            if n == 0:
                raise AppError("That video has no frame that can be read.")
            done["n"] = n

        write_atomic(out, encode)
        n, scale_name = done["n"], done["scale_name"]
        seconds = time.perf_counter() - t0
        cut = f" (the first {n}; the app processes at most {self.limits.max_video_frames})" \
            if n == self.limits.max_video_frames else ""
        info = (f"<b>“{html.escape(caption)}”</b>: {n} frames{cut} of {size[0]}×{size[1]} px in {seconds:.1f} s "
                f"({n / max(seconds, 1e-9):.1f} frames/s, {html.escape(self._device())}) · colours "
                f"{html.escape(scale_name)}, fixed for the clip")
        return {"video": out, "info": info, "frames": n, "seconds": seconds}

    def batch(self, images: list[Any], caption: str | None, scale: str = "fixed", vmin: float | None = None,
              vmax: float | None = None, cmap: str | None = None, max_photos: int = 16) -> dict:
        """Depth for several photos with one caption: a gallery of colour maps and a zip of all outputs.

        Photos that cannot be read are listed in ``info`` and left out; ``gallery`` holds (image, label)
        pairs, ``zip`` the 16-bit PNGs, colour PNGs and .npy files.
        """
        images = [im for im in (images or []) if im is not None]
        if not images:
            raise AppError("Upload one or more photos first.")
        if len(images) > max_photos:
            raise AppError(f"That is {len(images)} photos: the app takes up to {max_photos} at once.")
        caption = self._caption(caption)
        cmap = self._cmap(cmap)
        run, prefix = self.store.new(caption)
        gallery, files, skipped, t0 = [], [], [], time.perf_counter()
        for i, image in enumerate(images):
            name = Path(str(image)).name if isinstance(image, (str, os.PathLike)) else f"photo {i + 1}"
            try:
                rgb, _ = self.photo(image)
            except AppError as err:
                skipped.append(f"{html.escape(name)}: {html.escape(str(err))}")
                continue
            depth = self._infer([rgb], [caption])[0]
            c_lo, c_hi, scale_name = self._scale(float(depth.min()), float(depth.max()), scale, vmin, vmax)
            stem = f"{prefix}_{i + 1:02d}_{slug(Path(name).stem, 24)}"
            files += [write_array(run / f"{stem}_depth16.png", depth_to_png16(depth, self.png_scale)),
                      self._colour_png(run / f"{stem}_color.png", depth, c_lo, c_hi, cmap),
                      write_array(run / f"{stem}_depth.npy", depth)]
            gallery.append((_display(vis.colorize(depth, c_lo, c_hi, cmap), 640),
                            f"{name}: median {float(np.median(depth)):.2f} m"))
        if not gallery:
            raise AppError("None of those photos could be read: " + " · ".join(skipped))
        seconds = time.perf_counter() - t0
        info = (f"<b>“{html.escape(caption)}”</b>: {len(gallery)} photos in {seconds:.1f} s"
                + (f" · left out: {' · '.join(skipped)}" if skipped else ""))
        return {"gallery": gallery, "zip": _zip(run / f"{prefix}_all.zip", files), "info": info, "seconds": seconds}


def _whole(value: Any, name: str, lo: int, hi: int) -> int:
    """``value`` as a whole number in [lo, hi], or an :class:`AppError` that states the range."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise AppError(f"The {name} must be a whole number from {lo} to {hi}.") from None
    if not math.isfinite(f) or f != int(f) or not lo <= f <= hi:
        raise AppError(f"The {name} must be a whole number from {lo} to {hi}; got {value}.")
    return int(f)


def _zip(path: Path, files: list[Path]) -> Path:
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            for f in files:
                z.write(f, f.name)

    return write_atomic(path, write)

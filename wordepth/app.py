"""The web app: change the sentence, watch the scale change (Gradio; the command is ``wordepth-app``).

Three views of one model:

- **Depth**: a photo and a caption (typed, or written by CoCa) -> metric depth as a colour map
  with a colour bar in metres, a 16-bit PNG, a point cloud (GLB for the 3D view, PLY) with the
  model's camera;
- **Compare two captions**: one photo, two sentences -> both depth maps on one colour scale and
  their ratio;
- **Depth from the caption alone**: K depth maps sampled from a sentence (the text branch).

:class:`DepthApp` computes the views on plain arrays (no Gradio; the tests call it directly);
:func:`build_app` lays them out in Gradio, imported only then (``pip install -e .[demo]``), with
analytics off and nothing fetched from the internet.
"""
from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wordepth import visualize as vis
from wordepth.data.depth_png import write_depth_png
from wordepth.data.transforms import read_image
from wordepth.pointcloud import backproject, write_glb, write_ply

__all__ = ["INSTALL_HINT", "AppError", "AppText", "DepthApp", "build_app", "colorbar_html", "demo_text", "launch",
           "require_gradio"]

log = logging.getLogger(__name__)

INSTALL_HINT = "the web app needs Gradio: pip install -e .[demo]"
NOT_AN_IMAGE = "That file is not an image that can be read: upload a photo (PNG, JPEG, WebP, ...)."
NO_IMAGE = "Upload a photo first (or pick an example below it)."
NO_CAPTION = "Type a caption first (or press 'caption it for me')."
MAX_POINTS = 150_000  # points in the 3D view (larger depth maps are subsampled on a regular grid)
RATIO_CMAP = "viridis"


class AppError(ValueError):
    """A problem with what the user gave; its message is shown in the app as it is."""


def require_gradio():
    """Import Gradio with its analytics off.

    Raises:
        ImportError: Gradio is not installed (the message says how to install it).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return gradio


def colorbar_html(vmin: float, vmax: float, unit: str = "m", cmap: str = "turbo", n_ticks: int = 5) -> str:
    """A horizontal colour bar (CSS gradient of the colour map) with tick labels, in HTML."""
    lut = vis.colormap_lut(cmap)
    stops = ", ".join(f"rgb({r},{g},{b}) {100 * i / 255:.1f}%"
                      for i, (r, g, b) in enumerate(lut.tolist()) if i % 15 == 0 or i == 255)
    ticks = "".join(f"<span>{v:.3g}</span>" for v in np.linspace(vmin, vmax, n_ticks))
    return (f'<div class="wd-colorbar"><div style="height:14px;border:1px solid #888;'
            f'background:linear-gradient(to right, {stops})"></div>'
            f'<div style="display:flex;justify-content:space-between;font-size:0.85em">{ticks}</div>'
            f'<div style="text-align:center;font-size:0.85em">{unit}</div></div>')


@dataclass
class AppText:
    """What the app says about its model."""

    title: str = "WorDepth: a sentence sets the scale of the scene"
    about: str = ""  # Markdown under the title (the demo says it is a toy model)
    examples: list[tuple[Path, str]] = field(default_factory=list)  # example photos and a caption for each
    captions: list[str] = field(default_factory=list)  # captions filled in at the start (compare: first, last)


DEMO_ABOUT = (
    "**This is a toy model**, not a depth model for real photos: a WorDepth of 2 million parameters trained for "
    "600 steps (two minutes on a CPU) on synthetic rooms of 64×96 pixels, from the scale-ambiguity experiment of "
    "this repository (experiments/scale_ambiguity). Every training room was shown three times, with *the same "
    "picture* and its depth multiplied by 0.5, 1 or 2; only the caption said which: {scales}, followed by the "
    "room's two pieces of furniture ({objects}). The picture cannot tell the scale; the sentence does. Try the "
    "first example room with **{first}** and then **{last}**, or compare both in the second tab. Other sentences "
    "give arbitrary scales: the text encoder is a CLIP RN50 with random weights, so the model knows these words "
    "as labels only, and it has never seen a real photo."
)


def demo_text(examples_dir: str | os.PathLike) -> AppText:
    """What the app says with the toy demo model, and its example rooms (rendered into ``examples_dir``)."""
    from wordepth import toy
    from wordepth.data.scale_rooms import OBJECTS, SCALES, caption_for

    rooms = toy.example_images(examples_dir)
    scales = list(SCALES)  # the first room at every scale, the others at one each
    examples = [(path, caption_for(s, objects)) for i, (path, objects) in enumerate(rooms)
                for s in (scales if i == 0 else scales[i % 3:i % 3 + 1])]
    return AppText(title="WorDepth toy demo: a sentence sets the scale of the room",
                   about=DEMO_ABOUT.format(scales=", ".join(f"'{w} with …'" for w in SCALES.values()),
                                           objects=", ".join(OBJECTS), first=toy.DEMO_CAPTIONS[0],
                                           last=toy.DEMO_CAPTIONS[-1]),
                   examples=examples, captions=list(toy.DEMO_CAPTIONS))


class DepthApp:
    """The app's views as functions of arrays and strings; files go to a temporary folder.

    Args:
        predictor: a :class:`wordepth.Predictor` (or :class:`wordepth.toy.DemoPredictor`).
        out_dir: where result files are written (default: a new temporary folder).
        cmap: colour map of the depth maps.
    """

    def __init__(self, predictor, out_dir: str | os.PathLike | None = None, cmap: str = "turbo"):
        self.predictor = predictor
        self.out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="wordepth-app-"))
        self.cmap = cmap
        self._runs = itertools.count()
        facts = predictor.dataset
        self.focal_per_width = getattr(predictor, "focal_per_width", None) or facts.focal / facts.full_hw[1]
        self.png_scale = facts.depth_png_scale

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _image(image: Any) -> np.ndarray:
        """A path or an (H, W, 3|4) / (H, W) uint8 array -> (H, W, 3) uint8 RGB; anything else: AppError."""
        if image is None:
            raise AppError(NO_IMAGE)
        if isinstance(image, (str, os.PathLike)):
            try:
                return read_image(image)
            except (OSError, ValueError):
                raise AppError(NOT_AN_IMAGE) from None
        rgb = np.asarray(image)
        if rgb.ndim == 2:
            rgb = np.repeat(rgb[:, :, None], 3, axis=2)
        if rgb.ndim != 3 or rgb.shape[2] not in (3, 4) or min(rgb.shape[:2]) < 8:
            raise AppError(f"{NOT_AN_IMAGE} (got an array of shape {rgb.shape})")
        return np.ascontiguousarray(rgb[:, :, :3].astype(np.uint8))

    @staticmethod
    def _caption(caption: str | None) -> str:
        caption = " ".join(str(caption or "").split())
        if not caption:
            raise AppError(NO_CAPTION)
        return caption

    def _run_dir(self) -> Path:
        path = self.out_dir / f"{next(self._runs):05d}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _device(self) -> str:
        return str(self.predictor.device)

    # ------------------------------------------------------------------ views
    def caption(self, image: Any) -> str:
        """A caption for the photo from the predictor's captioner (CoCa)."""
        rgb = self._image(image)
        try:
            return self.predictor.caption([rgb])[0]
        except (RuntimeError, OSError, ValueError) as err:  # no weights offline, no captioner, ...
            raise AppError(f"No caption: {err}") from None

    def depth(self, image: Any, caption: str | None) -> dict:
        """Depth of a photo with a caption.

        Returns a dict: ``color`` (H, W, 3) colour map at the photo's size, ``colorbar`` (HTML),
        ``files`` (16-bit PNG, colour PNG with its bar, PLY), ``glb`` (point cloud for the 3D
        view), ``info`` (Markdown: time, size, depth range, focal length), ``depth`` (H, W) metres.
        """
        rgb, caption = self._image(image), self._caption(caption)
        t0 = time.perf_counter()
        depth = self.predictor.infer(rgb, caption)
        seconds = time.perf_counter() - t0
        lo, hi = float(depth.min()), float(depth.max())
        color = vis.colorize(depth, lo, hi, self.cmap)
        run = self._run_dir()
        focal = self.focal_per_width * rgb.shape[1]
        step = max(1, int(np.ceil(np.sqrt(depth.size / MAX_POINTS))))
        points = backproject(depth[::step, ::step], focal / step, cx=rgb.shape[1] / 2 / step,
                             cy=rgb.shape[0] / 2 / step)
        colors = rgb[::step, ::step].reshape(-1, 3)
        files = [write_depth_png(run / "depth_16bit.png", depth, self.png_scale),
                 vis.save_png(run / "depth_color.png", vis.add_colorbar(color, lo, hi, "m", self.cmap)),
                 write_ply(run / "points.ply", points, colors)]
        glb = write_glb(run / "points.glb", points, colors)
        info = (f"**{caption}**: depth {lo:.2f} to {hi:.2f} m, median {float(np.median(depth)):.2f} m · "
                f"{rgb.shape[1]}×{rgb.shape[0]} px · inference {seconds:.2f} s ({self._device()}) · "
                f"16-bit PNG: {self.png_scale:g} units per metre · focal length {focal:.1f} px")
        return {"color": color, "colorbar": colorbar_html(lo, hi, "metres", self.cmap), "files": files,
                "glb": glb, "info": info, "depth": depth, "seconds": seconds}

    def compare(self, image: Any, caption_a: str | None, caption_b: str | None) -> dict:
        """Depth of one photo with two captions, on one colour scale, and their ratio B / A.

        Returns a dict: ``a``, ``b`` (colour maps), ``ratio`` (colour map of B / A), ``colorbar``,
        ``ratio_colorbar`` (HTML), ``info`` (Markdown), ``depth_a``, ``depth_b`` (metres).
        """
        rgb = self._image(image)
        caption_a, caption_b = self._caption(caption_a), self._caption(caption_b)
        t0 = time.perf_counter()
        depth_a, depth_b = self.predictor.infer([rgb, rgb], [caption_a, caption_b])
        seconds = time.perf_counter() - t0
        lo = float(min(depth_a.min(), depth_b.min()))
        hi = float(max(depth_a.max(), depth_b.max()))
        ratio = depth_b / np.maximum(depth_a, 1e-6)
        r_lo, r_hi = float(ratio.min()), float(ratio.max())
        median = float(np.median(ratio))
        info = (f"median depth **{float(np.median(depth_a)):.2f} m** with A, **{float(np.median(depth_b)):.2f} m** "
                f"with B: B / A = **{median:.2f}** (median; {r_lo:.2f} to {r_hi:.2f}) · "
                f"inference {seconds:.2f} s ({self._device()}) for both")
        return {"a": vis.colorize(depth_a, lo, hi, self.cmap), "b": vis.colorize(depth_b, lo, hi, self.cmap),
                "ratio": vis.colorize(ratio, r_lo, r_hi, RATIO_CMAP),
                "colorbar": colorbar_html(lo, hi, "metres", self.cmap),
                "ratio_colorbar": colorbar_html(r_lo, r_hi, "ratio B / A", RATIO_CMAP), "info": info,
                "depth_a": depth_a, "depth_b": depth_b, "seconds": seconds}

    def prior(self, caption: str | None, k: int = 4, seed: int = 0, image: Any = None) -> dict:
        """``k`` depth maps sampled from the caption alone (the paper's model also needs the photo).

        Returns a dict: ``grid`` (the samples side by side, one colour scale), ``colorbar`` (HTML),
        ``info`` (Markdown), ``samples`` (k, h, w) metres.
        """
        caption = self._caption(caption)
        k = int(np.clip(int(k or 1), 1, 16))
        rgb = None
        if self.predictor.model.cfg.legacy:
            if image is None:
                raise AppError("The paper's (legacy) model samples its prior with image features: upload a photo "
                               "in this tab too.")
            rgb = self._image(image)
        t0 = time.perf_counter()
        samples = self.predictor.prior(caption, k=k, seed=int(seed or 0), image=rgb)  # (k, h, w)
        seconds = time.perf_counter() - t0
        lo, hi = float(samples.min()), float(samples.max())
        zoom = max(1, int(np.ceil(256 / samples.shape[2])))  # small maps (the toy model's) drawn larger
        tiles = [vis.colorize(cv2.resize(s, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR), lo, hi, self.cmap)
                 for s in samples]
        grid = vis.make_grid(tiles, ncols=min(k, 4), labels=[f"sample {i + 1}" for i in range(k)])
        medians = ", ".join(f"{float(np.median(s)):.2f}" for s in samples)
        info = (f"**{caption}**: {k} samples of {samples.shape[2]}×{samples.shape[1]} px, seed {int(seed or 0)}, "
                f"median depths {medians} m · sampling {seconds:.2f} s ({self._device()})")
        return {"grid": grid, "colorbar": colorbar_html(lo, hi, "metres", self.cmap), "info": info,
                "samples": samples, "seconds": seconds}


# ---------------------------------------------------------------------- the Gradio layout


def build_app(app: DepthApp, text: AppText = AppText()):
    """The Gradio interface of ``app``: the three views in tabs. Returns the ``gr.Blocks``."""
    gr = require_gradio()

    def photo_input(**kwargs):
        # The views read the uploaded file themselves (events with preprocess=False get Gradio's file
        # payload), so that a file that is not an image gets NOT_AN_IMAGE instead of Gradio's traceback.
        return gr.Image(type="filepath", sources=["upload", "clipboard"], **kwargs)

    def shown(fn):
        """Run a view on raw event values; an :class:`AppError` becomes a message in the app (``gr.Error``)."""
        def wrapped(*args):
            args = [a.get("path") if isinstance(a, dict) else a for a in args]  # file payload -> its path
            try:
                return fn(*args)
            except AppError as err:
                raise gr.Error(str(err)) from None
        return wrapped

    @shown
    def on_depth(image, caption):
        r = app.depth(image, caption)
        return r["color"], r["colorbar"], str(r["glb"]), [str(f) for f in r["files"]], r["info"]

    @shown
    def on_compare(image, caption_a, caption_b):
        r = app.compare(image, caption_a, caption_b)
        return r["a"], r["b"], r["ratio"], r["colorbar"], r["ratio_colorbar"], r["info"]

    @shown
    def on_prior(caption, k, seed, image):
        r = app.prior(caption, k, seed, image)
        return r["grid"], r["colorbar"], r["info"]

    captions = list(text.captions)
    examples = [[str(path), caption] for path, caption in text.examples]
    with gr.Blocks(title=text.title, analytics_enabled=False) as blocks:
        gr.Markdown(f"# {text.title}")
        if text.about:
            gr.Markdown(text.about, elem_id="about")
        with gr.Tab("Depth", id="depth"):
            with gr.Row():
                with gr.Column():
                    photo = photo_input(label="photo", elem_id="photo")
                    caption = gr.Textbox(label="caption", placeholder="a bedroom with a bed and a lamp",
                                         value=captions[0] if captions else "", elem_id="caption")
                    with gr.Row():
                        auto = gr.Button("caption it for me", elem_id="auto_caption")
                        go = gr.Button("Estimate depth", variant="primary", elem_id="run_depth")
                    if examples:
                        gr.Examples(examples, [photo, caption], label="examples")
                with gr.Column():
                    depth_image = gr.Image(label="depth (m)", type="numpy", interactive=False, format="png",
                                           elem_id="depth_image")
                    depth_bar = gr.HTML(elem_id="depth_colorbar")
                    depth_info = gr.Markdown(elem_id="depth_info")
                    cloud = gr.Model3D(label="point cloud (drag to turn)", clear_color=(1.0, 1.0, 1.0, 1.0),
                                       camera_position=(-90, 90, None), elem_id="point_cloud")
                    files = gr.File(label="downloads: 16-bit depth PNG, colour map, PLY point cloud",
                                    file_count="multiple", elem_id="depth_files")
            go.click(on_depth, [photo, caption], [depth_image, depth_bar, cloud, files, depth_info],
                     preprocess=False)
            auto.click(shown(app.caption), [photo], [caption], preprocess=False)
        with gr.Tab("Compare two captions", id="compare"):
            with gr.Row():
                with gr.Column(scale=1):
                    photo_c = photo_input(label="photo", elem_id="photo_compare")
                    caption_a = gr.Textbox(label="caption A", value=captions[0] if captions else "",
                                           elem_id="caption_a")
                    caption_b = gr.Textbox(label="caption B", value=captions[-1] if captions else "",
                                           elem_id="caption_b")
                    go_c = gr.Button("Compare", variant="primary", elem_id="run_compare")
                    if examples:
                        gr.Examples(sorted({path for path, _ in examples}), [photo_c], label="examples")
                with gr.Column(scale=2):
                    with gr.Row():
                        map_a = gr.Image(label="depth with A", interactive=False, format="png", elem_id="depth_a")
                        map_b = gr.Image(label="depth with B", interactive=False, format="png", elem_id="depth_b")
                    bar_c = gr.HTML(elem_id="compare_colorbar")
                    ratio = gr.Image(label="ratio B / A", interactive=False, format="png", elem_id="ratio")
                    ratio_bar = gr.HTML(elem_id="ratio_colorbar")
                    info_c = gr.Markdown(elem_id="compare_info")
            go_c.click(on_compare, [photo_c, caption_a, caption_b], [map_a, map_b, ratio, bar_c, ratio_bar, info_c],
                       preprocess=False)
        with gr.Tab("Depth from the caption alone", id="prior"):
            with gr.Row():
                with gr.Column(scale=1):
                    caption_p = gr.Textbox(label="caption", value=captions[-1] if captions else "",
                                           elem_id="caption_prior")
                    k = gr.Slider(1, 8, value=4, step=1, label="samples (K)", elem_id="prior_k")
                    seed = gr.Number(value=0, precision=0, label="seed", elem_id="prior_seed")
                    photo_p = photo_input(label="photo (only the paper's legacy models need one)",
                                          elem_id="photo_prior", visible=bool(app.predictor.model.cfg.legacy))
                    go_p = gr.Button("Sample", variant="primary", elem_id="run_prior")
                with gr.Column(scale=2):
                    grid = gr.Image(label="depth sampled from the caption", show_label=False, interactive=False,
                                    format="png", elem_id="prior_grid")
                    bar_p = gr.HTML(elem_id="prior_colorbar")
                    info_p = gr.Markdown(elem_id="prior_info")
            go_p.click(on_prior, [caption_p, k, seed, photo_p], [grid, bar_p, info_p], preprocess=False)
    return blocks


def launch(blocks, host: str = "127.0.0.1", port: int = 7860, allowed_paths: list[str] | None = None,
           **kwargs) -> None:
    """Serve ``blocks`` (queued, no share link, errors shown as messages) until interrupted."""
    blocks.queue().launch(server_name=host, server_port=port, share=False, show_error=True,
                          allowed_paths=allowed_paths, **kwargs)

"""The Gradio page of the app: tabs, settings, status lines, events with API names, and serving it.

Every event that runs the model is queued one at a time (``concurrency_id="model"``) and every click
counts (``trigger_mode="multiple"``): two quick clicks give two results, each labelled with its
caption. A mistake is shown in the tab's status line, next to its button, until the next action; the
inputs are never touched and the outputs are cleared, so no result stands under the wrong caption.
"""
from __future__ import annotations

import html
import logging
import os
from typing import Any, Callable

from wordepth.app.uploads import AppError
from wordepth.app.views import MAX_K, MAX_SEED, AppText, DepthApp, _display
from wordepth.visualize import CMAPS

__all__ = ["INSTALL_HINT", "CSS", "build_app", "launch", "require_gradio", "status_html"]

log = logging.getLogger("wordepth.app")

INSTALL_HINT = "the web app needs Gradio: pip install -e .[demo]"
SCALE_CHOICES = [("fixed: 0 to the model's largest depth", "fixed"), ("automatic: each result's own range", "auto"),
                 ("my range (below)", "range")]
MODEL_EVENT = {"concurrency_id": "model", "concurrency_limit": 1, "trigger_mode": "multiple"}
PRIVATE = {"api_visibility": "private", "queue": False}
CSS = """
.wd-status { padding: 6px 10px; border-radius: 6px; margin: 4px 0; }
.wd-status.wd-error { background: #fdecea; color: #8a1c1c; border: 1px solid #e5a3a3; }
.wd-status.wd-note { background: #eef4fb; color: #1f3f66; border: 1px solid #b5cbe6; }
.wd-status.wd-loading { background: #fff7e0; color: #6b4e00; border: 1px solid #e8cf84; }
.wd-colorbar { max-width: 520px; }
#ratio img, #depth_a img, #depth_b img, #depth_image img { object-fit: contain; }
"""


def require_gradio():
    """Import Gradio with its analytics off.

    Raises:
        ImportError: Gradio is not installed (the message says how to install it).
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio  # gradio: optional ([demo]) and heavy (seconds), only when the app is built
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return gradio


def status_html(text: str, kind: str = "note") -> str:
    """A status line (``kind``: ``error``, ``note`` or ``loading``) in HTML, its text escaped; '' for none."""
    if not text:
        return ""
    sign = "⚠ " if kind == "error" else ""
    role = "alert" if kind == "error" else "status"
    return f'<div class="wd-status wd-{kind}" role="{role}">{sign}{html.escape(text)}</div>'


def _path(value: Any) -> Any:
    """Gradio's file payload (an upload, a video, a list of files) -> the path(s) on the server."""
    if isinstance(value, dict):
        if isinstance(value.get("video"), dict):
            return value["video"].get("path")
        return value.get("path")
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_path(v) for v in value]
    return value


def handler(fn: Callable, n_outputs: int, name: str, keep_outputs: bool = False) -> Callable:
    """Run ``fn`` (which returns its outputs and a note) on raw event values; the status line comes last.

    A user's mistake (:class:`AppError`) is logged in one line and shown in the status line; the
    outputs are cleared (or, with ``keep_outputs``, left as they are). Anything else is a bug: its
    traceback goes to the log and a short message to the page.
    """
    gr = require_gradio()

    def run(*args):
        args = [_path(a) for a in args]
        try:
            outputs, note = fn(*args)
            return (*outputs, status_html(note, "note"))
        except AppError as err:
            log.info("%s refused: %s", name, err)
            message = str(err)
        except Exception as err:  # noqa: BLE001 - a bug: keep the server up, say so in the page
            log.exception("%s failed", name)
            message = f"Something went wrong ({type(err).__name__}: {err}). The server log has the details."
        empty = gr.skip() if keep_outputs else None
        return (*[empty] * n_outputs, status_html(message, "error"))

    run.__name__ = name
    return run


class _Page:
    """The page of one :class:`DepthApp`: a method per tab, the views as its event handlers."""

    def __init__(self, app: DepthApp, text: AppText):
        self.gr = require_gradio()
        self.app, self.text = app, text
        self.captioner = app.can_caption() if text.captioner is None else text.captioner
        self.prior_photo = app.prior_needs_photo() if text.prior_photo is None else text.prior_photo
        captions = list(text.captions)
        self.first, self.last = (captions[0], captions[-1]) if captions else ("", "")
        self.examples = [[str(path), caption] for path, caption in text.examples]
        self.compare_examples = [[str(path), self.first, self.last]
                                 for path in sorted({str(p) for p, _ in text.examples})]
        self.settings: list = []  # colour scale, range and map: set by `build`, read by every tab
        self.show3d = None

    def photo_input(self, **kwargs):
        # The views read the uploaded file themselves (events with preprocess=False get Gradio's file
        # payload): nothing is decoded before its header has been checked.
        return self.gr.Image(type="filepath", sources=["upload", "clipboard"], height=300, buttons=[], **kwargs)

    def result_image(self, label: str, elem_id: str, height: int = 320):
        return self.gr.Image(label=label, type="numpy", interactive=False, format="png", height=height,
                             buttons=["download", "fullscreen"], elem_id=elem_id)

    # ------------------------------------------------------------------ the views as event handlers
    def on_depth(self, image, caption, scale, vmin, vmax, cmap, show3d):
        gr = self.gr
        r = self.app.depth(image, caption, scale, vmin, vmax, cmap, cloud=bool(show3d))
        color, photo = _display(r["color"]), _display(r["photo"])
        slider = gr.ImageSlider(value=(photo, color), label=f"photo ↔ depth with “{r['caption']}”")
        return ((color, slider, r["colorbar"], str(r["glb"]) if r["glb"] else None,
                 [str(f) for f in r["files"]], r["info"], str(r["files"][3])), r["note"])

    def on_cloud(self, show3d, npy, image):
        gr = self.gr
        if not show3d:
            return (gr.Model3D(visible=False),), ""
        glb = self.app.point_cloud(npy, image) if npy else None
        return (gr.Model3D(value=str(glb) if glb else None, visible=True),), \
            "" if glb else "The 3D view shows the next result."

    def on_caption(self, image):
        return (self.app.caption(image),), ""

    def on_check(self, image):
        if image is None:
            return (), ""
        return (), self.app.check_photo(image)

    def on_compare(self, image, caption_a, caption_b, scale, vmin, vmax, cmap):
        gr = self.gr
        r = self.app.compare(image, caption_a, caption_b, scale, vmin, vmax, cmap)
        a, b = _display(r["a"]), _display(r["b"])
        slider = gr.ImageSlider(value=(a, b), label=f"A “{r['captions'][0]}” ↔ B “{r['captions'][1]}”")
        return ((a, b, slider, _display(r["ratio"]), r["colorbar"], r["ratio_colorbar"], r["info"],
                 [str(f) for f in r["files"]]), r["note"])

    def on_prior(self, caption, k, seed, image, scale, vmin, vmax, cmap):
        r = self.app.prior(caption, k, seed, image if self.prior_photo else None, scale, vmin, vmax, cmap)
        return (r["grid"], r["colorbar"], r["info"], [str(f) for f in r["files"]]), ""

    def on_video(self, video, caption, scale, vmin, vmax, cmap):
        r = self.app.video(video, caption, scale, vmin, vmax, cmap)
        return (str(r["video"]), r["info"]), ""

    def on_video_upload(self, video):
        preview, note = self.app.video_preview(video)
        return (str(preview) if preview else self.gr.skip(),), note

    def on_batch(self, files, caption, scale, vmin, vmax, cmap):
        r = self.app.batch(files if isinstance(files, list) else [files] if files else [], caption, scale, vmin, vmax,
                      cmap)
        return (r["gallery"], str(r["zip"]), r["info"]), ""

    def carry(self, shared, current):
        """The photo of the tab used last, into the tab just opened (when it has none or another one)."""
        shared, current = _path(shared), _path(current)
        return shared if shared and shared != current else self.gr.skip()

    def remember(self, image):
        return image if image else self.gr.skip()

    def model_status(self):
        msg = self.app.model_status()
        kind = "loading" if not self.app._ready.is_set() else "error"
        return status_html(msg, kind), self.gr.Timer(active=not self.app._ready.is_set())

    # ------------------------------------------------------------------ the tabs
    def depth_tab(self):
        """Photo + caption -> depth, slider, colour bar, 3D view, downloads; several photos at once."""
        gr = self.gr
        with gr.Tab("Depth", id="depth") as tab_depth:
            with gr.Row():
                with gr.Column():
                    photo = self.photo_input(label="photo", elem_id="photo")
                    caption = gr.Textbox(label="caption", placeholder="a bedroom with a bed and a lamp",
                                         value=self.first, elem_id="caption", max_lines=3,
                                         info=None if self.captioner else "This model has no captioner: type a caption "
                                         "(Enter runs it).")
                    with gr.Row():
                        go = gr.Button("Estimate depth", variant="primary", elem_id="run_depth", scale=3)
                        auto = gr.Button("caption it for me", size="sm", elem_id="auto_caption", visible=self.captioner,
                                         scale=1)
                        clear = gr.Button("Clear", size="sm", elem_id="clear_depth", scale=1)
                    status = gr.HTML(elem_id="depth_status", js_on_load=None)
                    if self.examples:
                        gr.Examples(self.examples, [photo, caption], label="examples")
                with gr.Column():
                    depth_image = self.result_image("depth", "depth_image")
                    depth_bar = gr.HTML(elem_id="depth_colorbar", js_on_load=None)
                    depth_info = gr.HTML(elem_id="depth_info", js_on_load=None)
                    slider = gr.ImageSlider(label="photo ↔ depth", type="numpy", interactive=False, format="png",
                                            max_height=360, buttons=["fullscreen"], elem_id="depth_slider")
                    cloud = gr.Model3D(label="point cloud (drag to turn)", clear_color=(1.0, 1.0, 1.0, 1.0),
                                       camera_position=(-90, 90, None), height=360, visible=False,
                                       elem_id="point_cloud")
                    files = gr.File(label="downloads: 16-bit depth PNG, colour map, PLY, .npy, all as .zip",
                                    file_count="multiple", elem_id="depth_files", interactive=False)
                    last_npy = gr.State(None)
            with gr.Accordion("Several photos at once", open=False, elem_id="batch"):
                batch_in = gr.File(label="photos (up to 16)", file_count="multiple", file_types=["image"],
                                   elem_id="batch_photos")
                go_b = gr.Button("Estimate depth for all (with the caption above)", elem_id="run_batch")
                status_b = gr.HTML(elem_id="batch_status", js_on_load=None)
                gallery = gr.Gallery(label="depth maps", columns=4, height=300, elem_id="batch_gallery")
                batch_zip = gr.File(label="all outputs (.zip)", elem_id="batch_zip", interactive=False)
                info_b = gr.HTML(elem_id="batch_info", js_on_load=None)

            depth_outputs = [depth_image, slider, depth_bar, cloud, files, depth_info, last_npy]
            run_depth = handler(self.on_depth, len(depth_outputs), "estimate_depth")
            for trigger, name in ((go.click, "estimate_depth"), (caption.submit, None)):
                trigger(run_depth, [photo, caption, *self.settings, self.show3d], [*depth_outputs, status],
                        preprocess=False, **_api(name), **MODEL_EVENT)
            self.show3d.change(handler(self.on_cloud, 1, "point_cloud"), [self.show3d, last_npy, photo],
                               [cloud, status], preprocess=False, api_visibility="private", **MODEL_EVENT)
            auto.click(handler(self.on_caption, 1, "caption_photo", keep_outputs=True), [photo], [caption, status],
                       preprocess=False, api_name="caption_photo", **MODEL_EVENT)
            photo.upload(handler(self.on_check, 0, "check_photo"), [photo], [status], preprocess=False,
                         api_name="check_photo", concurrency_limit=4)
            clear.click(lambda: (None,) * (len(depth_outputs) + 2), None, [photo, *depth_outputs, status],
                        **PRIVATE)
            go_b.click(handler(self.on_batch, 3, "depth_batch"), [batch_in, caption, *self.settings],
                       [gallery, batch_zip, info_b, status_b], preprocess=False, api_name="depth_batch",
                       **MODEL_EVENT)

        return tab_depth, photo

    def compare_tab(self):
        """One photo, two captions: both depth maps, an A-B slider and their ratio."""
        gr = self.gr
        with gr.Tab("Compare", id="compare") as tab_compare:
            with gr.Row():
                with gr.Column(scale=1):
                    photo_c = self.photo_input(label="photo", elem_id="photo_compare")
                    caption_a = gr.Textbox(label="caption A", value=self.first, elem_id="caption_a", max_lines=3)
                    caption_b = gr.Textbox(label="caption B", value=self.last, elem_id="caption_b", max_lines=3)
                    with gr.Row():
                        go_c = gr.Button("Compare", variant="primary", elem_id="run_compare", scale=3)
                        clear_c = gr.Button("Clear", size="sm", elem_id="clear_compare", scale=1)
                    status_c = gr.HTML(elem_id="compare_status", js_on_load=None)
                    if self.compare_examples:
                        gr.Examples(self.compare_examples, [photo_c, caption_a, caption_b], label="examples")
                with gr.Column(scale=2):
                    with gr.Row():
                        map_a = self.result_image("depth with A", "depth_a", 240)
                        map_b = self.result_image("depth with B", "depth_b", 240)
                    bar_c = gr.HTML(elem_id="compare_colorbar", js_on_load=None)
                    slider_c = gr.ImageSlider(label="A ↔ B", type="numpy", interactive=False, format="png",
                                              max_height=300, buttons=["fullscreen"], elem_id="compare_slider")
                    ratio = self.result_image("ratio B / A", "ratio", 240)
                    ratio_bar = gr.HTML(elem_id="ratio_colorbar", js_on_load=None)
                    info_c = gr.HTML(elem_id="compare_info", js_on_load=None)
                    files_c = gr.File(label="downloads: colour maps, depths and ratio (.npz)", file_count="multiple",
                                      elem_id="compare_files", interactive=False)
            compare_outputs = [map_a, map_b, slider_c, ratio, bar_c, ratio_bar, info_c, files_c]
            run_compare = handler(self.on_compare, len(compare_outputs), "compare_captions")
            for trigger, name in ((go_c.click, "compare_captions"), (caption_a.submit, None),
                                  (caption_b.submit, None)):
                trigger(run_compare, [photo_c, caption_a, caption_b, *self.settings], [*compare_outputs, status_c],
                        preprocess=False, **_api(name), **MODEL_EVENT)
            photo_c.upload(handler(self.on_check, 0, "check_photo"), [photo_c], [status_c], preprocess=False,
                           api_visibility="private", concurrency_limit=4)
            clear_c.click(lambda: (None,) * (len(compare_outputs) + 2), None, [photo_c, *compare_outputs, status_c],
                          **PRIVATE)

        return tab_compare, photo_c

    def prior_tab(self):
        """Depth sampled from a caption alone."""
        gr = self.gr
        with gr.Tab("Text only", id="prior") as tab_prior:
            with gr.Row():
                with gr.Column(scale=1):
                    caption_p = gr.Textbox(label="caption", value=self.last, elem_id="caption_prior", max_lines=3)
                    k = gr.Slider(1, MAX_K, value=4, step=1, label=f"samples (K, 1 to {MAX_K})", elem_id="prior_k")
                    seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED,
                                     label=f"seed (a whole number from 0 to {MAX_SEED})", elem_id="prior_seed")
                    photo_p = self.photo_input(label="photo (the paper's legacy models need one)",
                                               elem_id="photo_prior", visible=self.prior_photo)
                    go_p = gr.Button("Sample", variant="primary", elem_id="run_prior")
                    status_p = gr.HTML(elem_id="prior_status", js_on_load=None)
                with gr.Column(scale=2):
                    grid = self.result_image("depth sampled from the caption", "prior_grid", 360)
                    bar_p = gr.HTML(elem_id="prior_colorbar", js_on_load=None)
                    info_p = gr.HTML(elem_id="prior_info", js_on_load=None)
                    files_p = gr.File(label="downloads: the samples (.npy) and their picture", file_count="multiple",
                                      elem_id="prior_files", interactive=False)
            run_prior = handler(self.on_prior, 4, "prior_from_caption")
            for trigger, name in ((go_p.click, "prior_from_caption"), (caption_p.submit, None)):
                trigger(run_prior, [caption_p, k, seed, photo_p, *self.settings],
                        [grid, bar_p, info_p, files_p, status_p], preprocess=False, **_api(name), **MODEL_EVENT)

        return tab_prior, photo_p

    def video_tab(self):
        """A clip in, each frame beside its depth out."""
        gr = self.gr
        with gr.Tab("Video", id="video"):
            with gr.Row():
                with gr.Column(scale=1):
                    video_in = gr.Video(label="clip (MP4, WebM, AVI, MOV)", sources=["upload"], height=300,
                                        elem_id="video_in")
                    caption_v = gr.Textbox(label="caption for the whole clip", value=self.first,
                                           elem_id="caption_video", max_lines=3)
                    go_v = gr.Button("Depth video", variant="primary", elem_id="run_video")
                    status_v = gr.HTML(elem_id="video_status", js_on_load=None)
                with gr.Column(scale=2):
                    video_out = gr.Video(label="each frame beside its depth", interactive=False, height=360, loop=True,
                                         buttons=["download"], elem_id="video_out")
                    info_v = gr.HTML(elem_id="video_info", js_on_load=None)
            # an upload browsers cannot play (mp4v, AVI, MOV) is replaced in the player by a WebM copy
            video_in.upload(handler(self.on_video_upload, 1, "preview_video", keep_outputs=True), [video_in],
                            [video_in, status_v], preprocess=False, api_visibility="private", concurrency_limit=2)
            run_video = handler(self.on_video, 2, "depth_video")
            for trigger, name in ((go_v.click, "depth_video"), (caption_v.submit, None)):
                trigger(run_video, [video_in, caption_v, *self.settings], [video_out, info_v, status_v],
                        preprocess=False, **_api(name), **MODEL_EVENT)


    def build(self):
        """The ``gr.Blocks``: the model's status line, the shared settings, the four tabs."""
        gr = self.gr
        # no delete_cache: Gradio's age-based deletion would break a download link its page still shows;
        # the app bounds its temporary files by size instead (ResultStore, --cache_mb)
        with gr.Blocks(title=self.text.title, analytics_enabled=False) as blocks:
            gr.Markdown(f"# {self.text.title}")
            if self.text.about:
                gr.Markdown(self.text.about, elem_id="about")
            model_line = gr.HTML(status_html(self.app.model_status(), "loading"), elem_id="model_status",
                                 js_on_load=None)
            timer = gr.Timer(1.0, active=not self.app._ready.is_set())
            timer.tick(self.model_status, None, [model_line, timer], **PRIVATE)
            with gr.Accordion("Settings: colour scale, colour map, 3D view", open=False, elem_id="settings"):
                with gr.Row():
                    scale = gr.Radio(SCALE_CHOICES, value="fixed", label="colour scale of depth maps",
                                     elem_id="scale")
                    vmin = gr.Number(0.0, label="my range: from (m)", minimum=0, maximum=1000, elem_id="vmin")
                    vmax = gr.Number(10.0, label="my range: to (m)", minimum=0, maximum=1000, elem_id="vmax")
                    cmap = gr.Dropdown(sorted(_cmaps()), value=self.app.cmap, label="colour map", elem_id="cmap")
                    show3d = gr.Checkbox(False, label="3D point cloud (slower page)", elem_id="show3d")
            shared_photo = gr.State(None)
            self.settings, self.show3d = [scale, vmin, vmax, cmap], show3d

            tab_depth, photo = self.depth_tab()
            tab_compare, photo_c = self.compare_tab()
            tab_prior, photo_p = self.prior_tab()
            self.video_tab()
            # the photo carries over: the last one uploaded or picked in any tab fills the tab opened next
            for p in (photo, photo_c, photo_p):
                p.change(self.remember, [p], [shared_photo], preprocess=False, **PRIVATE)
            for tab, p in ((tab_depth, photo), (tab_compare, photo_c), (tab_prior, photo_p)):
                tab.select(self.carry, [shared_photo, p], [p], preprocess=False, **PRIVATE)
        return blocks


def build_app(app: DepthApp, text: AppText = AppText()):
    """The Gradio page of ``app``: tabs Depth, Compare, Text only and Video. Returns the ``gr.Blocks``."""
    return _Page(app, text).build()


def _api(name: str | None) -> dict:
    """The API name of an event, or none (the same view bound to Enter in a caption box)."""
    return {"api_name": name} if name else {"api_visibility": "private"}


def _cmaps() -> list[str]:
    return list(CMAPS)


def launch(blocks, host: str = "127.0.0.1", port: int = 7860, allowed_paths: list[str] | None = None,
           max_upload_mb: float = 25.0, block: bool = True, **kwargs):
    """Serve ``blocks`` (queued, no share link, uploads up to ``max_upload_mb``).

    With ``block`` it serves until interrupted; else it returns at once (the server runs in a thread).
    """
    blocks.queue(max_size=32, default_concurrency_limit=1)
    result = blocks.launch(server_name=host, server_port=port, share=False, show_error=False,
                           allowed_paths=allowed_paths, max_file_size=f"{int(max_upload_mb * 1024)}kb",
                           prevent_thread_lock=True, css=CSS, footer_links=["api"], **kwargs)
    if block:
        blocks.block_thread()
    return result

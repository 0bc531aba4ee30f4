"""``wordepth-app``: the web app (Gradio) for a checkpoint, or the offline toy demo.

::

    wordepth-app --demo                                              # toy model, no download, no internet
    wordepth-app --checkpoint nyu.pth --variant nyu --port 7860      # a released model
    wordepth-app --checkpoint kitti.pth --variant kitti --host 0.0.0.0

The page is served first and the model loads behind a status line. Uploads are limited in size and
pixels (``--max_upload_mb``, ``--max_image_mp``); result files are kept for the last
``--keep_results`` requests and removed at exit (also on SIGTERM). Needs the ``demo`` extra
(``pip install -e .[demo]``). The views: `wordepth.app`; documentation: docs/demo.md.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from wordepth import app as webapp
from wordepth.cli import common
from wordepth.demo import examples as demo_examples
from wordepth.errors import UserError, error_message, user_errors

log = logging.getLogger("wordepth.app")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="wordepth-app", description="Web app: a photo and a sentence -> metric depth.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model (one of)")
    m = g.add_mutually_exclusive_group(required=True)
    m.add_argument("--checkpoint", help="original-release or this project's checkpoint (.pth / .safetensors)")
    m.add_argument("--demo", action="store_true",
                   help="the toy model of synthetic rooms (shipped with the package; no internet needed)")
    common.add_variant_arg(g, help="which released model an original checkpoint is (sets the camera preset too)")
    g.add_argument("--clip_weights", default=None, help="local CLIP RN50 weights (else the cache / a download)")
    g.add_argument("--caption_weights", default=None, help="local CoCa weights for 'caption it for me'")
    common.add_device_arg(g)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    g.add_argument("--port", type=int, default=7860, help="port to listen on")
    g.add_argument("--examples", default=None, help="a folder of example photos to offer")
    g.add_argument("--out", default=None,
                   help="folder for result files (default: a temporary folder, removed at exit)")
    g = p.add_argument_group("limits (what one request may cost)")
    g.add_argument("--max_upload_mb", type=float, default=25.0, help="largest upload accepted, in MB")
    g.add_argument("--max_image_mp", type=float, default=40.0,
                   help="photos declaring more megapixels are refused (read from the header, before decoding)")
    g.add_argument("--work_mp", type=float, default=webapp.Limits.work_mp,
                   help="larger photos are shrunk to this many megapixels first; outputs are at the photo's size "
                        "up to that")
    g.add_argument("--max_pixels", type=int, default=None,
                   help="processing resolution: larger photos run through the network at this many pixels and "
                        "their depth is resized back to the photo's size (default: the model's training size, "
                        "480x640 for NYU, as wordepth-predict; 0: no limit; the toy --demo model always runs at "
                        "its own 64x96)")
    g.add_argument("--max_video_frames", type=int, default=webapp.Limits.max_video_frames,
                   help="frames of a clip that are processed")
    g.add_argument("--keep_results", type=int, default=webapp.Limits.keep_results,
                   help="request folders kept on disk (older ones deleted)")
    g.add_argument("--cache_mb", type=float, default=webapp.Limits.cache_mb,
                   help="the app's temporary files (uploads, Gradio's copies of results, result files) are "
                        "trimmed to this many MB at each request, oldest first; the result a page shows is kept")
    return p


class _QuietRandomEncoder(logging.Filter):
    """Drops the 'random weights' warnings (and open_clip's progress lines) of the demo's text encoder,
    which is random on purpose; the app logs one line saying so instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if "open_clip" in record.pathname and record.levelno < logging.ERROR:
            return False  # open_clip's progress lines and its "initialized randomly" warning
        return not ("initialized randomly" in msg or "has random weights" in msg)


@contextlib.contextmanager
def _quiet_random_encoder():
    loggers = [logging.getLogger(), logging.getLogger("wordepth.text.clip_features")]
    quiet = _QuietRandomEncoder()
    for lg in loggers:
        lg.addFilter(quiet)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(quiet)


def _loader(args, captions: list[str]):
    """A function that loads the model (run in a thread while the page is already served)."""
    def load():
        from wordepth.inference.predictor import Predictor  # torch: in the loading thread, after the page

        if args.demo:
            with _quiet_random_encoder():
                predictor = Predictor.from_checkpoint("demo", device=args.device)
                predictor.encode(captions[:1] or ["a room"])  # the text encoder now, not at the first click
            log.info("the toy model's text encoder is a CLIP RN50 with random weights, as it was trained "
                     "(see docs/demo.md)")
            return predictor
        predictor = Predictor.from_checkpoint(args.checkpoint, variant=args.variant, device=args.device,
                                              clip_weights=args.clip_weights, caption_weights=args.caption_weights)
        predictor.encode(captions[:1] or ["a room"])
        return predictor
    return load


def main(argv: list[str] | None = None) -> int:
    """Check, serve the page, load the model behind a status line, serve until interrupted.

    Problems found before serving end with one ``error:`` line.
    """
    t_start = time.time()
    common.setup_logging()
    args = build_parser().parse_args(argv)
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise SystemExit(f"error: checkpoint not found: {args.checkpoint} (`wordepth-app --demo` runs the offline "
                         "toy model)")
    if args.max_pixels is not None and args.max_pixels < 0:
        raise SystemExit("error: --max_pixels must be >= 0 (0: no limit)")
    if args.examples is not None and not Path(args.examples).is_dir():
        raise SystemExit(f"error: --examples {args.examples} is not a folder")
    try:
        limits = webapp.Limits(max_upload_mb=args.max_upload_mb, max_image_mp=args.max_image_mp,
                               work_mp=args.work_mp, max_video_frames=args.max_video_frames,
                               keep_results=args.keep_results, cache_mb=args.cache_mb)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    # Gradio's uploads and cache go under a temporary folder of ours, removed at exit; the result files too
    # (inside Gradio's cache folder Gradio serves them without copying them)
    scratch = Path(tempfile.mkdtemp(prefix="wordepth-app-"))
    os.environ.setdefault("GRADIO_TEMP_DIR", str(scratch / "gradio"))
    ours = Path(os.environ["GRADIO_TEMP_DIR"]) == scratch / "gradio"  # --cache_mb trims only a folder of ours
    results = Path(args.out) if args.out else Path(os.environ["GRADIO_TEMP_DIR"]) / f"wordepth-results-{os.getpid()}"
    cleanups = [lambda: shutil.rmtree(scratch, ignore_errors=True)]
    atexit.register(lambda: [f() for f in cleanups])
    try:
        webapp.require_gradio()
    except ImportError as err:
        raise SystemExit(f"error: {err}") from None
    with user_errors(RuntimeError):
        if args.demo:
            text = webapp.demo_text(demo_examples.cache_dir() / "demo_examples")
        else:
            from wordepth.data.images import list_images  # torch (split files): only with --examples

            examples = [(Path(args.examples) / p, "") for p in list_images(args.examples)] if args.examples else []
            text = webapp.AppText(examples=examples, captioner=True, prior_photo=True)
        app = webapp.DepthApp(_loader(args, text.captions), out_dir=results, limits=limits,
                              temporary=args.out is None, cache=scratch if ours else None,
                              max_pixels="model" if args.max_pixels is None else args.max_pixels)
        cleanups.insert(0, app.store.cleanup)
        blocks = webapp.build_app(app, text)
    allowed = sorted({str(path.parent) for path, _ in text.examples})
    webapp.launch(blocks, host=args.host, port=args.port, allowed_paths=allowed, max_upload_mb=limits.max_upload_mb,
                  block=False)
    log.info("page served in %.1f s on http://%s:%d (result files: %s); loading the model", time.time() - t_start,
             args.host, args.port, app.out_dir)
    app.start_loading()

    def stop(signum, frame):  # SIGTERM ends the server like Ctrl+C: the files are removed on the way out
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while blocks.is_running:
            if app.load_error is not None:  # a checkpoint that cannot be loaded ends the command
                raise SystemExit(f"error: {error_message(app.load_error)}")
            time.sleep(0.1)
    except KeyboardInterrupt:
        log.info("stopping the server")
    finally:
        blocks.close()
        for f in cleanups:
            f()
        cleanups.clear()
    return 0


if __name__ == "__main__":
    main()

"""``wordepth-app``: the web app (Gradio) for a checkpoint, or the offline toy demo.

::

    wordepth-app --demo                                              # toy model, no download, no internet
    wordepth-app --checkpoint nyu.pth --variant nyu --port 7860      # a released model
    wordepth-app --checkpoint kitti.pth --variant kitti --host 0.0.0.0

Needs the ``demo`` extra (``pip install -e .[demo]``). The views: `wordepth.app`; the toy model:
`wordepth.toy`; documentation: docs/demo.md.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from wordepth.cli import common

log = logging.getLogger("wordepth.app")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wordepth-app", description="Web app: a photo and a sentence -> metric depth.")
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
    g.add_argument("--out", default=None, help="folder for result files (default: a temporary folder)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Check, load the model, serve until interrupted; problems end with one ``error:`` line."""
    common.setup_logging()
    args = build_parser().parse_args(argv)
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise SystemExit(f"error: checkpoint not found: {args.checkpoint} (`wordepth-app --demo` runs the offline "
                         "toy model)")
    if args.examples is not None and not Path(args.examples).is_dir():
        raise SystemExit(f"error: --examples {args.examples} is not a folder")
    from wordepth import app as webapp

    try:
        webapp.require_gradio()
    except ImportError as err:
        raise SystemExit(f"error: {err}") from None
    from wordepth import toy
    from wordepth.data.images import list_images

    t0 = time.time()
    with common.exit_on_user_errors(RuntimeError):
        if args.demo:
            predictor = toy.DemoPredictor.load(device=args.device)
            text = webapp.demo_text(toy.cache_dir() / "demo_examples")
        else:
            predictor = toy.load_predictor(args.checkpoint, variant=args.variant, device=args.device,
                                           clip_weights=args.clip_weights, caption_weights=args.caption_weights)
            examples = [(Path(args.examples) / p, "") for p in list_images(args.examples)] if args.examples else []
            text = webapp.AppText(examples=examples)
        predictor.encode(text.captions[:1] or ["a room"])  # load the text encoder now, not at the first click
        blocks = webapp.build_app(webapp.DepthApp(predictor, out_dir=args.out), text)
    log.info("model and app ready in %.1f s; serving on http://%s:%d", time.time() - t0, args.host, args.port)
    allowed = sorted({str(path.parent) for path, _ in text.examples})
    webapp.launch(blocks, host=args.host, port=args.port, allowed_paths=allowed)
    return 0


if __name__ == "__main__":
    main()

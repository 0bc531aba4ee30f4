"""``wordepth-predict``: depth for your own images with a trained model, and depth sampled from a caption.

::

    wordepth-predict --checkpoint nyu.pth --variant nyu --images room.jpg photos/ \\
        --caption "a bedroom with a stand and a bed" --out pred/ --ply
    wordepth-predict --checkpoint kitti.pth --variant kitti --images drive/ --out pred/   # mean caption
    wordepth-predict --checkpoint nyu.pth --caption "a bedroom with a stand and a bed" \\
        --prior 8 --seed 0 --out prior/
    wordepth-predict --checkpoint nyu.pth --video walk.mp4 --caption "a hallway with doors" --out pred/

(``python scripts/predict.py ...`` is the same.) The options and outputs are described in
`wordepth.inference.files`, which does the work.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from wordepth import visualize as vis
from wordepth.cli import common
from wordepth.data.registry import dataset_facts
from wordepth.errors import run_command, user_errors
from wordepth.outputs import check_outputs
from wordepth.inference.files import PredictOptions, run
from wordepth.inference.predictor import Predictor
from wordepth.inference.video import predict_video, video_outputs
from wordepth.runtime import PRECISIONS
from wordepth.text.clip_features import WeightsUnavailableError


def _size(text: str) -> tuple[int, int]:
    """'480x640' -> (480, 640)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 480x640, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    """Command-line options; their names are the fields of `PredictOptions`."""
    p = argparse.ArgumentParser(allow_abbrev=False, prog="wordepth-predict",
                                description="Predict depth for images with a trained WorDepth model.")
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", required=True, help="original-release or this project's checkpoint")
    g.add_argument("--dataset", choices=common.dataset_names(),
                   help="camera/model preset: focal length, and for original checkpoints max depth and "
                        "prior mean (nyu: 518.8579 px, 1.54; kitti: 721.5377 px, 2.54)")
    common.add_variant_arg(g, help="which released model an original checkpoint is (nyu, nyu_legacy = the paper's, "
                                   "kitti, kitti_legacy): sets legacy, max depth, prior mean, and the camera preset; "
                                   "this project's checkpoints record it")
    g.add_argument("--legacy", action="store_true", default=None,
                   help="original checkpoint of the paper's model (decoder skip connections)")
    g.add_argument("--max_depth", type=float, default=None, help="override the model's maximum depth")
    g.add_argument("--prior_mean", type=float, default=None, help="override the output layer's log-depth prior")
    common.add_device_arg(g)
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: bfloat16 autocast, faster on GPUs and on CPUs with AVX512-BF16 / AMX (elsewhere "
                        "emulated and far slower); depth differs from fp32 by about 1%% (median) (docs/performance.md)")
    g.add_argument("--onnx", default=None, metavar="GRAPH",
                   help="run the image network from this wordepth-export graph with ONNX Runtime (CPU, float32; "
                        "export it from --checkpoint, which still gives the settings)")

    g = p.add_argument_group("inputs")
    g.add_argument("--images", nargs="+", default=[],
                   help="image files and/or folders of images (searched recursively)")
    g.add_argument("--kb_crop", action="store_true",
                   help="KITTI-sized inputs: predict on the 352x1216 KB crop, paste back into zeros")
    g.add_argument("--batch_size", type=int, default=1, help="images per forward pass (equal sizes are grouped)")
    g.add_argument("--max_pixels", type=int, default=None,
                   help="larger images run at this many pixels and their depth is resized back (default: the "
                        "model's training size, 480x640 for NYU; 0: no limit)")
    g.add_argument("--strict", action="store_true",
                   help="stop at the first image that fails (default: skip it, go on, list it, exit non-zero)")

    g = p.add_argument_group("text (one of; default: the mean caption feature of the model's training set)")
    t = g.add_mutually_exclusive_group()
    t.add_argument("--caption", help="one caption for every image (encoded with CLIP)")
    t.add_argument("--caption_file", help="a caption file for every image, or a folder of <image stem>.txt")
    t.add_argument("--text_feature", help="a precomputed (1, D) CLIP feature .pt for every image (D: the model's text_dim, 1024 for RN50), "
                                          "or a folder of <image stem>.pt")
    t.add_argument("--auto_caption", action="store_true", help="caption each image with CoCa, then encode with CLIP")
    t.add_argument("--mean_features", default=None,
                   help="a `wordepth-text mean` file to take the mean caption feature from (default: the "
                        "original release's NYU/KITTI means shipped with the package)")
    g.add_argument("--clip_weights", "--clip_weights_path", dest="clip_weights", default=None,
                   help="local CLIP RN50 weights (else the cache / a download)")
    g.add_argument("--caption_weights", "--caption_weights_path", dest="caption_weights", default=None,
                   help="local CoCa weights for --auto_caption")

    g = p.add_argument_group("outputs")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--png_scale", type=float, default=None,
                   help="16-bit PNG units per metre (default 1000 = millimetres; 256 with --dataset kitti)")
    g.add_argument("--cmap", default="turbo", choices=sorted(vis.CMAPS), help="colour map")
    g.add_argument("--vmin", type=float, default=None, help="colour scale bottom in metres (default: map minimum)")
    g.add_argument("--vmax", type=float, default=None, help="colour scale top in metres (default: map maximum)")
    g.add_argument("--ply", action="store_true", help="also write <stem>.ply point clouds (needs a focal length)")
    g.add_argument("--focal", type=float, default=None, help="focal length in pixels for --ply (default: preset)")
    g.add_argument("--cx", type=float, default=None, help="principal point x (default: width / 2)")
    g.add_argument("--cy", type=float, default=None, help="principal point y (default: height / 2)")

    g = p.add_argument_group("sampling from the caption alone")
    g.add_argument("--prior", type=int, default=0, metavar="K", help="sample K depth maps from the text branch")
    g.add_argument("--seed", type=int, default=0, help="seed of the prior samples")
    g.add_argument("--prior_size", type=_size, default=None, metavar="HxW",
                   help="size of the prior samples (default: the model's training size)")

    g = p.add_argument_group("video (one caption for the clip; `wordepth.inference.video`)")
    g.add_argument("--video", default=None, help="a video file: writes OUT/<stem>_depth.webm (WebM/VP8, which "
                                                 "browsers play), each frame beside its colourised depth (instead "
                                                 "of --images / --prior)")
    g.add_argument("--video_out", default=None, help="the depth video's path (default OUT/<stem>_depth.webm; a "
                                                     "name ending in .mp4 gets MPEG-4 part 2, for players, not "
                                                     "browsers)")
    g.add_argument("--frames_png", action="store_true", help="also each frame's depth as a 16-bit PNG in "
                                                             "OUT/<stem>_frames/")
    return p


def _check_args(args: argparse.Namespace) -> None:
    if not args.images and args.prior <= 0:
        raise SystemExit("error: nothing to do: give --images and/or --prior K")
    if args.batch_size < 1:
        raise SystemExit("error: --batch_size must be at least 1")
    if args.prior < 0:
        raise SystemExit("error: --prior must be >= 0")
    if args.max_pixels is not None and args.max_pixels < 0:
        raise SystemExit("error: --max_pixels must be >= 0 (0: no limit)")
    if args.ply and args.focal is None and args.dataset is None and args.variant is None:
        raise SystemExit("error: --ply needs a focal length: --focal PIXELS, --dataset nyu|kitti or --variant")
    if args.auto_caption and not args.images:
        raise SystemExit("error: --auto_caption captions the --images; give some")
    if Path(args.checkpoint).is_dir():
        raise SystemExit(f"error: --checkpoint {args.checkpoint} is a folder, not a checkpoint file")
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"error: checkpoint not found: {args.checkpoint}")


def _video(args: argparse.Namespace) -> int:
    """``--video``: one caption (or none, or CoCa's for the first frame) for every frame of the clip."""
    if args.images or args.prior or args.caption_file or args.text_feature or args.kb_crop or args.onnx:
        raise SystemExit("error: --video takes --caption, --auto_caption or no text, and no --images, --prior, "
                         "--caption_file, --text_feature, --kb_crop or --onnx")
    if not Path(args.checkpoint).is_file():
        raise SystemExit(f"error: checkpoint not found: {args.checkpoint}")
    with user_errors(WeightsUnavailableError):
        video_path, _ = video_outputs(args.video, args.out, args.video_out)
        check_outputs({"--video_out" if args.video_out else "the depth video": video_path, "--out": args.out},
                      inputs=[args.video, args.checkpoint, args.mean_features], folders=["--out"])
        predictor = Predictor.from_checkpoint(args.checkpoint, variant=args.variant, device=args.device,
                                              clip_weights=args.clip_weights, caption_weights=args.caption_weights,
                                              no_caption="auto" if args.auto_caption else "mean",
                                              mean_features=args.mean_features, precision=args.precision)
        png_scale = args.png_scale or (dataset_facts(args.dataset).depth_png_scale if args.dataset else None)
        predict_video(predictor, args.video, args.out, caption=args.caption, frames_png=args.frames_png,
                      png_scale=png_scale, cmap=args.cmap, vmin=args.vmin, vmax=args.vmax,
                      batch_size=args.batch_size, video_out=args.video_out)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse, check, predict; problems with the inputs end with one ``error:`` line."""
    common.setup_logging()
    args = build_parser().parse_args(argv)
    if args.video is not None:
        return _video(args)
    _check_args(args)
    opts = PredictOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PredictOptions)})
    run_command(run, opts)
    return 0


if __name__ == "__main__":
    main()

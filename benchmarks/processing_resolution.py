"""Processing resolution (``--max_pixels``) against speed and quality, on the demo's held-out rooms.

``python -m benchmarks.processing_resolution [--demo DIR]`` prints docs/demo.md's table: for a few
pixel budgets (fractions of the model's training area, and the photo's full size), the seconds per
photo and the demo's metrics (abs_rel, rms, d1, as ``wordepth-demo`` prints them).

Every row runs the one inference path, ``Predictor.from_checkpoint(..., max_pixels=N)`` (what
``wordepth-predict --max_pixels N`` and ``wordepth-app --max_pixels N`` run): a photo larger than the
budget is shrunk for the network and its depth resized back to the photo's size, where it is scored
against the photo's ground truth (the demo's protocol: no crop, 1 mm to 10 m).

The model and the rooms are the demo's (``sh run_demo.sh DIR``; run here first when DIR has no
model). The demo's photos are exactly the training area (96 x 128), so the held-out rooms are also
rendered ``--zoom`` times larger (the same rooms, captions and features, in a temporary folder), as a
user's photo is larger than the training size; ``--zoom 1`` scores the demo's own photos, where the
default row equals the demo's ``metrics.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import torch

SCALES = (0.25, 0.5, 1.0, 2.0)  # pixel budgets, as fractions of the model's training area
METRICS = ("abs_rel", "rms", "d1")  # the metrics wordepth-demo prints
# wordepth-demo's quick settings (the docs' test runs them): seconds instead of minutes
QUICK_DEMO = ["--steps", "2", "--n_train", "4", "--n_test", "2", "--height", "48", "--width", "64", "--no_tqdm"]


@dataclass(frozen=True)
class Setting:
    """One row: a label and the pixel budget given to the predictor (None: the photo's full size)."""

    label: str
    max_pixels: int | None


def settings(area: int, photo_pixels: int, scales: tuple[float, ...] = SCALES) -> list[Setting]:
    """The rows for photos of ``photo_pixels`` and a model trained on ``area`` pixels.

    A budget at or above the photo's size would repeat the full-size row (the predictor never
    enlarges a photo), so it is left out; the full size closes the table (as the default row when
    the default budget, 1x, holds the whole photo).
    """
    rows = [Setting(f"{s:g}x" + (" (default)" if s == 1 else ""), round(s * area))
            for s in sorted(set(scales)) if round(s * area) < photo_pixels]
    if area >= photo_pixels and 1.0 in scales:  # the default budget holds the whole photo
        return rows + [Setting("1x (default) = full size", area)]
    return rows + [Setting("full size", None)]


@dataclass
class HeldOut:
    """The held-out photos: image paths, ground truth (1, 1, H, W) metres, caption features (D,)."""

    images: list[Path]
    depths: list[torch.Tensor]
    features: list[torch.Tensor]
    hw: tuple[int, int]


def read_held_out(paths: dict) -> HeldOut:
    """The test split of a synthetic NYU dataset (``make_synthetic_dataset``'s paths), read as the demo's
    evaluation reads it."""
    from wordepth.data import NYUDataset, read_split
    from wordepth.data.text_features import TextFeatureStore

    test = NYUDataset(paths["test_split"], paths["data_path_eval"], paths["gt_path_eval"], paths["text_feat_dir"],
                      mode="eval")
    store = TextFeatureStore(paths["text_feat_dir"], "nyu", "test")
    entries = read_split(paths["test_split"])
    images = [Path(paths["data_path_eval"]) / e.rgb.strip("/") for e in entries]
    depths = [test[i]["depth"][None] for i in range(len(test))]  # (1, 1, H, W)
    return HeldOut(images, depths, [store.get(e.rgb).float() for e in entries], tuple(depths[0].shape[-2:]))


def demo_photos(demo: Path, zoom: int, scratch: Path) -> HeldOut:
    """The demo's held-out rooms at ``zoom`` times their size, rendered into ``scratch`` (1: the demo's own files).

    Raises:
        UserError: DIR's rooms are not those of its run's seed (made by hand, or by another version).
    """
    from wordepth.config import read_run_record
    from wordepth.data import read_split
    from wordepth.data.generated.synthetic import make_synthetic_dataset, synthetic_paths
    from wordepth.errors import UserError

    own = synthetic_paths(demo / "data", "nyu")
    if not own["test_split"].is_file():
        raise FileNotFoundError(f"{own['test_split']} not found: {demo} is not a complete demo folder; "
                                f"run `sh run_demo.sh {demo}` again")
    if zoom == 1:
        return read_held_out(own)
    seed = read_run_record(demo / "run" / "config.json").config.run.seed
    entries = read_split(own["test_split"])
    h, w = cv2.imread(str(own["data_path_eval"] / entries[0].rgb.strip("/"))).shape[:2]
    paths = make_synthetic_dataset(scratch / f"photos_x{zoom}", "nyu", n_train=0, n_test=len(entries),
                                   height=h * zoom, width=w * zoom, seed=seed)
    for a, b in zip(sorted((own["text_dir"] / "nyu" / "test").rglob("*.txt")),
                    sorted((paths["text_dir"] / "nyu" / "test").rglob("*.txt"))):
        if a.read_text() != b.read_text():
            raise UserError(f"{demo}: its test rooms are not those of its run's seed ({seed}); "
                            f"run `sh run_demo.sh {demo}` again")
    return read_held_out(paths)


def measure(checkpoint: Path, photos: HeldOut, setting: Setting, runs: int, device: str = "cpu") -> dict:
    """One row: ``Predictor`` with ``max_pixels`` over every photo, ``runs`` times after a warm-up.

    Returns the label, the budget, the network's input size and the output size (both as the network
    and the caller saw them), the median seconds per photo and the nine metrics plus ``count``.
    """
    from wordepth.data.facts import NYU
    from wordepth.inference.predictor import Predictor
    from wordepth.metrics import MetricAccumulator, per_image_metrics

    predictor = Predictor.from_checkpoint(checkpoint, device=device, max_pixels=setting.max_pixels)
    seen: set[tuple[int, int]] = set()
    hook = predictor.model.register_forward_pre_hook(lambda _m, args: seen.add(tuple(args[0].shape[-2:])))
    try:
        predictor.infer(photos.images[0], photos.features[0])  # warm-up
        seconds, depths = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            depths = [predictor.infer(img, feat, return_tensor=True)  # (H, W): the photo's size
                      for img, feat in zip(photos.images, photos.features)]
            seconds.append((time.perf_counter() - t0) / len(photos.images))
    finally:
        hook.remove()
    acc = MetricAccumulator()
    for depth, gt in zip(depths, photos.depths):
        acc.update(per_image_metrics(depth[None, None], gt, min_depth=NYU.min_depth_eval, max_depth=NYU.max_depth,
                                     crop=None, dataset="nyu"))
    return {"setting": setting.label, "max_pixels": setting.max_pixels, "network_hw": sorted(seen),
            "output_hw": sorted({tuple(d.shape) for d in depths}), "seconds_per_image": statistics.median(seconds),
            "seconds_runs": seconds, **acc.as_dict()}


def markdown(rows: list[dict]) -> str:
    """The rows as docs/demo.md shows them."""
    lines = ["| processing resolution | max_pixels | network input | s / photo | abs_rel ↓ | rms ↓ | d1 ↑ |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        net = ", ".join(f"{h}×{w}" for h, w in r["network_hw"])
        budget = "0 (none)" if r["max_pixels"] is None else str(r["max_pixels"])
        lines.append(f"| {r['setting']} | {budget} | {net} | {r['seconds_per_image']:.4f} | "
                     + " | ".join(f"{r[m]:.4f}" for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def run(demo: Path, zoom: int = 2, scales: tuple[float, ...] = SCALES, runs: int = 3, threads: int | None = None,
        device: str = "cpu", quick: bool = False) -> dict:
    """Train the demo when ``demo`` has no model, render the photos, measure every setting."""
    from wordepth.cli import demo as demo_cli
    from wordepth.inference.predictor import Predictor, pixel_budget

    checkpoint = demo / "run" / "last.pth"
    if not checkpoint.is_file():
        print(f"{demo} has no demo model: running the demo first (sh run_demo.sh {demo})", flush=True)
        demo_cli.main(["--out", str(demo)] + (QUICK_DEMO if quick else []))
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads or old_threads)
    try:
        with tempfile.TemporaryDirectory(prefix="wordepth-resolution-") as scratch:  # the larger photos
            photos = demo_photos(demo, zoom, Path(scratch))
            area = pixel_budget(Predictor.from_checkpoint(checkpoint, device="cpu").model)
            rows = [measure(checkpoint, photos, s, runs, device)
                    for s in settings(area, photos.hw[0] * photos.hw[1], scales)]
        threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(old_threads)
    return {"checkpoint": str(checkpoint), "photos": len(photos.images), "photo_hw": list(photos.hw), "zoom": zoom,
            "training_area": area, "threads": threads, "device": device, "runs": runs, "rows": rows}


def parse_scales(text: str) -> tuple[float, ...]:
    """``--scales``: fractions of the training area separated by commas, each above 0.

    Raises:
        UserError: anything else, naming the option.
    """
    from wordepth.errors import UserError

    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--scales {text!r}: expected numbers separated by commas, e.g. 0.25,0.5,1,2") from None
    if not all(0 < v < float("inf") for v in values):
        raise UserError(f"--scales {text!r}: every scale must be a finite number above 0")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.processing_resolution", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", default="demo_output", help="the demo's folder (sh run_demo.sh DIR; made when it "
                                                        "has no model; default demo_output)")
    p.add_argument("--zoom", type=int, default=2, help="the held-out rooms rendered this many times larger "
                                                       "than the demo's (default 2; 1: the demo's own photos)")
    p.add_argument("--scales", default=",".join(f"{v:g}" for v in SCALES),
                   help="pixel budgets as fractions of the training area (default 0.25,0.5,1,2); "
                        "the full size is added")
    p.add_argument("--runs", type=int, default=3, help="timed rounds over the photos (median; default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="default cpu")
    p.add_argument("--out", default=None, help="also write the results as JSON to this file")
    p.add_argument("--quick", action="store_true", help="one round; a demo made here uses its quick settings")
    return p


def main(argv: list[str] | None = None) -> int:
    from wordepth.errors import run_command

    args = build_parser().parse_args(argv)
    for flag, value in (("--zoom", args.zoom), ("--runs", args.runs), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise SystemExit(f"error: {flag} must be at least 1, got {value}")
    return run_command(_main, args)


def _main(args: argparse.Namespace) -> int:
    from wordepth.outputs import write_text

    demo = Path(args.demo)
    if demo.exists() and not demo.is_dir():
        raise NotADirectoryError(f"--demo {demo} is a file: give the demo's folder (sh run_demo.sh DIR)")
    scales = parse_scales(args.scales)
    result = run(demo, args.zoom, scales, 1 if args.quick else args.runs, args.threads, args.device, args.quick)
    h, w = result["photo_hw"]
    print(f"{result['photos']} held-out rooms of {h}x{w} (the demo's, x{result['zoom']}); model "
          f"{result['checkpoint']} (training area {result['training_area']} pixels); {result['threads']} "
          f"threads on {result['device']}; median of {result['runs']} rounds")
    print(markdown(result["rows"]), end="")
    if args.out:
        write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

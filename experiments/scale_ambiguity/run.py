"""Language resolves scale ambiguity: the paper's claim in miniature.

Every training and test image appears at three metric scales (x0.5 "a dollhouse", x1 "a
bedroom", x2 "a large hall"): the image is identical, the depth is multiplied by the scale and
only the caption names it (``wordepth.data.generated.scale_rooms``). A network that sees only the image
can at best predict the average scale; WorDepth reads the scale from the caption.

With the same budget (steps, batch, learning rate, seed, batches) this trains a shrunken tiny
preset (``wordepth.demo.toy``, which also holds the training loop) as

- ``image_only``: the image-only baseline: the same network, every text feature replaced by
  one constant vector (the CLIP feature of the empty caption), text branch off (p = 0);
- ``wordepth``: WorDepth, current release (no decoder skip connections), p = 0.5;
- ``wordepth_legacy``: WorDepth, the paper's model (skip connections kept), p = 0.01;
- ``legacy_p{0,0.5,1}``: the paper's ablation of the alternation probability p on the paper's
  model (p = 0.01 is ``wordepth_legacy``),

evaluates each on held-out layouts with the image branch (as WorDepth is evaluated), prints a
table in the paper's format, and writes ``DIR/results.json`` and ``DIR/scale_ambiguity.png``::

    python -m experiments.scale_ambiguity.run --out runs/scale_ambiguity --seed 0
    python -m experiments.scale_ambiguity.run --out /tmp/sa --quick      # seconds, for the tests

Run from the repository root; the write-up and the results are in ``experiments/scale_ambiguity/README.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from wordepth.data.generated.scale_rooms import SCALES, ScaleAmbiguitySplit
from wordepth.data.facts import NYU
from wordepth.metrics import METRIC_NAMES, per_image_metrics
from wordepth.models.wordepth import WorDepth, WorDepthConfig
from wordepth.inference.predictor import sample_prior
from wordepth.demo.toy import MAX_DEPTH, QUICK, caption_features, make_splits, split_tensors, toy_config, train_toy
from wordepth.demo.toy import ToySettings as Settings
from wordepth.visualize import add_colorbar, colorize, make_grid

logger = logging.getLogger("scale_ambiguity")

MIN_DEPTH = NYU.min_depth_eval  # evaluation range (NYU's): MIN_DEPTH to MAX_DEPTH


@dataclass(frozen=True)
class Variant:
    """One trained model of the experiment."""

    name: str
    label: str
    legacy: bool
    alter_prob: float
    text: str = "caption"  # 'caption': the caption's CLIP feature; 'constant': one vector for all


VARIANTS = (
    Variant("image_only", "Image-only baseline (p = 0, constant text)", legacy=True, alter_prob=0.0, text="constant"),
    Variant("wordepth", "WorDepth, current (p = 0.5, no skips)", legacy=False, alter_prob=0.5),
    Variant("wordepth_legacy", "WorDepth, paper (p = 0.01, skips)", legacy=True, alter_prob=0.01),
    Variant("legacy_p0", "Ablation: paper model, p = 0", legacy=True, alter_prob=0.0),
    Variant("legacy_p0.5", "Ablation: paper model, p = 0.5", legacy=True, alter_prob=0.5),
    Variant("legacy_p1", "Ablation: paper model, p = 1", legacy=True, alter_prob=1.0),
)


# ---------------------------------------------------------------- training and evaluation


def model_config(variant: Variant, s: Settings) -> WorDepthConfig:
    """The shrunk tiny preset (`wordepth.demo.toy.toy_config`) with the variant's legacy flag and p."""
    return toy_config(s, legacy=variant.legacy, alter_prob=variant.alter_prob)


def train(variant: Variant, data: dict[str, torch.Tensor], s: Settings) -> tuple[WorDepth, dict]:
    """`wordepth.demo.toy.train_toy`: every variant sees the same batches and flips; p changes nothing else."""
    return train_toy(model_config(variant, s), data, s, text_key="text" if variant.text == "caption" else "constant")


@torch.no_grad()
def predict(model: WorDepth, variant: Variant, data: dict[str, torch.Tensor], branch: str = "image",
            seed: int = 0, batch: int = 32) -> torch.Tensor:
    """(N, 1, H, W) depth of every test sample from one branch (text branch: a seeded prior sample)."""
    model.eval()
    text = data["text" if variant.text == "caption" else "constant"]
    if branch != "image":  # one prior sample per test caption (and image, for the legacy model)
        image = data["image"]
        return sample_prior(model, text, tuple(image.shape[-2:]), k=text.shape[0], seed=seed,
                            image=image if model.cfg.legacy else None, batch_size=batch)[:, None]
    return torch.cat([model(data["image"][i:i + batch], text[i:i + batch]) for i in range(0, text.shape[0], batch)])


def summarize(pred: torch.Tensor, data: dict[str, torch.Tensor]) -> dict:
    """Mean metrics over all test samples, AbsRel per scale, and how the predicted scale follows the true one.

    ``abs_rel_unseen_captions``: AbsRel over the test samples whose caption (object pair) never
    occurs in training (None when there are none).

    ``scale_ratio``: per scale, the median over images of median(pred) / median(gt) (1 = right scale).
    ``abs_rel_median_aligned``: AbsRel after scaling each prediction by median(gt) / median(pred), i.e.
    the error left once the scale is given (the shape of the depth map alone).
    """
    gt = data["depth"]
    rows = per_image_metrics(pred, gt, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH, crop=None, dataset="nyu")  # (N, 9)
    ratio = pred.flatten(1).median(1).values / gt.flatten(1).median(1).values  # (N,)
    aligned = per_image_metrics(pred / ratio.view(-1, 1, 1, 1), gt, min_depth=MIN_DEPTH, max_depth=MAX_DEPTH,
                                crop=None, dataset="nyu")
    out = {name: float(rows[:, k].mean()) for k, name in enumerate(METRIC_NAMES)}
    out["abs_rel_median_aligned"] = float(aligned[:, 1].mean())
    unseen = ~data["caption_seen"]
    out["abs_rel_unseen_captions"] = float(rows[unseen, 1].mean()) if unseen.any() else None
    out["abs_rel_by_scale"], out["scale_ratio"] = {}, {}
    for scale, words in SCALES.items():
        sel = data["scale"] == scale
        if sel.any():
            out["abs_rel_by_scale"][words] = float(rows[sel, 1].mean())
            out["scale_ratio"][words] = float(ratio[sel].median())
    return out


# ---------------------------------------------------------------- report


def table(results: dict, branch: str = "image_branch") -> str:
    """Markdown table in the paper's format (NYU columns), plus the per-scale and scale-aligned AbsRel.

    ``branch``: 'image_branch' (evaluation) or 'text_branch' (depth sampled from the caption; rows
    without one are left out).
    """
    words = list(SCALES.values())
    head = ["Method", "Abs Rel ↓", "log10 ↓", "RMSE ↓", "δ<1.25 ↑", "δ<1.25² ↑", "δ<1.25³ ↑"]
    head += [f"Abs Rel {w.split()[-1]}" for w in words] + ["Abs Rel, scale given"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results["variants"].items():
        if branch not in r:
            continue
        m = r[branch]
        cells = [r["label"], f"{m['abs_rel']:.3f}", f"{m['log10']:.3f}", f"{m['rms']:.3f}", f"{m['d1']:.3f}",
                 f"{m['d2']:.3f}", f"{m['d3']:.3f}"]
        cells += [f"{m['abs_rel_by_scale'].get(w, float('nan')):.3f}" for w in words]
        cells += [f"{m['abs_rel_median_aligned']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tile(depth: torch.Tensor, vmax: float, zoom: int) -> np.ndarray:
    img = colorize(depth, vmin=0.0, vmax=vmax)
    return cv2.resize(img, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)


def figure(path: Path, split: ScaleAmbiguitySplit, data: dict, preds: dict[str, torch.Tensor],
           priors: list[torch.Tensor], layout: int, zoom: int = 2) -> Path:
    """One held-out layout at each scale (rows): image, ground truth, image-only, WorDepth (current,
    paper model at p = 0.01 and 0.5), and two depth maps sampled from the caption alone (the current
    model's text branch). One colour scale for all."""
    vmax = float(data["depth"][split.layout == layout].max())
    tiles, labels = [], []
    for i in np.flatnonzero(split.layout == layout):
        gt = data["depth"][i]
        image = cv2.resize(split.images[i], None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
        row = [(image, split.captions[i]), (_tile(gt, vmax, zoom), "ground truth")]
        for name, title in (("image_only", "image-only"), ("wordepth", "WorDepth current p=0.5"),
                            ("wordepth_legacy", "paper model p=0.01"), ("legacy_p0.5", "paper model p=0.5")):
            if name in preds:
                p = preds[name][i]
                rel = float(((p - gt).abs() / gt).mean())
                row.append((_tile(p, vmax, zoom), f"{title}: AbsRel {rel:.2f}"))
        for k, prior in enumerate(priors):
            row.append((_tile(prior[i], vmax, zoom), f"prior sample {k + 1} (caption only)"))
        tiles += [t for t, _ in row]
        labels += [lab for _, lab in row]
    ncols = len(tiles) // len(np.flatnonzero(split.layout == layout))
    grid = add_colorbar(make_grid(tiles, ncols, labels=labels, pad=6), 0.0, vmax, label="m")  # RGB
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(grid[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"could not write {path}")  # (level 9: a third of save_png's default size)
    return path


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Language resolves scale ambiguity (toy experiment).")
    parser.add_argument("--out", type=Path, required=True, help="folder for results.json and scale_ambiguity.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of the layouts, initialisation and batches")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps per variant (default {Settings.steps})")
    parser.add_argument("--quick", action="store_true", help="a few steps on tiny images (seconds; for tests)")
    parser.add_argument("--variants", nargs="+", choices=[v.name for v in VARIANTS], default=None,
                        help="train only these variants (default: all)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest for this tiny network on a shared machine)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else Settings()
    s = dataclasses.replace(s, seed=args.seed, **({"steps": args.steps} if args.steps is not None else {}))
    variants = [v for v in VARIANTS if args.variants is None or v.name in args.variants]
    t_start = time.time()

    train_split, test_split = make_splits(s)  # the test split holds other layouts
    feats = caption_features(train_split.captions + test_split.captions)
    train_data, test_data = split_tensors(train_split, feats), split_tensors(test_split, feats)
    test_data["caption_seen"] = torch.tensor([c in set(train_split.captions) for c in test_split.captions])
    seen = float(test_data["caption_seen"].float().mean())
    logger.info("%d training / %d test samples (%d / %d layouts x %d scales); %.0f%% of the test samples "
                "have a caption that also occurs in training", len(train_split), len(test_split), s.n_train,
                s.n_test, len(SCALES), 100 * seen)

    results = {"settings": dataclasses.asdict(s), "test_samples_with_caption_seen_in_training": seen, "variants": {}}
    preds, priors = {}, []
    for v in variants:
        model, log = train(v, train_data, s)
        preds[v.name] = predict(model, v, test_data)
        entry = {"label": v.label, "legacy": v.legacy, "alter_prob": v.alter_prob, "text": v.text,
                 "model_config": model.cfg.to_dict(), **log,
                 "image_branch": summarize(preds[v.name], test_data)}
        if v.text == "caption":  # depth from the caption alone (plus image skips for the legacy model)
            entry["text_branch"] = summarize(predict(model, v, test_data, branch="text", seed=s.seed), test_data)
        if v.name == "wordepth":
            priors = [predict(model, v, test_data, branch="text", seed=s.seed + k) for k in range(2)]
        results["variants"][v.name] = entry
        m = entry["image_branch"]
        logger.info("%-16s %5.1fs  AbsRel %.3f  d1 %.3f  RMSE %.3f  scale ratio %s", v.name, log["train_seconds"],
                    m["abs_rel"], m["d1"], m["rms"], {k: round(r, 2) for k, r in m["scale_ratio"].items()})

    base = results["variants"].get("image_only")
    if base is not None:
        results["abs_rel_vs_image_only"] = {
            name: r["image_branch"]["abs_rel"] / base["image_branch"]["abs_rel"]
            for name, r in results["variants"].items()}
    results["table"] = table(results)
    results["table_text_branch"] = table(results, "text_branch")
    results["total_seconds"] = time.time() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    figure(args.out / "scale_ambiguity.png", test_split, test_data, preds, priors, layout=0)
    print("Image branch (evaluation), held-out layouts:")
    print(results["table"])
    print("\nText branch (depth sampled from the caption; the paper model's decoder also sees image skips):")
    print(results["table_text_branch"])
    print(f"seed {s.seed}, {s.steps} steps x batch {s.batch_size}, {time.time() - t_start:.0f} s in all; "
          f"written {args.out / 'results.json'} and {args.out / 'scale_ambiguity.png'}")
    return results


if __name__ == "__main__":
    main()

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
table in the paper's format, and writes ``DIR/results.json`` and ``DIR/scale_ambiguity.png``.
Then it evaluates each caption-using variant again under the caption ablation of ``eval.py
--caption_ablation`` (:mod:`wordepth.caption_ablation`: its modes, draws, bootstrap, table and
scale plot, ``DIR/caption_ablation_<variant>.png``): the test images' own captions, the mean
training caption, another test image's caption, a caption of another scale, and templates::

    python -m experiments.scale_ambiguity.run --out runs/scale_ambiguity --seed 0
    python -m experiments.scale_ambiguity.run --out /tmp/sa --quick      # seconds, for the tests
    python -m experiments.scale_ambiguity.run --out /tmp/sa --variants wordepth --caption_ablation dataset,shuffled

Run from the repository root; the write-up and the results are in ``experiments/scale_ambiguity/README.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from wordepth.caption_ablation import (BOOTSTRAP_DRAWS, CaptionMode, CaptionModeError, ablation_results,
                                       ablation_table, parse_ablation, tensor_caption_features, write_scale_plot)
from wordepth.data.generated.scale_rooms import SCALES, ScaleAmbiguitySplit
from wordepth.data.facts import NYU
from wordepth.errors import user_errors
from wordepth.metrics import METRIC_NAMES, per_image_medians, per_image_metrics
from wordepth.outputs import checked_write, write_atomic, write_json
from wordepth.models.wordepth import WorDepth, WorDepthConfig
from wordepth.inference.predictor import sample_prior
from wordepth.demo.toy import MAX_DEPTH, QUICK, caption_features, make_splits, split_tensors, toy_config, train_toy
from wordepth.demo.toy import ToySettings as Settings
from wordepth.visualize import add_colorbar, colorize, make_grid

logger = logging.getLogger("scale_ambiguity")

MIN_DEPTH = NYU.min_depth_eval  # evaluation range (NYU's): MIN_DEPTH to MAX_DEPTH
# The caption modes of the ablation (eval.py --caption_ablation's syntax): the rooms' scene type is the scale word
ABLATION = ("dataset,none,shuffled,other-scene,template:a miniature model of {caption},"
            "template:a photo of {caption}")


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
            seed: int = 0, batch: int = 32, text: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 1, H, W) depth of every test sample from one branch (text branch: a seeded prior sample);
    ``text``: (N, D) caption features in place of the variant's own (the caption ablation)."""
    model.eval()
    text = data["text" if variant.text == "caption" else "constant"] if text is None else text
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


# ---------------------------------------------------------------- caption ablation


def ablation_modes(text: str) -> list[CaptionMode]:
    """The modes of ``--caption_ablation`` (``dataset`` first), checked before any training.

    Raises:
        CaptionModeError: a mode ``wordepth.caption_ablation`` refuses, or ``file:`` (the rooms have no image paths).
    """
    modes = parse_ablation(text)
    files = [m.name for m in modes if m.kind == "file"]
    if files:
        raise CaptionModeError(f"--caption_ablation {files[0]}: the rooms have no image files to name; use "
                               "dataset, none, shuffled, other-scene or template:TEXT")
    return modes


def encode_sentences(sentences: list[str]) -> torch.Tensor:
    """(N, 1024) features of sentences through the experiment's text pipeline (random-weight CLIP RN50)."""
    feats = caption_features(sentences)
    return torch.stack([feats[c] for c in sentences])


def per_image_rows(pred: torch.Tensor, data: dict[str, torch.Tensor]) -> list[dict]:
    """One row per test sample, as ``eval.py --caption_ablation`` makes them: ``path`` (the sample's index), the
    nine metrics and the medians of predicted, true and predicted / true depth."""
    kw = dict(min_depth=MIN_DEPTH, max_depth=MAX_DEPTH, crop=None, dataset="nyu")
    metrics = per_image_metrics(pred, data["depth"], **kw)  # (N, 9)
    medians = per_image_medians(pred, data["depth"], **kw)  # (N, 3)
    return [{"path": f"test/{i:04d}", **dict(zip(METRIC_NAMES, m)),
             **dict(zip(("median_depth", "median_gt", "median_ratio"), med))}
            for i, (m, med) in enumerate(zip(metrics.tolist(), medians.tolist()))]


def caption_ablation(model: WorDepth, variant: Variant, data: dict[str, torch.Tensor], modes: list[CaptionMode],
                     mean: torch.Tensor, captions: list[str], seed: int) -> tuple[dict, float]:
    """The image branch of ``model`` on the test samples under each caption mode.

    ``mean``: the mean training caption feature (``none``); the scene of a sample (``other-scene``) is its scale
    word, so that mode gives every image a caption of another scale. Permutations, draws and the bootstrap
    come from ``seed``.

    Returns:
        ``wordepth.caption_ablation.ablation_results`` (nine metrics, medians, change from ``dataset`` with its
        95% interval), each mode with ``scale_ratio`` (per scale, the median over images of the median
        pred / gt ratio) added; and the median true depth (for the scale plot).
    """
    scenes = [SCALES[float(x)] for x in data["scale"]]
    rows_of = {}
    for mode in modes:
        text = tensor_caption_features(mode, data["text"], seed=seed, scenes=scenes, mean=mean, captions=captions,
                                       encode=encode_sentences)  # (N, D)
        rows_of[mode.name] = per_image_rows(predict(model, variant, data, text=text), data)
    results = ablation_results(rows_of, seed)
    for name, r in results.items():
        ratio = torch.tensor([row["median_ratio"] for row in rows_of[name]])  # (N,)
        r["scale_ratio"] = {words: float(ratio[data["scale"] == scale].median())
                            for scale, words in SCALES.items() if bool((data["scale"] == scale).any())}
    true_median = float(torch.tensor([row["median_gt"] for row in rows_of["dataset"]]).median())
    return results, true_median


def ablation_markdown(results: dict) -> str:
    """Markdown: AbsRel (median pred / gt) of every ablated variant under each mode, then per variant the
    paper's columns under each mode with the change in AbsRel from ``dataset`` and its 95% interval, SILog (blind
    to a global scale: the shape) and the median pred / gt ratio, over all images and per scale."""
    ablated = {n: r for n, r in results["variants"].items() if "caption_ablation" in r}
    if not ablated:
        return ""
    modes = list(next(iter(ablated.values()))["caption_ablation"])
    lines = ["| Method | " + " | ".join(modes) + " |", "|" + "---|" * (len(modes) + 1)]
    for r in ablated.values():
        a = r["caption_ablation"]
        lines.append(f"| {r['label']} | " + " | ".join(f"{a[m]['abs_rel']:.3f} ({a[m]['median_ratio']:.2f})"
                                                       for m in modes) + " |")
    words = list(SCALES.values())
    head = ["Caption mode", "Abs Rel ↓", "Δ Abs Rel [95% CI]", "log10 ↓", "RMSE ↓", "δ<1.25 ↑", "δ<1.25² ↑",
            "δ<1.25³ ↑", "SILog ↓", "pred/gt"] + [f"pred/gt {w.split()[-1]}" for w in words]
    for r in ablated.values():
        lines += ["", f"{r['label']}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for mode, m in r["caption_ablation"].items():
            c = m["change"]["abs_rel"]
            delta = "—" if mode == "dataset" else f"{c['change']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
            cells = [f"`{mode}`", f"{m['abs_rel']:.3f}", delta, f"{m['log10']:.3f}", f"{m['rms']:.3f}",
                     f"{m['d1']:.3f}", f"{m['d2']:.3f}", f"{m['d3']:.3f}", f"{m['silog']:.1f}",
                     f"{m['median_ratio']:.2f}"]
            cells += [f"{m['scale_ratio'].get(w, float('nan')):.2f}" for w in words]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
    bgr = np.ascontiguousarray(grid[:, :, ::-1])  # (level 9: a third of save_png's default size)
    return write_atomic(path, lambda tmp: checked_write(cv2.imwrite(str(tmp), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9]),
                                                        tmp), what=f"the figure {path}")


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Language resolves scale ambiguity (toy experiment).")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for results.json, scale_ambiguity.png and caption_ablation_<variant>.png")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the layouts, initialisation, batches and the caption ablation's draws")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps per variant (default {Settings.steps})")
    parser.add_argument("--quick", action="store_true", help="a few steps on tiny images (seconds; for tests)")
    parser.add_argument("--variants", nargs="+", choices=[v.name for v in VARIANTS], default=None,
                        help="train only these variants (default: all)")
    parser.add_argument("--caption_ablation", default=ABLATION, metavar="MODES",
                        help="caption modes the caption-using variants are evaluated under, comma-separated as for "
                             f"eval.py (dataset is always added; file: is not available here; default {ABLATION!r})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 is fastest for this tiny network on a shared machine)")
    return parser.parse_args(argv)


def run(s: Settings, variants: list[Variant], modes: list[CaptionMode], out: Path) -> dict:
    """Train and evaluate ``variants`` with settings ``s``, run the caption ablation (``modes``) on those that read
    captions, and write ``out/results.json``, ``out/scale_ambiguity.png`` and one scale plot per ablated variant.
    Returns the results."""
    t_start = time.time()
    train_split, test_split = make_splits(s)  # the test split holds other layouts
    feats = caption_features(train_split.captions + test_split.captions)
    train_data, test_data = split_tensors(train_split, feats), split_tensors(test_split, feats)
    test_data["caption_seen"] = torch.tensor([c in set(train_split.captions) for c in test_split.captions])
    # --captions none: the mean caption feature of the training set (one feature per training image, as
    # wordepth-text mean averages a split's stored features: in float64, not re-normalised)
    mean_train_text = train_data["text"].double().mean(dim=0).float()  # (D,)
    seen = float(test_data["caption_seen"].float().mean())
    logger.info("%d training / %d test samples (%d / %d layouts x %d scales); %.0f%% of the test samples "
                "have a caption that also occurs in training", len(train_split), len(test_split), s.n_train,
                s.n_test, len(SCALES), 100 * seen)

    results = {"settings": dataclasses.asdict(s), "test_samples_with_caption_seen_in_training": seen, "variants": {}}
    preds, priors, true_median = {}, [], float("nan")
    for v in variants:
        model, log = train(v, train_data, s)
        preds[v.name] = predict(model, v, test_data)
        entry = {"label": v.label, "legacy": v.legacy, "alter_prob": v.alter_prob, "text": v.text,
                 "model_config": model.cfg.to_dict(), **log,
                 "image_branch": summarize(preds[v.name], test_data)}
        if v.text == "caption":  # depth from the caption alone (plus image skips for the legacy model)
            entry["text_branch"] = summarize(predict(model, v, test_data, branch="text", seed=s.seed), test_data)
            entry["caption_ablation"], true_median = caption_ablation(model, v, test_data, modes, mean_train_text,
                                                                      test_split.captions, s.seed)
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
    ablated = [name for name, r in results["variants"].items() if "caption_ablation" in r]
    results["caption_ablation"] = {
        "modes": [m.name for m in modes], "variants": ablated, "seed": s.seed, "true_median_depth": true_median,
        "bootstrap": {"draws": BOOTSTRAP_DRAWS, "seed": s.seed, "interval": 0.95, "paired_over": "test samples"},
        "table": ablation_markdown(results)}
    results["total_seconds"] = time.time() - t_start
    written = [write_json(out / "results.json", results, what="the results")]
    written.append(figure(out / "scale_ambiguity.png", test_split, test_data, preds, priors, layout=0))
    for name in ablated:
        written.append(out / f"caption_ablation_{name}.png")
        write_scale_plot(written[-1], results["variants"][name]["caption_ablation"], true_median)
    print("Image branch (evaluation), held-out layouts:")
    print(results["table"])
    print("\nText branch (depth sampled from the caption; the paper model's decoder also sees image skips):")
    print(results["table_text_branch"])
    for name in ablated:
        print(f"\nCaption ablation, {results['variants'][name]['label']} (image branch, held-out layouts):")
        print(ablation_table(results["variants"][name]["caption_ablation"]))
    if ablated:
        print("\nCaption ablation, Abs Rel (median pred/gt) per caption mode:")
        print(results["caption_ablation"]["table"])
    print(f"seed {s.seed}, {s.steps} steps x batch {s.batch_size}, {time.time() - t_start:.0f} s in all; "
          f"written {', '.join(str(p) for p in written)}")
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    with user_errors():
        modes = ablation_modes(args.caption_ablation)  # checked before any training
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else Settings()
    s = dataclasses.replace(s, seed=args.seed, **({"steps": args.steps} if args.steps is not None else {}))
    variants = [v for v in VARIANTS if args.variants is None or v.name in args.variants]
    with user_errors():
        return run(s, variants, modes, args.out)


if __name__ == "__main__":
    main()

"""Seed sweeps: train one configuration with several seeds, then report each seed and their mean ± std
next to the paper's numbers, under a stated checkpoint-selection rule, with a plot of the metrics
over training.

The command is ``wordepth-sweep`` (:mod:`wordepth.cli.sweep`). Each seed trains in its own process
(``python -m wordepth.cli.train``, one after another) into ``<log_directory>/<model_name>_seed<N>``;
a training run records every online evaluation in ``eval_history.jsonl`` (one JSON object a line:
``step``, ``split`` = ``test`` or ``val``, ``final``, the nine metrics). From those records:

* **selected on test** (the original's rule, the default): each metric's best value over the
  online evaluations of the test split (each metric may come from another step). The original
  evaluates no last time, so a ``final`` evaluation is not a candidate;
* **selected on validation** (with ``--val_split``): the step whose validation ``--select_metric``
  is best; the report gives the test metrics of that step's checkpoint;
* **last**: the test metrics after the last step (``--final_eval``).
"""
from __future__ import annotations

import json
import math
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wordepth.compare import FONT, PALETTE
from wordepth.metrics import HIGHER_BETTER, METRIC_NAMES
from wordepth.outputs import checked_write, write_atomic, write_json, write_text
from wordepth.reproducibility import PAPER_MODEL, PAPER_RESULTS
from wordepth.visualize import add_title, make_grid

__all__ = ["HISTORY_FILE", "RULES", "aggregate", "curves", "markdown_report", "plot_curves", "read_history",
           "seed_report", "seed_run_name", "select_last", "select_on_test", "select_on_val", "torchrun_command",
           "train_command", "write_sweep_report"]

HISTORY_FILE = "eval_history.jsonl"
RULES = {"test": "selected on test", "val": "selected on validation", "last": "last checkpoint"}
COLOUR_NAMES = ("blue", "orange", "green", "red", "purple", "brown", "pink", "grey", "olive", "cyan")  # PALETTE's


# --------------------------------------------------------------------------- commands
def seed_run_name(model_name: str, seed: int) -> str:
    """The run folder name of one seed: ``<model_name>_seed<seed>``."""
    return f"{model_name}_seed{seed}"


def train_command(train_args: Sequence[str], seed: int, model_name: str, resume: str | os.PathLike | None = None,
                  python: str = sys.executable) -> list[str]:
    """``python -m wordepth.cli.train TRAIN_ARGS --seed N --model_name NAME_seedN`` with the online
    evaluations the report needs (later flags win over a config file's); ``resume``: a ``last.pth``."""
    cmd = [python, "-m", "wordepth.cli.train", *map(str, train_args), "--seed", str(seed),
           "--model_name", seed_run_name(model_name, seed), "--do_online_eval", "--final_eval"]
    if resume is not None:
        cmd += ["--checkpoint_path", str(resume)]
    return cmd


def torchrun_command(train_args: Sequence[str], seed: int, model_name: str, nproc: int = 1) -> str:
    """The same run as a separate ``torchrun`` job (printed for users who submit one job per seed)."""
    cmd = train_command(train_args, seed, model_name, python="python")[3:]
    return shlex.join(["torchrun", f"--nproc_per_node={nproc}", "-m", "wordepth.cli.train", *cmd])


# --------------------------------------------------------------------------- records
def read_history(path: str | os.PathLike) -> list[dict]:
    """The evaluation records of a run, in step order; a record repeated by a resumed run counts once
    (the later one). A missing file gives an empty list.

    Raises:
        ValueError: a line that is not a JSON object with ``step`` and ``split``.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records: dict[tuple, dict] = {}
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            key = (int(rec["step"]), str(rec["split"]), bool(rec.get("final", False)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ValueError(f"{path}, line {no}: not an evaluation record") from None
        records[key] = rec
    return sorted(records.values(), key=lambda r: (int(r["step"]), bool(r.get("final", False))))


def _split(history: Sequence[Mapping], split: str) -> list[Mapping]:
    return [r for r in history if r["split"] == split]


def _better(name: str, a: float, b: float) -> bool:
    """Whether ``a`` beats ``b`` on metric ``name`` (NaN never does)."""
    if math.isnan(a):
        return False
    if math.isnan(b):
        return True
    return a > b if name in HIGHER_BETTER else a < b


def select_on_test(history: Sequence[Mapping]) -> dict | None:
    """The original's rule: each metric's best test value over the online evaluations (not a final one)."""
    recs = [r for r in _split(history, "test") if not r.get("final", False)]
    if not recs:
        return None
    metrics, steps = {}, {}
    for name in METRIC_NAMES:
        best = recs[0]
        for r in recs[1:]:
            if _better(name, float(r[name]), float(best[name])):
                best = r
        metrics[name], steps[name] = float(best[name]), int(best["step"])
    return {"rule": RULES["test"], "metrics": metrics, "steps": steps}


def select_on_val(history: Sequence[Mapping], metric: str = "abs_rel") -> dict | None:
    """The step with the best validation ``metric`` (the first on a tie); its test metrics."""
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRIC_NAMES)}")
    val = _split(history, "val")
    if not val:
        return None
    best = val[0]
    for r in val[1:]:
        if _better(metric, float(r[metric]), float(best[metric])):
            best = r
    step, final = int(best["step"]), bool(best.get("final", False))
    test = [r for r in _split(history, "test") if int(r["step"]) == step and bool(r.get("final", False)) == final]
    if not test:
        raise ValueError(f"no test evaluation at step {step}, where the validation {metric} is best")
    return {"rule": f"{RULES['val']} ({metric})", "step": step, "metrics": {n: float(test[-1][n]) for n in METRIC_NAMES},
            "val_metrics": {n: float(best[n]) for n in METRIC_NAMES}}


def select_last(history: Sequence[Mapping]) -> dict | None:
    """The test metrics of the last evaluation (the final one when the run made one)."""
    test = _split(history, "test")
    if not test:
        return None
    last = test[-1]
    return {"rule": RULES["last"], "step": int(last["step"]), "metrics": {n: float(last[n]) for n in METRIC_NAMES}}


def seed_report(history: Sequence[Mapping], select_metric: str = "abs_rel") -> dict[str, dict]:
    """Every rule that the records allow: ``{"test": ..., "val": ..., "last": ...}``."""
    out = {"test": select_on_test(history), "val": select_on_val(history, select_metric),
           "last": select_last(history)}
    return {k: v for k, v in out.items() if v is not None}


def aggregate(values: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric: mean, standard deviation across seeds (n - 1 in the denominator; 0 for one seed), n."""
    out = {}
    for name in METRIC_NAMES:
        xs = np.array([float(v[name]) for v in values if name in v], dtype=np.float64)
        if xs.size:
            out[name] = {"mean": float(xs.mean()), "std": float(xs.std(ddof=1)) if xs.size > 1 else 0.0,
                         "n": int(xs.size)}
    return out


def summarise(reports: Mapping[int, Mapping[str, dict]]) -> dict[str, dict]:
    """Across seeds, for each rule that every seed has: the per-seed metrics and their aggregate."""
    rules = [k for k in RULES if reports and all(k in r for r in reports.values())]
    out = {}
    for rule in rules:
        per_seed = {seed: r[rule]["metrics"] for seed, r in reports.items()}
        out[rule] = {"label": next(iter(reports.values()))[rule]["rule"], "per_seed": per_seed,
                     "mean_std": aggregate(list(per_seed.values()))}
    return out


# --------------------------------------------------------------------------- report
def _cell(name: str, v: float) -> str:
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.2f}"


def markdown_report(summary: Mapping[str, dict], dataset: str, title: str = "Seed sweep",
                    provenance: Mapping[str, Any] | None = None) -> str:
    """One table per selection rule: each seed, mean ± std, and the paper's row."""
    paper = PAPER_RESULTS.get(dataset, {})
    head = "| | " + " | ".join(f"{n} {'↑' if n in HIGHER_BETTER else '↓'}" for n in METRIC_NAMES) + " |"
    rule_line = "|---|" + "---:|" * len(METRIC_NAMES)
    lines = [f"# {title}", ""]
    if provenance:
        git = provenance.get("git", {})
        det = provenance.get("config", {}).get("deterministic")  # the runs' flag (not this process's state)
        lines += [f"Dataset {dataset}; seeds {provenance.get('seeds')}; {provenance.get('steps')} steps; "
                  f"git {git.get('commit', '?')}{' (with modified files)' if git.get('dirty') else ''}; "
                  f"{'deterministic' if det else 'default (not deterministic)'} mode. "
                  "Everything else that produced it: the provenance in sweep.json.", ""]
        if provenance.get("command"):
            lines += [f"    {provenance['command']}", ""]
    for rule, block in summary.items():
        lines += [f"## {block['label']}", ""]
        if rule == "test":
            lines += ["Each metric's best value over the online evaluations of the **test** split, as the "
                      "original reports it: the test set chose the checkpoint, so these numbers are optimistic.", ""]
        elif rule == "val":
            lines += ["The checkpoint whose validation metric is best (scenes held out of the training split); "
                      "its test metrics.", ""]
        lines += [head, rule_line]
        for seed, m in block["per_seed"].items():
            lines.append(f"| seed {seed} | " + " | ".join(_cell(n, m[n]) for n in METRIC_NAMES) + " |")
        ms = block["mean_std"]
        lines.append(f"| **mean ± std** (n={next(iter(ms.values()))['n']}) | "
                     + " | ".join(f"{_cell(n, ms[n]['mean'])} ± {_cell(n, ms[n]['std'])}" for n in METRIC_NAMES)
                     + " |")
        if paper:
            lines.append(f"| paper ({PAPER_MODEL[dataset]}) | "
                         + " | ".join(_cell(n, paper[n]) if n in paper else "" for n in METRIC_NAMES) + " |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plot
def curves(histories: Sequence[Sequence[Mapping]], split: str = "test") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per metric: (steps, values (seeds, steps)) over the steps every seed evaluated (final ones included)."""
    per_seed = [{int(r["step"]): r for r in _split(h, split)} for h in histories]
    if not per_seed or not all(per_seed):
        return {}
    steps = sorted(set.intersection(*(set(p) for p in per_seed)))
    if not steps:
        return {}
    return {n: (np.array(steps), np.array([[float(p[s][n]) for s in steps] for p in per_seed]))
            for n in METRIC_NAMES}


def _panel(name: str, steps: np.ndarray, values: np.ndarray, size: tuple[int, int] = (260, 380)) -> np.ndarray:
    """One metric over steps: each seed thin, the mean thick, the band mean ± std shaded."""
    H, W = size
    img = np.full((H, W, 3), 255, np.uint8)
    left, right, top, bottom = 62, 12, 28, 34
    mean = values.mean(axis=0)
    std = values.std(axis=0, ddof=1) if values.shape[0] > 1 else np.zeros_like(mean)
    lo, hi = float(min(values.min(), (mean - std).min())), float(max(values.max(), (mean + std).max()))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 1.0
    lo, hi = lo - pad, hi + pad
    s0, s1 = float(steps.min()), float(steps.max())
    span = (s1 - s0) or 1.0

    def xy(s, v):
        x = left + (np.asarray(s, np.float64) - s0) / span * (W - left - right)
        y = top + (hi - np.asarray(v, np.float64)) / (hi - lo) * (H - top - bottom)
        return np.stack([x, y], axis=-1).round().astype(np.int32)

    colour = PALETTE[0]
    band = np.concatenate([xy(steps, mean + std), xy(steps, mean - std)[::-1]])
    shade = img.copy()
    cv2.fillPoly(shade, [band], tuple(int(c) for c in colour))
    img = cv2.addWeighted(shade, 0.25, img, 0.75, 0)
    cv2.rectangle(img, (left, top), (W - right, H - bottom), (0, 0, 0), 1)
    for k, row in enumerate(values):
        cv2.polylines(img, [xy(steps, row)], False, PALETTE[(k + 1) % len(PALETTE)], 1, cv2.LINE_AA)
    cv2.polylines(img, [xy(steps, mean)], False, colour, 2, cv2.LINE_AA)
    for v in (lo + pad, hi - pad):  # y ticks at the data range
        y = int(xy(s0, v)[1])
        cv2.line(img, (left - 4, y), (left, y), (0, 0, 0), 1)
        cv2.putText(img, f"{v:.4g}", (4, y + 4), FONT, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    for s in (s0, s1):
        x = int(xy(s, lo)[0])
        text = f"{int(s)}"
        tw = cv2.getTextSize(text, FONT, 0.38, 1)[0][0]
        cv2.putText(img, text, (int(np.clip(x - tw // 2, 0, W - tw)), H - bottom + 16), FONT, 0.38, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.putText(img, "step", (W // 2 - 12, H - 6), FONT, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    label = f"{name} ({'higher' if name in HIGHER_BETTER else 'lower'} is better)"
    cv2.putText(img, label, (left, 18), FONT, 0.48, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def plot_curves(curve_data: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str,
                seeds: Sequence[int] | None = None) -> np.ndarray:
    """A 3 x 3 grid of :func:`_panel`, one per metric, under a title naming each seed's colour.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if not curve_data:
        raise ValueError("no evaluation steps common to every seed: nothing to plot")
    panels = [_panel(n, *curve_data[n]) for n in METRIC_NAMES if n in curve_data]
    n_seeds = next(iter(curve_data.values()))[1].shape[0]
    names = list(seeds) if seeds is not None else list(range(n_seeds))
    legend = ", ".join(f"seed {s} {COLOUR_NAMES[(k + 1) % len(COLOUR_NAMES)]}" for k, s in enumerate(names))
    return add_title(make_grid(panels, ncols=3),
                     f"{title}. Thin: {legend}; thick {COLOUR_NAMES[0]}: their mean; band: mean +- std")


def _write_png(path: Path, image: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        checked_write(cv2.imwrite(str(tmp), np.ascontiguousarray(image[:, :, ::-1])), tmp)
    write_atomic(path, write)


def write_sweep_report(out_dir: str | os.PathLike, histories: Mapping[int, Sequence[Mapping]], dataset: str,
                       select_metric: str = "abs_rel", provenance: Mapping[str, Any] | None = None,
                       title: str = "Seed sweep") -> dict[str, Path]:
    """Write ``sweep.json``, ``sweep.md``, ``sweep_test.png`` (and ``sweep_val.png`` with a validation
    split) to ``out_dir``; returns their paths.

    Raises:
        ValueError: a seed has no test evaluation.
    """
    out_dir = Path(out_dir)
    missing = [s for s, h in histories.items() if not _split(h, "test")]
    if missing:
        raise ValueError(f"seed(s) {', '.join(map(str, missing))} have no test evaluation: was the run trained "
                         "with --do_online_eval and long enough for one (--eval_freq)?")
    reports = {seed: seed_report(h, select_metric) for seed, h in histories.items()}
    summary = summarise(reports)
    paper = PAPER_RESULTS.get(dataset)
    payload = {"dataset": dataset, "select_metric": select_metric, "seeds": list(histories),
               "rules": {k: v["label"] for k, v in summary.items()},
               "summary": summary, "per_seed": reports,
               "paper": {"model": PAPER_MODEL.get(dataset), "metrics": paper} if paper else None,
               "provenance": dict(provenance or {})}
    paths = {"json": write_json(out_dir / "sweep.json", payload),
             "md": write_text(out_dir / "sweep.md", markdown_report(summary, dataset, title, payload["provenance"]))}
    for split in ("test", "val"):
        data = curves(list(histories.values()), split)
        if data:
            n = len(histories)
            img = plot_curves(data, f"{title}: {split} metrics over training steps, {n} seed(s)", list(histories))
            paths[f"png_{split}"] = out_dir / f"sweep_{split}.png"
            _write_png(paths[f"png_{split}"], img)
    return paths

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
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wordepth.compare import FONT, PALETTE
from wordepth.errors import UserError
from wordepth.metrics import HIGHER_BETTER, METRIC_NAMES
from wordepth.outputs import write_array, write_json, write_text
from wordepth.reproducibility import PAPER_MODEL, PAPER_RESULTS
from wordepth.visualize import add_title, make_grid

__all__ = ["HISTORY_FILE", "RULES", "SeedRun", "aggregate", "inspect_seed", "refusal", "run_forwarding_signals", "curves", "markdown_report", "plot_curves", "read_history",
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
                  python: str = sys.executable, replace: bool = False) -> list[str]:
    """``python -m wordepth.cli.train TRAIN_ARGS --seed N --model_name NAME_seedN`` with the online
    evaluations the report needs (later flags win over a config file's); ``resume``: a ``last.pth``;
    ``replace``: start at step 0 over a run made with other settings (``--overwrite``)."""
    cmd = [python, "-m", "wordepth.cli.train", *map(str, train_args), "--seed", str(seed),
           "--model_name", seed_run_name(model_name, seed), "--do_online_eval", "--final_eval"]
    if resume is not None:
        cmd += ["--checkpoint_path", str(resume)]
    if replace:
        cmd += ["--overwrite"]
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
        UserError: a line that is not a JSON object with ``step`` and ``split``.
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
            raise UserError(f"{path}, line {no}: not an evaluation record") from None
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
        raise UserError(f"unknown metric {metric!r}; choose one of {', '.join(METRIC_NAMES)}")
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
        raise UserError(f"no test evaluation at step {step}, where the validation {metric} is best")
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
                    provenance: Mapping[str, Any] | None = None, missing: Mapping[int, str] | None = None,
                    requested: Sequence[int] | None = None) -> str:
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
    if missing:
        held = [s for s in (requested or []) if s not in missing]
        lines += [f"**{len(held)} of {len(held) + len(missing)} seeds** (seeds {', '.join(map(str, held))}); "
                  f"missing: " + "; ".join(f"seed {s}: {why}" for s, why in missing.items())
                  + ". The means below are over the seeds held only.", ""]
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
        raise UserError("no evaluation steps common to every seed: nothing to plot")
    panels = [_panel(n, *curve_data[n]) for n in METRIC_NAMES if n in curve_data]
    n_seeds = next(iter(curve_data.values()))[1].shape[0]
    names = list(seeds) if seeds is not None else list(range(n_seeds))
    legend = ", ".join(f"seed {s} {COLOUR_NAMES[(k + 1) % len(COLOUR_NAMES)]}" for k, s in enumerate(names))
    return add_title(make_grid(panels, ncols=3),
                     f"{title}. Thin: {legend}; thick {COLOUR_NAMES[0]}: their mean; band: mean +- std")


def _write_png(path: Path, image: np.ndarray) -> None:
    write_array(path, image)


def write_sweep_report(out_dir: str | os.PathLike, histories: Mapping[int, Sequence[Mapping]], dataset: str,
                       select_metric: str = "abs_rel", provenance: Mapping[str, Any] | None = None,
                       title: str = "Seed sweep", missing: Mapping[int, str] | None = None) -> dict[str, Path]:
    """Write ``sweep.json``, ``sweep.md``, ``sweep_test.png`` (and ``sweep_val.png`` with a validation
    split) to ``out_dir``; returns their paths.

    Raises:
        UserError: a seed has no test evaluation.
    """
    out_dir = Path(out_dir)
    no_test = [s for s, h in histories.items() if not _split(h, "test")]
    if no_test:
        raise UserError(f"seed(s) {', '.join(map(str, no_test))} have no test evaluation: was the run trained "
                         "with --do_online_eval and long enough for one (--eval_freq)?")
    reports = {seed: seed_report(h, select_metric) for seed, h in histories.items()}
    summary = summarise(reports)
    paper = PAPER_RESULTS.get(dataset)
    missing = {int(k): str(v) for k, v in (missing or {}).items()}
    requested = sorted([*histories, *missing])
    payload = {"dataset": dataset, "select_metric": select_metric, "seeds": list(histories),
               "seeds_requested": requested, "missing": {str(k): v for k, v in missing.items()},
               "rules": {k: v["label"] for k, v in summary.items()},
               "summary": summary, "per_seed": reports,
               "paper": {"model": PAPER_MODEL.get(dataset), "metrics": paper} if paper else None,
               "provenance": dict(provenance or {})}
    paths = {"json": write_json(out_dir / "sweep.json", payload),
             "md": write_text(out_dir / "sweep.md", markdown_report(summary, dataset, title, payload["provenance"],
                                                                   missing, requested))}
    for split in ("test", "val"):
        data = curves(list(histories.values()), split)
        if data:
            n = len(histories)
            img = plot_curves(data, f"{title}: {split} metrics over training steps, {n} seed(s)", list(histories))
            paths[f"png_{split}"] = out_dir / f"sweep_{split}.png"
            _write_png(paths[f"png_{split}"], img)
    return paths


# --------------------------------------------------------------------------- the seeds' runs
SEED_STATES = ("new", "finished", "partial", "failed")


@dataclass
class SeedRun:
    """What a seed's run folder holds, judged against the requested configuration.

    ``state``: ``new`` (nothing to resume), ``finished`` (trained to its last step and evaluated there),
    ``partial`` (stopped half way: ``last.pth`` is resumed) or ``failed`` (stopped before its first
    ``last.pth``: nothing to resume, its leftovers must be replaced). ``differences``: the settings its
    record has other than the requested ones (empty for ``new``).
    """

    seed: int
    run: Path
    state: str
    step: int | None = None
    total: int | None = None
    differences: list[str] = field(default_factory=list)
    note: str = ""

    def describe(self) -> str:
        if self.state == "finished":
            return f"seed {self.seed}: finished ({self.step} steps)"
        if self.state == "partial":
            return f"seed {self.seed}: stopped at step {self.step} of {self.total or '?'}"
        return f"seed {self.seed}: {self.note or self.state}"


def _find(obj: Any, key: str) -> Any:
    """The first value of ``key`` anywhere in nested mappings (a run record's layout may nest it)."""
    if isinstance(obj, Mapping):
        if key in obj:
            return obj[key]
        for v in obj.values():
            found = _find(v, key)
            if found is not None:
                return found
    return None


def _same_training_split(run: Path, recorded: Mapping, requested: Mapping) -> str | None:
    """With a validation split, a run records the training split without the validation scenes
    (``RUN/split_train.txt``): compare that with the one the requested settings make."""
    from wordepth.data.holdout import holdout, split_line

    if requested.get("val_split") is None or recorded.get("val_split") is None:
        return None
    recorded_file = run / "split_train.txt"
    try:
        wanted = [split_line(e) for e in holdout(requested["filenames_file"], requested["val_split"]).train]
        have = [line for line in recorded_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError):
        return f"--filenames_file {requested.get('filenames_file')} (cannot compare with {recorded_file})"
    if wanted != have:
        return f"--filenames_file {requested['filenames_file']} (its training side differs from {recorded_file})"
    return None


def inspect_seed(run: str | os.PathLike, seed: int, requested: Any) -> SeedRun:
    """The state of one seed's run folder and the settings its ``last.pth`` records other than ``requested``
    (an ``argparse.Namespace`` or a run configuration; seed, names and speed settings aside)."""
    from wordepth.checkpoints import load_training_state
    from wordepth.errors import USER_ERRORS
    from wordepth.recorded import differing_settings, flat_settings

    run = Path(run)
    last = run / "last.pth"
    history = read_history(run / HISTORY_FILE) if (run / HISTORY_FILE).is_file() else []
    if not last.is_file():
        leftovers = sorted(run.glob("model-*-best_*")) + ([run / HISTORY_FILE] if history else [])
        if leftovers:
            return SeedRun(seed, run, "failed", note=f"stopped before its first last.pth ({run} holds "
                                                     f"{leftovers[0].name}): nothing to resume")
        return SeedRun(seed, run, "new")
    try:
        state = load_training_state(last, mmap=True)
    except USER_ERRORS as err:
        return SeedRun(seed, run, "failed", note=f"{last} cannot be read ({str(err).splitlines()[0]})")
    step = int(state.get("global_step", 0))
    config = state.get("config", {})
    recorded, wanted = flat_settings(config), flat_settings(requested)
    del state
    ignore = {"filenames_file"} if recorded.get("val_split") is not None else set()
    differences = differing_settings(recorded, wanted, ignore=ignore)
    split = _same_training_split(run, recorded, wanted)
    if split:
        differences.append(split)
    total = None
    config_file = run / "config.json"
    if config_file.is_file():
        try:
            total = _find(json.loads(config_file.read_text(encoding="utf-8")), "total_steps")
        except (OSError, ValueError):
            total = None
    evaluated = any(r["split"] == "test" and int(r.get("updates", -1)) == step for r in history)
    finished = total is not None and step >= int(total) and evaluated
    return SeedRun(seed, run, "finished" if finished else "partial", step=step,
                   total=None if total is None else int(total), differences=differences)


def refusal(conflicts: Sequence[SeedRun], replace_flag: str = "--replace_runs") -> str:
    """One line: the seeds whose runs were made with other settings, the settings, and the two ways on."""
    first = conflicts[0]
    shown = "; ".join(first.differences[:4]) + (f" and {len(first.differences) - 4} more"
                                                 if len(first.differences) > 4 else "")
    seeds = ", ".join(str(c.seed) for c in conflicts)
    return (f"seed(s) {seeds} already have runs made with other settings ({first.run}: {shown}); their numbers are "
            f"not this configuration's: choose a new --model_name or --log_directory, or add {replace_flag} to "
            "train those seeds again from step 0 (their runs are replaced)")


# --------------------------------------------------------------------------- running a seed
STOP_GRACE_S = 8.0  # after a forwarded SIGTERM / SIGINT, how long the training may take to save and stop


def run_forwarding_signals(cmd: Sequence[str], grace_s: float = STOP_GRACE_S,
                           on_kill: Callable[[int], None] | None = None) -> tuple[int, int | None]:
    """Run ``cmd`` (a training) and forward SIGTERM / SIGINT to it: it saves and stops as a single run does.

    The child runs in its own process group, so a Ctrl-C in the terminal reaches it once, through this
    function. A child that has not stopped ``grace_s`` seconds after the signal is killed (its
    checkpoint writes are atomic: the previous ``last.pth`` stays whole) and ``on_kill(pid)`` is called
    (to release what it held).

    Returns:
        (the child's exit status, the signal received or None).
    """
    proc = subprocess.Popen(list(cmd), start_new_session=True)
    received: list[int] = []
    run_forwarding_signals.killed = False  # whether the last child had to be killed

    def forward(signum: int, frame) -> None:
        received.append(signum)
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread
            pass
    try:
        while True:
            try:
                status = proc.wait(timeout=grace_s if received else 0.5)
                break
            except subprocess.TimeoutExpired:
                if received:
                    proc.kill()
                    status = proc.wait()
                    run_forwarding_signals.killed = True
                    if on_kill is not None:
                        on_kill(proc.pid)
                    break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status, (received[0] if received else None)


def release_lock_of(run: str | os.PathLike, pid: int) -> bool:
    """Remove ``RUN/.lock`` if the (killed) process ``pid`` holds it; whether it did."""
    lock = Path(run) / ".lock"
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return False
    if isinstance(owner, dict) and owner.get("pid") == pid:
        lock.unlink(missing_ok=True)
        return True
    return False

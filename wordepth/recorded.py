"""What a run recorded against what is requested now: the settings that decide its numbers.

A seed sweep may reuse a finished seed only when that seed's recorded settings equal the requested
ones apart from the seed (:func:`differing_settings`), and a resumed run may not change how its
checkpoints are measured or selected (:data:`SELECTION_SETTINGS`, :func:`selection_changes`). Both
read a run's record as flat ``option -> value`` pairs (:func:`flat_settings`), whichever layout the
record has (the flat ``args`` of a checkpoint's ``config`` or a sectioned run configuration).

The selected checkpoints record why they were chosen (:func:`selection_record`), and ``wordepth-eval``
prints it next to its numbers (:func:`describe_selection`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["NOT_NUMBERS", "RUN_SPECIFIC", "SELECTION_SETTINGS", "describe_selection", "differing_settings",
           "flat_settings", "selection_changes", "selection_record"]

# options that name or place a run, or ask for one-off outputs: they differ between the seeds of one sweep
RUN_SPECIFIC = frozenset({
    "seed", "model_name", "log_directory", "checkpoint_path", "retrain", "overwrite", "force_config", "eval_only",
    "check_data", "metrics_json", "per_image_csv", "save_vis", "unknown_flags", "mode", "eval_summary_directory",
})
# options that change how fast or how verbosely a run goes, not its numbers (documented as such)
NOT_NUMBERS = frozenset({"log_freq", "save_freq", "num_threads", "no_tqdm", "grad_checkpoint", "eval_batch_size",
                         "device", "compile"})
# what a resumed run may not change: what its evaluations measure and how its checkpoints are selected
SELECTION_SETTINGS = ("val_split", "select_metric", "dataset", "data_path_eval", "gt_path_eval",
                      "filenames_file_eval", "min_depth_eval", "max_depth_eval", "eigen_crop", "garg_crop",
                      "do_kb_crop", "full_frame_eval", "eval_freq", "do_online_eval", "nonfinite")
# sections of a typed run configuration (wordepth.config), merged into one flat mapping
_SECTIONS = ("run", "data", "optim", "eval", "model")
# recorded next to the settings, not settings themselves
_NOT_SETTINGS = frozenset({"provenance", "model_config", "git_commit", "steps_per_epoch", "total_steps", "format",
                           "format_version", "variant_record", "network", "record"})


def flat_settings(record: Any) -> dict[str, Any]:
    """A run's settings as one flat ``option -> value`` mapping.

    Accepts an ``argparse.Namespace``, a (typed, sectioned) dataclass configuration, a checkpoint's
    ``config`` (``{"args": {...}, ...}``), a run folder's ``config.json`` (flat or in sections).
    """
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        record = dataclasses.asdict(record)
    elif not isinstance(record, Mapping):
        record = dict(vars(record))
    if isinstance(record.get("args"), Mapping):  # a checkpoint's config (earlier versions)
        return flat_settings(record["args"])
    if isinstance(record.get("record"), Mapping):  # a checkpoint's config: the run's RunRecord (wordepth.config)
        return flat_settings(record["record"])
    if isinstance(record.get("config"), Mapping) and not any(isinstance(record.get(s), Mapping) for s in _SECTIONS):
        return flat_settings(record["config"])
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key in _NOT_SETTINGS:
            continue
        if key in _SECTIONS and isinstance(value, Mapping):
            for k, v in value.items():
                if k not in _NOT_SETTINGS and not isinstance(v, Mapping):
                    out.setdefault(k, v)
        elif not isinstance(value, Mapping):
            out[key] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    if a is None or b is None:
        return a is b
    return str(a) == str(b)


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "on" if value is True else "off" if value is False else "not given"
    return f"{value:g}" if isinstance(value, float) else str(value)


def differing_settings(recorded: Any, requested: Any, ignore: Iterable[str] = (),
                       only: Iterable[str] | None = None) -> list[str]:
    """The settings whose recorded value differs from the requested one, as ``--name OLD (requested NEW)``.

    Compares the options both sides have, except :data:`RUN_SPECIFIC`, :data:`NOT_NUMBERS` and ``ignore``
    (or only those in ``only``).
    """
    old, new = flat_settings(recorded), flat_settings(requested)
    skip = set(ignore) | RUN_SPECIFIC | NOT_NUMBERS
    keys = [k for k in (only if only is not None else sorted(new)) if k in old and k in new and k not in skip]
    return [f"--{k} {_show(old[k])} (requested {_show(new[k])})" for k in keys if not _same(old[k], new[k])]


def selection_changes(recorded: Any, requested: Any) -> list[str]:
    """The :data:`SELECTION_SETTINGS` a resumed run would change (see :func:`differing_settings`)."""
    return differing_settings(recorded, requested, only=SELECTION_SETTINGS)


# --------------------------------------------------------------------------- selected checkpoints
def selection_record(split: str, metric: str, value: float, step: int, split_file: str | None = None,
                     rule: str | None = None) -> dict:
    """What a selected checkpoint records about its selection (plain data, stored under ``selection``).

    Args:
        split: ``test`` (the original's rule) or ``val`` (a held-out validation split).
        metric, value, step: the metric that chose it, its value, the step (the checkpoint's).
        split_file: the split file that was evaluated.
    """
    return {"split": split, "metric": metric, "value": float(value), "step": int(step),
            "split_file": None if split_file is None else str(split_file),
            "rule": rule or ("selected on validation" if split == "val" else "selected on test (the original's rule)")}


def describe_selection(checkpoint: Mapping | None) -> str:
    """One line on how a checkpoint was chosen, from its ``selection`` record (or that it has none)."""
    sel = checkpoint.get("selection") if isinstance(checkpoint, Mapping) else None
    if not isinstance(sel, Mapping):
        return "checkpoint selection: not recorded (a last.pth, an original-release or an older checkpoint)"
    where = f" of {sel['split_file']}" if sel.get("split_file") else ""
    return (f"checkpoint selection: {sel.get('rule', '?')}: best {sel.get('metric', '?')} "
            f"{float(sel.get('value', float('nan'))):.5f} on the {sel.get('split', '?')} split{where} "
            f"at step {sel.get('step', '?')}")

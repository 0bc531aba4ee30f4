"""Compare evaluation results: a Markdown table and a grouped bar chart.

Each result holds the metrics ``wordepth-eval --metrics_json`` writes (``silog, abs_rel, log10,
rms, sq_rel, log_rms, d1, d2, d3`` and ``count``), at the top level or under a ``"metrics"`` key.
The chart has one group of bars per metric, each bar scaled by the largest value of that metric
so that all metrics share one axis, and the value written above it. The table marks the best
value of each metric in bold (lowest error, highest accuracy). The command is
``wordepth-compare`` (`wordepth.cli.compare`).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from wordepth.errors import UserError
from wordepth.metrics import METRIC_NAMES

HIGHER_BETTER = {"d1", "d2", "d3"}
# tab10 colours (RGB) for the bars of successive files.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
FONT = cv2.FONT_HERSHEY_SIMPLEX


def load_metrics(path: str | Path) -> dict[str, float]:
    """Metric name -> value from a metrics JSON file (top level or under ``"metrics"``).

    Raises:
        FileNotFoundError: the file is missing.
        UserError: it is not JSON, holds none of the metrics, or a value is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not JSON: {err}") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("metrics"), Mapping):
        obj = obj["metrics"]
    if not isinstance(obj, Mapping) or not any(k in obj for k in METRIC_NAMES):
        raise UserError(f"{path} holds none of the metrics {', '.join(METRIC_NAMES)}")
    out: dict[str, float] = {}
    for k in (*METRIC_NAMES, "count"):
        if k in obj:
            try:
                out[k] = float(obj[k])
            except (TypeError, ValueError):
                raise UserError(f"{path}: {k} is not a number ({obj[k]!r})") from None
    return out


def _fmt(name: str, v: float | None) -> str:
    if v is None:
        return "-"
    return str(int(v)) if name == "count" else f"{v:.4f}"


def markdown_table(results: Sequence[Mapping[str, float]], labels: Sequence[str]) -> str:
    """A Markdown table, one row per file; the best value of each metric in bold."""
    cols = [*METRIC_NAMES, "count"]
    header = "| model | " + " | ".join(f"{c} {'↑' if c in HIGHER_BETTER else '↓'}" if c != "count" else c
                                     for c in cols) + " |"
    lines = [header, "|---|" + "---:|" * len(cols)]
    best: dict[str, float] = {}
    for c in METRIC_NAMES:
        vals = [r[c] for r in results if c in r]
        if len(vals) > 1:
            best[c] = max(vals) if c in HIGHER_BETTER else min(vals)
    for label, r in zip(labels, results):
        cells = []
        for c in cols:
            s = _fmt(c, r.get(c))
            if c in best and c in r and r[c] == best[c]:
                s = f"**{s}**"
            cells.append(s)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(results: Sequence[Mapping[str, float]], labels: Sequence[str], bar_h: int = 300) -> np.ndarray:
    """Grouped bar chart, one group per metric, bars normalised by the metric's largest value.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    n = len(results)
    small = 0.38
    value_w = max(cv2.getTextSize(f"{r[m]:.3f}", FONT, small, 1)[0][0]
                  for r in results for m in METRIC_NAMES if m in r)
    bw = max(24, value_w + 6)  # each value fits above its bar
    gap = 24
    group_w = n * bw
    left, right, top = 40, 20, 60 + 22 * ((n + 2) // 3)
    bottom = 50
    W = left + len(METRIC_NAMES) * (group_w + gap) + right
    H = top + bar_h + bottom
    img = np.full((H, W, 3), 255, np.uint8)
    base_y = top + bar_h
    cv2.putText(img, "metrics (bars scaled by the largest value of each metric)", (left, 22), FONT, 0.55,
                (0, 0, 0), 1, cv2.LINE_AA)
    for i, label in enumerate(labels):  # legend
        x = left + (i % 3) * max(200, (W - left) // 3)
        y = 40 + 22 * (i // 3)
        cv2.rectangle(img, (x, y), (x + 14, y + 14), PALETTE[i % len(PALETTE)], -1)
        cv2.putText(img, label.encode("ascii", "replace").decode(), (x + 20, y + 12), FONT, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.line(img, (left - 6, base_y), (W - right, base_y), (0, 0, 0), 1)
    for g, m in enumerate(METRIC_NAMES):
        x0 = left + g * (group_w + gap)
        vals = [r.get(m) for r in results]
        top_val = max((abs(v) for v in vals if v is not None), default=0.0) or 1.0
        for i, v in enumerate(vals):
            if v is None:
                continue
            h = int(round(bar_h * 0.85 * abs(v) / top_val))
            x = x0 + i * bw
            cv2.rectangle(img, (x + 1, base_y - h), (x + bw - 2, base_y - 1), PALETTE[i % len(PALETTE)], -1)
            text = f"{v:.3f}"
            tw = cv2.getTextSize(text, FONT, small, 1)[0][0]
            ty = base_y - h - 4
            cv2.putText(img, text, (x + bw // 2 - tw // 2, ty), FONT, small, (0, 0, 0), 1, cv2.LINE_AA)
        name = f"{m} {'(higher)' if m in HIGHER_BETTER else '(lower)'}"
        for j, part in enumerate(name.split(" ")):
            tw = cv2.getTextSize(part, FONT, 0.45, 1)[0][0]
            cv2.putText(img, part, (x0 + group_w // 2 - tw // 2, base_y + 18 + 16 * j), FONT, 0.45, (0, 0, 0), 1,
                        cv2.LINE_AA)
    return img


def default_label(path: str | Path) -> str:
    """A result's name: the file name without extension, or its folder's name for ``.../metrics.json``."""
    path = Path(path)
    return path.stem if path.stem != "metrics" else path.parent.name or path.stem

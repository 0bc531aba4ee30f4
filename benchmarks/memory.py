"""Peak memory of one training step, each configuration in a fresh subprocess.

A child is this module run as ``python -m benchmarks.memory SPEC_JSON``: it prints one JSON line.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import FULL, QUICK, TARGETS, Settings, set_variant
from wordepth.models.wordepth import WorDepth, preset_config

log = logging.getLogger("benchmark")

ROOT = Path(__file__).resolve().parents[1]  # the children run `python -m benchmarks.memory` from here
MEMORY_VARIANTS = ("original_like", "after", "after_grad_checkpointing")


def _current_rss() -> int:
    """Resident set size of this process in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """Peak resident set of this process's address space in bytes (``VmHWM``).

    Not ``getrusage``'s ``ru_maxrss``: on Linux a child started by fork + exec inherits the
    parent's RSS at the fork into it, so a large benchmark parent would hide the child's peak.
    """
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _reset_peak_rss() -> bool:
    """Resets ``VmHWM`` to the current RSS (Linux >= 4.0); returns whether it worked."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class SavedActivations(torch.autograd.graph.saved_tensors_hooks):
    """Counts the bytes autograd keeps for backward (unique storages) during a forward."""

    def __init__(self):
        self.storages: dict[int, int] = {}
        super().__init__(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        with contextlib.suppress(Exception):
            st = t.untyped_storage()
            self.storages[st.data_ptr()] = st.nbytes()
        return t

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


def memory_child(spec: dict) -> dict:
    """One training step in this (fresh) process; peak RSS growth over the set-up's RSS.

    ``spec``: variant, quick, threads, batch; optional ``preset``, ``hw`` and ``legacy`` (default: the
    run's ``Settings``, the current model), ``warmup`` (one small step first, so that code pages, thread
    pools and one-time buffers are resident before the measured step) and ``env`` (set by the parent).
    """
    torch.set_num_threads(spec["threads"])
    s = QUICK if spec["quick"] else FULL
    torch.manual_seed(0)
    model = WorDepth(preset_config(spec.get("preset", s.preset), legacy=spec.get("legacy", False))).train()
    name = spec["variant"]
    set_variant(model, "after" if name == "after_grad_checkpointing" else name)
    if name == "after_grad_checkpointing":
        model.backbone.set_grad_checkpointing(True)
    B, (H, W) = spec["batch"], spec.get("hw", s.memory_hw)
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(B, 3, H, W, generator=g), torch.randn(B, 1024, generator=g)
    gt = torch.rand(B, 1, H, W, generator=g) * 8 + 0.5
    if spec.get("warmup"):
        model.training_loss(image[:1, :, :64, :64], text[:1], gt[:1, :, :64, :64], "image")["loss"].backward()
        model.zero_grad(set_to_none=True)
    gc.collect()
    peak_reset = _reset_peak_rss()
    base, peak_setup = _current_rss(), _peak_rss()
    saved = SavedActivations()
    t0 = time.perf_counter()
    with saved:
        loss = model.training_loss(image, text, gt, "image")["loss"]
    loss.backward()
    seconds = time.perf_counter() - t0
    peak = _peak_rss()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    mb = 2.0**20
    return {"variant": name, "peak_rss_growth_mb": (peak - base) / mb, "saved_activations_mb": saved.bytes / mb,
            "param_grads_mb": grads / mb, "setup_rss_mb": base / mb, "step_s": seconds,
            "peak_is_from_step": peak > peak_setup, "peak_reset_after_setup": peak_reset}


def _mem_available() -> int:
    """MemAvailable of /proc/meminfo in bytes (0 when unknown)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def memory_children(specs: list[dict], concurrent: bool) -> list[dict]:
    """Runs :func:`memory_child` for each spec in a fresh subprocess."""
    procs = []
    for spec in specs:
        procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks.memory", json.dumps(spec)], cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, **spec.get("env", {})}))
        if not concurrent:
            procs[-1].wait()
    results = []
    for spec, proc in zip(specs, procs):
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"memory measurement {spec} failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
        log.info("memory %s batch %d: %.0f MB peak RSS growth", spec["variant"], spec["batch"],
                 results[-1]["peak_rss_growth_mb"])
    return results


def bench_memory(s: Settings, quick: bool, threads: int, batch: int | None = None) -> dict:
    """Peak RSS growth of a training step per variant, each in a fresh subprocess.

    --quick: measured directly at the batch, the children run concurrently. Full run: one at a
    time at batch 1 and 2 (activation memory is linear in the batch), extrapolated to ``batch``,
    and measured directly at ``batch`` where the extrapolation fits comfortably in MemAvailable
    (an out-of-memory kill on a shared machine could hit another user's process).
    """
    batch = batch or s.memory_batch
    keys = ("peak_rss_growth_mb", "saved_activations_mb")

    def spec(name: str, b: int) -> dict:
        return {"variant": name, "quick": quick, "threads": threads, "batch": b}

    rows = {}
    if quick:
        for name, r in zip(MEMORY_VARIANTS, memory_children([spec(n, batch) for n in MEMORY_VARIANTS], True)):
            rows[name] = {**r, "measured": True, "by_batch": {str(batch): r}}
    else:
        for name in MEMORY_VARIANTS:
            r1, r2 = memory_children([spec(name, 1), spec(name, 2)], concurrent=False)
            row = {"by_batch": {"1": r1, "2": r2},
                   "extrapolated": {k: r1[k] + (batch - 1) * (r2[k] - r1[k]) for k in keys}}
            need = (r1["setup_rss_mb"] + row["extrapolated"]["peak_rss_growth_mb"]) * 2**20
            if batch in (1, 2):
                measured = row["by_batch"][str(batch)]
            elif need < 0.6 * _mem_available():
                measured = row["by_batch"][str(batch)] = memory_children([spec(name, batch)], False)[0]
            else:
                measured = None
                log.info("memory %s batch %d: %.0f MB estimated, not measured directly", name, batch, need / 2**20)
            row.update(measured if measured else row["extrapolated"])
            row["measured"] = measured is not None
            rows[name] = row
    ref = rows["original_like"]
    for row in rows.values():
        row["ratio_to_original_like"] = row["peak_rss_growth_mb"] / ref["peak_rss_growth_mb"]
        row["saved_ratio_to_original_like"] = row["saved_activations_mb"] / ref["saved_activations_mb"]
    return {"size": list(s.memory_hw), "batch": batch, "branch": "image",
            "method": "peak RSS (VmHWM, reset after set-up) minus the RSS after set-up, for one training step "
                      "in a fresh subprocess per configuration (includes the parameter gradients); "
                      "saved_activations_mb: unique storages autograd keeps for backward (saved_tensors_hooks); "
                      "'measured' false: extrapolated linearly from batch 1 and 2",
            "rows": rows, "target_ratio": TARGETS["memory_ratio"]}


if __name__ == "__main__":
    print(json.dumps(memory_child(json.loads(sys.argv[1]))))

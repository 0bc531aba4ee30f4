"""What every benchmark section shares: run sizes, model variants, yardstick and interleaved timing."""
from __future__ import annotations

import contextlib
import copy
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn as nn

from wordepth.models.wordepth import WorDepth, preset_config
from wordepth.runtime import cpu_native_bf16

TARGETS = {"eval_ratio": 1.25, "train_ratio": 1.3, "memory_ratio": 0.5, "data_ratio": 2.25, "text_speedup": 20.0}
# Issue 7's figures for the original code on 2 CPU cores (ratios to the same yardsticks).
ORIGINAL_REPORTED = {"eval_ratio": 1.57, "train_ratio": 1.60, "data_ratio": 4.5}


@dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark run (full: the issue's sizes with Swin-L; quick: the tiny preset)."""

    preset: str
    timm_kwargs: dict
    eval_hw: tuple[int, int]
    train_hw: tuple[int, int]
    memory_hw: tuple[int, int]
    memory_batch: int
    image_hw: tuple[int, int]  # synthetic NYU images
    n_images: int
    n_features: int
    text_batch: int
    gpu_hw: tuple[int, int]
    gpu_batch: int


FULL = Settings("swin_large", {}, (480, 640), (256, 320), (480, 640), 4, (480, 640), 8, 512, 4, (480, 640), 4)
QUICK = Settings("tiny", {"embed_dim": 32, "depths": (2, 2, 2, 2), "num_heads": (1, 2, 4, 8), "window_size": 8},
                 (64, 96), (64, 96), (64, 96), 2, (48, 64), 3, 64, 4, (64, 96), 4)

VARIANTS = {
    # name: (fused attention, WorDepth.fast_paths, channels_last)
    "original_like": (False, False, False),
    "before": (True, False, False),
    "after": (True, True, False),
    "after_channels_last": (True, True, True),
}


def machine_info() -> dict:
    """CPU model, cores, threads, library versions and load, for the report."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_native_bf16(),
        "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def interleaved(fns: dict[str, Callable[[], object]], runs: int, warmup: int = 1,
                reference: str | None = None) -> dict[str, dict]:
    """Times each function ``runs`` times, interleaved, after ``warmup`` calls each.

    Returns per name: median wall and CPU seconds, the raw runs, and (when ``reference`` names
    the yardstick) the median over rounds of the per-round ratio to it.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(runs):
        for name in names if r % 2 == 0 else reversed(names):
            gc.collect()
            w0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    out = {}
    for name in names:
        row = {"wall_s": statistics.median(wall[name]), "cpu_s": statistics.median(cpu[name]),
               "wall_runs": wall[name], "cpu_runs": cpu[name]}
        if reference is not None:
            row["ratio"] = statistics.median(a / b for a, b in zip(wall[name], wall[reference]))
            row["ratio_cpu"] = statistics.median(a / b for a, b in zip(cpu[name], cpu[reference]))
        out[name] = row
    return out


def yardstick(s: Settings, hw: tuple[int, int]) -> nn.Module:
    """timm's Swin (Swin-L window 12 for the full run; the tiny preset's sizes for --quick)."""
    return timm.create_model("swin_large_patch4_window12_384", pretrained=False, features_only=True,
                             img_size=hw, strict_img_size=False, **s.timm_kwargs)


def set_variant(model: WorDepth, name: str) -> None:
    """Switches the attention kind and the fast paths in place (channels-last is a separate copy)."""
    fused, fast, _ = VARIANTS[name]
    for stage in model.backbone.layers:
        for block in stage.blocks:
            block.attn.fused_attn = fused
    model.fast_paths = fast


def build_models(s: Settings, names) -> dict[str, WorDepth]:
    """One model for the NCHW variants and a channels-last copy when asked for (same weights)."""
    torch.manual_seed(0)
    base = WorDepth(preset_config(s.preset))
    models = {}
    for name in names:
        if VARIANTS[name][2]:
            if "cl" not in models:
                models["cl"] = copy.deepcopy(base).to(memory_format=torch.channels_last)
            models[name] = models["cl"]
        else:
            models[name] = base
    return models


def variant_call(models: dict, name: str, fn: Callable[[WorDepth], object]) -> Callable[[], object]:
    def call():
        set_variant(models[name], name)
        return fn(models[name])
    return call


def channels_last_if(name: str, x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if VARIANTS.get(name, (0, 0, False))[2] else x


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs() / b.abs().clamp_min(1e-6)).max().item()

"""Speed and memory of WorDepth on this machine, each figure against a yardstick in the same run.

Every timing runs its yardstick and its candidates in one process, interleaved (the order is
reversed every other round), and reports medians of ``--runs`` rounds after a warm-up, as wall
time and as process CPU time, plus the median of the per-round ratios to the yardstick. Memory is
measured in a fresh subprocess per configuration.

Sections (``--only`` picks some):
  eval    forward, no grad, 1x3x480x640; yardstick: timm ``swin_large_patch4_window12_384``
          (``features_only``, random weights) at the same size.
  train   forward + backward of the image branch, 1x3x256x320; yardstick: the timm Swin's
          forward + backward.
  memory  peak RSS growth of one training step at 480x640 batch 4, with and without gradient
          checkpointing of the Swin blocks (plus the bytes autograd keeps for backward).
  data    one NYU training sample (decode, rotate, crop, augment, normalise; one thread);
          yardstick: decoding its JPEG and depth PNG with PIL.
  text    a batch's text features from the packed store vs. per-sample ``torch.load``.
  gpu     images/s and peak memory at batch 4: fp32, bf16 autocast, bf16 autocast + compile
          (skipped with a note without CUDA).
  profile torch.profiler of one evaluation forward: time per Swin stage / model stage and the
          top operators.

Model variants: ``original_like`` (explicit softmax attention and convolutions on the current
model's zero maps, as the original code computes), ``before`` (fused attention), ``after``
(fused attention, zero work skipped: ``WorDepth.skip_zero_work``), ``after_channels_last``.

    python scripts/benchmark.py --out bench.json          # Swin-L, full sizes: tens of minutes on 2 cores
    python scripts/benchmark.py --quick --out bench.json  # tiny preset, tiny sizes: seconds
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from PIL import Image  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from wordepth.data import transforms as T  # noqa: E402
from wordepth.data.nyu import NYUDataset  # noqa: E402
from wordepth.data.synthetic import make_synthetic_dataset  # noqa: E402
from wordepth.data.text_features import TextFeatureStore, make_cuda_tagged_file, pack_features  # noqa: E402
from wordepth.models.wordepth import WorDepth, preset_config  # noqa: E402

log = logging.getLogger("benchmark")

# memory first: its subprocesses then start from a small parent
SECTIONS = ("memory", "eval", "train", "data", "text", "gpu", "profile")
TARGETS = {"eval_ratio": 1.25, "train_ratio": 1.3, "memory_ratio": 0.5, "data_ratio": 2.25, "text_speedup": 20.0}
# Issue 7's figures for the original code on 2 CPU cores (ratios to the same yardsticks).
ORIGINAL_REPORTED = {"eval_ratio": 1.57, "train_ratio": 1.60, "data_ratio": 4.5}
MEMORY_VARIANTS = ("original_like", "after", "after_grad_checkpointing")


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
    # name: (fused attention, skip_zero_work, channels_last)
    "original_like": (False, False, False),
    "before": (True, False, False),
    "after": (True, True, False),
    "after_channels_last": (True, True, True),
}


# --------------------------------------------------------------------------- helpers
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
    """Switches attention kind and zero-work skipping in place (channels-last is a separate copy)."""
    fused, skip, _ = VARIANTS[name]
    for stage in model.backbone.layers:
        for block in stage.blocks:
            block.attn.fused_attn = fused
    model.skip_zero_work = skip


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


# --------------------------------------------------------------------------- eval / train
def bench_eval(s: Settings, runs: int) -> dict:
    H, W = s.eval_hw
    names = list(VARIANTS)
    models = build_models(s, names)
    for m in models.values():
        m.eval()
    yard = yardstick(s, s.eval_hw).eval()
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(1, 3, H, W, generator=g), torch.randn(1, 1024, generator=g)
    outputs = {}

    def forward(name):
        def run(m):
            outputs[name] = m(channels_last_if(name, image), text)
        return variant_call(models, name, run)

    fns = {"yardstick": lambda: yard(image)}
    fns.update({name: forward(name) for name in names})
    with torch.no_grad():
        rows = interleaved(fns, runs, reference="yardstick")
    return {
        "size": [H, W], "batch": 1, "yardstick": "timm swin_large_patch4_window12_384 features_only"
        if s.preset == "swin_large" else "timm Swin with the tiny preset's sizes",
        "rows": rows,
        "max_rel_diff_after_vs_before": rel_diff(outputs["after"], outputs["before"]),
        "max_rel_diff_channels_last_vs_before": rel_diff(outputs["after_channels_last"], outputs["before"]),
        "target_ratio": TARGETS["eval_ratio"], "original_reported_ratio": ORIGINAL_REPORTED["eval_ratio"],
    }


def bench_train(s: Settings, runs: int) -> dict:
    H, W = s.train_hw
    names = list(VARIANTS) + ["after_grad_checkpointing"]
    models = build_models(s, list(VARIANTS))
    ckpt = copy.deepcopy(models["after"])
    ckpt.backbone.set_grad_checkpointing(True)
    for m in (*models.values(), ckpt):
        m.train()
    yard = yardstick(s, s.train_hw).train()
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(1, 3, H, W, generator=g), torch.randn(1, 1024, generator=g)
    gt = torch.rand(1, 1, H, W, generator=g) * 8 + 0.5

    def yard_step():
        yard.zero_grad(set_to_none=True)
        sum(f.mean() for f in yard(image)).backward()

    def step(name):
        def run(m):
            m.zero_grad(set_to_none=True)
            m.training_loss(channels_last_if(name, image), text, gt, "image")["loss"].backward()
        if name == "after_grad_checkpointing":
            return lambda: (set_variant(ckpt, "after"), run(ckpt))
        return variant_call(models, name, run)

    fns = {"yardstick": yard_step}
    fns.update({name: step(name) for name in names})
    rows = interleaved(fns, runs, reference="yardstick")
    return {"size": [H, W], "batch": 1, "branch": "image", "rows": rows,
            "target_ratio": TARGETS["train_ratio"], "original_reported_ratio": ORIGINAL_REPORTED["train_ratio"]}


# --------------------------------------------------------------------------- memory
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
    """One training step in this (fresh) process; peak RSS growth over the set-up's RSS."""
    torch.set_num_threads(spec["threads"])
    s = QUICK if spec["quick"] else FULL
    torch.manual_seed(0)
    model = WorDepth(preset_config(s.preset)).train()
    name = spec["variant"]
    set_variant(model, "after" if name == "after_grad_checkpointing" else name)
    if name == "after_grad_checkpointing":
        model.backbone.set_grad_checkpointing(True)
    B, (H, W) = spec["batch"], s.memory_hw
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(B, 3, H, W, generator=g), torch.randn(B, 1024, generator=g)
    gt = torch.rand(B, 1, H, W, generator=g) * 8 + 0.5
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


def _memory_children(specs: list[dict], concurrent: bool) -> list[dict]:
    """Runs :func:`memory_child` for each spec in a fresh subprocess."""
    procs = []
    for spec in specs:
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--memory-child",
                                       json.dumps(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
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
        for name, r in zip(MEMORY_VARIANTS, _memory_children([spec(n, batch) for n in MEMORY_VARIANTS], True)):
            rows[name] = {**r, "measured": True, "by_batch": {str(batch): r}}
    else:
        for name in MEMORY_VARIANTS:
            r1, r2 = _memory_children([spec(name, 1), spec(name, 2)], concurrent=False)
            row = {"by_batch": {"1": r1, "2": r2},
                   "extrapolated": {k: r1[k] + (batch - 1) * (r2[k] - r1[k]) for k in keys}}
            need = (r1["setup_rss_mb"] + row["extrapolated"]["peak_rss_growth_mb"]) * 2**20
            if batch in (1, 2):
                measured = row["by_batch"][str(batch)]
            elif need < 0.6 * _mem_available():
                measured = row["by_batch"][str(batch)] = _memory_children([spec(name, batch)], False)[0]
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


# --------------------------------------------------------------------------- data
def original_style_sample(rgb: Path, depth_path: Path, rng: random.Random, input_hw: tuple[int, int],
                          degree: float = 2.5) -> dict:
    """The original loader's NYU training sample: PIL rotation, float numpy augmentation,
    ToTensor + Normalize (torch ops), for the before/after comparison."""
    image, depth = Image.open(rgb), Image.open(depth_path)
    if (image.height, image.width) == tuple(input_hw):
        top, bottom, left, right = T.nyu_valid_box(image.height, image.width)
        d = np.array(depth)
        mask = np.zeros_like(d)
        mask[top:bottom, left:right] = 1
        d[mask == 0] = 0
        depth = Image.fromarray(d)
    angle = (rng.random() - 0.5) * 2 * degree
    image = image.rotate(angle, resample=Image.BILINEAR)
    depth = depth.rotate(angle, resample=Image.NEAREST)
    image = np.asarray(image, dtype=np.float32) / 255.0
    depth = np.expand_dims(np.asarray(depth, dtype=np.float32), axis=2) / 1000.0
    if image.shape[:2] != tuple(input_hw):
        x, y = rng.randint(0, image.shape[1] - input_hw[1]), rng.randint(0, image.shape[0] - input_hw[0])
        image, depth = image[y:y + input_hw[0], x:x + input_hw[1]], depth[y:y + input_hw[0], x:x + input_hw[1]]
    if rng.random() > 0.5:
        image, depth = image[:, ::-1, :].copy(), depth[:, ::-1, :].copy()
    if rng.random() > 0.5:
        image = image ** rng.uniform(0.9, 1.1) * rng.uniform(0.75, 1.25)
        colors = np.random.uniform(0.9, 1.1, size=3)
        white = np.ones((image.shape[0], image.shape[1]))
        image = np.clip(image * np.stack([white * colors[i] for i in range(3)], axis=2), 0, 1)
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose((2, 0, 1)))).float()
    mean, std = torch.tensor(T.IMAGENET_MEAN)[:, None, None], torch.tensor(T.IMAGENET_STD)[:, None, None]
    return {"image": (tensor - mean) / std, "depth": torch.from_numpy(np.ascontiguousarray(depth.transpose((2, 0, 1))))}


def bench_data(s: Settings, runs: int, workdir: Path) -> dict:
    paths = make_synthetic_dataset(workdir / "synthetic", "nyu", n_train=s.n_images, n_test=0,
                                   height=s.image_hw[0], width=s.image_hw[1], seed=0)
    ds = NYUDataset(paths["train_split"], paths["data_path"], paths["gt_path"], paths["text_feat_dir"],
                    mode="train", input_height=s.image_hw[0], input_width=s.image_hw[1], seed=0)
    files = [(ds.data_path / e.rgb.lstrip("/"), ds.gt_path / e.depth.lstrip("/")) for e in ds.entries]

    def pil_decode():
        for rgb, depth in files:
            for path in (rgb, depth):
                with Image.open(path) as im:
                    im.load()

    def wordepth_samples():
        for i, entry in enumerate(ds.entries):
            ds.load(entry, T.sample_rng(0, 0, i))

    def original_samples():
        for i, (rgb, depth) in enumerate(files):
            original_style_sample(rgb, depth, T.sample_rng(0, 0, i), s.image_hw)

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        rows = interleaved({"pil_decode": pil_decode, "original_style": original_samples,
                            "wordepth": wordepth_samples}, runs, reference="pil_decode")
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    for row in rows.values():
        row["per_sample_ms"] = row["wall_s"] / len(files) * 1e3
    return {"image_size": list(s.image_hw), "samples": len(files), "threads": 1,
            "what": "NYUDataset.load: decode (cv2) + depth zeroing + rotate + crop + flip + colour augment + "
                    "normalise, without the text feature; yardstick: PIL decode of the JPEG and the depth PNG",
            "rows": rows, "target_ratio": TARGETS["data_ratio"],
            "original_reported_ratio": ORIGINAL_REPORTED["data_ratio"]}


# --------------------------------------------------------------------------- text
def bench_text(s: Settings, runs: int, workdir: Path) -> dict:
    root = workdir / "text_feat"
    g = torch.Generator().manual_seed(0)
    keys = [f"scene_{i // 16:03d}/rgb_{i:05d}" for i in range(s.n_features)]
    for key in keys:
        feature = torch.randn(1, 1024, generator=g)
        make_cuda_tagged_file(root / "nyu" / "train" / f"{key}.pt", (feature / feature.norm()).half())
    pack_features(root, "nyu", "train")
    store = TextFeatureStore(root, "nyu", "train")
    order = random.Random(0).sample(keys, len(keys))  # a shuffled epoch
    batches = [order[i:i + s.text_batch] for i in range(0, len(order), s.text_batch)]

    def per_file():
        for batch in batches:
            torch.stack([torch.load(store.path(k), map_location="cpu", weights_only=True).reshape(-1).float()
                         for k in batch])

    def packed():
        for batch in batches:
            store.get_many(batch)

    assert store.packed
    rows = interleaved({"per_file_torch_load": per_file, "packed_store": packed}, runs)
    a, b = rows["per_file_torch_load"], rows["packed_store"]
    return {"features": len(keys), "batch": s.text_batch, "rows": rows,
            "per_batch_ms": {"per_file_torch_load": a["wall_s"] / len(batches) * 1e3,
                             "packed_store": b["wall_s"] / len(batches) * 1e3},
            "speedup": statistics.median(x / y for x, y in zip(a["wall_runs"], b["wall_runs"])),
            "target_speedup": TARGETS["text_speedup"]}


# --------------------------------------------------------------------------- gpu
def bench_gpu(s: Settings, runs: int, device: str = "cuda") -> dict:
    """images/s (eval forward) at batch ``gpu_batch``: fp32, bf16 autocast, bf16 autocast + compile."""
    if device == "cuda" and not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine: fp32 / bf16 autocast / bf16 + torch.compile rows "
                           "not measured"}
    dev = torch.device(device)
    B, (H, W) = s.gpu_batch, s.gpu_hw
    torch.manual_seed(0)
    model = WorDepth(preset_config(s.preset)).to(dev).eval()
    yard = yardstick(s, s.gpu_hw).to(dev).eval()
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(B, 3, H, W, generator=g).to(dev), torch.randn(B, 1024, generator=g).to(dev)
    compiled = torch.compile(model)
    configs = {
        "yardstick_fp32": (yard, False, (image,)),
        "fp32": (model, False, (image, text)),
        "bf16_autocast": (model, True, (image, text)),
        "bf16_autocast_compile": (compiled, True, (image, text)),
    }

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    rows = {}
    for name, (net, bf16, args) in configs.items():
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        times = []
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            for i in range(runs + 2):  # two warm-up calls (compilation)
                sync()
                t0 = time.perf_counter()
                net(*args)
                sync()
                if i >= 2:
                    times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        rows[name] = {"s_per_batch": t, "images_per_s": B / t,
                      "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None}
    return {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else device, "size": [H, W],
            "batch": B, "rows": rows}


# --------------------------------------------------------------------------- profile
@contextlib.contextmanager
def labelled(modules: dict[str, nn.Module]):
    """Marks each module's forward as a profiler range named after it."""
    handles, open_ranges = [], {}

    def pre(name):
        def hook(module, args):
            open_ranges[name] = record_function(name)
            open_ranges[name].__enter__()
        return hook

    def post(name):
        def hook(module, args, out):
            open_ranges.pop(name).__exit__(None, None, None)
        return hook

    for name, module in modules.items():
        handles += [module.register_forward_pre_hook(pre(name)), module.register_forward_hook(post(name))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def bench_profile(s: Settings, top: int = 15) -> dict:
    """One evaluation forward of the ``after`` model under torch.profiler."""
    H, W = s.eval_hw
    torch.manual_seed(0)
    model = WorDepth(preset_config(s.preset)).eval()
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(1, 3, H, W, generator=g), torch.randn(1, 1024, generator=g)
    bb = model.backbone
    modules = {"swin.patch_embed": bb.patch_embed}
    modules.update({f"swin.stage{i + 1}": stage for i, stage in enumerate(bb.layers)})
    stages = ("encode_image", "encode_text", "sample", "decode", "to_depth")

    def forward():
        with record_function("encode_image"):
            feats = model.encode_image(image)
        with record_function("encode_text"):
            mean, std, logvar = model.encode_text(text)
        with record_function("sample"):
            z, _ = model.sample("image", feats["x"], mean, std, logvar)
        with record_function("decode"):
            d = model.decode(z, feats["x"], feats["x3"], feats["x2"])
        with record_function("to_depth"):
            return model.to_depth(d, feats["metric"], "image")

    with torch.no_grad():
        forward()
        with labelled(modules), profile(activities=[ProfilerActivity.CPU]) as prof:
            forward()
    events = prof.key_averages()
    by_key = {e.key: e for e in events}
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    ranges = {k: by_key[k].cpu_time_total / 1e6 for k in (*modules, *stages) if k in by_key}
    ops = sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)[:top]
    return {
        "size": [H, W], "variant": "after", "total_cpu_s": total, "ranges_cpu_s": ranges,
        "top_ops": [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "calls": e.count,
                     "share": e.self_cpu_time_total / 1e6 / total} for e in ops],
        "table": events.table(sort_by="self_cpu_time_total", row_limit=top),
    }


# --------------------------------------------------------------------------- report
def print_report(res: dict) -> None:
    m = res["machine"]
    print(f"\nWorDepth benchmark ({res['preset']}{', quick' if res['quick'] else ''}) on {m['cpu']}, "
          f"{m['cores']} cores, {m['torch_threads']} threads, torch {m['torch']}")
    for key, title in (("eval", "eval forward"), ("train", "train step (image branch)")):
        if key in res:
            sec = res[key]
            print(f"\n{title} {sec['size'][0]}x{sec['size'][1]} batch {sec['batch']}: "
                  f"target <= {sec['target_ratio']}x yardstick")
            print(f"  {'':28s}{'wall s':>9s}{'cpu s':>9s}{'ratio':>8s}{'ratio cpu':>11s}")
            for name, row in sec["rows"].items():
                print(f"  {name:28s}{row['wall_s']:9.3f}{row['cpu_s']:9.3f}"
                      f"{row['ratio']:8.2f}{row['ratio_cpu']:11.2f}")
            if key == "eval":
                print(f"  max relative difference after vs before: {sec['max_rel_diff_after_vs_before']:.2e}")
    if "memory" in res:
        sec = res["memory"]
        print(f"\nmemory, training step {sec['size'][0]}x{sec['size'][1]} batch {sec['batch']}: "
              f"target checkpointed <= {sec['target_ratio']}x original")
        for name, row in sec["rows"].items():
            print(f"  {name:28s}{'' if row['measured'] else '~'}peak RSS growth {row['peak_rss_growth_mb']:7.0f} MB "
                  f"({row['ratio_to_original_like']:.2f}x), saved for backward {row['saved_activations_mb']:8.0f} MB "
                  f"({row['saved_ratio_to_original_like']:.2f}x)")
    if "data" in res:
        sec = res["data"]
        print(f"\nNYU training sample {sec['image_size'][0]}x{sec['image_size'][1]}, one thread: "
              f"target <= {sec['target_ratio']}x PIL decode")
        for name, row in sec["rows"].items():
            print(f"  {name:28s}{row['per_sample_ms']:9.1f} ms/sample{row['ratio']:8.2f}x")
    if "text" in res:
        sec = res["text"]
        print(f"\ntext features, batch {sec['batch']}: per-file {sec['per_batch_ms']['per_file_torch_load']:.2f} "
              f"ms, packed {sec['per_batch_ms']['packed_store']:.3f} ms: {sec['speedup']:.0f}x "
              f"(target >= {sec['target_speedup']:.0f}x)")
    if "gpu" in res:
        sec = res["gpu"]
        if "skipped" in sec:
            print(f"\ngpu: skipped ({sec['skipped']})")
        else:
            print(f"\ngpu {sec['device']} {sec['size'][0]}x{sec['size'][1]} batch {sec['batch']}:")
            for name, row in sec["rows"].items():
                print(f"  {name:28s}{row['images_per_s']:9.2f} images/s  peak {row['peak_memory_mb'] or 0:8.0f} MB")
    if "profile" in res:
        sec = res["profile"]
        print(f"\nprofile (after, eval {sec['size'][0]}x{sec['size'][1]}): {sec['total_cpu_s']:.2f} s CPU")
        for name, t in sec["ranges_cpu_s"].items():
            print(f"  {name:28s}{t:9.3f} s  {t / sec['total_cpu_s']:6.1%}")
        print(sec["table"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset and tiny sizes (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds per measurement (median; >= 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the model timings (default: 2; 1 with --quick, where tiny "
                             "operators on a shared machine suffer from thread synchronisation)")
    parser.add_argument("--memory-batch", type=int, default=None, help="batch of the memory section (default 4)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return {}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sections = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if args.runs < 3:
        raise SystemExit("--runs must be at least 3 (medians of >= 3 runs)")
    if args.threads is None:
        args.threads = 1 if args.quick else 2
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else FULL
    res: dict = {"preset": s.preset, "quick": args.quick, "runs": args.runs, "machine": machine_info(),
                 "targets": TARGETS}
    with tempfile.TemporaryDirectory(prefix="wordepth_bench_") as tmp:
        for name in sections:
            log.info("benchmark: %s", name)
            t0 = time.perf_counter()
            if name == "eval":
                res["eval"] = bench_eval(s, args.runs)
            elif name == "train":
                res["train"] = bench_train(s, args.runs)
            elif name == "memory":
                res["memory"] = bench_memory(s, args.quick, args.threads, args.memory_batch)
            elif name == "data":
                res["data"] = bench_data(s, args.runs, Path(tmp))
            elif name == "text":
                res["text"] = bench_text(s, args.runs, Path(tmp))
            elif name == "gpu":
                res["gpu"] = bench_gpu(s, args.runs)
            elif name == "profile":
                res["profile"] = bench_profile(s)
            res.setdefault("section_seconds", {})[name] = time.perf_counter() - t0
            log.info("benchmark: %s took %.1f s", name, res["section_seconds"][name])
            gc.collect()
    res["machine"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print_report(res)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
        log.info("wrote %s", args.out)
    return res


if __name__ == "__main__":
    main()

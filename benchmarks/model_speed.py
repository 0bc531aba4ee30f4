"""Model speed: evaluation forward and training step against timm's Swin, GPU throughput, a profile."""
from __future__ import annotations

import contextlib
import copy
import statistics
import time

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.common import (
    ORIGINAL_REPORTED,
    TARGETS,
    VARIANTS,
    Settings,
    build_models,
    channels_last_if,
    interleaved,
    rel_diff,
    set_variant,
    variant_call,
    yardstick,
)
from wordepth.models.wordepth import WorDepth, preset_config
from wordepth.runtime import autocast


# --------------------------------------------------------------------------- eval / train
def bench_eval(s: Settings, runs: int) -> dict:
    """Evaluation forward (no grad) of every variant against timm's Swin at ``s.eval_hw``, batch 1."""
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
    """Image-branch training step (forward + backward) of every variant and of ``after`` with Swin
    gradient checkpointing, against timm's Swin forward + backward at ``s.train_hw``, batch 1."""
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



# Dense peak TFLOP/s of common cards (vendor data sheets): (float32 without tensor cores, bfloat16 tensor cores).
GPU_PEAK_TFLOPS = {
    "H100 PCIe": (51.2, 756.0), "H100": (66.9, 989.4), "H200": (66.9, 989.4), "GH200": (66.9, 989.4),
    "A100": (19.5, 312.0), "L40S": (91.6, 362.1), "L4": (30.3, 121.0), "A10": (31.2, 125.0),
    "RTX 4090": (82.6, 165.2), "RTX 3090": (35.6, 71.0),
}


def gpu_peak_tflops(name: str) -> tuple[float, float] | None:
    """(fp32, bf16) dense peak of a card by its ``torch.cuda.get_device_name``, None if unknown."""
    for key, peak in GPU_PEAK_TFLOPS.items():  # "H100 PCIe" before "H100"
        if key in name:
            return peak
    return None


def bench_gpu(s: Settings, runs: int, device: str = "cuda") -> dict:
    """images/s (eval forward) at batch ``gpu_batch``: fp32, bf16 autocast, bf16 autocast + compile; peak
    memory and model FLOP utilisation (FLOPs of a forward, counted by ``torch.utils.flop_counter``,
    per second, over the card's dense peak: float32 for fp32, bfloat16 tensor cores for bf16)."""
    from torch.utils.flop_counter import FlopCounterMode

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

    card = torch.cuda.get_device_name(0) if dev.type == "cuda" else device
    peak = gpu_peak_tflops(card)
    flops = {}
    with torch.no_grad():
        for key, net, args in (("yardstick", yard, (image,)), ("model", model, (image, text))):
            with FlopCounterMode(display=False) as counter:
                net(*args)
            flops[key] = counter.get_total_flops()
    rows = {}
    for name, (net, bf16, args) in configs.items():
        if dev.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        times = []
        with torch.no_grad(), autocast(dev, "bf16" if bf16 else "fp32"):
            for i in range(runs + 2):  # two warm-up calls (compilation)
                sync()
                t0 = time.perf_counter()
                net(*args)
                sync()
                if i >= 2:
                    times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        achieved = flops["yardstick" if name.startswith("yardstick") else "model"] / t / 1e12
        rows[name] = {"s_per_batch": t, "images_per_s": B / t, "tflops_per_s": achieved,
                      "mfu": achieved / peak[1 if bf16 else 0] if peak else None,
                      "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None}
    return {"device": card, "size": [H, W], "batch": B, "flops_per_batch": flops, "peak_tflops": peak, "rows": rows}



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

    def forward():  # the stages of WorDepth.predict, the default forward
        with record_function("encode_image"):
            feats = model.encode_image(image)
        with record_function("encode_text"):
            mean, std, logvar = model.encode_text(text)
        with record_function("sample"):
            z, _ = model.sample("image", feats["x"], mean, std, logvar)
        with record_function("decode"):
            latents = model.decode(z, feats["x"], feats["x3"], feats["x2"])
        with record_function("to_depth"):
            return model.to_depth(latents, feats["metric"], "image")

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


def sgemm_rate(n: int, runs: int) -> dict:
    """The machine's float32 matrix-multiply rate: an (n, n) @ (n, n) product, median of ``runs``."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.mm(a, b)  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    return {"n": n, "s": t, "gflops": 2 * n**3 / t / 1e9}


def counted_gflop(fn) -> float:
    """The work of one call of ``fn`` as ``torch.utils.flop_counter`` counts it (matrix products and
    convolutions, forward and backward), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def bench_rate(s: Settings, runs: int, sgemm_n: int = 4096) -> dict:
    """Counted work over time: the evaluation forward (``s.eval_hw``, fp32, batch 1) and the image
    branch's training step (``s.train_hw``, batch 1) of this project (``after``) and of the original's
    computation (``original_like``: the counted work only), against the sgemm rate measured in the
    same process before and after (the mean of the two)."""
    models = build_models(s, ("original_like", "after"))
    g = torch.Generator().manual_seed(0)
    H, W = s.eval_hw
    image, text = torch.randn(1, 3, H, W, generator=g), torch.randn(1, 1024, generator=g) * 0.05
    h, w = s.train_hw
    t_image, t_text = torch.randn(1, 3, h, w, generator=g), torch.randn(1, 1024, generator=g) * 0.05
    gt = torch.rand(1, 1, h, w, generator=g) * 5 + 0.5

    def forward(model):
        model.eval()
        with torch.no_grad():
            model(image, text)

    def step(model):
        model.train()
        model.zero_grad(set_to_none=True)
        model.training_loss(t_image, t_text, gt, "image")["loss"].backward()

    before = sgemm_rate(sgemm_n, runs)
    rows = {}
    for key, fn in (("eval_forward", forward), ("train_step", step)):
        gflop = {}
        for name in ("original_like", "after"):
            set_variant(models[name], name)
            gflop[name] = counted_gflop(lambda: fn(models[name]))
        set_variant(models["after"], "after")
        fn(models["after"])  # warm-up (size caches)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn(models["after"])
            times.append(time.perf_counter() - t0)
        rows[key] = {"gflop": gflop["after"], "gflop_original": gflop["original_like"],
                     "s": statistics.median(times)}
    after = sgemm_rate(sgemm_n, runs)
    rate = (before["gflops"] + after["gflops"]) / 2
    for row in rows.values():
        row["gflops"] = row["gflop"] / row["s"]
        row["ratio_to_sgemm"] = row["gflops"] / rate
    return {"eval_size": [H, W], "train_size": [h, w], "sgemm_gflops": rate, "sgemm_before": before,
            "sgemm_after": after, "rows": rows}

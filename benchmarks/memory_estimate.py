"""GPU memory of one training step per configuration, derived without a GPU; checked against CPU peaks.

``python -m benchmarks.memory_estimate`` prints the table of docs/performance.md ("Memory"): NYU and
KITTI (input size and batch from ``configs/arguments_train_*.txt``), current and legacy model, fp32 /
bf16 / fp16 autocast, gradient checkpointing off / on. ``--check`` compares the method with the
measured peak resident memory of CPU training steps (tiny preset; :mod:`benchmarks.memory` measures,
each in a fresh process). ``--quick``: the tiny preset at small sizes (seconds).

Method (nothing is allocated: every tensor is a ``FakeTensor``, which has a shape, dtype and device
but no data):

1. Activations, with CUDA's own autocast rules. The network runs its training forward (image branch:
   it runs every module the text branch runs, plus the sampler and the metric head) on fake *CUDA*
   tensors with CUDA autocast switched on in the dispatcher (``torch.set_autocast_enabled("cuda")``),
   so PyTorch's ``AutocastCUDA`` kernels decide each op's dtype (matmul / conv / linear / SDPA in
   bf16 or fp16, layer_norm / softmax / exp / sum in fp32, ...), not a list kept here. A dispatch mode
   (:class:`Allocations`) adds up the bytes of every storage an op creates and subtracts them when the
   storage is freed; what is still alive after the loss is what the backward needs (saved tensors,
   autocast's low-precision weight copies, checkpointed blocks' inputs), ``activations``.
   SDPA: CUDA picks the memory-efficient kernel for this network (flash attention takes no mask;
   the priority order is flash, efficient, math, cuDNN), which the fake run reproduces
   (:func:`efficient_attention`: autocast's cast, the mask expanded as a view, as ``attention.cpp`` does).
2. The backward, on fake CPU tensors in fp32 (the autograd engine cannot run fake CUDA tensors
   without a GPU), the same CUDA code path (fused attention, memory-efficient kernel, whose backward
   allocates the bias gradient at full size): the peak of live bytes during forward + backward. Its
   excess over the fp32 activations (parameter gradients, activation gradients, recomputed blocks) is
   taken for every precision: an upper estimate under autocast, whose activation gradients are half
   the size.
3. Weights, gradients and Adam's two moments: 4 + 4 + 8 bytes per trainable parameter (fp32 master
   weights under autocast); ``optimizer.step()`` (foreach Adam) adds one parameter-sized temporary.

peak = weights + Adam + inputs + max(forward peak, backward peak, gradients + step temporary), as the
CUDA caching allocator counts it (``torch.cuda.max_memory_allocated``). ``nvidia-smi`` shows more: the
CUDA context (0.3-0.6 GB) and the allocator's cached, fragmented blocks (typically 5-15 %).
"""
from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks.common import set_variant
from benchmarks.memory import memory_children
from wordepth.models import fast_paths
from wordepth.models.wordepth import WorDepth, WorDepthConfig, preset_config
from wordepth.outputs import write_json

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CARDS = ((16, "V100-16"), (24, "RTX 3090 / 4090"), (40, "A100-40"), (80, "A100-80 / H100-80"))  # GiB, the class
# The CPU check: tiny preset, steps of 0.1-0.4 GB, fp32 (what a CPU runs); measured agreement -12 % to +1 %
# (docs/performance.md), tests/test_memory_estimate.py allows 10 % + 25 MB.
CHECK_SIZES = (((256, 320), 2), ((384, 512), 2))
QUICK_CHECK_SIZES = (((256, 320), 2),)


# ---------------------------------------------------------------- counting
class Allocations(TorchDispatchMode):
    """Live bytes of the storages created under this mode, and their peak (``reset_peak`` to restart)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._sizes: dict[int, int] = {}

    def _freed(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = st._cdata
                if key not in self._sizes:  # a new storage (a view shares its base's)
                    self._sizes[key] = st.nbytes()
                    self.live += st.nbytes()
                    weakref.finalize(st, self._freed, key)
        self.peak = max(self.peak, self.live)
        return out


def efficient_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
                        dropout_p: float = 0.0, **_) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` as CUDA computes it for this network: autocast's cast (SDPA is a
    lower-precision op), the mask expanded to (B, heads, L, S) as a view (padded first when its strides
    are not multiples of 8), the memory-efficient kernel, which keeps q, k, v, the mask, the output and
    the log-sum-exp for backward (``aten/src/ATen/native/transformers/attention.cpp``). Put in place of
    SDPA by :func:`trace_step` (a function mode would not reach the recomputation of checkpointed blocks)."""
    dev, mask = q.device.type, attn_mask
    if torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
        q, k, v = (t.to(dtype) for t in (q, k, v))
        mask = None if mask is None else mask.to(dtype)
    if mask is not None:
        if mask.stride(-1) != 1 or any(s % 8 for s in mask.stride()[:-1]):
            n = mask.shape[-1]
            mask = F.pad(mask, (0, 8 - n % 8))[..., :n]
        mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, mask, grad, dropout_p)[0]


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype | None):
    """CUDA autocast in the dispatcher (``torch.autocast("cuda")`` refuses to start without a GPU)."""
    if dtype is None:
        yield
        return
    was, was_dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    torch.autocast_increment_nesting()
    try:
        yield
    finally:
        if torch.autocast_decrement_nesting() == 0:
            torch.clear_autocast_cache()
        torch.set_autocast_enabled("cuda", was)
        torch.set_autocast_dtype("cuda", was_dtype)


def trace_step(cfg: WorDepthConfig, hw: tuple[int, int], batch: int, *, device: str = "cuda",
               precision: str = "fp32", checkpointing: bool = False, backward: bool = False,
               cuda_path: bool = True, original: bool = False) -> dict:
    """One image-branch training step on fake tensors; bytes above the weights and the inputs.

    Returns ``activations`` (alive after the loss), ``forward_peak``, ``backward_peak`` (with
    ``backward``; it holds the parameter gradients at its end: ``gradients``). ``cuda_path``: the
    code CUDA runs (fused attention, memory-efficient kernel) also on a CPU device; off, what a CPU runs.
    ``original``: the original release's computation (explicit softmax attention, no fast paths).
    """
    with torch.device("meta"):
        model = WorDepth(cfg, init_weights=False)
    model.train()
    if original:
        set_variant(model, "original_like")
    patches = [mock.patch.object(fast_paths, "fused_attention", lambda d: True),
               mock.patch.object(F, "scaled_dot_product_attention", efficient_attention)] if cuda_path else []
    with FakeTensorMode(allow_non_fake_inputs=True), contextlib.ExitStack() as stack:
        model = model.to_empty(device=device)
        model.backbone.set_grad_checkpointing(checkpointing)
        image = torch.empty(batch, 3, *hw, device=device)
        text, gt = torch.empty(batch, cfg.text_dim, device=device), torch.empty(batch, 1, *hw, device=device)
        for p in patches:
            stack.enter_context(p)
        alloc = Allocations()
        with alloc:
            with cuda_autocast(PRECISIONS[precision]) if device == "cuda" else contextlib.nullcontext():
                loss = model.training_loss(image, text, gt, "image")["loss"].float()
            out = {"activations": alloc.live, "forward_peak": alloc.peak}
            if backward:
                alloc.reset_peak()
                loss.backward()
                out["backward_peak"] = alloc.peak
                out["gradients"] = sum(p.grad.untyped_storage().nbytes() for p in model.parameters()
                                       if p.grad is not None)
    out["parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out["inputs"] = 4 * batch * (3 * hw[0] * hw[1] + cfg.text_dim + hw[0] * hw[1])
    return out


def attention_bias_bytes(cfg: WorDepthConfig, hw: tuple[int, int], batch: int, dtype_bytes: int,
                         per_image: bool) -> int:
    """Bytes of the attention masks (relative position bias + shifted-window mask) that SDPA keeps for
    backward over all Swin blocks, without checkpointing: one (nW, heads, N, N) per shifted block (a
    (1, heads, N, N) per other block), or ``batch`` copies of it (``per_image``: the mask copied per
    image, as before; timm's fused path, which the fast paths replace, does the same)."""
    bb = cfg.backbone
    ws, n = bb.window_size, bb.window_size ** 2
    h, w = -(-hw[0] // 32) * 8, -(-hw[1] // 32) * 8  # tokens after the 4x4 patches of the x32-padded input
    total = 0
    for stage, (depth, heads) in enumerate(zip(bb.depths, bb.num_heads)):
        hs, wsz = h >> stage, w >> stage
        n_win = -(-hs // ws) * -(-wsz // ws)
        for i in range(depth):
            windows = (batch if per_image else 1) * n_win if i % 2 else 1
            total += windows * heads * n * n * dtype_bytes
    return total


# ---------------------------------------------------------------- the table
@dataclass(frozen=True)
class Setting:
    """A training configuration of configs/: dataset, model, input size and batch."""

    name: str
    legacy: bool
    hw: tuple[int, int]
    batch: int


def config_settings() -> list[Setting]:
    """NYU and KITTI, current and legacy: input size and batch read from ``configs/arguments_train_*.txt``
    (the original's: NYU 480x640 batch 4, KITTI 352x1216 batch 3)."""
    settings = []
    for dataset, label in (("nyu", "NYU"), ("kittieigen", "KITTI")):
        for legacy in (False, True):
            path = ROOT / "configs" / f"arguments_train_{dataset}{'_legacy' if legacy else ''}.txt"
            words = shlex.split(path.read_text(), comments=True)
            flags = {a: b for a, b in zip(words, words[1:] + [""]) if a.startswith("--")}
            assert ("--lagacy" in flags or "--legacy" in flags) == legacy, path
            settings.append(Setting(f"{label}, {'legacy' if legacy else 'current'}", legacy,
                                    (int(flags["--input_height"]), int(flags["--input_width"])),
                                    int(flags["--batch_size"])))
    return settings


def estimate(cfg: WorDepthConfig, hw: tuple[int, int], batch: int, precision: str, checkpointing: bool,
             sim: dict | None = None, original: bool = False) -> dict:
    """Peak of one training step on CUDA (bytes) and its parts; ``sim``: the fp32 backward simulation of
    the same setting (computed when not given); ``original``: the original release's computation."""
    sim = sim or trace_step(cfg, hw, batch, device="cpu", checkpointing=checkpointing, backward=True,
                            original=original)
    act = trace_step(cfg, hw, batch, device="cuda", precision=precision, checkpointing=checkpointing,
                     original=original)
    P = act["parameters"]
    weights, adam = 4 * P, 8 * P
    backward = sim["backward_peak"] - sim["activations"] + act["activations"]
    step = sim["gradients"] + 4 * P  # gradients + foreach Adam's one parameter-sized temporary
    dtype_bytes = 4 if precision == "fp32" else 2
    kept = not (checkpointing or original)  # checkpointed blocks keep no mask, the original keeps probabilities
    bias = attention_bias_bytes(cfg, hw, batch, dtype_bytes, per_image=False) if kept else 0
    bias_copied = 0 if checkpointing else attention_bias_bytes(cfg, hw, batch, dtype_bytes, per_image=True)
    peak = weights + adam + act["inputs"] + max(act["forward_peak"], backward, step)
    return {"precision": precision, "checkpointing": checkpointing, "original": original, "parameters": P,
            "weights": weights, "gradients": sim["gradients"], "adam": adam, "activations": act["activations"],
            "forward_peak": act["forward_peak"], "backward_peak": backward, "attention_bias": bias,
            "attention_bias_copied": bias_copied, "peak": peak}


def fits(peak: float) -> str:
    """The smallest card class whose memory holds ``peak`` bytes plus 10 % (context and fragmentation)."""
    for gib, name in CARDS:
        if peak * 1.1 <= gib * GiB:
            return f"{gib} GB ({name})"
    return f"none (over {CARDS[-1][0]} GB)"


def table(quick: bool) -> list[dict]:
    """Every row of the table (``quick``: the tiny preset at a small size)."""
    if quick:
        settings = [Setting("tiny, current", False, (128, 160), 2), Setting("tiny, legacy", True, (128, 160), 2)]
    else:
        settings = config_settings()
    rows = []
    for s in settings:
        cfg = preset_config("tiny" if quick else "swin_large", legacy=s.legacy)
        for ckpt in (False, True):
            sim = trace_step(cfg, s.hw, s.batch, device="cpu", checkpointing=ckpt, backward=True)
            for precision in PRECISIONS:
                row = estimate(cfg, s.hw, s.batch, precision, ckpt, sim)
                rows.append({"setting": s.name, "size": list(s.hw), "batch": s.batch, **row})
    if not quick:  # what the original release's code needs (explicit attention: probabilities kept per block)
        for s in settings:
            if not s.legacy:
                cfg = preset_config("swin_large", legacy=s.legacy)
                row = estimate(cfg, s.hw, s.batch, "fp32", False, original=True)
                rows.append({"setting": f"{s.name.split(',')[0]}, the original's computation", "size": list(s.hw),
                             "batch": s.batch, **row})
    return rows


def print_table(rows: list[dict]) -> None:
    print("| setting | input, batch | precision | checkpointing | weights + grads + Adam | kept for backward "
          "(of which attention masks; copied per image: was) | peak (allocator) | smallest card (peak + 10 %) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        static = (r["weights"] + r["gradients"] + r["adam"]) / GiB
        bias = (f"{r['attention_bias'] / GiB:.2f}; was {r['attention_bias_copied'] / GiB:.2f}"
                if r["attention_bias"] else "—" if r["original"] else "0")
        print(f"| {r['setting']} | {r['size'][0]}x{r['size'][1]}, {r['batch']} | {r['precision']} | "
              f"{'on' if r['checkpointing'] else 'off'} | {static:.2f} GiB | "
              f"{r['activations'] / GiB:.2f} GiB ({bias}) | **{r['peak'] / GiB:.1f} GiB** | {fits(r['peak'])} |")


# ---------------------------------------------------------------- the check against a CPU
def check(quick: bool, threads: int = 1) -> list[dict]:
    """The method against measured CPU peaks: tiny preset, fp32, the CPU code path, each step measured in
    a fresh process (peak RSS growth over the set-up's, which holds the weights and the inputs; the
    gradients are part of the growth) after a warm-up step. ``MALLOC_MMAP_THRESHOLD_``: every allocation
    of 4 KiB and more is its own mapping, returned to the system when freed, so that the resident set
    follows the live tensors rather than glibc's heap (without it the step measured 7 % more)."""
    rows = []
    sizes = QUICK_CHECK_SIZES if quick else CHECK_SIZES
    specs, sims = [], []
    for hw, batch in sizes:
        for legacy in (False, True):
            for ckpt in (False, True):
                cfg = preset_config("tiny", legacy=legacy)
                sim = trace_step(cfg, hw, batch, device="cpu", checkpointing=ckpt, backward=True, cuda_path=False)
                sims.append(sim)
                specs.append({"variant": "after_grad_checkpointing" if ckpt else "after", "quick": True,
                              "threads": threads, "batch": batch, "hw": list(hw), "preset": "tiny", "legacy": legacy,
                              "warmup": True, "env": {"MALLOC_MMAP_THRESHOLD_": "4096"}})
    measured = memory_children(specs, concurrent=False)
    for spec, sim, m in zip(specs, sims, measured):
        est = max(sim["forward_peak"], sim["backward_peak"]) / 2**20
        rows.append({"size": spec["hw"], "batch": spec["batch"], "legacy": spec["legacy"],
                     "checkpointing": spec["variant"] != "after", "estimated_mb": est,
                     "measured_mb": m["peak_rss_growth_mb"], "relative": est / m["peak_rss_growth_mb"] - 1})
    return rows


def print_check(rows: list[dict]) -> None:
    print("| tiny preset, fp32 | checkpointing | estimated step peak | measured peak RSS growth | difference |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size'][0]}x{r['size'][1]} batch {r['batch']}, {'legacy' if r['legacy'] else 'current'} | "
              f"{'on' if r['checkpointing'] else 'off'} | {r['estimated_mb']:.0f} MB | {r['measured_mb']:.0f} MB | "
              f"{100 * r['relative']:+.1f} % |")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_estimate",
                                     description="GPU memory of a training step per configuration, from a trace on "
                                                 "fake tensors (docs/performance.md, 'Memory').")
    parser.add_argument("--check", action="store_true", help="compare the method with measured CPU peaks instead")
    parser.add_argument("--quick", action="store_true", help="tiny preset at small sizes (seconds)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows = check(args.quick) if args.check else table(args.quick)
    (print_check if args.check else print_table)(rows)
    if args.json:
        write_json(args.json, rows, "memory estimate")
    return 0


if __name__ == "__main__":
    sys.exit(main())

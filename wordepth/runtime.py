"""Where a run executes: the device, the precision, the process group, logging and random states.

The one place that decides the device (:func:`default_device`, :func:`setup_runtime`) and the
autocast precision (:func:`autocast`); model code follows its inputs. Works the same on a laptop
CPU, one GPU (``python train.py``) and many GPUs or nodes (``torchrun``).
"""
from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["PRECISIONS", "Runtime", "autocast", "compile_for_inference", "cpu_native_bf16", "default_device",
           "git_commit", "rng_state", "seed_everything", "set_rng_state", "setup_logging", "setup_runtime",
           "warn_if_emulated_bf16"]


@dataclass
class Runtime:
    """The device and this process's place in the process group."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when a GPU is present, else the CPU.

    Raises:
        SystemExit: CUDA asked for on a machine without a GPU (one line for the user).
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for, but no CUDA GPU is available (use --device cpu)")
    return dev


def setup_runtime(device: str | None = None) -> Runtime:
    """Pick the device and join the process group under torchrun (one GPU per local rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = default_device(device)
    if dev.type == "cuda":
        if world > 1 and dev.index is None:
            if local >= torch.cuda.device_count():
                raise SystemExit(f"error: LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) visible: "
                                 "lower --nproc_per_node / NUM_GPUS")
            dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, rank, world, local)


PRECISIONS = ("fp32", "bf16")  # inference precisions: Predictor(precision=...), wordepth-predict --precision


def autocast(device: torch.device, amp: str):
    """The autocast context for ``--amp`` none / bf16 / fp16 and for an inference precision (``PRECISIONS``):
    'none' and 'fp32' give a disabled context (full float32), 'bf16' bfloat16 autocast, on a CPU as
    on a GPU (on a CPU it pays off only where the processor computes in bfloat16 natively:
    AVX512-BF16 or AMX; docs/performance.md)."""
    if amp in ("none", "fp32"):
        return torch.autocast(device.type, enabled=False)
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"precision must be one of none, fp32, bf16, fp16; got {amp!r}")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_native_bf16() -> bool:
    """Whether the CPU computes in bfloat16 natively (AVX512-BF16 or AMX flags); elsewhere PyTorch
    emulates bfloat16 arithmetic, 70x (matrix products) to 370x (convolutions) slower than float32
    on an AVX2 processor (docs/performance.md)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def warn_if_emulated_bf16(device: torch.device, precision: str) -> bool:
    """Log a warning when bf16 is asked for on a CPU that emulates it; True if it warned."""
    if precision != "bf16" or device.type != "cpu" or cpu_native_bf16():
        return False
    logging.getLogger("wordepth").warning(
        "bf16 on this CPU is emulated (no avx512_bf16 / amx_bf16 flag): far slower than fp32 here; "
        "use --precision fp32 or the ONNX graph (wordepth-export) for speed, see docs/performance.md")
    return True


def compile_for_inference(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` for evaluation: Inductor with frozen weights (``freezing``).

    Under ``torch.no_grad`` the parameters are folded into the graph as constants, and on a CPU the
    convolution and linear weights are pre-packed for oneDNN and fused with their pointwise
    neighbours. Measured on 2 AMD EPYC cores at 480x640: 0.88x the eager forward's time, outputs
    within 2.2e-5 (relative) of eager; compiling takes about 2 minutes per input size, so it pays
    off for an evaluation set (one size), not for a few photos (docs/performance.md). Only for a
    model whose weights do not change afterwards; ``eval.py --compile`` uses it.
    """
    return torch.compile(model, options={"freezing": True})


def setup_logging(rt: Runtime, run_dir: Path | None = None) -> None:
    """``logging`` on rank 0 only (to the console and run_dir/train.log); other ranks log warnings."""
    level = logging.INFO if rt.is_main else logging.WARNING
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None and rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers, force=True)


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, numpy and torch (CPU and every GPU) with ``seed + rank``.

    Each process of a run gets its own random numbers (text-branch eps, stochastic depth); what must
    agree across processes (the branch choice, the data order) has its own generators.
    """
    seed = seed + rank
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(branch_gen: torch.Generator) -> dict:
    """Every random state a run depends on, as plain tensors and numbers (for exact resume)."""
    state = {"torch": torch.get_rng_state(), "branch": branch_gen.get_state(),
             "python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, branch_gen: torch.Generator, rank: int = 0, step: int = 0) -> None:
    """Restore :func:`rng_state` (saved by rank 0).

    Rank 0 gets its states back. The branch generator is shared by every rank. Other ranks cannot
    get theirs (only rank 0 saves): they are seeded from their rank and the step, still distinct.
    CUDA states are restored for the GPUs this machine has; those of a run saved on more GPUs are
    dropped, with a log line.
    """
    branch_gen.set_state(state["branch"])
    if rank:
        seed_everything(1_000_003 * step, rank)
        return
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(state["numpy_pos"]), 0, 0.0))
    saved = list(state.get("cuda") or [])
    if saved and torch.cuda.is_available():
        present = torch.cuda.device_count()
        for index, cuda_state in enumerate(saved[:present]):
            torch.cuda.set_rng_state(cuda_state, index)
        if len(saved) > present:
            logging.getLogger("wordepth").info(
                "the checkpoint holds CUDA random states of %d GPUs, this machine has %d: those of GPUs %s are "
                "dropped (their random numbers differ from the saved run's)", len(saved), present,
                ", ".join(str(i) for i in range(present, len(saved))))


def git_commit() -> str:
    """The commit of this checkout (recorded in a run's config.json), or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"

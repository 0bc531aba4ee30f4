"""Where a run executes: the device, the precision, the process group, logging and random states.

The one place that decides the device (:func:`default_device`, :func:`setup_runtime`) and the
autocast precision (:func:`autocast`); model code follows its inputs. Works the same on a laptop
CPU, one GPU (``python train.py``) and many GPUs or nodes (``torchrun``).
"""
from __future__ import annotations

import datetime
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

__all__ = ["DIST_TIMEOUT_MINUTES", "PRECISIONS", "BranchGradients", "Runtime", "autocast", "compile_for_inference",
           "cpu_native_bf16", "default_device", "distribute", "git_commit", "parameters_reached", "rng_state",
           "seed_everything", "set_rng_state", "setup_logging", "setup_runtime", "warn_if_emulated_bf16"]


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


# How long a collective waits for the other processes before the run ends with an error (--dist_timeout).
# Long enough for rank 0 to write a run's checkpoints after an online evaluation (up to eight best-per-metric
# Swin-L files, ~1.5 GB each, on a slow shared disk) while the others wait; short enough that a node that died
# in the night costs minutes, not the rest of the rental. torch's default: 10 minutes for NCCL, 30 for gloo.
DIST_TIMEOUT_MINUTES = 20.0


def setup_runtime(device: str | None = None, timeout_minutes: float = DIST_TIMEOUT_MINUTES) -> Runtime:
    """Pick the device and join the process group under torchrun (one GPU per local rank).

    ``timeout_minutes``: how long a collective waits for the others (``--dist_timeout``); a process that
    died or hangs ends the run after it, with one line naming the silent rank
    (:func:`wordepth.runtime.collective_failure`)."""
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
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
        start_heartbeat(rank)
    return Runtime(dev, rank, world, local)


# --------------------------------------------------------------------------- dead ranks
HEARTBEAT_SECONDS = 2.0  # each process adds 1 to its counter in the process group's store this often
_HEARTBEAT = "wordepth/heartbeat/{}"
_FAILED = "wordepth/failed/{}"


def _store():
    """The default process group's key-value store (torchrun's rendezvous store), or None."""
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # no process group, or a torch without it: no heartbeat, messages name no rank
        return None


def start_heartbeat(rank: int) -> None:
    """A daemon thread that counts up ``wordepth/heartbeat/<rank>`` in the store: a process that died stops
    counting, one that hangs in a collective or the data does not (the GIL is released while it waits)."""
    import threading
    import time

    store = _store()
    if store is None:
        return

    def beat():
        while True:
            try:
                store.add(_HEARTBEAT.format(rank), 1)
            except Exception:  # the store (rank 0's process) is gone, or the run ended
                return
            time.sleep(HEARTBEAT_SECONDS)

    threading.Thread(target=beat, name="wordepth-heartbeat", daemon=True).start()


def mark_failed(rank: int) -> None:
    """Record in the store that this process stops with an error (read by :func:`collective_failure`)."""
    store = _store()
    if store is not None:
        try:
            store.set(_FAILED.format(rank), "1")
        except Exception:
            pass


def silent_ranks(world_size: int, wait_s: float | None = None) -> tuple[list[int], list[int]] | None:
    """(ranks that stopped with an error, ranks whose heartbeat stopped), or None without a reachable store.

    Reads every heartbeat counter twice, ``wait_s`` (default: 2.5 heartbeats) apart."""
    import time

    store = _store()
    if store is None:
        return None
    try:
        store.set_timeout(datetime.timedelta(seconds=10))
        failed = [r for r in range(world_size) if store.check([_FAILED.format(r)])]
        before = [store.add(_HEARTBEAT.format(r), 0) for r in range(world_size)]
        time.sleep(2.5 * HEARTBEAT_SECONDS if wait_s is None else wait_s)
        after = [store.add(_HEARTBEAT.format(r), 0) for r in range(world_size)]
    except Exception:  # the store lives in rank 0's process (torchrun: its agent); it is gone too
        return [], [0]
    return failed, [r for r in range(world_size) if after[r] == before[r]]


def collective_failure(err: BaseException, rt: Runtime) -> str | None:
    """One line for a run that ended because another process did not answer, naming that rank; None for
    an error of this process (or one process)."""
    if not rt.distributed or not isinstance(err, (RuntimeError, dist.DistError)):
        return None
    text = str(err).lower()
    if not any(k in text for k in ("timed out", "timeout", "connection", "peer", "nccl", "gloo", "abort",
                                   "closed", "reset", "broken pipe", "process group", "not initialized")):
        return None
    found = silent_ranks(rt.world_size)
    if found is None:
        return None
    failed, silent = found
    failed = [r for r in failed if r != rt.rank]
    silent = [r for r in silent if r != rt.rank and r not in failed]
    if failed:
        who = ", ".join(str(r) for r in failed)
        return f"rank {who} stopped with an error (see its log line above or its own log); rank {rt.rank} stops too"
    if silent:
        who = ", ".join(str(r) for r in silent)
        return (f"rank {who} died (its process is gone: killed, out of memory, or its node is down; the launcher's "
                f"report names its exit code); rank {rt.rank} stops too")
    return (f"a collective failed on rank {rt.rank} while every process is still alive: one of them hangs (data "
            f"loading, a stuck GPU) or took longer than --dist_timeout; error: {str(err).splitlines()[0][:200]}")


# --------------------------------------------------------------------------- DDP by branch
def parameters_reached(output: torch.Tensor) -> set[int]:
    """``id`` of every leaf tensor (parameter) the autograd graph of ``output`` reaches: the parameters
    its backward gives a gradient (possibly zero), as DDP's ``find_unused_parameters`` walk finds them.
    Python only: no device work, no host-device synchronisation."""
    reached: set[int] = set()
    seen: set = set()
    stack = [output.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)  # AccumulateGrad: the leaf it writes .grad of
        if var is not None:
            reached.add(id(var))
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return reached


class _ZeroContribution(torch.autograd.Function):
    """0 in the forward (whatever the parameters hold, NaN included); zero gradients in the backward."""

    @staticmethod
    def forward(ctx, *params: torch.Tensor) -> torch.Tensor:
        ctx.like = [(p.shape, p.dtype, p.device) for p in params]
        return torch.zeros((), device=params[0].device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return tuple(torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.like)


class BranchGradients:
    """DDP without ``find_unused_parameters``, the optimizer seeing what one process sees.

    Each training step runs one branch, and every process draws the same one, so which parameters get a
    gradient is the branch's: found once per branch from the autograd graph of its loss
    (:func:`parameters_reached`, Python only) and cached. Then, on several processes:

    * :meth:`loss_with_unused` adds a zero that depends on the unused parameters: their gradients are
      zero tensors, DDP's reducer sees every parameter it waits for and needs no graph walk, no
      unused-parameter all-reduce and no blocking copy to the host in the backward;
    * the communication hook (:func:`branch_allreduce_hook`) skips the all-reduce of a bucket whose
      parameters all went unused (zeros on every process: nothing to average);
    * :meth:`drop_unused` sets their gradients back to ``None`` before clipping and ``optimizer.step()``:
      Adam skips a parameter without a gradient, as on one process (a zero gradient would move it through
      its momentum).

    On one process it changes nothing. What it costs: docs/training.md.
    """

    def __init__(self, model: torch.nn.Module, distributed: bool):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.distributed = distributed
        self.unused: dict[str, list[torch.nn.Parameter]] = {}  # per branch, found at its first step
        self.skip: frozenset[int] = frozenset()  # ids of this step's unused parameters (the comm hook reads it)
        self.process_group = None

    def unused_of(self, branch: str, loss: torch.Tensor) -> list[torch.nn.Parameter]:
        """The parameters ``branch`` gives no gradient (cached per branch)."""
        if branch not in self.unused:
            reached = parameters_reached(loss)
            self.unused[branch] = [p for p in self.params if id(p) not in reached]
            logging.getLogger("wordepth").debug("the %s branch trains %d of %d parameter tensors", branch,
                                                len(self.params) - len(self.unused[branch]), len(self.params))
        return self.unused[branch]

    def loss_with_unused(self, branch: str, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` plus an exact zero that reaches the branch's unused parameters (several processes);
        ``loss`` itself on one process."""
        if not self.distributed:
            return loss
        unused = self.unused_of(branch, loss)
        self.skip = frozenset(id(p) for p in unused)
        return loss + _ZeroContribution.apply(*unused) if unused else loss

    def drop_unused(self, branch: str) -> None:
        """Gradients of the branch's unused parameters back to ``None`` (after the backward)."""
        for p in self.unused.get(branch, ()) if self.distributed else ():
            p.grad = None


def branch_allreduce_hook(state: BranchGradients, bucket) -> torch.futures.Future:
    """DDP's default all-reduce (average), skipped for a bucket whose parameters the step's branch left
    unused: their gradients are the zeros of :class:`_ZeroContribution` on every process."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    if state.skip and all(id(p) in state.skip for p in bucket.parameters()):
        fut: torch.futures.Future = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut
    return allreduce_hook(state.process_group, bucket)


# DDP checks a hook's return annotation as an object (this module's annotations are strings)
branch_allreduce_hook.__annotations__["return"] = torch.futures.Future[torch.Tensor]


def distribute(model: torch.nn.Module, rt: Runtime, compile: bool = False, compile_backend="inductor"
               ) -> tuple[torch.nn.Module, BranchGradients]:
    """What the training forward goes through, and the per-branch gradient bookkeeping the loop applies.

    DDP across processes (``find_unused_parameters=False``: :class:`BranchGradients`), then
    ``torch.compile`` of the DDP module: TorchDynamo then splits the graph at DDP's buckets
    (``optimize_ddp``), so the all-reduce of each bucket overlaps the rest of the backward; a compiled
    module wrapped in DDP afterwards would be one graph whose gradients are all-reduced only at its end.

    Compiled with static shapes (``dynamic=False``): one graph per branch (the branch is a Python string
    TorchDynamo guards on) and input size, none per step. With dynamic shapes (TorchDynamo's default
    after a second size) the recompile is several times slower and the text branch's ``torch.randn`` of
    the latent grid fails on symbolic sizes. ``compile_backend``: TorchDynamo's backend (tests count
    graphs with a cheap one); tests/test_compile.py.
    """
    grads = BranchGradients(model, rt.distributed)
    net = model
    if rt.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            find_unused_parameters=False)
        net.register_comm_hook(grads, branch_allreduce_hook)
    if compile:
        net = torch.compile(net, backend=compile_backend, dynamic=False)
    return net, grads


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

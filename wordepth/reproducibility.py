"""Reproducible runs: the determinism switch (``--deterministic``), seeded loader workers and the
provenance record every report carries.

:func:`configure_determinism` is the one place that sets PyTorch's determinism and TF32 policy.
Without ``--deterministic`` it changes nothing (torch's defaults, as the original: cuDNN picks its
algorithms, cuDNN convolutions may run in TF32 on Ampere and later, float32 matrix products do
not). With it:

* ``torch.use_deterministic_algorithms(True)``: strict (an error) on a CPU; ``warn_only=True`` on a
  GPU, because three operations of the network have no deterministic CUDA backward and would stop
  the run (:data:`NONDETERMINISTIC_CUDA_BACKWARDS`): they then warn and stay nondeterministic;
* ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (read by cuBLAS when CUDA starts: set before anything touches
  the GPU, which is why the training sets it first);
* ``cudnn.deterministic = True``, ``cudnn.benchmark = False``;
* TF32 off for convolutions and matrix products (full float32): the numbers then no longer depend
  on whether the card has TF32, and match a CPU's float32 more closely.

What "identical" means with and without the flag: docs/reproducing.md.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import logging
import os
import platform
import random
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("wordepth")

__all__ = ["CUBLAS_WORKSPACE", "NONDETERMINISTIC_CUDA_BACKWARDS", "PAPER_RESULTS", "configure_determinism",
           "describe_determinism", "determinism_state", "git_state", "hardware", "package_versions", "provenance",
           "restore_determinism", "seed_worker", "set_cublas_workspace"]

CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS's deterministic workspace setting (":16:8" also works, slower)

# Operations of WorDepth's training step whose CUDA backward has no deterministic version in PyTorch:
# with use_deterministic_algorithms(True) each raises a RuntimeError, so --deterministic on a GPU uses
# warn_only=True (they warn once and keep their atomicAdd kernels: float sums in a varying order).
NONDETERMINISTIC_CUDA_BACKWARDS = (
    ("F.interpolate(mode='bilinear') backward", "decoder: Up x2 and the x2..x16 depth-feature upsampling"),
    ("F.interpolate(mode='bicubic') backward", "Swin: the absolute position embedding resized to the grid"),
    ("nn.AdaptiveMaxPool2d backward", "metric head: global max pool (one window per channel: in practice exact)"),
)
# Made deterministic by the flag (slower kernels): index_select backward (Swin's relative-position bias
# and window gather), cuDNN convolutions (deterministic algorithms), cuBLAS (with the workspace above).

# The paper's numbers (Zeng et al., CVPR 2024, Tables 1 and 2) for the paper's models, as the README's
# checkpoint table gives them: the reference rows of every sweep report.
PAPER_RESULTS: dict[str, dict[str, float]] = {
    "nyu": {"abs_rel": 0.088, "d1": 0.932, "rms": 0.317},
    "kitti": {"abs_rel": 0.049, "d1": 0.979, "rms": 2.039},
}
PAPER_MODEL = {"nyu": "nyu_legacy", "kitti": "kitti_legacy"}  # the variant the paper's numbers are for


# --------------------------------------------------------------------------- determinism
def set_cublas_workspace(environ: os._Environ | dict = os.environ) -> bool:
    """Set ``CUBLAS_WORKSPACE_CONFIG`` for deterministic cuBLAS unless the user set a valid one.

    Returns:
        True if it is in effect: set before CUDA started in this process (cuBLAS reads it then).
    """
    if environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
        environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    return not torch.cuda.is_initialized()


def determinism_state() -> dict[str, Any]:
    """The settings that decide whether reruns are identical, as plain data (for logs and provenance).

    TF32 is read and set through the ``allow_tf32`` flags only: mixing them with torch's newer
    ``fp32_precision`` settings makes reading either an error."""
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def restore_determinism(state: Mapping[str, Any]) -> None:
    """Put back the settings of an earlier :func:`determinism_state` (the end of an in-process run)."""
    torch.use_deterministic_algorithms(state["deterministic_algorithms"], warn_only=state["warn_only"])
    torch.backends.cudnn.deterministic = state["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = state["cudnn_benchmark"]
    torch.backends.cudnn.allow_tf32 = state["cudnn_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = state["matmul_tf32"]
    if state["cublas_workspace_config"] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = state["cublas_workspace_config"]


def configure_determinism(deterministic: bool, device: torch.device | str | None = None) -> dict[str, Any]:
    """Apply the ``--deterministic`` policy (module docstring); without it, change nothing.

    Call before the run touches the GPU (``CUBLAS_WORKSPACE_CONFIG``); a warning says so otherwise.

    Args:
        deterministic: the flag.
        device: the run's device; a CUDA device (or None with a GPU present) gets ``warn_only``.

    Returns:
        :func:`determinism_state` after the change, with ``deterministic`` and, on a GPU, the operations
        that stay nondeterministic.
    """
    if not deterministic:
        return {"deterministic": False, **determinism_state()}
    in_time = set_cublas_workspace()
    cuda = (torch.device(device).type == "cuda") if device is not None else torch.cuda.is_available()
    torch.use_deterministic_algorithms(True, warn_only=cuda)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    state = {"deterministic": True, **determinism_state()}
    if cuda:
        state["nondeterministic_ops"] = [op for op, _ in NONDETERMINISTIC_CUDA_BACKWARDS]
        if not in_time:
            log.warning("--deterministic: CUDA started before CUBLAS_WORKSPACE_CONFIG was set; cuBLAS may "
                        "stay nondeterministic (set CUBLAS_WORKSPACE_CONFIG=%s in the environment)", CUBLAS_WORKSPACE)
    return state


def describe_determinism(device: torch.device | str) -> str:
    """One log line: what the current settings are, and on a GPU what stays nondeterministic."""
    state = determinism_state()
    if not state["deterministic_algorithms"]:
        return "not deterministic (torch's defaults): reruns may differ in the last bits on a GPU"
    cuda = torch.device(device).type == "cuda"
    return ("deterministic mode: use_deterministic_algorithms(True%s), cudnn deterministic, benchmark off, TF32 off, "
            "CUBLAS_WORKSPACE_CONFIG=%s%s" % (
                ", warn_only=True" if state["warn_only"] else "", state["cublas_workspace_config"],
                "; no deterministic CUDA backward (warned, not bit-exact): "
                + ", ".join(op for op, _ in NONDETERMINISTIC_CUDA_BACKWARDS) if cuda else ""))


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` of the training loader: Python's and numpy's global RNGs from the worker's
    torch seed (which the loader's seeded generator sets), so that any code drawing from them in a
    worker is seeded too. WorDepth's augmentation draws from its own per-sample RNG and is unaffected."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


# --------------------------------------------------------------------------- provenance
def git_state(cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """The checkout's commit and whether files differ from it (read only: no index refresh), or unknowns."""
    cwd = Path(cwd) if cwd else Path(__file__).resolve().parent
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # `git status` must not write the index

    def git(*cmd: str) -> str | None:
        try:
            out = subprocess.run(["git", *cmd], capture_output=True, text=True, timeout=20, cwd=cwd, env=env)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit or "unknown", "dirty": None if status is None else bool(status)}


_PACKAGES = ("torch", "torchvision", "timm", "numpy", "opencv-python-headless", "pillow", "open_clip_torch")


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str | None]:
    """Python's and the main packages' versions (None for one not installed), CUDA's and cuDNN's."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    out["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict[str, Any]:
    """The machine: OS, CPU, core count, torch's thread count and the GPUs (without starting CUDA if none)."""
    gpus = []
    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "gpus": gpus}


def _plain(value: Any) -> Any:
    """JSON-friendly: paths and other objects as strings, containers recursively."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def provenance(config: argparse.Namespace | Mapping[str, Any] | None = None, *, seed: int | None = None,
               steps: int | None = None, selection: str | None = None, **extra: Any) -> dict[str, Any]:
    """What produced a result: configuration, git commit, package versions, hardware, seed, steps,
    selection rule and the determinism settings, as plain JSON data.

    Args:
        config: the parsed options (or a mapping); its ``seed`` is used when ``seed`` is not given.
        seed: the run's seed.
        steps: optimizer steps of the run (or of the evaluated checkpoint).
        selection: how the reported checkpoint was chosen (e.g. ``"selected on test"``).
        **extra: more entries (e.g. ``checkpoint``).
    """
    cfg = vars(config) if isinstance(config, argparse.Namespace) else dict(config or {})
    if seed is None and isinstance(cfg.get("seed"), int):
        seed = cfg["seed"]
    record = {
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "git": git_state(),
        "packages": package_versions(),
        "hardware": hardware(),
        "determinism": determinism_state(),
        "seed": seed,
        "steps": steps,
        "selection": selection,
        "config": _plain(cfg),
    }
    record.update(_plain(extra))
    return record

"""Reproducible runs: the determinism switch (``--deterministic``), seeded loader workers and the
provenance record every report carries.

:func:`configure_determinism` is the one place that sets PyTorch's determinism, cuDNN and TF32 policy.
Without ``--deterministic`` it sets what the original sets: ``cudnn.benchmark = True`` (cuDNN times
its convolution algorithms for each input shape and keeps the fastest; reruns may differ in the last
bits), everything else torch's defaults (cuDNN convolutions may run in TF32 on Ampere and later, float32
matrix products do not). With it:

* ``torch.use_deterministic_algorithms(True)``, strict on every device: an operation without a
  deterministic kernel raises instead of warning. The model reads :func:`deterministic_mode` and computes
  the three operations of :data:`NONDETERMINISTIC_CUDA_BACKWARDS` in a deterministic form;
* scaled-dot-product attention on the math backend only (flash, memory-efficient and cuDNN attention
  off, for the forward and the backward): the memory-efficient kernel's backward, which the window
  attention's trainable bias would select on a GPU, accumulates with atomics;
* ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (read by cuBLAS when CUDA starts: set before anything touches
  the GPU, which is why the training sets it first);
* ``cudnn.deterministic = True``, ``cudnn.benchmark = False``;
* TF32 off for convolutions and matrix products (full float32): the numbers then no longer depend
  on whether the card has TF32, and match a CPU's float32 more closely.

What "identical" means with and without the flag: docs/reproducing.md.
"""
from __future__ import annotations

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
           "describe_determinism", "deterministic_mode", "determinism_state", "git_state", "hardware",
           "package_versions", "provenance", "restore_determinism", "seed_worker", "set_cublas_workspace"]

CUBLAS_WORKSPACE = ":4096:8"  # cuBLAS's deterministic workspace setting (":16:8" also works, slower)

# Operations of WorDepth's training step whose CUDA backward has no deterministic version in PyTorch: with
# use_deterministic_algorithms(True) each raises a RuntimeError (torch.use_deterministic_algorithms's list
# of operations that "will throw"). Under deterministic_mode() the model computes them in a deterministic
# form (interpolation as products with interpolation matrices, the global max pool as amax).
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


def deterministic_mode() -> bool:
    """Whether ``--deterministic`` is in effect (torch's determinism flag, which :func:`configure_determinism`
    sets): model code reads it to choose deterministic kernels (the explicit window attention, and
    deterministic forms of :data:`NONDETERMINISTIC_CUDA_BACKWARDS`)."""
    return torch.are_deterministic_algorithms_enabled()


def _sdpa_backends() -> dict[str, bool]:
    """Which scaled-dot-product-attention backends PyTorch may pick (global flags, readable without a GPU)."""
    cuda = torch.backends.cuda
    return {"flash": cuda.flash_sdp_enabled(), "mem_efficient": cuda.mem_efficient_sdp_enabled(),
            "cudnn": cuda.cudnn_sdp_enabled(), "math": cuda.math_sdp_enabled()}


def _set_sdpa_backends(flags: Mapping[str, bool]) -> None:
    cuda = torch.backends.cuda
    cuda.enable_flash_sdp(flags["flash"])
    cuda.enable_mem_efficient_sdp(flags["mem_efficient"])
    cuda.enable_cudnn_sdp(flags["cudnn"])
    cuda.enable_math_sdp(flags["math"])


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
        "sdpa_backends": _sdpa_backends(),
    }


def restore_determinism(state: Mapping[str, Any]) -> None:
    """Put back the settings of an earlier :func:`determinism_state` (the end of an in-process run)."""
    torch.use_deterministic_algorithms(state["deterministic_algorithms"], warn_only=state["warn_only"])
    torch.backends.cudnn.deterministic = state["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = state["cudnn_benchmark"]
    torch.backends.cudnn.allow_tf32 = state["cudnn_tf32"]
    torch.backends.cuda.matmul.allow_tf32 = state["matmul_tf32"]
    if "sdpa_backends" in state:
        _set_sdpa_backends(state["sdpa_backends"])
    if state["cublas_workspace_config"] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = state["cublas_workspace_config"]


def configure_determinism(deterministic: bool, device: torch.device | str | None = None) -> dict[str, Any]:
    """Apply the ``--deterministic`` policy (module docstring); without it, the original's
    ``cudnn.benchmark = True``.

    Call before the run touches the GPU (``CUBLAS_WORKSPACE_CONFIG``); a warning says so otherwise.

    Args:
        deterministic: the flag.
        device: the run's device (for the warning about cuBLAS; the policy is the same on every device).

    Returns:
        :func:`determinism_state` after the change, with ``deterministic``.
    """
    if not deterministic:
        torch.backends.cudnn.benchmark = True  # the original's train.py and eval.py set it
        return {"deterministic": False, **determinism_state()}
    in_time = set_cublas_workspace()
    cuda = (torch.device(device).type == "cuda") if device is not None else torch.cuda.is_available()
    torch.use_deterministic_algorithms(True)  # strict: a nondeterministic operation raises
    _set_sdpa_backends({"flash": False, "mem_efficient": False, "cudnn": False, "math": True})
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    state = {"deterministic": True, **determinism_state()}
    if cuda and not in_time:
        log.warning("--deterministic: CUDA started before CUBLAS_WORKSPACE_CONFIG was set; cuBLAS may "
                    "stay nondeterministic (set CUBLAS_WORKSPACE_CONFIG=%s in the environment)", CUBLAS_WORKSPACE)
    return state


def describe_determinism(device: torch.device | str) -> str:
    """One log line: what the current settings are."""
    state = determinism_state()
    if not state["deterministic_algorithms"]:
        return ("not deterministic (the original's settings: cudnn.benchmark %s): reruns may differ in the last "
                "bits on a GPU" % ("on" if state["cudnn_benchmark"] else "off"))
    return ("deterministic mode: use_deterministic_algorithms(True%s), attention on the math SDPA backend, cudnn "
            "deterministic, benchmark off, TF32 off, CUBLAS_WORKSPACE_CONFIG=%s" % (
                ", warn_only=True" if state["warn_only"] else "", state["cublas_workspace_config"]))


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


def provenance(config: Mapping[str, Any] | None = None, *, seed: int | None = None,
               steps: int | None = None, selection: str | None = None, **extra: Any) -> dict[str, Any]:
    """What produced a result: configuration, git commit, package versions, hardware, seed, steps,
    selection rule and the determinism settings, as plain JSON data.

    Args:
        config: the run's options by name (:meth:`wordepth.config.RunConfig.options`); its ``seed`` is used
            when ``seed`` is not given.
        seed: the run's seed.
        steps: optimizer steps of the run (or of the evaluated checkpoint).
        selection: how the reported checkpoint was chosen (e.g. ``"selected on test"``).
        **extra: more entries (e.g. ``checkpoint``).
    """
    cfg = dict(config or {})
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

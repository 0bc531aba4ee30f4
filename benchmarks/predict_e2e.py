"""End to end: the ``wordepth-predict`` command on one 480x640 photo and on 20, as a user runs it.

Each run is a fresh ``python -m wordepth.cli.predict`` process (start-up, imports, checkpoint
loading, CLIP text encoder and caption feature, forward passes, writing the outputs), timed from
outside. Beside it: the start-up imports alone, and the network's forward at the photo's size in
this process, so that the report can say how much of the wall time is not the network. The
caption is encoded by CLIP RN50 with random weights saved to a local file (the same work as the
real weights, no download).
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from benchmarks.common import Settings
from wordepth.checkpoints import save_safetensors
from wordepth.models.wordepth import WorDepth, preset_config

CAPTION = "a bedroom with a bed and a lamp"


def make_photos(folder: Path, n: int, hw: tuple[int, int]) -> list[Path]:
    """``n`` smooth random RGB photos as JPEG files."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        small = rng.integers(0, 256, (hw[0] // 16, hw[1] // 16, 3), dtype=np.uint8)
        img = cv2.resize(small, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)
        paths.append(folder / f"photo_{i:02d}.jpg")
        cv2.imwrite(str(paths[-1]), img)
    return paths


def timed_run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds


def bench_predict(s: Settings, runs: int, tmp: Path, checkpoint: str | Path | None = None,
                  n_many: int = 20, threads: int = 2, caption: bool = True) -> dict:
    """Wall time of the predict command for one photo and ``n_many`` photos, and where it goes.

    ``caption=False`` predicts with the mean caption feature (no CLIP model: the quick run).
    """
    hw = s.eval_hw
    variant = ["--variant", "nyu"]  # an original-release checkpoint: the current NYU model
    if checkpoint is None:  # this project's format (records its settings), random weights of the run's preset
        torch.manual_seed(0)
        checkpoint, _ = save_safetensors(WorDepth(preset_config(s.preset)), tmp / "model.safetensors")
        variant = []
    text = []
    if caption:
        from wordepth.text.clip_features import load_text_encoder

        clip_model, _ = load_text_encoder("RN50", pretrained=None)
        clip_file = tmp / "clip_rn50_random.pt"
        torch.save(clip_model.state_dict(), clip_file)
        del clip_model
        text = ["--caption", CAPTION, "--clip_weights", str(clip_file)]
    photos = make_photos(tmp / "photos", n_many, hw)
    env_threads = ["env", f"OMP_NUM_THREADS={threads}"]
    base = [*env_threads, sys.executable, "-m", "wordepth.cli.predict", "--checkpoint", str(checkpoint),
            *variant, "--device", "cpu", *text]

    imports = [timed_run([*env_threads, sys.executable, "-c", "import wordepth.cli.predict"]) for _ in range(runs)]
    one = [timed_run([*base, "--images", str(photos[0]), "--out", str(tmp / f"out1_{r}")]) for r in range(runs)]
    many = timed_run([*base, "--images", *map(str, photos), "--out", str(tmp / "out_many")])

    from wordepth.checkpoints import load_checkpoint

    model = load_checkpoint(checkpoint, variant="nyu" if variant else None)
    x, t = torch.randn(1, 3, *hw), torch.randn(1, 1024) * 0.05
    forward = []
    with torch.no_grad():
        model(x, t)
        for _ in range(max(runs, 3)):
            t0 = time.perf_counter()
            model(x, t)
            forward.append(time.perf_counter() - t0)
    fwd = statistics.median(forward)
    t1 = statistics.median(one)
    return {
        "size": list(hw), "checkpoint": str(checkpoint), "n_many": n_many, "threads": threads,
        "caption": CAPTION if caption else "none (mean caption feature)",
        "import_s": statistics.median(imports), "import_runs": imports,
        "one_photo_s": t1, "one_photo_runs": one, "many_photos_s": many,
        "per_extra_photo_s": (many - t1) / (n_many - 1),
        "forward_s": fwd, "forward_runs": forward,
        "not_network_one_s": t1 - fwd, "not_network_many_s": many - n_many * fwd,
    }

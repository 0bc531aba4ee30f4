"""Start-up: process start to the web app's page (HTTP 200), and one photo from a fresh process.

Two ratios, each against a yardstick on the same machine (so they hold on any machine), every time
taken from outside the process, from its start, imports included:

- **app**: ``wordepth-app --demo`` from process start to its page answering HTTP 200, against a
  minimal Gradio app (one text box in, one out) started the same way;
- **predict**: ``wordepth-predict`` on one 480x640 photo (mean caption feature, no CLIP) from a fresh
  process, against one more photo in the same process (the same command on two photos, minus one
  photo). The checkpoint is ``--checkpoint`` or, by default, a Swin-L (the NYU preset) with seeded
  random weights saved as ``.safetensors`` (1 GB, written once into ``--tmp``).

Run from the repository root::

    python -m benchmarks.startup                      # both ratios, 3 runs each (medians)
    python -m benchmarks.startup --only app --runs 5
    python -m benchmarks.startup --only predict --checkpoint nyu.pth --variant nyu

Results and their meaning: docs/performance.md ("Start-up").
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

MINIMAL_APP = """
import gradio as gr
gr.Interface(lambda s: s, gr.Textbox(), gr.Textbox(), analytics_enabled=False).launch(
    server_name="127.0.0.1", server_port={port})
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_page(cmd: list[str], port: int, timeout: float = 180.0, env: dict | None = None) -> float:
    """Seconds from starting ``cmd`` to ``http://127.0.0.1:port/`` answering 200; the process is then stopped."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{' '.join(cmd)} ended ({proc.returncode}) before serving: "
                                   f"{proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                pass
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{' '.join(cmd)} served nothing in {timeout:.0f} s")
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench_app(runs: int) -> dict:
    """Medians of process start -> HTTP 200: the demo app and the minimal Gradio app, taking turns."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    app, minimal = [], []
    for r in range(runs):
        pairs = [("app", app), ("minimal", minimal)]
        for name, out in (pairs if r % 2 == 0 else pairs[::-1]):
            port = free_port()
            cmd = ([sys.executable, "-m", "wordepth.cli.app", "--demo", "--port", str(port)] if name == "app" else
                   [sys.executable, "-c", MINIMAL_APP.format(port=port)])
            out.append(time_to_page(cmd, port, env=env))
    a, m = statistics.median(app), statistics.median(minimal)
    return {"app_s": round(a, 2), "minimal_gradio_s": round(m, 2), "ratio": round(a / m, 2),
            "app_runs": [round(x, 2) for x in app], "minimal_runs": [round(x, 2) for x in minimal]}


def default_checkpoint(tmp: Path, preset: str = "swin_large") -> Path:
    """A WorDepth of a backbone preset (default Swin-L) with seeded random weights, saved once as ``.safetensors``."""
    path = tmp / f"{preset}_random.safetensors"
    if not path.is_file():
        import torch

        from wordepth.checkpoints import save_safetensors
        from wordepth.models.wordepth import WorDepth, preset_config

        torch.manual_seed(0)
        save_safetensors(WorDepth(preset_config(preset)), path)
    return path


PHASES = """
import sys, time
mark = lambda: print(time.time(), flush=True)
mark()  # the interpreter is up
import torch
mark()
from wordepth.inference.predictor import Predictor  # wordepth-predict's own imports: timm, torchvision, ...
mark()
predictor = Predictor.from_checkpoint(sys.argv[1], device="cpu", variant=sys.argv[3] or None)
mark()
from wordepth.data.transforms import read_image
rgb = read_image(sys.argv[2])
predictor.infer(rgb)
mark()
predictor.infer(rgb)
mark()
"""
PHASE_NAMES = ("interpreter", "import torch", "import the predictor (timm, torchvision)", "load the weights",
               "first photo", "second photo")


def bench_phases(runs: int, ckpt: Path, photo: Path, variant: str | None = None) -> dict[str, float]:
    """Where a fresh process's time goes, each phase timed from the process's start (medians of ``runs``)."""
    per_run = []
    for _ in range(runs):
        t0 = time.time()
        done = subprocess.run([sys.executable, "-c", PHASES, str(ckpt), str(photo), variant or ""],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the phase timer failed: {done.stderr[-2000:]}")
        stamps = [t0, *map(float, done.stdout.split())]
        per_run.append([b - a for a, b in zip(stamps, stamps[1:])])
    return {name: round(statistics.median(run[i] for run in per_run), 2) for i, name in enumerate(PHASE_NAMES)}


def bench_predict(runs: int, tmp: Path, checkpoint: str | None = None, variant: str | None = None) -> dict:
    """Medians of ``wordepth-predict`` on one photo and on two (fresh processes): ratio one / (two - one)."""
    ckpt = Path(checkpoint) if checkpoint else default_checkpoint(tmp)
    from benchmarks.predict_e2e import make_photos, timed_run  # torch: only for this section

    photos = make_photos(tmp / "photos", 2, (480, 640))
    base = [sys.executable, "-m", "wordepth.cli.predict", "--checkpoint", str(ckpt), "--device", "cpu",
            *(["--variant", variant] if variant else [])]
    one, two = [], []
    for r in range(runs):
        pairs = [(1, one), (2, two)]
        for n, out in (pairs if r % 2 == 0 else pairs[::-1]):
            out.append(timed_run([*base, "--images", *map(str, photos[:n]), "--out", str(tmp / f"out_{n}_{r}")]))
    t1, t2 = statistics.median(one), statistics.median(two)
    more = t2 - t1
    return {"checkpoint": str(ckpt), "one_photo_s": round(t1, 2), "two_photos_s": round(t2, 2),
            "one_more_photo_s": round(more, 2), "ratio": round(t1 / more, 2) if more > 0 else None,
            "one_runs": [round(x, 2) for x in one], "two_runs": [round(x, 2) for x in two],
            "phases_s": bench_phases(runs, ckpt, photos[0], variant)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["app", "predict"], default=None, help="one of the two ratios")
    p.add_argument("--runs", type=int, default=3, help="runs of each command (medians; alternating order)")
    p.add_argument("--checkpoint", default=None, help="checkpoint for the predict ratio (default: random Swin-L)")
    p.add_argument("--variant", default=None, help="--variant of an original-release --checkpoint")
    p.add_argument("--tmp", default=None, help="folder for the random checkpoint, photos and outputs "
                                               "(default: a temporary folder, removed at the end)")
    p.add_argument("--out", default=None, help="also write the results as JSON to this file")
    args = p.parse_args(argv)
    if args.runs < 1:
        raise SystemExit("error: --runs must be at least 1")
    results = {}
    with tempfile.TemporaryDirectory(prefix="wordepth-startup-") as scratch:
        tmp = Path(args.tmp or scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        if args.only in (None, "app"):
            results["app"] = r = bench_app(args.runs)
            print(f"app: wordepth-app --demo {r['app_s']:.2f} s vs minimal Gradio app {r['minimal_gradio_s']:.2f} s "
                  f"to HTTP 200 = {r['ratio']:.2f}x", flush=True)
        if args.only in (None, "predict"):
            results["predict"] = r = bench_predict(args.runs, tmp, args.checkpoint, args.variant)
            print(f"predict: one 480x640 photo from a fresh process {r['one_photo_s']:.2f} s vs one more photo "
                  f"{r['one_more_photo_s']:.2f} s = {r['ratio']}x", flush=True)
            print("  from the process's start: " + ", ".join(f"{k} {v:.2f} s" for k, v in r["phases_s"].items()),
                  flush=True)
    if args.out:
        from wordepth.outputs import write_text

        write_text(args.out, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

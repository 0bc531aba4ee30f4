"""Load time and peak memory of a Swin-L checkpoint: the original ``.pth`` against ``.safetensors``.

    python -m benchmarks.checkpoint_loading CHECKPOINT.pth [--variant nyu] [--runs 3]

Converts the checkpoint once (``wordepth-convert``), then loads each file with
``wordepth.load_checkpoint`` in a fresh process per run (so the page cache is warm but nothing
else is shared) and prints the median wall time and the peak resident memory (ru_maxrss) of that
process, minus the same process's memory before loading.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time
import wordepth
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
model = wordepth.load_checkpoint(sys.argv[1], variant=sys.argv[2] if sys.argv[2] != "-" else None)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": dt, "peak_mib": peak / 1024, "delta_mib": (peak - base) / 1024,
                  "params": sum(p.numel() for p in model.parameters())}))
"""


def measure(path: Path, variant: str | None, runs: int) -> dict:
    results = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), variant or "-"], check=True,
                             capture_output=True, text=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--variant", default=None)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        st = Path(tmp) / "model.safetensors"
        cmd = [sys.executable, "-m", "wordepth.cli.convert", str(args.checkpoint), str(st)]
        subprocess.run(cmd + (["--variant", args.variant] if args.variant else []), check=True, capture_output=True)
        rows = {".pth": (args.checkpoint, measure(args.checkpoint, args.variant, args.runs)),
                ".safetensors": (st, measure(st, None, args.runs))}
        print(f"{'format':<14} {'size MiB':>9} {'load s':>8} {'peak RSS MiB':>13} {'added by loading MiB':>21}")
        for name, (path, r) in rows.items():
            print(f"{name:<14} {path.stat().st_size / 2**20:9.0f} {r['seconds']:8.2f} {r['peak_mib']:13.0f} "
                  f"{r['delta_mib']:21.0f}")


if __name__ == "__main__":
    main()

#!/bin/sh
# The whole pipeline on a built-in synthetic dataset, on any machine (CPU is fine, no internet):
# generate data -> train the tiny preset -> evaluate -> metrics.json + pictures in OUT_DIR.
#   sh run_demo.sh [OUT_DIR]        (default ./demo_output; about 2 minutes on 2 idle CPU cores)
set -e
OUT=${1:-./demo_output}
cd "$(dirname "$0")"
exec python -m wordepth.cli.demo --out "$OUT"

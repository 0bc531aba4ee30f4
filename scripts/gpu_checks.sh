#!/bin/sh
# The GPU claims of docs/training.md on one CUDA card, in a few minutes, from the repository root:
#   sh scripts/gpu_checks.sh
# One line per claim: "holds", "does not hold" or "skipped", with its figure (wordepth/cli/gpu_checks.py).
# Exit status: 0 every claim holds, 1 one does not, 77 no CUDA device (one error line, nothing checked).
set -e
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m wordepth.cli.gpu_checks "$@"

#!/bin/sh
# Train WorDepth on KITTI (Eigen split).  Usage: sh run_kitti.sh [CONFIG] [extra flags...]
#   NUM_GPUS=4 sh run_kitti.sh                    # one node, 4 GPUs (torchrun, DDP)
# Default config: the current release; configs/arguments_train_kittieigen_legacy.txt is the paper's model.
set -e
CONFIG=${1:-configs/arguments_train_kittieigen.txt}
[ $# -gt 0 ] && shift
exec sh "$(dirname "$0")/scripts/launch.sh" -m wordepth.cli.train "$CONFIG" "$@"

#!/bin/sh
# Train WorDepth on NYU Depth v2.  Usage: sh run_nyu.sh [CONFIG] [extra flags...]
#   NUM_GPUS=4 sh run_nyu.sh                      # one node, 4 GPUs (torchrun, DDP)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=host0 NUM_GPUS=8 sh run_nyu.sh   # multi-node (run on every node)
# Default config: the current release (p = 0.5, no skip connections);
# configs/arguments_train_nyu_legacy.txt is the paper's model (--lagacy, p = 0.01).
set -e
CONFIG=${1:-configs/arguments_train_nyu.txt}
[ $# -gt 0 ] && shift
exec sh "$(dirname "$0")/scripts/launch.sh" -m wordepth.cli.train "$CONFIG" "$@"

#!/bin/sh
# Start a WorDepth command on NUM_GPUS GPUs (default 1) and NNODES nodes (default 1), from the
# repository root:  sh scripts/launch.sh -m wordepth.cli.train CONFIG.txt [flags...]
# One process: plain python. Several: torchrun with a c10d rendezvous at MASTER_ADDR:MASTER_PORT.
set -e
NUM_GPUS=${NUM_GPUS:-1}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."
if [ "$NUM_GPUS" -le 1 ] && [ "$NNODES" -le 1 ]; then
  exec "$PYTHON" "$@"
fi
exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK" \
  --nproc_per_node="$NUM_GPUS" --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" "$@"

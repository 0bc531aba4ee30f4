#!/bin/bash
# WorDepth on SLURM: one task per node, torchrun (scripts/launch.sh) starts one process per GPU there.
#   sbatch --nodes=2 --gpus-per-node=8 scripts/slurm_train.sh configs/arguments_train_nyu.txt [flags...]
# The c10d rendezvous runs on the job's first node; RESUME_FROM=PATH/last.pth resumes.
#SBATCH --job-name=wordepth
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
set -e
CONFIG=${1:?usage: sbatch scripts/slurm_train.sh CONFIG.txt [flags...]}
shift
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
NUM_GPUS=${NUM_GPUS:-${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L 2>/dev/null | wc -l)}}
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
MASTER_PORT=${MASTER_PORT:-$((29500 + ${SLURM_JOB_ID:-0} % 1000))}
# resume: RESUME_FROM=RUN_FOLDER/last.pth sbatch ... (a requeued job: pass the run's last.pth, which the
# run keeps writing and writes on SIGTERM)
RESUME=()
if [ -n "${RESUME_FROM:-}" ]; then RESUME=(--checkpoint_path "$RESUME_FROM"); fi
export NUM_GPUS NNODES=${SLURM_NNODES:-1} MASTER_ADDR MASTER_PORT
# one launcher per node; SLURM_NODEID gives each its node rank; TERM (time limit) reaches every process,
# which saves last.pth before it exits
srun --kill-on-bad-exit=1 bash -c 'NODE_RANK=$SLURM_NODEID exec sh scripts/launch.sh -m wordepth.cli.train "$@"' \
  _ "$CONFIG" "$@" "${RESUME[@]}"

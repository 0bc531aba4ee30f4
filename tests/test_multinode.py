"""Multi-node training through scripts/slurm_train.sh: 2 "nodes" x 2 processes on one machine, gloo, the
c10d rendezvous on 127.0.0.1, tiny preset on synthetic data, 2 steps.

``srun`` and ``scontrol`` are stand-ins on PATH that do what SLURM does for the script: ``srun`` starts
its command once per node with that node's ``SLURM_NODEID`` (one task per node), ``scontrol show
hostnames`` names the first node (127.0.0.1). Everything else is the real script and the real
launcher (scripts/launch.sh -> torchrun --nnodes 2 --node_rank N)."""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train_args import train_argv
from wordepth.data.generated.synthetic import make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
NODES, PER_NODE, STEPS = 2, 2, 2
TIMEOUT_S = 600  # four CPU processes on a shared machine: a hang fails the test instead of blocking it

FAKE_SRUN = """#!/bin/sh
# srun stand-in: one task per node, SLURM_NODEID set, exit status of the first failing node
while [ $# -gt 0 ]; do case "$1" in --*) shift ;; *) break ;; esac; done
pids=""
node=0
while [ "$node" -lt "$SLURM_NNODES" ]; do
  SLURM_NODEID=$node "$@" > "$NODE_LOGS/node$node.log" 2>&1 &
  pids="$pids $!"
  node=$((node + 1))
done
status=0
for pid in $pids; do wait "$pid" || status=$?; done
exit $status
"""
FAKE_SCONTROL = """#!/bin/sh
echo 127.0.0.1
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # four training processes: about a minute or two on 2 cores
def test_two_nodes_of_two_processes_train_through_the_slurm_script(tmp_path):
    data = make_synthetic_dataset(tmp_path / "syn", "nyu", n_train=8, n_test=2, height=64, width=96, seed=0)
    # the run's options as an original-style config file, as `sbatch scripts/slurm_train.sh CONFIG.txt` takes
    argv = train_argv(data, tmp_path / "runs", name="multinode", max_steps=STEPS, log_freq=1)
    config = tmp_path / "tiny.txt"
    lines, i = [], 0
    while i < len(argv):
        has_value = i + 1 < len(argv) and not argv[i + 1].startswith("--")
        lines.append(f"{argv[i]} {argv[i + 1]}" if has_value else argv[i])
        i += 2 if has_value else 1
    config.write_text("\n".join(lines) + "\n")
    bin_dir, logs = tmp_path / "bin", tmp_path / "logs"
    bin_dir.mkdir()
    logs.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable,
           "SLURM_NNODES": str(NODES), "SLURM_JOB_NODELIST": "node[0-1]", "NUM_GPUS": str(PER_NODE),
           "MASTER_PORT": str(_free_port()), "SLURM_SUBMIT_DIR": str(ROOT), "NODE_LOGS": str(logs),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "slurm_train.sh"), str(config), "--device", "cpu"],
                            env=env, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script's own process group: its launchers and workers
        proc.communicate()
        pytest.fail(f"the 2-node run did not finish in {TIMEOUT_S} s:\n" + _logs(logs))
    node_logs = _logs(logs)
    assert proc.returncode == 0, out + node_logs
    assert sorted(p.name for p in logs.iterdir()) == ["node0.log", "node1.log"]  # both nodes ran and finished

    from wordepth.checkpoints import load_training_state
    from wordepth.config import read_run_record

    run_dir = tmp_path / "runs" / "multinode"
    assert load_training_state(run_dir / "last.pth")["global_step"] == STEPS
    record = read_run_record(run_dir / "config.json")
    assert record.world_size == NODES * PER_NODE  # one process group over both nodes
    assert record.steps_per_epoch == 1  # 8 samples over 4 processes of batch 2
    # rank 0 alone writes: one checkpoint, one record, one log, no per-rank files
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "last.pth", "summary", "train.log"]
    assert f"saved {run_dir / 'last.pth'} (step {STEPS})" in (run_dir / "train.log").read_text()


def _logs(folder: Path) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(folder.glob("*.log")))

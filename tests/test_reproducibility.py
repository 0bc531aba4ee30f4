"""Reproducibility (wordepth.reproducibility): the --deterministic policy, seeded workers, provenance."""
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train_args import train_argv as tiny_train_argv
from wordepth.reproducibility import (CUBLAS_WORKSPACE, configure_determinism,
                                      determinism_state, git_state, provenance, restore_determinism, seed_worker,
                                      set_cublas_workspace)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore():
    before = determinism_state()
    yield before
    restore_determinism(before)


def test_default_sets_the_originals_cudnn_benchmark_and_nothing_else(restore):
    torch.backends.cudnn.benchmark = False
    state = configure_determinism(False, "cpu")
    assert state["deterministic"] is False and torch.backends.cudnn.benchmark  # the original's setting
    assert {k: v for k, v in determinism_state().items() if k != "cudnn_benchmark"} == \
        {k: v for k, v in restore.items() if k != "cudnn_benchmark"}  # torch's defaults otherwise


def test_deterministic_on_cpu_is_strict_and_turns_tf32_off(restore, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    state = configure_determinism(True, "cpu")
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert state["cudnn_deterministic"] and not state["cudnn_benchmark"]
    assert not state["cudnn_tf32"] and not state["matmul_tf32"]
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    restore_determinism(restore)
    assert determinism_state()["deterministic_algorithms"] == restore["deterministic_algorithms"]


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_deterministic_is_strict_and_selects_the_math_attention_everywhere(restore, device):
    """On CUDA too: no warn_only (a nondeterministic op raises), and SDPA may only take the math backend,
    whose forward and backward are plain matrix products and a softmax (the memory-efficient kernel's
    backward, chosen for a trainable attention bias, accumulates with atomics)."""
    from wordepth.reproducibility import deterministic_mode

    assert not deterministic_mode() and restore["sdpa_backends"]["mem_efficient"]  # torch's defaults before
    state = configure_determinism(True, device)  # the policy only; nothing runs on a GPU
    assert deterministic_mode() and not torch.is_deterministic_algorithms_warn_only_enabled()
    assert state["sdpa_backends"] == {"flash": False, "mem_efficient": False, "cudnn": False, "math": True}
    assert not torch.backends.cuda.mem_efficient_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
    restore_determinism(restore)
    assert torch.backends.cuda.mem_efficient_sdp_enabled() and not deterministic_mode()


def test_deterministic_mode_raises_on_an_op_without_a_deterministic_kernel(restore):
    """Strict mode on a CPU: PyTorch's alert for a nondeterministic kernel is an error, not a warning."""
    configure_determinism(True, "cpu")
    x = torch.zeros(4)
    with pytest.raises(RuntimeError, match="deterministic"):
        x.put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]), accumulate=False)


def test_cublas_workspace_keeps_a_valid_user_setting():
    env = {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}
    set_cublas_workspace(env)
    assert env["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    env = {"CUBLAS_WORKSPACE_CONFIG": "nonsense"}
    set_cublas_workspace(env)
    assert env["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE


def test_seed_worker_seeds_python_and_numpy_from_the_workers_torch_seed():
    draws = []
    for _ in range(2):
        torch.manual_seed(1234)  # what the DataLoader does in a worker, from its generator
        seed_worker(0)
        draws.append((random.random(), np.random.rand()))
    assert draws[0] == draws[1]
    torch.manual_seed(99)
    seed_worker(0)
    assert (random.random(), np.random.rand()) != draws[0]


def test_provenance_records_what_produced_a_result(tmp_path):
    record = provenance({"seed": 3, "model_name": "x", "data_path": tmp_path}, steps=12, selection="selected on test",
                        checkpoint=tmp_path / "last.pth")
    assert record["seed"] == 3 and record["steps"] == 12 and record["selection"] == "selected on test"
    assert record["config"]["data_path"] == str(tmp_path) and record["checkpoint"] == str(tmp_path / "last.pth")
    assert torch.__version__.startswith(record["packages"]["torch"])
    assert record["hardware"]["cpu_count"] == os.cpu_count()
    assert set(record["determinism"]) >= {"deterministic_algorithms", "cudnn_tf32", "matmul_tf32"}
    json.dumps(record)  # plain data


def test_git_state_reads_the_commit_without_touching_the_index():
    index = ROOT / ".git" / "index"
    if not index.is_file():
        pytest.skip("not a git checkout")
    before = index.stat().st_mtime_ns
    state = git_state(ROOT)
    if state["commit"] == "unknown":
        pytest.skip("git is not installed")
    assert len(state["commit"]) == 40 and state["dirty"] in (True, False)
    assert index.stat().st_mtime_ns == before


# --------------------------------------------------------------------------- end to end: tiny preset, synthetic data
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from wordepth.data.generated.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), "nyu", n_train=8, n_test=2, height=64, width=96,
                                  seed=0)


def train_argv(data, log_dir, name, **over):
    # a constant rate: --max_steps sets the schedule's length, and the run below is interrupted by it
    opts = {"end_learning_rate": -1, "drop_path_rate": 0.1, "seed": 5, "do_online_eval": True, "eval_freq": 2,
            "deterministic": True, **over}
    return tiny_train_argv(data, log_dir, name, **opts)


def _tensors(obj, prefix=""):
    """Every tensor of a nested checkpoint, by path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def assert_bit_identical(a, b):
    ta, tb = dict(_tensors({"model": a["model"], "optimizer": a["optimizer"]})), \
        dict(_tensors({"model": b["model"], "optimizer": b["optimizer"]}))
    assert ta.keys() == tb.keys() and len(ta) > 100
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, different[:5]
    assert a["global_step"] == b["global_step"] and a["branch_counts"] == b["branch_counts"]


def test_deterministic_reruns_and_an_interrupted_run_are_bit_identical(data, tmp_path):
    from wordepth.checkpoints import load_training_state
    from wordepth.cli import train as train_cli
    from wordepth.sweep import read_history

    before = determinism_state()
    first = train_cli.main(train_argv(data, tmp_path, "a"))
    assert determinism_state() == before  # the run put the process's settings back
    second = train_cli.main(train_argv(data, tmp_path, "b"))
    # interrupted after 3 steps by --max_steps, then resumed to 6
    train_cli.main(train_argv(data, tmp_path, "c", max_steps=3))
    assert load_training_state(tmp_path / "c" / "last.pth")["global_step"] == 3
    resumed = train_cli.main(train_argv(data, tmp_path, "c", checkpoint_path=tmp_path / "c" / "last.pth"))

    a, b, c = (load_training_state(tmp_path / n / "last.pth") for n in "abc")
    assert a["global_step"] == 6
    assert_bit_identical(a, b)
    assert_bit_identical(a, c)
    assert first["eval"] == second["eval"] == resumed["eval"]  # metrics, to the last bit
    history = [read_history(tmp_path / n / "eval_history.jsonl") for n in "abc"]
    assert history[0] == history[1] and [r["step"] for r in history[0]] == [2, 4]
    assert history[2] == history[0]
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["run"]["deterministic"] is True
    assert config["provenance"]["determinism"]["deterministic_algorithms"] is True
    assert config["provenance"]["seed"] == 5 and config["provenance"]["steps"] == 6

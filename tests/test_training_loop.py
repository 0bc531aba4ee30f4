"""The training loop on in-memory batches (tiny network, CPU): one loop for every caller, its device
reads, fp16 overflow steps, random states across machines and processes, and run-folder rules."""
import json
import logging
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.catalogue import run_case
from tests.sync_counter import count_syncs
from wordepth.cli import train as train_cli
from wordepth.config import RunConfig
from wordepth.data.generated.synthetic import make_synthetic_dataset
from wordepth.engine import LoopSettings, Trainer
from wordepth.models.wordepth import WorDepth, preset_config
from wordepth.runtime import Runtime, rng_state, seed_everything, set_rng_state

H = W = 32


def tiny() -> WorDepth:
    torch.manual_seed(0)
    return WorDepth(preset_config("tiny", ape_grid=(H // 4, W // 4), drop_path_rate=0.0)).train()


def batches(n: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(2, 3, H, W, generator=g), "depth": 1 + 4 * torch.rand(2, 1, H, W, generator=g),
             "text_feature": torch.randn(2, 1024, generator=g)} for _ in range(n)]


def trainer(n_steps: int = 3, **settings) -> Trainer:
    model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return Trainer(model, opt, batches(n_steps), LoopSettings(total_steps=n_steps, lr=1e-3, end_lr=1e-4, **settings))


def test_the_loop_trains_on_in_memory_batches():
    t = trainer(3)
    before = [p.detach().clone() for p in t.model.parameters()]
    out = t.train()
    assert out["global_step"] == 3 and sum(out["branch_counts"].values()) == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, t.model.parameters()))


def test_a_step_that_does_not_log_reads_the_device_once(monkeypatch):
    from torch.overrides import _pop_mode_temporarily

    t = trainer(2)
    # the branch is drawn from a CPU generator and Adam keeps its step counts in CPU tensors (not
    # capturable) and reads them with .item(): neither waits for a GPU, so neither is counted here
    monkeypatch.setattr(t.model, "choose_branch", lambda gen: "image")
    adam_step = t.optimizer.step

    def uncounted_step(*args, **kwargs):
        with _pop_mode_temporarily():
            return adam_step(*args, **kwargs)

    monkeypatch.setattr(t.optimizer, "step", uncounted_step)
    with count_syncs() as syncs:
        stats = t.train_step(batches(1)[0])
    assert sum(syncs.values()) == 1 and syncs["tolist"] == 1, syncs
    assert not stats["skipped"] and torch.is_tensor(stats["loss"])  # statistics stay on the device


def test_an_fp16_overflow_is_skipped_and_counted_like_a_nan_loss(caplog):
    t = trainer(2)
    t.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)  # what --amp fp16 uses
    # an overflow in the backward: the scaled gradient of one parameter exceeds the float range
    handle = next(t.model.parameters()).register_hook(lambda g: g * 1e38)
    with caplog.at_level(logging.DEBUG, logger="wordepth"):
        stats = t.train_step(batches(1)[0])
    handle.remove()
    assert stats["skipped"] and stats["counted_fault"]  # one overflow is harmless; max_nonfinite_steps in a row is not
    assert t.scaler.get_scale() == 2.0**15  # lowered, as GradScaler does
    assert "fp16 gradient overflow" in caplog.text and "non-finite" not in caplog.text
    bad = batches(1)[0]
    bad["text_feature"] = bad["text_feature"] * float("nan")  # both branches read the caption
    stats = t.train_step(bad)
    assert stats["skipped"] and stats["counted_fault"]


def test_fp16_gradients_nan_on_every_step_stop_naming_the_step_and_the_last_finite_loss():
    """GradScaler skips a step whose gradients are not finite and halves its scale, for ever; the loop counts
    those skips toward max_nonfinite_steps and stops with one line."""
    from wordepth.engine import TrainingStopped

    t = trainer(12, max_nonfinite_steps=5)
    t.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)  # what --amp fp16 uses
    losses = []
    real_step = t.train_step

    def step(batch):
        if t.global_step == 1:  # from the second step on, every gradient is NaN (the loss stays finite)
            for p in t.model.parameters():
                p.register_hook(lambda g: g * float("nan"))
        stats = real_step(batch)
        losses.append(float(stats["loss"]))
        return stats

    t.train_step = step
    with pytest.raises(TrainingStopped) as exc:
        t.train()
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("step 5: 5 consecutive steps with a non-finite loss or gradient")
    assert f"the last finite loss was {losses[0]:.6g} (step 0)" in msg
    assert t.scaler.get_scale() == 2.0**16 / 2**5 and "lowered its scale to 2.05e+03" in msg
    assert t.global_step == 6


def test_resuming_on_fewer_gpus_restores_the_states_that_exist(monkeypatch, caplog):
    gen = torch.Generator().manual_seed(1)
    state = rng_state(gen)
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]  # saved on an 8-GPU node
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((int(s[0]), device)))
    with caplog.at_level(logging.INFO, logger="wordepth"):
        set_rng_state(state, gen)
    assert restored == [(0, 0), (1, 1)]
    assert "CUDA random states of 8 GPUs, this machine has 2" in caplog.text and "2, 3, 4, 5, 6, 7" in caplog.text


def test_each_rank_has_its_own_seed():
    seed_everything(5, rank=0)
    a = torch.rand(3)
    seed_everything(5, rank=1)
    assert not torch.equal(a, torch.rand(3))


def test_compile_wraps_the_ddp_module_without_the_unused_parameter_walk(monkeypatch):
    """DDP first, then torch.compile of it: DDP's bucketed all-reduce can overlap the backward. DDP does
    not walk the graph for unused parameters (no host sync in the backward); the branch hook is registered."""
    order, seen = [], {}

    class FakeDDP:
        def __init__(self, m, **kw):
            order.append("ddp")
            seen.update(kw, module=m)

        def register_comm_hook(self, state, hook):
            seen["hook"] = (state, hook)

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    monkeypatch.setattr(torch, "compile", lambda m, **kw: order.append("compile") or ("compiled", m))
    model = torch.nn.Linear(1, 1)
    net, grads = train_cli.wrap(model, RunConfig().with_options(compile=True), Runtime(torch.device("cpu"), 0, 2))
    assert order == ["ddp", "compile"] and net[0] == "compiled" and isinstance(net[1], FakeDDP)
    assert seen["module"] is model and seen["find_unused_parameters"] is False
    assert seen["hook"][0] is grads and grads.distributed


# --------------------------------------------------------------------------- through wordepth-train
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), "nyu", n_train=4, n_test=2, height=64, width=96,
                                  seed=0)


def argv(data, log_dir, *extra, steps=1):
    return ["--preset", "tiny", "--dataset", "nyu", "--data_path", str(data["data_path"]), "--gt_path",
            str(data["gt_path"]), "--filenames_file", str(data["train_split"]), "--text_feat_dir",
            str(data["text_feat_dir"]), "--data_path_eval", str(data["data_path_eval"]), "--gt_path_eval",
            str(data["gt_path_eval"]), "--filenames_file_eval", str(data["test_split"]), "--input_height", "64",
            "--input_width", "96", "--batch_size", "2", "--max_steps", str(steps), "--num_threads", "0",
            "--log_directory", str(log_dir), "--model_name", "r", "--no_tqdm", "--learning_rate", "1e-3",
            "--max_depth", "10", "--max_depth_eval", "10", *extra]


def test_resuming_with_another_batch_size_is_refused_naming_it(data, tmp_path):
    train_cli.main(argv(data, tmp_path))
    last = tmp_path / "r" / "last.pth"
    out = run_case(train_cli.main, argv(data, tmp_path, "--checkpoint_path", last, "--batch_size", "1",
                                        "--learning_rate", "2e-3"),
                   tmp_path, names=["--batch_size 1 (the checkpoint's: 2)", "--learning_rate", "--force_config"],
                   may_change=[tmp_path / "r" / "train.log"], out_root=tmp_path / "r")
    assert out.code == 1
    forced = train_cli.main(argv(data, tmp_path, "--checkpoint_path", last, "--batch_size", "1", "--force_config",
                                 steps=2))
    assert forced["global_step"] == 2


def test_config_json_replaces_a_planted_link_instead_of_following_it(data, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    target = tmp_path / "elsewhere.txt"
    target.write_text("not yours\n")
    (run / "config.json").symlink_to(target)
    train_cli.main(argv(data, tmp_path))
    assert target.read_text() == "not yours\n"
    assert not (run / "config.json").is_symlink() and json.loads((run / "config.json").read_text())["optim"]["batch_size"] == 2


def test_overwrite_removes_the_replaced_runs_best_checkpoints(data, tmp_path):
    train_cli.main(argv(data, tmp_path, "--do_online_eval", "--eval_freq", "1", steps=3))
    run = tmp_path / "r"
    assert list(run.glob("model-*-best_*")) and (run / "metrics.json").exists()
    train_cli.main(argv(data, tmp_path, "--overwrite"))
    assert list(run.glob("model-*-best_*")) == [] and not (run / "metrics.json").exists()
    assert "--overwrite: removed the replaced run's model-" in (run / "train.log").read_text()


# --------------------------------------------------------------------------- two processes (gloo)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, args_list, out_dir, fail_at):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    real_sample, real_step = WorDepth.sample, Trainer.train_step
    eps_seen, branches = [], []

    def sample(self, branch, x, mean, std, logvar, eps=None, generator=None):
        if branch == "text" and eps is None:  # the draw the model makes, recorded
            eps = torch.randn(x.shape[0], self.cfg.latent_dim, *x.shape[-2:], device=x.device, dtype=x.dtype)
            eps_seen.append(eps.clone())
        return real_sample(self, branch, x, mean, std, logvar, eps=eps, generator=generator)

    def step(self, batch):
        if fail_at is not None and rank == 1 and self.global_step == fail_at:
            raise RuntimeError("simulated failure on rank 1")
        stats = real_step(self, batch)
        branches.append(stats["branch"])
        return stats

    WorDepth.sample, Trainer.train_step = sample, step
    try:
        train_cli.main(args_list)
    finally:
        torch.save({"eps": eps_seen, "branches": branches}, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_ranks_draw_different_eps_and_the_same_branches(data, tmp_path):
    args_list = argv(data, tmp_path, "--device", "cpu", "--batch_size", "1", "--alter_prob", "0.5",
                     "--drop_path_rate", "0", steps=6)
    mp.spawn(_worker, args=(2, _free_port(), args_list, str(tmp_path), None), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["branches"] == r1["branches"] and "text" in r0["branches"]
    assert len(r0["eps"]) == len(r1["eps"]) > 0
    assert all(not torch.equal(a, b) for a, b in zip(r0["eps"], r1["eps"]))


@pytest.mark.slow
def test_a_failure_on_another_rank_ends_every_rank_naming_the_last_checkpoint(data, tmp_path):
    args_list = argv(data, tmp_path, "--device", "cpu", "--batch_size", "1", "--save_freq", "1", steps=6)
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, args_list, str(tmp_path), 3)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    alive = [p.is_alive() for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert alive == [False, False]  # neither waits for the other
    assert all(p.exitcode != 0 for p in procs)
    log = (tmp_path / "r" / "train.log").read_text()
    assert f"the last checkpoint is {tmp_path / 'r' / 'last.pth'}" in log
    assert torch.load(tmp_path / "r" / "last.pth", weights_only=True)["global_step"] >= 3

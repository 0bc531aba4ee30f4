"""The training engine on the tiny preset and synthetic data (CPU)."""
import json
import os
import signal
import socket

import pytest
import torch
import torch.multiprocessing as mp

import eval as eval_entry
import train as train_entry
from wordepth.checkpoints import load_training_state
from wordepth.cli.options import parse_args, run_config
from wordepth.data.generated.synthetic import make_synthetic_dataset
from wordepth.cli.train import build_trainer
from wordepth.engine import Trainer
from tests.tensorboard_events import summary_values
from tests.train_args import train_argv


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), "nyu", n_train=12, n_test=4, height=64,
                                  width=96, seed=0)


def argv(data, run_dir, name="run", **over):
    return train_argv(data, run_dir, name, **over)


def test_resume_after_sigterm_equals_uninterrupted_run(data, tmp_path, monkeypatch):
    # uninterrupted: 6 steps (one epoch boundary at step 6 = 12 samples / batch 2)
    full = train_entry.main(argv(data, tmp_path, "full", max_steps=8, drop_path_rate=0.1))
    ref = load_training_state(tmp_path / "full" / "last.pth")
    assert full["global_step"] == 8

    # interrupted by a real SIGTERM after step 3, then resumed from its last checkpoint
    original = Trainer.train_step

    def step_then_signal(self, batch):
        out = original(self, batch)
        if self.global_step == 2:  # incremented after this call: the signal lands during step 3
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    part = train_entry.main(argv(data, tmp_path, "part", max_steps=8, drop_path_rate=0.1))
    monkeypatch.setattr(Trainer, "train_step", original)
    assert part["global_step"] == 3
    saved = load_training_state(tmp_path / "part" / "last.pth")  # loadable, at the interrupted step
    assert saved["global_step"] == 3 and saved["epoch"] == 0 and saved["step_in_epoch"] == 3
    resumed = train_entry.main(argv(data, tmp_path, "part", max_steps=8, drop_path_rate=0.1,
                                    checkpoint_path=tmp_path / "part" / "last.pth"))
    assert resumed["global_step"] == 8
    final = load_training_state(tmp_path / "part" / "last.pth")
    assert final["branch_counts"] == ref["branch_counts"]
    for k, v in ref["model"].items():
        torch.testing.assert_close(final["model"][k], v, rtol=0, atol=0, msg=k)


def test_own_checkpoint_is_plain_data(data, tmp_path):
    train_entry.main(argv(data, tmp_path, max_steps=1))
    obj = torch.load(tmp_path / "run" / "last.pth", weights_only=True)  # no allow-list needed
    assert obj["format"] == "wordepth" and obj["config"]["model"]["latent_dim"] == 32
    assert set(obj) >= {"model", "optimizer", "global_step", "epoch", "rng", "config", "best"}
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert "git_commit" in config["resolved"] and config["resolved"]["preset"] == "tiny"
    assert obj["config"]["record"] == config  # the checkpoint holds the run's configuration too


@pytest.mark.parametrize("p,expected", [(0.0, {"text": 0, "image": 4}), (1.0, {"text": 4, "image": 0})])
def test_branch_counts_follow_p(data, tmp_path, p, expected):
    out = train_entry.main(argv(data, tmp_path, alter_prob=p, max_steps=4))
    assert out["branch_counts"] == expected


def test_tensorboard_has_scalars_and_images(data, tmp_path):
    train_entry.main(argv(data, tmp_path, max_steps=4, do_online_eval=True, eval_freq=3))
    files = list((tmp_path / "run" / "summary").glob("events.out.tfevents.*"))
    assert files
    tags = {(tag, kind) for tag, kind, _ in summary_values(files)}
    names = {t for t, _ in tags}
    assert {"train/loss", "train/silog", "train/learning_rate", "eval/abs_rel", "eval/d1"} <= names
    images = {t for t, kind in tags if kind == "image"}
    assert {"train/input", "train/depth_pred", "train/depth_gt", "train/abs_rel_error",
            "train/prior_depth_from_text"} <= images
    # evaluated after update 4, named after the original's pre-increment step 3
    assert list((tmp_path / "run").glob("model-3-best_abs_rel_*"))  # original-layout best checkpoint


def test_online_eval_at_the_original_steps_and_no_final_eval(data, tmp_path, monkeypatch):
    """The original evaluates when its pre-increment step is a positive multiple of eval_freq."""
    seen = []
    original = Trainer.online_eval

    def record(self, step, track_best=True):
        seen.append((step, self.global_step, track_best))
        return original(self, step, track_best)

    monkeypatch.setattr(Trainer, "online_eval", record)
    train_entry.main(argv(data, tmp_path, "a", max_steps=6, do_online_eval=True, eval_freq=2))
    assert seen == [(2, 3, True), (4, 5, True)]  # not after update 2, 4 or 6; no final evaluation
    best = {p.name.split("-")[1] for p in (tmp_path / "a").glob("model-*-best_*")}
    assert best <= {"2", "4"} and best
    obj = load_training_state(next((tmp_path / "a").glob("model-*-best_abs_rel_*")))
    assert obj["global_step"] in (2, 4)
    seen.clear()
    train_entry.main(argv(data, tmp_path, "b", max_steps=6, do_online_eval=True, eval_freq=2, final_eval=True,
                          eval_before_train=True))
    assert seen == [(0, 0, False), (2, 3, True), (4, 5, True), (5, 6, True)]


def test_train_step_uses_build_optimizer_and_learning_rate(data, tmp_path, monkeypatch):
    """The loop takes the path the golden trajectory checks: build_optimizer's Adam and learning_rate's values."""
    import wordepth.cli.train as train_cli
    from wordepth.build import learning_rate

    built = []
    real_build = train_cli.build_optimizer

    def build(model, args):
        built.append(real_build(model, args))
        return built[-1]

    monkeypatch.setattr(train_cli, "build_optimizer", build)
    cfg = run_config(parse_args(argv(data, tmp_path, max_steps=3, adam_eps=1e-3, weight_decay=0.01)))
    trainer = build_trainer(cfg)
    seen = []
    original = trainer.train_step

    def step(batch):
        stats = original(batch)
        seen.append((stats["lr"], trainer.optimizer.param_groups[0]["lr"]))
        return stats

    trainer.train_step = step
    trainer.train()
    assert len(built) == 1 and trainer.optimizer is built[0]
    group = trainer.optimizer.param_groups[0]
    assert group["eps"] == 1e-8 and group["weight_decay"] == 0.01  # --adam_eps ignored, as the original
    assert seen == [(learning_rate(k, 3, cfg.optim),) * 2 for k in range(3)]
    assert seen[0][0] == 1e-3 and seen[2][0] < 1e-3  # poly(k - 1) from the second step on


def test_last_partial_batch_is_kept(data, tmp_path, monkeypatch):
    """12 samples, batch 5: 3 steps per epoch (5, 5, 2), as the original's DataLoader without drop_last."""
    sizes = []
    original = Trainer.train_step

    def record(self, batch):
        sizes.append(len(batch["path"]))
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", record)
    out = train_entry.main(argv(data, tmp_path, batch_size=5, num_epochs=2, max_steps=None))
    assert sizes == [5, 5, 2, 5, 5, 2] and out["global_step"] == 6
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved"]["steps_per_epoch"] == 3 and config["resolved"]["total_steps"] == 6


def test_bf16_autocast_runs_on_cpu(data, tmp_path):
    out = train_entry.main(argv(data, tmp_path, amp="bf16", max_steps=2))
    assert out["global_step"] == 2
    obj = load_training_state(tmp_path / "run" / "last.pth")
    assert all(torch.isfinite(v).all() for v in obj["model"].values() if v.is_floating_point())
    assert all(v.dtype == torch.float32 for v in obj["model"].values() if v.is_floating_point())


def test_eval_only_three_ways_agree(data, tmp_path):
    train_entry.main(argv(data, tmp_path, max_steps=2))
    ckpt = tmp_path / "run" / "last.pth"
    a = eval_entry.main(argv(data, tmp_path) + ["--checkpoint_path", str(ckpt), "--metrics_json",
                                                 str(tmp_path / "a.json")])
    b = train_entry.main(argv(data, tmp_path) + ["--eval_only", "--checkpoint_path", str(ckpt)])
    cfg = tmp_path / "cfg.txt"
    cfg.write_text("\n".join(" ".join(p) for p in zip(*[iter(argv(data, tmp_path)[:-1])] * 2)) + "\n--no_tqdm\n"
                   "--dist_url tcp://127.0.0.1:23456\n")  # a launch option of the original: tolerated in a config file
    c = eval_entry.main([str(cfg), "--checkpoint_path", str(ckpt), "--eval_batch_size", "3"])
    for k in ("abs_rel", "rms", "d1", "silog"):
        assert a[k] == pytest.approx(b[k], rel=1e-6) and a[k] == pytest.approx(c[k], rel=1e-5)
    assert json.loads((tmp_path / "a.json").read_text())["count"] == 4


@pytest.mark.slow
def test_eval_compile_uses_frozen_inductor_and_keeps_the_metrics(data, tmp_path, monkeypatch):
    """eval.py --compile evaluates through compile_for_inference (torch.compile with frozen weights):
    the same metrics as eager to 1e-5."""
    import wordepth.evaluation as evaluation
    from wordepth.runtime import compile_for_inference

    train_entry.main(argv(data, tmp_path, max_steps=1))
    ckpt = str(tmp_path / "run" / "last.pth")
    compiled = []

    def spy(model):
        compiled.append(compile_for_inference(model))
        return compiled[-1]

    monkeypatch.setattr(evaluation, "compile_for_inference", spy)
    eager = eval_entry.main(argv(data, tmp_path) + ["--checkpoint_path", ckpt])
    assert compiled == []
    fast = eval_entry.main(argv(data, tmp_path) + ["--checkpoint_path", ckpt, "--compile"])
    assert len(compiled) == 1 and isinstance(compiled[0], torch._dynamo.eval_frame.OptimizedModule)
    for k in ("abs_rel", "rms", "d1", "silog"):
        assert fast[k] == pytest.approx(eager[k], rel=1e-5, abs=1e-7)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, args_list, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    trainer = build_trainer(run_config(parse_args(args_list)))
    result = trainer.train()["eval"]  # the final online evaluation, split across the two ranks
    torch.save(trainer.model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    torch.save(result, os.path.join(out_dir, f"eval{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_gloo_two_processes(data, tmp_path):
    args_list = argv(data, tmp_path, max_steps=3, batch_size=1, device="cpu", do_online_eval=True,
                     eval_freq=1000, final_eval=True)
    mp.spawn(_ddp_worker, args=(2, _free_port(), args_list, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=k)
    e0 = torch.load(tmp_path / "eval0.pt", weights_only=True)
    assert e0["count"] == 4  # every test image once across the two ranks
    # the same weights evaluated in one process give the same numbers
    ckpt = tmp_path / "single.pth"
    cfg_model = load_training_state(tmp_path / "run" / "last.pth")
    cfg_model["model"] = r0
    torch.save(cfg_model, ckpt)
    single = eval_entry.main(argv(data, tmp_path) + ["--checkpoint_path", str(ckpt)])
    for k in ("abs_rel", "rms", "d1", "silog", "log10"):
        assert e0[k] == pytest.approx(single[k], rel=1e-5)


def test_learning_rate_schedule_values():
    """lr0 at step 0, poly(k - 1) at step k, the end value at the last step; -1 keeps it constant."""
    from wordepth.build import learning_rate

    args = run_config(parse_args(["--learning_rate", "3e-5", "--end_learning_rate", "1e-5"])).optim
    assert learning_rate(0, 10, args) == 3e-5  # the optimizer's initial rate, exactly
    assert learning_rate(1, 10, args) == (3e-5 - 1e-5) * 1 ** 0.9 + 1e-5  # the formula at 0 (not exactly 3e-5)
    assert learning_rate(2, 10, args) == pytest.approx(2e-5 * 0.9 ** 0.9 + 1e-5, rel=1e-12)
    assert learning_rate(11, 10, args) == pytest.approx(1e-5, rel=1e-12)
    constant = run_config(parse_args(["--learning_rate", "3e-5", "--end_learning_rate=-1"])).optim
    assert {learning_rate(k, 10, constant) for k in range(12)} == {3e-5}


def test_resuming_an_original_checkpoint_follows_the_original(data, tmp_path, monkeypatch):
    """global_step from the file, its epoch restarted, no evaluation at the first step after loading."""
    import wordepth.cli.train as train_cli
    from wordepth.models.wordepth import WorDepth, preset_config

    # a tiny network stands in for a Swin-L file of the original layout (only Swin-L has that layout)
    model = WorDepth(preset_config("tiny", ape_grid=(16, 24)))
    ckpt = tmp_path / "model-7"
    torch.save({"format": "wordepth", "config": {"model": model.cfg.to_dict()}, "model": model.state_dict(),
                "global_step": 7}, ckpt)
    monkeypatch.setattr(train_cli, "inspect_checkpoint", lambda obj: "original")
    seen = []
    original = Trainer.online_eval

    def record(self, step, track_best=True):
        seen.append((step, self.epoch))
        return original(self, step, track_best)

    monkeypatch.setattr(Trainer, "online_eval", record)
    out = train_entry.main(argv(data, tmp_path, max_steps=9, do_online_eval=True, eval_freq=1,
                                checkpoint_path=ckpt))  # 12 samples, batch 2: 6 steps per epoch
    assert out["global_step"] == 9
    assert seen == [(8, 1)]  # step 7 follows the loading: not evaluated; epoch 7 // 6 = 1

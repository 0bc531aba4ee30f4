"""DDP without ``find_unused_parameters`` (wordepth.runtime.distribute / BranchGradients): two gloo
processes train the same trajectory as one process on the same global batch, for the current and the
legacy model; no host-device synchronisation in the backward; which parameters each branch trains."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch.overrides import _pop_mode_temporarily

from tests.sync_counter import count_syncs
from wordepth.engine import LoopSettings, Trainer, poly_lr
from wordepth.models.wordepth import WorDepth, preset_config
from wordepth.runtime import BranchGradients, Runtime, distribute, parameters_reached, setup_runtime

H, W, PER_RANK, WORLD, STEPS, LR = 64, 96, 2, 2, 6, 1e-4
BRANCHES = ["image", "text"] * (STEPS // 2)  # alternating


def _model(legacy: bool) -> WorDepth:
    torch.manual_seed(0)
    return WorDepth(preset_config("tiny", ape_grid=(H // 4, W // 4), drop_path_rate=0.0, legacy=legacy)).train()


def _global_batches() -> list[dict]:
    g = torch.Generator().manual_seed(3)
    n = PER_RANK * WORLD
    return [{"image": torch.randn(n, 3, H, W, generator=g), "depth": 1 + 4 * torch.rand(n, 1, H, W, generator=g),
             "text_feature": torch.randn(n, 1024, generator=g)} for _ in range(STEPS)]


def _shard(batch: dict, rank: int) -> dict:
    return {k: v[rank * PER_RANK:(rank + 1) * PER_RANK] for k, v in batch.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    rt = setup_runtime("cpu", timeout_minutes=2)
    result = {}
    for legacy in (False, True):
        model = _model(legacy)
        net, grads = distribute(model, rt)
        assert net.find_unused_parameters is False  # no graph walk, no blocking copy in the backward
        opt = torch.optim.Adam(model.parameters(), lr=LR)
        adam_step = opt.step

        def uncounted_step(*args, **kwargs):  # Adam's CPU step counts (not capturable): no GPU wait
            with _pop_mode_temporarily():
                return adam_step(*args, **kwargs)

        opt.step = uncounted_step
        trainer = Trainer(model, opt, [], LoopSettings(total_steps=STEPS, lr=LR, end_lr=LR / 10), rt=rt, net=net,
                          branch_grads=grads)
        branches = iter(BRANCHES)
        model.choose_branch = lambda gen: next(branches)
        syncs = []
        for step, batch in enumerate(_global_batches()):
            torch.manual_seed(1000 * step + rank)  # the text branch's eps: the same draw as the reference's shard
            with count_syncs() as counted:
                trainer.train_step(_shard(batch, rank))
            syncs.append(dict(counted))
            trainer.global_step += 1
        result[legacy] = {"weights": model.state_dict(), "syncs": syncs,
                          "unused": {b: [n for n, p in model.named_parameters() if any(p is q for q in ps)]
                                     for b, ps in grads.unused.items()}}
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def _reference(legacy: bool) -> dict:
    """One process, the global batch: the mean of the two shards' gradients (what DDP averages), clipped,
    Adam; the unused parameters' gradients are None as a single process leaves them. One thread, as each
    worker: the same kernels sum in the same order, so the two agree to rounding (Adam divides gradients
    of the biases before a normalisation, which are rounding noise, by their own size)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_reference(legacy)
    finally:
        torch.set_num_threads(threads)


def _train_reference(legacy: bool) -> dict:
    model = _model(legacy)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for step, (batch, branch) in enumerate(zip(_global_batches(), BRANCHES)):
        for group in opt.param_groups:
            group["lr"] = poly_lr(step, STEPS, LR, LR / 10)
        opt.zero_grad(set_to_none=True)
        for rank in range(WORLD):
            shard = _shard(batch, rank)
            torch.manual_seed(1000 * step + rank)
            loss = model(shard["image"], shard["text_feature"], depth_gt=shard["depth"], branch=branch)["loss"]
            (loss / WORLD).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model.state_dict()


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains_on_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for legacy in (False, True):
        ref = _reference(legacy)
        for r in range(WORLD):
            got = ranks[r][legacy]["weights"]
            for k in ref:
                torch.testing.assert_close(got[k], ref[k], rtol=0, atol=1e-6, msg=f"legacy={legacy} rank {r}: {k}")
            # the step's one read (the packed flags); nothing in the backward waits for the host
            for counted in ranks[r][legacy]["syncs"]:
                assert counted == {"tolist": 1}, counted
        unused = ranks[0][legacy]["unused"]
        names = list(ranks[0][legacy]["weights"])
        # the image branch detaches the text-VAE's mean and std: it never trains the text encoder
        assert {n for n in names if n.startswith("text_encoder.")} <= set(unused["image"])
        if not legacy:  # the current model's text branch never sees the image
            assert {n for n in names if n.startswith(("backbone.", "mlayer.", "eps_layer.", "up_4."))} \
                <= set(unused["text"])
        else:  # the legacy decoder takes the backbone's skip connections on both branches
            assert not any(n.startswith("backbone.layers.") for n in unused["text"])
            assert any(n.startswith("eps_layer.") for n in unused["text"])


def test_the_unused_parameters_are_those_one_process_leaves_without_a_gradient():
    """What the graph walk finds equals what a backward on one process leaves at None, for both branches."""
    for legacy in (False, True):
        model = _model(legacy)
        batch = _shard(_global_batches()[0], 0)
        for branch in ("image", "text"):
            model.zero_grad(set_to_none=True)
            loss = model(batch["image"], batch["text_feature"], depth_gt=batch["depth"], branch=branch)["loss"]
            walked = BranchGradients(model, distributed=True).unused_of(branch, loss)
            with count_syncs() as syncs:
                parameters_reached(loss)
            assert not syncs
            loss.backward()
            none = [p for p in model.parameters() if p.grad is None]
            assert {id(p) for p in walked} == {id(p) for p in none} and none, (legacy, branch)


def test_zero_terms_reach_every_parameter_and_are_dropped_after_the_backward():
    model = _model(False)
    grads = BranchGradients(model, distributed=True)
    batch = _shard(_global_batches()[0], 0)
    loss = model(batch["image"], batch["text_feature"], depth_gt=batch["depth"], branch="text")["loss"]
    with_zeros = grads.loss_with_unused("text", loss)
    assert torch.equal(with_zeros, loss)  # an exact zero is added
    with_zeros.backward()
    assert all(p.grad is not None for p in model.parameters())  # what DDP's reducer waits for
    assert all(not p.grad.any() for p in grads.unused["text"])
    grads.drop_unused("text")
    assert all(p.grad is None for p in grads.unused["text"])
    # one process: nothing added, nothing dropped
    single = BranchGradients(model, distributed=False)
    assert single.loss_with_unused("text", loss) is loss


def test_the_hook_skips_a_bucket_of_unused_parameters_only():
    from wordepth.runtime import branch_allreduce_hook

    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
    grads = BranchGradients(torch.nn.Linear(1, 1), distributed=True)
    grads.skip = frozenset({id(a)})
    calls = []

    class Bucket:
        def __init__(self, params):
            self._params, self._buf = params, torch.ones(5)

        def parameters(self):
            return self._params

        def buffer(self):
            return self._buf

    import torch.distributed.algorithms.ddp_comm_hooks.default_hooks as hooks
    real = hooks.allreduce_hook
    hooks.allreduce_hook = lambda pg, bucket: calls.append(bucket) or "all-reduced"
    try:
        skipped = branch_allreduce_hook(grads, Bucket([a]))
        assert skipped.wait() is not None and not calls
        assert branch_allreduce_hook(grads, Bucket([a, b])) == "all-reduced" and len(calls) == 1
    finally:
        hooks.allreduce_hook = real


def test_one_process_distribute_is_the_model():
    model = torch.nn.Linear(2, 2)
    net, grads = distribute(model, Runtime(torch.device("cpu")))
    assert net is model and not grads.distributed


# --------------------------------------------------------------------------- a dead rank
def _dying_worker(rank: int, port: int, out_dir: str) -> None:
    import logging
    import signal

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    handler = logging.FileHandler(os.path.join(out_dir, f"log{rank}.txt"))
    logging.getLogger("wordepth").addHandler(handler)
    logging.getLogger("wordepth").setLevel(logging.INFO)
    rt = setup_runtime("cpu", timeout_minutes=3)
    model = _model(False)
    net, grads = distribute(model, rt)
    batches = [_shard(b, rank) for b in _global_batches()]
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=LR),
                      batches, LoopSettings(total_steps=STEPS, lr=LR, end_lr=LR), rt=rt, net=net, branch_grads=grads)
    real_step = trainer.train_step

    def step(batch):
        if rank == 1 and trainer.global_step == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer does: no Python, no message
        return real_step(batch)

    trainer.train_step = step
    trainer.train()


@pytest.mark.slow
def test_a_dead_rank_ends_the_run_with_one_line_naming_it(tmp_path):
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_dying_worker, args=(r, port, str(tmp_path))) for r in range(WORLD)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=150)  # well under --dist_timeout (3 minutes): the broken connection ends it
    alive = [p.is_alive() for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert alive == [False, False]
    assert procs[0].exitcode != 0
    lines = (tmp_path / "log0.txt").read_text().splitlines()
    stop = [line for line in lines if "training stopped" in line]
    assert len(stop) == 1 and "rank 1 died" in stop[0] and "at step 2" in stop[0], lines

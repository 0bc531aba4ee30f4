"""``--compile`` in training: TorchDynamo compiles one graph per branch and input size, and none per step.

Through the path ``wordepth-train --compile`` takes (:func:`wordepth.runtime.distribute`, the engine's
``train_step``), with a counting backend instead of Inductor: recompilations are TorchDynamo's decision
(its guards), the same whatever backend compiles the graphs, and the counting backend costs no code
generation.
"""
import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

from wordepth.engine import LoopSettings, Trainer
from wordepth.models.wordepth import WorDepth, preset_config
from wordepth.runtime import Runtime, distribute

SIZES = [(64, 64), (64, 96)]  # two input sizes (multiples of 32: no padding)
STEPS = 3  # per branch and size


def _batch(h: int, w: int, g: torch.Generator) -> dict:
    return {"image": torch.randn(2, 3, h, w, generator=g), "depth": 1 + 4 * torch.rand(2, 1, h, w, generator=g),
            "text_feature": torch.randn(2, 1024, generator=g)}


@pytest.mark.slow  # about a minute: four TorchDynamo traces of the tiny network
@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
def test_compiled_training_makes_one_graph_per_branch_and_size_and_none_per_step(legacy):
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = WorDepth(preset_config("tiny", drop_path_rate=0.0, legacy=legacy)).train()
    graphs = CompileCounter()
    net, grads = distribute(model, Runtime(torch.device("cpu")), compile=True, compile_backend=graphs)
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=1e-4), [],
                      LoopSettings(total_steps=100, lr=1e-4, end_lr=1e-5), rt=Runtime(torch.device("cpu")),
                      net=net, branch_grads=grads)
    g = torch.Generator().manual_seed(1)
    new_graphs = {}
    try:
        for h, w in SIZES:
            for branch in ("image", "text"):
                trainer.model.choose_branch = lambda gen, b=branch: b
                for step in range(STEPS):
                    before = graphs.frame_count
                    stats = trainer.train_step(_batch(h, w, g))
                    assert stats["branch"] == branch and not stats["skipped"]
                    new_graphs[(h, w, branch, step)] = graphs.frame_count - before
    finally:
        torch._dynamo.reset()
    # the first step of each (size, branch) compiles one whole graph; the steps after it reuse it
    assert new_graphs == {(h, w, b, s): int(s == 0) for h, w in SIZES for b in ("image", "text")
                          for s in range(STEPS)}
    assert not counters["graph_break"], dict(counters["graph_break"])  # one graph, not pieces between breaks
    assert counters["stats"]["unique_graphs"] == len(SIZES) * 2

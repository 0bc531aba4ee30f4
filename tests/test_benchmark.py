"""benchmarks/benchmark.py --quick, with a stand-in for the original network. The exact fast paths
it measures are tested in test_model_fastpaths.py."""
import json
import textwrap

import pytest
import torch

from benchmarks import benchmark
from benchmarks.common import QUICK
from benchmarks.original import build_pair, cuda_calls_as_noops, import_original

VARIANTS = ("original_like", "before", "after", "after_channels_last")


# A stand-in for a checkout of the original repository: the same module layout and import style
# (src/networks/wordepth.py imports .swin_transformer), the original constructor signature, a
# .cuda() call, the branch drawn with random.random(), weights in the original layout. The network
# inside is this project's tiny preset computing explicitly (no shortcuts, softmax attention).
STAND_IN_SWIN = """
from wordepth.models.swin import SwinBackbone as SwinTransformer  # stand-in
"""
STAND_IN_WORDEPTH = """
import random

import torch.nn as nn

from .swin_transformer import SwinTransformer  # the original's import style
from wordepth.checkpoints import original_to_project
from wordepth.models.wordepth import WorDepth as _Net, preset_config


class WorDepth(nn.Module):
    def __init__(self, pretrained=None, max_depth=10.0, prior_mean=1.54, si_lambda=0.85, img_size=(480, 640),
                 weight_kld=1e-3, alter_prob=0.1):
        super().__init__()
        assert SwinTransformer is not None
        cfg = preset_config("tiny", max_depth=max_depth, prior_mean=prior_mean,
                            ape_grid=(img_size[0] // 4, img_size[1] // 4)).replace(fused_attn=False)
        self.net = _Net(cfg)
        self.net.fast_paths = False
        self.alter_prob = alter_prob

    def forward(self, image, text_feature_list, depth_gt=None):
        image = image.cuda()  # the original's code calls .cuda(); no GPU here
        branch = "text" if random.random() < self.alter_prob else "image"
        if self.training:
            out = self.net.training_loss(image, text_feature_list, depth_gt, branch)
            return out["depth"], out["loss"]
        return self.net.predict(image, text_feature_list, branch)[0]

    def load_state_dict(self, state, strict=True):  # the original's keys
        return self.net.load_state_dict(original_to_project(state), strict=strict)
"""


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    root = tmp_path_factory.mktemp("original_checkout")
    networks = root / "src" / "networks"
    networks.mkdir(parents=True)
    (networks / "swin_transformer.py").write_text(textwrap.dedent(STAND_IN_SWIN))
    (networks / "wordepth.py").write_text(textwrap.dedent(STAND_IN_WORDEPTH))
    return root


# ---------------------------------------------------------------- the benchmark
@pytest.mark.slow
def test_quick_benchmark_writes_every_key(tmp_path, stand_in):
    """--quick runs every section in-process (memory and predict in subprocesses) and writes the JSON;
    no timing asserts."""
    out = tmp_path / "bench.json"
    benchmark.main(["--quick", "--out", str(out), "--original", str(stand_in), "--compile"])
    res = json.loads(out.read_text())
    assert res["quick"] and res["preset"] == "tiny" and res["runs"] >= 3
    assert {"cpu", "cores", "torch", "torch_threads", "loadavg_end"} <= set(res["machine"])
    assert set(res["targets"]) == {"eval_ratio", "train_ratio", "memory_ratio", "data_ratio", "text_speedup"}

    timing = {"wall_s", "cpu_s", "wall_runs", "cpu_runs", "ratio", "ratio_cpu"}
    assert set(res["eval"]["rows"]) == {"yardstick", *VARIANTS}
    assert set(res["train"]["rows"]) == {"yardstick", *VARIANTS, "after_grad_checkpointing"}
    for section in ("eval", "train"):
        for row in res[section]["rows"].values():
            assert timing <= set(row) and len(row["wall_runs"]) == res["runs"] and row["wall_s"] > 0
        assert res[section]["target_ratio"] > 1
    assert res["eval"]["max_rel_diff_after_vs_before"] < 1e-4
    assert res["eval"]["max_rel_diff_channels_last_vs_before"] < 1e-4

    mem = res["memory"]["rows"]
    assert set(mem) == {"original_like", "after", "after_grad_checkpointing"}
    for row in mem.values():
        assert {"peak_rss_growth_mb", "saved_activations_mb", "ratio_to_original_like",
                "saved_ratio_to_original_like", "measured", "param_grads_mb"} <= set(row)
    # what autograd keeps is deterministic: checkpointing the Swin blocks must shrink it
    assert mem["after_grad_checkpointing"]["saved_activations_mb"] < 0.8 * mem["after"]["saved_activations_mb"]

    assert set(res["data"]["rows"]) == {"pil_decode", "original_style", "wordepth"}
    assert all({"ratio", "per_sample_ms"} <= set(row) for row in res["data"]["rows"].values())
    assert {"speedup", "per_batch_ms", "rows"} <= set(res["text"]) and res["text"]["speedup"] > 0
    gpu = res["gpu"]
    assert ("skipped" in gpu) != torch.cuda.is_available()
    if "rows" in gpu:
        assert {"fp32", "bf16_autocast", "bf16_autocast_compile"} <= set(gpu["rows"])
    prof = res["profile"]
    assert {"encode_image", "decode", "swin.stage3"} <= set(prof["ranges_cpu_s"]) and prof["top_ops"]

    orig = res["original"]
    fast = {"project_onnx", "project_onnx_int8"} | ({"project_bf16"} if res["machine"]["native_bf16"] else set())
    assert set(orig["eval"]["rows"]) == {"original", "project_fp32", "project_fp32_compiled", "yardstick", *fast}
    assert set(orig["train"]["rows"]) == {"original", "project_fp32", "yardstick"}
    for part in ("eval", "train"):
        for row in orig[part]["rows"].values():
            assert {"ratio_to_original", "ratio_to_yardstick", "wall_runs"} <= set(row) and row["wall_s"] > 0
    rows = orig["eval"]["rows"]
    assert rows["original"]["ratio_to_original"] == 1.0
    # the same weights reached both networks: the outputs agree
    assert rows["project_fp32"]["max_rel_diff_to_original"] < 1e-4
    assert rows["project_onnx"]["max_rel_diff_to_project_fp32"] < 1e-4
    assert rows["project_fp32_compiled"]["max_rel_diff_to_project_fp32"] < 1e-4

    paths = res["fastpaths"]
    assert {"onnx", "onnx_int8"} <= set(paths["max_rel_deviation_from_fp32"]) == set(paths["metric_rel_change"])
    assert paths["max_rel_deviation_from_fp32"]["onnx"] < 1e-4
    assert {"silog", "abs_rel", "log10", "rms", "sq_rel", "log_rms", "d1", "d2", "d3"} <= set(paths["metrics"]["fp32"])
    pred = res["predict"]
    assert pred["n_many"] == 3 and pred["many_photos_s"] > pred["forward_s"] > 0 and pred["import_s"] > 0


def test_original_mode_mechanics(stand_in):
    """The stand-in is imported as a package, gets this project's weights in the original layout and
    computes the same depth; its .cuda() calls are no-ops only inside the mode."""
    real = torch.Tensor.cuda, torch.nn.Module.cuda
    ours, original = build_pair(QUICK, stand_in)
    assert not original.training and type(original).__module__.endswith(".wordepth")
    image, text = torch.randn(2, 3, 64, 96), torch.randn(2, 1024)
    with torch.no_grad(), cuda_calls_as_noops():
        assert (torch.Tensor.cuda, torch.nn.Module.cuda) != real
        torch.testing.assert_close(original(image, text), ours(image, text), rtol=1e-4, atol=0)
    assert (torch.Tensor.cuda, torch.nn.Module.cuda) == real  # restored outside the mode
    assert import_original(stand_in) is type(original)  # imported once


def test_original_mode_refuses_a_folder_without_the_network(tmp_path):
    with pytest.raises(SystemExit, match="src/networks/wordepth.py"):
        import_original(tmp_path)
    assert benchmark.main(["--quick", "--only", "original"])["original"]["skipped"]


def test_runs_below_three_are_refused():
    with pytest.raises(SystemExit):
        benchmark.main(["--quick", "--runs", "2", "--only", "text"])


def test_rate_section_counts_the_work_and_the_fast_paths_do_less():
    """benchmarks.model_speed.bench_rate: flop_counter's count is the textbook count for a known layer,
    and the project's forward and training step count less work than the original's computation."""
    from benchmarks.model_speed import bench_rate, counted_gflop

    layer, x = torch.nn.Linear(64, 32), torch.randn(5, 64)
    assert counted_gflop(lambda: layer(x)) == pytest.approx(2 * 5 * 64 * 32 / 1e9)
    res = bench_rate(QUICK, runs=3, sgemm_n=256)
    assert res["sgemm_gflops"] > 0
    for name in ("eval_forward", "train_step"):
        row = res["rows"][name]
        assert 0 < row["gflop"] < row["gflop_original"]
        assert row["gflops"] == pytest.approx(row["gflop"] / row["s"])
    assert QUICK.eval_hw == QUICK.train_hw  # then a step (forward + backward) counts 2-3 forwards' work
    assert 2 < res["rows"]["train_step"]["gflop"] / res["rows"]["eval_forward"]["gflop"] < 4

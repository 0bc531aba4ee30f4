"""benchmarks/benchmark.py --quick, and the exact zero-input optimisation it measures."""
import json

import pytest
import torch

from benchmarks import benchmark
from wordepth.models.decoder import DoubleConv, Refine, Up, channel_shuffle, shuffled_sources
from wordepth.models.wordepth import WorDepth, preset_config

VARIANTS = ("original_like", "before", "after", "after_channels_last")


# ---------------------------------------------------------------- the benchmark
def test_quick_benchmark_writes_every_key(tmp_path):
    """--quick runs every section in-process (memory in subprocesses) and writes the JSON; no timing asserts."""
    out = tmp_path / "bench.json"
    benchmark.main(["--quick", "--out", str(out)])
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


def test_runs_below_three_are_refused():
    with pytest.raises(SystemExit):
        benchmark.main(["--quick", "--runs", "2", "--only", "text"])


# ---------------------------------------------------------------- zero-input work skipped exactly
def test_shuffled_sources_matches_channel_shuffle():
    x = torch.arange(24.0).view(1, 24, 1, 1)
    assert channel_shuffle(x, 4).flatten().long().tolist() == shuffled_sources(24, 4)


@pytest.mark.parametrize("c_in,n_zero", [(16, 4), (16, 12), (16, 14), (24, 9), (448 // 8, 192 // 8)])
def test_double_conv_zero_lead_equals_explicit_zeros(c_in, n_zero):
    """Including groups reached by zeros only (16, 14) and uneven groups; outputs and gradients."""
    torch.manual_seed(0)
    block = DoubleConv(c_in, 8, c_in)
    x = torch.randn(2, c_in - n_zero, 7, 9, requires_grad=True)
    # biases ahead of an InstanceNorm have a zero gradient in exact arithmetic: leave them out
    wrt = [x] + [p for n, p in block.named_parameters() if n not in ("conv1.0.bias", "conv2.0.bias")]
    explicit = block(torch.cat([torch.zeros(2, n_zero, 7, 9), x], dim=1))
    grads_explicit = torch.autograd.grad(explicit.square().sum(), wrt)
    fast = block.forward_zero_lead(x, n_zero)
    grads_fast = torch.autograd.grad(fast.square().sum(), wrt)
    torch.testing.assert_close(fast, explicit, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_fast, grads_explicit):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    with pytest.raises(ValueError, match="channels given"):
        block.forward_zero_lead(x, n_zero + 1)


def test_up_zero_skip_and_refine_zero_feat_equal_explicit_zeros():
    torch.manual_seed(0)
    up = Up(12 + 20, 8)
    x = torch.randn(2, 20, 5, 6)
    skip_size = (11, 13)  # odd: the up-sampled map is padded
    torch.testing.assert_close(up.forward_zero_skip(x, skip_size), up(x, torch.zeros(2, 12, *skip_size)))
    ref = Refine(16, 8)
    z = torch.randn(2, 8, 5, 6)
    for fast, explicit in zip(ref.forward_zero_feat(z), ref(torch.zeros(2, 16, 5, 6), z)):
        torch.testing.assert_close(fast, explicit)


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(0)
    model = WorDepth(preset_config("tiny", drop_path_rate=0.0))
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(2, 3, 64, 96, generator=g), torch.randn(2, 1024, generator=g)


def test_skip_zero_work_matches_the_explicit_computation(tiny_pair):
    model, image, text = tiny_pair
    model.eval()
    eps = torch.randn(2, model.cfg.latent_dim, 4, 6)
    out = {}
    with torch.no_grad():
        for flag in (True, False):
            model.skip_zero_work = flag
            out[flag] = (model(image, text), model.predict(image, text, "text", eps=eps)[0])
    model.skip_zero_work = True
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
    feats = model.encode_image(image)  # stage-1/2 maps are zero maps of the right shape (unused)
    assert feats["x2"].shape == (2, 32, 16, 24) and feats["x3"].shape == (2, 64, 8, 12)
    assert not feats["x2"].any() and not feats["x3"].any()


def test_skip_zero_work_gradients_match(tiny_pair):
    model, image, text = tiny_pair
    model.train()
    gt = torch.rand(2, 1, 64, 96, generator=torch.Generator().manual_seed(2)) * 5 + 0.5
    grads = {}
    for flag in (True, False):
        model.skip_zero_work = flag
        model.zero_grad(set_to_none=True)
        model.training_loss(image, text, gt, "image")["loss"].backward()
        grads[flag] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.skip_zero_work = True
    model.zero_grad(set_to_none=True)
    assert grads[True].keys() == grads[False].keys()
    scale = max(g.abs().max() for g in grads[False].values())
    for name, g in grads[False].items():
        # biases ahead of InstanceNorm have a zero gradient in exact arithmetic: compare to the scale
        torch.testing.assert_close(grads[True][name], g, rtol=1e-4, atol=1e-6 * scale, msg=name)
    assert not grads[True]["up_3.conv.bt.weight"][:, :64].any()  # the columns that meet the zero x3


def test_legacy_model_ignores_skip_zero_work(tiny_pair):
    model, image, text = tiny_pair
    legacy = WorDepth(preset_config("tiny", drop_path_rate=0.0, legacy=True)).eval()
    legacy.load_state_dict(model.state_dict())
    with torch.no_grad():
        a = legacy(image, text)
        legacy.skip_zero_work = False
        b = legacy(image, text)
    torch.testing.assert_close(a, b, rtol=0, atol=0)

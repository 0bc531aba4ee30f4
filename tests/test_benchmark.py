"""benchmarks/benchmark.py --quick (with a stand-in for the original network), and the exact
optimisations it measures."""
import json
import textwrap

import pytest
import torch

from benchmarks import benchmark
from benchmarks.common import QUICK
from benchmarks.original import build_pair, cuda_calls_as_noops, import_original
from wordepth.models.decoder import DoubleConv, OutConv, Refine, Up, channel_shuffle, depth_feature, shuffled_sources
from wordepth.models.swin import window_gather_index
from wordepth.models.wordepth import WorDepth, preset_config

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
        self.net.skip_zero_work = False
        self.net.exact_shortcuts = False
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


# ---------------------------------------------------------------- exact shortcuts (WorDepth.exact_shortcuts)
@pytest.mark.parametrize("h,w,window,shift", [(30, 40, 12, 6), (30, 40, 12, 0), (15, 20, 12, 6), (24, 24, 12, 6),
                                              (5, 7, 8, 4)])
def test_window_gather_index_is_pad_roll_partition(h, w, window, shift):
    src, dst = window_gather_index(h, w, window, shift, "cpu")
    hp, wp = -(-h // window) * window, -(-w // window) * window
    index = torch.full((hp, wp), h * w)  # padded positions point one past the end
    index[:h, :w] = torch.arange(h * w).view(h, w)
    index = torch.roll(index, (-shift, -shift), (0, 1))
    assert torch.equal(src, index.view(hp // window, window, wp // window, window).permute(0, 2, 1, 3).flatten())
    assert torch.equal(src[dst], torch.arange(h * w))  # dst inverts src on the real tokens


def test_output_conv_before_upsampling_and_last_refine_equal_the_explicit_ones():
    torch.manual_seed(0)
    out = OutConv(8, prior_mean=1.54)
    latents = [torch.randn(2, 8, 12, 16), torch.randn(2, 8, 6, 8), torch.randn(2, 8, 3, 4)]
    explicit = out(depth_feature(latents, (4, 8, 16)))
    torch.testing.assert_close(out.forward_sum(latents, (4, 8, 16)), explicit, rtol=1e-5, atol=0)
    ref = Refine(16, 8)
    feat, z = torch.randn(2, 16, 5, 6), torch.randn(2, 8, 5, 6)
    torch.testing.assert_close(ref.forward_depth(feat, z), ref(feat, z)[1], rtol=0, atol=0)


@pytest.mark.parametrize("size", [(64, 96), (70, 100)])  # (70, 100): padded to 96x128, windows padded at stages 2-4
def test_exact_shortcuts_match_the_explicit_computation(tiny_pair, size):
    """Outputs of both branches and the gradients of a training step, with and without the shortcuts."""
    model, _, _ = tiny_pair
    g = torch.Generator().manual_seed(3)
    image, text = torch.randn(2, 3, *size, generator=g), torch.randn(2, 1024, generator=g)
    gt = torch.rand(2, 1, *size, generator=g) * 5 + 0.5
    eps = torch.randn(2, model.cfg.latent_dim, *model.latent_grid(size), generator=g)
    out, grads = {}, {}
    for flag in (True, False):
        model.exact_shortcuts = flag
        model.eval()
        with torch.no_grad():
            out[flag] = (model(image, text), model.predict(image, text, "text", eps=eps)[0])
        model.train()
        model.zero_grad(set_to_none=True)
        model.training_loss(image, text, gt, "image")["loss"].backward()
        grads[flag] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.exact_shortcuts = True
    model.zero_grad(set_to_none=True)
    model.eval()
    assert all(b.skip_padded_tokens for s in model.backbone.layers for b in s.blocks)
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
    assert grads[True].keys() == grads[False].keys()
    assert not any(k.startswith("ref_2.fw") for k in grads[True])  # never read, as in the original
    scale = max(g.abs().max() for g in grads[False].values())
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, rtol=1e-4, atol=1e-5 * scale, msg=name)

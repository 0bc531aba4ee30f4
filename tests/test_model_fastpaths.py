"""The exact fast paths (kernels in wordepth/models/fast_paths.py, each an ``if`` inside its module):
with ``WorDepth.fast_paths`` on and off, outputs and gradients are equal to rounding."""
import pytest
import torch

from wordepth.models import fast_paths
from wordepth.models.decoder import DoubleConv, OutConv, Refine, Up
from wordepth.models.ops import channel_shuffle, depth_feature, shuffled_sources
from wordepth.models.wordepth import WorDepth, preset_config


def _grads(model, image, text, gt, branch="image", eps=None):
    model.zero_grad(set_to_none=True)
    model.training_loss(image, text, gt, branch, eps=eps)["loss"].backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


def _switch(module, on):
    for m in module.modules():
        if hasattr(m, "fast_path"):
            m.fast_path = on


# ---------------------------------------------------------------- decoder blocks given zero maps
def test_shuffled_sources_matches_channel_shuffle():
    x = torch.arange(24.0).view(1, 24, 1, 1)
    assert channel_shuffle(x, 4).flatten().long().tolist() == shuffled_sources(24, 4)


@pytest.mark.parametrize("c_in,n_zero", [(16, 4), (16, 12), (16, 14), (24, 9), (448 // 8, 192 // 8)])
def test_double_conv_with_zero_lead_equals_explicit_zeros(c_in, n_zero):
    """Including groups reached by zeros only (16, 14) and uneven groups; outputs and gradients, with
    the block's fast path on and off (off: real zeros concatenated)."""
    torch.manual_seed(0)
    block = DoubleConv(c_in, 8, c_in, zero_lead=n_zero)
    assert not any("zero_lead" in k for k in block.state_dict())  # non-persistent: checkpoints unchanged
    x = torch.randn(2, c_in - n_zero, 7, 9, requires_grad=True)
    # biases ahead of an InstanceNorm have a zero gradient in exact arithmetic: leave them out
    wrt = [x] + [p for n, p in block.named_parameters() if n not in ("conv1.0.bias", "conv2.0.bias")]
    explicit = block(torch.cat([torch.zeros(2, n_zero, 7, 9), x], dim=1))
    grads_explicit = torch.autograd.grad(explicit.square().sum(), wrt)
    for on in (True, False):
        block.fast_path = on
        out = block(x, zero_lead=True)
        grads = torch.autograd.grad(out.square().sum(), wrt)
        torch.testing.assert_close(out, explicit, rtol=1e-5, atol=1e-5)
        for a, b in zip(grads, grads_explicit):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    block.fast_path = True
    with pytest.raises(ValueError, match="channels given"):
        block(x[:, 1:], zero_lead=True)


@pytest.mark.parametrize("on", [True, False])
def test_up_and_refine_take_none_as_zeros(on):
    torch.manual_seed(0)
    up = Up(12 + 20, 8, c_skip=12)
    x = torch.randn(2, 20, 5, 6)
    ref = Refine(16, 8)
    z = torch.randn(2, 8, 5, 6)
    _switch(up, on), _switch(ref, on)
    torch.testing.assert_close(up(x, None), up(x, torch.zeros(2, 12, 10, 12)))
    for a, b in zip(ref(None, z), ref(torch.zeros(2, 16, 5, 6), z)):
        torch.testing.assert_close(a, b)
    feat, depth = ref(torch.randn(2, 16, 5, 6), z, need_feat=False)
    assert feat is None and torch.equal(depth, ref.dw(torch.cat([torch.zeros(2, 16, 5, 6), z], 1))) is False
    assert torch.equal(ref(None, z, need_feat=False)[1], ref(None, z)[1])


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(0)
    model = WorDepth(preset_config("tiny", drop_path_rate=0.0))
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(2, 3, 64, 96, generator=g), torch.randn(2, 1024, generator=g)


def test_zero_lead_buffers_follow_the_model_and_stay_out_of_checkpoints(tiny_pair):
    model, _, _ = tiny_pair
    legacy = WorDepth(preset_config("tiny", legacy=True))
    assert model.state_dict().keys() == legacy.state_dict().keys()  # the same checkpoint keys
    buffers = dict(model.named_buffers())
    assert {"up_3.conv.zero_lead_feeding", "up_2.conv.zero_lead_keep"} <= set(buffers)
    assert buffers["up_3.conv.zero_lead_feeding"].dtype == torch.int64
    doubled = WorDepth(preset_config("tiny")).double()  # integer buffers are not cast
    assert doubled.up_3.conv.zero_lead_feeding.dtype == torch.int64


def test_one_switch_reaches_every_module_with_a_fast_path(tiny_pair):
    model, _, _ = tiny_pair
    owners = [name for name, m in model.named_modules() if hasattr(m, "fast_path")]
    assert {"outc", "ref_4", "up_3.conv", "backbone.layers.0.blocks.0"} <= set(owners)
    try:
        model.fast_paths = False
        assert not any(getattr(m, "fast_path", False) for m in model.modules())
        model.fast_paths = True
        assert all(m.fast_path for m in model.modules() if hasattr(m, "fast_path"))
    finally:
        model.fast_paths = True
    assert not hasattr(WorDepth, "exact_shortcuts") and not hasattr(WorDepth, "skip_zero_work")


def test_legacy_model_fast_paths_match(tiny_pair):
    model, image, text = tiny_pair
    legacy = WorDepth(preset_config("tiny", drop_path_rate=0.0, legacy=True)).eval()
    legacy.load_state_dict(model.state_dict())
    with torch.no_grad():
        a = legacy(image, text)
        legacy.fast_paths = False
        b = legacy(image, text)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
    assert not torch.allclose(a, model.eval()(image, text))  # the skip connections are used


# ---------------------------------------------------------------- Swin blocks and output layer
@pytest.mark.parametrize("h,w,window,shift", [(30, 40, 12, 6), (30, 40, 12, 0), (15, 20, 12, 6), (24, 24, 12, 6),
                                              (5, 7, 8, 4)])
def test_window_gather_index_is_pad_roll_partition(h, w, window, shift):
    src, dst = fast_paths.window_gather_index(h, w, window, shift, "cpu")
    hp, wp = -(-h // window) * window, -(-w // window) * window
    index = torch.full((hp, wp), h * w)  # padded positions point one past the end
    index[:h, :w] = torch.arange(h * w).view(h, w)
    index = torch.roll(index, (-shift, -shift), (0, 1))
    assert torch.equal(src, index.view(hp // window, window, wp // window, window).permute(0, 2, 1, 3).flatten())
    assert torch.equal(src[dst], torch.arange(h * w))  # dst inverts src on the real tokens


def test_output_conv_before_upsampling_equals_the_explicit_one():
    torch.manual_seed(0)
    out = OutConv(8, prior_mean=1.54)
    latents = [torch.randn(2, 8, 12, 16), torch.randn(2, 8, 6, 8), torch.randn(2, 8, 3, 4)]
    explicit = torch.exp(out.conv(depth_feature(latents, (4, 8, 16))) + 1.54)
    torch.testing.assert_close(out(latents, (4, 8, 16)), explicit, rtol=1e-5, atol=0)
    out.fast_path = False
    torch.testing.assert_close(out(latents, (4, 8, 16)), explicit, rtol=0, atol=0)


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
@pytest.mark.parametrize("size", [(64, 96), (70, 100)])  # (70, 100): padded to 96x128, windows padded at stages 2-4
def test_fast_paths_match_the_explicit_computation(tiny_pair, size, legacy):
    """Outputs of both branches and the gradients of a training step on each branch, with and
    without the fast paths."""
    base, _, _ = tiny_pair
    model = WorDepth(preset_config("tiny", drop_path_rate=0.0, legacy=legacy))
    model.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(3)
    image, text = torch.randn(2, 3, *size, generator=g), torch.randn(2, 1024, generator=g)
    gt = torch.rand(2, 1, *size, generator=g) * 5 + 0.5
    eps = torch.randn(2, model.cfg.latent_dim, *model.latent_grid(size), generator=g)
    out, grads = {}, {}
    for flag in (True, False):
        model.fast_paths = flag
        model.eval()
        with torch.no_grad():
            out[flag] = (model(image, text), model.predict(image, text, "text", eps=eps)[0])
        model.train()
        grads[flag] = {b: _grads(model, image, text, gt, b, eps if b == "text" else None) for b in ("image", "text")}
    model.fast_paths = True
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
    for branch in ("image", "text"):
        fast, slow = grads[True][branch], grads[False][branch]
        assert fast.keys() == slow.keys()  # the same parameters are trained
        assert not any(k.startswith("ref_2.fw") for k in fast)  # never read, as in the original
        scale = max(g.abs().max() for g in slow.values())
        for name, g in fast.items():
            # biases ahead of InstanceNorm have a zero gradient in exact arithmetic: compare to the scale
            torch.testing.assert_close(g, slow[name], rtol=1e-4, atol=1e-5 * scale, msg=f"{branch} {name}")
    if not legacy:
        assert not grads[True]["image"]["up_3.conv.bt.weight"][:, :64].any()  # the columns that meet zero x3


def test_current_text_branch_skips_the_backbone_exactly():
    """The current model's text branch equals its computation on a real backbone output (which the
    decoder then drops) without running Swin."""
    torch.manual_seed(0)
    model = WorDepth(preset_config("tiny", drop_path_rate=0.0)).eval()
    image, text = torch.randn(2, 3, 50, 70), torch.randn(2, 1024)
    eps = torch.randn(2, model.cfg.latent_dim, 4, 6)
    calls = []
    handle = model.backbone.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        skipped = model.predict(image, text, branch="text", eps=eps)[0]
        assert calls == []
        padded = torch.nn.functional.pad(image, (0, 26, 0, 14), mode="replicate")
        feats = model.encode_image(padded)
        assert calls == [1]
        mean, std, logvar = model.encode_text(text)
        z, _ = model.sample("text", feats["x"], mean, std, logvar, eps=eps)
        full = model.to_depth(model.decode(z, feats["x"], feats["x3"], feats["x2"]), None, "text")[..., :50, :70]
    handle.remove()
    torch.testing.assert_close(skipped, full, rtol=0, atol=0)

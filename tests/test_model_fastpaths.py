"""wordepth/models/fast_paths.py: each fast path equals the paper's computation, outputs and gradients."""
import pytest
import torch

from wordepth.models import fast_paths
from wordepth.models.decoder import DoubleConv, OutConv, Refine, Up, channel_shuffle, depth_feature, shuffled_sources
from wordepth.models.wordepth import WorDepth, preset_config


def _grads(model, image, text, gt, branch="image"):
    model.zero_grad(set_to_none=True)
    model.training_loss(image, text, gt, branch)["loss"].backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out


# ---------------------------------------------------------------- decoder: zero inputs skipped
def test_shuffled_sources_matches_channel_shuffle():
    x = torch.arange(24.0).view(1, 24, 1, 1)
    assert channel_shuffle(x, 4).flatten().long().tolist() == shuffled_sources(24, 4)


@pytest.mark.parametrize("c_in,n_zero", [(16, 4), (16, 12), (16, 14), (24, 9), (448 // 8, 192 // 8)])
def test_double_conv_zero_lead_equals_explicit_zeros(c_in, n_zero):
    """Including groups reached by zeros only (16, 14) and uneven groups; outputs and gradients."""
    torch.manual_seed(0)
    block = DoubleConv(c_in, 8, c_in)
    fast_paths.register_zero_lead(block, n_zero)
    assert not any("zero_lead" in k for k in block.state_dict())  # non-persistent: checkpoints unchanged
    x = torch.randn(2, c_in - n_zero, 7, 9, requires_grad=True)
    # biases ahead of an InstanceNorm have a zero gradient in exact arithmetic: leave them out
    wrt = [x] + [p for n, p in block.named_parameters() if n not in ("conv1.0.bias", "conv2.0.bias")]
    explicit = block(torch.cat([torch.zeros(2, n_zero, 7, 9), x], dim=1))
    grads_explicit = torch.autograd.grad(explicit.square().sum(), wrt)
    fast = fast_paths.double_conv_zero_lead(block, x)
    grads_fast = torch.autograd.grad(fast.square().sum(), wrt)
    torch.testing.assert_close(fast, explicit, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_fast, grads_explicit):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    with pytest.raises(ValueError, match="channels given"):
        fast_paths.double_conv_zero_lead(block, x[:, 1:])


def test_up_zero_skip_and_refine_zero_feat_equal_explicit_zeros():
    torch.manual_seed(0)
    up = Up(12 + 20, 8)
    fast_paths.register_zero_lead(up.conv, 12)
    x = torch.randn(2, 20, 5, 6)
    skip_size = (11, 13)  # odd: the up-sampled map is padded
    torch.testing.assert_close(fast_paths.up_zero_skip(up, x, skip_size), up(x, torch.zeros(2, 12, *skip_size)))
    ref = Refine(16, 8)
    z = torch.randn(2, 8, 5, 6)
    for fast, explicit in zip(fast_paths.refine_zero_feat(ref, z), ref(torch.zeros(2, 16, 5, 6), z)):
        torch.testing.assert_close(fast, explicit)


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


def test_fast_paths_on_the_current_model_match_the_explicit_computation(tiny_pair):
    model, image, text = tiny_pair
    model.eval()
    eps = torch.randn(2, model.cfg.latent_dim, 4, 6)
    out = {}
    with torch.no_grad():
        for flag in (True, False):
            model.fast_paths = flag
            out[flag] = (model(image, text), model.predict(image, text, "text", eps=eps)[0])
    model.fast_paths = True
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
    with torch.no_grad():
        feats = fast_paths.encode_image(model, image)  # stage-1/2 maps are zero maps of the right shape (unused)
    assert feats["x2"].shape == (2, 32, 16, 24) and feats["x3"].shape == (2, 64, 8, 12)
    assert not feats["x2"].any() and not feats["x3"].any()


def test_fast_path_gradients_match_on_the_current_model(tiny_pair):
    model, image, text = tiny_pair
    model.train()
    gt = torch.rand(2, 1, 64, 96, generator=torch.Generator().manual_seed(2)) * 5 + 0.5
    grads = {}
    for flag in (True, False):
        model.fast_paths = flag
        grads[flag] = _grads(model, image, text, gt)
    model.fast_paths = True
    assert grads[True].keys() == grads[False].keys() - {n for n in grads[False] if n.startswith("ref_2.fw")}
    scale = max(g.abs().max() for g in grads[False].values())
    for name, g in grads[True].items():
        # biases ahead of InstanceNorm have a zero gradient in exact arithmetic: compare to the scale
        torch.testing.assert_close(g, grads[False][name], rtol=1e-4, atol=1e-5 * scale, msg=name)
    assert not grads[True]["up_3.conv.bt.weight"][:, :64].any()  # the columns that meet the zero x3


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


def test_former_switch_names_are_the_one_switch(tiny_pair):
    model, _, _ = tiny_pair
    try:
        model.skip_zero_work = False
        assert not model.fast_paths and not model.exact_shortcuts
        assert not any(b.fast_path for s in model.backbone.layers for b in s.blocks)
        model.exact_shortcuts = True
        assert model.fast_paths and all(b.fast_path for s in model.backbone.layers for b in s.blocks)
    finally:
        model.fast_paths = True


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


def test_output_conv_before_upsampling_and_last_refine_equal_the_explicit_ones():
    torch.manual_seed(0)
    out = OutConv(8, prior_mean=1.54)
    latents = [torch.randn(2, 8, 12, 16), torch.randn(2, 8, 6, 8), torch.randn(2, 8, 3, 4)]
    explicit = out(depth_feature(latents, (4, 8, 16)))
    torch.testing.assert_close(fast_paths.output_conv_sum(out, latents, (4, 8, 16)), explicit, rtol=1e-5, atol=0)
    ref = Refine(16, 8)
    feat, z = torch.randn(2, 16, 5, 6), torch.randn(2, 8, 5, 6)
    torch.testing.assert_close(fast_paths.refine_depth(ref, feat, z), ref(feat, z)[1], rtol=0, atol=0)


@pytest.mark.parametrize("size", [(64, 96), (70, 100)])  # (70, 100): padded to 96x128, windows padded at stages 2-4
def test_fast_paths_match_the_explicit_computation(tiny_pair, size):
    """Outputs of both branches and the gradients of a training step, with and without the fast paths."""
    model, _, _ = tiny_pair
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
        grads[flag] = _grads(model, image, text, gt)
    model.fast_paths = True
    model.eval()
    for a, b in zip(out[True], out[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
    assert not any(k.startswith("ref_2.fw") for k in grads[True])  # never read, as in the original
    assert grads[True].keys() == {k for k in grads[False] if not k.startswith("ref_2.fw")}
    scale = max(g.abs().max() for g in grads[False].values())
    for name, g in grads[True].items():
        torch.testing.assert_close(g, grads[False][name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_text_branch_skips_the_backbone_exactly():
    """The current model's text branch equals the full computation without running Swin."""
    torch.manual_seed(0)
    model = WorDepth(preset_config("tiny", drop_path_rate=0.0)).eval()
    image, text = torch.randn(2, 3, 50, 70), torch.randn(2, 1024)
    eps = torch.randn(2, model.cfg.latent_dim, 4, 6)
    calls = []
    handle = model.backbone.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        fast = model.predict(image, text, branch="text", eps=eps)[0]
        assert calls == []
        model.fast_paths = False  # the paper's full computation
        full = model.predict(image, text, branch="text", eps=eps)[0]
        assert calls == [1]
    handle.remove()
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)

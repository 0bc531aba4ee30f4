"""The network on the tiny preset: shapes, branches, gradients, any input size."""
import pytest
import torch

from wordepth.losses import kl_image, kl_text, silog_loss
from wordepth.models.wordepth import WorDepth, preset_config


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return WorDepth(preset_config("tiny", drop_path_rate=0.0)).eval()


def _inputs(b=2, h=64, w=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, h, w, generator=g), torch.randn(b, 1024, generator=g)


@pytest.mark.parametrize("size", [(64, 96), (50, 70), (33, 129), (240 // 4, 320 // 4)])
def test_any_input_size(tiny, size):
    image, text = _inputs(h=size[0], w=size[1])
    with torch.no_grad():
        depth = tiny(image, text)
    assert depth.shape == (2, 1, *size)
    assert torch.isfinite(depth).all() and (depth > 0).all()


@pytest.mark.parametrize("fast", [False, True])
def test_padding_is_exact_for_multiples_of_32(tiny, fast):
    """For x32 sizes no padding happens: the forward equals the stages called one by one."""
    image, text = _inputs()
    try:
        tiny.fast_paths = fast
        with torch.no_grad():
            depth = tiny(image, text)
            feats = tiny.encode_image(image)
            mean, std, logvar = tiny.encode_text(text)
            z, _ = tiny.sample("image", feats["x"], mean, std, logvar)
            latents = tiny.decode(z, feats["x"], feats["x3"], feats["x2"])
            manual = tiny.to_depth(latents, feats["metric"], "image")
    finally:
        tiny.fast_paths = True
    torch.testing.assert_close(depth, manual, rtol=0, atol=0)


def test_non_multiple_matches_cropped_padded_input(tiny):
    """A 50x70 image gives the crop of the prediction for its replicate-padded 64x96 version."""
    image, text = _inputs(h=50, w=70)
    padded = torch.nn.functional.pad(image, (0, 26, 0, 14), mode="replicate")
    with torch.no_grad():
        torch.testing.assert_close(tiny(image, text), tiny(padded, text)[..., :50, :70])


def test_text_vae_gets_no_gradient_from_image_branch():
    torch.manual_seed(0)
    model = WorDepth(preset_config("tiny")).train()
    image, text = _inputs()
    gt = torch.rand(2, 1, 64, 96) * 5 + 0.5
    model.training_loss(image, text, gt, "image")["loss"].backward()
    vae_grads = [p.grad for p in model.text_encoder.parameters()]
    assert all(g is None or g.abs().sum() == 0 for g in vae_grads)
    assert model.eps_layer.eps_net.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model.training_loss(image, text, gt, "text")["loss"].backward()
    assert model.text_encoder.mean[0].weight.grad.abs().sum() > 0
    assert model.eps_layer.eps_net.weight.grad is None  # the sampler is not used by the text branch


@pytest.mark.parametrize("p", [0.0, 0.01, 0.5, 1.0])
def test_alternation_frequency_follows_p(p):
    model = WorDepth.__new__(WorDepth)  # choose_branch only reads the config
    torch.nn.Module.__init__(model)
    model.cfg = preset_config("tiny", alter_prob=p)
    g = torch.Generator().manual_seed(1)
    n = 20000
    text = sum(model.choose_branch(g) == "text" for _ in range(n))
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(text / n - p) <= 4 * sd + 1e-9


def test_text_branch_uses_given_eps_and_is_reproducible(tiny):
    image, text = _inputs()
    eps = torch.randn(2, tiny.cfg.latent_dim, 4, 6)
    with torch.no_grad():
        a = tiny.predict(image, text, branch="text", eps=eps)[0]
        b = tiny.predict(image, text, branch="text", eps=eps)[0]
        c = tiny.predict(image, text, branch="text", eps=eps + 1)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError, match="eps must have shape"):
        tiny.predict(image, text, branch="text", eps=torch.zeros(2, 3, 4, 6))


def test_current_model_prior_ignores_image_legacy_does_not():
    torch.manual_seed(0)
    cur = WorDepth(preset_config("tiny")).eval()
    leg = WorDepth(preset_config("tiny", legacy=True)).eval()
    leg.load_state_dict(cur.state_dict())
    image, text = _inputs()
    eps = torch.randn(2, cur.cfg.latent_dim, 4, 6)
    with torch.no_grad():
        a = cur.prior_depth(text, (64, 96), image=image, eps=eps)
        b = cur.prior_depth(text, (64, 96), image=image * 0 + 3, eps=eps)
        c = leg.prior_depth(text, (64, 96), image=image, eps=eps)
        d = leg.prior_depth(text, (64, 96), image=image * 0 + 3, eps=eps)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(c, d)
    with pytest.raises(ValueError, match="legacy"):
        leg.prior_depth(text, (64, 96))


def test_wrong_text_width_is_refused(tiny):
    image, _ = _inputs()
    with pytest.raises(ValueError, match="takes \\(B, 1024\\)"):
        tiny(image, torch.randn(2, 512))


def test_silog_matches_hand_computation():
    gt = torch.tensor([[[[1.0, 2.0], [0.0, 20.0]]]])  # one valid-free pixel (0), one beyond max depth
    pred = torch.tensor([[[[2.0, 2.0], [5.0, 5.0]]]])
    e = torch.tensor([torch.log(torch.tensor(2.0)), 0.0])  # second pixel has e = 0 (<= 1e-3)
    n = 2 + 1e-6
    expected = ((e**2).sum() / n - 0.85 * (e.sum() / n) ** 2) * n / 4
    torch.testing.assert_close(silog_loss(pred, gt, max_depth=10.0), expected)


def test_silog_all_invalid_is_zero_not_nan():
    gt = torch.zeros(2, 1, 4, 4)
    pred = torch.rand(2, 1, 4, 4, requires_grad=True)
    loss = silog_loss(pred, gt, max_depth=10.0)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all()


def test_kl_terms_zero_at_the_prior():
    assert kl_text(torch.zeros(3, 8), torch.zeros(3, 8)).abs() < 1e-7
    eps = torch.randn(4, 8, 64, 64, generator=torch.Generator().manual_seed(0))
    assert kl_image(eps) < 0.01
    assert kl_image(eps * 3 + 1) > 1.0


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = WorDepth(preset_config("tiny", drop_path_rate=0.0)).train()
    image, text = _inputs()
    gt = torch.rand(2, 1, 64, 96) * 5 + 0.5

    def grads():
        model.zero_grad(set_to_none=True)
        model.training_loss(image, text, gt, "image")["loss"].backward()
        return [p.grad.clone() for p in model.backbone.parameters() if p.grad is not None]

    plain = grads()
    model.backbone.set_grad_checkpointing(True)
    assert all(stage.grad_checkpointing for stage in model.backbone.layers)
    ckpt = grads()
    assert len(plain) == len(ckpt) > 0
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)

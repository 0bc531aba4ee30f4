"""What the network must do to run well on a GPU, checked on a CPU: no host-device synchronisation in
the forward, a float32 output head under autocast, no compile graph breaks in the Swin blocks,
non-reentrant checkpointing, and the attention kind chosen per device."""
import pytest
import timm.layers
import torch

from tests.sync_counter import count_syncs
from wordepth.models import fast_paths
from wordepth.models.wordepth import WorDepth, preset_config


@pytest.fixture(scope="module", params=[False, True], ids=["current", "legacy"])
def model(request):
    torch.manual_seed(0)
    return WorDepth(preset_config("tiny", legacy=request.param))


# ---------------------------------------------------------------- host-device synchronisation
def test_sync_counter_counts_what_would_wait_for_the_device():
    t = torch.ones(4)
    with count_syncs() as syncs:
        t.sum().item()
        bool(t.any())
        float(t[0])
        t[t > 0]
        torch.tensor([1, 2], device=t.device)
        torch.as_tensor(t)  # a tensor argument is no copy from Python
        t.nonzero()
        t.tolist()
        t + 1
    assert syncs == {"item": 1, "__bool__": 1, "__float__": 1, "__getitem__(bool mask)": 1,
                     "tensor(python data)": 1, "nonzero": 1, "tolist": 1}


@pytest.mark.parametrize("size", [(64, 96), (50, 70)])  # (50, 70): padded input, padded windows
def test_forward_makes_no_sync(model, size):
    """Both branches: evaluation (no grad) and a training step's forward, with the fast paths; the
    paper's computation in evaluation."""
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(2, 3, *size, generator=g), torch.randn(2, 1024, generator=g)
    gt = torch.rand(2, 1, *size, generator=g) * 5 + 0.5
    for branch in ("image", "text"):
        model.eval()
        with count_syncs() as syncs, torch.no_grad():
            model.predict(image, text, branch)
        assert not syncs, (branch, dict(syncs))
        model.train()
        with count_syncs() as syncs:
            model.training_loss(image, text, gt, branch)
        assert not syncs, (branch, dict(syncs))
    model.eval().fast_paths = False
    try:
        with count_syncs() as syncs, torch.no_grad():
            model(image, text)
    finally:
        model.fast_paths = True
    assert not syncs, dict(syncs)


# ---------------------------------------------------------------- float32 output head under autocast
def test_output_head_runs_in_float32_under_autocast(model):
    """The paper's head: the output conv's input and output are float32 although autocast would
    run a conv in bfloat16 (CPU autocast), and so is the depth."""
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(1, 3, 64, 96, generator=g), torch.randn(1, 1024, generator=g)
    seen = []
    handle = model.outc.conv.register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out.dtype)))
    model.eval().fast_paths = False
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            up = model.up_4.conv.bt(torch.randn(1, model.up_4.conv.bt.in_channels, 2, 2))
            depth = model(image, text)
    finally:
        handle.remove()
        model.fast_paths = True
    assert up.dtype == torch.bfloat16  # autocast is on: any other conv computes in bfloat16
    assert seen == [(torch.float32, torch.float32)]
    assert depth.dtype == torch.float32


@pytest.mark.parametrize("branch", ["image", "text"])
@pytest.mark.parametrize("fast", [True, False])
def test_output_head_ignores_autocast(model, fast, branch):
    """to_depth under bfloat16 autocast on bfloat16 latents equals float32 without autocast, exactly."""
    g = torch.Generator().manual_seed(1)
    latents = [torch.randn(1, model.cfg.latent_dim, 16 // s, 24 // s, generator=g).bfloat16() * 0.3
               for s in (1, 2, 4)]
    metric = torch.randn(1, 2, generator=g).bfloat16()
    model.fast_paths = fast
    try:
        with torch.no_grad():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                autocast = model.to_depth(latents, metric, branch)
            plain = model.to_depth([z.float() for z in latents], metric.float(), branch)
    finally:
        model.fast_paths = True
    assert autocast.dtype == torch.float32
    torch.testing.assert_close(autocast, plain, rtol=0, atol=0)


def test_metric_head_runs_in_float32_under_autocast(model):
    """The whole depth head is float32: the metric head's Linear layers too (CPU autocast would run a
    Linear in bfloat16; CUDA's autocast lists linear among its lower-precision ops as well). Its output
    under autocast equals float32's, and so does the image-branch depth built from it."""
    g = torch.Generator().manual_seed(2)
    x5 = torch.randn(2, model.cfg.backbone.channels[-1], 2, 3, generator=g)
    latents = [torch.randn(2, model.cfg.latent_dim, 16 // s, 24 // s, generator=g) * 0.3 for s in (1, 2, 4)]
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert model.mlayer[1].ln[0](x5.flatten(2).amax(-1)).dtype == torch.bfloat16  # autocast is on
            metric_amp = model.mlayer(x5)
            depth_amp = model.to_depth(latents, metric_amp, "image")
        metric = model.mlayer(x5)
        depth = model.to_depth(latents, metric, "image")
    assert metric_amp.dtype == torch.float32
    torch.testing.assert_close(metric_amp, metric, rtol=1e-6, atol=0)
    torch.testing.assert_close(depth_amp, depth, rtol=1e-6, atol=0)


# ---------------------------------------------------------------- torch.compile and checkpointing
def test_checkpointed_training_step_compiles_without_graph_breaks():
    """The Swin blocks (checkpointed: any side effect there would break the graph) and the rest."""
    torch.manual_seed(0)
    model = WorDepth(preset_config("tiny")).train()
    model.backbone.set_grad_checkpointing(True)
    image, text, gt = torch.randn(1, 3, 64, 96), torch.randn(1, 1024), torch.rand(1, 1, 64, 96) + 1
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(model.training_loss)(image, text, gt, "image")
    finally:
        torch._dynamo.reset()
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    assert explained.graph_count == 1


def test_checkpointing_stays_non_reentrant(monkeypatch):
    """Even when timm is told to use re-entrant checkpointing (TIMM_REENTRANT_CKPT=1)."""
    monkeypatch.setenv("TIMM_REENTRANT_CKPT", "1")
    monkeypatch.setattr(timm.layers.config, "_USE_REENTRANT_CKPT", True)  # what the variable sets at import
    assert timm.layers.use_reentrant_ckpt()
    calls = []
    real = torch.utils.checkpoint.checkpoint

    def recording(fn, *args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", recording)
    torch.manual_seed(0)
    model = WorDepth(preset_config("tiny")).train()
    model.backbone.set_grad_checkpointing(True)
    image, text = torch.randn(1, 3, 64, 96), torch.randn(1, 1024)
    model.training_loss(image, text, torch.rand(1, 1, 64, 96) + 1, "image")["loss"].backward()
    assert calls == [False] * sum(model.cfg.backbone.depths)


# ---------------------------------------------------------------- attention kind
def test_attention_kind_per_device():
    with torch.no_grad():
        assert fast_paths.fused_attention(torch.device("cpu"))
        assert fast_paths.fused_attention(torch.device("cuda"))
    with torch.enable_grad():
        assert fast_paths.fused_attention(torch.device("cuda"))  # training on CUDA: fused
        assert fast_paths.fused_attention(torch.device("cuda", 1))
        assert not fast_paths.fused_attention(torch.device("cpu"))  # training on a CPU: explicit


@pytest.mark.parametrize("stage,index", [(1, 1), (2, 0)])  # a shifted block with padded windows, an unshifted one
def test_fused_and_explicit_attention_agree_with_gradients(monkeypatch, stage, index):
    torch.manual_seed(0)
    block = WorDepth(preset_config("tiny", drop_path_rate=0.0)).backbone.layers[stage].blocks[index].train()
    C = block.attn.qkv.in_features
    x0 = torch.randn(2, 9, 13, C)  # 9x13 tokens: padded to 16x16 windows of 8
    results = []
    for fused in (True, False):
        monkeypatch.setattr(fast_paths, "fused_attention", lambda device, fused=fused: fused)
        x = x0.clone().requires_grad_(True)
        out = block(x)
        params = [p for p in block.parameters() if p.requires_grad]
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), [x, *params])
        results.append((out.detach(), grads))
    (a, grads_a), (b, grads_b) = results
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-5)
    assert block.shift_size[0] == (4 if (stage, index) == (1, 1) else 0)


# ---------------------------------------------------------------- --deterministic on CUDA
def test_deterministic_cuda_is_cuda_and_torch_s_flag():
    from types import SimpleNamespace

    from wordepth.models.ops import deterministic_cuda

    cuda, cpu = SimpleNamespace(is_cuda=True), SimpleNamespace(is_cuda=False)
    assert not deterministic_cuda(cuda) and not deterministic_cuda(cpu)
    torch.use_deterministic_algorithms(True)
    try:
        assert deterministic_cuda(cuda) and not deterministic_cuda(cpu)
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("branch", ["image", "text"])
def test_deterministic_cuda_replacements_keep_outputs_and_gradients(model, monkeypatch, branch):
    """On CUDA under --deterministic the backward of bilinear / bicubic interpolation and of adaptive
    max pooling raises (torch.use_deterministic_algorithms' list): the model then interpolates by
    matrix products and pools with amax. Forced here on the CPU: the same loss and gradients, and
    every interpolation and pooling of the step went through the replacements."""
    from wordepth.models import ops

    g = torch.Generator().manual_seed(4)
    image, text = torch.randn(2, 3, 64, 96, generator=g), torch.randn(2, 1024, generator=g)
    gt = torch.rand(2, 1, 64, 96, generator=g) * 5 + 0.5
    eps = torch.randn(2, model.cfg.latent_dim, 4, 6, generator=g) if branch == "text" else None
    model.train()
    model.backbone.set_drop_path(0.0)

    def step():
        model.zero_grad(set_to_none=True)
        loss = model.training_loss(image, text, gt, branch, eps=eps)["loss"]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain = step()
    interpolations, pools = [], []
    real_interpolate, real_pool = torch.nn.functional.interpolate, torch.nn.functional.adaptive_max_pool2d

    def interpolate(x, *args, **kwargs):
        interpolations.append(x.shape[0] == x.shape[2] and kwargs.get("size", (0, 0))[1] == 1)  # an impulse table
        return real_interpolate(x, *args, **kwargs)

    def pool(*args, **kwargs):
        pools.append(1)
        return real_pool(*args, **kwargs)

    monkeypatch.setattr(ops, "deterministic_cuda", lambda x: True)
    monkeypatch.setattr(torch.nn.functional, "interpolate", interpolate)
    monkeypatch.setattr(torch.nn.functional, "adaptive_max_pool2d", pool)
    det_loss, det = step()
    assert interpolations and all(interpolations)  # only the constant interpolation tables were interpolated
    assert not pools
    torch.testing.assert_close(det_loss, plain_loss, rtol=1e-5, atol=0)
    assert det.keys() == plain.keys()
    scale = max(v.abs().max() for v in plain.values())
    for name, grad in det.items():
        torch.testing.assert_close(grad, plain[name], rtol=1e-4, atol=1e-4 * scale, msg=name)

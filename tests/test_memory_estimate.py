"""The memory estimate of benchmarks/memory_estimate.py (docs/performance.md, "Memory") and the shifted-window
attention mask that SDPA receives as a broadcast view instead of a copy per image."""
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from benchmarks.memory import memory_children
from benchmarks.memory_estimate import attention_bias_bytes, efficient_attention, trace_step
from wordepth.models import fast_paths
from wordepth.models.wordepth import WorDepth, preset_config


def _shifted_block(model):
    """The shifted block of stage 2 (2 heads: a mask with a head dim of size 1 may have any stride there,
    which makes SDPA pad it)."""
    return next(b for stage in model.backbone.layers for b in stage.blocks if b.shift_size[0] and b.attn.num_heads > 1)


def test_broadcast_mask_gives_the_attention_of_the_mask_copied_per_image():
    """The fast path's SDPA with the mask as a (1, nW*heads, N, N) view equals timm's SDPA with the mask
    copied per image (fast paths off), outputs and gradients, on a shifted block with a batch of 3."""
    torch.manual_seed(0)
    model = WorDepth(preset_config("tiny", drop_path_rate=0.0)).train()
    block = _shifted_block(model)
    x = torch.randn(3, 13, 21, block.attn.qkv.in_features, requires_grad=True)  # padded to 16x24: 6 windows
    results = []
    for fast in (True, False):
        block.fast_path = fast
        with mock.patch.object(fast_paths, "fused_attention", lambda device: True):  # as on CUDA
            out = block._attn(x)
        table = block.attn.relative_position_bias_table
        gx, gt = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), (x, table))
        results.append((out.detach(), gx, gt))
    for fast, copied in zip(*results):
        torch.testing.assert_close(fast, copied, rtol=1e-5, atol=1e-6)


def test_sdpa_keeps_one_mask_per_window_not_per_image():
    """On CUDA's memory-efficient kernel (fake CUDA tensors) the mask kept for backward in a shifted block
    is (nW, heads, N, N): a batch of 3 keeps no more of it than a batch of 1 (a copy per image kept 3x)."""
    with torch.device("meta"):
        model = WorDepth(preset_config("tiny"), init_weights=False)
    block = _shifted_block(model.train())
    N, heads = block.window_area, block.attn.num_heads
    kept = {}
    with FakeTensorMode(allow_non_fake_inputs=True):
        block.to_empty(device="cuda")
        for B in (1, 3):
            x = torch.empty(B, 13, 21, block.attn.qkv.in_features, device="cuda", requires_grad=True)
            masks = {}

            def pack(t):
                if t.dim() == 4 and t.shape[-2:] == (N, N):  # the masks (not the (C, C) weights)
                    masks[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
                return t
            with (mock.patch.object(fast_paths, "fused_attention", lambda device: True),
                  mock.patch.object(F, "scaled_dot_product_attention", efficient_attention),
                  torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)):
                block._attn(x)
            kept[B] = sum(masks.values())
    assert kept[1] == 6 * heads * N * N * 4  # 6 windows, fp32
    assert kept[3] == kept[1]


def test_fake_cuda_and_cpu_traces_agree_and_autocast_halves_the_activations():
    """The forward on fake CUDA tensors (CUDA's autocast kernels) and on fake CPU tensors taking the CUDA code
    path keep the same bytes in fp32; bf16 autocast keeps between 45 and 75 % of them (half-precision
    matmul outputs, but fp32 residual stream, LayerNorm outputs and autocast's weight copies)."""
    cfg = preset_config("tiny")
    cuda = trace_step(cfg, (128, 160), 2, device="cuda")
    cpu = trace_step(cfg, (128, 160), 2, device="cpu", backward=True)
    assert cuda["activations"] == cpu["activations"]
    real = WorDepth(cfg).train()  # the parameters a real image-branch step trains (not the text-VAE)
    real.training_loss(torch.randn(1, 3, 64, 64), torch.randn(1, 1024), torch.rand(1, 1, 64, 64) + 1, "image")[
        "loss"].backward()
    assert cpu["gradients"] == sum(4 * p.numel() for p in real.parameters() if p.grad is not None)
    bf16 = trace_step(cfg, (128, 160), 2, device="cuda", precision="bf16")
    assert 0.45 < bf16["activations"] / cuda["activations"] < 0.75
    ckpt = trace_step(cfg, (128, 160), 2, device="cuda", checkpointing=True)
    assert ckpt["activations"] < 0.8 * cuda["activations"]


def test_attention_mask_bytes_of_swin_large_at_nyu_size():
    """Swin-L, 480x640, batch 4, fp32: the shifted blocks' masks are (140, 6), (35, 12), 9 x (12, 24) and
    (4, 48) windows x heads of 144x144 floats; per image 4x as much (counted by hand from the token grids
    120x168, 60x84, 36x48 and 24x24 of the padded windows)."""
    cfg = preset_config("swin_large")
    n2 = 144 * 144 * 4
    shifted = (140 * 6 + 35 * 12 + 9 * 12 * 24 + 4 * 48) * n2
    unshifted = (6 + 12 + 9 * 24 + 48) * n2
    assert attention_bias_bytes(cfg, (480, 640), 4, 4, per_image=False) == shifted + unshifted
    assert attention_bias_bytes(cfg, (480, 640), 4, 4, per_image=True) == 4 * shifted + unshifted


@pytest.mark.slow
def test_estimate_agrees_with_the_measured_cpu_peak():
    """The traced peak of a CPU training step (tiny preset, 256x320, batch 2, fp32) against the peak resident
    memory measured in a fresh process (benchmarks/memory.py): within 10 % + 25 MB (measured: 0-3 %)."""
    hw, batch = (256, 320), 2
    sim = trace_step(preset_config("tiny"), hw, batch, device="cpu", backward=True, cuda_path=False)
    estimated = max(sim["forward_peak"], sim["backward_peak"]) / 2**20
    measured = memory_children([{"variant": "after", "quick": True, "threads": 1, "batch": batch, "hw": list(hw),
                                 "preset": "tiny", "warmup": True, "env": {"MALLOC_MMAP_THRESHOLD_": "4096"}}],
                               concurrent=False)[0]
    assert abs(estimated - measured["peak_rss_growth_mb"]) < 0.1 * measured["peak_rss_growth_mb"] + 25
    assert abs(sim["activations"] / 2**20 - measured["saved_activations_mb"]) < 0.05 * measured["saved_activations_mb"]

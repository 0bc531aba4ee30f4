"""Kernels of the exact fast paths: the paper's computation with less work.

Each function here computes a piece of the forward up to float rounding (outputs and gradients:
``tests/test_model_fastpaths.py``). None of them is a stage: the module that owns the computation
calls its kernel from an ``if self.fast_path:`` inside its own ``forward``, where a reader meets it,
and computes the explicit way otherwise. One switch turns them all on or off: ``WorDepth.fast_paths``.

- Swin blocks (``swin.OriginalOrderSwinBlock._attn``): ``qkv`` on the real tokens only, pad + roll +
  window partition as one gather, ``proj`` after the inverse gather (:func:`window_attention_real_tokens`).
- ``decoder.DoubleConv`` / ``decoder.Up`` / ``decoder.Refine`` given an all-zero input (the current
  model's decoder, which drops the image skip connections): the convolutions drop the weight slices
  that would multiply the zeros (:func:`double_conv_zero_lead`, ``ops.conv_input_slice``).
- ``decoder.OutConv``: the output convolution runs before the full-resolution up-sampling
  (:func:`output_conv_sum`).

Why and how much each saves: docs/performance.md.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from wordepth.models.ops import conv_input_slice, shuffled_sources, upsample


# ---------------------------------------------------------------- Swin blocks
def window_gather_index(h: int, w: int, window: int, shift: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token indices that replace pad, roll and window partition (and their inverse) by one gather each.

    The original pads the (h, w) token map right/bottom to (hp, wp), a multiple of ``window``,
    rolls it by ``-shift`` and cuts it into windows. Closed forms built on ``device`` (no boolean
    indexing, no copy from the host).

    Returns:
        src: (hp * wp,) for each position of the windowed sequence, the index of its source token
            in the flattened (h * w) map, or ``h * w`` (one past the end) for a padded position.
        dst: (h * w,) for each token of the map, its position in the windowed sequence (the
            inverse: window reverse, roll back and crop).
    """
    hp, wp = (h + window - 1) // window * window, (w + window - 1) // window * window
    nw = wp // window  # windows per row
    rows = (torch.arange(hp, device=device).view(-1, 1, window, 1) + shift) % hp  # (nWh, 1, ws, 1)
    cols = (torch.arange(wp, device=device).view(1, -1, 1, window) + shift) % wp  # (1, nWw, 1, ws): window order
    src = torch.where((rows < h) & (cols < w), rows * w + cols, h * w).flatten()
    # row / column of each token in the rolled map; + (hp - shift) rather than - shift keeps the operands
    # of % non-negative (Inductor's range analysis fails on a negative one when the model is compiled)
    r = (torch.arange(h, device=device).view(-1, 1) + (hp - shift)) % hp
    c = (torch.arange(w, device=device).view(1, -1) + (wp - shift)) % wp
    dst = (((r // window) * nw + c // window) * window + r % window) * window + c % window
    return src, dst.flatten()


def _gather_index(block: nn.Module, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`window_gather_index` cached per size on the block (not when traced or compiled)."""
    window, shift = block.window_size[0], block.shift_size[0]
    if not isinstance(h, int) or not isinstance(w, int) or torch.compiler.is_compiling():
        return window_gather_index(h, w, window, shift, device)  # in the graph: no side effect
    cache = block.__dict__.setdefault("_index_cache", {})
    key = (h, w, device)
    if key not in cache:
        cache.clear()
        cache[key] = window_gather_index(h, w, window, shift, device)
    return cache[key]


def relative_position_bias(attn: nn.Module) -> torch.Tensor:
    """timm's ``WindowAttention._get_rel_pos_bias`` (1, heads, N, N), read with ``index_select``: the same
    values; its backward (``index_add_``) is 2-4x faster on a CPU than advanced indexing's ``index_put_``."""
    N = attn.window_area
    bias = attn.relative_position_bias_table.index_select(0, attn.relative_position_index.view(-1))
    return bias.view(N, N, -1).permute(2, 0, 1).contiguous().unsqueeze(0)


def fused_attention(device: torch.device) -> bool:
    """Whether window attention uses SDPA (else the explicit softmax) on ``device`` in this grad mode.

    Without gradients always. With them only on CUDA: a CPU has no fused backward for a mask that
    needs a gradient (the bias table), and SDPA's fallback there is slower than the explicit form.
    """
    return not torch.is_grad_enabled() or device.type == "cuda"


def window_attention_real_tokens(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``OriginalOrderSwinBlock._attn`` computing ``qkv`` / ``proj`` on the real tokens only.

    A padded token is zero, so its q, k, v are the bias: taken from one appended zero token. Pad +
    roll + partition become one gather and their inverse another; ``proj`` runs after the inverse,
    on the real tokens (padded outputs are cropped away). At 480x640 stage 3 pads 30x40 tokens to
    36x48 (+44 %), stage 4 15x20 to 24x24 (+92 %). x: (B, H, W, C) -> (B, H, W, C).
    """
    B, H, W, C = x.shape
    attn, win = block.attn, block.window_size[0]
    nW = ((H + win - 1) // win) * ((W + win - 1) // win)
    N, heads = block.window_area, attn.num_heads
    src, dst = _gather_index(block, H, W, x.device)
    if B > 1:  # row indices into the flattened batch (index_select along dim 0 is the fast copy)
        src = (src + (H * W + 1) * torch.arange(B, device=x.device).view(-1, 1)).flatten()
        dst = (dst + nW * N * torch.arange(B, device=x.device).view(-1, 1)).flatten()
    tokens = F.pad(x.reshape(B, H * W, C), (0, 0, 0, 1))  # (B, HW + 1, C): one zero token for the padding
    qkv = attn.qkv(tokens).view(-1, 3 * C).index_select(0, src)  # (B*nW*N, 3C), window order; padded: bias
    bias = relative_position_bias(attn)  # (1, heads, N, N)
    if block.shift_size[0]:
        Hp, Wp = (H + win - 1) // win * win, (W + win - 1) // win * win
        mask = block._shift_mask(Hp, Wp, x.device, x.dtype)  # (nW, N, N)
        bias = bias + mask.unsqueeze(1)  # (nW, heads, N, N): one per window, shared by the batch (never copied B times)
    if fused_attention(x.device):
        dropout = attn.attn_drop.p if block.training else 0.0
        if B > 1 and bias.shape[0] > 1:
            # SDPA broadcasts a mask over dims of size 1 as a view (CUDA: stride 0, also for its gradient, which
            # the kernel writes at full size and autograd sums back), so windows join the heads: q, k, v as
            # (B, nW*heads, N, hd), one copy that SDPA keeps for backward instead of the gathered qkv, and the
            # mask (1, nW*heads, N, N). Copying the mask per image instead would keep B*nW*heads*N*N floats
            # per shifted block for backward (docs/performance.md, "Memory of a training step on a GPU").
            q, k, v = qkv.view(B, nW, N, 3, heads, -1).permute(3, 0, 1, 4, 2, 5).reshape(
                3, B, nW * heads, N, -1).unbind(0)  # (B, nW*heads, N, hd) each
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.view(1, nW * heads, N, N),
                                                 dropout_p=dropout)  # (B, nW*heads, N, hd), any strides
            out = out.view(B, nW, heads, N, -1).transpose(2, 3)  # (B, nW, N, heads, hd)
        else:  # (1 or nW, heads, N, N) broadcasts over, or matches, the window batch
            q, k, v = qkv.view(B * nW, N, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B*nW, heads, N, hd)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout).transpose(1, 2)
    else:
        q, k, v = qkv.view(B * nW, N, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B*nW, heads, N, hd)
        a = torch.matmul(q * attn.scale, k.transpose(-2, -1)).view(B, nW, heads, N, N) + bias  # bias broadcast over B
        out = torch.matmul(attn.attn_drop(a.view(B * nW, heads, N, N).softmax(dim=-1)), v).transpose(1, 2)
    out = out.reshape(B * nW * N, C).index_select(0, dst)  # (B*HW, C): real tokens
    return attn.proj_drop(attn.proj(out)).view(B, H, W, C)


# ---------------------------------------------------------------- decoder: zero inputs skipped
def register_zero_lead(block: nn.Module, n_zero: int) -> None:
    """Prepares :func:`double_conv_zero_lead` for inputs ``cat[zeros(n_zero), x]``: index buffers.

    For each group of the grouped ``conv1.0`` on ``channel_shuffle(cat[zeros, x])``, the positions
    within the group fed by ``x`` and the channels of ``x`` feeding them. Non-persistent buffers:
    they follow ``.to(device)`` (no copy from the host in the forward) and stay out of ``state_dict``.
    """
    c_in, groups = block.conv1[0].in_channels, block.groups
    src, per = shuffled_sources(c_in, groups), c_in // groups
    keep = [[i for i in range(per) if src[g * per + i] >= n_zero] for g in range(groups)]
    feeding = [src[g * per + i] - n_zero for g in range(groups) for i in keep[g]]
    device = block.conv1[0].weight.device
    block.register_buffer("zero_lead_keep", torch.tensor([i for k in keep for i in k], device=device), persistent=False)
    block.register_buffer("zero_lead_feeding", torch.tensor(feeding, device=device), persistent=False)
    block.zero_lead_counts = tuple(len(k) for k in keep)
    block.zero_lead = n_zero


def double_conv_zero_lead(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A ``decoder.DoubleConv`` on ``cat[zeros(B, n_zero, H, W), x]`` without computing on the zeros
    (:func:`register_zero_lead`).

    ``bt`` uses its input channels ``n_zero..``. The grouped ``conv1.0`` sees the shuffled input;
    each group is convolved on the channels that come from ``x`` alone (groups then hold different
    numbers of channels, hence one conv per group). x: (B, C_in - n_zero, H, W) -> (B, C_out, H, W).
    """
    grouped, n_zero = block.conv1[0], block.zero_lead
    if x.shape[1] + n_zero != grouped.in_channels:
        raise ValueError(f"{n_zero} zero + {x.shape[1]} channels given, the block takes {grouped.in_channels}")
    per_out = grouped.out_channels // block.groups
    x_all = x.index_select(1, block.zero_lead_feeding)  # (B, Σ kept, H, W), grouped
    xs, keeps = x_all.split(block.zero_lead_counts, 1), block.zero_lead_keep.split(block.zero_lead_counts)
    parts = []
    for g, (x_g, keep) in enumerate(zip(xs, keeps)):
        rows = slice(g * per_out, (g + 1) * per_out)
        if not keep.shape[0]:  # only zeros reach this group: its output is the bias
            B, _, H, W = x.shape
            parts.append(grouped.bias[rows].view(1, -1, 1, 1).expand(B, -1, H, W))
            continue
        w_g = grouped.weight[rows].index_select(1, keep)
        parts.append(F.conv2d(x_g, w_g, grouped.bias[rows], grouped.stride, grouped.padding, grouped.dilation))
    mid = block.conv1[1:](torch.cat(parts, dim=1))  # (B, C_mid, H, W)
    return conv_input_slice(block.bt, x, n_zero) + block.conv2(mid)


def output_conv_sum(conv: nn.Conv2d, latents: Sequence[torch.Tensor], factors: Sequence[int]) -> torch.Tensor:
    """``conv(depth_feature(latents, factors))`` for a 3x3 ``conv`` to one channel, without forming the
    L-channel full-resolution map.

    The convolution is, per kernel tap t, a channel contraction y_t = w_t · d followed by a shift of
    y_t. Channel contractions commute with the (per-channel, linear) bilinear up-sampling, so
    y = Σ upsample(w · z, f) is formed from 9 channels instead of L (128), and the shifts are a
    9 -> 1 convolution with a one-hot kernel (zero padding as in the original).
    latents: [(B, L, H/f, W/f)] at the weight's dtype -> (B, 1, H, W).
    """
    w = conv.weight  # (1, L, k, k)
    k = w.shape[-1]
    taps = w[0].permute(1, 2, 0).reshape(k * k, -1, 1, 1)  # (k*k, L, 1, 1): tap t = (i, j) -> i*k + j
    y = upsample(F.conv2d(latents[0], taps), factors[0])  # (B, k*k, H, W)
    for z, f in zip(latents[1:], factors[1:]):
        y += upsample(F.conv2d(z, taps), f)
    shifts = torch.eye(k * k, dtype=w.dtype, device=w.device).view(1, k * k, k, k)  # tap t reads offset t
    return F.conv2d(y, shifts, conv.bias, padding=conv.padding)

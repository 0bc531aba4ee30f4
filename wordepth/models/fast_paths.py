"""Exact fast paths: the paper's computation with less work, switched by ``WorDepth.fast_paths``.

Each function here equals a piece of the forward in ``wordepth.py`` / ``swin.py`` / ``decoder.py`` up
to float rounding, outputs and gradients (``tests/test_model_fastpaths.py``); why and how much:
docs/performance.md. With the switch off the model computes exactly as the paper's code.

- Swin blocks: ``qkv`` on the real tokens only, pad + roll + window partition as one gather, ``proj``
  after the inverse gather (:func:`window_attention_real_tokens`).
- Current model (not legacy): the decoder's image inputs x, x3, x2 are zero maps; convolutions drop
  the weight slices that would multiply them (``*_zero_*``), the stage-1/2 LayerNorms are not
  computed, and the text branch does not run the backbone (:func:`text_branch_grids`).
- Both models: the last refinement computes only its depth feature, and the output convolution
  runs before the full-resolution up-sampling (:func:`output_conv_sum`).
- Building a network whose weights are loaded next without the random initialisation
  (:func:`no_random_init`).

No function here waits for the device: index tensors are built on the device or kept as
non-persistent buffers (:func:`register_zero_lead`), which never enter a ``state_dict``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from wordepth.models.decoder import DoubleConv, OutConv, Refine, Up, apply_metric, shuffled_sources, upsample

LATENT_STRIDES = (4, 8, 16)  # strides of the decoded latents z2, z3, z4 (order of the original's sum)


@contextlib.contextmanager
def no_random_init() -> Iterator[None]:
    """torch's layer initialisers as no-ops (tensors keep whatever memory held), for networks whose
    every weight is loaded next (a strict ``load_state_dict``)."""
    names = ("kaiming_uniform_", "uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "xavier_normal_")
    saved = {name: getattr(nn.init, name) for name in names}
    try:
        for name in names:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


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
    q, k, v = qkv.view(B * nW, N, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B*nW, heads, N, hd)
    bias = relative_position_bias(attn)  # (1, heads, N, N)
    if block.shift_size[0]:
        Hp, Wp = (H + win - 1) // win * win, (W + win - 1) // win * win
        mask = block._shift_mask(Hp, Wp, x.device, x.dtype)  # (nW, N, N)
        # (B*nW, heads, N, N); a view for B = 1
        bias = (bias + mask.unsqueeze(1)).expand(B, -1, -1, -1, -1).reshape(B * nW, heads, N, N)
    if fused_attention(x.device):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=attn.attn_drop.p if block.training else 0.0)
    else:
        a = torch.matmul(q * attn.scale, k.transpose(-2, -1)) + bias  # (B*nW, heads, N, N)
        out = torch.matmul(attn.attn_drop(a.softmax(dim=-1)), v)
    out = out.transpose(1, 2).reshape(B * nW * N, C).index_select(0, dst)  # (B*HW, C): real tokens
    return attn.proj_drop(attn.proj(out)).view(B, H, W, C)


# ---------------------------------------------------------------- decoder: zero inputs skipped
def conv_input_slice(conv: nn.Conv2d, x: torch.Tensor, start: int) -> torch.Tensor:
    """``conv`` (groups 1) on an input whose channels ``0..start-1`` are zero; ``x`` holds the rest.

    x: (B, C_in - start, H, W) -> (B, C_out, H', W'), using the weight columns ``start..`` only.
    """
    return F.conv2d(x, conv.weight[:, start:], conv.bias, conv.stride, conv.padding, conv.dilation)


def register_zero_lead(block: DoubleConv, n_zero: int) -> None:
    """Prepares :func:`double_conv_zero_lead` for inputs ``cat[zeros(n_zero), x]``: index buffers.

    For each group of the grouped ``conv1.0`` on ``channel_shuffle(cat[zeros, x])``, the positions
    within the group fed by ``x`` and the channels of ``x`` feeding them. Non-persistent buffers:
    they follow ``.to(device)`` (no copy from the host in the forward) and stay out of ``state_dict``.
    """
    c_in, groups = block.conv1[0].in_channels, block.groups
    src, per = shuffled_sources(c_in, groups), c_in // groups
    keep = [[i for i in range(per) if src[g * per + i] >= n_zero] for g in range(groups)]
    feeding = [src[g * per + i] - n_zero for g in range(groups) for i in keep[g]]
    block.register_buffer("zero_lead_keep", torch.tensor([i for k in keep for i in k]), persistent=False)
    block.register_buffer("zero_lead_feeding", torch.tensor(feeding), persistent=False)
    block.zero_lead_counts = tuple(len(k) for k in keep)
    block.zero_lead = n_zero


def double_conv_zero_lead(block: DoubleConv, x: torch.Tensor) -> torch.Tensor:
    """``block(cat[zeros(B, n_zero, H, W), x])`` without computing on the zeros (:func:`register_zero_lead`).

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


def up_zero_skip(up: Up, x: torch.Tensor, skip_size: tuple[int, int]) -> torch.Tensor:
    """``up(x, zeros)`` for an all-zero skip map of spatial size ``skip_size``."""
    return double_conv_zero_lead(up.conv, up.upsample_to(x, tuple(skip_size)))


def refine_zero_feat(ref: Refine, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``ref(zeros, depth)`` for an all-zero feature map: the first convs use only the weight columns
    of the depth channels. depth: (B, c_depth, H, W)."""
    c_feat = ref.fw[0].in_channels - depth.shape[1]
    return tuple(seq[1:](conv_input_slice(seq[0], depth, c_feat)) for seq in (ref.fw, ref.dw))


def refine_depth(ref: Refine, feat: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """``ref(feat, depth)[1]`` alone, for the last refinement, whose new feature is never read."""
    return ref.dw(torch.cat([feat, depth], dim=1))


def output_conv_sum(outc: OutConv, latents: Sequence[torch.Tensor], factors: Sequence[int]) -> torch.Tensor:
    """``outc(depth_feature(latents, factors))`` without forming the L-channel full-resolution map.

    The 3x3 convolution to one channel is, per kernel tap t, a channel contraction y_t = w_t · d
    followed by a shift of y_t. Channel contractions commute with the (per-channel, linear)
    bilinear up-sampling, so y = Σ upsample(w · z, f) is formed from 9 channels instead of L
    (128), and the shifts are a 9 -> 1 convolution with a one-hot kernel (zero padding as in the
    original). At the weights' precision with autocast off, like ``OutConv``.
    latents: [(B, L, H/f, W/f)] -> (B, 1, H, W).
    """
    w = outc.conv.weight  # (1, L, k, k)
    k = w.shape[-1]
    with torch.autocast(latents[0].device.type, enabled=False):
        taps = w[0].permute(1, 2, 0).reshape(k * k, -1, 1, 1)  # (k*k, L, 1, 1): tap t = (i, j) -> i*k + j
        y = upsample(F.conv2d(latents[0].to(w.dtype), taps), factors[0])  # (B, k*k, H, W)
        for z, f in zip(latents[1:], factors[1:]):
            y += upsample(F.conv2d(z.to(w.dtype), taps), f)
        shifts = torch.eye(k * k, dtype=w.dtype, device=w.device).view(1, k * k, k, k)  # tap t reads offset t
        return torch.exp(F.conv2d(y, shifts, outc.conv.bias, padding=outc.conv.padding) + outc.prior_mean)


# ---------------------------------------------------------------- the network's stages
def text_branch_grids(model: nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """Zero maps with the shapes of x, x3, x2 for an image padded to x32, no backbone run.

    The current model's text branch decodes from zeros and ignores the metric head, so a training
    step on that branch (half of them at p = 0.5) skips the Swin forward entirely.
    """
    B, _, H, W = image.shape
    c1, c2 = model.cfg.backbone.channels[:2]
    zero = image.new_zeros(())
    return {"x": zero.expand(B, model.cfg.decoder_channels[0], H // 16, W // 16),
            "x3": zero.expand(B, c2, H // 8, W // 8), "x2": zero.expand(B, c1, H // 4, W // 4), "metric": None}


def encode_image(model: nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """``model.encode_image``; the current model's x2, x3 are zero maps whose LayerNorms are skipped."""
    unused = () if model.cfg.legacy else (0, 1)
    x2, x3, x4, x5 = model.backbone(image, unused_stages=unused)  # strides 4, 8, 16, 32
    return {"x": model.up_4(x5, x4), "x2": x2, "x3": x3, "metric": model.mlayer(x5)}


def decode(model: nn.Module, z: torch.Tensor, x: torch.Tensor, x3: torch.Tensor, x2: torch.Tensor
           ) -> list[torch.Tensor]:
    """``model.decode``; in the current model x, x3, x2 are read for their shapes only."""
    if model.cfg.legacy:
        x, z4 = model.ref_4(x, z)
        x = model.up_3(x, x3)
    else:
        x, z4 = refine_zero_feat(model.ref_4, z)
        x = up_zero_skip(model.up_3, x, x3.shape[2:])
    x, z3 = model.ref_3(x, upsample(z4, 2))
    x = model.up_2(x, x2) if model.cfg.legacy else up_zero_skip(model.up_2, x, x2.shape[2:])
    return [refine_depth(model.ref_2, x, upsample(z3, 2)), z3, z4]


def to_depth(model: nn.Module, latents: list[torch.Tensor], metric: torch.Tensor | None, branch: str
             ) -> torch.Tensor:
    """``model.to_depth`` with the output convolution before the up-sampling (:func:`output_conv_sum`)."""
    depth = output_conv_sum(model.outc, latents, LATENT_STRIDES)
    return apply_metric(depth, metric) if branch == "image" else depth


def predict(model: nn.Module, image: torch.Tensor, text: torch.Tensor, branch: str,
            eps: torch.Tensor | None = None, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.predict``'s stages for an image padded to x32, each through its fast path."""
    if branch == "text" and not model.cfg.legacy:
        feats = text_branch_grids(model, image)  # the current text branch never reads the image
    else:
        feats = encode_image(model, image)
    mean, std, logvar = model.encode_text(text)
    z, kl = model.sample(branch, feats["x"], mean, std, logvar, eps=eps, generator=generator)
    latents = decode(model, z, feats["x"], feats["x3"], feats["x2"])
    return to_depth(model, latents, feats["metric"], branch), kl

"""Swin Transformer backbone: timm's Swin with the numerics of the original WorDepth release.

WorDepth (like NeWCRFs before it) ships its own copy of the Swin detection backbone. We take
timm's implementation instead and override, by name, only the three places where the original
computes something different:

1. ``absolute_pos_embed``: a learnt (1, C, H/4, W/4) embedding for the training size, bicubic
   resized to the current patch grid and added after the patch embedding.
2. ``OriginalOrderSwinBlock``: tokens are zero-padded to a multiple of the window *before* the
   cyclic shift (timm shifts first, then pads) and the window is never shrunk to the feature
   size. With the same weights timm's order differs by up to 0.8 at stage 4 on 480x640.
3. ``norm0``..``norm3``: one LayerNorm per output stage; outputs are NCHW maps.

Everything else (patch embedding, window attention, relative position bias, MLP, patch merging,
stochastic depth) is timm's code.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, window_partition, window_reverse


@dataclass(frozen=True)
class SwinConfig:
    """Backbone hyper-parameters (defaults: Swin-L, window 12, as in WorDepth)."""

    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2
    ape_grid: tuple[int, int] = (120, 160)  # training size / 4: NYU 480x640
    fused_attn: bool = True  # SDPA; numerically equivalent to the explicit softmax

    @property
    def channels(self) -> tuple[int, ...]:
        """Channels of the four stage outputs, e.g. (192, 384, 768, 1536) for Swin-L."""
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


def shifted_window_mask(hp: int, wp: int, window: int, shift: int, device, dtype) -> torch.Tensor:
    """The (-100 / 0) attention mask of shifted windows on a padded (hp, wp) grid.

    Returns:
        (num_windows, window*window, window*window) additive mask.
    """
    img = torch.zeros(1, hp, wp, 1, device=device, dtype=dtype)
    region = 0
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for hs in bounds:
        for ws in bounds:
            img[:, hs, ws, :] = region
            region += 1
    win = window_partition(img, (window, window)).view(-1, window * window)  # (nW, N)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


def window_gather_index(h: int, w: int, window: int, shift: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token indices that replace pad, roll and window partition (and their inverse) by one gather each.

    The original pads the (h, w) token map right/bottom to (hp, wp), a multiple of ``window``,
    rolls it by ``-shift`` and cuts it into windows. Returns:
        src: (hp * wp,) for each position of the windowed sequence, the index of its source token
            in the flattened (h * w) map, or ``h * w`` (one past the end) for a padded position.
        dst: (h * w,) for each token of the map, its position in the windowed sequence (the
            inverse: window reverse, roll back and crop).
    Closed forms (no boolean indexing), so that tracing records them for any size.
    """
    hp, wp = (h + window - 1) // window * window, (w + window - 1) // window * window
    nw = wp // window  # windows per row
    rows = (torch.arange(hp, device=device).view(-1, 1, window, 1) + shift) % hp  # (nWh, 1, ws, 1)
    cols = (torch.arange(wp, device=device).view(1, -1, 1, window) + shift) % wp  # (1, nWw, 1, ws): window order
    src = torch.where((rows < h) & (cols < w), rows * w + cols, h * w).flatten()
    r = (torch.arange(h, device=device).view(-1, 1) - shift) % hp  # row of each token in the rolled map
    c = (torch.arange(w, device=device).view(1, -1) - shift) % wp
    dst = (((r // window) * nw + c // window) * window + r % window) * window + c % window
    return src, dst.flatten()


def relative_position_bias(attn: nn.Module) -> torch.Tensor:
    """timm's ``WindowAttention._get_rel_pos_bias`` (1, heads, N, N), read with ``index_select``: the same
    values; its backward (``index_add_``) is 2-4x faster on a CPU than advanced indexing's
    ``index_put_`` (about 0.15 s of a Swin-L training step at 256x320 on 2 cores)."""
    N = attn.window_area
    bias = attn.relative_position_bias_table.index_select(0, attn.relative_position_index.view(-1))
    return bias.view(N, N, -1).permute(2, 0, 1).contiguous().unsqueeze(0)


class OriginalOrderSwinBlock(SwinTransformerBlock):
    """timm's Swin block with the original's pad-then-shift order.

    The original pads the normalised tokens right/bottom to a multiple of the window, then rolls
    the padded map, so padded (zero) tokens take part in the shifted windows; the -100 mask is
    built on the padded grid and padded tokens are otherwise not masked. timm rolls the unpadded
    map and pads afterwards, which changes which tokens share a window.

    With ``skip_padded_tokens`` (and fused attention) the same attention is computed with less
    work: ``qkv`` runs on the real tokens only (a padded token is zero, so its q, k, v are the
    bias, taken from one appended zero token), pad + roll + partition become one gather, and
    ``proj`` runs after the inverse gather, on the real tokens only (padded outputs are cropped
    away). At 480x640 stage 3 pads 30x40 tokens to 36x48 (+44 %), stage 4 15x20 to 24x24 (+92 %).
    With gradients (``explicit_when_training``) the attention is written out instead of fused:
    on a CPU the fused kernel has no backward for a bias that needs a gradient. The result equals
    the explicit computation up to float rounding.
    """

    _mask_cache: dict
    skip_padded_tokens: bool = True
    explicit_when_training: bool = True

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip_padded_tokens and self.attn.fused_attn:
            return self._attn_real_tokens(x)
        B, H, W, C = x.shape
        win_h, win_w = self.window_size
        pad_h = (win_h - H % win_h) % win_h
        pad_w = (win_w - W % win_w) % win_w
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # (B, Hp, Wp, C)
        Hp, Wp = H + pad_h, W + pad_w

        shift_h, shift_w = self.shift_size
        if shift_h or shift_w:
            x = torch.roll(x, shifts=(-shift_h, -shift_w), dims=(1, 2))
            mask = self._shift_mask(Hp, Wp, x.device, x.dtype)
        else:
            mask = None

        windows = window_partition(x, self.window_size).view(-1, self.window_area, C)  # (nW*B, N, C)
        windows = self.attn(windows, mask=mask)
        x = window_reverse(windows.view(-1, win_h, win_w, C), self.window_size, Hp, Wp)  # (B, Hp, Wp, C)

        if shift_h or shift_w:
            x = torch.roll(x, shifts=(shift_h, shift_w), dims=(1, 2))
        return x[:, :H, :W, :].contiguous()

    def _attn_real_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``_attn`` with qkv / proj on the real tokens only and one gather each way (see class doc)."""
        B, H, W, C = x.shape
        attn, win = self.attn, self.window_size[0]
        nW = ((H + win - 1) // win) * ((W + win - 1) // win)
        N, heads = self.window_area, attn.num_heads
        src, dst = self._gather_index(H, W, x.device)
        if B > 1:  # row indices into the flattened batch (index_select along dim 0 is the fast copy)
            src = (src + (H * W + 1) * torch.arange(B, device=x.device).view(-1, 1)).flatten()
            dst = (dst + nW * N * torch.arange(B, device=x.device).view(-1, 1)).flatten()
        tokens = F.pad(x.reshape(B, H * W, C), (0, 0, 0, 1))  # (B, HW + 1, C): one zero token for the padding
        qkv = attn.qkv(tokens).view(-1, 3 * C).index_select(0, src)  # (B*nW*N, 3C), window order; padded: bias
        q, k, v = qkv.view(B * nW, N, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B*nW, heads, N, hd)
        bias = relative_position_bias(attn)  # (1, heads, N, N)
        if self.shift_size[0]:
            Hp, Wp = (H + win - 1) // win * win, (W + win - 1) // win * win
            mask = self._shift_mask(Hp, Wp, x.device, x.dtype)  # (nW, N, N)
            # (B*nW, heads, N, N); a view for B = 1
            bias = (bias + mask.unsqueeze(1)).expand(B, -1, -1, -1, -1).reshape(B * nW, heads, N, N)
        if torch.is_grad_enabled() and self.explicit_when_training:
            # CPU's fused kernel has no backward for a mask that needs a gradient (the bias table):
            # SDPA falls back to its math path, which also checks for fully masked rows
            a = torch.matmul(q * attn.scale, k.transpose(-2, -1)) + bias  # (B*nW, heads, N, N)
            out = torch.matmul(attn.attn_drop(a.softmax(dim=-1)), v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                 dropout_p=attn.attn_drop.p if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B * nW * N, C).index_select(0, dst)  # (B*HW, C): real tokens
        return attn.proj_drop(attn.proj(out)).view(B, H, W, C)

    def _gather_index(self, h: int, w: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(h, int) or not isinstance(w, int):  # traced sizes (ONNX export): no cache
            return window_gather_index(h, w, self.window_size[0], self.shift_size[0], device)
        cache = self.__dict__.setdefault("_index_cache", {})
        key = (h, w, device)
        if key not in cache:
            cache.clear()
            cache[key] = window_gather_index(h, w, self.window_size[0], self.shift_size[0], device)
        return cache[key]

    def _shift_mask(self, hp: int, wp: int, device, dtype) -> torch.Tensor:
        if not isinstance(hp, int) or not isinstance(wp, int):  # traced sizes (ONNX export): no cache
            return shifted_window_mask(hp, wp, self.window_size[0], self.shift_size[0], device, dtype)
        cache = self.__dict__.setdefault("_mask_cache", {})
        key = (hp, wp, device, dtype)
        if key not in cache:
            cache.clear()
            cache[key] = shifted_window_mask(hp, wp, self.window_size[0], self.shift_size[0], device, dtype)
        return cache[key]


class SwinBackbone(SwinTransformer):
    """Swin encoder returning four NCHW feature maps at strides 4, 8, 16, 32.

    Parameter names follow timm (downsampling at the *start* of stages 2-4); see
    ``wordepth.checkpoints`` for the mapping to the original release's names.
    """

    def __init__(self, cfg: SwinConfig = SwinConfig(), init_weights: bool = True):
        super().__init__(
            img_size=(cfg.ape_grid[0] * 4, cfg.ape_grid[1] * 4),
            patch_size=4,
            num_classes=0,
            embed_dim=cfg.embed_dim,
            depths=cfg.depths,
            num_heads=cfg.num_heads,
            window_size=cfg.window_size,
            always_partition=True,  # the original never shrinks the window to the feature size
            strict_img_size=False,
            mlp_ratio=cfg.mlp_ratio,
            qkv_bias=True,
            drop_path_rate=cfg.drop_path_rate,
            embed_layer=partial(PatchEmbed, dynamic_img_pad=True),  # zero-pad right/bottom to x4
            weight_init="" if init_weights else "skip",  # skip: weights about to be loaded (much faster)
        )
        self.cfg = cfg
        del self.norm, self.head  # classification parts; WorDepth normalises each stage instead
        for stage in self.layers:
            for block in stage.blocks:
                block.__class__ = OriginalOrderSwinBlock
                block.attn_mask = None
                block.attn.fused_attn = cfg.fused_attn
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, cfg.embed_dim, *cfg.ape_grid))
        if init_weights:
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        for i, ch in enumerate(cfg.channels):
            self.add_module(f"norm{i}", nn.LayerNorm(ch))

    @property
    def channels(self) -> tuple[int, ...]:
        return self.cfg.channels

    def set_drop_path(self, rate: float) -> None:
        """Reset stochastic depth to rise linearly from 0 to ``rate`` over all blocks."""
        blocks = [b for stage in self.layers for b in stage.blocks]
        for i, block in enumerate(blocks):
            p = rate * i / max(len(blocks) - 1, 1)
            for name in ("drop_path1", "drop_path2"):
                module = getattr(block, name)
                if hasattr(module, "drop_prob"):
                    module.drop_prob = p

    def add_position_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Add the bicubic-resized absolute position embedding. x: (B, h, w, C) patch tokens.

        Without autograd (inference) the resized embedding is kept for the last grid size and
        reused while the parameter is unchanged (``_version``): the resize costs ~2 % of a 480x640
        forward on a CPU and is the same for every image of that size.
        """
        ape = self.absolute_pos_embed
        h, w = x.shape[1:3]
        if (torch.is_grad_enabled() and ape.requires_grad) or not isinstance(h, int) or not isinstance(w, int):
            resized = F.interpolate(ape, size=(h, w), mode="bicubic", align_corners=False)
            return x + resized.permute(0, 2, 3, 1)
        key = (h, w, ape.device, ape.dtype, ape.data_ptr(), ape._version)
        cache = self.__dict__.setdefault("_ape_cache", {})
        if key not in cache:
            cache.clear()
            resized = F.interpolate(ape.detach(), size=(h, w), mode="bicubic", align_corners=False)
            cache[key] = resized.permute(0, 2, 3, 1)
        return x + cache[key]

    def forward(self, x: torch.Tensor, num_stages: int | None = None,
                unused_stages: tuple[int, ...] = ()) -> list[torch.Tensor]:
        """Encode an image.

        Args:
            x: (B, 3, H, W) ImageNet-normalised image.
            num_stages: stop after this many stages (default: all).
            unused_stages: stages whose output the caller ignores: returned as (free, expanded)
                zero maps of the right shape instead of being normalised.

        Returns:
            Stage outputs [(B, C_i, H/4/2^i, W/4/2^i)] after their LayerNorm ``norm{i}``.
        """
        x = self.add_position_embedding(self.patch_embed(x))  # (B, H/4, W/4, C)
        outs = []
        for i, stage in enumerate(self.layers[: num_stages or len(self.layers)]):
            x = stage(x)  # (B, h_i, w_i, C_i)
            if i in unused_stages:
                B, h, w, C = x.shape
                outs.append(x.new_zeros(()).expand(B, C, h, w))
            else:
                outs.append(getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous())
        return outs

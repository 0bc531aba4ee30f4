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

and one that does not change the numbers: ``NonReentrantStage`` checkpoints its blocks (when
``set_grad_checkpointing``) always non-reentrantly, whatever ``TIMM_REENTRANT_CKPT`` says.

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
from timm.models import checkpoint_seq
from timm.models.swin_transformer import (SwinTransformer, SwinTransformerBlock, SwinTransformerStage,
                                          get_relative_position_index, window_partition, window_reverse)

from wordepth.models import fast_paths
from wordepth.models.ops import resize


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


class OriginalOrderSwinBlock(SwinTransformerBlock):
    """timm's Swin block with the original's pad-then-shift order.

    The original pads the normalised tokens right/bottom to a multiple of the window, then rolls
    the padded map, so padded (zero) tokens take part in the shifted windows; the -100 mask is
    built on the padded grid and padded tokens are otherwise not masked. timm rolls the unpadded
    map and pads afterwards, which changes which tokens share a window.

    With ``fast_path`` (set by ``WorDepth.fast_paths``) and fused attention the same attention is
    computed on the real tokens only (:func:`~wordepth.models.fast_paths.window_attention_real_tokens`).
    """

    fast_path: bool = True

    def _attn(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast_path and self.attn.fused_attn:  # the same attention without computing on padded tokens
            return fast_paths.window_attention_real_tokens(self, x)
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

    def _shift_mask(self, hp: int, wp: int, device, dtype) -> torch.Tensor:
        """:func:`shifted_window_mask`, cached per size (not when traced or compiled: no side effects there)."""
        if not isinstance(hp, int) or not isinstance(wp, int) or torch.compiler.is_compiling():
            return shifted_window_mask(hp, wp, self.window_size[0], self.shift_size[0], device, dtype)
        cache = self.__dict__.setdefault("_mask_cache", {})
        key = (hp, wp, device, dtype)
        if key not in cache:
            cache.clear()
            cache[key] = shifted_window_mask(hp, wp, self.window_size[0], self.shift_size[0], device, dtype)
        return cache[key]


class NonReentrantStage(SwinTransformerStage):
    """timm's stage, its gradient checkpointing always non-reentrant.

    timm picks the kind from ``TIMM_REENTRANT_CKPT``; re-entrant checkpointing breaks DDP's
    backward (parameters used twice) and cannot be compiled without graph breaks.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.grad_checkpointing:
            return checkpoint_seq(self.blocks, x, use_reentrant=False)
        return self.blocks(x)


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
            stage.__class__ = NonReentrantStage
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

    def init_non_persistent_buffers(self) -> None:
        """Every block's relative-position index table (one table per window size, copied), as timm's
        ``WindowAttention`` computes it at construction. The blocks' ``attn_mask`` stays None: the
        shift mask is built per padded size (:meth:`OriginalOrderSwinBlock._shift_mask`)."""
        tables: dict[tuple[int, int], torch.Tensor] = {}
        for stage in self.layers:
            for block in stage.blocks:
                index = block.attn.relative_position_index
                window = tuple(block.attn.window_size)
                if window not in tables:
                    tables[window] = get_relative_position_index(*window, device=index.device)
                index.copy_(tables[window])

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
        if ((torch.is_grad_enabled() and ape.requires_grad) or not isinstance(h, int) or not isinstance(w, int)
                or torch.compiler.is_compiling()):
            resized = resize(ape, (h, w), "bicubic", align_corners=False)  # F.interpolate (ops.resize: --deterministic)
            return x + resized.permute(0, 2, 3, 1)
        key = (h, w, ape.device, ape.dtype, ape.data_ptr(), ape._version)
        cache = self.__dict__.setdefault("_ape_cache", {})
        if key not in cache:
            cache.clear()
            resized = F.interpolate(ape.detach(), size=(h, w), mode="bicubic", align_corners=False)
            cache[key] = resized.permute(0, 2, 3, 1)
        return x + cache[key]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode an image: x (B, 3, H, W) ImageNet-normalised -> the four stage outputs
        [(B, C_i, H/4/2^i, W/4/2^i)] after their LayerNorm ``norm{i}``."""
        x = self.add_position_embedding(self.patch_embed(x))  # (B, H/4, W/4, C)
        outs = []
        for i, stage in enumerate(self.layers):
            x = stage(x)  # (B, h_i, w_i, C_i)
            outs.append(getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous())
        return outs

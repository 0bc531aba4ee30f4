"""Decoder blocks of WorDepth: U-Net up-sampling, depth refinement, metric head, output layer.

Module and parameter names match the original release so its checkpoints load directly.
All convolutions are 3x3 with padding 1 unless said; activations are LeakyReLU(0.01).

An input given as ``None`` is an all-zero map (the current model's decoder drops the image skip
connections, :meth:`WorDepth.decode`). With ``fast_path`` (set by ``WorDepth.fast_paths``, on by
default) a block then drops the weight slices that would multiply the zeros; off, it concatenates real
zeros and computes as the original. The kernels are in ``fast_paths.py``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from wordepth.models import fast_paths
from wordepth.models.ops import GlobalMaxPool, channel_shuffle, conv_input_slice, depth_feature, upsample


def conv3x3(c_in: int, c_out: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, groups=groups)


class DoubleConv(nn.Module):
    """``bt(x) + conv2(conv1(shuffle(x)))``: a plain 3x3 conv plus a grouped two-conv path.

    ``zero_lead`` > 0: the block also takes inputs whose first ``zero_lead`` channels are zeros, given
    without them (:meth:`forward`).
    """

    groups = 4
    fast_path: bool = True

    def __init__(self, c_in: int, c_out: int, c_mid: int | None = None, zero_lead: int = 0):
        super().__init__()
        c_mid = c_mid or c_in
        self.conv1 = nn.Sequential(
            conv3x3(c_in, c_mid, groups=self.groups), nn.InstanceNorm2d(c_mid), nn.LeakyReLU(inplace=True)
        )
        self.conv2 = nn.Sequential(conv3x3(c_mid, c_out), nn.InstanceNorm2d(c_out), nn.LeakyReLU(inplace=True))
        self.bt = conv3x3(c_in, c_out)
        self.zero_lead = zero_lead
        if zero_lead:  # index buffers of the fast path (non-persistent: not in the state_dict)
            fast_paths.register_zero_lead(self, zero_lead)

    def init_non_persistent_buffers(self) -> None:
        if self.zero_lead:
            fast_paths.register_zero_lead(self, self.zero_lead)

    def forward(self, x: torch.Tensor, zero_lead: bool = False) -> torch.Tensor:
        """x: (B, C_in, H, W) -> (B, C_out, H, W); with ``zero_lead`` x is (B, C_in - self.zero_lead, H, W),
        the input without its leading zero channels."""
        if zero_lead:
            if self.fast_path:  # no work on the zeros: the weight columns that meet them are dropped
                return fast_paths.double_conv_zero_lead(self, x)
            B, _, H, W = x.shape
            x = torch.cat([x.new_zeros(B, self.zero_lead, H, W), x], dim=1)
        return self.bt(x) + self.conv2(self.conv1(channel_shuffle(x, self.groups)))


class Up(nn.Module):
    """x2 bilinear up-sampling, concatenation ``[skip, upsampled]``, then a DoubleConv."""

    def __init__(self, c_in: int, c_out: int, c_skip: int = 0):
        """``c_skip``: channels of the skip map among ``c_in``, for skip maps given as ``None`` (zeros)."""
        super().__init__()
        self.conv = DoubleConv(c_in, c_out, c_in, zero_lead=c_skip)

    @staticmethod
    def upsample_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """x2 up-sampling, then zero padding to ``size`` (half of the difference left/top)."""
        x = upsample(x, 2)
        dy, dx = size[0] - x.shape[2], size[1] - x.shape[3]
        return F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """x: (B, C_x, h, w), skip: (B, c_skip, H, W) or ``None`` (zeros of size (2h, 2w)) -> (B, C_out, H, W)."""
        if skip is None:
            return self.conv(upsample(x, 2), zero_lead=True)
        x = self.upsample_to(x, skip.shape[2:])
        return self.conv(torch.cat([skip, x], dim=1))


class Refine(nn.Module):
    """Joint update of decoder features and the depth latent from ``cat[feat, depth]``."""

    fast_path: bool = True

    def __init__(self, c_feat: int, c_depth: int):
        super().__init__()
        s = c_feat + c_depth
        self.c_feat = c_feat
        self.fw = nn.Sequential(conv3x3(s, s), nn.LeakyReLU(inplace=True), conv3x3(s, c_feat))
        self.dw = nn.Sequential(conv3x3(s, s), nn.LeakyReLU(inplace=True), conv3x3(s, c_depth))

    def forward(self, feat: torch.Tensor | None, depth: torch.Tensor, need_feat: bool = True
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """feat: (B, c_feat, H, W) or ``None`` (zeros); depth: (B, c_depth, H, W) -> new (feat, depth).

        ``need_feat=False`` (the last refinement, whose feature is never read) returns ``None`` for it.
        """
        if feat is None and self.fast_path:  # zero features: the first convs use the depth channels' columns
            paths = (self.fw, self.dw) if need_feat else (self.dw,)
            out = [seq[1:](conv_input_slice(seq[0], depth, self.c_feat)) for seq in paths]
        else:
            if feat is None:
                B, _, H, W = depth.shape
                feat = depth.new_zeros(B, self.c_feat, H, W)
            x = torch.cat([feat, depth], dim=1)
            out = [self.fw(x), self.dw(x)] if need_feat else [self.dw(x)]
        return (out[0], out[1]) if need_feat else (None, out[0])


class MetricMLP(nn.Module):
    """Two-layer MLP on the pooled deepest feature: (B, C) -> (B, 2) = (scale logit, log shift)."""

    def __init__(self, c_in: int, c_hidden: int):
        super().__init__()
        self.ln = nn.Sequential(nn.Linear(c_in, c_hidden), nn.LeakyReLU(inplace=True), nn.Linear(c_hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """At the weights' precision (float32) with autocast off: the metric scale and shift enter the
        depth through sigmoid and exp, where bfloat16 would keep 8 significant bits."""
        with torch.autocast(x.device.type, enabled=False):
            return self.ln(x.flatten(1).to(self.ln[0].weight.dtype))


def metric_head(c_in: int) -> nn.Sequential:
    """Global max pool of the stride-32 map followed by :class:`MetricMLP` (keys ``mlayer.1.ln``)."""
    return nn.Sequential(GlobalMaxPool(), MetricMLP(c_in, c_in // 4))


class OutConv(nn.Module):
    """Depth from the decoded latents: ``exp(conv(d) + prior_mean)``, metres, d = Σ upsample(z, f)."""

    fast_path: bool = True

    def __init__(self, c_in: int, prior_mean: float):
        super().__init__()
        self.conv = conv3x3(c_in, 1)
        self.prior_mean = prior_mean

    def forward(self, latents: Sequence[torch.Tensor], factors: Sequence[int]) -> torch.Tensor:
        """latents [(B, C, H/f, W/f)] with up-sampling ``factors`` -> (B, 1, H, W) depth.

        At the weights' precision (float32) with autocast off: in bfloat16 the log-depth would keep
        8 significant bits (up to 1.6 % error).
        """
        with torch.autocast(latents[0].device.type, enabled=False):
            latents = [z.to(self.conv.weight.dtype) for z in latents]
            if self.fast_path:  # the conv before the up-sampling: 9 channels up-sampled instead of C
                log_depth = fast_paths.output_conv_sum(self.conv, latents, factors)
            else:
                log_depth = self.conv(depth_feature(latents, factors))  # (B, C, H, W) -> (B, 1, H, W)
            return torch.exp(log_depth + self.prior_mean)


def apply_metric(depth: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
    """The image branch's metric rescaling sigmoid(a) * (depth + exp(b)), at the precision of ``depth``.

    depth: (B, 1, H, W) from :class:`OutConv` (float32); metric: (B, 2) = (a, b) from :func:`metric_head`.
    Autocast off, as the rest of the depth head.
    """
    with torch.autocast(depth.device.type, enabled=False):
        metric = metric.to(depth.dtype)
        scale = torch.sigmoid(metric[:, 0]).view(-1, 1, 1, 1)
        shift = torch.exp(metric[:, 1]).view(-1, 1, 1, 1)
        return scale * (depth + shift)

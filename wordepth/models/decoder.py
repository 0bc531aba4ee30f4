"""Decoder blocks of WorDepth: U-Net up-sampling, depth refinement, metric head, output layer.

Module and parameter names match the original release so its checkpoints load directly.
All convolutions are 3x3 with padding 1 unless said; activations are LeakyReLU(0.01). The same
computations with less work (zero inputs skipped, output convolution before the up-sampling) are in
``fast_paths.py``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(c_in: int, c_out: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, groups=groups)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across ``groups`` (B, C, H, W) -> (B, C, H, W)."""
    B, C, H, W = x.shape
    return x.view(B, groups, C // groups, H, W).transpose(1, 2).reshape(B, C, H, W)


def shuffled_sources(channels: int, groups: int) -> list[int]:
    """Output channel j of ``channel_shuffle(x, groups)`` is input channel ``src[j]``."""
    return [(j % groups) * (channels // groups) + j // groups for j in range(channels)]



def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear up-sampling with aligned corners, as everywhere in the original decoder."""
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)



class DoubleConv(nn.Module):
    """``bt(x) + conv2(conv1(shuffle(x)))``: a plain 3x3 conv plus a grouped two-conv path."""

    groups = 4

    def __init__(self, c_in: int, c_out: int, c_mid: int | None = None):
        super().__init__()
        c_mid = c_mid or c_in
        self.conv1 = nn.Sequential(
            conv3x3(c_in, c_mid, groups=self.groups), nn.InstanceNorm2d(c_mid), nn.LeakyReLU(inplace=True)
        )
        self.conv2 = nn.Sequential(conv3x3(c_mid, c_out), nn.InstanceNorm2d(c_out), nn.LeakyReLU(inplace=True))
        self.bt = conv3x3(c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bt(x) + self.conv2(self.conv1(channel_shuffle(x, self.groups)))


class Up(nn.Module):
    """x2 bilinear up-sampling, concatenation ``[skip, upsampled]``, then a DoubleConv."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = DoubleConv(c_in, c_out, c_in)

    @staticmethod
    def upsample_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """x2 up-sampling, then zero padding to ``size`` (half of the difference left/top)."""
        x = upsample(x, 2)
        dy, dx = size[0] - x.shape[2], size[1] - x.shape[3]
        return F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upsample_to(x, skip.shape[2:])
        return self.conv(torch.cat([skip, x], dim=1))


class Refine(nn.Module):
    """Joint update of decoder features and the depth latent from ``cat[feat, depth]``."""

    def __init__(self, c_feat: int, c_depth: int):
        super().__init__()
        s = c_feat + c_depth
        self.fw = nn.Sequential(conv3x3(s, s), nn.LeakyReLU(inplace=True), conv3x3(s, c_feat))
        self.dw = nn.Sequential(conv3x3(s, s), nn.LeakyReLU(inplace=True), conv3x3(s, c_depth))

    def forward(self, feat: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([feat, depth], dim=1)
        return self.fw(x), self.dw(x)


class MetricMLP(nn.Module):
    """Two-layer MLP on the pooled deepest feature: (B, C) -> (B, 2) = (scale logit, log shift)."""

    def __init__(self, c_in: int, c_hidden: int):
        super().__init__()
        self.ln = nn.Sequential(nn.Linear(c_in, c_hidden), nn.LeakyReLU(inplace=True), nn.Linear(c_hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x.flatten(1))


def metric_head(c_in: int) -> nn.Sequential:
    """Global max pool of the stride-32 map followed by :class:`MetricMLP` (keys ``mlayer.1.ln``)."""
    return nn.Sequential(nn.AdaptiveMaxPool2d(1), MetricMLP(c_in, c_in // 4))


def depth_feature(latents: Sequence[torch.Tensor], factors: Sequence[int]) -> torch.Tensor:
    """The decoder's full-resolution depth feature d = Σ upsample(z, f), summed in the given order."""
    d = upsample(latents[0], factors[0])
    for z, f in zip(latents[1:], factors[1:]):
        d += upsample(z, f)  # in place: the full-resolution sum without temporaries
    return d


class OutConv(nn.Module):
    """Depth from the latent: ``exp(conv(d) + prior_mean)``, metres."""

    def __init__(self, c_in: int, prior_mean: float):
        super().__init__()
        self.conv = conv3x3(c_in, 1)
        self.prior_mean = prior_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) depth feature -> (B, 1, H, W) depth, at the weights' precision (float32)
        with autocast off: in bfloat16 the log-depth would keep 8 significant bits (up to 1.6 % error)."""
        with torch.autocast(x.device.type, enabled=False):
            return torch.exp(self.conv(x.to(self.conv.weight.dtype)) + self.prior_mean)


def apply_metric(depth: torch.Tensor, metric: torch.Tensor) -> torch.Tensor:
    """The image branch's metric rescaling sigmoid(a) * (depth + exp(b)), at the precision of ``depth``.

    depth: (B, 1, H, W) from :class:`OutConv` (float32); metric: (B, 2) = (a, b) from :func:`metric_head`.
    """
    metric = metric.to(depth.dtype)
    scale = torch.sigmoid(metric[:, 0]).view(-1, 1, 1, 1)
    shift = torch.exp(metric[:, 1]).view(-1, 1, 1, 1)
    return scale * (depth + shift)

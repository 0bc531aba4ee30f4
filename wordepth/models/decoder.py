"""Decoder blocks of WorDepth: U-Net up-sampling, depth refinement, metric head, output layer.

Module and parameter names match the original release so its checkpoints load directly.
All convolutions are 3x3 with padding 1 unless said; activations are LeakyReLU(0.01).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(c_in: int, c_out: int, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, groups=groups)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across ``groups`` (B, C, H, W) -> (B, C, H, W)."""
    B, C, H, W = x.shape
    return x.view(B, groups, C // groups, H, W).transpose(1, 2).reshape(B, C, H, W)


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

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = upsample(x, 2)
        dy, dx = skip.shape[2] - x.shape[2], skip.shape[3] - x.shape[3]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
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


class OutConv(nn.Module):
    """Depth from the latent: ``exp(conv(d) + prior_mean)``, metres."""

    def __init__(self, c_in: int, prior_mean: float):
        super().__init__()
        self.conv = conv3x3(c_in, 1)
        self.prior_mean = prior_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.conv(x) + self.prior_mean)

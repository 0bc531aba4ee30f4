"""Decoder blocks of WorDepth: U-Net up-sampling, depth refinement, metric head, output layer.

Module and parameter names match the original release so its checkpoints load directly.
All convolutions are 3x3 with padding 1 unless said; activations are LeakyReLU(0.01).

The current release feeds all-zero maps into some blocks (it drops the decoder's image skip
connections). Zero channels only ever meet convolutions there, so the ``*_zero_*`` methods drop
the weight slices that would multiply them and compute on the non-zero channels only: the same
result up to float rounding, and the dropped slices get the zero gradient they would get anyway.
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


def _zero_lead_plan(channels: int, groups: int, n_zero: int) -> tuple[tuple[list[int], list[int]], ...]:
    """For each group of a grouped conv on ``channel_shuffle(cat[zeros(n_zero), x])``: the
    positions within the group fed by ``x`` (ascending) and the channels of ``x`` feeding them."""
    src = shuffled_sources(channels, groups)
    per = channels // groups
    plan = []
    for g in range(groups):
        keep = [i for i in range(per) if src[g * per + i] >= n_zero]
        plan.append((keep, [src[g * per + i] - n_zero for i in keep]))
    return tuple(plan)


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear up-sampling with aligned corners, as everywhere in the original decoder."""
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)


def conv_input_slice(conv: nn.Conv2d, x: torch.Tensor, start: int) -> torch.Tensor:
    """``conv`` (groups 1) on an input whose channels ``0..start-1`` are zero; ``x`` holds the rest.

    x: (B, C_in - start, H, W) -> (B, C_out, H', W'), using the weight columns ``start..`` only.
    """
    return F.conv2d(x, conv.weight[:, start:], conv.bias, conv.stride, conv.padding, conv.dilation)


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

    def forward_zero_lead(self, x: torch.Tensor, n_zero: int) -> torch.Tensor:
        """``forward(cat[zeros(B, n_zero, H, W), x])`` without computing on the zeros.

        ``bt`` uses its input channels ``n_zero..``. The grouped ``conv1.0`` sees the shuffled
        input: group g reads shuffled channels ``g*C/4 .. (g+1)*C/4``, of which those whose source
        channel (:func:`shuffled_sources`) is ``>= n_zero`` come from ``x``; each group is
        convolved on those alone (groups then hold different numbers of channels, hence one conv
        per group). x: (B, C_in - n_zero, H, W) -> (B, C_out, H, W).
        """
        grouped = self.conv1[0]
        c_in = grouped.in_channels
        if x.shape[1] + n_zero != c_in:
            raise ValueError(f"{n_zero} zero + {x.shape[1]} channels given, the block takes {c_in}")
        per_out = grouped.out_channels // self.groups
        parts = []
        for g, (keep, feeding) in enumerate(_zero_lead_plan(c_in, self.groups, n_zero)):
            rows = slice(g * per_out, (g + 1) * per_out)
            if not keep:  # only zeros reach this group: its output is the bias
                B, _, H, W = x.shape
                parts.append(grouped.bias[rows].view(1, -1, 1, 1).expand(B, -1, H, W))
                continue
            x_g = x.index_select(1, torch.tensor(feeding, device=x.device))  # (B, len(keep), H, W)
            w_g = grouped.weight[rows].index_select(1, torch.tensor(keep, device=x.device))
            parts.append(F.conv2d(x_g, w_g, grouped.bias[rows], grouped.stride, grouped.padding, grouped.dilation))
        mid = self.conv1[1:](torch.cat(parts, dim=1))  # (B, C_mid, H, W)
        return conv_input_slice(self.bt, x, n_zero) + self.conv2(mid)


class Up(nn.Module):
    """x2 bilinear up-sampling, concatenation ``[skip, upsampled]``, then a DoubleConv."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = DoubleConv(c_in, c_out, c_in)

    @staticmethod
    def _upsample_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """x2 up-sampling, then zero padding to ``size`` (half of the difference left/top)."""
        x = upsample(x, 2)
        dy, dx = size[0] - x.shape[2], size[1] - x.shape[3]
        return F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self._upsample_to(x, skip.shape[2:])
        return self.conv(torch.cat([skip, x], dim=1))

    def forward_zero_skip(self, x: torch.Tensor, skip_size: tuple[int, int]) -> torch.Tensor:
        """``forward(x, zeros)`` for an all-zero skip map of spatial size ``skip_size``."""
        x = self._upsample_to(x, tuple(skip_size))
        return self.conv.forward_zero_lead(x, self.conv.conv1[0].in_channels - x.shape[1])


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

    def forward_depth(self, feat: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """The new depth feature alone, for the last refinement, whose new feature is never read."""
        return self.dw(torch.cat([feat, depth], dim=1))

    def forward_zero_feat(self, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward(zeros, depth)`` for an all-zero feature map: the first convs use only the
        weight columns of the depth channels. depth: (B, c_depth, H, W)."""
        c_feat = self.fw[0].in_channels - depth.shape[1]
        return tuple(seq[1:](conv_input_slice(seq[0], depth, c_feat)) for seq in (self.fw, self.dw))


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
        return torch.exp(self.conv(x) + self.prior_mean)

    def forward_sum(self, latents: Sequence[torch.Tensor], factors: Sequence[int]) -> torch.Tensor:
        """``forward(depth_feature(latents, factors))`` without forming the L-channel full-resolution map.

        The 3x3 convolution to one channel is, per kernel tap t, a channel contraction y_t = w_t · d
        followed by a shift of y_t. Channel contractions commute with the (per-channel, linear)
        bilinear up-sampling, so y = Σ upsample(w · z, f) is formed from 9 channels instead of L
        (128), and the shifts are a 9 -> 1 convolution with a one-hot kernel (zero padding as in the
        original). Equal up to float rounding; latents: [(B, L, H/f, W/f)] -> (B, 1, H, W).
        """
        w = self.conv.weight  # (1, L, k, k)
        k = w.shape[-1]
        taps = w[0].permute(1, 2, 0).reshape(k * k, -1, 1, 1)  # (k*k, L, 1, 1): tap t = (i, j) -> i*k + j
        y = upsample(F.conv2d(latents[0], taps), factors[0])  # (B, k*k, H, W)
        for z, f in zip(latents[1:], factors[1:]):
            y += upsample(F.conv2d(z, taps), f)
        shifts = torch.eye(k * k, dtype=w.dtype, device=w.device).view(1, k * k, k, k)  # tap t reads offset t
        return torch.exp(F.conv2d(y, shifts, self.conv.bias, padding=self.conv.padding) + self.prior_mean)

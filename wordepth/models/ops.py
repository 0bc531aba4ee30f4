"""Small tensor operations of the original decoder, shared by its blocks and their fast paths."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave channels across ``groups`` (B, C, H, W) -> (B, C, H, W)."""
    B, C, H, W = x.shape
    return x.view(B, groups, C // groups, H, W).transpose(1, 2).reshape(B, C, H, W)


def shuffled_sources(channels: int, groups: int) -> list[int]:
    """Output channel j of ``channel_shuffle(x, groups)`` is input channel ``src[j]``."""
    return [(j % groups) * (channels // groups) + j // groups for j in range(channels)]


def deterministic_cuda(x: torch.Tensor) -> bool:
    """Whether ``x`` is on CUDA while torch must use deterministic algorithms (``--deterministic``):
    there the backward of bilinear and bicubic interpolation and of adaptive max pooling has no
    deterministic kernel and raises (``torch.use_deterministic_algorithms``' list)."""
    return x.is_cuda and torch.are_deterministic_algorithms_enabled()


def interpolation_matrix(n_in: int, n_out: int, mode: str, align_corners: bool, device, dtype) -> torch.Tensor:
    """(n_out, n_in): the 1-D weights ``F.interpolate`` uses along one axis (``bilinear``/``bicubic`` are
    separable), read off by interpolating unit impulses (no gradient: a constant)."""
    with torch.no_grad():
        eye = torch.eye(n_in, device=device, dtype=dtype).view(n_in, 1, n_in, 1)  # impulse i along H
        return F.interpolate(eye, size=(n_out, 1), mode=mode, align_corners=align_corners).view(n_in, n_out).T


def resize(x: torch.Tensor, size: tuple[int, int], mode: str, align_corners: bool) -> torch.Tensor:
    """``F.interpolate(x, size, mode, align_corners)`` for (B, C, H, W); under ``--deterministic`` on CUDA
    as two products with the per-axis interpolation matrices (the same values up to rounding), whose
    backward is deterministic."""
    if deterministic_cuda(x):  # interpolate's CUDA backward has no deterministic kernel
        H, W = x.shape[-2:]
        rows = interpolation_matrix(H, size[0], mode, align_corners, x.device, x.dtype)  # (Ho, H)
        cols = interpolation_matrix(W, size[1], mode, align_corners, x.device, x.dtype)  # (Wo, W)
        return torch.matmul(torch.matmul(rows, x), cols.T)  # (B, C, Ho, Wo)
    return F.interpolate(x, size=size, mode=mode, align_corners=align_corners)


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Bilinear up-sampling with aligned corners, as everywhere in the original decoder."""
    return resize(x, (x.shape[-2] * factor, x.shape[-1] * factor), "bilinear", align_corners=True)


class GlobalMaxPool(torch.nn.Module):
    """``nn.AdaptiveMaxPool2d(1)``: (B, C, H, W) -> (B, C, 1, 1); under ``--deterministic`` on CUDA as
    ``amax`` (the same values; a deterministic backward, which adaptive max pooling lacks there)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if deterministic_cuda(x):
            return x.amax(dim=(-2, -1), keepdim=True)
        return F.adaptive_max_pool2d(x, 1)


def depth_feature(latents: Sequence[torch.Tensor], factors: Sequence[int]) -> torch.Tensor:
    """The decoder's full-resolution depth feature d = Σ upsample(z, f), summed in the given order."""
    d = upsample(latents[0], factors[0])
    for z, f in zip(latents[1:], factors[1:]):
        d += upsample(z, f)  # in place: the full-resolution sum without temporaries
    return d


def conv_input_slice(conv: torch.nn.Conv2d, x: torch.Tensor, start: int) -> torch.Tensor:
    """``conv`` (groups 1) on an input whose channels ``0..start-1`` are zero; ``x`` holds the rest.

    x: (B, C_in - start, H, W) -> (B, C_out, H', W'), using the weight columns ``start..`` only.
    """
    return F.conv2d(x, conv.weight[:, start:], conv.bias, conv.stride, conv.padding, conv.dilation)

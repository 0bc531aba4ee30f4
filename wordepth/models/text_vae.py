"""The text-VAE encoder and the conditional sampler: WorDepth's language prior."""
from __future__ import annotations

import torch
import torch.nn as nn

from wordepth.errors import UserError


def mlp(c_in: int, c_out: int) -> nn.Sequential:
    """c_in -> 512 -> 256 -> c_out with LeakyReLU, as in the original (keys 0, 2, 4)."""
    return nn.Sequential(
        nn.Linear(c_in, 512), nn.LeakyReLU(inplace=True),
        nn.Linear(512, 256), nn.LeakyReLU(inplace=True),
        nn.Linear(256, c_out),
    )


class TextVAE(nn.Module):
    """Maps a frozen CLIP caption feature to the mean and std of the depth latent."""

    def __init__(self, text_dim: int, latent_dim: int = 128):
        super().__init__()
        self.text_dim = text_dim
        self.mean = mlp(text_dim, latent_dim)
        self.deviation = mlp(text_dim, latent_dim)

    def forward(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """text: (B, text_dim) any float dtype -> mean, std, logvar, each (B, latent_dim).

        The feature (stored as float16) is cast to the parameters' dtype, as the original casts it
        to float32 for its float32 weights; after ``model.double()`` the VAE computes in float64.
        """
        if text.dim() != 2 or text.shape[1] != self.text_dim:
            raise UserError(
                f"text feature of shape {tuple(text.shape)} given, but this model's text-VAE takes "
                f"(B, {self.text_dim}) features (WorDepthConfig.text_dim); extract features with the CLIP "
                f"model it was trained with (WorDepthConfig.clip_model, wordepth-text extract --model)"
            )
        text = text.to(self.mean[0].weight.dtype)
        mean = self.mean(text)
        logvar = self.deviation(text)
        return mean, torch.exp(0.5 * logvar), logvar


class ConditionalSampler(nn.Module):
    """Predicts the per-patch latent noise from image features given the caption's mean/std."""

    def __init__(self, c_feat: int, latent_dim: int = 128, c_hidden: int | None = None):
        super().__init__()
        c_hidden = c_hidden or c_feat
        self.eps_net = nn.Conv2d(c_feat + 2 * latent_dim, c_hidden, kernel_size=1)
        self.post = nn.Conv2d(c_hidden, latent_dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """x: (B, C, h, w) stride-16 features; mean, std: (B, L) -> eps (B, L, h, w)."""
        grid = x.shape[2:]
        mean = mean[:, :, None, None].expand(-1, -1, *grid)
        std = std[:, :, None, None].expand(-1, -1, *grid)
        return self.post(self.eps_net(torch.cat([x, mean, std], dim=1)))

"""Training losses of WorDepth: scale-invariant log loss and the two KL terms."""
from __future__ import annotations

import torch


MIN_TRAIN_DEPTH = 0.1  # metres: ground truth at or below it is not used by the loss (the original's 0.1)
VARIANCE_FOCUS = 0.85  # lambda of the SILog loss: the value the original's model always uses


def valid_depth_mask(gt: torch.Tensor, max_depth: float, min_depth: float = MIN_TRAIN_DEPTH) -> torch.Tensor:
    """The pixels the training loss uses: ``min_depth < gt < max_depth`` (0 marks missing depth)."""
    return (gt > min_depth) & (gt < max_depth)


def silog_loss(pred: torch.Tensor, gt: torch.Tensor, max_depth: float, variance_focus: float = VARIANCE_FOCUS,
               min_depth: float = MIN_TRAIN_DEPTH) -> torch.Tensor:
    """Scale-invariant log loss exactly as the original computes it.

    Per image: valid = min_depth < gt < max_depth; e = log pred - log gt, set to 0 where not valid
    or |e| <= 1e-3; n = #valid + 1e-6; L = sum(e^2)/n - variance_focus * (sum(e)/n)^2. The batch loss
    is the *sum* over images of L * n / (H*W). An image without valid pixels contributes 0.

    Args:
        pred: (B, 1, H, W) positive depth.
        gt: (B, 1, H, W) ground truth, 0 where missing.
    """
    valid = valid_depth_mask(gt, max_depth, min_depth)
    safe_gt = torch.where(valid, gt, torch.ones_like(gt))  # log never sees 0
    safe_pred = torch.where(valid, pred, torch.ones_like(pred))
    e = torch.log(safe_pred) - torch.log(safe_gt)
    e = torch.where(valid & (e.abs() > 1e-3), e, torch.zeros_like(e))
    dims = tuple(range(1, gt.dim()))
    n = valid.sum(dim=dims).to(e.dtype) + 1e-6
    per_image = (e**2).sum(dims) / n - variance_focus * (e.sum(dims) / n) ** 2
    return (per_image * n / gt[0].numel()).sum()


def kl_text(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)) summed over latent dims, averaged over the batch."""
    return (-0.5 * (1 + logvar - mean**2 - logvar.exp()).sum(dim=1)).mean()


def kl_image(eps: torch.Tensor) -> torch.Tensor:
    """KL of the predicted noise to N(0, 1), treating the B*h*w vectors as samples.

    Args:
        eps: (B, L, h, w) conditional sampler output.
    """
    samples = eps.permute(0, 2, 3, 1).reshape(-1, eps.shape[1])  # (B*h*w, L)
    mean = samples.mean(dim=0)
    logvar = 2 * torch.log(samples.std(dim=0))  # unbiased std
    return -0.5 * (1 + logvar - mean**2 - logvar.exp()).sum()

"""The four released WorDepth models by name: ``nyu``, ``nyu_legacy``, ``kitti``, ``kitti_legacy``.

The original release's checkpoints do not record which model they hold; a variant says it in one
word: the decoder's skip connections (``legacy``, the paper's model), the maximum depth and prior
mean of the output layer, and the default evaluation crop. This project's checkpoints record the
same settings in their config, so :func:`variant_of` names them without being told.
"""
from __future__ import annotations

from dataclasses import dataclass

from wordepth.data.facts import KITTI, NYU, DatasetFacts
from wordepth.errors import UserError

__all__ = ["VARIANTS", "Variant", "get_variant", "variant_of"]


@dataclass(frozen=True)
class Variant:
    """One released model: a dataset and whether the decoder keeps its skip connections."""

    name: str
    dataset: DatasetFacts
    legacy: bool

    @property
    def model_fields(self) -> dict:
        """The :class:`~wordepth.models.wordepth.WorDepthConfig` fields the variant sets."""
        return {"legacy": self.legacy, "max_depth": self.dataset.max_depth, "prior_mean": self.dataset.prior_mean}

    @property
    def ape_grid(self) -> tuple[int, int]:
        """Position-embedding grid of the released checkpoint (a quarter of the training size)."""
        h, w = self.dataset.train_hw
        return h // 4, w // 4


VARIANTS = {v.name: v for v in (Variant("nyu", NYU, False), Variant("nyu_legacy", NYU, True),
                                Variant("kitti", KITTI, False), Variant("kitti_legacy", KITTI, True))}


def get_variant(name: str) -> Variant:
    """The variant called ``name``.

    Raises:
        UserError: an unknown name (the message lists the known ones).
    """
    try:
        return VARIANTS[name]
    except KeyError:
        raise UserError(f"unknown variant {name!r}: use one of {', '.join(VARIANTS)}") from None


def variant_of(cfg) -> str | None:
    """The variant whose settings a network config has (legacy, max depth, prior mean), or None."""
    for v in VARIANTS.values():
        if (bool(cfg.legacy) == v.legacy and abs(cfg.max_depth - v.dataset.max_depth) < 1e-6
                and abs(cfg.prior_mean - v.dataset.prior_mean) < 1e-6):
            return v.name
    return None


def grid_dataset(grid: tuple[int, int]) -> DatasetFacts | None:
    """The dataset whose released checkpoints have this position-embedding grid, if any."""
    for facts in (NYU, KITTI):
        if tuple(grid) == (facts.train_hw[0] // 4, facts.train_hw[1] // 4):
            return facts
    return None

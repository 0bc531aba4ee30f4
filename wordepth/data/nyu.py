"""NYU Depth v2 (the BTS/NeWCRFs ``sync`` training set and the official 654-image test split)."""
from __future__ import annotations

import random

from wordepth.data import transforms as T
from wordepth.data.facts import NYU
from wordepth.data.splits import SplitDataset, SplitEntry

__all__ = ["NYUDataset"]


class NYUDataset(SplitDataset):
    """NYU Depth v2 samples (see :class:`SplitDataset` for the keys).

    Training: depth is zeroed outside the registered region (rows 45:472, cols
    43:608 of 480x640) when the input height equals the image height (the original
    tests ``input_height == 480``), otherwise image and depth are cropped to that
    region first (the original's two cases); then
    rotation U(-degree, degree), random crop to the input size, flip, colour
    augmentation. Evaluation: the full image and ground truth, unaugmented.

    The arguments are :class:`SplitDataset`'s; the input size defaults to 480x640, and training
    rotates unless ``do_random_rotate=False``.

    Args:
        split_file: e.g. ``nyudepthv2_train_files_with_gt.txt``.
        data_path: image root (``.../sync`` for training, ``.../official_splits/test`` for eval).
        gt_path: depth root (the same folders in the original layout).
    """

    facts = NYU
    ROTATE_BY_DEFAULT = True

    def load(self, entry: SplitEntry, rng: random.Random | None) -> dict:
        """Reads and transforms one entry."""
        image, depth, has_valid_depth = self.read_pair(entry.rgb, entry.depth)
        sample = {"image": image, "depth": depth}
        if self.mode == "train":
            sample, params = self._augment(sample, rng)
            sample = T.to_tensors(sample, params)
        else:
            sample = T.to_tensors(sample)
        sample["has_valid_depth"] = has_valid_depth
        return sample

    def _augment(self, sample: dict, rng: random.Random) -> tuple[dict, T.AugmentParams]:
        """The original's NYU training geometry; returns the numpy sample and the draws."""
        height, width = sample["image"].shape[:2]
        box = T.nyu_valid_box(height, width)
        # The original tests the input height only (``input_height == 480``, the NYU frame's height):
        # full-height inputs keep the frame and zero the unregistered border, others crop to it first.
        if self.input_hw[0] == height:
            sample = T.zero_depth_outside(sample, box)
        else:
            sample = T.crop_to_box(sample, box)
        params = self.draw_augment_params(sample, rng)
        return T.apply_geometric(sample, params, self.input_hw), params

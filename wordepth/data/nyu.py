"""NYU Depth v2 (the BTS/NeWCRFs ``sync`` training set and the official 654-image test split)."""
from __future__ import annotations

import os
import random

import numpy as np

from wordepth.data import transforms as T
from wordepth.data.depth_png import read_depth_png
from wordepth.datasets import NYU
from wordepth.data.splits import SplitDataset, SplitEntry, join_entry

__all__ = ["NYUDataset"]



class NYUDataset(SplitDataset):
    """NYU Depth v2 samples (see :class:`SplitDataset` for the keys).

    Training: depth is zeroed outside the registered region (rows 45:472, cols
    43:608 of 480x640) when the input size equals the image size, otherwise image
    and depth are cropped to that region first (the original's two cases); then
    rotation U(-degree, degree), random crop to the input size, flip, colour
    augmentation. Evaluation: the full image and ground truth, unaugmented.

    Args:
        split_file: e.g. ``nyudepthv2_train_files_with_gt.txt``.
        data_path: image root (``.../sync`` for training, ``.../official_splits/test`` for eval).
        gt_path: depth root (the same folders in the original layout).
        text_feat_dir: text feature root.
        mode: ``train`` or ``eval``.
        input_height: network input height (training crop).
        input_width: network input width.
        do_random_rotate: rotate in training.
        degree: maximum rotation in degrees.
        feature_dim: text feature dimension.
        seed: augmentation seed (None: Python's global ``random``).
        text_split: text feature folder; default ``train``/``test`` by mode.
    """

    def __init__(
        self,
        split_file: str | os.PathLike,
        data_path: str | os.PathLike,
        gt_path: str | os.PathLike,
        text_feat_dir: str | os.PathLike,
        mode: str = "train",
        input_height: int = 480,
        input_width: int = 640,
        do_random_rotate: bool = True,
        degree: float = 2.5,
        feature_dim: int | None = 1024,
        seed: int | None = None,
        text_split: str | None = None,
    ):
        super().__init__("nyu", split_file, data_path, gt_path, text_feat_dir, mode, feature_dim, seed, text_split)
        self.input_hw = (input_height, input_width)
        self.do_random_rotate = do_random_rotate
        self.degree = degree

    def load(self, entry: SplitEntry, rng: random.Random | None) -> dict:
        """Reads and transforms one entry."""
        image = T.read_image(join_entry(self.data_path, entry.rgb))
        if entry.depth is None:
            depth, has_valid_depth = np.zeros(image.shape[:2], dtype=np.float32), False
        else:
            depth_file = join_entry(self.gt_path, entry.depth)
            depth, has_valid_depth = read_depth_png(depth_file, NYU.depth_png_scale), True
            if depth.shape != image.shape[:2]:
                raise ValueError(f"depth map {depth_file} is {depth.shape}, its image {image.shape[:2]}")
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
        if (height, width) == self.input_hw:
            sample = T.zero_depth_outside(sample, box)
        else:
            sample = T.crop_to_box(sample, box)
        params = T.draw_augment_params(
            rng,
            sample["image"].shape[:2],
            self.input_hw,
            self.degree if self.do_random_rotate else None,
            NYU.brightness_range,
        )
        return T.apply_geometric(sample, params, self.input_hw), params

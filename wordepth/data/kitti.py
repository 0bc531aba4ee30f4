"""KITTI (Eigen split): raw images with the projected-LiDAR ground truth."""
from __future__ import annotations

import os
import random

import numpy as np

from wordepth.data import transforms as T
from wordepth.data.depth_png import read_depth_png
from wordepth.datasets import KITTI
from wordepth.data.splits import SplitDataset, SplitEntry, join_entry

__all__ = ["KITTIDataset"]



class KITTIDataset(SplitDataset):
    """KITTI samples (see :class:`SplitDataset` for the keys).

    Training: KB crop to 352x1216 (``do_kb_crop``), optional rotation, random crop to
    the input size, flip, colour augmentation. Evaluation: the image KB-cropped
    (``do_kb_crop``) and the ground truth at full size, so the evaluation pastes the
    prediction back at the crop offset (``kb_crop_eval_depth`` crops it as well,
    as the original's online evaluation did).

    Args:
        split_file: e.g. ``eigen_train_files_with_gt.txt``.
        data_path: raw data root (entries start with the date folder).
        gt_path: ground-truth root (entries start with the drive folder).
        text_feat_dir: text feature root.
        mode: ``train`` or ``eval``.
        input_height: network input height (training crop).
        input_width: network input width.
        do_kb_crop: KITTI benchmark crop.
        use_right: in training, use the right camera (``image_03``) with probability 0.5
            (the original drew the coin but discarded the swap).
        do_random_rotate: rotate in training.
        degree: maximum rotation in degrees.
        feature_dim: text feature dimension.
        seed: augmentation seed (None: Python's global ``random``).
        text_split: text feature folder; default ``train``/``test`` by mode.
        full_frame_gt: keep the evaluation ground truth at full size (BTS protocol).
    """

    def __init__(
        self,
        split_file: str | os.PathLike,
        data_path: str | os.PathLike,
        gt_path: str | os.PathLike,
        text_feat_dir: str | os.PathLike,
        mode: str = "train",
        input_height: int = 352,
        input_width: int = 1216,
        do_kb_crop: bool = True,
        use_right: bool = False,
        do_random_rotate: bool = False,
        degree: float = 2.5,
        feature_dim: int | None = 1024,
        seed: int | None = None,
        text_split: str | None = None,
        full_frame_gt: bool = False,
    ):
        super().__init__("kitti", split_file, data_path, gt_path, text_feat_dir, mode, feature_dim, seed, text_split)
        self.input_hw = (input_height, input_width)
        self.do_kb_crop = do_kb_crop
        self.use_right = use_right
        self.do_random_rotate = do_random_rotate
        self.degree = degree
        self.full_frame_gt = full_frame_gt

    def load(self, entry: SplitEntry, rng: random.Random | None) -> dict:
        """Reads and transforms one entry."""
        rgb, depth_entry = entry.rgb, entry.depth
        if self.mode == "train" and self.use_right and rng.random() > 0.5:
            rgb = rgb.replace("image_02", "image_03")
            depth_entry = depth_entry.replace("image_02", "image_03")
        image = T.read_image(join_entry(self.data_path, rgb))
        if depth_entry is None:
            depth, has_valid_depth = np.zeros(image.shape[:2], dtype=np.float32), False
        else:
            depth_file = join_entry(self.gt_path, depth_entry)
            depth, has_valid_depth = read_depth_png(depth_file, KITTI.depth_png_scale), True
            if depth.shape != image.shape[:2]:
                raise ValueError(f"depth map {depth_file} is {depth.shape}, its image {image.shape[:2]}")

        if self.mode == "train":
            sample = {"image": image, "depth": depth}
            if self.do_kb_crop:
                sample = T.kb_crop(sample)
            params = T.draw_augment_params(
                rng,
                sample["image"].shape[:2],
                self.input_hw,
                self.degree if self.do_random_rotate else None,
                KITTI.brightness_range,
            )
            sample = T.to_tensors(T.apply_geometric(sample, params, self.input_hw), params)
        else:
            sample = {"image": image, "depth": depth}
            if self.do_kb_crop:
                cropped = T.kb_crop(sample)
                sample = {**cropped, "depth": depth} if self.full_frame_gt else cropped
            sample = T.to_tensors(sample)
        sample["has_valid_depth"] = has_valid_depth
        return sample

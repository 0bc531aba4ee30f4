"""KITTI (Eigen split): raw images with the projected-LiDAR ground truth."""
from __future__ import annotations

import random

from wordepth.data import transforms as T
from wordepth.data.facts import KITTI
from wordepth.data.splits import SplitDataset, SplitEntry

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
        *args, **kwargs: the other arguments of :class:`SplitDataset` (the input size defaults to
            352x1216; training rotates only with ``do_random_rotate=True``).
        do_kb_crop: KITTI benchmark crop.
        use_right: in training, use the right camera (``image_03``) with probability 0.5
            (the original drew the coin but discarded the swap).
        full_frame_gt: keep the evaluation ground truth at full size (BTS protocol).
    """

    facts = KITTI

    def __init__(self, *args, do_kb_crop: bool = True, use_right: bool = False, full_frame_gt: bool = False,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.do_kb_crop = do_kb_crop
        self.use_right = use_right
        self.full_frame_gt = full_frame_gt

    def load(self, entry: SplitEntry, rng: random.Random | None) -> dict:
        """Reads and transforms one entry."""
        rgb, depth_entry = entry.rgb, entry.depth
        if self.mode == "train" and self.use_right and rng.random() > 0.5:
            rgb = rgb.replace("image_02", "image_03")
            depth_entry = depth_entry.replace("image_02", "image_03")
        image, depth, has_valid_depth = self.read_pair(rgb, depth_entry)

        if self.mode == "train":
            sample = {"image": image, "depth": depth}
            if self.do_kb_crop:
                sample = T.kb_crop(sample)
            params = self.draw_augment_params(sample, rng)
            sample = T.to_tensors(T.apply_geometric(sample, params, self.input_hw), params)
        else:
            sample = {"image": image, "depth": depth}
            if self.do_kb_crop:
                cropped = T.kb_crop(sample)
                sample = {**cropped, "depth": depth} if self.full_frame_gt else cropped
            sample = T.to_tensors(sample)
        sample["has_valid_depth"] = has_valid_depth
        return sample

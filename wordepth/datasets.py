"""Per-dataset facts: the one place for each dataset's depth range, output prior, camera, depth-PNG
units, augmentation range and evaluation crop (values of the original configs and data loader).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DATASETS", "KB_CROP_HW", "KITTI", "NYU", "NYU_EIGEN_CROP", "NYU_FULL_HW", "NYU_VALID_BOX",
           "DatasetFacts", "dataset_facts"]


@dataclass(frozen=True)
class DatasetFacts:
    """What the code needs to know about one dataset.

    Attributes:
        name: the ``--dataset`` name.
        max_depth: maximum depth in metres (loss validity, output range, default max eval depth).
        prior_mean: log-depth prior of the output layer (``exp(conv + prior_mean)``).
        focal: focal length in pixels of the dataset's camera at its full resolution.
        full_hw: the dataset's full image size (height, width).
        depth_png_scale: a depth PNG stores ``round(depth_m * scale)`` as uint16.
        brightness_range: training brightness augmentation U(lo, hi).
        eval_crop: the crop of the original eval configs ('eigen' or 'garg').
        min_depth_eval: minimum evaluation depth of the original configs.
    """

    name: str
    max_depth: float
    prior_mean: float
    focal: float
    full_hw: tuple[int, int]
    depth_png_scale: float
    brightness_range: tuple[float, float]
    eval_crop: str
    min_depth_eval: float = 1e-3


NYU = DatasetFacts("nyu", max_depth=10.0, prior_mean=1.54, focal=518.8579, full_hw=(480, 640),
                   depth_png_scale=1000.0, brightness_range=(0.75, 1.25), eval_crop="eigen")
KITTI = DatasetFacts("kitti", max_depth=80.0, prior_mean=2.54, focal=721.5377, full_hw=(375, 1242),
                     depth_png_scale=256.0, brightness_range=(0.9, 1.1), eval_crop="garg")
DATASETS = {facts.name: facts for facts in (NYU, KITTI)}

# KITTI benchmark (KB) crop: the bottom-centred 352x1216 window the network trains and predicts at.
KB_CROP_HW = (352, 1216)
# NYU: rows 45:472, cols 43:608 of a 480x640 frame hold registered depth (training zeroes the rest).
NYU_FULL_HW = NYU.full_hw
NYU_VALID_BOX = (45, 472, 43, 608)
# NYU's Eigen evaluation crop: rows 45:471, cols 41:601.
NYU_EIGEN_CROP = (45, 471, 41, 601)


def dataset_facts(name: str) -> DatasetFacts:
    """The facts of ``nyu`` or ``kitti``.

    Raises:
        ValueError: an unknown dataset name.
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}") from None

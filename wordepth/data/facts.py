"""Per-dataset facts: the one place for each dataset's depth range, output prior, camera, depth-PNG
units, augmentation range and evaluation crop (values of the original configs and data loader),
and, for the zero-shot evaluation sets (SUN RGB-D, iBims-1, DIODE), their file formats and the
published protocols (docs/zeroshot.md gives the sources).
"""
from __future__ import annotations

from dataclasses import dataclass

from wordepth.errors import UserError

__all__ = ["DATASETS", "DIODE_INDOOR", "DIODE_OUTDOOR", "IBIMS", "KB_CROP_HW", "KITTI", "MIN_DEPTH_EVAL", "NYU",
           "NYU_EIGEN_CROP", "NYU_FULL_HW", "NYU_VALID_BOX", "ROTATION_DEGREE", "SUNRGBD", "ZEROSHOT_DATASETS",
           "DatasetFacts", "EvalProtocol", "ZeroShotFacts", "zeroshot_facts"]

# Facts of the original configs shared by NYU and KITTI.
MIN_DEPTH_EVAL = 1e-3  # minimum evaluation depth (metres)
ROTATION_DEGREE = 2.5  # training rotation U(-degree, degree) (--degree, --do_random_rotate)
# KITTI benchmark (KB) crop: the bottom-centred 352x1216 window the network trains and predicts at.
KB_CROP_HW = (352, 1216)


@dataclass(frozen=True)
class DatasetFacts:
    """What the code needs to know about one dataset.

    Attributes:
        name: the ``--dataset`` name.
        max_depth: maximum depth in metres (loss validity, output range, default max eval depth).
        prior_mean: log-depth prior of the output layer (``exp(conv + prior_mean)``).
        focal: focal length in pixels of the dataset's camera at its full resolution.
        full_hw: the dataset's full image size (height, width).
        train_hw: the training input size of the original configs (the released checkpoints'
            position-embedding grid is a quarter of it).
        depth_png_scale: a depth PNG stores ``round(depth_m * scale)`` as uint16; None: the dataset's
            depth maps are ``.npy`` arrays in metres (:func:`wordepth.data.depth_png.read_depth`).
        brightness_range: training brightness augmentation U(lo, hi) (default: the original data
            loader's for every dataset but NYU).
        eval_crop: the crop of the original eval configs ('eigen' or 'garg'); None: no crop.
        min_depth_eval: minimum evaluation depth of the original configs.

    Training and evaluation take a dataset by name from :mod:`wordepth.data.registry`; a dataset of
    your own declares its facts and registers its class there (docs/data.md, "Your own dataset").
    """

    name: str
    max_depth: float
    prior_mean: float
    focal: float
    full_hw: tuple[int, int]
    train_hw: tuple[int, int]
    depth_png_scale: float | None = None
    brightness_range: tuple[float, float] = (0.9, 1.1)
    eval_crop: str | None = None
    min_depth_eval: float = MIN_DEPTH_EVAL


NYU = DatasetFacts("nyu", max_depth=10.0, prior_mean=1.54, focal=518.8579, full_hw=(480, 640), train_hw=(480, 640),
                   depth_png_scale=1000.0, brightness_range=(0.75, 1.25), eval_crop="eigen")
KITTI = DatasetFacts("kitti", max_depth=80.0, prior_mean=2.54, focal=721.5377, full_hw=(375, 1242), train_hw=KB_CROP_HW,
                     depth_png_scale=256.0, brightness_range=(0.9, 1.1), eval_crop="garg")
DATASETS = {facts.name: facts for facts in (NYU, KITTI)}  # the built-in ones; every registered one: data/registry.py

# NYU: rows 45:472, cols 43:608 of a 480x640 frame hold registered depth (training zeroes the rest).
NYU_FULL_HW = NYU.full_hw
NYU_VALID_BOX = (45, 472, 43, 608)
# NYU's Eigen evaluation crop: rows 45:471, cols 41:601.
NYU_EIGEN_CROP = (45, 471, 41, 601)


# --------------------------------------------------------------------------- zero-shot evaluation sets


@dataclass(frozen=True)
class EvalProtocol:
    """One published way of evaluating on a zero-shot dataset (sources in docs/zeroshot.md).

    Ground truth is valid where ``min_depth < gt < max_depth`` (and the dataset's own masks, when
    ``use_masks``), inside ``crop``. Predictions are clamped to ``pred_range``.

    Attributes:
        name: the ``--protocol`` name (``toolbox``, ``zoedepth``, ``official``, ``marigold``).
        source: where it is published (code file or paper), for the results' record.
        min_depth: valid ground truth is larger (exclusive).
        max_depth: valid ground truth is smaller (exclusive).
        pred_range: (lo, hi) the prediction is clamped to; None: (min_depth, max_depth).
        crop: ``eigen`` (the fixed NYU window rows 45:471, cols 41:601 at any image size, as
            ZoeDepth and the toolbox apply it), ``garg`` (fractions of the size) or None.
        gt_cap: ground truth above this is set to it before masking (SUN RGB-D toolbox: 8 m).
        use_masks: apply the dataset's validity masks (iBims-1 invalid/transparent, DIODE mask file).
        input_short_side: resize the image (bilinear) so its shorter side has this length and
            upsample the prediction back to the ground truth (bilinear, corners aligned); None: as is.
        flip: the published numbers average the prediction with that of the flipped image.
    """

    name: str
    source: str
    min_depth: float
    max_depth: float
    pred_range: tuple[float, float] | None = None
    crop: str | None = None
    gt_cap: float | None = None
    use_masks: bool = True
    input_short_side: int | None = None
    flip: bool = False

    @property
    def clamp_range(self) -> tuple[float, float]:
        """The range predictions are clamped to."""
        return self.pred_range if self.pred_range is not None else (self.min_depth, self.max_depth)

    def to_dict(self) -> dict:
        """Plain data for ``--metrics_json``."""
        return {"name": self.name, "source": self.source, "min_depth": self.min_depth, "max_depth": self.max_depth,
                "pred_range": list(self.clamp_range), "crop": self.crop, "gt_cap": self.gt_cap,
                "use_masks": self.use_masks, "input_short_side": self.input_short_side, "flip": self.flip}


@dataclass(frozen=True)
class ZeroShotFacts:
    """An evaluation-only dataset: its files, units and published protocols.

    Attributes:
        name: the ``--datasets`` name.
        folder: its folder under ``--data_root``.
        text_split: text caption/feature folder (``text_feat/<name>/<text_split>/...``).
        n_images: images of the evaluation split as distributed.
        image_hw: image size (height, width), None where it varies.
        depth_units: how the ground-truth file stores depth.
        focal: focal length in pixels where one camera took every image, else None.
        split_file: default list of the split, relative to the folder (None: found by globbing).
        protocols: the published protocols, the default first.
    """

    name: str
    folder: str
    text_split: str
    n_images: int
    image_hw: tuple[int, int] | None
    depth_units: str
    focal: float | None
    split_file: str | None
    protocols: tuple[EvalProtocol, ...]

    def protocol(self, name: str | None = None) -> EvalProtocol:
        """The protocol called ``name`` (None: the default).

        Raises:
            UserError: no such protocol for this dataset.
        """
        if name is None:
            return self.protocols[0]
        for protocol in self.protocols:
            if protocol.name == name:
                return protocol
        raise UserError(f"{self.name} has no protocol {name!r}: use one of "
                         f"{', '.join(p.name for p in self.protocols)}")


_ZOEDEPTH = "ZoeDepth (Bhat et al. 2023), zoedepth/utils/config.py, misc.py compute_metrics, evaluate.py"
_TOOLBOX = ("Monocular-Depth-Estimation-Toolbox (Li et al., BinsFormer 2022), depth/datasets/sunrgbd.py, "
            "configs/_base_/datasets/sun_rgbd.py")
_MARIGOLD = "Marigold (Ke et al. 2024), src/dataset/diode_dataset.py, script/eval/eval.py"

SUNRGBD = ZeroShotFacts(
    "sunrgbd", folder="sunrgbd", text_split="test", n_images=5050, image_hw=None,
    depth_units="uint16 PNG, millimetres with the 16 bits rotated left by 3: mm = (v >> 3) | (v << 13)",
    focal=None, split_file="SUNRGBD_val_splits.txt",
    protocols=(
        EvalProtocol("toolbox", _TOOLBOX, min_depth=1e-3, max_depth=10.0, pred_range=(1e-3, 8.0), crop="eigen",
                     gt_cap=8.0, flip=True),
        EvalProtocol("zoedepth", _ZOEDEPTH, min_depth=1e-3, max_depth=8.0, crop="eigen", flip=True),
    ))
IBIMS = ZeroShotFacts(
    "ibims", folder="ibims", text_split="test", n_images=100, image_hw=(480, 640),
    depth_units="MATLAB v5 .mat, struct 'data': depth in metres (float), rgb uint8",
    focal=None, split_file="imagelist.txt",
    protocols=(
        EvalProtocol("zoedepth", _ZOEDEPTH, min_depth=1e-3, max_depth=10.0, crop="eigen", flip=True),
        EvalProtocol("official", "iBims-1 evaluation_scripts/evaluate_ibims.py (Koch et al. 2018)",
                     min_depth=0.0, max_depth=float("inf"), pred_range=(1e-3, float("inf"))),
    ))


def _diode(name: str, n_images: int, max_depth: float, crop: str) -> ZeroShotFacts:
    """DIODE validation images of one kind: ZoeDepth's protocol for it, then Marigold's."""
    return ZeroShotFacts(
        name, folder="diode", text_split="val", n_images=n_images, image_hw=(768, 1024),
        depth_units="float32 .npy (H, W, 1) metres, with a (H, W) validity mask .npy", focal=None, split_file=None,
        protocols=(
            EvalProtocol("zoedepth", _ZOEDEPTH, min_depth=1e-3, max_depth=max_depth, crop=crop, use_masks=False,
                         input_short_side=480, flip=True),
            EvalProtocol("marigold", _MARIGOLD, min_depth=0.0, max_depth=float("inf"), pred_range=(0.6, 350.0)),
        ))


DIODE_INDOOR = _diode("diode_indoor", 325, max_depth=10.0, crop="eigen")
DIODE_OUTDOOR = _diode("diode_outdoor", 446, max_depth=80.0, crop="garg")
ZEROSHOT_DATASETS = {facts.name: facts for facts in (SUNRGBD, IBIMS, DIODE_INDOOR, DIODE_OUTDOOR)}


def zeroshot_facts(name: str) -> ZeroShotFacts:
    """The facts of a zero-shot dataset (``sunrgbd``, ``ibims``, ``diode_indoor``, ``diode_outdoor``).

    Raises:
        UserError: an unknown name.
    """
    try:
        return ZEROSHOT_DATASETS[name]
    except KeyError:
        raise UserError(f"unknown zero-shot dataset {name!r}: use one of {', '.join(ZEROSHOT_DATASETS)}") from None

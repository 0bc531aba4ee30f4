"""Checking a dataset before training (``--check_data``).

:func:`check_split` scans one split file and reports every problem at once, each with its line
number: malformed lines, missing or unreadable images, depth maps and text features, truncated
JPEG/PNG files, depth maps that are not single-channel uint16 or not the image's size, and
features of the wrong shape. Things the datasets handle themselves (grayscale or RGBA images,
which are read as RGB; evaluation entries without ground truth, which are skipped) are reported
as warnings.

Skipping bad samples while training instead (``--skip_bad_samples``): :mod:`wordepth.data.robust`.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from tqdm import tqdm

from wordepth.checkpoints import load_checkpoint
from wordepth.data.depth_png import read_depth_npy
from wordepth.data.facts import KITTI, NYU
from wordepth.data.registry import dataset_facts
from wordepth.data.splits import SplitFileError, join_entry, parse_split_line, split_file_lines
from wordepth.data.text_features import TextFeatureStore, feature_path, load_feature_file, normalize_key
from wordepth.zeroshot.data import build_zeroshot_dataset

if TYPE_CHECKING:  # annotations only: the configuration module imports the data package
    from wordepth.config import RunConfig

__all__ = ["Problem", "check_split", "check_data_main", "check_zeroshot", "dataset_mismatch", "depth_units_problem"]

log = logging.getLogger(__name__)

ERROR, WARNING = "error", "warning"
_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DEPTH_UNITS = {"nyu": "millimetres", "kitti": "metres x 256"}
_CREATE_FEATURES = "create it with wordepth-text extract or wordepth-download"


@dataclass(frozen=True)
class Problem:
    """One problem found in a split.

    Attributes:
        line_no: 1-based line of the split file; 0 for the split as a whole (a missing root).
        path: the file or folder concerned.
        message: what is wrong and, where it helps, what to do.
        level: ``error`` (training or evaluation would fail or learn from wrong data) or
            ``warning`` (the dataset copes with it).
    """

    line_no: int
    path: str
    message: str
    level: str = ERROR

    @property
    def is_error(self) -> bool:
        return self.level == ERROR

    def __str__(self) -> str:
        where = f"line {self.line_no}: " if self.line_no else ""
        tag = "warning: " if self.level == WARNING else ""
        return f"{where}{self.path}: {tag}{self.message}"


# --------------------------------------------------------------------------- file checks
def _read_bytes(path: Path, what: str) -> tuple[bytes | None, str | None]:
    """File contents, or None and the reason it cannot be used."""
    if not path.is_file():
        return None, f"{what} not found"
    try:
        data = path.read_bytes()
    except OSError as err:
        return None, f"cannot read the {what}: {err.strerror or err}"
    if not data:
        return None, f"{what} is an empty file"
    return data, None


def _truncation(data: bytes) -> str | None:
    """Why a JPEG/PNG file looks cut short (no end marker), or None.

    A truncated JPEG still decodes with ``cv2.imread`` (the missing part comes out grey), so
    the end-of-image marker is checked explicitly; a PNG must contain its ``IEND`` chunk.
    """
    if data.startswith(_JPEG_MAGIC):
        if not data.rstrip(b"\x00\r\n\t ").endswith(_JPEG_EOI):
            return "truncated JPEG (no end-of-image marker): re-download or re-extract it"
    elif data.startswith(_PNG_MAGIC):
        if b"IEND" not in data[-4096:]:
            return "truncated PNG (no IEND chunk): re-download or re-extract it"
    return None


def _decode(data: bytes) -> np.ndarray | None:
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None


def _check_image(path: Path, decode: bool) -> tuple[list[tuple[str, str]], tuple[int, int] | None]:
    """(level, message) pairs for an input image, and its (H, W) when decoded."""
    if not decode:
        return ([] if path.is_file() else [(ERROR, "image not found")]), None
    data, why = _read_bytes(path, "image")
    if data is None:
        return [(ERROR, why)], None
    cut = _truncation(data)
    if cut:
        return [(ERROR, cut)], None
    img = _decode(data)
    if img is None:
        return [(ERROR, "cannot decode the image (not a JPEG/PNG cv2 can read, or corrupt)")], None
    found = []
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        found.append((WARNING, "grayscale image: the dataset reads it as RGB (cv2.IMREAD_COLOR repeats the channel)"))
    elif img.ndim == 3 and img.shape[2] == 4:
        found.append((WARNING, "RGBA image: the dataset reads it as RGB (cv2.IMREAD_COLOR drops the alpha channel)"))
    if img.dtype != np.uint8:
        found.append((WARNING, f"{img.dtype} image: the dataset converts it to 8 bits (cv2.IMREAD_COLOR)"))
    return found, img.shape[:2]


def _check_depth(path: Path, dataset: str, image_hw: tuple[int, int] | None, mode: str,
                 decode: bool, stats: list | None = None) -> list[tuple[str, str]]:
    """(level, message) pairs for a ground-truth depth PNG; ``stats`` receives (path, median, p99) of its
    measured (non-zero) raw values."""
    missing_level = ERROR if mode == "train" else WARNING
    missing_note = "" if mode == "train" else " (evaluation skips this entry)"
    if not path.is_file():
        return [(missing_level, "depth map not found" + missing_note)]
    if not decode:
        return []
    data, why = _read_bytes(path, "depth map")
    if data is None:
        return [(ERROR, why)]
    cut = _truncation(data)
    if cut:
        return [(ERROR, cut)]
    if path.suffix.lower() == ".npy":
        return _check_depth_npy(path, image_hw)
    if not data.startswith(_PNG_MAGIC):
        return [(ERROR, "depth map is not a PNG file (expected a 16-bit PNG, or a .npy array in metres)")]
    if dataset_facts(dataset).depth_png_scale is None:
        return [(ERROR, f"depth map is a PNG, but {dataset} declares no depth_png_scale: its depth maps are .npy "
                        "arrays in metres (DatasetFacts.depth_png_scale)")]
    depth = _decode(data)
    if depth is None:
        return [(ERROR, "cannot decode the depth map (corrupt PNG)")]
    found = []
    if depth.ndim != 2:
        found.append((ERROR, f"depth map has {depth.shape[2]} channels, expected a single-channel uint16 PNG"))
    if depth.dtype != np.uint16:
        found.append((ERROR, f"depth map is {depth.dtype}, expected uint16 ({_DEPTH_UNITS.get(dataset, 'raw')}): "
                             "its values would be read in the wrong units"))
    if image_hw is not None and depth.shape[:2] != tuple(image_hw):
        found.append((ERROR, f"depth map is {depth.shape[0]}x{depth.shape[1]}, its image "
                             f"{image_hw[0]}x{image_hw[1]}: they must be the same size"))
    if not found and not depth.any():
        found.append((WARNING, "depth map has no valid pixels (all zero): it adds nothing to the loss"))
    elif not found and stats is not None:
        measured = depth[depth > 0]
        stats.append((path, float(np.median(measured)), float(np.percentile(measured, 99))))
    return found


# A split whose typical 99th-percentile depth is this many times the dataset's maximum depth is in other units.
UNITS_FACTOR = 1.5


def _check_depth_npy(path: Path, image_hw: tuple[int, int] | None) -> list[tuple[str, str]]:
    """(level, message) pairs for a ``.npy`` depth map in metres (read as the dataset reads it)."""
    try:
        depth = read_depth_npy(path)
    except (OSError, ValueError) as err:
        return [(ERROR, str(err).replace(f" {path}", ""))]
    if image_hw is not None and depth.shape != tuple(image_hw):
        return [(ERROR, f"depth map is {depth.shape[0]}x{depth.shape[1]}, its image {image_hw[0]}x{image_hw[1]}: "
                        "they must be the same size")]
    if not depth.any():
        return [(WARNING, "depth map has no valid pixels (all zero, NaN or negative): it adds nothing to the loss")]
    return []


def depth_units_problem(dataset: str, stats: list[tuple[Path, float, float]]) -> str | None:
    """Why a split's depth PNGs look stored in other units than ``dataset``'s, or None.

    ``stats``: (file, median, 99th percentile) of each depth map's measured raw values. Read with the
    dataset's scale (NYU: millimetres, KITTI: metres x 256), the median over the files of their 99th
    percentiles must stay near the dataset's maximum depth; KITTI maps (x 256) read as NYU give about
    20 m against NYU's 10 m; KITTI maps stored in millimetres give hundreds of metres.
    """
    facts = {"nyu": NYU, "kitti": KITTI}.get(dataset)
    if facts is None or not stats:
        return None
    p99 = np.array([s[2] for s in stats]) / facts.depth_png_scale  # metres, as the dataset reads them
    typical = float(np.median(p99))
    if typical <= UNITS_FACTOR * facts.max_depth:
        return None
    example = stats[int(np.argmax(p99))][0]
    other = KITTI if facts is NYU else NYU
    as_other = typical * facts.depth_png_scale / other.depth_png_scale
    return (f"depth maps read as {dataset.upper()} ({_DEPTH_UNITS[dataset]}) reach {typical:.1f} m (the median over "
            f"{len(stats)} maps of their 99th percentile, e.g. {example}), far beyond {dataset.upper()}'s maximum "
            f"depth of {facts.max_depth:g} m: they look stored in other units (read as {other.name.upper()}, "
            f"{_DEPTH_UNITS[other.name]}, they would reach {as_other:.1f} m); check --dataset and the depth files")


def dataset_mismatch(recorded: Mapping | None, dataset: str, max_depth: float | None = None,
                     prior_mean: float | None = None) -> str | None:
    """Why a checkpoint's model does not belong to the dataset it is evaluated on, or None.

    A network trained for one dataset predicts depths in that dataset's range (its output layer's
    prior mean and maximum depth): a KITTI model (80 m, prior 2.54) on NYU gives abs_rel about 2, an
    NYU model on KITTI clips every depth at 10 m. Detected from what the checkpoint records.

    Args:
        recorded: the checkpoint's model config as recorded (``max_depth``, ``prior_mean``, optionally
            ``dataset``); None for checkpoints that record nothing (the original release), where
            ``max_depth`` and ``prior_mean`` (what the network is built with) are used if both are given.
        dataset: the dataset evaluated (``nyu`` or ``kitti``; others are not checked).
        max_depth, prior_mean: the network's settings when ``recorded`` is None.

    Returns:
        One sentence naming both datasets, or None when they agree or the model is neither's.
    """
    known = {"nyu": NYU, "kitti": KITTI}
    target = known.get(str(dataset).lower())
    if target is None:
        return None
    settings = dict(recorded) if recorded else {}
    if not settings:
        if max_depth is None or prior_mean is None:
            return None
        settings = {"max_depth": max_depth, "prior_mean": prior_mean}
    trained = known.get(str(settings.get("dataset", "")).lower())
    if trained is None:
        try:
            md, pm = float(settings["max_depth"]), float(settings["prior_mean"])
        except (KeyError, TypeError, ValueError):
            return None
        trained = next((f for f in known.values()
                        if abs(md - f.max_depth) < 1e-6 and abs(pm - f.prior_mean) < 1e-6), None)
    if trained is None or trained is target:
        return None
    md = settings.get("max_depth", trained.max_depth)
    pm = settings.get("prior_mean", trained.prior_mean)
    return (f"the checkpoint holds a {trained.name.upper()} model (max depth {float(md):g} m, prior mean "
            f"{float(pm):g}) but the data are {target.name.upper()} (max depth {target.max_depth:g} m): its depths "
            f"are in {trained.name.upper()}'s range and the metrics would be meaningless; evaluate it on "
            f"{trained.name.upper()}, or evaluate {'an' if target is NYU else 'a'} {target.name.upper()} checkpoint")


def troubleshooting_page() -> str:
    """Where the message list is: the page of this checkout, else its name in the source repository."""
    page = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"
    return str(page) if page.is_file() else "docs/troubleshooting.md in the WorDepth source repository"


# --------------------------------------------------------------------------- splits
def _split_lines(path: Path) -> tuple[list[str] | None, str | None]:
    """Lines as ``read_split`` sees them (UTF-8, byte-order mark dropped, any line ending), or None and the reason."""
    if not path.is_file():
        return None, "split file not found"
    try:
        return split_file_lines(path), None
    except OSError as err:
        return None, f"cannot read the split file: {err.strerror or err}"
    except SplitFileError as err:
        return None, str(err).replace(f"{path}, ", "")


def check_split(
    dataset: str,
    split_file: str | os.PathLike,
    data_path: str | os.PathLike,
    gt_path: str | os.PathLike,
    text_feat_dir: str | os.PathLike,
    text_split: str,
    feature_dim: int | None = None,
    decode: bool = True,
    *,
    mode: str | None = None,
    progress: bool = False,
) -> list[Problem]:
    """Scans one split and returns every problem found, in line order.

    Args:
        dataset: a registered dataset's name (the text feature folder, the depth units).
        split_file: the split file (``rgb depth focal`` per line).
        data_path: root of the rgb entries.
        gt_path: root of the depth entries.
        text_feat_dir: text feature root (per-file features or a packed store).
        text_split: text feature folder, ``train`` or ``test``.
        feature_dim: the feature width D the model takes (``WorDepthConfig.text_dim``; None: any).
        decode: decode images and depth maps and load features; False only checks that
            the files exist.
        mode: ``train`` (a missing depth map is an error) or ``eval`` (a warning: the
            evaluation skips the entry); default ``train`` for the ``train`` text split.
        progress: show a tqdm bar.

    Returns:
        The problems; an empty list means the split is usable as it is.
    """
    dataset_facts(dataset)  # a registered name, else one line listing them and how to register one
    split_file = Path(split_file)
    mode = mode or ("train" if text_split == "train" else "eval")
    lines, why = _split_lines(split_file)
    if lines is None:
        return [Problem(0, str(split_file), why)]
    problems: list[Problem] = []

    def root_ok(root, flag: str, what: str) -> bool:
        if root is None or not Path(root).is_dir():
            problems.append(Problem(0, str(root), f"{what} ({flag}) does not exist: check the path"))
            return False
        return True

    images_ok = root_ok(data_path, "--data_path" if mode == "train" else "--data_path_eval", "image root")
    depths_ok = root_ok(gt_path, "--gt_path" if mode == "train" else "--gt_path_eval", "ground-truth root")
    store = TextFeatureStore(text_feat_dir, dataset, text_split, feature_dim)
    packed_keys: set[str] = set()
    nonfinite_rows: dict[str, int] = {}  # packed keys whose row holds NaN/inf -> row
    try:
        if store.packed:
            packed_keys = set(store._index)
            nonfinite_rows = store.nonfinite_rows() if decode else {}
    except (OSError, ValueError) as err:
        problems.append(Problem(0, str(Path(text_feat_dir) / dataset), f"packed text features unusable: {err}"))
    feat_folder = Path(text_feat_dir) / dataset / text_split
    features_ok = bool(packed_keys) or feat_folder.is_dir()
    if not features_ok:
        problems.append(Problem(0, str(feat_folder), f"text feature folder (--text_feat_dir) does not exist; "
                                                     f"{_CREATE_FEATURES}"))

    entries = 0
    depth_stats: list = []
    seen: dict[str, int] = {}
    numbered = list(enumerate(lines, start=1))
    if progress:
        numbered = tqdm(numbered, desc=f"checking {split_file.name}", unit="line")
    for line_no, line in numbered:
        try:
            entry = parse_split_line(line, line_no)
        except SplitFileError as err:
            problems.append(Problem(line_no, str(split_file), str(err)))
            continue
        if entry is None:
            continue
        rgb, depth = entry.rgb, entry.depth
        entries += 1
        if rgb in seen:
            problems.append(Problem(line_no, str(split_file), f"{rgb} is listed again (first on line {seen[rgb]})",
                                    WARNING))
        seen.setdefault(rgb, line_no)

        image_hw = None
        if images_ok:
            image_file = join_entry(data_path, rgb)
            found, image_hw = _check_image(image_file, decode)
            problems += [Problem(line_no, str(image_file), msg, level) for level, msg in found]
        if depth is None:
            if mode == "train":
                problems.append(Problem(line_no, str(split_file), "a training entry needs a depth map, not None"))
        elif depths_ok:
            depth_file = join_entry(gt_path, depth)
            found = _check_depth(depth_file, dataset, image_hw, mode, decode, depth_stats)
            problems += [Problem(line_no, str(depth_file), msg, level) for level, msg in found]
        if normalize_key(rgb) in nonfinite_rows:
            problems.append(Problem(line_no, str(store.packed_files[0]),
                                    f"the packed text feature of {rgb} (row {nonfinite_rows[normalize_key(rgb)]}) "
                                    "holds non-finite values (NaN or inf): re-extract it and re-pack"))
        if features_ok and normalize_key(rgb) not in packed_keys:
            feat_file = feature_path(text_feat_dir, dataset, text_split, rgb)
            if not feat_file.is_file():
                problems.append(Problem(line_no, str(feat_file), f"text feature not found; {_CREATE_FEATURES}"))
            elif decode:
                try:
                    load_feature_file(feat_file, expected_dim=feature_dim)
                except (OSError, ValueError) as err:
                    problems.append(Problem(line_no, str(feat_file), str(err).replace(f" {feat_file}", "")))
    if entries == 0 and not any(p.line_no for p in problems):
        problems.append(Problem(0, str(split_file), "split file has no entries"))
    units = depth_units_problem(dataset, depth_stats)
    if units:
        problems.append(Problem(0, str(gt_path), units, WARNING))
    return problems


def check_zeroshot(name: str, data_root: str | os.PathLike, text_feat_dir: str | os.PathLike,
                   split_file: str | os.PathLike | None = None, *, progress: bool = False) -> list[Problem]:
    """Scans a zero-shot dataset (SUN RGB-D, iBims-1, DIODE; `wordepth.zeroshot.data`).

    Reports a missing list, every missing image, depth, mask or ``.mat`` file and text feature, and
    every sample that cannot be read as its dataset distributes it (truncated JPEG/PNG, a depth PNG
    that is not single-channel uint16, a ``.mat`` that is not MATLAB v5 with the iBims-1 fields,
    ``.npy`` arrays of the wrong shape, image and depth of different sizes, wrong feature shape).

    Returns:
        The problems, each with the line of the list it comes from (0 for globbed or whole-set ones).
    """
    dataset = build_zeroshot_dataset(name, data_root, text_feat_dir, split_file, strict=False)
    problems = [Problem(line_no, path, message) for line_no, path, message in dataset.problems()]
    indices = range(len(dataset))
    if progress:
        indices = tqdm(indices, desc=f"checking {name}", unit="image")
    for i in indices:
        entry = dataset.entries[i]
        try:
            dataset[i]
        except (OSError, ValueError) as err:
            problems.append(Problem(entry.line_no, str(entry.files[0]), str(err)))
    return problems


def check_data_main(cfg: RunConfig) -> int:
    """``--check_data``: checks the training and evaluation splits of the run's configuration.

    Prints one line per problem (``train:line N: path: message``) and a summary.

    Returns:
        0 when no error-level problem was found.

    Raises:
        SystemExit: with status 1 when there are errors.
    """
    data, ev = cfg.data, cfg.eval
    # the width of a new network's features (--text_dim / --clip_model, else RN50's); a checkpoint's is its own
    feature_dim = cfg.model.text_dim
    if feature_dim is None and cfg.run.checkpoint_path:
        feature_dim = load_checkpoint(cfg.run.checkpoint_path).cfg.text_dim  # mapped, built without a copy
    elif feature_dim is None:
        from wordepth.config import text_settings  # the configuration module imports the data package

        feature_dim = text_settings(cfg.model)["text_dim"]
    jobs = []
    if data.filenames_file:
        jobs.append(("train", data.filenames_file, data.data_path, data.gt_path, "train", "train"))
    if ev.filenames_file_eval:
        jobs.append(("eval", ev.filenames_file_eval, ev.data_path_eval, ev.gt_path_eval, "test", "eval"))
    if not jobs:
        raise SystemExit("error: --check_data needs --filenames_file and/or --filenames_file_eval")
    errors = warnings = 0
    summary = []
    for label, split_file, data_path, gt_path, text_split, mode in jobs:
        found = check_split(data.dataset, split_file, data_path, gt_path, data.text_feat_dir, text_split,
                            feature_dim=feature_dim, mode=mode, progress=not cfg.run.no_tqdm)
        n_err = sum(p.is_error for p in found)
        n_warn = len(found) - n_err
        errors, warnings = errors + n_err, warnings + n_warn
        for p in found:
            print(f"{label}:{p}" if p.line_no else f"{label}: {p}", flush=True)
        summary.append(f"{label} split {split_file}: {n_err} error(s), {n_warn} warning(s)")
    for line in summary:
        print(line, flush=True)
    if errors:
        print(f"check_data: {errors} error(s) found. Fix them (every message, its cause and fix: "
              f"{troubleshooting_page()}), or train with --skip_bad_samples to skip samples that cannot be "
              "loaded.", flush=True)
        raise SystemExit(1)
    print(f"check_data: no errors ({warnings} warning(s))", flush=True)
    return 0

"""Zero-shot evaluation sets, read exactly as distributed: SUN RGB-D, iBims-1 and DIODE.

Every sample is a dict like NYU's and KITTI's (:class:`wordepth.data.splits.SplitDataset`):
``image`` (3, H, W) float32 ImageNet-normalised, ``depth`` (1, H, W) float32 metres (0: no
measurement), ``text_feature`` (D,), ``has_valid_depth``, ``path`` (the entry's key) and
``focal``, plus ``valid_mask`` (1, H, W) bool: the dataset's own validity masks (all True where
it has none). File formats, layouts and sources: docs/zeroshot.md; the facts: `wordepth.data.facts`.

* SUN RGB-D: a split file of ``rgb depth [focal]`` lines relative to ``<data_root>/sunrgbd`` (the
  Monocular-Depth-Estimation-Toolbox's ``SUNRGBD_val_splits.txt`` of two fields works as it is);
  JPEG images, 16-bit PNG depth in millimetres whose bits are rotated: ``(v >> 3) | (v << 13)``.
* iBims-1: ``imagelist.txt`` and ``ibims1_core_mat/<name>.mat`` (MATLAB v5, read with
  ``scipy.io.loadmat``): struct ``data`` with ``rgb``, ``depth`` (metres), ``mask_invalid`` and
  ``mask_transp`` (1 = keep), ``calib``.
* DIODE (val): ``val/<indoors|outdoor>/scene_*/scan_*/<name>.png`` with ``<name>_depth.npy``
  ((H, W, 1) metres) and ``<name>_depth_mask.npy``.

A dataset whose list or files are incomplete raises :class:`ZeroShotDataError` naming the first
missing file (``strict``), or reports every problem (:meth:`ZeroShotDataset.problems`, used by
``--check_data``).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import scipy.io
import torch.utils.data

from wordepth.data.depth_png import read_npy
from wordepth.data.splits import SplitFileError, check_entry, join_entry
from wordepth.data.text_features import TextFeatureStore, normalize_key
from wordepth.data.transforms import image_to_tensor, read_image
from wordepth.data.facts import ZeroShotFacts, zeroshot_facts
from wordepth.data.images import is_image_file
from wordepth.errors import UserError
from wordepth.outputs import PathEscapeError, contained, write_array

__all__ = ["DIODEDataset", "DIODEIndoorDataset", "DIODEOutdoorDataset", "IBimsDataset", "SUNRGBDDataset",
           "ZeroShotDataError", "ZeroShotDataset", "ZeroShotEntry", "ZeroShotSampleError", "build_zeroshot_dataset",
           "decode_sunrgbd_depth", "read_ibims_mat", "sunrgbd_format_problem"]

logger = logging.getLogger(__name__)

_IBIMS_FIELDS = ("rgb", "depth", "mask_invalid", "mask_transp", "calib")
_MAKE_FEATURES = "write the captions and features with `wordepth-eval-zeroshot --prepare_text`"


def _not_utf8(path: Path) -> str | None:
    """Why a list file cannot be read as UTF-8 text, or None if it can."""
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not UTF-8 text ({err.reason} at byte {err.start}): save it as UTF-8"
    return None


class ZeroShotDataError(FileNotFoundError):
    """A zero-shot dataset that is missing or incomplete (the message names the file)."""


class ZeroShotSampleError(UserError):
    """A sample's files cannot be read as its dataset distributes them (the message names the file).

    Every failure of :meth:`ZeroShotDataset.__getitem__` is raised as this one class with a one-line
    message, so that a DataLoader worker re-raises it unchanged in kind and the message survives.
    """


# Correctly stored SUN RGB-D depths (millimetres rotated left by 3 bits) have their low three bits zero
# unless the depth is 8.192 m or more; in plain millimetres 7 in 8 values have one of them set.
SUNRGBD_LOW_BITS_LIMIT = 0.5  # above this fraction of set low bits among measured pixels: not rotated
SUNRGBD_LOW_BITS_MIN_PIXELS = 16  # fewer measured pixels: too few to tell
DIODE_MILLIMETRE_MEDIAN = 500.0  # metres: a DIODE depth map with a larger median is in millimetres


@dataclass(frozen=True)
class ZeroShotEntry:
    """One sample's files.

    Attributes:
        key: the sample's name: its text-feature key and ``path`` (no leading slash).
        files: the files it is read from, image first (for iBims-1 the one ``.mat``).
        focal: focal length from the split file, NaN where none is given.
        line_no: 1-based line of the list it came from (0: found by globbing).
    """

    key: str
    files: tuple[Path, ...]
    focal: float = math.nan
    line_no: int = 0


@dataclass(frozen=True)
class _Listing:
    entries: list[ZeroShotEntry]
    problems: list[tuple[int, str, str]]  # (line_no, path, message)


# --------------------------------------------------------------------------- readers


def decode_sunrgbd_depth(raw: np.ndarray) -> np.ndarray:
    """SUN RGB-D's stored uint16 -> metres: ``((v >> 3) | (v << 13)) / 1000`` (16-bit rotation).

    Args:
        raw: the PNG's uint16 values.

    Returns:
        float32 metres (0 stays 0: no measurement).
    """
    if raw.dtype != np.uint16:
        raise UserError(f"SUN RGB-D depth must be uint16, got {raw.dtype}")
    millimetres = (raw >> np.uint16(3)) | (raw << np.uint16(13))  # uint16 arithmetic drops the shifted-out bits
    return millimetres.astype(np.float32) / np.float32(1000.0)


def sunrgbd_format_problem(raw: np.ndarray) -> str | None:
    """Why a uint16 SUN RGB-D depth map does not look bit-rotated (plain millimetres), or None.

    Stored values are millimetres rotated left by 3 bits, so their low three bits are the top three
    bits of the depth: zero for every depth below 8.192 m. A map where most measured pixels have one
    of them set holds plain millimetres (e.g. ZoeDepth's preprocessed PNGs), which the rotation
    would turn into depths of kilometres.
    """
    measured = raw[raw > 0]
    if measured.size < SUNRGBD_LOW_BITS_MIN_PIXELS:
        return None
    fraction = float(np.count_nonzero(measured & np.uint16(7))) / measured.size
    if fraction <= SUNRGBD_LOW_BITS_LIMIT:
        return None
    return (f"{fraction:.0%} of its measured pixels have a low bit set: it looks like plain millimetres (e.g. "
            "ZoeDepth's preprocessed PNGs), not SUN RGB-D's bit-rotated raw depth; use the depth/ PNGs of "
            "SUNRGBD.zip as distributed")


def _read_png16(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"depth map not found: {path}")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise UserError(f"cannot decode depth map {path}")
    if raw.ndim != 2 or raw.dtype != np.uint16:
        raise UserError(f"depth map {path} is {raw.dtype} {raw.shape}, expected single-channel uint16")
    return raw


def read_ibims_mat(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The fields of one iBims-1 ``.mat`` file (MATLAB v5, as distributed in ``ibims1_core_mat``).

    Returns:
        ``rgb`` uint8 (H, W, 3) RGB, ``depth`` float32 (H, W) metres, ``mask_invalid`` and
        ``mask_transp`` bool (True = keep), ``calib`` float64 (3, 3).

    Raises:
        FileNotFoundError: the file is missing.
        UserError: not a MATLAB v5 file with the iBims-1 struct ``data``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"iBims-1 file not found: {path}")
    try:
        mat = scipy.io.loadmat(str(path))
    except NotImplementedError:  # scipy's answer to a v7.3 (HDF5) file
        raise UserError(f"{path} is a MATLAB v7.3 file; iBims-1 distributes v5 files (ibims1_core_mat.zip)") from None
    except Exception as err:  # truncated or not a .mat at all
        raise UserError(f"cannot read {path} as a MATLAB file: {err}") from None
    if "data" not in mat:
        raise UserError(f"{path} has no struct 'data' (found {sorted(k for k in mat if not k.startswith('__'))})")
    data = mat["data"]
    missing = [f for f in _IBIMS_FIELDS if data.dtype.names is None or f not in data.dtype.names]
    if missing:
        raise UserError(f"{path}: struct 'data' lacks {', '.join(missing)}")
    try:
        field = {name: np.asarray(data[name][0, 0]) for name in _IBIMS_FIELDS}
    except (IndexError, TypeError, ValueError) as err:
        raise UserError(f"{path}: struct 'data' is not a 1x1 struct ({err})") from None
    rgb, depth, calib = field["rgb"], field["depth"], field["calib"]
    for name in _IBIMS_FIELDS:
        if field[name].dtype.kind not in "biuf":
            raise UserError(f"{path}: field {name} holds {field[name].dtype}, expected numbers")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or depth.shape != rgb.shape[:2]:
        raise UserError(f"{path}: rgb {rgb.shape} and depth {depth.shape} do not match")
    for name in ("mask_invalid", "mask_transp"):
        if field[name].shape != depth.shape:
            raise UserError(f"{path}: {name} is {field[name].shape}, depth {depth.shape}: they must match")
    if calib.shape != (3, 3):
        raise UserError(f"{path}: calib is {calib.shape}, expected the 3x3 intrinsics")
    return {"rgb": _ibims_rgb(rgb, path), "depth": depth.astype(np.float32),
            "mask_invalid": field["mask_invalid"].astype(bool), "mask_transp": field["mask_transp"].astype(bool),
            "calib": calib.astype(np.float64)}


def _ibims_rgb(rgb: np.ndarray, path: Path) -> np.ndarray:
    """uint8 RGB from the ``rgb`` field: uint8 as distributed; floats in [0, 1] (a re-saved file) are
    scaled to 0..255 rather than cast to black; other ranges are refused."""
    if rgb.dtype == np.uint8:
        return np.ascontiguousarray(rgb)
    values = rgb.astype(np.float64)
    if not np.isfinite(values).all():
        raise UserError(f"{path}: rgb holds non-finite values")
    lo, hi = float(values.min()), float(values.max())
    if rgb.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        logger.warning("%s: rgb is %s in [0, 1]; scaled to 0..255", path, rgb.dtype)
        return np.ascontiguousarray(np.round(values * 255.0).astype(np.uint8))
    if lo >= 0.0 and hi <= 255.0:
        return np.ascontiguousarray(np.round(values).astype(np.uint8))
    raise UserError(f"{path}: rgb is {rgb.dtype} in [{lo:g}, {hi:g}], expected uint8 (0..255) or floats in [0, 1]")


# --------------------------------------------------------------------------- datasets


class ZeroShotDataset(torch.utils.data.Dataset):
    """Base of the zero-shot datasets: the entries, text features, samples and their checks.

    Args:
        root: the dataset's folder (``<data_root>/<facts.folder>``).
        text_feat_dir: text feature root (features at ``<root>/<name>/<text_split>/<key>.pt``).
        split_file: the list of the split (default: the dataset's, inside ``root``).
        feature_dim: the feature width the model takes (``WorDepthConfig.text_dim``; None: any).
        strict: raise :class:`ZeroShotDataError` on the first missing file; False keeps the
            readable entries and records the rest in :meth:`problems`.
        require_features: an entry needs its text feature (False: only its data files, for
            writing the features).
    """

    facts: ZeroShotFacts

    def __init__(self, root: str | os.PathLike, text_feat_dir: str | os.PathLike,
                 split_file: str | os.PathLike | None = None, feature_dim: int | None = None, strict: bool = True,
                 require_features: bool = True):
        self.root = Path(root)
        self.split_file = Path(split_file) if split_file is not None else None
        self.text_features = TextFeatureStore(text_feat_dir, self.facts.name, self.facts.text_split, feature_dim)
        listing = self._list()
        problems = list(listing.problems)
        entries = []
        for entry in listing.entries:
            missing = [f for f in entry.files if not f.is_file()]
            if missing:
                problems.append((entry.line_no, str(missing[0]), "file not found"))
            elif require_features and not self._has_feature(entry.key):
                problems.append((entry.line_no, str(self.text_features.path(entry.key)),
                                 f"text feature not found ({_MAKE_FEATURES})"))
            else:
                entries.append(entry)
        if not listing.entries and not listing.problems:
            problems.append((0, str(self.root), "no samples found"))
        self._problems = problems
        if strict and problems:
            line_no, path, message = problems[0]
            more = f" (and {len(problems) - 1} more problem(s); run --check_data)" if len(problems) > 1 else ""
            raise ZeroShotDataError(f"{self.facts.name} is missing or incomplete: {message}: {path}{more}")
        self.entries = entries

    # ---- to implement
    def _list(self) -> _Listing:
        """The entries of the split and the problems of the list itself."""
        raise NotImplementedError

    def load_arrays(self, entry: ZeroShotEntry) -> dict:
        """``image`` uint8 (H, W, 3) RGB, ``depth`` float32 (H, W) metres, ``valid_mask`` bool
        (H, W), ``focal`` float."""
        raise NotImplementedError

    # ---- shared
    def _has_feature(self, key: str) -> bool:
        store = self.text_features
        try:
            if store.packed and normalize_key(key) in store._index:
                return True
        except (OSError, ValueError):
            pass
        return store.path(key).is_file()

    def problems(self) -> list[tuple[int, str, str]]:
        """(line_no, path, message) for every entry or list problem found at construction."""
        return list(self._problems)

    def image_items(self, export_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
        """(key, image file) pairs for the caption pipeline (`wordepth.text.pipeline.prepare_split`).

        Args:
            export_dir: where datasets that keep their images inside another file (iBims-1) write
                them as PNG (lossless), named ``<key>.png``.
        """
        return [(entry.key, entry.files[0]) for entry in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        try:
            return self._sample(entry)
        except ZeroShotSampleError:
            raise
        except (OSError, ValueError, IndexError, KeyError, TypeError, AttributeError, RuntimeError) as err:
            # One class and one line, naming the file: a DataLoader worker re-raises it as it is.
            message = " ".join(str(err).split()) or type(err).__name__
            if not any(str(f) in message for f in entry.files) and str(self.text_features.root) not in message:
                message = f"{entry.files[0]}: {message}"
            if not isinstance(err, (OSError, ValueError)):
                message = f"{message} ({type(err).__name__})"
            raise ZeroShotSampleError(message) from None

    def _sample(self, entry: ZeroShotEntry) -> dict:
        arrays = self.load_arrays(entry)
        image, depth = arrays["image"], arrays["depth"]
        if depth.shape != image.shape[:2] or arrays["valid_mask"].shape != depth.shape:
            raise UserError(f"{entry.files[0]}: image {image.shape[:2]}, depth {depth.shape} and mask "
                             f"{arrays['valid_mask'].shape} differ in size")
        return {
            "image": image_to_tensor(image),
            "depth": torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)[None]),
            "valid_mask": torch.from_numpy(np.ascontiguousarray(arrays["valid_mask"], dtype=bool)[None]),
            "text_feature": self.text_features.get(entry.key),
            "has_valid_depth": True,
            "path": entry.key,
            "focal": float(arrays["focal"]),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, len={len(self)})"


class SUNRGBDDataset(ZeroShotDataset):
    """SUN RGB-D test split (5050 images): JPEG image, bit-rotated 16-bit PNG depth in millimetres.

    The split file has one ``rgb depth [focal]`` line per sample, relative to ``root``; without a
    focal the sample's is NaN (the network does not use it).
    """

    facts = zeroshot_facts("sunrgbd")

    def _list(self) -> _Listing:
        split = self.split_file or self.root / self.facts.split_file
        if not split.is_file():
            return _Listing([], [(0, str(split), "split file not found")])
        if (problem := _not_utf8(split)) is not None:
            return _Listing([], [(0, str(split), problem)])
        entries, problems = [], []
        with open(split, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) not in (2, 3):
                    problems.append((line_no, str(split), f"expected 'rgb depth [focal]', found {len(fields)} fields"))
                    continue
                try:
                    focal = float(fields[2]) if len(fields) == 3 else math.nan
                except ValueError:
                    problems.append((line_no, str(split), f"focal {fields[2]!r} is not a number"))
                    continue
                try:
                    files = tuple(join_entry(self.root, check_entry(f)) for f in fields[:2])
                except (SplitFileError, PathEscapeError) as err:
                    problems.append((line_no, str(split), str(err)))
                    continue
                entries.append(ZeroShotEntry(fields[0].lstrip("/\\"), files, focal, line_no))
        return _Listing(entries, problems)

    def load_arrays(self, entry: ZeroShotEntry) -> dict:
        image = read_image(entry.files[0])
        raw = _read_png16(entry.files[1])
        problem = sunrgbd_format_problem(raw)
        if problem:
            raise UserError(f"depth map {entry.files[1]}: {problem}")
        depth = decode_sunrgbd_depth(raw)
        return {"image": image, "depth": depth, "valid_mask": np.ones(depth.shape, bool), "focal": entry.focal}


class IBimsDataset(ZeroShotDataset):
    """iBims-1 (100 images, 480x640): ``imagelist.txt`` and ``ibims1_core_mat/<name>.mat``.

    ``imagelist.txt`` is looked for in ``root`` and then in ``root/ibims1_core_mat``. The valid
    mask is ``mask_invalid & mask_transp`` (both 1 where a pixel is kept), the focal ``calib[0, 0]``.
    """

    facts = zeroshot_facts("ibims")
    MAT_FOLDER = "ibims1_core_mat"

    def _list(self) -> _Listing:
        candidates = [self.split_file] if self.split_file else [self.root / self.facts.split_file,
                                                                 self.root / self.MAT_FOLDER / self.facts.split_file]
        split = next((c for c in candidates if c.is_file()), None)
        if split is None:
            where = "" if self.split_file else f" (looked here and in {self.MAT_FOLDER}/)"
            return _Listing([], [(0, str(candidates[0]), f"image list not found{where}")])
        if (problem := _not_utf8(split)) is not None:
            return _Listing([], [(0, str(split), problem)])
        names = [(i, line.strip()) for i, line in enumerate(split.read_text(encoding="utf-8").splitlines(), 1)]
        entries, problems = [], []
        for i, name in names:
            if not name:
                continue
            try:
                mat = contained(self.root / self.MAT_FOLDER, f"{name}.mat", what="image name")
            except PathEscapeError as err:
                problems.append((i, str(split), str(err)))
                continue
            entries.append(ZeroShotEntry(name, (mat,), math.nan, i))
        return _Listing(entries, problems)

    def load_arrays(self, entry: ZeroShotEntry) -> dict:
        data = read_ibims_mat(entry.files[0])
        return {"image": data["rgb"], "depth": data["depth"], "valid_mask": data["mask_invalid"] & data["mask_transp"],
                "focal": float(data["calib"][0, 0])}

    def image_items(self, export_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
        """The RGB of each ``.mat`` written to ``export_dir/<name>.png`` (the captioner reads files)."""
        if export_dir is None:
            raise UserError("iBims-1 keeps its images inside the .mat files: give a folder to export them to")
        items = []
        for entry in self.entries:
            path = contained(export_dir, f"{entry.key}.png", what="image name")
            write_array(path, read_ibims_mat(entry.files[0])["rgb"])
            items.append((entry.key, path))
        return items


class DIODEDataset(ZeroShotDataset):
    """DIODE validation images of one kind (``indoors`` or ``outdoor``), 768x1024.

    Found by globbing ``<root>/val/<kind>/scene_*/scan_*/*.png`` (or ``<root>/<kind>/...``), sorted;
    each needs ``<name>_depth.npy`` ((H, W, 1) float32 metres) and ``<name>_depth_mask.npy``. Keys
    are relative to the kind's folder (``scene_00019/scan_00183/<name>``), as
    ``wordepth-text prepare --images <root>/val/<kind>`` names them.
    """

    KIND = "indoors"

    def kind_dir(self) -> Path:
        """The folder of this kind's scenes."""
        for candidate in (self.root / "val" / self.KIND, self.root / self.KIND):
            if candidate.is_dir():
                return candidate
        return self.root / "val" / self.KIND

    def _list(self) -> _Listing:
        folder = self.kind_dir()
        if not folder.is_dir():
            return _Listing([], [(0, str(folder), "DIODE folder not found (extract val.tar.gz into it)")])
        entries = []
        for png in sorted(p for p in folder.glob("scene_*/scan_*/*.png") if is_image_file(p, folder)):
            stem = png.with_suffix("")
            key = stem.relative_to(folder).as_posix()
            entries.append(ZeroShotEntry(key, (png, Path(f"{stem}_depth.npy"), Path(f"{stem}_depth_mask.npy"))))
        return _Listing(entries, [])

    def load_arrays(self, entry: ZeroShotEntry) -> dict:
        image = read_image(entry.files[0])
        depth = read_npy(entry.files[1], "DIODE depth")
        if depth.ndim == 3 and depth.shape[2] == 1:
            depth = depth[:, :, 0]
        mask = read_npy(entry.files[2], "DIODE depth mask")
        if depth.ndim != 2 or mask.shape != depth.shape:
            raise UserError(f"{entry.files[1]} and {entry.files[2].name}: depth {depth.shape} and mask {mask.shape}, "
                             "expected (H, W, 1) and (H, W)")
        measured = depth[(depth > 0) & np.isfinite(depth)]
        if measured.size and float(np.median(measured)) > DIODE_MILLIMETRE_MEDIAN:
            raise UserError(f"DIODE depth {entry.files[1]}: median {float(np.median(measured)):g}, beyond any "
                             f"DIODE scene ({DIODE_MILLIMETRE_MEDIAN:g} m): it looks like millimetres; DIODE "
                             "stores metres (divide by 1000, or use the files of val.tar.gz as distributed)")
        return {"image": image, "depth": depth.astype(np.float32), "valid_mask": mask.astype(bool),
                "focal": entry.focal}


class DIODEIndoorDataset(DIODEDataset):
    facts = zeroshot_facts("diode_indoor")
    KIND = "indoors"


class DIODEOutdoorDataset(DIODEDataset):
    facts = zeroshot_facts("diode_outdoor")
    KIND = "outdoor"


_CLASSES = {"sunrgbd": SUNRGBDDataset, "ibims": IBimsDataset, "diode_indoor": DIODEIndoorDataset,
            "diode_outdoor": DIODEOutdoorDataset}


def build_zeroshot_dataset(name: str, data_root: str | os.PathLike, text_feat_dir: str | os.PathLike,
                           split_file: str | os.PathLike | None = None, feature_dim: int | None = None,
                           strict: bool = True, require_features: bool = True) -> ZeroShotDataset:
    """The dataset ``name`` under ``data_root/<its folder>`` (see :class:`ZeroShotDataset`).

    Raises:
        UserError: an unknown name.
        ZeroShotDataError: (``strict``) the dataset is missing or incomplete.
    """
    facts = zeroshot_facts(name)
    return _CLASSES[name](Path(data_root) / facts.folder, text_feat_dir, split_file, feature_dim, strict,
                          require_features)

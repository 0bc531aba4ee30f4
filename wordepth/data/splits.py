"""Split files in the original release's format, and the dataset base that reads them.

One sample per line, whitespace separated: ``rgb_path depth_path focal``.
NYU train lines start with ``/`` (``/kitchen_0028b/rgb_00045.jpg ...``), NYU
test lines do not; KITTI lines start with the date folder for the image and the
drive folder for the depth, and evaluation splits write ``None`` for images
without ground truth.
"""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.utils.data

from wordepth.data.depth_png import read_depth
from wordepth.data.facts import ROTATION_DEGREE, DatasetFacts
from wordepth.data.text_features import TextFeatureStore
from wordepth.data.transforms import AugmentParams, apply_geometric, draw_augment_params, read_image, sample_rng, to_tensors
from wordepth.errors import UserError
from wordepth.outputs import PathEscapeError, contained

__all__ = ["SplitEntry", "SplitFileError", "SplitDataset", "read_split", "split_file_lines", "parse_split_line",
           "check_entry", "join_entry"]

logger = logging.getLogger(__name__)


class SplitFileError(UserError):
    """A split file line that cannot be parsed."""


@dataclass(frozen=True)
class SplitEntry:
    """One line of a split file.

    Attributes:
        rgb: the image entry exactly as written (e.g. ``/kitchen_0028b/rgb_00045.jpg``).
        depth: the depth entry as written, or None where the file says ``None``.
        focal: focal length in pixels.
        line_no: 1-based line number in the split file.
    """

    rgb: str
    depth: str | None
    focal: float
    line_no: int


def read_split(path: str | os.PathLike) -> list[SplitEntry]:
    """Parses a split file.

    Blank lines are skipped and Windows line endings are tolerated.

    Args:
        path: the split file.

    Returns:
        The entries in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        SplitFileError: a line does not have three fields or its focal is not a number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    entries: list[SplitEntry] = []
    for line_no, line in enumerate(split_file_lines(path), start=1):
        try:
            entry = parse_split_line(line, line_no)
        except SplitFileError as err:
            raise SplitFileError(f"{path}, line {line_no}: {err}") from None
        if entry is not None:
            entries.append(entry)
    return entries


def split_file_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a split file: UTF-8 (a byte-order mark, as some Windows editors write, is dropped),
    any line endings.

    Raises:
        SplitFileError: the file is not UTF-8 text (the message names the line).
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        offset = err.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line_no = data[:offset].count(b"\n") + 1
        raise SplitFileError(f"{path}, line {line_no}: not UTF-8 text (byte 0x{data[offset]:02x}); "
                             "save the split file as UTF-8") from None
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def parse_split_line(line: str, line_no: int) -> SplitEntry | None:
    """One split-file line -> entry; None for a blank line.

    Raises:
        SplitFileError: not three fields, or a focal that is not a number (message without the
            file name and line number, which the caller adds).
    """
    fields = line.split()
    if not fields:
        return None
    if len(fields) != 3:
        raise SplitFileError(f"expected 3 fields 'rgb depth focal', found {len(fields)}: {line.strip()!r}")
    rgb, depth, focal_text = fields
    try:
        focal = float(focal_text)
    except ValueError:
        raise SplitFileError(f"focal {focal_text!r} is not a number") from None
    for entry in (rgb, depth):
        if entry != "None":
            check_entry(entry)
    return SplitEntry(rgb, None if depth == "None" else depth, focal, line_no)


def check_entry(entry: str) -> str:
    """``entry`` (a path from a split file or a caption key) if it stays under the root it is joined to.

    A leading ``/`` is allowed (NYU's training lines have one; it is dropped when joined); a ``..``
    that climbs above the root or a NUL byte is refused: its outputs (captions, features, pictures)
    would be written outside their folders.

    Raises:
        SplitFileError: naming the entry (the caller adds the file and line).
    """
    try:
        contained(".", entry.replace("\\", "/").lstrip("/"), what="entry")
    except PathEscapeError:
        raise SplitFileError(f"entry {entry!r} leaves the folder it is relative to ('..' or a NUL byte): its "
                             "files would be read and written outside their roots; refused") from None
    return entry


def join_entry(root: str | os.PathLike, entry: str) -> Path:
    """Joins a data root and a split entry, with or without a leading slash.

    The original concatenates ``data_path + entry`` (NYU train entries start with
    ``/``) or strips the first character; both amount to ``root / entry.lstrip('/')``.

    Raises:
        PathEscapeError: the entry climbs above ``root`` (``../..``).
    """
    return contained(root, entry.lstrip("/\\"), what="split entry")


class SplitDataset(torch.utils.data.Dataset):
    """Base of the datasets: a split file, a data/ground-truth root and text features.

    A dataset is a subclass that declares its :attr:`facts` and is registered by name
    (:func:`wordepth.data.registry.register_dataset`). The default :meth:`load` reads the image and
    its depth map (:meth:`read_depth`: ``.npy`` metres, or a PNG in the facts' units) and, in
    training, draws the original's augmentation (rotation when ``do_random_rotate``, random crop to
    the input size, flip, colour); NYU and KITTI override it with their crops. Every sample is a dict with the
    keys ``image`` (3, H, W) float32, ``depth`` (1, H, W) float32 metres,
    ``text_feature`` (D,) float32, ``path`` (the rgb entry), ``focal`` (float) and
    ``has_valid_depth`` (bool).

    In ``eval`` mode an entry whose ground-truth file is absent is dropped at
    construction with a warning and counted in :attr:`skipped`; an entry written as
    ``None`` is kept with ``has_valid_depth`` False.

    Args:
        split_file: the split file.
        data_path: root the rgb entries are relative to.
        gt_path: root the depth entries are relative to.
        text_feat_dir: text feature root (``text_feat``).
        mode: ``train`` or ``eval``.
        input_height: network input height (training crop); default the dataset's.
        input_width: network input width; default the dataset's.
        do_random_rotate: rotate in training; default :attr:`ROTATE_BY_DEFAULT`.
        degree: maximum rotation in degrees.
        feature_dim: the text feature width the model takes (``WorDepthConfig.text_dim``); a feature of
            another width is a one-line error naming both. None: any width.
        seed: augmentation seed; None draws from Python's global ``random``.
        text_split: text feature split folder; default ``train``/``test`` by mode.
    """

    MODES = ("train", "eval")
    facts: DatasetFacts  # each dataset's facts; ``facts.name`` is its text feature folder
    ROTATE_BY_DEFAULT = False  # whether training rotates when ``do_random_rotate`` is not given

    def __init__(
        self,
        split_file: str | os.PathLike,
        data_path: str | os.PathLike,
        gt_path: str | os.PathLike,
        text_feat_dir: str | os.PathLike,
        mode: str = "train",
        input_height: int | None = None,
        input_width: int | None = None,
        do_random_rotate: bool | None = None,
        degree: float = ROTATION_DEGREE,
        feature_dim: int | None = None,
        seed: int | None = None,
        text_split: str | None = None,
    ):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.dataset = self.facts.name
        self.mode = mode
        self.input_hw = (self.facts.train_hw[0] if input_height is None else input_height,
                         self.facts.train_hw[1] if input_width is None else input_width)
        self.do_random_rotate = self.ROTATE_BY_DEFAULT if do_random_rotate is None else do_random_rotate
        self.degree = degree
        self.data_path = Path(data_path)
        self.gt_path = Path(gt_path)
        self.seed = seed
        self.epoch = 0
        self.split_file = Path(split_file)
        entries = read_split(split_file)
        self.skipped = 0
        self.skipped_files: list[Path] = []
        if mode == "train":
            for e in entries:
                if e.depth is None:
                    raise SplitFileError(f"{split_file}, line {e.line_no}: a training entry needs a depth map")
        else:
            kept = []
            for e in entries:
                if e.depth is not None:
                    gt_file = join_entry(self.gt_path, e.depth)
                    if not gt_file.is_file():
                        logger.warning("missing ground truth %s: skipping %s", gt_file, e.rgb)
                        self.skipped += 1
                        self.skipped_files.append(gt_file)
                        continue
                kept.append(e)
            entries = kept
            if self.skipped:
                logger.warning("%s: skipped %d entries without ground truth", split_file, self.skipped)
        self.entries = entries
        self.text_features = TextFeatureStore(
            text_feat_dir, self.dataset, text_split or ("train" if mode == "train" else "test"), feature_dim
        )
        if entries:
            self.text_features.check_width(entries[0].rgb)  # features of another CLIP model: one line, now

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch for seeded augmentation (call before each epoch)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        return self.get_sample(index)

    def get_sample(self, index: int, rng: random.Random | None = None) -> dict:
        """Sample ``index``; ``rng`` overrides the per-sample random source (train mode)."""
        entry = self.entries[index]
        if self.mode == "train" and rng is None:
            rng = sample_rng(self.seed, self.epoch, index)
        sample = self.load(entry, rng)
        sample["text_feature"] = self.text_features.get(entry.rgb)
        sample["path"] = entry.rgb
        sample["focal"] = float(entry.focal)
        return sample

    def load(self, entry: SplitEntry, rng: random.Random | None) -> dict:
        """Loads and transforms one entry: returns ``image``, ``depth``, ``has_valid_depth``.

        Training: rotation (``do_random_rotate``), random crop to the input size, flip and colour
        augmentation, drawn from ``rng``; evaluation: the full image and ground truth, unaugmented.
        """
        image, depth, has_valid_depth = self.read_pair(entry.rgb, entry.depth)
        sample = {"image": image, "depth": depth}
        if self.mode == "train":
            params = self.draw_augment_params(sample, rng)
            sample = to_tensors(apply_geometric(sample, params, self.input_hw), params)
        else:
            sample = to_tensors(sample)
        sample["has_valid_depth"] = has_valid_depth
        return sample

    def read_depth(self, path: Path) -> np.ndarray:
        """One depth file as float32 (H, W) metres, 0 where unmeasured: ``.npy`` metres, or a 16-bit PNG in
        units of ``1 / facts.depth_png_scale`` metres. Override it for another format."""
        return read_depth(path, self.facts.depth_png_scale)

    def draw_augment_params(self, sample: dict, rng: random.Random) -> AugmentParams:
        """The training augmentation's random draws for a numpy ``sample`` (after any dataset crop): the
        input size, the rotation (when ``do_random_rotate``) and the dataset's brightness range."""
        return draw_augment_params(rng, sample["image"].shape[:2], self.input_hw,
                                   self.degree if self.do_random_rotate else None, self.facts.brightness_range)

    def read_pair(self, rgb: str, depth: str | None) -> tuple[np.ndarray, np.ndarray, bool]:
        """(image (H, W, 3) uint8 RGB, depth (H, W) float32 metres, has_valid_depth) of one entry's files;
        a ``None`` depth entry gives zeros.

        Raises:
            UserError: the depth map's size differs from the image's.
        """
        image = read_image(join_entry(self.data_path, rgb))
        if depth is None:
            return image, np.zeros(image.shape[:2], dtype=np.float32), False
        depth_file = join_entry(self.gt_path, depth)
        depth_map = self.read_depth(depth_file)
        if depth_map.shape != image.shape[:2]:
            raise UserError(f"depth map {depth_file} is {depth_map.shape}, its image {image.shape[:2]}")
        return image, depth_map, True

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(split_file={str(self.split_file)!r}, mode={self.mode!r}, "
            f"len={len(self)}, skipped={self.skipped})"
        )

"""A validation set held out of the training split by scene, for choosing checkpoints without the test set.

Images of one scene look alike, so a validation set that shares scenes with the training set
measures memory, not generalisation. The split is therefore made over scenes: NYU's scene folders
(``/bedroom_0001/rgb_00012.jpg`` -> ``bedroom_0001``) and KITTI's drives
(``2011_09_26/2011_09_26_drive_0002_sync/...`` -> ``2011_09_26_drive_0002_sync``); no scene is on
both sides.

``--val_split`` takes either a fraction (``0.1``: about that share of the training images, whole
scenes, chosen by a hash of the scene name: the same scenes for every seed and machine) or a split
file in the original format listing the validation images (its scenes are then removed from the
training side). :func:`holdout` returns both sides; :func:`write_holdout` writes them as split files.
"""
from __future__ import annotations

import hashlib
import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wordepth.data.splits import SplitEntry, join_entry, read_split
from wordepth.errors import UserError
from wordepth.outputs import write_text

__all__ = ["Holdout", "HoldoutError", "check_disjoint", "check_val_file", "holdout", "parse_val_split", "scene_of",
           "split_by_scene", "split_line", "write_holdout"]

KITTI_DRIVE = re.compile(r"^\d{4}_\d{2}_\d{2}_drive_\d{4}_sync$")


class HoldoutError(UserError):
    """A validation split that cannot be made (a fraction out of range, too few scenes, an entry without a scene)."""


def scene_of(rgb: str) -> str:
    """The scene of a split entry's image path: a KITTI drive folder where the path has one, else the
    first folder (NYU's scene folder).

    Raises:
        HoldoutError: the entry has no folder (nothing tells its scene).
    """
    parts = [p for p in re.split(r"[/\\]", rgb) if p]
    for part in parts[:-1]:
        if KITTI_DRIVE.match(part):
            return part
    if len(parts) < 2:
        raise HoldoutError(f"cannot tell the scene of {rgb!r}: the entry has no folder; give --val_split "
                           "a split file instead of a fraction")
    return parts[0]


def _by_scene(entries: Sequence[SplitEntry]) -> OrderedDict[str, list[SplitEntry]]:
    groups: OrderedDict[str, list[SplitEntry]] = OrderedDict()
    for e in entries:
        groups.setdefault(scene_of(e.rgb), []).append(e)
    return groups


def _scene_key(scene: str) -> bytes:
    return hashlib.sha256(scene.encode("utf-8")).digest()


def split_by_scene(entries: Sequence[SplitEntry], fraction: float) -> tuple[list[SplitEntry], list[SplitEntry]]:
    """(train, val): whole scenes, taken in the order of a hash of their names, go to the validation
    side until it holds ``fraction`` of the images (the scene that brings it closest is the last).

    Both sides keep the split file's order. At least one scene goes to each side.

    Raises:
        HoldoutError: ``fraction`` not in (0, 1), or fewer than two scenes.
    """
    if not 0.0 < fraction < 1.0:
        raise HoldoutError(f"--val_split {fraction:g}: a fraction must be between 0 and 1 (exclusive)")
    groups = _by_scene(entries)
    if len(groups) < 2:
        raise HoldoutError(f"the training split has {len(groups)} scene(s); a scene-level validation split "
                           "needs at least two")
    target = fraction * len(entries)
    val_scenes: set[str] = set()
    count = 0
    for scene in sorted(groups, key=_scene_key)[:-1]:  # the last scene always stays for training
        size = len(groups[scene])
        if val_scenes and abs(count + size - target) >= abs(count - target):
            break
        val_scenes.add(scene)
        count += size
        if count >= target:
            break
    train = [e for e in entries if scene_of(e.rgb) not in val_scenes]
    val = [e for e in entries if scene_of(e.rgb) in val_scenes]
    return train, val


def check_disjoint(train: Sequence[SplitEntry], val: Sequence[SplitEntry]) -> None:
    """Raises HoldoutError naming the scenes that are on both sides."""
    both = sorted({scene_of(e.rgb) for e in train} & {scene_of(e.rgb) for e in val})
    if both:
        shown = ", ".join(both[:5]) + (f" and {len(both) - 5} more" if len(both) > 5 else "")
        raise HoldoutError(f"{len(both)} scene(s) in both the training and the validation split: {shown}")


def parse_val_split(value: str | float | os.PathLike) -> float | Path:
    """``--val_split``: a fraction (a number) or a split file (an existing path).

    Raises:
        HoldoutError: neither a number in (0, 1) nor an existing file.
    """
    if isinstance(value, float):
        fraction = value
    else:
        text = os.fspath(value)
        try:
            fraction = float(text)
        except ValueError:
            path = Path(text)
            if not path.is_file():
                raise HoldoutError(f"--val_split {text}: neither a fraction nor an existing split file") from None
            return path
    if not 0.0 < fraction < 1.0:
        raise HoldoutError(f"--val_split {fraction:g}: a fraction must be between 0 and 1 (exclusive)")
    return fraction


@dataclass
class Holdout:
    """The two sides of a scene-level hold-out and where they came from."""

    train: list[SplitEntry]
    val: list[SplitEntry]
    source: str  # "fraction 0.1 of <split>" or "<val split file>"

    def summary(self) -> str:
        n_train, n_val = len({scene_of(e.rgb) for e in self.train}), len({scene_of(e.rgb) for e in self.val})
        return (f"validation: {len(self.val)} images of {n_val} scene(s), training: {len(self.train)} images of "
                f"{n_train} scene(s) ({self.source}); no scene on both sides")


def _shown(names: Sequence[str], n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _key(rgb: str) -> str:
    return rgb.replace("\\", "/").lstrip("/")


def check_val_file(spec: Path, val: Sequence[SplitEntry], train_entries: Sequence[SplitEntry],
                   train_split: str | os.PathLike, test_split: str | os.PathLike | None = None,
                   data_path: str | os.PathLike | None = None, gt_path: str | os.PathLike | None = None) -> None:
    """A validation split file, before the first step: every scene it lists is a scene of the training
    split, none of its scenes or images is in the test split, and its images (and depth maps) exist.

    Raises:
        HoldoutError: one line naming the file, the first offending entries and the fix.
    """
    train_scenes = {scene_of(e.rgb) for e in train_entries}
    val_scenes = {scene_of(e.rgb) for e in val}
    outside = val_scenes - train_scenes
    if outside:
        raise HoldoutError(f"--val_split {spec}: {len(outside)} scene(s) are not in the training split "
                           f"{train_split} ({_shown(outside)}): the validation split must hold out scenes of the "
                           "training split; list only those")
    if test_split is not None and Path(test_split).is_file():
        test = read_split(test_split)
        shared = val_scenes & {scene_of(e.rgb) for e in test if _has_scene(e.rgb)}
        images = {_key(e.rgb) for e in val} & {_key(e.rgb) for e in test}
        if shared or images:
            what = (f"{len(shared)} scene(s) ({_shown(shared)})" if shared
                    else f"{len(images)} image(s) ({_shown(images)})")
            raise HoldoutError(f"--val_split {spec}: {what} also in the test split {test_split}: choosing a "
                               "checkpoint on test images makes the test numbers optimistic; remove them")
    for root, flag, paths in ((data_path, "--data_path", [e.rgb for e in val]),
                              (gt_path, "--gt_path", [e.depth for e in val if e.depth is not None])):
        if root is None:
            continue
        missing = [p for p in paths if not join_entry(root, p).is_file()]
        if missing:
            raise HoldoutError(f"--val_split {spec}: {len(missing)} of {len(paths)} listed files are not under "
                               f"{flag} {root} (e.g. {missing[0]}): fix the list or {flag}")


def _has_scene(rgb: str) -> bool:
    try:
        scene_of(rgb)
    except HoldoutError:
        return False
    return True


def holdout(train_split: str | os.PathLike, val_split: str | float | os.PathLike,
            test_split: str | os.PathLike | None = None, data_path: str | os.PathLike | None = None,
            gt_path: str | os.PathLike | None = None) -> Holdout:
    """The training split without the validation scenes, and the validation entries.

    Args:
        train_split: the training split file.
        val_split: a fraction of the training images, or a validation split file (the original format;
            entries of the training split in its scenes are removed from the training side).
        test_split, data_path, gt_path: with a validation file, checked by :func:`check_val_file`.

    Raises:
        HoldoutError: as :func:`split_by_scene` / :func:`parse_val_split` / :func:`check_val_file`, or
            a validation file that would leave no training image.
    """
    spec = parse_val_split(val_split)
    entries = read_split(train_split)
    if isinstance(spec, float):
        train, val = split_by_scene(entries, spec)
        source = f"fraction {spec:g} of {train_split}, scenes chosen by name hash"
    else:
        val = read_split(spec)
        if not val:
            raise HoldoutError(f"--val_split {spec}: the split file has no entries")
        check_val_file(spec, val, entries, train_split, test_split, data_path, gt_path)
        val_scenes = {scene_of(e.rgb) for e in val}
        train = [e for e in entries if scene_of(e.rgb) not in val_scenes]
        if not train:
            raise HoldoutError(f"--val_split {spec}: its scenes cover the whole training split {train_split}; "
                               "hold out fewer scenes")
        source = str(spec)
    check_disjoint(train, val)
    return Holdout(train, val, source)


def split_line(entry: SplitEntry) -> str:
    """An entry as a line of the original split format."""
    return f"{entry.rgb} {entry.depth if entry.depth is not None else 'None'} {entry.focal!r}"


def write_holdout(split: Holdout, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``split_train.txt`` and ``split_val.txt`` into ``folder`` (atomically); returns their paths."""
    folder = Path(folder)
    paths = folder / "split_train.txt", folder / "split_val.txt"
    for path, entries in zip(paths, (split.train, split.val)):
        write_text(path, "".join(split_line(e) + "\n" for e in entries))
    return paths

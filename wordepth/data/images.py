"""Finding the images a command works on: files, folders (searched recursively) or a split file.

Used by prediction (``wordepth.inference.files``) and the text pipeline (``wordepth.text``), so both
find the same images in a folder, in the same order.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from wordepth.data.splits import join_entry, read_split
from wordepth.data.text_features import normalize_key
from wordepth.errors import UserError
from wordepth.outputs import is_temporary

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """An image file under ``root`` by its extension, not a temporary file of an output being written
    (:func:`wordepth.outputs.is_temporary`): the one rule of every listing of a folder's images."""
    path = Path(path)
    return (path.suffix.lower() in IMAGE_EXTENSIONS and not is_temporary(path.relative_to(root))
            and path.is_file())


def list_images(folder: str | os.PathLike) -> list[str]:
    """Image files under a folder and its subfolders (:func:`is_image_file`), as sorted POSIX paths relative to it."""
    root = Path(folder)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if is_image_file(p, root))


def _from_sources(sources: Sequence[str | os.PathLike]) -> list[tuple[str, Path]]:
    items: list[tuple[str, Path]] = []
    for src in sources:
        path = Path(src)
        if path.is_dir():
            found = [(name, path / name) for name in list_images(path)]
            if not found:
                raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {path}")
            items += found
        elif path.is_file():
            items.append((path.name, path))
        else:
            raise FileNotFoundError(f"image not found: {path}")
    seen: dict[str, Path] = {}
    for name, path in items:
        key = normalize_key(name)
        if key in seen:
            raise UserError(f"{seen[key]} and {path} share the name {key} (their outputs would overwrite "
                             "each other); rename one")
        seen[key] = path
    return items


def _from_split(filenames_file: str | os.PathLike, data_path: str | os.PathLike) -> list[tuple[str, Path]]:
    rgbs = list(dict.fromkeys(entry.rgb for entry in read_split(filenames_file)))
    if not rgbs:
        raise UserError(f"split file {filenames_file} has no entries")
    items = [(rgb, join_entry(data_path, rgb)) for rgb in rgbs]
    missing = [str(f) for _, f in items if not f.is_file()]
    if missing:
        raise UserError(f"{len(missing)} of {len(items)} images of {filenames_file} not found, e.g. {missing[0]}")
    return items


def collect_images(
    images: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    filenames_file: str | os.PathLike | None = None,
    data_path: str | os.PathLike | None = None,
) -> list[tuple[str, Path]]:
    """The images to work on, as (name, file on disk) pairs.

    Give either `images` (image files and/or folders, in the order given) or `filenames_file`
    with `data_path` (the split's rgb entries, joined to `data_path` like the original data
    loader). A folder contributes every image under it, recursively and sorted, named by its
    path relative to the folder (``scene_1/rgb_0001.jpg``); a file is named by its file name; a
    split entry keeps its name. Outputs are written under the name without its extension.

    Raises:
        FileNotFoundError: an image, folder or the split file does not exist.
        UserError: neither or both sources, a folder without images, two images named alike,
            or images of the split file missing.
    """
    if (images is None) == (filenames_file is None):
        raise UserError("give either images (files or folders) or a split file (with its data path)")
    if images is not None:
        sources = [images] if isinstance(images, (str, os.PathLike)) else list(images)
        if not sources:
            raise UserError("no images given")
        return _from_sources(sources)
    if data_path is None:
        raise UserError("a split file needs the data path its image entries are relative to")
    return _from_split(filenames_file, data_path)

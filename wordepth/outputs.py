"""One home for writing a command's outputs, and for paths derived from data.

Every file a command writes goes through :func:`write_atomic` (or its text/JSON/bytes/array/torch
helpers; checkpoints included):

* the bytes go to a new temporary file in the output's folder (a unique hidden name that keeps the
  output's extension, created exclusively, so nothing planted there is followed), then
  ``os.replace`` puts it at the output name: readers see the old file or the whole new one, never a
  part; a symlink planted at the output name is replaced, not followed;
* on failure (disk full, no permission) the temporary file is removed and the previous file kept;
  the error is one line, :class:`OutputError`.

Before long work starts, a command checks its outputs with :func:`check_outputs`: each must be
writable, none may be one of the command's inputs, no two may be the same file. Paths built from a
split file or a caption key go through :func:`contained`, which refuses any that would leave its root.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wordepth.errors import UserError

PathLike = str | os.PathLike


class OutputError(UserError):
    """An output cannot be written where asked (not writable, an input, a folder, disk full)."""


class PathEscapeError(UserError):
    """A path derived from data (a split line, a caption key) would leave its root."""


# --------------------------------------------------------------------------- reasons
def write_reason(err: BaseException) -> str:
    """The OS's reason for a failed write, from the error or the errors it was raised from."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    text = str(err)
    if "No space left on device" in text:
        return "No space left on device"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return first[:200]


def disk_hint(folder: PathLike) -> str:
    """`` (disk full? N MiB free on FOLDER)`` when the folder's file system is nearly full, else ``""``."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" (disk full? {free / 2**20:.0f} MiB free on {folder})" if free < 100 * 2**20 else ""


# --------------------------------------------------------------------------- checks before work
def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name the same file (through links, ``..`` and case of the file system)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(os.path.abspath(a)) == Path(os.path.abspath(b))


def output_problem(path: PathLike, flag: str, folder: bool = False) -> str | None:
    """Why ``path`` (a file, or a ``folder``) cannot be written; None if it can."""
    target = Path(path)
    if str(path) == "":
        return f"{flag} is empty"
    if target.is_symlink() and folder:
        return f"{flag} {path} is a symbolic link; give the folder itself"
    if target.exists() or target.is_symlink():
        if folder and not target.is_dir():
            return f"{flag} {path} is a file, expected a folder"
        if not folder and target.is_dir() and not target.is_symlink():
            return f"{flag} {path} is a folder, expected a file name"
        check = target if folder else target.parent
        return None if os.access(check, os.W_OK | os.X_OK) else f"{flag} {path} is not writable"
    parent = target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{flag} {path} cannot be created: {parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{flag} {path} cannot be created: {parent} is not writable"
    return None


def check_outputs(outputs: Mapping[str, PathLike | None], inputs: Iterable[PathLike | None] = (),
                  folders: Iterable[str] = ()) -> None:
    """Refuse, before any work, outputs that cannot be written, that are an input, or that collide.

    Args:
        outputs: flag (as the user typed it, e.g. ``--metrics_json``) -> path; None entries are skipped.
        inputs: the command's input files; an output equal to one is refused.
        folders: the flags of ``outputs`` that name folders.

    Raises:
        OutputError: naming the flag and the path.
    """
    folders = set(folders)
    given = [(flag, path) for flag, path in outputs.items() if path is not None]
    inputs = [p for p in inputs if p is not None]
    for i, (flag, path) in enumerate(given):
        problem = output_problem(path, flag, folder=flag in folders)
        if problem:
            raise OutputError(problem)
        for src in inputs:
            if same_file(path, src):
                raise OutputError(f"{flag} {path} is one of the inputs; it would be overwritten; "
                                  "choose another name")
        for other_flag, other in given[:i]:
            if same_file(path, other):
                raise OutputError(f"{other_flag} and {flag} name the same file {path}; give each its own")


# --------------------------------------------------------------------------- writing
# the names of the temporary files and folders below (``.<stem>.<random>.part<suffix>``, ``.part-<random>``);
# a listing of a folder's images skips them (:func:`is_temporary`)
_TEMPORARY_FILE = re.compile(r"^\..+\.part(\.[^.]*)?$")
_TEMPORARY_FOLDER_PREFIX = ".part-"


def is_temporary(path: PathLike) -> bool:
    """Whether ``path`` is, or lies inside, a temporary file or folder of this module (an output being
    written, or left by a killed command): listings of images skip them."""
    parts = Path(path).parts
    return any(p.startswith(_TEMPORARY_FOLDER_PREFIX) for p in parts) or bool(parts and
                                                                          _TEMPORARY_FILE.match(parts[-1]))


def _output_mode() -> int:
    """The mode of every output: ``0666`` less the umask, as ``open`` would create it."""
    try:  # Linux: read without changing it (setting it, even briefly, would affect other threads)
        with open("/proc/self/status", encoding="ascii") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask


def _temporary_beside(path: Path) -> Path:
    """A new, empty file in ``path``'s folder with a unique hidden name ending in ``path``'s extension."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{path.suffix}", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_atomic(path: PathLike, write: Callable[[Path], Any], what: str = "", fsync: bool = False) -> Path:
    """``write(tmp)`` to a temporary file beside ``path``, then replace ``path`` with it.

    Args:
        path: the output's name.
        write: writes the whole output to the path it is given (a file of the same extension).
        what: a word for messages (``"the depth PNG"``); defaults to the path.
        fsync: flush the file to disk before the replace (checkpoints).

    Returns:
        ``path`` as a Path.

    Raises:
        OutputError: ``could not write PATH: <reason>; <the previous file is kept | nothing was written>``.
    """
    path = Path(path)
    existed = path.exists()
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir() and not path.is_symlink():
            raise IsADirectoryError(21, "Is a directory")
        tmp = _temporary_beside(path)
        write(tmp)
        # after the writer: mkstemp's 0600 would make outputs private, and a writer may create the file
        # anew (safetensors' save_file does, with 0600)
        os.chmod(tmp, _output_mode())
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except (OSError, RuntimeError) as err:  # torch.save and cv2 report a full disk as RuntimeError or False
        reason = write_reason(err)
        hint = "" if reason == "No space left on device" else disk_hint(path.parent if path.parent.exists() else ".")
        kept = "the previous file is kept" if existed else "nothing was written"
        raise OutputError(f"could not write {what or path}: {reason}{hint}; {kept}") from None
    finally:
        if tmp is not None:
            try:
                tmp.unlink()
            except OSError:
                pass
    return path


def write_atomic_files(folder: PathLike, write: Callable[[Path], Iterable[PathLike]], what: str = "") -> list[Path]:
    """Several files at once into ``folder``: ``write(tmp_folder)`` renders them into a hidden temporary
    folder inside ``folder`` and returns their paths; each is then renamed to ``folder/<its name>``.

    For writers that produce a set of files (the evaluation pictures of one image). A failure leaves
    none of them half-written, and the temporary folder is removed.

    Raises:
        OutputError: ``could not write WHAT: <reason>``.
    """
    folder = Path(folder)
    tmp_dir: Path | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=_TEMPORARY_FOLDER_PREFIX, dir=folder))
        produced = [Path(p) for p in write(tmp_dir)]
        done = []
        for src in produced:
            if src.parent != tmp_dir:
                raise OSError(5, f"{src} was not written into the temporary folder")
            os.replace(src, folder / src.name)
            done.append(folder / src.name)
        return done
    except (OSError, RuntimeError) as err:
        reason = write_reason(err)
        hint = "" if reason == "No space left on device" else disk_hint(folder if folder.exists() else ".")
        raise OutputError(f"could not write {what or folder}: {reason}{hint}") from None
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)


def write_bytes(path: PathLike, data: bytes, what: str = "") -> Path:
    """``data`` at ``path``, atomically."""
    return write_atomic(path, lambda p: p.write_bytes(data), what)


def write_text(path: PathLike, text: str, what: str = "") -> Path:
    """``text`` (UTF-8) at ``path``, atomically."""
    return write_atomic(path, lambda p: p.write_text(text, encoding="utf-8"), what)


def write_torch(path: PathLike, obj: Any, what: str = "") -> Path:
    """``torch.save(obj)`` at ``path``, atomically and flushed to disk: checkpoints.

    Raises:
        OutputError: ``could not write PATH: <reason>; the previous file is kept`` (a full disk, which
            torch reports as a RuntimeError, included).
    """
    import torch  # here only: most commands that write outputs never save a tensor

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return write_atomic(path, write, what, fsync=True)


def write_json(path: PathLike, obj: Any, what: str = "", indent: int = 2) -> Path:
    """``obj`` as JSON at ``path``, atomically (serialised first: a bad value leaves no file)."""
    text = json.dumps(obj, indent=indent, sort_keys=False) + "\n"
    return write_text(path, text, what)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def write_array(path: PathLike, value: Any, what: str = "", params: Iterable[int] = ()) -> Path:
    """An array at ``path``, atomically, in the format its suffix names.

    ``.npy``: one array; ``.npz``: a dict of arrays (compressed); an image suffix: an RGB (H, W, 3) or
    grey / 16-bit (H, W) image, ``params`` OpenCV's (e.g. ``[cv2.IMWRITE_JPEG_QUALITY, 95]``).

    Raises:
        ValueError: a suffix none of these.
        OutputError: it cannot be written; the previous file is kept.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", *IMAGE_SUFFIXES):
        raise ValueError(f"cannot write an array as {path.name}: use .npy, .npz or an image suffix")

    def write(tmp: Path) -> None:
        if suffix == ".npy":
            np.save(tmp, value)
        elif suffix == ".npz":
            np.savez_compressed(tmp, **value)
        else:
            a = np.asarray(value)
            bgr = np.ascontiguousarray(a[:, :, ::-1] if a.ndim == 3 else a)
            checked_write(cv2.imwrite(str(tmp), bgr, list(params)), tmp)

    return write_atomic(path, write, what)


def video_writer(path: PathLike, fps: float, width: int, height: int,
                suffix: str | None = None) -> cv2.VideoWriter:
    """An OpenCV writer of (height, width) BGR frames: WebM/VP8 (browsers play it) for a ``.webm`` path (or
    ``suffix``: the final name's, when ``path`` is a temporary file), else MPEG-4 part 2 (``mp4v``). For
    the temporary file of a :func:`write_atomic` (frames arrive one at a time).

    Raises:
        OSError: OpenCV cannot write it.
    """
    webm = (suffix or Path(path).suffix).lower() == ".webm"
    codec = "VP80" if webm else "mp4v"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write the video {path} ({codec} codec, {width}x{height})")
    return writer


def checked_write(ok: bool, path: PathLike) -> None:
    """Turn a writer's False (``cv2.imwrite``, ``VideoWriter``) into an OSError inside :func:`write_atomic`."""
    if not ok:
        raise OSError(5, f"the writer refused {Path(path).name} (disk full or unsupported format)")


# --------------------------------------------------------------------------- paths from data
def contained(root: PathLike, relative: PathLike, what: str = "path") -> Path:
    """``root / relative``, refusing a ``relative`` that would leave ``root``.

    ``relative`` comes from data (a split-file line, a caption key): an absolute path, a ``..`` that
    climbs above ``root``, or a NUL byte is refused. Symbolic links inside ``root`` are the user's own
    layout and are not resolved.

    Raises:
        PathEscapeError: naming ``what`` and the path.
    """
    rel = os.fspath(relative)
    if "\x00" in rel:
        raise PathEscapeError(f"{what} {rel!r} contains a NUL byte")
    if os.path.isabs(rel) or rel.startswith(("/", "\\")):
        raise PathEscapeError(f"{what} {rel!r} is absolute; it must be relative to {root}")
    norm = os.path.normpath(rel)
    if norm == ".." or norm.startswith(".." + os.sep) or norm.startswith("../"):
        raise PathEscapeError(f"{what} {rel!r} leaves {root}; refused")
    return Path(root) / norm

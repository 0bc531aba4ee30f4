"""CLIP text features in the original release's layout, and a packed store.

Layout: ``<root>/<nyu|kitti>/<train|test>/<rgb path without extension>.pt``,
each a ``torch.save``'d (1, D) float16 tensor (D: the CLIP model's width, ``WorDepthConfig.text_dim``),
saved from a CUDA device, so every load maps storages to the CPU.

The packed store keeps one split in two files, ``<root>/<dataset>/<split>.packed.npy``
(float16, N x D) and ``<split>.packed.json`` (``{"dim": D, "keys": [...]}``), so a
data loader worker reads a row of a memory map instead of unpickling a file per sample.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.serialization
from tqdm import tqdm

from wordepth.errors import UserError
from wordepth.outputs import PathEscapeError, contained, write_atomic, write_text

__all__ = [
    "normalize_key",
    "feature_path",
    "packed_paths",
    "load_feature_file",
    "describe_load_error",
    "key_path",
    "load_mean_table",
    "save_feature_file",
    "make_cuda_tagged_file",
    "list_feature_keys",
    "pack_features",
    "TextFeatureStore",
    "FeatureWidthError",
    "width_mismatch",
]

logger = logging.getLogger(__name__)

_HOW_TO_CREATE = (
    "create it with `wordepth-text extract ...` (CLIP features from the captions) "
    "or fetch the original release's features with `wordepth-download`"
)
_TAG_LOCK = threading.Lock()


class FeatureWidthError(UserError):
    """Text features of another width than the model takes (features of another CLIP model)."""


def width_mismatch(what: str, found: int, expected: int) -> FeatureWidthError:
    """The one-line error for ``what`` holding ``found``-d features where the model takes ``expected``-d."""
    return FeatureWidthError(
        f"{what} holds {found}-d text features, but the model takes {expected}-d ones (its text_dim): "
        f"extract the features with the CLIP model the network records (its clip_model; wordepth-text extract "
        f"--model NAME), or train a network for these features (--text_dim {found} --clip_model NAME)")


def normalize_key(rgb: str) -> str:
    """Normalises an rgb split entry to a feature key: no leading slash, no extension."""
    key = rgb.strip().replace("\\", "/").lstrip("/")
    return os.path.splitext(key)[0]


def key_path(folder: str | os.PathLike, rgb: str, suffix: str, what: str = "image name") -> Path:
    """``folder/<key><suffix>`` for an rgb entry or caption key, refusing one that would leave ``folder``.

    Every per-image output (caption, feature) is named this way, so a split line such as
    ``../../../outside/victim.jpg`` cannot make a command write outside its root.

    Raises:
        PathEscapeError: naming the entry and the folder.
    """
    key = normalize_key(rgb)
    if not key or key in (".", ".."):
        raise PathEscapeError(f"{what} {rgb!r} names no file under {folder}")
    try:
        return contained(folder, key + suffix, what=what)
    except PathEscapeError:
        raise PathEscapeError(f"{what} {rgb!r} would leave {folder} ('..' climbs above it); refused") from None


def feature_path(root: str | os.PathLike, dataset: str, split: str, rgb: str) -> Path:
    """Path of one per-image feature file, e.g. ``root/nyu/train/kitchen_0028b/rgb_00045.pt``.

    Raises:
        PathEscapeError: ``rgb`` would leave ``root/dataset/split``.
    """
    return key_path(Path(root) / dataset / split, rgb, ".pt")


def packed_paths(root: str | os.PathLike, dataset: str, split: str) -> tuple[Path, Path]:
    """Paths of a split's packed store: (array ``.packed.npy``, index ``.packed.json``)."""
    base = Path(root) / dataset
    return base / f"{split}.packed.npy", base / f"{split}.packed.json"


def load_feature_file(path: str | os.PathLike, expected_dim: int | None = None) -> torch.Tensor:
    """Loads one feature file saved on any device.

    Args:
        path: the ``.pt`` file holding a (1, D) tensor.
        expected_dim: D to insist on, or None to accept any.

    Returns:
        The feature, (D,) float32 on the CPU.

    Raises:
        FileNotFoundError: the file is missing (the message says how to create it).
        UserError: the file is unreadable, not a tensor, not (1, expected_dim), or holds NaN/inf
            (one line naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text feature file not found: {path}; {_HOW_TO_CREATE}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, foreign pickle, ...
        raise UserError(f"cannot read text feature file {path}: {describe_load_error(e)}; recreate it") from None
    want = f"(1, {expected_dim if expected_dim is not None else 'D'})"
    if not isinstance(obj, torch.Tensor):
        raise UserError(
            f"text feature file {path} holds a {type(obj).__name__}, expected a tensor of shape {want}"
        )
    if obj.dim() == 2 and obj.shape[0] == 1 and expected_dim is not None and obj.shape[1] != expected_dim:
        raise width_mismatch(f"text feature file {path}", int(obj.shape[1]), expected_dim)
    if obj.dim() != 2 or obj.shape[0] != 1:
        raise UserError(
            f"text feature file {path} holds a tensor of shape {tuple(obj.shape)}, expected {want}"
        )
    feature = obj.reshape(-1).to(torch.float32)
    if not bool(torch.isfinite(feature).all()):
        raise UserError(f"text feature file {path} holds non-finite values (NaN or inf); recreate it")
    # clone: the storage may be a larger buffer (a slice of a batch saved as is).
    return feature.clone()


def describe_load_error(err: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line."""
    text = str(err)
    if "Unsupported global" in text:
        return "it needs arbitrary code to unpickle, which is refused (files are loaded with weights_only=True)"
    if any(word in text for word in ("zip archive", "central directory", "PytorchStreamReader")):
        return "not a complete torch file (truncated or corrupt)"
    detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", text)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    what = detail.group(1).strip() if detail else f"{type(err).__name__}: {first}".rstrip(": ")
    return f"not a file torch.load can read ({what[:160]}): corrupt, or not written by torch.save"


def save_feature_file(path: str | os.PathLike, feature: torch.Tensor) -> None:
    """Saves a feature like the original: a (1, D) float16 tensor, atomically; creates parent folders."""
    tensor = _as_saved_feature(feature)
    write_atomic(path, lambda tmp: torch.save(tensor, tmp))


def make_cuda_tagged_file(path: str | os.PathLike, tensor: torch.Tensor) -> None:
    """Writes ``tensor`` exactly as ``torch.save`` of a CUDA tensor would on a GPU machine.

    The storage location recorded in the archive's ``data.pkl`` is ``cuda:0`` (as in the
    original release's feature files), so a plain ``torch.load`` fails on a CPU-only
    machine while ``map_location='cpu'`` works. No CUDA device is needed: a location
    tagger for this one storage is registered with torch.serialization for the duration
    of the save and removed again.

    Args:
        path: output file (parent folders are created).
        tensor: a CPU tensor, saved with its dtype and shape as given.
    """
    path = Path(path)
    tensor = tensor.detach().cpu().contiguous()
    data_ptr = tensor.untyped_storage().data_ptr()

    def tagger(storage) -> str | None:
        return "cuda:0" if storage.data_ptr() == data_ptr else None

    def deserializer(storage, location: str):  # never used for loading
        return None

    # A priority ahead of the built-in CPU tagger (10); unique so sorting never
    # compares the functions.
    entry = (-(2**62) - id(tagger), tagger, deserializer)
    with _TAG_LOCK:
        torch.serialization.register_package(*entry)
        try:
            write_atomic(path, lambda tmp: torch.save(tensor, tmp))
        finally:
            registry = torch.serialization._package_registry
            if entry in registry:
                registry.remove(entry)


def _as_saved_feature(feature: torch.Tensor) -> torch.Tensor:
    """(D,) or (1, D) -> contiguous (1, D) float16 CPU tensor."""
    feature = feature.detach().cpu()
    if feature.dim() == 1:
        feature = feature.unsqueeze(0)
    if feature.dim() != 2 or feature.shape[0] != 1:
        raise ValueError(f"a text feature must be (D,) or (1, D), got {tuple(feature.shape)}")
    return feature.to(torch.float16).contiguous().clone()


def list_feature_keys(root: str | os.PathLike, dataset: str, split: str) -> list[str]:
    """Every per-file feature key under ``root/dataset/split``, sorted."""
    folder = Path(root) / dataset / split
    if not folder.is_dir():
        raise FileNotFoundError(f"text feature folder not found: {folder}; {_HOW_TO_CREATE}")
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.pt"))


def pack_features(
    root: str | os.PathLike,
    dataset: str,
    split: str,
    entries: Sequence[str] | None = None,
    progress: bool = False,
) -> Path:
    """Packs a split's per-file features into one float16 array and a key index.

    Args:
        root: the text feature root (``text_feat``).
        dataset: ``nyu`` or ``kitti``.
        split: ``train`` or ``test``.
        entries: rgb entries to pack (e.g. a split file's first column); None packs
            every ``.pt`` file under ``root/dataset/split``.
        progress: show a tqdm bar.

    Returns:
        The path of the ``.packed.npy`` file.

    Raises:
        FileNotFoundError: a feature file is missing.
        UserError: a feature file is malformed or the dimensions disagree.
    """
    if entries is None:
        keys = list_feature_keys(root, dataset, split)
    else:
        keys = list(dict.fromkeys(normalize_key(e) for e in entries))
    if not keys:
        raise UserError(f"no text features to pack under {Path(root) / dataset / split}")
    keys_iter: Iterable[str] = keys
    if progress:
        keys_iter = tqdm(keys, desc=f"packing {dataset}/{split}", unit="file")
    npy_path, json_path = packed_paths(root, dataset, split)
    folder = Path(root) / dataset / split
    paths = [key_path(folder, key, ".pt") for key in keys]  # every key inside its folder, before any write
    for path in paths:
        if not path.is_file():  # a missing input is named as such, not as a failed write
            raise FileNotFoundError(f"text feature file not found: {path}; {_HOW_TO_CREATE}")
    dims: list[int] = []

    def write_array(tmp: Path) -> None:
        array = None
        for i, key in enumerate(keys_iter):
            feature = load_feature_file(paths[i], expected_dim=dims[0] if dims else None)
            if array is None:
                dims.append(int(feature.numel()))
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(keys), dims[0]))
            array[i] = feature.numpy().astype(np.float16)
        array.flush()
        del array

    # The array first, then the index; a reader in between pairs the new array with the old index, which
    # the store's shape check refuses (a one-line error, never wrong rows).
    write_atomic(npy_path, write_array, what=f"packed text features {npy_path}")
    dim = dims[0]
    write_text(json_path, json.dumps({"dim": dim, "keys": keys}), what=f"packed text feature index {json_path}")
    logger.info("packed %d %s/%s text features (dim %d) into %s", len(keys), dataset, split, dim, npy_path)
    return npy_path


class TextFeatureStore:
    """Reads a split's text features, from the packed store when present, else per file.

    The memory map is opened lazily in each process (the store pickles without it and
    reopens after a fork), so one store can be handed to DataLoader workers.

    Args:
        root: the text feature root (``text_feat``).
        dataset: the dataset's name (its folder).
        split: ``train`` or ``test``.
        expected_dim: D to insist on (the model's ``text_dim``), or None to accept any.
    """

    def __init__(self, root: str | os.PathLike, dataset: str, split: str, expected_dim: int | None = None):
        self.root = Path(root)
        self.dataset = dataset
        self.split = split
        self.expected_dim = expected_dim
        self._index: dict[str, int] | None = None
        self._packed_dim: int | None = None
        self._array: np.ndarray | None = None
        self._pid: int | None = None
        self._checked = False

    # ---- pickling: never carry an open memory map into another process
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None
        state["_pid"] = None
        return state

    @property
    def packed_files(self) -> tuple[Path, Path]:
        """The packed store's (``.packed.npy``, ``.packed.json``) paths, whether they exist or not."""
        return packed_paths(self.root, self.dataset, self.split)

    def _unusable(self, what: str) -> UserError:
        npy_path, json_path = self.packed_files
        return UserError(f"{what}: re-run wordepth-pack-text, or delete {npy_path} and {json_path} "
                          "to use the per-file features")

    def _read_index(self, json_path: Path) -> tuple[int, list[str]]:
        """The packed index's (dim, keys); one-line errors for a truncated or incomplete file."""
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise self._unusable(f"packed text feature index {json_path} is not UTF-8 JSON") from None
        except ValueError as err:
            raise self._unusable(f"packed text feature index {json_path} is truncated or not JSON ({err})") from None
        try:
            dim, keys = int(meta["dim"]), meta["keys"]
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                raise TypeError("'keys' is not a list of names")
        except (KeyError, TypeError, ValueError) as err:
            missing = f"has no {err} entry" if isinstance(err, KeyError) else f"is malformed ({err})"
            raise self._unusable(f"packed text feature index {json_path} {missing}") from None
        return dim, keys

    def _open_packed(self) -> bool:
        """Opens the packed store if both files exist; returns whether it is in use."""
        if not self._checked:
            self._checked = True
            npy_path, json_path = packed_paths(self.root, self.dataset, self.split)
            if npy_path.is_file() and json_path.is_file():
                dim, keys = self._read_index(json_path)
                if self.expected_dim is not None and dim != self.expected_dim:
                    raise width_mismatch(f"packed text feature store {npy_path}", dim, self.expected_dim)
                self._index = {k: i for i, k in enumerate(keys)}
                self._packed_dim = dim
                logger.debug("using packed text features %s (%d keys)", npy_path, len(self._index))
        if self._index is None:
            return False
        if self._array is None or self._pid != os.getpid():
            npy_path, _ = packed_paths(self.root, self.dataset, self.split)
            try:
                array = np.load(npy_path, mmap_mode="r")
            except (OSError, ValueError) as err:  # e.g. "mmap length is greater than file size"
                raise self._unusable(f"packed text features {npy_path} cannot be read, the file is truncated or "
                                     f"corrupt ({err})") from None
            if array.shape != (len(self._index), self._packed_dim):
                raise UserError(
                    f"packed text features {npy_path} have shape {array.shape}, "
                    f"expected {(len(self._index), self._packed_dim)} from its index"
                )
            self._array = array
            self._pid = os.getpid()
        return True

    @property
    def packed(self) -> bool:
        """Whether the packed store is in use."""
        return self._open_packed()

    @property
    def dim(self) -> int | None:
        """Feature dimension D (packed store's, else ``expected_dim``)."""
        if self._open_packed():
            return self._packed_dim
        return self.expected_dim

    def path(self, rgb: str) -> Path:
        """Per-file path for an rgb entry."""
        return feature_path(self.root, self.dataset, self.split, rgb)

    def get(self, rgb: str) -> torch.Tensor:
        """Feature of one rgb entry, (D,) float32.

        Raises:
            UserError: the feature holds NaN or inf (or cannot be read), naming the file.
        """
        if self._open_packed():
            row = self._index.get(normalize_key(rgb))
            if row is not None:
                feature = np.asarray(self._array[row], dtype=np.float32)
                if not np.isfinite(feature).all():
                    raise UserError(f"packed text features {self.packed_files[0]}: the feature of {rgb} (row {row}) "
                                     "holds non-finite values (NaN or inf); re-extract it and re-pack")
                return torch.from_numpy(feature)
        return load_feature_file(self.path(rgb), expected_dim=self.expected_dim)

    def check_width(self, rgb: str) -> None:
        """Checks, before any training step, that the split's features have the width asked for (``expected_dim``):
        the packed store's recorded width, else ``rgb``'s feature file when it is readable (a missing or
        damaged file is left to the sample that reads it).

        Raises:
            FeatureWidthError: one line naming the file, both widths and the fix.
        """
        if self.expected_dim is None or self._open_packed():
            return
        try:
            load_feature_file(self.path(rgb), expected_dim=self.expected_dim)
        except FeatureWidthError:
            raise
        except (OSError, ValueError):
            pass

    def nonfinite_rows(self) -> dict[str, int]:
        """Keys of the packed store whose feature holds NaN or inf, with their rows (reads the whole array)."""
        if not self._open_packed():
            return {}
        bad = set(np.flatnonzero(~np.isfinite(self._array).all(axis=1)).tolist())
        return {k: i for k, i in self._index.items() if i in bad}

    def get_many(self, rgbs: Sequence[str]) -> torch.Tensor:
        """Features of several rgb entries, (B, D) float32."""
        return torch.stack([self.get(rgb) for rgb in rgbs])

    def __repr__(self) -> str:
        return f"TextFeatureStore(root={str(self.root)!r}, dataset={self.dataset!r}, split={self.split!r})"


def mean_feature(root: str | os.PathLike, dataset: str, split: str,
                 progress: bool = True) -> tuple[torch.Tensor, int]:
    """The mean (D,) float32 of every caption feature of a split (the packed store if present), and N.

    Accumulated in float64 over the stored float16 features; not re-normalised (as the original
    release's means in ``wordepth/assets/mean_text_features.pt``).

    Raises:
        FileNotFoundError: no feature folder or store for the split.
        UserError: the split holds no feature, or a non-finite one.
    """
    store = TextFeatureStore(root, dataset, split, expected_dim=None)
    if store.packed:
        rows = np.asarray(store._array, dtype=np.float64)  # (N, D)
        total, count = torch.from_numpy(rows.sum(axis=0)), rows.shape[0]
    else:
        keys = list_feature_keys(root, dataset, split)
        total, count = None, 0
        for key in tqdm(keys, desc=f"mean {dataset}/{split}", unit="file", disable=not progress):
            feature = load_feature_file(feature_path(root, dataset, split, key)).double().flatten()
            total = feature if total is None else total + feature
            count += 1
    if count == 0:
        raise UserError(f"no text features under {Path(root) / dataset / split}")
    mean = (total / count).float()
    if not torch.isfinite(mean).all():
        raise UserError(f"the text features of {dataset}/{split} under {root} hold non-finite values")
    return mean, count


def load_mean_table(path: str | os.PathLike) -> dict:
    """The entries of a mean-feature file (``wordepth-text mean``, ``--mean_features``), loaded safely.

    Raises:
        FileNotFoundError: no such file.
        UserError: one line naming the file: not a torch file, a pickle that needs code (refused:
            files are loaded with ``weights_only=True``), or not a table of ``<dataset>_<split>_mean``
            tensors.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"mean caption feature file {path} is a folder, expected a file")
    if not path.is_file():
        raise FileNotFoundError(f"mean caption feature file not found: {path}")
    try:
        table = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a foreign pickle, a truncated or non-torch file
        raise UserError(f"cannot read mean caption feature file {path}: {describe_load_error(err)}") from None
    if not isinstance(table, dict) or not all(isinstance(k, str) for k in table):
        raise UserError(f"mean caption feature file {path} holds a {type(table).__name__}, expected a table of "
                         "'<dataset>_<split>_mean' tensors (written by wordepth-text mean)")
    bad = [k for k, v in table.items() if k.endswith("_mean") and not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"mean caption feature file {path}: {bad[0]} is not a tensor")
    return table


def write_mean_features(path: str | os.PathLike, dataset: str, split: str, mean: torch.Tensor, count: int) -> Path:
    """Add ``<dataset>_<split>_mean`` and ``_count`` to the mean-feature file ``path`` (created if missing).

    The existing file is read safely (:func:`load_mean_table`) and replaced atomically.
    """
    path = Path(path)
    table = load_mean_table(path) if path.exists() else {}
    table[f"{dataset}_{split}_mean"] = mean.float().contiguous()
    table[f"{dataset}_{split}_count"] = int(count)
    return write_atomic(path, lambda tmp: torch.save(table, tmp), what=f"mean caption feature file {path}")

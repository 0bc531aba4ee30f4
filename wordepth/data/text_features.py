"""CLIP text features in the original release's layout, and a packed store.

Layout: ``<root>/<nyu|kitti>/<train|test>/<rgb path without extension>.pt``,
each a ``torch.save``'d (1, D) float16 tensor (D = 1024 for CLIP ResNet-50),
saved from a CUDA device, so every load maps storages to the CPU.

The packed store keeps one split in two files, ``<root>/<dataset>/<split>.packed.npy``
(float16, N x D) and ``<split>.packed.json`` (``{"dim": D, "keys": [...]}``), so a
data loader worker reads a row of a memory map instead of unpickling a file per sample.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.serialization

__all__ = [
    "normalize_key",
    "feature_path",
    "packed_paths",
    "load_feature_file",
    "save_feature_file",
    "make_cuda_tagged_file",
    "list_feature_keys",
    "pack_features",
    "TextFeatureStore",
]

logger = logging.getLogger(__name__)

_HOW_TO_CREATE = (
    "create it with `python scripts/extract_text_feat.py ...` (CLIP features from the captions) "
    "or fetch the original release's features with `python scripts/download_original_data.py`"
)
_TAG_LOCK = threading.Lock()


def normalize_key(rgb: str) -> str:
    """Normalises an rgb split entry to a feature key: no leading slash, no extension."""
    key = rgb.strip().replace("\\", "/").lstrip("/")
    return os.path.splitext(key)[0]


def feature_path(root: str | os.PathLike, dataset: str, split: str, rgb: str) -> Path:
    """Path of one per-image feature file, e.g. ``root/nyu/train/kitchen_0028b/rgb_00045.pt``."""
    return Path(root) / dataset / split / (normalize_key(rgb) + ".pt")


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
        ValueError: the file is unreadable, not a tensor, or not (1, expected_dim).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text feature file not found: {path}; {_HOW_TO_CREATE}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, foreign pickle, ...
        raise ValueError(f"cannot read text feature file {path}: {e}") from e
    want = f"(1, {expected_dim if expected_dim is not None else 'D'})"
    if not isinstance(obj, torch.Tensor):
        raise ValueError(
            f"text feature file {path} holds a {type(obj).__name__}, expected a tensor of shape {want}"
        )
    if obj.dim() != 2 or obj.shape[0] != 1 or (expected_dim is not None and obj.shape[1] != expected_dim):
        raise ValueError(
            f"text feature file {path} holds a tensor of shape {tuple(obj.shape)}, expected {want}"
        )
    # clone: the storage may be a larger buffer (a slice of a batch saved as is).
    return obj.reshape(-1).to(torch.float32).clone()


def save_feature_file(path: str | os.PathLike, feature: torch.Tensor) -> None:
    """Saves a feature like the original: a (1, D) float16 tensor; creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_as_saved_feature(feature), path)


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
    path.parent.mkdir(parents=True, exist_ok=True)
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
            torch.save(tensor, path)
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
        ValueError: a feature file is malformed or the dimensions disagree.
    """
    if entries is None:
        keys = list_feature_keys(root, dataset, split)
    else:
        keys = list(dict.fromkeys(normalize_key(e) for e in entries))
    if not keys:
        raise ValueError(f"no text features to pack under {Path(root) / dataset / split}")
    keys_iter: Iterable[str] = keys
    if progress:
        from tqdm import tqdm

        keys_iter = tqdm(keys, desc=f"packing {dataset}/{split}", unit="file")
    npy_path, json_path = packed_paths(root, dataset, split)
    npy_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_npy = npy_path.with_name(npy_path.name + ".tmp.npy")
    tmp_json = json_path.with_name(json_path.name + ".tmp")
    array = None
    dim = None
    try:
        for i, key in enumerate(keys_iter):
            feature = load_feature_file(Path(root) / dataset / split / (key + ".pt"), expected_dim=dim)
            if array is None:
                dim = int(feature.numel())
                array = np.lib.format.open_memmap(tmp_npy, mode="w+", dtype=np.float16, shape=(len(keys), dim))
            array[i] = feature.numpy().astype(np.float16)
        array.flush()
        del array
        with open(tmp_json, "w", encoding="utf-8") as f:
            json.dump({"dim": dim, "keys": keys}, f)
        os.replace(tmp_npy, npy_path)
        os.replace(tmp_json, json_path)
    finally:
        for tmp in (tmp_npy, tmp_json):
            if tmp.exists():
                tmp.unlink()
    logger.info("packed %d %s/%s text features (dim %d) into %s", len(keys), dataset, split, dim, npy_path)
    return npy_path


class TextFeatureStore:
    """Reads a split's text features, from the packed store when present, else per file.

    The memory map is opened lazily in each process (the store pickles without it and
    reopens after a fork), so one store can be handed to DataLoader workers.

    Args:
        root: the text feature root (``text_feat``).
        dataset: ``nyu`` or ``kitti``.
        split: ``train`` or ``test``.
        expected_dim: D to insist on, or None to accept any.
    """

    def __init__(self, root: str | os.PathLike, dataset: str, split: str, expected_dim: int | None = 1024):
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

    def _open_packed(self) -> bool:
        """Opens the packed store if both files exist; returns whether it is in use."""
        if not self._checked:
            self._checked = True
            npy_path, json_path = packed_paths(self.root, self.dataset, self.split)
            if npy_path.is_file() and json_path.is_file():
                with open(json_path, "r", encoding="utf-8") as f:
                    meta = json.load(f)
                dim = int(meta["dim"])
                if self.expected_dim is not None and dim != self.expected_dim:
                    raise ValueError(
                        f"packed text features {npy_path} have dim {dim}, expected {self.expected_dim}"
                    )
                self._index = {k: i for i, k in enumerate(meta["keys"])}
                self._packed_dim = dim
                logger.debug("using packed text features %s (%d keys)", npy_path, len(self._index))
        if self._index is None:
            return False
        if self._array is None or self._pid != os.getpid():
            npy_path, _ = packed_paths(self.root, self.dataset, self.split)
            array = np.load(npy_path, mmap_mode="r")
            if array.shape != (len(self._index), self._packed_dim):
                raise ValueError(
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
        """Feature of one rgb entry, (D,) float32."""
        if self._open_packed():
            row = self._index.get(normalize_key(rgb))
            if row is not None:
                return torch.from_numpy(np.asarray(self._array[row], dtype=np.float32))
        return load_feature_file(self.path(rgb), expected_dim=self.expected_dim)

    def get_many(self, rgbs: Sequence[str]) -> torch.Tensor:
        """Features of several rgb entries, (B, D) float32."""
        return torch.stack([self.get(rgb) for rgb in rgbs])

    def __repr__(self) -> str:
        return f"TextFeatureStore(root={str(self.root)!r}, dataset={self.dataset!r}, split={self.split!r})"

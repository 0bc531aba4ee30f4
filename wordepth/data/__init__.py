"""Data: split files, the NYU and KITTI datasets, augmentation, depth PNGs, text features, data checks,
synthetic data. The zero-shot evaluation sets (SUN RGB-D, iBims-1, DIODE) are in `wordepth.zeroshot.data`."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import default_collate

from wordepth.data.kitti import KITTIDataset
from wordepth.data.nyu import NYUDataset
from wordepth.data.splits import SplitDataset, SplitEntry, SplitFileError, read_split
from wordepth.data.text_features import (
    TextFeatureStore,
    feature_path,
    load_feature_file,
    make_cuda_tagged_file,
    pack_features,
    save_feature_file,
)

__all__ = [
    "KITTIDataset",
    "NYUDataset",
    "SplitDataset",
    "SplitEntry",
    "SplitFileError",
    "TextFeatureStore",
    "build_dataset",
    "collate",
    "feature_path",
    "load_feature_file",
    "make_cuda_tagged_file",
    "pack_features",
    "read_split",
    "save_feature_file",
]

_DATASETS = {"nyu": NYUDataset, "kitti": KITTIDataset}
_RAGGED_KEYS = ("depth", "image")


def build_dataset(dataset: str, mode: str, **kwargs: Any) -> SplitDataset:
    """Builds :class:`NYUDataset` or :class:`KITTIDataset`.

    Args:
        dataset: ``nyu`` or ``kitti``.
        mode: ``train`` or ``eval``.
        **kwargs: the dataset class's arguments, by name: ``split_file``, ``data_path``, ``gt_path`` and
            ``text_feat_dir``, then any of ``input_height``, ``input_width``, ``do_random_rotate``,
            ``degree``, ``seed``, ``do_kb_crop``, ... (:class:`SplitDataset`, :class:`KITTIDataset`).

    Raises:
        ValueError: unknown dataset name or mode.
    """
    if dataset not in _DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {sorted(_DATASETS)}")
    return _DATASETS[dataset](mode=mode, **kwargs)


def collate(batch: list[dict]) -> dict:
    """``default_collate``, except that ``depth`` (or ``image``) maps of different sizes stay lists.

    KITTI evaluation ground truths keep their full, per-drive sizes.
    """
    ragged = [
        key
        for key in _RAGGED_KEYS
        if key in batch[0] and len({tuple(torch.as_tensor(s[key]).shape) for s in batch}) > 1
    ]
    if not ragged:
        return default_collate(batch)
    out = default_collate([{k: v for k, v in s.items() if k not in ragged} for s in batch])
    for key in ragged:
        out[key] = [torch.as_tensor(s[key]) for s in batch]
    return out

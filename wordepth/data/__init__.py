"""Data: split files, the datasets by name (NYU, KITTI and yours: `wordepth.data.registry`), augmentation,
depth files, text features, data checks, synthetic data. The zero-shot evaluation sets (SUN RGB-D,
iBims-1, DIODE) are in `wordepth.zeroshot.data`."""
from __future__ import annotations

import importlib

# name -> the submodule that defines it; imported on first use (PEP 562), so that a light module such as
# `wordepth.data.facts` or `wordepth.data.images` does not import torch and every dataset with it
_LAZY = {
    "DatasetFacts": "facts",
    "KITTIDataset": "kitti",
    "NYUDataset": "nyu",
    "build_dataset": "registry",
    "dataset_facts": "registry",
    "dataset_names": "registry",
    "register_dataset": "registry",
    "SplitDataset": "splits",
    "SplitEntry": "splits",
    "SplitFileError": "splits",
    "read_split": "splits",
    "TextFeatureStore": "text_features",
    "feature_path": "text_features",
    "load_feature_file": "text_features",
    "make_cuda_tagged_file": "text_features",
    "pack_features": "text_features",
    "save_feature_file": "text_features",
}

__all__ = [
    "DatasetFacts",
    "KITTIDataset",
    "NYUDataset",
    "SplitDataset",
    "SplitEntry",
    "SplitFileError",
    "TextFeatureStore",
    "build_dataset",
    "collate",
    "dataset_facts",
    "dataset_names",
    "feature_path",
    "load_feature_file",
    "make_cuda_tagged_file",
    "pack_features",
    "read_split",
    "register_dataset",
    "save_feature_file",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"wordepth.data.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wordepth.data' has no attribute {name!r}")


_RAGGED_KEYS = ("depth", "image")


def collate(batch: list[dict]) -> dict:
    """``default_collate``, except that ``depth`` (or ``image``) maps of different sizes stay lists.

    KITTI evaluation ground truths keep their full, per-drive sizes.
    """
    import torch
    from torch.utils.data import default_collate

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

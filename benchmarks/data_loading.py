"""Data loading: one NYU training sample against a PIL decode, and packed text features."""
from __future__ import annotations

import random
import statistics
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from benchmarks.common import ORIGINAL_REPORTED, TARGETS, Settings, interleaved
from wordepth.data import transforms as T
from wordepth.data.nyu import NYUDataset
from wordepth.data.generated.synthetic import make_synthetic_dataset
from wordepth.data.text_features import TextFeatureStore, make_cuda_tagged_file, pack_features


# --------------------------------------------------------------------------- data
def original_style_sample(rgb: Path, depth_path: Path, rng: random.Random, input_hw: tuple[int, int],
                          degree: float = 2.5) -> dict:
    """The original loader's NYU training sample: PIL rotation, float numpy augmentation,
    ToTensor + Normalize (torch ops), for the before/after comparison."""
    image, depth = Image.open(rgb), Image.open(depth_path)
    if (image.height, image.width) == tuple(input_hw):
        top, bottom, left, right = T.nyu_valid_box(image.height, image.width)
        d = np.array(depth)
        mask = np.zeros_like(d)
        mask[top:bottom, left:right] = 1
        d[mask == 0] = 0
        depth = Image.fromarray(d)
    angle = (rng.random() - 0.5) * 2 * degree
    image = image.rotate(angle, resample=Image.BILINEAR)
    depth = depth.rotate(angle, resample=Image.NEAREST)
    image = np.asarray(image, dtype=np.float32) / 255.0
    depth = np.expand_dims(np.asarray(depth, dtype=np.float32), axis=2) / 1000.0
    if image.shape[:2] != tuple(input_hw):
        x, y = rng.randint(0, image.shape[1] - input_hw[1]), rng.randint(0, image.shape[0] - input_hw[0])
        image, depth = image[y:y + input_hw[0], x:x + input_hw[1]], depth[y:y + input_hw[0], x:x + input_hw[1]]
    if rng.random() > 0.5:
        image, depth = image[:, ::-1, :].copy(), depth[:, ::-1, :].copy()
    if rng.random() > 0.5:
        image = image ** rng.uniform(0.9, 1.1) * rng.uniform(0.75, 1.25)
        colors = np.random.uniform(0.9, 1.1, size=3)
        white = np.ones((image.shape[0], image.shape[1]))
        image = np.clip(image * np.stack([white * colors[i] for i in range(3)], axis=2), 0, 1)
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose((2, 0, 1)))).float()
    mean, std = torch.tensor(T.IMAGENET_MEAN)[:, None, None], torch.tensor(T.IMAGENET_STD)[:, None, None]
    return {"image": (tensor - mean) / std, "depth": torch.from_numpy(np.ascontiguousarray(depth.transpose((2, 0, 1))))}


def bench_data(s: Settings, runs: int, workdir: Path) -> dict:
    """One NYU training sample per image of a synthetic dataset, on one thread: this project's loader and
    the original's operations, against a PIL decode of the same files."""
    paths = make_synthetic_dataset(workdir / "synthetic", "nyu", n_train=s.n_images, n_test=0,
                                   height=s.image_hw[0], width=s.image_hw[1], seed=0)
    ds = NYUDataset(paths["train_split"], paths["data_path"], paths["gt_path"], paths["text_feat_dir"],
                    mode="train", input_height=s.image_hw[0], input_width=s.image_hw[1], seed=0)
    files = [(ds.data_path / e.rgb.lstrip("/"), ds.gt_path / e.depth.lstrip("/")) for e in ds.entries]

    def pil_decode():
        for rgb, depth in files:
            for path in (rgb, depth):
                with Image.open(path) as im:
                    im.load()

    def wordepth_samples():
        for i, entry in enumerate(ds.entries):
            ds.load(entry, T.sample_rng(0, 0, i))

    def original_samples():
        for i, (rgb, depth) in enumerate(files):
            original_style_sample(rgb, depth, T.sample_rng(0, 0, i), s.image_hw)

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        rows = interleaved({"pil_decode": pil_decode, "original_style": original_samples,
                            "wordepth": wordepth_samples}, runs, reference="pil_decode")
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)
    for row in rows.values():
        row["per_sample_ms"] = row["wall_s"] / len(files) * 1e3
    return {"image_size": list(s.image_hw), "samples": len(files), "threads": 1,
            "what": "NYUDataset.load: decode (cv2) + depth zeroing + rotate + crop + flip + colour augment + "
                    "normalise, without the text feature; yardstick: PIL decode of the JPEG and the depth PNG",
            "rows": rows, "target_ratio": TARGETS["data_ratio"],
            "original_reported_ratio": ORIGINAL_REPORTED["data_ratio"]}



def bench_text(s: Settings, runs: int, workdir: Path) -> dict:
    """A shuffled epoch of text-feature batches: the packed store against per-sample ``torch.load``."""
    root = workdir / "text_feat"
    g = torch.Generator().manual_seed(0)
    keys = [f"scene_{i // 16:03d}/rgb_{i:05d}" for i in range(s.n_features)]
    for key in keys:
        feature = torch.randn(1, 1024, generator=g)
        make_cuda_tagged_file(root / "nyu" / "train" / f"{key}.pt", (feature / feature.norm()).half())
    pack_features(root, "nyu", "train")
    store = TextFeatureStore(root, "nyu", "train")
    order = random.Random(0).sample(keys, len(keys))  # a shuffled epoch
    batches = [order[i:i + s.text_batch] for i in range(0, len(order), s.text_batch)]

    def per_file():
        for batch in batches:
            torch.stack([torch.load(store.path(k), map_location="cpu", weights_only=True).reshape(-1).float()
                         for k in batch])

    def packed():
        for batch in batches:
            store.get_many(batch)

    assert store.packed
    rows = interleaved({"per_file_torch_load": per_file, "packed_store": packed}, runs)
    a, b = rows["per_file_torch_load"], rows["packed_store"]
    return {"features": len(keys), "batch": s.text_batch, "rows": rows,
            "per_batch_ms": {"per_file_torch_load": a["wall_s"] / len(batches) * 1e3,
                             "packed_store": b["wall_s"] / len(batches) * 1e3},
            "speedup": statistics.median(x / y for x, y in zip(a["wall_runs"], b["wall_runs"])),
            "target_speedup": TARGETS["text_speedup"]}

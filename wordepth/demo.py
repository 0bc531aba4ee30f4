"""Pieces of the demo (``wordepth-demo``, ``sh run_demo.sh``) beyond training and evaluation.

`mean_depth_baseline` is what a model must beat; `prior_picture` shows depth maps sampled from a
caption alone. The command itself is `wordepth.cli.demo`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def mean_depth_baseline(paths: dict, out: Path) -> dict:
    """Metrics of predicting the mean training depth everywhere, also written to ``out/baseline_metrics.json``.

    Args:
        paths: dataset paths as `wordepth.data.synthetic.make_synthetic_dataset` returns them (NYU).
    """
    from wordepth.data import NYUDataset
    from wordepth.metrics import MetricAccumulator, per_image_metrics

    train = NYUDataset(paths["train_split"], paths["data_path"], paths["gt_path"], paths["text_feat_dir"],
                       mode="eval", text_split="train")
    depths = [train[i]["depth"] for i in range(len(train))]
    mean = float(torch.cat([d[d > 0] for d in depths]).mean())
    test = NYUDataset(paths["test_split"], paths["data_path_eval"], paths["gt_path_eval"], paths["text_feat_dir"],
                      mode="eval")
    acc = MetricAccumulator()
    for i in range(len(test)):
        gt = test[i]["depth"][None]
        acc.update(per_image_metrics(torch.full_like(gt, mean), gt, min_depth=1e-3, max_depth=10, crop=None,
                                     dataset="nyu"))
    result = {**acc.as_dict(), "mean_depth": mean}
    (out / "baseline_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def prior_picture(ckpt: Path, paths: dict, out: Path, size: tuple[int, int], k: int = 4) -> Path:
    """K depth maps sampled from one test caption alone, side by side with the caption (``out/prior_depth.png``)."""
    import cv2

    from wordepth import load_checkpoint
    from wordepth.data import read_split
    from wordepth.data.text_features import TextFeatureStore
    from wordepth.visualize import colorize, make_grid, save_png

    model = load_checkpoint(ckpt)
    entry = read_split(paths["test_split"])[0]
    text = TextFeatureStore(paths["text_feat_dir"], "nyu", "test").get(entry.rgb)[None]
    caption = (Path(paths["text_dir"]) / "nyu" / "test" / Path(entry.rgb.strip("/")).with_suffix(".txt")).read_text()
    g = torch.Generator().manual_seed(0)
    maps = [model.prior_depth(text, size, generator=g)[0, 0].numpy() for _ in range(k)]
    vmax = max(float(np.max(m)) for m in maps)
    grid = make_grid([colorize(m, 0, vmax) for m in maps], ncols=k, labels=[f"sample {i + 1}" for i in range(k)])
    banner = np.full((24, grid.shape[1], 3), 255, np.uint8)
    cv2.putText(banner, caption.strip()[:80], (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    path = out / "prior_depth.png"
    save_png(path, np.concatenate([banner, grid], axis=0))
    return path

"""Pieces of the demo (``wordepth-demo``, ``sh run_demo.sh``) beyond training and evaluation.

`mean_depth_baseline` is what a model must beat; `prior_picture` shows depth maps sampled from a
caption alone. The command itself is `wordepth.cli.demo`.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from wordepth.data import NYUDataset, read_split
from wordepth.data.facts import NYU
from wordepth.data.text_features import TextFeatureStore
from wordepth.inference.predictor import Predictor
from wordepth.metrics import MetricAccumulator, per_image_metrics
from wordepth.outputs import write_array, write_json
from wordepth.visualize import colorize, make_grid


def mean_depth_baseline(paths: dict, out: Path) -> dict:
    """Metrics of predicting the mean training depth everywhere, also written to ``out/baseline_metrics.json``.

    Args:
        paths: dataset paths as `wordepth.data.generated.synthetic.make_synthetic_dataset` returns them (NYU).
    """
    train = NYUDataset(paths["train_split"], paths["data_path"], paths["gt_path"], paths["text_feat_dir"],
                       mode="eval", text_split="train")
    depths = [train[i]["depth"] for i in range(len(train))]
    mean = float(torch.cat([d[d > 0] for d in depths]).mean())
    test = NYUDataset(paths["test_split"], paths["data_path_eval"], paths["gt_path_eval"], paths["text_feat_dir"],
                      mode="eval")
    acc = MetricAccumulator()
    for i in range(len(test)):
        gt = test[i]["depth"][None]
        acc.update(per_image_metrics(torch.full_like(gt, mean), gt, min_depth=NYU.min_depth_eval, max_depth=NYU.max_depth, crop=None,
                                     dataset="nyu"))
    result = {**acc.as_dict(), "mean_depth": mean}
    write_json(out / "baseline_metrics.json", result)
    return result


def prior_picture(ckpt: Path, paths: dict, out: Path, size: tuple[int, int], k: int = 4) -> Path:
    """K depth maps sampled from one test caption alone (:meth:`wordepth.Predictor.prior`), side by side with
    the caption (``out/prior_depth.png``, written atomically)."""
    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    entry = read_split(paths["test_split"])[0]
    text = TextFeatureStore(paths["text_feat_dir"], "nyu", "test").get(entry.rgb)  # (D,)
    caption = (Path(paths["text_dir"]) / "nyu" / "test" / Path(entry.rgb.strip("/")).with_suffix(".txt")).read_text()
    maps = predictor.prior(text, size=size, k=k, seed=0)  # (k, H, W)
    vmax = float(np.max(maps))
    grid = make_grid([colorize(m, 0, vmax) for m in maps], ncols=k, labels=[f"sample {i + 1}" for i in range(k)])
    banner = np.full((24, grid.shape[1], 3), 255, np.uint8)
    cv2.putText(banner, caption.strip()[:80], (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return write_array(out / "prior_depth.png", np.concatenate([banner, grid], axis=0))

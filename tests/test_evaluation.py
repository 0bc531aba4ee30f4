"""The evaluation loop: NaN/inf predictions are clamped as the original does, counted and warned about."""
import json
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from wordepth.data import collate
from wordepth.evaluation import EvalResult, evaluate, write_metrics_json
from wordepth.metrics import METRIC_NAMES

H, W = 8, 12


class Frames(Dataset):
    """Ground truths in (0.5, 9.5) m, with a path each (no files)."""

    def __init__(self, n: int = 3):
        g = torch.Generator().manual_seed(0)
        self.gts = [0.5 + 9 * torch.rand(1, H, W, generator=g) for _ in range(n)]

    def __len__(self):
        return len(self.gts)

    def __getitem__(self, i):
        return {"image": torch.full((3, H, W), float(i)), "text_feature": torch.zeros(1, 4), "depth": self.gts[i],
                "has_valid_depth": True, "path": f"img{i}.png"}


class Poisoned(torch.nn.Module):
    """Predicts 2 m everywhere; image 1 gets NaN at 3 pixels and +inf at 2 pixels."""

    def forward(self, image, text):
        pred = torch.full((image.shape[0], 1, H, W), 2.0)
        for b in range(image.shape[0]):
            if image[b, 0, 0, 0] == 1:
                pred[b, 0, 0, :3] = float("nan")
                pred[b, 0, 1, :2] = float("inf")
        return pred


def _errors(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    thresh = np.maximum(gt / pred, pred / gt)
    err = np.log(pred) - np.log(gt)
    return np.array([np.sqrt(np.mean(err**2) - np.mean(err) ** 2) * 100, np.mean(np.abs(gt - pred) / gt),
                     np.mean(np.abs(np.log10(gt) - np.log10(pred))), np.sqrt(((gt - pred) ** 2).mean()),
                     np.mean(((gt - pred) ** 2) / gt), np.sqrt(((np.log(gt) - np.log(pred)) ** 2).mean()),
                     (thresh < 1.25).mean(), (thresh < 1.25**2).mean(), (thresh < 1.25**3).mean()])


def _run(nonfinite: str, batch_size: int = 2) -> EvalResult:
    loader = DataLoader(Frames(), batch_size=batch_size, collate_fn=collate)
    return evaluate(Poisoned(), loader, dataset="nyu", min_depth=1e-3, max_depth=10.0, crop=None, kb_crop=False,
                    device=torch.device("cpu"), progress=False, nonfinite=nonfinite)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_nonfinite_predictions_are_clamped_counted_and_warned(caplog, batch_size):
    with caplog.at_level(logging.WARNING):
        result = _run("clamp", batch_size)
    assert (result.nonfinite_pixels, result.nonfinite_images) == (5, 1)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "5 predicted pixel(s) in 1 image(s)" in warning and "not finite" in warning
    # the original: inf -> max depth, NaN -> min depth, then the usual metrics
    rows = []
    for i, gt in enumerate(Frames().gts):
        pred = np.full((H, W), 2.0, np.float32)
        if i == 1:
            pred[0, :3], pred[1, :2] = 1e-3, 10.0
        rows.append(_errors(gt[0].numpy().astype(np.float64), pred.astype(np.float64)))
    expect = np.mean(rows, axis=0)
    got = np.array([result.metrics[n] for n in METRIC_NAMES])
    assert np.allclose(got, expect, rtol=1e-5, atol=1e-6)


def test_nonfinite_error_refuses_naming_the_image():
    with pytest.raises(ValueError, match="img1.png.*not finite"):
        _run("error")


def test_metrics_json_records_the_nonfinite_counts(tmp_path):
    result = _run("clamp")
    write_metrics_json(tmp_path / "m.json", result)
    payload = json.loads((tmp_path / "m.json").read_text())
    assert payload["nonfinite_pixels"] == 5 and payload["nonfinite_images"] == 1
    assert payload["count"] == 3


def test_unknown_nonfinite_policy_is_refused():
    with pytest.raises(ValueError, match="clamp, error"):
        _run("ignore")

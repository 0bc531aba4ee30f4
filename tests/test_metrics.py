"""Tests for wordepth.metrics: golden values from the original evaluation and known cases."""
import math

import numpy as np
import pytest
import torch

from wordepth.metrics import (METRIC_NAMES, MetricAccumulator, clamp_prediction, compute_errors,
                              eval_mask, format_metrics, per_image_metrics, uncrop_kb)


def _idx(name: str) -> int:
    return METRIC_NAMES.index(name)


@pytest.fixture(scope="module")
def golden(reference):
    with np.load(reference / "golden_metrics.npz", allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


# ---------------------------------------------------------------- golden data

def test_metric_names_match_reference(golden):
    assert tuple(golden["metric_names"].tolist()) == METRIC_NAMES


def test_nyu_eigen_matches_original(golden):
    gt = torch.from_numpy(golden["nyu_gt_png"].astype(np.float32)) / 1000.0
    pred = torch.from_numpy(golden["nyu_pred"])
    rows = per_image_metrics(pred, gt, min_depth=1e-3, max_depth=10.0, crop="eigen", dataset="nyu")
    assert rows.shape == (2, 9)
    np.testing.assert_allclose(rows.mean(0).numpy(), golden["nyu_eigen_metrics_mean"], rtol=1e-5)


@pytest.mark.parametrize("crop", ["garg", "eigen"])
def test_kitti_matches_original(golden, crop):
    gt = torch.from_numpy(golden["kitti_gt_png"].astype(np.float32)) / 256.0
    pred = torch.from_numpy(golden["kitti_pred"])
    rows = per_image_metrics(pred[:, None], gt[:, None], min_depth=1e-3, max_depth=80.0, crop=crop,
                             dataset="kitti", kb_crop=True)
    np.testing.assert_allclose(rows.mean(0).numpy(), golden[f"kitti_{crop}_metrics_mean"], rtol=1e-5)


def test_kitti_list_of_ground_truths_matches_batch(golden):
    gt = torch.from_numpy(golden["kitti_gt_png"].astype(np.float32)) / 256.0
    pred = torch.from_numpy(golden["kitti_pred"])
    kwargs = dict(min_depth=1e-3, max_depth=80.0, crop="garg", dataset="kitti", kb_crop=True)
    batch = per_image_metrics(pred, gt, **kwargs)
    # Different sizes per image: cut the second ground truth by a few columns.
    gts = [gt[0], gt[1][:, 2:]]
    listed = per_image_metrics(list(pred), gts, **kwargs)
    torch.testing.assert_close(listed[0], batch[0])
    assert listed.shape == (2, 9) and torch.isfinite(listed).all()


# ---------------------------------------------------------------- known values

def test_perfect_prediction_gives_zero_errors():
    gt = torch.tensor([0.5, 1.0, 2.0, 7.0])
    m = compute_errors(gt, gt.clone())
    for name in ("silog", "abs_rel", "log10", "rms", "sq_rel", "log_rms"):
        assert m[_idx(name)].item() == pytest.approx(0.0, abs=1e-12), name
    for name in ("d1", "d2", "d3"):
        assert m[_idx(name)].item() == 1.0


def test_double_prediction_known_values():
    gt = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    m = compute_errors(gt, 2 * gt)
    assert m[_idx("abs_rel")].item() == pytest.approx(1.0)
    assert m[_idx("d1")].item() == 0.0
    assert m[_idx("d2")].item() == 0.0
    assert m[_idx("d3")].item() == 0.0  # ratio 2 > 1.953125
    assert m[_idx("log10")].item() == pytest.approx(math.log10(2))
    assert m[_idx("log_rms")].item() == pytest.approx(math.log(2))
    assert m[_idx("silog")].item() == pytest.approx(0.0, abs=1e-6)  # constant log error
    assert m[_idx("rms")].item() == pytest.approx(math.sqrt((1 + 4 + 16) / 3))
    assert m[_idx("sq_rel")].item() == pytest.approx((1 + 2 + 4) / 3)


def test_mixed_prediction_known_values():
    gt = torch.tensor([1.0, 1.0], dtype=torch.float64)
    pred = torch.tensor([1.2, 1.0 / 1.5], dtype=torch.float64)
    m = compute_errors(gt, pred)
    assert m[_idx("d1")].item() == 0.5  # 1.2 < 1.25, 1.5 is not
    assert m[_idx("d2")].item() == 1.0
    e = np.log([1.2, 1 / 1.5])
    assert m[_idx("silog")].item() == pytest.approx(np.sqrt(np.mean(e ** 2) - np.mean(e) ** 2) * 100)
    assert m[_idx("abs_rel")].item() == pytest.approx((0.2 + 1 / 3) / 2)


def test_compute_errors_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        compute_errors(torch.ones(3), torch.ones(4))


# ---------------------------------------------------------------- clamping, uncrop, mask

def test_clamp_prediction_order():
    pred = torch.tensor([0.0, -1.0, 5.0, 20.0, float("inf"), float("-inf"), float("nan")])
    out = clamp_prediction(pred, 1e-3, 10.0)
    expected = torch.tensor([1e-3, 1e-3, 5.0, 10.0, 10.0, 1e-3, 1e-3])
    torch.testing.assert_close(out, expected)
    assert torch.isnan(pred[-1])  # input untouched


def test_uncrop_kb_offsets():
    pred = torch.arange(1, 7, dtype=torch.float32).reshape(1, 1, 2, 3)
    out = uncrop_kb(pred, (5, 8))
    assert out.shape == (1, 1, 5, 8)
    top, left = 5 - 2, (8 - 3) // 2
    torch.testing.assert_close(out[..., top:, left:left + 3], pred)
    assert out.sum() == pred.sum()
    # KITTI sizes: top = 375 - 352, left = int((1242 - 1216) / 2) = 13.
    full = uncrop_kb(torch.ones(352, 1216), (375, 1242))
    rows, cols = torch.nonzero(full, as_tuple=True)
    assert (rows.min().item(), cols.min().item(), cols.max().item()) == (23, 13, 13 + 1215)
    with pytest.raises(ValueError):
        uncrop_kb(torch.ones(4, 4), (3, 8))


def test_uncrop_then_clamp_outside_pixels_count_as_min_depth():
    gt = torch.full((1, 4, 4), 2.0)
    pred = torch.full((1, 2, 2), 2.0)
    rows = per_image_metrics(pred, gt, min_depth=1.0, max_depth=10.0, crop=None, dataset="kitti",
                             kb_crop=True)
    # 4 of 16 pixels exact; the 12 zeros become min_depth 1.0 (ratio 2).
    assert rows[0, _idx("d1")].item() == pytest.approx(4 / 16)
    assert rows[0, _idx("abs_rel")].item() == pytest.approx(12 * 0.5 / 16)


def test_eval_mask_crops():
    gt = torch.full((480, 640), 5.0)
    gt[0, 0] = 0.0
    gt[100, 100] = 10.0  # not < max
    plain = eval_mask(gt, 1e-3, 10.0, None, "nyu")
    assert plain.sum().item() == 480 * 640 - 2
    nyu = eval_mask(gt, 1e-3, 10.0, "eigen", "nyu")
    assert nyu.sum().item() == (471 - 45) * (601 - 41) - 1
    assert nyu[45, 41] and not nyu[44, 41] and not nyu[45, 601] and nyu[470, 600]

    h, w = 375, 1242
    kitti = torch.full((1, h, w), 5.0)
    garg = eval_mask(kitti, 1e-3, 80.0, "garg", "kitti")[0]
    rows, cols = torch.nonzero(garg, as_tuple=True)
    assert (rows.min().item(), rows.max().item() + 1) == (int(0.40810811 * h), int(0.99189189 * h))
    assert (cols.min().item(), cols.max().item() + 1) == (int(0.03594771 * w), int(0.96405229 * w))
    eigen = eval_mask(kitti, 1e-3, 80.0, "eigen", "kitti")[0]
    rows, cols = torch.nonzero(eigen, as_tuple=True)
    assert (rows.min().item(), rows.max().item() + 1) == (int(0.3324324 * h), int(0.91351351 * h))
    assert (cols.min().item(), cols.max().item() + 1) == (int(0.0359477 * w), int(0.96405229 * w))
    with pytest.raises(ValueError):
        eval_mask(kitti, 1e-3, 80.0, "eigen", "sunrgbd")
    with pytest.raises(ValueError):
        eval_mask(kitti, 1e-3, 80.0, "bogus", "kitti")


# ---------------------------------------------------------------- batch behaviour

def test_batch_equals_one_by_one():
    gen = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 1, 480, 640, generator=gen) * 12
    gt[1, :, ::3] = 0  # sparse-ish
    pred = torch.rand(3, 1, 480, 640, generator=gen) * 12
    pred[2, 0, 100:110, 200:210] = float("nan")
    kwargs = dict(min_depth=1e-3, max_depth=10.0, crop="eigen", dataset="nyu")
    batch = per_image_metrics(pred, gt, **kwargs)
    for i in range(3):
        single = per_image_metrics(pred[i:i + 1], gt[i:i + 1], **kwargs)[0]
        torch.testing.assert_close(batch[i], single)
        mask = eval_mask(gt[i, 0], 1e-3, 10.0, "eigen", "nyu")
        direct = compute_errors(gt[i, 0][mask], clamp_prediction(pred[i, 0], 1e-3, 10.0)[mask])
        torch.testing.assert_close(batch[i], direct)


def test_image_without_valid_pixels_gives_nan_row():
    gt = torch.ones(2, 8, 8)
    gt[1] = 0.0
    rows = per_image_metrics(torch.ones(2, 8, 8), gt, min_depth=1e-3, max_depth=10.0, crop=None,
                             dataset="nyu")
    assert torch.isfinite(rows[0]).all()
    assert torch.isnan(rows[1]).all()


def test_size_mismatch_without_kb_crop_raises():
    with pytest.raises(ValueError, match="kb_crop"):
        per_image_metrics(torch.ones(1, 4, 4), torch.ones(1, 5, 5), min_depth=1e-3, max_depth=10.0,
                          crop=None, dataset="nyu")


# ---------------------------------------------------------------- accumulator, format

def test_accumulator_state_merge_equals_single():
    gen = torch.Generator().manual_seed(1)
    rows = torch.rand(10, 9, generator=gen, dtype=torch.float64)
    rows[3] = float("nan")
    single = MetricAccumulator()
    single.update(rows)
    assert single.count == 9 and single.skipped == 1
    torch.testing.assert_close(single.mean(), torch.cat([rows[:3], rows[4:]]).mean(0))

    ranks = [MetricAccumulator(), MetricAccumulator(), MetricAccumulator()]
    for k, chunk in enumerate(rows.split(4)):
        ranks[k].update(chunk)
    summed = sum(r.state() for r in ranks)  # what all_reduce(SUM) produces
    combined = MetricAccumulator.from_state(summed)
    assert combined.count == single.count
    torch.testing.assert_close(combined.mean(), single.mean())

    merged = ranks[0].merge(ranks[1]).merge(ranks[2])
    torch.testing.assert_close(merged.mean(), single.mean())
    assert merged.skipped == 1

    d = single.as_dict()
    assert list(d) == [*METRIC_NAMES, "count"] and d["count"] == 9
    assert d["rms"] == pytest.approx(single.mean()[_idx("rms")].item())


def test_empty_accumulator_mean_is_nan():
    acc = MetricAccumulator()
    assert torch.isnan(acc.mean()).all()
    assert acc.state().shape == (10,)


def test_format_metrics():
    text = format_metrics([1.0, 0.5, 0.25, 3.0, 0.125, 0.2, 0.9, 0.95, 0.99])
    header, row = text.split("\n")
    assert header == ("  silog, abs_rel,   log10,     rms,  sq_rel, log_rms,      d1,      d2,"
                      "      d3")
    assert row == (" 1.0000,  0.5000,  0.2500,  3.0000,  0.1250,  0.2000,  0.9000,  0.9500,"
                   "  0.9900")
    assert format_metrics(dict(zip(METRIC_NAMES, torch.arange(9.0).tolist()))).endswith("8.0000")
    with pytest.raises(ValueError):
        format_metrics([1.0, 2.0])

"""eval.py on the golden KITTI frames: the original's protocol and the full-frame one.

The ground truths of ../shared/reference/golden_metrics.npz are written as KITTI depth PNGs next to
full-size images; a stand-in network returns the stored 352x1216 predictions. The original
(--eval_only / online evaluation with --do_kb_crop) KB-crops the ground truth like the image and
applies the Garg/Eigen fractions to the 352x1216 map (golden_kitti_online_eval.npz); the full-frame
protocol (--full_frame_eval, BTS eval_with_pngs) pastes the prediction into the full ground truth.
"""
import json

import cv2
import numpy as np
import pytest
import torch

import wordepth.evaluation as engine  # eval_main lives in the evaluation module
from wordepth.cli import eval as eval_cli
from wordepth.data.splits import read_split
from wordepth.data.generated.synthetic import make_synthetic_dataset

NAMES = ["silog", "abs_rel", "log10", "rms", "sq_rel", "log_rms", "d1", "d2", "d3"]


class StoredPredictions(torch.nn.Module):
    """Returns the golden predictions in split order, one image per call."""

    def __init__(self, preds: np.ndarray):
        super().__init__()
        self.preds = torch.from_numpy(preds.astype(np.float32))
        self.calls = 0
        self.cfg = None

    def forward(self, image, text):
        assert image.shape[-2:] == (352, 1216)  # the KB-cropped image
        out = self.preds[self.calls:self.calls + image.shape[0], None]
        self.calls += image.shape[0]
        return out


@pytest.fixture(scope="module")
def golden_frames(reference, tmp_path_factory):
    gm = np.load(reference / "golden_metrics.npz")
    online = np.load(reference / "golden_kitti_online_eval.npz")
    paths = make_synthetic_dataset(tmp_path_factory.mktemp("kitti"), "kitti", n_train=0,
                                   n_test=len(gm["kitti_gt_png"]), seed=5)
    for entry, gt in zip(read_split(paths["test_split"]), gm["kitti_gt_png"]):
        target = paths["gt_path_eval"] / entry.depth.lstrip("/")
        assert cv2.imread(str(target), cv2.IMREAD_UNCHANGED).shape == gt.shape  # 375x1242 frames
        cv2.imwrite(str(target), gt)
    expected = {("original", "garg"): online["kitti_online_garg_metrics_mean"],
                ("original", "eigen"): online["kitti_online_eigen_metrics_mean"],
                ("full_frame", "garg"): gm["kitti_garg_metrics_mean"],
                ("full_frame", "eigen"): gm["kitti_eigen_metrics_mean"]}
    return paths, gm["kitti_pred"], expected


@pytest.mark.parametrize("crop", ["garg", "eigen"])
@pytest.mark.parametrize("protocol", ["original", "full_frame"])
def test_eval_py_kitti_protocols_match_the_golden_means(golden_frames, protocol, crop, tmp_path, monkeypatch):
    paths, preds, expected = golden_frames
    model = StoredPredictions(preds)
    monkeypatch.setattr(engine, "load_training_state", lambda path, **kwargs: {})
    monkeypatch.setattr(engine, "model_from_checkpoint_obj", lambda obj, cfg, path, saved=None: model)
    out = tmp_path / "m.json"
    argv = ["--dataset", "kitti", "--data_path_eval", str(paths["data_path_eval"]),
            "--gt_path_eval", str(paths["gt_path_eval"]), "--filenames_file_eval", str(paths["test_split"]),
            "--text_feat_dir", str(paths["text_feat_dir"]), "--checkpoint_path", "stand-in.pth",
            "--do_kb_crop", f"--{crop}_crop", "--min_depth_eval", "1e-3", "--max_depth_eval", "80",
            "--metrics_json", str(out), "--no_tqdm"]
    if protocol == "full_frame":
        argv.append("--full_frame_eval")
    metrics = eval_cli.main(argv)
    assert model.calls == len(preds)
    np.testing.assert_allclose([metrics[n] for n in NAMES], expected[(protocol, crop)], rtol=1e-5)
    other = expected[("full_frame" if protocol == "original" else "original", crop)]
    assert not np.allclose([metrics[n] for n in NAMES], other, rtol=1e-5)  # the two protocols differ
    recorded = json.loads(out.read_text())["protocol"]
    assert recorded["crop"] == crop and recorded["kb_crop"] is True
    assert recorded["kitti_ground_truth"] == ("full_frame" if protocol == "full_frame" else "kb_cropped (original)")

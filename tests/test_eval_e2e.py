"""eval.py end to end on generated NYU/KITTI data, against the same pipeline computed by hand."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from wordepth.checkpoints import load_checkpoint
from wordepth.cli import eval as eval_entry
from wordepth.data.generated.synthetic import make_synthetic_dataset
from wordepth.models.wordepth import WorDepth, preset_config

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def original_errors(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The original release's compute_errors, written out in numpy."""
    thresh = np.maximum(gt / pred, pred / gt)
    d1, d2, d3 = (thresh < 1.25).mean(), (thresh < 1.25**2).mean(), (thresh < 1.25**3).mean()
    rms = np.sqrt(((gt - pred) ** 2).mean())
    log_rms = np.sqrt(((np.log(gt) - np.log(pred)) ** 2).mean())
    abs_rel = np.mean(np.abs(gt - pred) / gt)
    sq_rel = np.mean(((gt - pred) ** 2) / gt)
    err = np.log(pred) - np.log(gt)
    silog = np.sqrt(np.mean(err**2) - np.mean(err) ** 2) * 100
    log10 = np.mean(np.abs(np.log10(gt) - np.log10(pred)))
    return np.array([silog, abs_rel, log10, rms, sq_rel, log_rms, d1, d2, d3])


def by_hand(model, split, data_root, gt_root, feat_root, dataset, scale, max_depth, crop, kb_crop=False,
            full_frame=True):
    rows = []
    for line in open(split):
        rgb, depth, _ = line.split()
        img = cv2.cvtColor(cv2.imread(str(data_root / rgb.lstrip("/"))), cv2.COLOR_BGR2RGB)
        gt = cv2.imread(str(gt_root / depth.lstrip("/")), cv2.IMREAD_UNCHANGED).astype(np.float32) / scale
        H, W = gt.shape
        if kb_crop:
            top, left = H - 352, (W - 1216) // 2
            img = img[top:top + 352, left:left + 1216]
            if not full_frame:  # the original's online evaluation crops the ground truth alike
                gt = gt[top:top + 352, left:left + 1216]
                H, W = gt.shape
        x = torch.from_numpy(((img.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1))[None]
        feat_file = feat_root / dataset / "test" / (rgb.lstrip("/").rsplit(".", 1)[0] + ".pt")
        feat = torch.load(feat_file, map_location="cpu", weights_only=True).float()
        with torch.no_grad():
            pred = model(x, feat)[0, 0].numpy()
        if kb_crop and full_frame:
            full = np.zeros((H, W), np.float32)
            full[top:top + 352, left:left + 1216] = pred
            pred = full
        pred = pred.copy()
        pred[pred < 1e-3] = 1e-3
        pred[pred > max_depth] = max_depth
        pred[np.isinf(pred)] = max_depth
        pred[np.isnan(pred)] = 1e-3
        valid = (gt > 1e-3) & (gt < max_depth)
        mask = np.zeros_like(valid)
        if crop == "garg":
            mask[int(0.40810811 * H):int(0.99189189 * H), int(0.03594771 * W):int(0.96405229 * W)] = True
        else:
            mask[:] = True
        valid &= mask
        rows.append(original_errors(gt[valid], pred[valid]))
    return np.mean(rows, axis=0)


def eval_argv(paths, dataset, ckpt, out_json, *extra):
    return [
        "--dataset", dataset, "--data_path_eval", str(paths["data_path_eval"]),
        "--gt_path_eval", str(paths["gt_path_eval"]), "--filenames_file_eval", str(paths["test_split"]),
        "--text_feat_dir", str(paths["text_feat_dir"]), "--checkpoint_path", str(ckpt),
        "--metrics_json", str(out_json), "--min_depth_eval", "1e-3", "--no_tqdm", *extra,
    ]


@pytest.fixture(scope="module")
def reference_ckpt(reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "nyu_ref.pth"
    subprocess.run([sys.executable, str(reference / "make_reference_checkpoint.py"), str(out)], check=True,
                   capture_output=True)
    return out


NAMES = ["silog", "abs_rel", "log10", "rms", "sq_rel", "log_rms", "d1", "d2", "d3"]


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["nyu", "kitti"])
def test_eval_py_matches_hand_computation_with_reference_checkpoint(dataset, reference_ckpt, tmp_path):
    """Swin-L release-layout checkpoint, small synthetic images (the APE is resized)."""
    hw = (64, 96) if dataset == "nyu" else (64, 192)
    paths = make_synthetic_dataset(tmp_path, dataset, n_train=0, n_test=3, height=hw[0], width=hw[1], seed=1)
    max_depth, scale, crop = (10.0, 1000.0, None) if dataset == "nyu" else (80.0, 256.0, "garg")
    extra = ["--max_depth_eval", str(max_depth), "--eval_batch_size", "3"]
    if dataset == "kitti":
        extra += ["--garg_crop", "--prior_mean", "2.54", "--max_depth", "80"]
    eval_entry.main(eval_argv(paths, dataset, reference_ckpt, tmp_path / "m.json", *extra))
    got = json.loads((tmp_path / "m.json").read_text())
    model = load_checkpoint(reference_ckpt, prior_mean=2.54 if dataset == "kitti" else 1.54)
    expected = by_hand(model, paths["test_split"], paths["data_path_eval"], paths["gt_path_eval"],
                       paths["text_feat_dir"], dataset, scale, max_depth, crop)
    assert got["count"] == 3
    np.testing.assert_allclose([got[n] for n in NAMES], expected, rtol=1e-4)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = WorDepth(preset_config("tiny", max_depth=80, prior_mean=2.54))
    path = tmp_path_factory.mktemp("tiny") / "tiny.pth"
    torch.save({"format": "wordepth", "config": {"model": model.cfg.to_dict()}, "model": model.state_dict()}, path)
    return path


def test_kitti_kb_crop_paste_back_and_batch_sizes(tiny_ckpt, tmp_path):
    """Full-size KITTI frames: KB crop in, paste back out; batch 1 and batch 4 give the same numbers."""
    paths = make_synthetic_dataset(tmp_path, "kitti", n_train=0, n_test=4, seed=2)  # 375x1242
    base = ["--do_kb_crop", "--garg_crop", "--max_depth_eval", "80", "--full_frame_eval"]
    m1 = eval_entry.main(eval_argv(paths, "kitti", tiny_ckpt, tmp_path / "b1.json", *base))
    m4 = eval_entry.main(eval_argv(paths, "kitti", tiny_ckpt, tmp_path / "b4.json", *base, "--eval_batch_size", "4",
                                   "--per_image_csv", str(tmp_path / "rows.csv")))
    for n in NAMES:
        assert m1[n] == pytest.approx(m4[n], rel=1e-6, abs=1e-9)
    model = load_checkpoint(tiny_ckpt)
    expected = by_hand(model, paths["test_split"], paths["data_path_eval"], paths["gt_path_eval"],
                       paths["text_feat_dir"], "kitti", 256.0, 80.0, "garg", kb_crop=True)
    np.testing.assert_allclose([m1[n] for n in NAMES], expected, rtol=1e-4)
    assert len((tmp_path / "rows.csv").read_text().strip().splitlines()) == 5  # header + 4 images
    # the original's protocol (the default): the ground truth KB-cropped like the image
    m0 = eval_entry.main(eval_argv(paths, "kitti", tiny_ckpt, tmp_path / "b0.json", *base[:-1]))
    expected = by_hand(model, paths["test_split"], paths["data_path_eval"], paths["gt_path_eval"],
                       paths["text_feat_dir"], "kitti", 256.0, 80.0, "garg", kb_crop=True, full_frame=False)
    np.testing.assert_allclose([m0[n] for n in NAMES], expected, rtol=1e-4)
    assert abs(m0["abs_rel"] - m1["abs_rel"]) > 1e-6


@pytest.fixture()
def nyu_small(tmp_path):
    return make_synthetic_dataset(tmp_path / "d", "nyu", n_train=0, n_test=3, height=64, width=96, seed=3)


def _run_expect_error(paths, ckpt, tmp_path, match):
    with pytest.raises(SystemExit) as exc:
        eval_entry.main(eval_argv(paths, "nyu", ckpt, tmp_path / "x.json", "--max_depth_eval", "10"))
    assert exc.value.code != 0 and exc.value.code is not None
    assert match in str(exc.value.code), exc.value.code
    assert not (tmp_path / "x.json").exists()


def test_missing_image_is_a_clear_error(nyu_small, tiny_ckpt, tmp_path):
    first = open(nyu_small["test_split"]).readline().split()[0]
    (nyu_small["data_path_eval"] / first).unlink()
    _run_expect_error(nyu_small, tiny_ckpt, tmp_path, first.split("/")[-1])


def test_missing_feature_is_a_clear_error(nyu_small, tiny_ckpt, tmp_path):
    first = open(nyu_small["test_split"]).readline().split()[0]
    feat = nyu_small["text_feat_dir"] / "nyu" / "test" / (first.rsplit(".", 1)[0] + ".pt")
    feat.unlink()
    _run_expect_error(nyu_small, tiny_ckpt, tmp_path, "wordepth-text extract")


def test_wrong_feature_shape_is_a_clear_error(nyu_small, tiny_ckpt, tmp_path):
    first = open(nyu_small["test_split"]).readline().split()[0]
    feat = nyu_small["text_feat_dir"] / "nyu" / "test" / (first.rsplit(".", 1)[0] + ".pt")
    torch.save(torch.zeros(1, 512, dtype=torch.float16), feat)
    _run_expect_error(nyu_small, tiny_ckpt, tmp_path, "512")


def test_malformed_split_line_is_a_clear_error(nyu_small, tiny_ckpt, tmp_path):
    split = nyu_small["test_split"]
    split.write_text(split.read_text() + "only_two fields\n")
    _run_expect_error(nyu_small, tiny_ckpt, tmp_path, "line 4")


def test_missing_depth_in_eval_is_skipped_and_counted(nyu_small, tiny_ckpt, tmp_path):
    depth = open(nyu_small["test_split"]).readline().split()[1]
    (nyu_small["gt_path_eval"] / depth).unlink()
    m = eval_entry.main(eval_argv(nyu_small, "nyu", tiny_ckpt, tmp_path / "m.json", "--max_depth_eval", "10"))
    assert m["count"] == 2


@pytest.mark.parametrize("trained, evaluated", [("kitti", "nyu"), ("nyu", "kitti")])
def test_a_model_of_one_dataset_evaluated_on_the_other_warns_naming_both(trained, evaluated, tmp_path, capfd):
    """A checkpoint that records a KITTI model on NYU data (or the reverse) gives metrics, with a
    warning naming both datasets; the matching dataset gives none."""
    torch.manual_seed(0)
    settings = {"nyu": dict(max_depth=10, prior_mean=1.54), "kitti": dict(max_depth=80, prior_mean=2.54)}
    model = WorDepth(preset_config("tiny", **settings[trained]))
    ckpt = tmp_path / f"{trained}.pth"
    torch.save({"format": "wordepth", "config": {"model": model.cfg.to_dict()}, "model": model.state_dict()}, ckpt)
    hw = (64, 96) if evaluated == "nyu" else (64, 192)
    paths = make_synthetic_dataset(tmp_path / "data", evaluated, n_train=0, n_test=1, height=hw[0], width=hw[1],
                                   seed=3)
    capfd.readouterr()
    metrics = eval_entry.main(eval_argv(paths, evaluated, ckpt, tmp_path / "m.json"))
    assert metrics["count"] == 1
    warned = [line for line in capfd.readouterr().err.splitlines() if "WARNING" in line and str(ckpt) in line]
    assert len(warned) == 1 and "NYU" in warned[0] and "KITTI" in warned[0]
    paths_same = make_synthetic_dataset(tmp_path / "same", trained, n_train=0, n_test=1,
                                        height=64, width=96 if trained == "nyu" else 192, seed=3)
    eval_entry.main(eval_argv(paths_same, trained, ckpt, tmp_path / "m2.json"))
    assert not [line for line in capfd.readouterr().err.splitlines() if "WARNING" in line and str(ckpt) in line]

"""Synthetic NYU/KITTI data in the original layouts."""
from __future__ import annotations

import zipfile
from collections import defaultdict

import cv2
import numpy as np
import pytest
import torch

from wordepth.cli import synthetic as synthetic_cli
from wordepth.data.splits import join_entry, read_split
from wordepth.data.generated.synthetic import caption_feature, make_synthetic_dataset
from wordepth.data.text_features import feature_path, load_feature_file

@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), "nyu", 12, 4, 96, 128, seed=0)


@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), "kitti", 3, 2, seed=0)


def _files(paths, split):
    data = paths["data_path" if split == "train" else "data_path_eval"]
    gt = paths["gt_path" if split == "train" else "gt_path_eval"]
    entries = read_split(paths[f"{split}_split"])
    return [(e, join_entry(data, e.rgb), join_entry(gt, e.depth)) for e in entries]


def test_nyu_layout_and_files(nyu):
    root = nyu["root"]
    assert nyu["train_split"] == root / "nyu" / "nyudepthv2_train_files_with_gt.txt"
    train, test = _files(nyu, "train"), _files(nyu, "test")
    assert len(train) == 12 and len(test) == 4
    assert all(e.rgb.startswith("/") and e.depth.startswith("/") for e, _, _ in train)
    assert all(not e.rgb.startswith("/") for e, _, _ in test)
    for (e, rgb, dep), split in [(t, "train") for t in train] + [(t, "test") for t in test]:
        assert rgb.suffix == ".jpg" and rgb.name.startswith("rgb_") and dep.name.startswith("sync_depth_")
        assert (root / "nyu" / ("sync" if split == "train" else "official_splits/test")) in rgb.parents
        depth = cv2.imread(str(dep), cv2.IMREAD_UNCHANGED)
        assert depth.dtype == np.uint16 and depth.shape == (96, 128)
        assert depth.min() > 0 and depth.max() < 10000  # dense millimetres within 10 m
        assert cv2.imread(str(rgb)).shape == (96, 128, 3)
        caption = (root / "text" / "nyu" / split / (e.rgb.lstrip("/")[:-4] + ".txt")).read_text()
        assert caption.endswith(".\n") and caption[0].isupper() and caption.count("\n") == 1
        assert feature_path(nyu["text_feat_dir"], "nyu", split, e.rgb).is_file()


def test_kitti_layout_and_sparse_depth(kitti):
    root = kitti["root"]
    for split in ("train", "test"):
        for e, rgb, dep in _files(kitti, split):
            assert e.rgb.startswith("2011_09_26/2011_09_26_drive_") and "/image_02/data/" in e.rgb
            assert e.depth.split("/")[1:4] == ["proj_depth", "groundtruth", "image_02"]
            assert rgb.is_relative_to(root / "kitti" / "raw") and dep.is_relative_to(root / "kitti" / "gt")
            assert e.focal == pytest.approx(721.5377)
            depth = cv2.imread(str(dep), cv2.IMREAD_UNCHANGED)
            assert depth.dtype == np.uint16 and depth.shape == (375, 1242)
            assert 0.05 < (depth > 0).mean() < 0.4 and depth.max() <= 80 * 256
            assert cv2.imread(str(rgb)).shape == (375, 1242, 3)
            assert (root / "text" / "kitti" / split / (e.rgb[:-4] + ".txt")).is_file()
    train_drives = {e.rgb.split("/")[1] for e, _, _ in _files(kitti, "train")}
    test_drives = {e.rgb.split("/")[1] for e, _, _ in _files(kitti, "test")}
    assert not train_drives & test_drives


def test_features_are_cuda_tagged_unit_vectors_of_the_caption(nyu):
    by_caption = defaultdict(list)
    for split in ("train", "test"):
        for e, _, _ in _files(nyu, split):
            path = feature_path(nyu["text_feat_dir"], "nyu", split, e.rgb)
            with zipfile.ZipFile(path) as z:
                assert b"cuda:0" in z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
            raw = torch.load(path, map_location="cpu", weights_only=True)
            assert raw.shape == (1, 1024) and raw.dtype == torch.float16
            feat = load_feature_file(path, 1024)
            assert feat.norm().item() == pytest.approx(1.0, abs=1e-2)
            caption = (nyu["root"] / "text" / "nyu" / split / (e.rgb.lstrip("/")[:-4] + ".txt")).read_text().strip()
            assert torch.equal(feat, caption_feature(caption).float()[0])
            by_caption[caption].append(feat)
    assert len(by_caption) > 1
    firsts = [feats[0] for feats in by_caption.values()]
    assert all(not torch.equal(firsts[0], f) for f in firsts[1:])


def test_identical_captions_give_identical_features():
    a = caption_feature("A bedroom with a bed and a lamp.")
    assert torch.equal(a, caption_feature("A bedroom with a bed and a lamp."))
    assert not torch.equal(a, caption_feature("A kitchen with a table."))
    # shared words make related captions closer than unrelated ones
    near = torch.dot(a.float()[0], caption_feature("A bedroom with a bed.").float()[0])
    far = torch.dot(a.float()[0], caption_feature("Two cars on a highway.").float()[0])
    assert near > far


def test_deterministic_for_a_seed(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", "nyu", 3, 2, 64, 80, seed=7)
    b = make_synthetic_dataset(tmp_path / "b", "nyu", 3, 2, 64, 80, seed=7)
    c = make_synthetic_dataset(tmp_path / "c", "nyu", 3, 2, 64, 80, seed=8)
    assert a["train_split"].read_text() == b["train_split"].read_text()
    files_a = sorted(p.relative_to(a["root"]) for p in a["root"].rglob("*") if p.is_file())
    assert files_a == sorted(p.relative_to(b["root"]) for p in b["root"].rglob("*") if p.is_file())
    for rel in files_a:
        if rel.suffix == ".pt":
            assert torch.equal(load_feature_file(a["root"] / rel), load_feature_file(b["root"] / rel))
        else:
            assert (a["root"] / rel).read_bytes() == (b["root"] / rel).read_bytes(), rel
    first_a = join_entry(a["data_path"], read_split(a["train_split"])[0].rgb).read_bytes()
    first_c = join_entry(c["data_path"], read_split(c["train_split"])[0].rgb)
    assert not first_c.exists() or first_c.read_bytes() != first_a


def test_depth_is_predictable_from_the_image(nyu):
    """Brightness falls with distance, so even a per-pixel rule beats the mean."""
    xs, ys = [], []
    for _, rgb, dep in _files(nyu, "train"):
        xs.append(cv2.imread(str(rgb), cv2.IMREAD_GRAYSCALE).astype(np.float64).ravel())
        ys.append(np.log(cv2.imread(str(dep), cv2.IMREAD_UNCHANGED).astype(np.float64).ravel()))
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert np.corrcoef(x, y)[0, 1] < -0.3
    # the caption's room type sets the scale: per-caption-room mean depths differ
    rooms = defaultdict(list)
    for e, _, dep in _files(nyu, "train"):
        caption = (nyu["root"] / "text" / "nyu" / "train" / (e.rgb[1:-4] + ".txt")).read_text()
        rooms[caption.split(" with ")[0]].append(cv2.imread(str(dep), cv2.IMREAD_UNCHANGED).mean())
    means = [np.mean(v) for v in rooms.values()]
    assert len(means) > 1 and max(means) > 1.3 * min(means)


def test_script_writes_both(tmp_path):
    out = tmp_path / "out"
    args = ["--out", str(out), "--dataset", "both", "--n_train", "2", "--n_test", "1"]
    assert synthetic_cli.main(args + ["--height", "64", "--width", "96", "--no_progress"]) == 0
    assert len(read_split(out / "nyu" / "nyudepthv2_train_files_with_gt.txt")) == 2
    assert len(read_split(out / "kitti" / "eigen_test_files_with_gt.txt")) == 1
    with pytest.raises(SystemExit):
        synthetic_cli.main(["--out", str(out), "--dataset", "diode"])
    with pytest.raises(SystemExit, match="too small"):
        synthetic_cli.main(["--out", str(out), "--height", "4", "--width", "4", "--no_progress"])

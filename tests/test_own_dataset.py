"""A dataset of one's own in one file (docs/data.md, "Your own dataset"), and caption features of another CLIP
model (issue 30, "Extending in one place").

The dataset file is the one docs/data.md shows, taken from the page: RGB JPEGs, depth as ``.npy`` in metres,
one caption (and its feature) per image. It trains the tiny preset for 2 steps and evaluates, in-process.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from wordepth.cli import eval as eval_cli
from wordepth.cli import train as train_cli
from wordepth.data import build_dataset, dataset_names
from wordepth.data.depth_png import read_depth, read_depth_npy
from wordepth.data.generated.synthetic import caption_feature, make_synthetic_dataset
from wordepth.data.registry import UnknownDatasetError, import_datasets, register_dataset, registered, unregister_dataset
from wordepth.data.splits import SplitDataset
from wordepth.data.text_features import FeatureWidthError, feature_path, make_cuda_tagged_file
from wordepth.errors import UserError
from wordepth.models.wordepth import WorDepth, WorDepthConfig, preset_config

DOCS = Path(__file__).resolve().parents[1] / "docs" / "data.md"
HW = (48, 64)  # the docs' MINE.full_hw


def docs_dataset_file(folder: Path) -> Path:
    """The Python block of docs/data.md's "Your own dataset" section, as the file a user writes."""
    section = DOCS.read_text(encoding="utf-8").split("## Your own dataset", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    path = folder / "mine.py"
    path.write_text(code, encoding="utf-8")
    return path


@pytest.fixture
def mine(tmp_path, monkeypatch):
    """docs/data.md's dataset registered (and forgotten after the test), with 6 training and 2 test images:
    depth .npy in metres (a ramp from 1 to 15 m, NaN and 0 where unmeasured), captions and 1024-d features."""
    monkeypatch.syspath_prepend(str(docs_dataset_file(tmp_path).parent))  # as PYTHONPATH=folder
    sys.modules.pop("mine", None)  # imported by an earlier test (the docs page's example): run this copy
    import_datasets("mine")
    root = tmp_path / "mine_data"
    rng = np.random.default_rng(0)
    lines = {"train": [], "test": []}
    for split, n in (("train", 6), ("test", 2)):
        for i in range(n):
            rgb, dep = f"scene_{i // 2:02d}/rgb_{i:04d}.jpg", f"scene_{i // 2:02d}/depth_{i:04d}.npy"
            depth = np.tile(np.linspace(1.0, 15.0, HW[1], dtype=np.float32), (HW[0], 1)) * (1 + 0.1 * i)
            depth[:4] = np.nan
            depth[-4:] = 0.0
            shade = np.nan_to_num(depth, nan=0.0)[..., None] * 15 + rng.integers(0, 40, (*HW, 3))
            image = np.clip(shade, 0, 255).astype(np.uint8)
            (root / split / rgb).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / split / rgb), image)
            np.save(root / split / dep, depth)
            caption = f"A corridor number {i} with a door."
            (tmp_path / "text" / "mine" / split / rgb).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "text" / "mine" / split / rgb).with_suffix(".txt").write_text(caption + "\n")
            make_cuda_tagged_file(feature_path(tmp_path / "text_feat", "mine", split, rgb), caption_feature(caption))
            lines[split].append(f"{rgb} {dep} 500.0")
    for split in lines:
        (tmp_path / f"mine_{split}.txt").write_text("".join(line + "\n" for line in lines[split]))
    yield {"root": root, "dir": tmp_path, "train_split": tmp_path / "mine_train.txt",
           "test_split": tmp_path / "mine_test.txt", "text_feat_dir": tmp_path / "text_feat"}
    unregister_dataset("mine")
    sys.modules.pop("mine", None)  # the next test imports its own copy


def mine_argv(m: dict, *extra) -> list[str]:
    return ["--dataset", "mine", "--data_path", str(m["root"] / "train"), "--gt_path", str(m["root"] / "train"),
            "--filenames_file", str(m["train_split"]), "--data_path_eval", str(m["root"] / "test"),
            "--gt_path_eval", str(m["root"] / "test"), "--filenames_file_eval", str(m["test_split"]),
            "--text_feat_dir", str(m["text_feat_dir"]), "--num_threads", "0", "--no_tqdm", *map(str, extra)]


def test_the_docs_dataset_file_registers_mine_with_its_facts(mine):
    assert "mine" in dataset_names() and {"nyu", "kitti"} <= set(dataset_names())
    ds = build_dataset("mine", "train", split_file=mine["train_split"], data_path=mine["root"] / "train",
                       gt_path=mine["root"] / "train", text_feat_dir=mine["text_feat_dir"], seed=0,
                       feature_dim=WorDepthConfig.text_dim)
    assert ds.facts.max_depth == 20.0 and ds.input_hw == HW  # the docs' facts: train_hw is the default crop
    sample = ds[0]
    depth = np.load(mine["root"] / "train" / ds.entries[0].depth)
    measured = sample["depth"][0][sample["depth"][0] > 0]
    # read as metres (no PNG scale), NaN and 0 unmeasured: the values are the file's, whatever the flip
    assert 4 * HW[1] * 2 <= int((sample["depth"] == 0).sum()) and measured.numel() > 0
    assert set(np.round(measured.numpy(), 4)) <= set(np.round(depth[np.isfinite(depth) & (depth > 0)], 4))
    assert sample["text_feature"].shape == (WorDepthConfig.text_dim,)


def test_a_dataset_of_ones_own_trains_and_evaluates_end_to_end(mine, tmp_path):
    runs = tmp_path / "runs"
    train_cli.main(mine_argv(mine, "--preset", "tiny", "--input_height", HW[0], "--input_width", HW[1],
                             "--batch_size", 2, "--max_steps", 2, "--learning_rate", 1e-3, "--log_directory", runs,
                             "--model_name", "mine_run", "--log_freq", 1))
    run_dir = runs / "mine_run"
    assert (run_dir / "last.pth").is_file()
    out = tmp_path / "metrics.json"
    metrics = eval_cli.main(mine_argv(mine, "--checkpoint_path", run_dir / "last.pth", "--metrics_json", out))
    written = json.loads(out.read_text())
    assert written["count"] == 2 and metrics["count"] == 2
    assert np.isfinite(written["abs_rel"]) and written["abs_rel"] > 0
    # the dataset's facts reached the network and the protocol: max depth 20 m, prior mean 2.0
    assert written["protocol"]["max_depth_eval"] == 20.0 and written["protocol"]["dataset"] == "mine"
    net = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=True)["config"]["model"]
    assert (net["max_depth"], net["prior_mean"]) == (20.0, 2.0)


def test_check_data_reads_npy_depth_and_reports_a_depth_map_of_the_wrong_size(mine, capsys):
    bad = mine["root"] / "train" / "scene_00" / "depth_0001.npy"
    np.save(bad, np.ones((5, 5), np.float32))
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(mine_argv(mine, "--check_data"))
    assert exit_info.value.code == 1
    report = capsys.readouterr().out
    assert "train:line 2: " in report and str(bad) in report and "5x5, its image 48x64" in report
    assert "train:line 1" not in report  # the .npy maps in metres are fine


def test_features_of_another_clip_model_train_by_a_flag_and_the_checkpoint_records_it(tmp_path):
    data = make_synthetic_dataset(tmp_path / "d", "nyu", 4, 2, 64, 96, seed=0, text_dim=512)
    runs = tmp_path / "runs"
    argv = ["--preset", "tiny", "--dataset", "nyu", "--data_path", data["data_path"], "--gt_path", data["gt_path"],
            "--filenames_file", data["train_split"], "--text_feat_dir", data["text_feat_dir"], "--input_height", 64,
            "--input_width", 96, "--batch_size", 2, "--max_steps", 2, "--log_directory", runs, "--model_name", "vit",
            "--num_threads", 0, "--no_tqdm", "--clip_model", "ViT-B-32"]
    train_cli.main([str(a) for a in argv])  # the width (512) comes from open_clip's ViT-B-32 config
    net = torch.load(runs / "vit" / "last.pth", map_location="cpu", weights_only=True)["config"]["model"]
    assert (net["clip_model"], net["text_dim"]) == ("ViT-B-32", 512)
    metrics = eval_cli.main([str(a) for a in [
        "--dataset", "nyu", "--data_path_eval", data["data_path_eval"], "--gt_path_eval", data["gt_path_eval"],
        "--filenames_file_eval", data["test_split"], "--text_feat_dir", data["text_feat_dir"],
        "--checkpoint_path", runs / "vit" / "last.pth", "--num_threads", 0, "--no_tqdm"]])
    assert metrics["count"] == 2


def test_a_dataset_reading_features_of_another_width_is_refused_before_any_sample(tmp_path):
    data = make_synthetic_dataset(tmp_path / "d", "nyu", 2, 1, 32, 48, seed=0, text_dim=512)
    with pytest.raises(FeatureWidthError, match=r"holds 512-d text features, but the model takes 1024-d ones"):
        build_dataset("nyu", "train", split_file=data["train_split"], data_path=data["data_path"],
                      gt_path=data["gt_path"], text_feat_dir=data["text_feat_dir"], feature_dim=1024)
    ds = build_dataset("nyu", "train", split_file=data["train_split"], data_path=data["data_path"],
                       gt_path=data["gt_path"], text_feat_dir=data["text_feat_dir"], feature_dim=512,
                       input_height=24, input_width=32, seed=0)
    assert ds[0]["text_feature"].shape == (512,)


# --------------------------------------------------------------------------- the predictor without a caption
def _predictor(cfg: WorDepthConfig, **kwargs):
    from wordepth.inference.predictor import Predictor

    torch.manual_seed(0)
    return Predictor(WorDepth(cfg), device="cpu", **kwargs)


def test_predictor_of_another_width_without_a_caption_is_one_clear_error():
    predictor = _predictor(preset_config("tiny", clip_model="ViT-B-32", text_dim=512))
    photo = np.full((32, 48, 3), 128, np.uint8)
    with pytest.raises(FeatureWidthError, match=r"shipped mean caption features are CLIP RN50's \(1024-d\).*"
                                                r"512-d ViT-B-32.*--mean_features"):
        predictor.infer(photo)
    depth = predictor.infer(photo, torch.randn(512))  # a feature of its width works
    assert depth.shape == (32, 48) and np.isfinite(depth).all()
    with pytest.raises(FeatureWidthError, match=r"1024 values, the model takes 512 \(CLIP ViT-B-32"):
        predictor.infer(photo, torch.randn(1024))


def test_predictor_uses_a_mean_file_of_its_width_and_refuses_one_of_another(tmp_path):
    from wordepth.data.text_features import write_mean_features

    mean = torch.nn.functional.normalize(torch.randn(512), dim=0)
    write_mean_features(tmp_path / "m512.pt", "nyu", "train", mean, 10)
    predictor = _predictor(preset_config("tiny", clip_model="ViT-B-32", text_dim=512),
                           mean_features=tmp_path / "m512.pt")
    photo = np.full((32, 48, 3), 128, np.uint8)
    np.testing.assert_allclose(predictor.infer(photo), predictor.infer(photo, mean), rtol=0, atol=0)
    write_mean_features(tmp_path / "m256.pt", "nyu", "train", torch.randn(256), 10)
    other = _predictor(preset_config("tiny", clip_model="ViT-B-32", text_dim=512), mean_features=tmp_path / "m256.pt")
    with pytest.raises(FeatureWidthError, match=r"m256.pt holds a 256-d mean feature while this model takes 512-d"):
        other.infer(photo)


# --------------------------------------------------------------------------- the registry
def test_an_unknown_dataset_names_the_registered_ones_and_how_to_add_one():
    with pytest.raises(UnknownDatasetError, match=r"unknown dataset 'mine2': registered are kitti, nyu.*"
                                                  r"docs/data.md, 'Your own dataset'"):
        build_dataset("mine2", "train", split_file="x", data_path="x", gt_path="x", text_feat_dir="x")


def test_two_datasets_of_one_name_are_refused():
    from wordepth.data.facts import NYU

    class OtherNYU(SplitDataset):
        facts = NYU

    with pytest.raises(UserError, match=r"two datasets are called 'nyu'"):
        register_dataset(OtherNYU)
    with pytest.raises(TypeError, match="facts must be a DatasetFacts"):
        register_dataset(type("NoFacts", (SplitDataset,), {}))


def test_registered_is_scoped_and_the_text_pipeline_warns_about_other_names(caplog):
    from wordepth.data.facts import DatasetFacts
    from wordepth.data.registry import unregistered_note

    class Scoped(SplitDataset):
        facts = DatasetFacts("scoped", max_depth=5.0, prior_mean=1.0, focal=100.0, full_hw=(8, 8), train_hw=(8, 8))

    assert unregistered_note("scoped") is not None and "docs/data.md" in unregistered_note("scoped")
    with registered(Scoped):
        assert "scoped" in dataset_names() and unregistered_note("scoped") is None
    assert "scoped" not in dataset_names()
    assert unregistered_note("sunrgbd") is None  # a zero-shot set's features are read by wordepth-eval-zeroshot
    with pytest.raises(UserError, match="plain folder name"):
        unregistered_note("../elsewhere")


# --------------------------------------------------------------------------- depth files
def test_npy_depth_maps_are_metres_with_unmeasured_pixels_zero(tmp_path):
    values = np.array([[1.5, np.nan], [-2.0, np.inf]], np.float32)
    np.save(tmp_path / "d.npy", values[..., None])  # (H, W, 1) as DIODE stores it
    np.testing.assert_array_equal(read_depth(tmp_path / "d.npy", None), [[1.5, 0.0], [0.0, 0.0]])
    np.save(tmp_path / "rgb.npy", np.zeros((2, 2, 3), np.float32))
    with pytest.raises(UserError, match=r"shape \(2, 2, 3\), expected \(H, W\) metres"):
        read_depth_npy(tmp_path / "rgb.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="obj.npy"):
        read_depth_npy(tmp_path / "obj.npy")
    cv2.imwrite(str(tmp_path / "d.png"), np.full((2, 2), 1500, np.uint16))
    np.testing.assert_allclose(read_depth(tmp_path / "d.png", 1000.0), 1.5)
    with pytest.raises(UserError, match="declare no depth_png_scale|declares no depth_png_scale"):
        read_depth(tmp_path / "d.png", None)

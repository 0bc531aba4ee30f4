"""wordepth-predict (wordepth/inference/files.py) and wordepth-compare (wordepth/compare.py) with a tiny model."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from wordepth import compare
from wordepth.inference import files as predict
from wordepth import visualize as vis
from wordepth.checkpoints import load_checkpoint
from wordepth.cli import compare as compare_cli
from wordepth.cli import predict as predict_cli
from wordepth.models.wordepth import WorDepth, preset_config
from wordepth.inference import predictor as predictor_module
from wordepth.inference.predictor import Predictor

FOCAL = 100.0


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny checkpoint (this project's layout), two synthetic images, a text feature file."""
    d = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = WorDepth(preset_config("tiny"))
    ckpt = d / "tiny.pth"
    torch.save({"format": "wordepth", "config": {"model": model.cfg.to_dict()}, "model": model.state_dict()}, ckpt)
    rng = np.random.default_rng(0)
    images = d / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    yy, xx = np.mgrid[0:50, 0:70]
    cv2.imwrite(str(images / "b.png"), np.stack([xx * 3, yy * 4, xx + yy], -1).astype(np.uint8))
    feat = d / "feat.pt"
    torch.save(torch.nn.functional.normalize(torch.randn(1, 1024), dim=-1).half(), feat)
    return {"dir": d, "ckpt": ckpt, "images": images, "feat": feat}


@pytest.fixture(scope="module")
def run_out(assets):
    """One run: a folder of two images, point clouds, three prior samples."""
    out = assets["dir"] / "out"
    assert predict_cli.main(["--checkpoint", str(assets["ckpt"]), "--images", str(assets["images"]),
                         "--text_feature", str(assets["feat"]), "--out", str(out), "--ply",
                         "--focal", str(FOCAL), "--batch_size", "2", "--prior", "3", "--seed", "5",
                         "--device", "cpu"]) == 0
    return out


def _rgb(path: Path) -> np.ndarray:
    return cv2.imread(str(path))[..., ::-1]


def test_outputs_exist_and_png_matches_npy(assets, run_out):
    for stem, hw in (("a", (40, 56)), ("b", (50, 70))):
        depth = np.load(run_out / f"{stem}_depth.npy")
        assert depth.shape == hw and depth.dtype == np.float32
        assert np.isfinite(depth).all() and (depth > 0).all()
        png = cv2.imread(str(run_out / f"{stem}_depth.png"), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and png.shape == hw
        assert np.abs(png.astype(np.float64) / 1000 - depth).max() <= 0.001  # within 1 mm
        colour = cv2.imread(str(run_out / f"{stem}_depth_color.png"))
        assert colour.shape[0] == hw[0] and colour.shape[1] > hw[1]  # colour bar on the right
    assert not (run_out / "a_caption.txt").exists()  # a precomputed feature has no caption


def test_prediction_equals_the_model_on_the_normalised_image(assets, run_out):
    model = load_checkpoint(assets["ckpt"])
    rgb = cv2.imread(str(assets["images"] / "b.png"))[..., ::-1]
    x = (torch.from_numpy(rgb.copy()).float().permute(2, 0, 1) / 255
         - torch.tensor(vis.IMAGENET_MEAN)[:, None, None]) / torch.tensor(vis.IMAGENET_STD)[:, None, None]
    text = torch.load(assets["feat"], weights_only=True).float()
    with torch.no_grad():
        ref = model(x[None], text)[0, 0].numpy()
    np.testing.assert_allclose(np.load(run_out / "b_depth.npy"), ref, rtol=1e-4, atol=1e-5)


def test_point_cloud_follows_the_pinhole_model(assets, run_out):
    depth = np.load(run_out / "b_depth.npy")
    H, W = depth.shape
    head, body = (run_out / "b.ply").read_bytes().split(b"end_header\n", 1)
    assert f"element vertex {H * W}".encode() in head
    rec = np.frombuffer(body, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"),
                                     ("b", "u1")])
    assert rec.shape == (H * W,)
    v, u = 7, 60
    z = depth[v, u]
    p = rec[v * W + u]
    np.testing.assert_allclose([p["x"], p["y"], p["z"]],
                               [(u - W / 2) * z / FOCAL, (v - H / 2) * z / FOCAL, z], rtol=1e-5)
    rgb = _rgb(assets["images"] / "b.png")
    assert (p["r"], p["g"], p["b"]) == tuple(rgb[v, u])


def test_prior_samples_are_seeded(assets, run_out, tmp_path):
    maps = [np.load(run_out / f"prior_{i}.npy") for i in range(3)]
    cfg = preset_config("tiny")
    assert maps[0].shape == tuple(4 * g for g in cfg.backbone.ape_grid)  # the training size, 96x128
    assert not np.allclose(maps[0], maps[1])  # K different samples
    assert (run_out / "prior_grid.png").is_file() and (run_out / "prior_0.png").is_file()
    common = ["--checkpoint", str(assets["ckpt"]), "--text_feature", str(assets["feat"]), "--prior", "2",
              "--prior_size", "40x72", "--device", "cpu", "--batch_size", "2"]
    for name, seed in (("s5", "5"), ("s5a", "5"), ("s6", "6")):
        predict_cli.main(common + ["--seed", seed, "--out", str(tmp_path / name)])
    a = np.load(tmp_path / "s5" / "prior_0.npy")
    assert a.shape == (40, 72)
    for i in range(2):  # same seed: identical samples
        np.testing.assert_array_equal(np.load(tmp_path / "s5" / f"prior_{i}.npy"),
                                      np.load(tmp_path / "s5a" / f"prior_{i}.npy"))
    assert not np.allclose(a, np.load(tmp_path / "s6" / "prior_0.npy"))
    assert not (tmp_path / "s5" / "a_depth.npy").exists()


def test_caption_is_encoded_and_written(assets, tmp_path, monkeypatch):
    seen = []

    def fake_encode(self, captions):
        seen.extend(captions)
        g = torch.Generator().manual_seed(1)
        return torch.stack([torch.randn(1024, generator=g) for _ in captions])

    monkeypatch.setattr(Predictor, "encode", fake_encode)
    out = tmp_path / "cap"
    caption = "a bedroom with a stand and a bed"
    predict_cli.main(["--checkpoint", str(assets["ckpt"]), "--images", str(assets["images"] / "a.png"),
                  "--caption", caption, "--out", str(out), "--prior", "2"])
    assert set(seen) == {caption}
    assert (out / "a_caption.txt").read_text().strip() == caption
    grid = cv2.imread(str(out / "prior_grid.png"))
    assert grid is not None and grid.shape[0] > 96  # title strip above the samples


def test_auto_caption_captions_each_image(assets, tmp_path, monkeypatch):
    pytest.importorskip("open_clip")
    monkeypatch.setattr(predictor_module, "load_captioner",
                        lambda **kw: (torch.nn.Identity(), lambda img: torch.zeros(3, 8, 8)))
    monkeypatch.setattr(predictor_module, "generate_captions",
                        lambda model, pixels, tok: [f"A picture number {i}." for i in range(len(pixels))])
    encoded = []
    monkeypatch.setattr(Predictor, "encode",
                        lambda self, caps: encoded.extend(caps) or torch.ones(len(caps), 1024))
    out = tmp_path / "auto"
    predict_cli.main(["--checkpoint", str(assets["ckpt"]), "--images", str(assets["images"]), "--auto_caption",
                  "--batch_size", "2", "--out", str(out)])
    assert (out / "a_caption.txt").read_text().strip() == "A picture number 0."
    assert (out / "b_caption.txt").read_text().strip() == "A picture number 1."
    assert sorted(set(encoded)) == ["A picture number 0.", "A picture number 1."]


def test_caption_file_folder_per_image(assets, tmp_path, monkeypatch):
    monkeypatch.setattr(Predictor, "encode",
                        lambda self, caps: torch.stack([torch.full((1024,), float(len(c)) / 100) for c in caps]))
    caps = tmp_path / "captions"
    caps.mkdir()
    (caps / "a.txt").write_text("a kitchen.\n")
    (caps / "b.txt").write_text("a long corridor with doors.\n")
    out = tmp_path / "o"
    predict_cli.main(["--checkpoint", str(assets["ckpt"]), "--images", str(assets["images"]),
                  "--caption_file", str(caps), "--out", str(out)])
    assert (out / "b_caption.txt").read_text().strip() == "a long corridor with doors."
    (caps / "b.txt").unlink()
    with pytest.raises(SystemExit, match="caption file not found"):
        predict_cli.main(["--checkpoint", str(assets["ckpt"]), "--images", str(assets["images"]),
                      "--caption_file", str(caps), "--out", str(out)])


def test_folders_are_searched_recursively_and_mirrored(assets, tmp_path):
    photos = tmp_path / "photos"
    for rel in ("room2/deep/c.png", "a.png", "room1/a.png"):
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(assets["images"] / "a.png", photos / rel)
    out = tmp_path / "o"
    base = ["--checkpoint", str(assets["ckpt"]), "--text_feature", str(assets["feat"]), "--out", str(out)]
    assert predict_cli.main(base + ["--images", str(photos)]) == 0
    for stem in ("a", "room1/a", "room2/deep/c"):
        assert (out / f"{stem}_depth.npy").is_file() and (out / f"{stem}_depth_color.png").is_file(), stem
    np.testing.assert_array_equal(np.load(out / "a_depth.npy"), np.load(out / "room1" / "a_depth.npy"))
    assert [it.stem for it in predict.collect_items([str(photos)])] == ["a", "room1/a", "room2/deep/c"]  # sorted
    with pytest.raises(SystemExit, match="share the name a"):  # both would write a_*
        predict_cli.main(base + ["--images", str(photos / "a.png"), str(photos / "room1" / "a.png")])


def test_caption_without_clip_weights_offline_is_a_clear_error(assets, tmp_path, monkeypatch):
    pytest.importorskip("open_clip")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(empty / "hub"))
    monkeypatch.setenv("HF_HOME", str(empty))
    monkeypatch.setenv("HOME", str(empty))  # open_clip's ~/.cache/clip
    with pytest.raises(SystemExit) as exc:
        predict_cli.main(["--checkpoint", str(assets["ckpt"]), "--images", str(assets["images"] / "a.png"),
                      "--caption", "a room", "--out", str(tmp_path / "o")])
    msg = str(exc.value)
    assert msg.startswith("error:") and "CLIP" in msg and "--text_feature" in msg and "\n" not in msg
    assert not (tmp_path / "o").exists()  # failed before writing anything


@pytest.mark.parametrize("extra, match", [
    (["--ply"], "focal"),
    ([], "nothing to do"),
    (["--batch_size", "0"], "batch_size"),
])
def test_user_mistakes_are_one_line_errors(assets, tmp_path, extra, match):
    argv = ["--checkpoint", str(assets["ckpt"]), "--text_feature", str(assets["feat"]), "--out", str(tmp_path)]
    if match != "nothing to do":
        argv += ["--images", str(assets["images"])]
    with pytest.raises(SystemExit, match=match):
        predict_cli.main(argv + extra)


def test_missing_inputs_and_wrong_feature_size(assets, tmp_path):
    base = ["--text_feature", str(assets["feat"]), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit, match="checkpoint not found"):
        predict_cli.main(["--checkpoint", str(tmp_path / "none.pth"), "--images", str(assets["images"])] + base)
    with pytest.raises(SystemExit, match="image not found"):
        predict_cli.main(["--checkpoint", str(assets["ckpt"]), "--images", str(tmp_path / "x.png")] + base)
    bad = tmp_path / "bad.pt"
    torch.save(torch.zeros(1, 512).half(), bad)
    with pytest.raises(SystemExit, match="the model takes 1024 \\(CLIP RN50"):
        predict_cli.main(["--checkpoint", str(assets["ckpt"]), "--images", str(assets["images"]),
                      "--text_feature", str(bad), "--out", str(tmp_path / "o")])
    ckpt = ["--checkpoint", str(assets["ckpt"])]
    with pytest.raises(SystemExit, match="legacy"):
        predict_cli.main(ckpt + ["--legacy", "--prior", "1"] + base)
    with pytest.raises(SystemExit, match="352x1216"):
        predict_cli.main(ckpt + ["--kb_crop", "--images", str(assets["images"])] + base)


# --------------------------------------------------------------------------- compare_metrics
def test_compare_metrics_chart_and_table(tmp_path, capsys):
    a = {"silog": 9.25, "abs_rel": 0.088, "log10": 0.038, "rms": 0.317, "sq_rel": 0.045, "log_rms": 0.113,
         "d1": 0.932, "d2": 0.992, "d3": 0.998, "count": 654}
    b = {**a, "abs_rel": 0.095, "d1": 0.921, "rms": 0.301}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps({"metrics": b}))
    chart, table = tmp_path / "chart.png", tmp_path / "table.md"
    assert compare_cli.main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--labels", "paper", "ours",
                    "--out", str(chart), "--markdown", str(table)]) == 0
    img = cv2.imread(str(chart))
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 400
    # both bar colours are drawn
    for colour in compare.PALETTE[:2]:
        assert (np.abs(img[..., ::-1].astype(int) - colour).sum(-1) == 0).sum() > 100
    md = table.read_text()
    lines = md.strip().splitlines()
    assert len(lines) == 4 and lines[2].startswith("| paper |") and lines[3].startswith("| ours |")
    assert "**0.0880**" in lines[2] and "**0.3010**" in lines[3]  # best abs_rel / rms in bold
    assert "654" in lines[2]
    assert md in capsys.readouterr().out
    with pytest.raises(SystemExit, match="labels"):
        compare_cli.main([str(tmp_path / "a.json"), "--labels", "x", "y"])
    (tmp_path / "c.json").write_text(json.dumps({"foo": 1}))
    with pytest.raises(SystemExit, match="none of the metrics"):
        compare_cli.main([str(tmp_path / "c.json")])

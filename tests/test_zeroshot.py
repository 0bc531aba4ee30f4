"""Zero-shot evaluation: SUN RGB-D, iBims-1 and DIODE in their real file formats, the published
protocols, the alignment modes and the wordepth-eval-zeroshot command on the tiny model."""
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from wordepth.checkpoints import project_to_original
from wordepth.cli import zeroshot as zeroshot_cli
from wordepth.data.check import check_zeroshot
from wordepth.data.transforms import image_to_tensor
from wordepth.zeroshot.data import (ZeroShotDataError, build_zeroshot_dataset, decode_sunrgbd_depth,
                                    read_ibims_mat)
from wordepth.data.generated.zeroshot_fixtures import encode_sunrgbd_depth, make_zeroshot_fixtures
from wordepth.data.facts import ZEROSHOT_DATASETS, zeroshot_facts
from wordepth.metrics import METRIC_NAMES
from wordepth.models.wordepth import WorDepth, preset_config
from wordepth.zeroshot.evaluate import (align_least_squares, align_median, align_prediction, image_metrics, load_model,
                               predict_depth)

HW = (96, 128)


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_zeroshot_fixtures(tmp_path_factory.mktemp("zeroshot"), n=2, hw=HW, seed=0)


def original_errors(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The nine metrics written out in numpy (the original release's compute_errors)."""
    thresh = np.maximum(gt / pred, pred / gt)
    err = np.log(pred) - np.log(gt)
    return np.array([
        np.sqrt(np.mean(err ** 2) - np.mean(err) ** 2) * 100, np.mean(np.abs(gt - pred) / gt),
        np.mean(np.abs(np.log10(gt) - np.log10(pred))), np.sqrt(np.mean((gt - pred) ** 2)),
        np.mean((gt - pred) ** 2 / gt), np.sqrt(np.mean(err ** 2)),
        (thresh < 1.25).mean(), (thresh < 1.25 ** 2).mean(), (thresh < 1.25 ** 3).mean()])


# --------------------------------------------------------------------------- file formats and loaders


def test_sunrgbd_depth_bits_are_rotated_as_distributed():
    # 9500 mm = 0b0010_0101_0001_1100: rotated left by 3 it is stored as 10465 (the top bit wraps around)
    assert int(encode_sunrgbd_depth(np.array([9500]))[0]) == 10465
    stored = np.array([[10465, 8 * 1234], [0, 7]], np.uint16)  # 7 = 0b111: all three low bits move to the top
    expected = np.array([[9500, 1234], [0, (7 << 13) & 0xFFFF]], np.float32) / np.float32(1000)
    np.testing.assert_array_equal(decode_sunrgbd_depth(stored), expected)


def test_fixture_files_have_the_distributed_formats(fx):
    root = fx["data_root"]
    split = (root / "sunrgbd" / "SUNRGBD_val_splits.txt").read_text().split("\n")[0].split()
    assert len(split) == 2 and split[0].endswith(".jpg") and "/depth/" in split[1]  # the toolbox's two fields
    png = cv2.imread(str(root / "sunrgbd" / split[1]), cv2.IMREAD_UNCHANGED)
    assert png.dtype == np.uint16 and png.ndim == 2 and png[0, 0] == 10465  # 9.5 m as stored
    mats = sorted((root / "ibims" / "ibims1_core_mat").glob("*.mat"))
    assert mats and all(m.read_bytes().startswith(b"MATLAB 5.0 MAT-file") for m in mats)
    assert (root / "ibims" / "imagelist.txt").read_text().split() == [m.stem for m in mats]
    depth = next((root / "diode" / "val" / "indoors").rglob("*_depth.npy"))
    assert np.load(depth).shape == (*HW, 1)
    assert np.load(str(depth).replace("_depth.npy", "_depth_mask.npy")).shape == HW


@pytest.mark.parametrize("name", sorted(ZEROSHOT_DATASETS))
def test_loaders_return_the_known_depth_exactly(fx, name):
    ds = build_zeroshot_dataset(name, fx["data_root"], fx["text_feat_dir"])
    assert len(ds) == len(fx[name]) == 2
    for i in range(len(ds)):
        sample = ds[i]
        known = fx[name][sample["path"]]
        assert set(sample) >= {"image", "depth", "valid_mask", "text_feature", "has_valid_depth", "path", "focal"}
        assert sample["image"].shape == (3, *HW) and sample["image"].dtype == torch.float32
        assert sample["depth"].shape == (1, *HW) and sample["text_feature"].shape == (1024,)
        np.testing.assert_array_equal(sample["depth"][0].numpy(), known["depth"])
        np.testing.assert_array_equal(sample["valid_mask"][0].numpy(), known["mask"])
        if name == "ibims":
            torch.testing.assert_close(sample["image"], image_to_tensor(known["rgb"]), rtol=0, atol=0)
            assert sample["focal"] == known["focal"]
    if name == "sunrgbd":
        assert max(float(ds[i]["depth"].max()) for i in range(len(ds))) == pytest.approx(9.5)  # wrapped bits undone


def test_ibims_mat_fields_and_v73_refusal(fx, tmp_path):
    mat = next((fx["data_root"] / "ibims" / "ibims1_core_mat").glob("*.mat"))
    data = read_ibims_mat(mat)
    assert data["rgb"].dtype == np.uint8 and data["depth"].dtype == np.float32 and data["calib"].shape == (3, 3)
    fake73 = tmp_path / "x.mat"  # an HDF5 (v7.3) file starts with this header; scipy cannot read it
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116, b" ") + bytes(8) + b"\x00\x02IM"
    fake73.write_bytes(header + b"\x89HDF\r\n\x1a\n" + bytes(64))
    with pytest.raises(ValueError, match="MATLAB v7.3 file"):
        read_ibims_mat(fake73)


def test_image_items_for_the_caption_pipeline(fx, tmp_path):
    ibims = build_zeroshot_dataset("ibims", fx["data_root"], fx["text_feat_dir"])
    items = ibims.image_items(tmp_path / "export")
    for key, path in items:  # exported from the .mat, losslessly, named by the key
        assert path.name == f"{key}.png"
        np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), fx["ibims"][key]["rgb"])
    diode = build_zeroshot_dataset("diode_indoor", fx["data_root"], fx["text_feat_dir"])
    kind_dir = fx["data_root"] / "diode" / "val" / "indoors"
    # keys as `wordepth-text prepare --images <root>/val/indoors` names them
    assert [(k, p) for k, p in diode.image_items()] == [(p.relative_to(kind_dir).with_suffix("").as_posix(), p)
                                                         for p in sorted(kind_dir.rglob("*.png"))]


# --------------------------------------------------------------------------- alignment and protocols


def test_alignment_modes_equal_numpy():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 9.0, (2, 1, 12, 16))
    pred = rng.uniform(0.2, 4.0, (2, 1, 12, 16))
    mask = rng.random((2, 1, 12, 16)) < 0.7
    for b, parity in ((0, 1), (1, 0)):  # an odd and an even count: numpy's median averages the middle two
        if mask[b].sum() % 2 != parity:
            mask[b, 0, 0, 0] = not mask[b, 0, 0, 0]
    assert mask[0].sum() % 2 == 1 and mask[1].sum() % 2 == 0
    t = {k: torch.from_numpy(v) for k, v in (("gt", gt), ("pred", pred), ("mask", mask))}
    median = align_prediction(t["pred"], t["gt"], t["mask"], "median").numpy()
    lstsq = align_prediction(t["pred"], t["gt"], t["mask"], "lstsq").numpy()
    for b in range(2):
        p, g, m = pred[b, 0], gt[b, 0], mask[b, 0]
        np.testing.assert_allclose(median[b, 0], p * np.median(g[m]) / np.median(p[m]), rtol=1e-12)
        (s, sh), *_ = np.linalg.lstsq(np.stack([p[m], np.ones(m.sum())], 1), g[m], rcond=None)
        np.testing.assert_allclose(lstsq[b, 0], s * p + sh, rtol=1e-10)
    np.testing.assert_array_equal(align_prediction(t["pred"], t["gt"], t["mask"], "none").numpy(), pred)
    # a constant prediction: every least-squares fit is mean(gt); an empty mask: unchanged
    const = torch.full((12, 16), 2.0, dtype=torch.float64)
    np.testing.assert_allclose(align_least_squares(const, t["gt"][0, 0], t["mask"][0, 0]).numpy(),
                               gt[0, 0][mask[0, 0]].mean())
    empty = torch.zeros(12, 16, dtype=torch.bool)
    assert torch.equal(align_median(t["pred"][0, 0], t["gt"][0, 0], empty), t["pred"][0, 0])
    with pytest.raises(ValueError, match="unknown alignment"):
        align_prediction(t["pred"], t["gt"], t["mask"], "scale")


def by_hand(pred, gt, dataset_mask, protocol, align="none"):
    """A protocol's metrics for one image, written out in numpy."""
    gt = np.where(dataset_mask, gt, 0.0) if protocol.use_masks else gt.copy()
    if protocol.gt_cap is not None:
        gt = np.minimum(gt, protocol.gt_cap)
    valid = (gt > protocol.min_depth) & (gt < protocol.max_depth)
    h, w = gt.shape
    window = np.zeros_like(valid)
    if protocol.crop == "eigen":
        window[45:471, 41:601] = True  # fixed pixels, whatever the size
    elif protocol.crop == "garg":
        window[int(0.40810811 * h):int(0.99189189 * h), int(0.03594771 * w):int(0.96405229 * w)] = True
    else:
        window[:] = True
    valid &= window
    if align == "median":
        pred = pred * np.median(gt[valid]) / np.median(pred[valid])
    elif align == "lstsq":
        (s, t), *_ = np.linalg.lstsq(np.stack([pred[valid], np.ones(valid.sum())], 1), gt[valid], rcond=None)
        pred = s * pred + t
    pred = np.clip(pred, *protocol.clamp_range)
    return original_errors(gt[valid], pred[valid])


@pytest.mark.parametrize("name,protocol,align", [
    ("sunrgbd", "toolbox", "none"), ("sunrgbd", "zoedepth", "median"), ("ibims", "zoedepth", "lstsq"),
    ("ibims", "official", "none"), ("diode_indoor", "zoedepth", "none"), ("diode_outdoor", "zoedepth", "median"),
    ("diode_outdoor", "marigold", "lstsq")])
def test_protocol_metrics_equal_numpy(name, protocol, align):
    rng = np.random.default_rng(1)
    hw = (100, 620)  # the fixed Eigen window cuts rows 45:100 and cols 41:601
    far = 60.0 if name == "diode_outdoor" else 9.0
    gt = rng.uniform(0.3, far, hw)
    gt[rng.random(hw) < 0.1] = 0.0
    pred = gt * rng.uniform(0.6, 1.5, hw) + 0.3
    mask = rng.random(hw) < 0.8
    p = zeroshot_facts(name).protocol(protocol)
    got = image_metrics(torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None],
                        torch.from_numpy(mask)[None, None], p, align)[0].numpy()
    np.testing.assert_allclose(got, by_hand(pred, gt, mask, p, align), rtol=1e-9, atol=1e-12)


def test_sunrgbd_protocols_differ_at_8_metres():
    gt = np.full((480, 640), 9.0)
    gt[:, :320] = 4.0  # inside the Eigen window (cols 41:601): 279 columns at 4 m, 281 at 9 m
    pred = np.full_like(gt, 8.5)
    args = [torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None], None]
    toolbox = image_metrics(*args, zeroshot_facts("sunrgbd").protocol("toolbox"))[0]
    zoe = image_metrics(*args, zeroshot_facts("sunrgbd").protocol("zoedepth"))[0]
    abs_rel, d1 = METRIC_NAMES.index("abs_rel"), METRIC_NAMES.index("d1")
    # toolbox: 9 m capped to 8 m and kept, the prediction capped to 8 m: exact there, 100 % off at 4 m
    assert float(toolbox[abs_rel]) == pytest.approx(279 / 560) and float(toolbox[d1]) == pytest.approx(281 / 560)
    # ZoeDepth: ground truth at or beyond 8 m is invalid: only the 4 m pixels count
    assert float(zoe[abs_rel]) == pytest.approx(1.0) and float(zoe[d1]) == 0.0


# --------------------------------------------------------------------------- the model


def test_own_checkpoint_keeps_what_it_records(tiny_ckpt):
    own = load_model(tiny_ckpt)  # this project's checkpoints record their settings
    assert own.cfg.prior_mean == pytest.approx(1.54) and not own.cfg.legacy
    with pytest.raises(ValueError, match="unknown variant"):
        load_model(tiny_ckpt, "sun")


def test_flip_and_resize_in_prediction(tiny_ckpt):
    model = load_model(tiny_ckpt)
    image, text = torch.randn(1, 3, 48, 64), torch.randn(1, 1024)
    plain = predict_depth(model, image, text)
    flipped = model(torch.flip(image, [3]), text).flip([3])
    torch.testing.assert_close(predict_depth(model, image, text, flip=True), 0.5 * (plain + flipped))
    out = predict_depth(model, image, text, input_short_side=96, out_hw=(48, 64))
    assert out.shape == (1, 1, 48, 64)
    big = model(torch.nn.functional.interpolate(image, size=(96, 128), mode="bilinear", align_corners=False), text)
    want = torch.nn.functional.interpolate(big, size=(48, 64), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, want)


# --------------------------------------------------------------------------- the command


def run_cli(fx, ckpt, out, *extra):
    return zeroshot_cli.main(["--checkpoint", str(ckpt), "--data_root", str(fx["data_root"]),
                              "--text_feat_dir", str(fx["text_feat_dir"]), "--metrics_json", str(out / "z.json"),
                              "--num_workers", "0", "--no_tqdm", *extra])


def test_command_end_to_end_writes_the_table(fx, tiny_ckpt, tmp_path, capsys):
    payload = run_cli(fx, tiny_ckpt, tmp_path, "--datasets", "sunrgbd,ibims,diode_indoor")
    out = capsys.readouterr().out
    table = out.strip().splitlines()
    assert table[0].split()[:3] == ["dataset", "protocol", "silog"] and len(table) == 4
    assert [row.split()[0] for row in table[1:]] == ["sunrgbd", "ibims", "diode_indoor"]
    saved = json.loads((tmp_path / "z.json").read_text())
    assert saved == json.loads(json.dumps(payload)) and saved["errors"] == {} and saved["alignment"] == "none"
    assert saved["datasets"]["sunrgbd"]["protocol"]["name"] == "toolbox"
    assert saved["datasets"]["diode_indoor"]["protocol"]["input_short_side"] == 480
    assert all(saved["datasets"][n]["count"] == 2 for n in ("sunrgbd", "ibims", "diode_indoor"))
    assert "ExpansionNet" in saved["text"]
    md = (tmp_path / "z.md").read_text()
    assert md.startswith("| dataset | protocol | alignment | flip |") and "| ibims | zoedepth | none | yes |" in md

    # SUN RGB-D by hand: flip-averaged prediction, the toolbox protocol, numpy metrics
    model = load_model(tiny_ckpt)
    ds = build_zeroshot_dataset("sunrgbd", fx["data_root"], fx["text_feat_dir"])
    protocol = zeroshot_facts("sunrgbd").protocol("toolbox")
    rows = []
    for i in range(len(ds)):
        s = ds[i]
        with torch.no_grad():
            x, t = s["image"][None], s["text_feature"][None]
            pred = 0.5 * (model(x, t) + model(torch.flip(x, [3]), t).flip([3]))
        rows.append(by_hand(pred[0, 0].double().numpy(), s["depth"][0].double().numpy(), s["valid_mask"][0].numpy(),
                            protocol))
    np.testing.assert_allclose([saved["datasets"]["sunrgbd"][m] for m in METRIC_NAMES], np.mean(rows, 0), rtol=1e-4)


def test_command_alignment_and_protocol_options(fx, tiny_ckpt, tmp_path, capsys):
    payload = run_cli(fx, tiny_ckpt, tmp_path, "--datasets", "ibims", "--protocol", "ibims=official",
                      "--align", "lstsq", "--no-flip", "--markdown", str(tmp_path / "table.md"))
    record = payload["datasets"]["ibims"]["protocol"]
    assert record["name"] == "official" and record["align"] == "lstsq" and record["flip"] is False
    assert record["crop"] is None and record["max_depth"] == float("inf")
    assert (tmp_path / "table.md").is_file()
    with pytest.raises(SystemExit, match="ibims has no protocol 'toolbox'"):
        run_cli(fx, tiny_ckpt, tmp_path, "--datasets", "ibims", "--protocol", "ibims=toolbox")
    with pytest.raises(SystemExit, match="unknown nyu"):
        run_cli(fx, tiny_ckpt, tmp_path, "--datasets", "nyu")


def test_missing_dataset_is_named_and_the_others_complete(fx, tiny_ckpt, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(fx["data_root"], root)
    (root / "ibims" / "imagelist.txt").unlink()
    gone = next((root / "diode" / "val" / "indoors").rglob("*_depth_mask.npy"))
    gone.unlink()
    argv = ["--checkpoint", str(tiny_ckpt), "--data_root", str(root), "--text_feat_dir", str(root / "text_feat"),
            "--datasets", "sunrgbd,ibims,diode_indoor", "--metrics_json", str(tmp_path / "z.json"),
            "--num_workers", "0", "--no_tqdm", "--no-flip"]
    with pytest.raises(SystemExit) as exc:
        zeroshot_cli.main(argv)
    assert exc.value.code == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert errors[0].startswith("error: ibims") and str(root / "ibims" / "imagelist.txt") in errors[0]
    assert errors[1].startswith("error: diode_indoor") and str(gone) in errors[1]
    saved = json.loads((tmp_path / "z.json").read_text())
    assert list(saved["datasets"]) == ["sunrgbd"] and saved["datasets"]["sunrgbd"]["count"] == 2
    assert set(saved["errors"]) == {"ibims", "diode_indoor"}
    assert "not evaluated" in captured.out and captured.out.splitlines()[1].startswith("sunrgbd")


def test_check_data_covers_the_new_datasets(fx, tmp_path, capsys):
    for name in ZEROSHOT_DATASETS:
        assert check_zeroshot(name, fx["data_root"], fx["text_feat_dir"]) == []
    root = tmp_path / "data"
    shutil.copytree(fx["data_root"], root)
    png = root / "sunrgbd" / (root / "sunrgbd" / "SUNRGBD_val_splits.txt").read_text().split()[1]
    png.write_bytes(png.read_bytes()[:40])  # truncated
    mat = next((root / "ibims" / "ibims1_core_mat").glob("*.mat"))
    mat.write_bytes(b"not a mat file")
    feature = next((root / "text_feat" / "diode_indoor").rglob("*.pt"))
    feature.unlink()
    found = {name: check_zeroshot(name, root, root / "text_feat") for name in ("sunrgbd", "ibims", "diode_indoor")}
    assert [p.line_no for p in found["sunrgbd"]] == [1] and "depth map" in found["sunrgbd"][0].message
    assert len(found["ibims"]) == 1 and "MATLAB" in found["ibims"][0].message
    assert len(found["diode_indoor"]) == 1 and "text feature not found" in found["diode_indoor"][0].message
    with pytest.raises(ZeroShotDataError, match="text feature not found"):
        build_zeroshot_dataset("diode_indoor", root, root / "text_feat")
    with pytest.raises(SystemExit) as exc:
        zeroshot_cli.main(["--data_root", str(root), "--text_feat_dir", str(root / "text_feat"), "--check_data",
                           "--datasets", "sunrgbd,ibims,diode_indoor,diode_outdoor", "--no_tqdm"])
    assert exc.value.code == 1
    out = capsys.readouterr().out
    assert "sunrgbd:line 1:" in out and "diode_outdoor: 0 error(s)" in out and "check_data: 3 error(s)" in out


def test_original_release_checkpoint_takes_the_variant(tmp_path):
    """An original-layout checkpoint records nothing: the variant sets legacy, max depth and prior mean."""
    model = WorDepth(preset_config("tiny"))
    path = tmp_path / "orig.pth"
    torch.save({"model": project_to_original(model)}, path)  # the tiny preset, told by its Swin width
    loaded = load_model(path, "kitti_legacy")
    assert loaded.cfg.legacy and loaded.cfg.prior_mean == pytest.approx(2.54) and loaded.cfg.max_depth == 80.0
    assert not load_model(path, "nyu").cfg.legacy


def test_prepare_text_captions_every_dataset(tmp_path):
    """--prepare_text: the text pipeline on the datasets' images (iBims-1's exported from the .mat)."""
    import open_clip

    from test_text_pipeline import TINY_COCA, TINY_COCA_CFG  # the tiny CoCa of the text pipeline's tests
    from wordepth.text.captioning import load_captioner
    from wordepth.text.clip_features import load_text_encoder

    cfg = tmp_path / f"{TINY_COCA}.json"
    cfg.write_text(json.dumps(TINY_COCA_CFG))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    coca, preprocess = load_captioner(TINY_COCA, pretrained=None)
    captioner = (coca, preprocess, open_clip.get_tokenizer(TINY_COCA))
    encoder = load_text_encoder("RN50", pretrained=None)
    root = tmp_path / "data"
    make_zeroshot_fixtures(root, datasets=("ibims", "diode_indoor"))
    shutil.rmtree(root / "text_feat")
    names = ["ibims", "diode_indoor"]
    args = zeroshot_cli.parse_args(["--data_root", str(root), "--datasets", ",".join(names), "--prepare_text",
                                    "--text_dir", str(tmp_path / "text"), "--text_feat_dir", str(tmp_path / "feat"),
                                    "--seq_len", "7", "--generation_type", "greedy"])
    with pytest.raises(ZeroShotDataError, match="text feature not found"):
        build_zeroshot_dataset("ibims", root, tmp_path / "feat")
    summary = zeroshot_cli.prepare_text(args, names, {}, captioner=captioner, encoder=encoder)
    assert all(summary[n]["captions_written"] == 2 and summary[n]["dim"] == 1024 for n in names)
    for name in names:
        ds = build_zeroshot_dataset(name, root, tmp_path / "feat")
        split = zeroshot_facts(name).text_split
        assert all((tmp_path / "text" / name / split / f"{key}.txt").is_file() for key, _ in ds.image_items(tmp_path))
        assert ds[0]["text_feature"].shape == (1024,)

"""The one-line API (wordepth.Predictor), variants by name, the caption-free fallback, safetensors."""
import logging
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import wordepth
from wordepth.checkpoints import load_checkpoint, save_safetensors
from wordepth.cli import convert as convert_cli
from wordepth.cli import predict as predict_cli
from wordepth.cli import text as text_cli
from wordepth.cli.options import parse_args
from wordepth.data.text_features import feature_path, save_feature_file
from wordepth.models.wordepth import WorDepth, preset_config
from wordepth.inference.predictor import MEAN_FEATURES_FILE, Predictor, mean_caption_feature
from wordepth.text.clip_features import WeightsUnavailableError, encode_captions, load_text_encoder

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalise(rgb: np.ndarray) -> torch.Tensor:
    """The explicit path: ImageNet normalisation written out, (1, 3, H, W)."""
    return torch.from_numpy(((rgb.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1).copy())[None]


def tiny_model(**kw) -> WorDepth:
    torch.manual_seed(0)
    return WorDepth(preset_config("tiny", drop_path_rate=0.0, **kw)).eval()


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """CLIP RN50 with random weights saved as a local file (no download)."""
    torch.manual_seed(0)
    model, _ = load_text_encoder("RN50", pretrained=None)
    path = tmp_path_factory.mktemp("clip") / "rn50_random.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """An odd-size photo on disk (97x131)."""
    rng = np.random.default_rng(1)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (97, 131, 3), dtype=np.uint8), (5, 5), 0)
    path = tmp_path_factory.mktemp("photo") / "room.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path, rgb


@pytest.fixture(scope="module")
def reference_ckpt(reference, tmp_path_factory):
    made = {}

    def make(size="480x640"):
        if size not in made:
            out = tmp_path_factory.mktemp("ref") / f"ref_{size}.pth"
            subprocess.run([sys.executable, str(reference / "make_reference_checkpoint.py"), str(out), "--size",
                            size], check=True, capture_output=True)
            made[size] = out
        return made[size]

    return make


# --------------------------------------------------------------------------- the one-line API
@pytest.mark.slow
def test_one_line_api_equals_the_explicit_path(reference_ckpt, clip_file, photo):
    path, rgb = photo
    caption = "a bedroom with a bed and a lamp"
    predictor = Predictor.from_checkpoint(reference_ckpt(), variant="nyu", device="cpu", clip_weights=clip_file)
    model = load_checkpoint(reference_ckpt(), legacy=False, max_depth=10.0, prior_mean=1.54)
    encoder, tokenizer = load_text_encoder("RN50", weights_path=clip_file)
    with torch.no_grad():
        expected = model(normalise(rgb), encode_captions(encoder, tokenizer, [caption]))[0, 0].numpy()
    for image in (str(path), Image.open(path), rgb):
        depth = predictor.infer(image, caption)
        assert isinstance(depth, np.ndarray) and depth.dtype == np.float32 and depth.shape == (97, 131)
        np.testing.assert_allclose(depth, expected, rtol=1e-6, atol=1e-6)
    as_tensor = predictor.infer(rgb, caption, return_tensor=True)
    assert torch.is_tensor(as_tensor) and as_tensor.shape == (97, 131)
    both = predictor.infer([rgb, str(path)], [caption, caption])  # one CLIP batch of two: float round-off
    assert len(both) == 2 and np.allclose(both[0], expected, rtol=1e-4) and np.allclose(both[1], both[0])


def test_caption_list_must_match_the_images(photo):
    predictor = Predictor(tiny_model(), device="cpu")
    with pytest.raises(ValueError, match="2 captions for 1 images"):
        predictor.infer([photo[1]], ["a", "b"])
    with pytest.raises(TypeError, match="path, a PIL image"):
        predictor.infer(3.0)
    with pytest.raises(ValueError, match="uint8"):
        predictor.infer(photo[1].astype(np.float32))


def test_a_pil_image_and_its_file_give_the_same_depth(tmp_path):
    """16-bit PNGs and EXIF orientation: a PIL image is read as its file is (not clipped to white)."""
    from PIL import Image

    predictor = Predictor(tiny_model(), device="cpu", max_pixels=None)
    ramp = (np.arange(40 * 56).reshape(40, 56) * 29).astype(np.uint16)  # 0 .. 64931
    cv2.imwrite(str(tmp_path / "depth16.png"), ramp)
    with Image.open(tmp_path / "depth16.png") as im:
        assert im.mode.startswith("I")
        from_pil = wordepth.inference.predictor.as_rgb(im)
        np.testing.assert_array_equal(predictor.infer(im), predictor.infer(str(tmp_path / "depth16.png")))
    assert np.array_equal(from_pil, wordepth.inference.predictor.as_rgb(str(tmp_path / "depth16.png")))
    assert from_pil.min() == 0 and 250 <= from_pil.max() <= 253  # the high byte, not white
    rgb = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    with Image.open(tmp_path / "rotated.jpg") as im:
        from_pil = wordepth.inference.predictor.as_rgb(im)
    from_path = wordepth.inference.predictor.as_rgb(str(tmp_path / "rotated.jpg"))
    assert from_pil.shape == from_path.shape == (50, 30, 3)
    assert np.abs(from_pil.astype(int) - from_path.astype(int)).max() <= 2  # two JPEG decoders


def test_bad_caption_types_and_prior_arguments_are_refused(photo):
    model = tiny_model()
    predictor = Predictor(model, device="cpu", max_pixels=None)
    feature = mean_caption_feature("nyu")
    assert np.array_equal(predictor.infer(photo[1], feature), predictor.infer(photo[1]))  # a feature tensor
    with pytest.raises(TypeError, match="float tensor, got torch.int8"):
        predictor.infer(photo[1], (feature * 100).to(torch.int8))
    with pytest.raises(TypeError, match="str, a float text-feature tensor or None"):
        predictor.infer(photo[1], 42)
    with pytest.raises(ValueError, match="UTF-8"):
        predictor.infer(photo[1], b"\xff\xfe")
    assert wordepth.inference.predictor.as_caption(b"a room") == "a room"  # bytes are decoded, not "b'a room'"
    with pytest.raises(ValueError, match="the model takes 1024 \\(CLIP RN50"):
        predictor.infer(photo[1], torch.zeros(512))
    with pytest.raises(ValueError, match="at least 1, got -1"):
        predictor.prior(None, k=-1)
    with pytest.raises(ValueError, match="size must be two positive integers"):
        predictor.prior(None, size=(0, 0))
    with pytest.raises(ValueError, match="float tensor"):
        wordepth.inference.predictor.sample_prior(model, feature.to(torch.int8), (32, 32))


def test_prior_samples_are_seeded_and_equal_the_text_branch():
    model = tiny_model()
    predictor = Predictor(model, device="cpu", max_pixels=None)
    a = predictor.prior(None, size=(64, 96), k=3, seed=4)
    b = predictor.prior(None, size=(64, 96), k=3, seed=4)
    assert a.shape == (3, 64, 96) and a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.allclose(a[0], a[1])  # different samples
    eps = torch.randn(3, model.cfg.latent_dim, *model.latent_grid((64, 96)), generator=torch.Generator().manual_seed(4))
    text = mean_caption_feature("nyu")[None].expand(3, -1)
    np.testing.assert_allclose(a, model.prior_depth(text, (64, 96), eps=eps)[:, 0].numpy(), rtol=1e-6)
    # the one sampler under it: batches do not change the samples, a bare model needs no Predictor
    bare = wordepth.inference.predictor.sample_prior(model, text[0], (64, 96), k=3, seed=4, batch_size=2)
    np.testing.assert_allclose(bare.numpy(), a, rtol=1e-6)


# --------------------------------------------------------------------------- without a caption
def test_mean_caption_features_are_the_original_releases(reference):
    shipped = torch.load(MEAN_FEATURES_FILE, weights_only=True)
    given = torch.load(reference / "mean_text_features.pt", weights_only=True)
    for key in ("nyu_train_mean", "kitti_train_mean", "nyu_test_mean", "kitti_test_mean"):
        assert torch.equal(shipped[key], given[key])
    assert 0.8 < float(mean_caption_feature("kitti").norm()) < 0.9


@pytest.mark.parametrize("dataset, fields", [("nyu", {}), ("kitti", {"max_depth": 80.0, "prior_mean": 2.54})])
def test_no_caption_uses_the_mean_feature_of_the_models_dataset(photo, dataset, fields):
    model = tiny_model(**fields)
    predictor = Predictor(model, device="cpu", max_pixels=None)
    assert predictor.variant == dataset and predictor.dataset.name == dataset
    with torch.no_grad():
        expected = model(normalise(photo[1]), mean_caption_feature(dataset)[None])[0, 0].numpy()
    np.testing.assert_allclose(predictor.infer(photo[1]), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="no_caption"):
        Predictor(model, no_caption="guess")


def test_wordepth_text_mean_writes_the_mean(tmp_path):
    feats = torch.nn.functional.normalize(torch.randn(5, 1024), dim=-1)
    for i, f in enumerate(feats):
        save_feature_file(feature_path(tmp_path / "tf", "mine", "train", f"scene/img{i}.jpg"), f)
    out = tmp_path / "mean.pt"
    text_cli.main(["mean", "--text_feat_dir", str(tmp_path / "tf"), "--dataset", "mine", "--out", str(out),
                   "--no_progress"])
    expected = feats.half().double().mean(0).float()
    torch.testing.assert_close(mean_caption_feature("mine", path=out), expected, rtol=0, atol=1e-7)
    assert torch.load(out, weights_only=True)["mine_train_count"] == 5
    with pytest.raises(SystemExit, match="text feature folder not found"):
        text_cli.main(["mean", "--text_feat_dir", str(tmp_path / "none"), "--dataset", "mine", "--out", str(out)])


def test_offline_clip_message_comes_before_any_output(photo, tmp_path, monkeypatch):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    predictor = Predictor(tiny_model(), device="cpu")
    with pytest.raises(WeightsUnavailableError, match="RN50"):
        predictor.infer(photo[1], "a room")
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        Predictor(tiny_model(), device="cpu", clip_weights=tmp_path / "missing.pt").infer(photo[1], "a room")


# --------------------------------------------------------------------------- variants
@pytest.mark.slow
@pytest.mark.parametrize("variant, legacy, max_depth, prior_mean", [
    ("nyu", False, 10.0, 1.54), ("nyu_legacy", True, 10.0, 1.54),
    ("kitti", False, 80.0, 2.54), ("kitti_legacy", True, 80.0, 2.54)])
def test_variants_set_the_fields(reference_ckpt, variant, legacy, max_depth, prior_mean):
    size = "480x640" if variant.startswith("nyu") else "352x1216"
    model = load_checkpoint(reference_ckpt(size), variant=variant)
    assert (model.cfg.legacy, model.cfg.max_depth, model.cfg.prior_mean) == (legacy, max_depth, prior_mean)
    assert Predictor(model, device="cpu").variant == variant


@pytest.mark.slow
def test_explicit_arguments_override_the_variant_and_a_kitti_grid_with_nyu_warns(reference_ckpt, caplog):
    model = load_checkpoint(reference_ckpt("480x640"), variant="nyu_legacy", legacy=False, prior_mean=2.0)
    assert (model.cfg.legacy, model.cfg.prior_mean, model.cfg.max_depth) == (False, 2.0, 10.0)
    with caplog.at_level(logging.WARNING):
        load_checkpoint(reference_ckpt("352x1216"), variant="nyu")
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("KITTI-sized position embedding (88x304)" in m and "'nyu'" in m for m in lines), lines


def test_own_checkpoint_records_its_variant_and_a_contradiction_warns(tmp_path, caplog):
    model = tiny_model(max_depth=80.0, prior_mean=2.54, legacy=True)
    path = tmp_path / "k.pth"
    torch.save({"format": "wordepth", "config": {"model": model.cfg.to_dict()}, "model": model.state_dict()}, path)
    assert wordepth.variants.variant_of(load_checkpoint(path).cfg) == "kitti_legacy"
    with caplog.at_level(logging.WARNING):
        loaded = load_checkpoint(path, variant="nyu")
    assert loaded.cfg.prior_mean == 1.54
    assert any("records variant 'kitti_legacy'" in r.getMessage() for r in caplog.records)


def test_variant_flag_on_the_command_line():
    args = parse_args(["--variant", "kitti_legacy"])
    assert (args.dataset, args.legacy, args.max_depth, args.prior_mean) == ("kitti", True, 80.0, 2.54)
    assert args.garg_crop and not args.eigen_crop and args.max_depth_eval == 80.0
    args = parse_args(["--variant", "nyu", "--eigen_crop", "--prior_mean", "1.0"])
    assert args.prior_mean == 1.0 and args.eigen_crop and args.max_depth_eval == 10.0
    with pytest.raises(SystemExit):
        parse_args(["--variant", "kitti", "--dataset", "nyu"])
    with pytest.raises(ValueError, match="unknown variant 'nyu2'"):
        wordepth.variants.get_variant("nyu2")


# --------------------------------------------------------------------------- safetensors
def test_safetensors_round_trip_gives_identical_outputs(tmp_path, photo):
    model = tiny_model(max_depth=80.0, prior_mean=2.54)
    st, sidecar = save_safetensors(model, tmp_path / "m.safetensors")
    assert sidecar.name == "m.safetensors.json" and '"variant": "kitti"' in sidecar.read_text()
    loaded = load_checkpoint(st)
    assert loaded.cfg == model.cfg
    x, text = normalise(photo[1]), mean_caption_feature("kitti")[None]
    with torch.no_grad():
        assert torch.equal(loaded(x, text), model(x, text))
    with pytest.raises(ValueError, match=".safetensors"):
        save_safetensors(model, tmp_path / "m.pth")


def test_convert_command_and_predict_without_flags(tmp_path, photo):
    model = tiny_model()
    pth = tmp_path / "run.pth"
    torch.save({"format": "wordepth", "config": {"model": model.cfg.to_dict()}, "model": model.state_dict()}, pth)
    assert convert_cli.main([str(pth), str(tmp_path / "run.safetensors")]) == 0
    assert (tmp_path / "run.safetensors.json").is_file()
    with torch.no_grad():
        expected = model(normalise(photo[1]), mean_caption_feature("nyu")[None])[0, 0].numpy()
    assert predict_cli.main(["--checkpoint", str(tmp_path / "run.safetensors"), "--images", str(photo[0]),
                             "--out", str(tmp_path / "out"), "--device", "cpu", "--max_pixels", "0"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "out" / "room_depth.npy"), expected, rtol=1e-6)
    with pytest.raises(SystemExit, match="must end in .safetensors"):
        convert_cli.main([str(pth), str(tmp_path / "x.pt")])
    with pytest.raises(SystemExit, match="not found"):
        convert_cli.main([str(tmp_path / "missing.pth"), str(tmp_path / "y.safetensors")])


# --------------------------------------------------------------------------- precision
def test_bf16_precision_on_the_command_and_the_predictor(tmp_path, photo, monkeypatch, caplog):
    """--precision bf16 runs the network under bfloat16 autocast (close to fp32, not equal to it) and,
    on a CPU that emulates bfloat16, says so once."""
    import wordepth.runtime as runtime

    model = tiny_model()
    pth = tmp_path / "run.pth"
    torch.save({"format": "wordepth", "config": {"model": model.cfg.to_dict()}, "model": model.state_dict()}, pth)
    monkeypatch.setattr(runtime, "cpu_native_bf16", lambda: False)
    outs = {}
    for precision in ("fp32", "bf16"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert predict_cli.main(["--checkpoint", str(pth), "--images", str(photo[0]), "--out",
                                     str(tmp_path / precision), "--device", "cpu", "--precision", precision]) == 0
        assert ("emulated" in caplog.text) == (precision == "bf16")
        outs[precision] = np.load(tmp_path / precision / "room_depth.npy")
    assert outs["bf16"].dtype == np.float32 and outs["bf16"].shape == outs["fp32"].shape
    rel = np.abs(outs["bf16"] - outs["fp32"]) / outs["fp32"]
    assert 0 < rel.max() < 0.1 and np.median(rel) < 0.02  # bfloat16 has 8 significant bits

    predictor = Predictor(model, device="cpu", precision="bf16")
    np.testing.assert_allclose(predictor.infer(photo[1]), outs["bf16"], rtol=1e-5)
    with pytest.raises(ValueError, match="precision must be one of"):
        Predictor(model, device="cpu", precision="fp16")
    with pytest.raises(SystemExit):
        predict_cli.main(["--checkpoint", str(pth), "--images", str(photo[0]), "--out", str(tmp_path / "x"),
                          "--precision", "int8"])

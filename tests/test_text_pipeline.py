"""Captions and CLIP text features for any image set (random-weight open_clip models, no network)."""
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from wordepth.cli import caption as caption_cli
from wordepth.cli import extract as extract_cli
from wordepth.cli import prepare as prepare_cli
from wordepth.data.text_features import (
    TextFeatureStore,
    feature_path,
    load_feature_file,
    packed_paths,
)
from wordepth.text import (
    FALLBACK_CAPTION,
    WeightsUnavailableError,
    caption_path,
    clean_caption,
    encode_captions,
    load_captioner,
    load_text_encoder,
    read_caption,
    resolve_weights,
)
from wordepth.text.captioning import decode_tokens, greedy_generate

TINY_COCA = "wordepth_test_coca_tiny"
TINY_COCA_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16,
                   "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
    "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                       "attn_pooler_heads": 2},
    "custom_text": True,
}
CAPTIONS = {  # image path (as in a split file) -> caption; two identical captions
    "kitchen_0001/rgb_00001.jpg": "A kitchen with a stove and a refrigerator.",
    "kitchen_0001/rgb_00002.jpg": "A kitchen with a stove and a refrigerator.",
    "bedroom_0002/rgb_00003.jpg": "A bedroom with a bed and a lamp.",
}


@pytest.fixture(scope="module")
def extract_script():
    return extract_cli


@pytest.fixture(scope="module")
def caption_script():
    return caption_cli


@pytest.fixture(scope="module")
def prepare_script():
    return prepare_cli


@pytest.fixture(scope="module")
def rn50():
    """The RN50 CLIP text encoder with random weights, built once."""
    torch.manual_seed(0)
    return load_text_encoder("RN50", pretrained=None)


@pytest.fixture(scope="module")
def tiny_coca(tmp_path_factory):
    """A tiny CoCa (registered with open_clip under TINY_COCA), random weights."""
    cfg = tmp_path_factory.mktemp("open_clip_cfg") / f"{TINY_COCA}.json"
    cfg.write_text(json.dumps(TINY_COCA_CFG))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model, preprocess = load_captioner(TINY_COCA, pretrained=None)
    return model, preprocess, open_clip.get_tokenizer(TINY_COCA)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No downloads and empty Hugging Face / open_clip caches."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # ~/.cache/clip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _write_captions(text_dir: Path, dataset: str = "nyu", split: str = "test") -> None:
    for rgb, caption in CAPTIONS.items():
        path = caption_path(text_dir, dataset, split, rgb)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(caption + "\n")


def _write_images(folder: Path, names: list[str]) -> None:
    rng = np.random.default_rng(0)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(path)


def _mtimes(folder: Path, pattern: str) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob(pattern))}


# ----------------------------------------------------------------------------- captions


@pytest.mark.parametrize("raw, clean", [
    ("a bathroom with a sink and a mirror . ", "A bathroom with a sink and a mirror."),
    ("<start_of_text>a man 's dog on a couch <end_of_text>!!!!", "A man's dog on a couch."),
    ("  two   people , riding bikes  ", "Two people, riding bikes."),
    ("!!!!!!!", FALLBACK_CAPTION),
    ("", FALLBACK_CAPTION),
])
def test_clean_caption(raw, clean):
    assert clean_caption(raw) == clean


def test_decode_tokens_stops_at_end_of_text():
    tokenizer = open_clip.get_tokenizer("RN50")
    ids = tokenizer(["a bathroom with a sink"])[0]  # sot, words, eot, 0-padding ("!")
    assert clean_caption(decode_tokens(ids, tokenizer)) == "A bathroom with a sink."
    assert clean_caption(decode_tokens(ids, None)) == "A bathroom with a sink."


def test_greedy_generate_respects_lengths(tiny_coca):
    model, _, _ = tiny_coca
    images = torch.randn(2, 3, 32, 32)
    tokens = greedy_generate(model, images, seq_len=7, min_seq_len=3)
    assert tokens.shape[0] == 2 and tokens.shape[1] <= 7
    assert (tokens[:, 0] == 49406).all()
    assert ((tokens == 49407).sum(dim=1) == 1).all()  # exactly one end token per caption
    assert not (tokens[:, 1:3] == 49407).any()  # not before min_seq_len


def test_caption_script_one_line_per_image(tmp_path, tiny_coca, caption_script):
    model, preprocess, tokenizer = tiny_coca
    names = ["scene_a/rgb_0001.jpg", "scene_b/rgb_0002.png", "c.png"]
    _write_images(tmp_path / "imgs", names)
    text_dir = tmp_path / "text"
    argv = ["--images", str(tmp_path / "imgs"), "--dataset", "mine", "--split", "test", "--text_dir", str(text_dir),
            "--seq_len", "8", "--generation_type", "greedy", "--batch_size", "2"]
    written = caption_script.run(caption_script.parse_args(argv), model, preprocess, tokenizer)
    assert sorted(written) == sorted(names)
    for name in names:
        path = text_dir / "mine" / "test" / (name.rsplit(".", 1)[0] + ".txt")
        lines = path.read_text(encoding="utf-8").split("\n")
        assert len(lines) == 2 and lines[1] == "" and lines[0].strip(), lines  # one non-empty line
        assert read_caption(path) == lines[0]
    before = _mtimes(text_dir, "*.txt")
    assert caption_script.run(caption_script.parse_args(argv), model, preprocess, tokenizer) == []
    assert _mtimes(text_dir, "*.txt") == before


def test_caption_script_split_file(tmp_path, tiny_coca, caption_script):
    model, preprocess, tokenizer = tiny_coca
    _write_images(tmp_path / "data", ["kitchen/rgb_1.jpg", "office/rgb_2.jpg"])
    split = tmp_path / "split.txt"
    split.write_text("/kitchen/rgb_1.jpg /kitchen/sync_depth_1.png 518.8579\n"
                     "/office/rgb_2.jpg /office/sync_depth_2.png 518.8579\n")
    argv = ["--filenames_file", str(split), "--data_path", str(tmp_path / "data"), "--dataset", "nyu",
            "--split", "train", "--text_dir", str(tmp_path / "text"), "--seq_len", "7", "--generation_type", "greedy"]
    caption_script.run(caption_script.parse_args(argv), model, preprocess, tokenizer)
    assert read_caption(tmp_path / "text" / "nyu" / "train" / "kitchen" / "rgb_1.txt")
    assert read_caption(tmp_path / "text" / "nyu" / "train" / "office" / "rgb_2.txt")
    split.write_text("/kitchen/rgb_9.jpg /kitchen/sync_depth_9.png 518.8579\n")
    with pytest.raises(SystemExit, match="^error: .*not found"):
        caption_script.run(caption_script.parse_args(argv), model, preprocess, tokenizer)


# ----------------------------------------------------------------------------- features


def test_encode_captions_normalised_and_deterministic(rn50):
    model, tokenizer = rn50
    feats = encode_captions(model, tokenizer, ["a kitchen", "a bedroom", "a kitchen"], batch_size=2)
    assert feats.shape == (3, 1024) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(feats[0], feats[2])
    assert not torch.allclose(feats[0], feats[1])


def test_extract_features_layout_and_store(tmp_path, rn50, extract_script):
    model, tokenizer = rn50
    _write_captions(tmp_path / "text")
    feat_dir = tmp_path / "text_feat"
    args = extract_script.parse_args(["--text_dir", str(tmp_path / "text"), "--dataset", "nyu", "--split", "test",
                                      "--text_feat_dir", str(feat_dir), "--packed", "--batch_size", "2"])
    summary = extract_script.run(args, model, tokenizer)
    assert summary["written"] == 3 and summary["dim"] == 1024

    expected = encode_captions(model, tokenizer, list(CAPTIONS.values()))
    for (rgb, caption), want in zip(CAPTIONS.items(), expected):
        path = feat_dir / "nyu" / "test" / (rgb.rsplit(".", 1)[0] + ".pt")  # the original's layout
        saved = torch.load(path, map_location="cpu", weights_only=True)
        assert saved.shape == (1, 1024) and saved.dtype == torch.float16
        assert abs(saved.float().norm().item() - 1.0) < 2e-3  # unit norm within fp16 precision
        assert torch.equal(saved[0], want.half())
    first, second, third = (load_feature_file(feature_path(feat_dir, "nyu", "test", rgb)) for rgb in CAPTIONS)
    assert torch.equal(first, second)  # identical captions, identical features
    assert not torch.allclose(first, third)

    packed_store = TextFeatureStore(feat_dir, "nyu", "test", expected_dim=1024)
    assert packed_store.packed and packed_store.dim == 1024
    npy, index = packed_paths(feat_dir, "nyu", "test")
    assert json.loads(index.read_text())["dim"] == 1024
    npy.unlink()
    index.unlink()
    per_file_store = TextFeatureStore(feat_dir, "nyu", "test", expected_dim=1024)
    assert not per_file_store.packed
    for rgb in CAPTIONS:
        assert torch.equal(packed_store.get(rgb), per_file_store.get(rgb))
        assert torch.equal(per_file_store.get("/" + rgb), per_file_store.get(rgb))  # NYU train style entry


def test_extract_rerun_skips_existing(tmp_path, rn50, extract_script, offline):
    model, tokenizer = rn50
    _write_captions(tmp_path / "text")
    feat_dir = tmp_path / "text_feat"
    argv = ["--text_dir", str(tmp_path / "text"), "--dataset", "nyu", "--split", "test",
            "--text_feat_dir", str(feat_dir)]
    extract_script.run(extract_script.parse_args(argv), model, tokenizer)
    before = _mtimes(feat_dir, "*.pt")
    assert len(before) == 3
    # Nothing to do: the encoder is not even loaded (it could not be: offline, no weights).
    summary = extract_script.run(extract_script.parse_args(argv + ["--skip_existing"]))
    assert summary["written"] == 0 and summary["skipped"] == 3
    assert _mtimes(feat_dir, "*.pt") == before
    summary = extract_script.run(extract_script.parse_args(argv + ["--overwrite"]), model, tokenizer)
    assert summary["written"] == 3


def test_extract_from_split_file(tmp_path, rn50, extract_script):
    model, tokenizer = rn50
    _write_captions(tmp_path / "text", split="train")
    split = tmp_path / "split.txt"
    split.write_text("".join(f"/{rgb} /{rgb[:-4]}.png 518.8579\n" for rgb in list(CAPTIONS)[:2]))
    argv = ["--filenames_file", str(split), "--text_dir", str(tmp_path / "text"), "--dataset", "nyu",
            "--split", "train", "--text_feat_dir", str(tmp_path / "feat"), "--packed"]
    summary = extract_script.run(extract_script.parse_args(argv), model, tokenizer)
    assert summary["written"] == 2
    store = TextFeatureStore(tmp_path / "feat", "nyu", "train")
    assert store.packed and store.get("/" + list(CAPTIONS)[0]).shape == (1024,)
    assert not feature_path(tmp_path / "feat", "nyu", "train", list(CAPTIONS)[2]).exists()  # not in the split
    split.write_text("/missing/rgb_1.jpg /missing/d.png 518.8579\n")
    with pytest.raises(SystemExit, match="^error: 1 of 1 captions .* missing"):
        extract_script.run(extract_script.parse_args(argv), model, tokenizer)


def test_prepare_dataset_text(tmp_path, rn50, tiny_coca, prepare_script):
    names = ["a/img1.png", "b/img2.jpg"]
    _write_images(tmp_path / "imgs", names)
    argv = ["--images", str(tmp_path / "imgs"), "--dataset", "mine", "--split", "test",
            "--text_dir", str(tmp_path / "text"), "--text_feat_dir", str(tmp_path / "feat"),
            "--seq_len", "7", "--generation_type", "greedy"]
    summary = prepare_script.run(prepare_script.parse_args(argv), captioner=tiny_coca, encoder=rn50)
    assert summary["captions_written"] == 2 and summary["features_written"] == 2 and summary["dim"] == 1024
    store = TextFeatureStore(tmp_path / "feat", "mine", "test")
    assert store.packed
    model, tokenizer = rn50
    for name in names:
        caption = read_caption(caption_path(tmp_path / "text", "mine", "test", name))
        want = encode_captions(model, tokenizer, [caption])[0].half().float()
        # batched vs single encoding differ at float rounding, then by one float16 step at most
        torch.testing.assert_close(store.get(name), want, rtol=0, atol=1e-3)
    summary = prepare_script.run(prepare_script.parse_args(argv), captioner=tiny_coca, encoder=rn50)
    assert summary["captions_written"] == 0 and summary["features_written"] == 0


# ----------------------------------------------------------------------------- weights


def test_offline_error_before_any_output(tmp_path, offline, extract_script, caption_script, prepare_script):
    with pytest.raises(WeightsUnavailableError) as err:
        resolve_weights("RN50", "openai")
    for part in ("RN50", "openai", "timm/resnet50_clip.openai", "RN50.pt", "--weights_path", "HF_HUB_OFFLINE"):
        assert part in str(err.value)
    with pytest.raises(WeightsUnavailableError, match="--weights_path .*does not exist"):
        resolve_weights("RN50", "openai", weights_path=tmp_path / "nope.pt")

    _write_captions(tmp_path / "text")
    feat_dir = tmp_path / "text_feat"
    with pytest.raises(SystemExit, match="^error: .*RN50.*--weights_path"):
        extract_script.main(["--text_dir", str(tmp_path / "text"), "--dataset", "nyu", "--split", "test",
                             "--text_feat_dir", str(feat_dir), "--packed"])
    assert not feat_dir.exists()

    _write_images(tmp_path / "imgs", ["x.png"])
    new_text = tmp_path / "new_text"
    with pytest.raises(SystemExit, match="^error: .*coca_ViT-L-14.*--weights_path"):
        caption_script.main(["--images", str(tmp_path / "imgs"), "--dataset", "mine", "--split", "test",
                             "--text_dir", str(new_text)])
    with pytest.raises(SystemExit, match="^error: .*coca_ViT-L-14"):
        prepare_script.main(["--images", str(tmp_path / "imgs"), "--dataset", "mine", "--split", "test",
                             "--text_dir", str(new_text), "--text_feat_dir", str(feat_dir)])
    assert not new_text.exists() and not feat_dir.exists()


def test_weights_path_loads_local_file(tmp_path, tiny_coca, offline):
    model, _, _ = tiny_coca
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # some open_clip parameters are left uninitialised (torch.empty)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    path = tmp_path / "tiny_coca.pt"
    torch.save(model.state_dict(), path)
    loaded, _ = load_captioner(TINY_COCA, pretrained=None, weights_path=path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_text_encoder_from_a_file_equals_the_saved_model(tmp_path, rn50):
    """Built without random initialisation when a weights file follows: every weight and the features
    are the file's."""
    model, tokenizer = rn50
    path = tmp_path / "rn50.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(123)  # a different random init would show if any weight were not loaded
    loaded, tok = load_text_encoder("RN50", pretrained=None, weights_path=path)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    captions = ["a bedroom with a bed", "a long corridor"]
    assert torch.equal(encode_captions(loaded, tok, captions), encode_captions(model, tokenizer, captions))

"""Checkpoint loading: original layout, prefixes, numpy entries, safety, clear errors."""
import zipfile

import numpy as np
import pytest
import torch

import wordepth
from wordepth.checkpoints import (CheckpointError, load_swin_pretrained, project_to_original, safe_load,
                                  save_original_checkpoint)
from wordepth.models.wordepth import WorDepth, preset_config


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return WorDepth(preset_config("tiny")).eval()


def _x():
    g = torch.Generator().manual_seed(3)
    return torch.randn(1, 3, 64, 64, generator=g), torch.randn(1, 1024, generator=g)


def _same_output(a, b):
    image, text = _x()
    with torch.no_grad():
        torch.testing.assert_close(a(image, text), b(image, text), rtol=0, atol=0)


def test_original_layout_roundtrip_with_numpy_entry(tiny, tmp_path):
    path = tmp_path / "orig.pth"
    save_original_checkpoint(tiny, path, global_step=7, best_steps=np.arange(9, dtype=np.int32))
    raw = safe_load(path)
    assert all(k.startswith("module.") for k in raw["model"])
    assert "module.backbone.layers.0.downsample.reduction.weight" in raw["model"]  # original naming
    assert "module.backbone.layers.0.blocks.0.attn.relative_position_index" in raw["model"]
    assert isinstance(raw["best_eval_steps"], np.ndarray) and raw["best_eval_steps"][8] == 8
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # plain weights_only refuses the numpy array
    # the original layout does not record the preset: load the tiny network's state by hand
    model = WorDepth(tiny.cfg)
    wordepth.checkpoints.load_network_state(model, raw["model"])
    _same_output(tiny, model.eval())


def test_numpy1_pickled_array_loads(tiny, tmp_path):
    """Release checkpoints were pickled under numpy 1.x (numpy.core.multiarray)."""
    path = tmp_path / "np1.pth"
    save_original_checkpoint(tiny, path, global_step=1)
    rewritten = tmp_path / "np1b.pth"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(rewritten, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(item, data)
    assert safe_load(rewritten)["global_step"] == 1


def test_with_and_without_module_prefix(tiny, tmp_path):
    bare = {k[len("module."):]: v for k, v in project_to_original(tiny).items()}
    for state in (bare, project_to_original(tiny)):
        model = WorDepth(tiny.cfg)
        wordepth.checkpoints.load_network_state(model, state)
        _same_output(tiny, model.eval())


def test_wrong_file_gives_clear_error(tiny, tmp_path):
    swin = tmp_path / "swin.pth"
    torch.save({"model": {k[len("backbone."):]: v for k, v in tiny.state_dict().items()
                          if k.startswith("backbone.layers") or k.startswith("backbone.patch_embed")}}, swin)
    with pytest.raises(CheckpointError, match="Swin ImageNet classification weights"):
        wordepth.load_checkpoint(swin)
    other = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="unrecognised dict"):
        wordepth.load_checkpoint(other)
    partial = {k: v for k, v in project_to_original(tiny).items() if "text_encoder.mean" not in k}
    model = WorDepth(tiny.cfg)
    with pytest.raises(CheckpointError, match=r"missing keys \(6\): text_encoder.mean.0.bias"):
        wordepth.checkpoints.load_network_state(model, partial)
    truncated = tmp_path / "trunc.pth"
    save_original_checkpoint(tiny, truncated, 0)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot read"):
        wordepth.load_checkpoint(truncated)
    with pytest.raises(FileNotFoundError):
        wordepth.load_checkpoint(tmp_path / "nope.pth")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": _Evil(str(marker))}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        wordepth.load_checkpoint(path)
    assert not marker.exists()


def test_swin_imagenet_weights_original_layout(tiny, tmp_path):
    """The Swin release stores downsampling at the end of stages: mapped onto timm's layout."""
    state = {}
    for k, v in tiny.backbone.state_dict().items():
        if k.startswith(("norm", "absolute_pos_embed")):
            continue
        k2 = k
        if ".downsample." in k:
            i = int(k.split(".")[1])
            k2 = k.replace(f"layers.{i}.downsample", f"layers.{i - 1}.downsample")
        state[k2] = v.clone() + 1.0
    state["head.weight"] = torch.zeros(10, 256)
    path = tmp_path / "swin_22k.pth"
    torch.save({"model": state}, path)
    fresh = WorDepth(tiny.cfg).backbone
    missing, unexpected = load_swin_pretrained(fresh, str(path))
    assert set(missing) == {"absolute_pos_embed", "norm0.weight", "norm0.bias", "norm1.weight", "norm1.bias",
                            "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias"}
    w = fresh.state_dict()["layers.1.downsample.reduction.weight"]
    torch.testing.assert_close(w, tiny.backbone.state_dict()["layers.1.downsample.reduction.weight"] + 1.0)


def test_ape_grid_is_resized_on_load(tiny, tmp_path):
    model = WorDepth(preset_config("tiny", ape_grid=(12, 16)))
    wordepth.checkpoints.load_network_state(model, project_to_original(tiny))
    assert model.backbone.absolute_pos_embed.shape[2:] == (12, 16)


def test_project_layout_state_dict_loads(tiny, tmp_path):
    """This project's own keys (timm layout) must not be shifted like original-release keys."""
    path = tmp_path / "own.pth"
    torch.save({"format": "wordepth", "config": {"model": tiny.cfg.to_dict()}, "model": tiny.state_dict()}, path)
    _same_output(tiny, wordepth.load_checkpoint(path))
    ddp = {"module." + k: v for k, v in tiny.state_dict().items()}
    model = WorDepth(tiny.cfg)
    wordepth.checkpoints.load_network_state(model, ddp)
    _same_output(tiny, model.eval())


def test_missing_swin_weights_say_where_to_get_them(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="swin_large_patch4_window12_384_22k.pth from https://"):
        load_swin_pretrained(WorDepth(tiny.cfg).backbone, str(tmp_path / "swin_large_patch4_window12_384_22k.pth"))


def test_safe_load_reads_zip_and_legacy_format_files_alike(tmp_path):
    """mmap=True maps zip-format files; torch's legacy (pre-1.6) format cannot be mapped and is read."""
    obj = {"model": {"w": torch.arange(6.0).view(2, 3), "b": torch.ones(3, dtype=torch.float64)}, "global_step": 7}
    for name, zipped in (("new.pth", True), ("legacy.pth", False)):
        torch.save(obj, tmp_path / name, _use_new_zipfile_serialization=zipped)
        for mmap in (False, True):
            loaded = safe_load(tmp_path / name, mmap=mmap)
            assert loaded["global_step"] == 7 and loaded["model"].keys() == obj["model"].keys()
            for k, v in obj["model"].items():
                assert torch.equal(loaded["model"][k], v) and loaded["model"][k].dtype == v.dtype
    (tmp_path / "cut.pth").write_bytes((tmp_path / "new.pth").read_bytes()[:200])
    for mmap in (False, True):
        with pytest.raises(CheckpointError, match="cannot read"):
            safe_load(tmp_path / "cut.pth", mmap=mmap)

"""Checkpoints: the one loader (original, project and safetensors files), safe reading, clear errors,
and writing through wordepth.outputs (atomic, the mode of every other output)."""
import errno
import os
import stat
import zipfile

import numpy as np
import pytest
import torch

import wordepth
from wordepth.checkpoints import (FORMAT, FORMAT_VERSION, CheckpointError, load_checkpoint, load_swin_pretrained,
                                  load_training_state, project_to_original, save_checkpoint, save_original_checkpoint,
                                  save_safetensors)
from wordepth.models.wordepth import WorDepth, preset_config
from wordepth.outputs import OutputError, write_json


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


def _project_checkpoint(model):
    """This project's layout, as a run's last.pth holds it (without the training state)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "config": {"model": model.cfg.to_dict()},
            "model": model.state_dict()}


# --------------------------------------------------------------------------- the one loader
def test_one_loader_reads_original_project_and_safetensors_files_to_the_same_weights(tiny, tmp_path):
    original = tmp_path / "model-7-best_abs_rel_0.12345"  # a run's best checkpoint: the original layout
    save_original_checkpoint(tiny, original, global_step=7)
    project = save_checkpoint(_project_checkpoint(tiny), tmp_path / "last.pth")
    safetensors, _ = save_safetensors(tiny, tmp_path / "tiny.safetensors")
    want = tiny.state_dict()
    for path in (original, project, safetensors):
        model = load_checkpoint(path)
        assert not model.training and model.cfg.backbone == tiny.cfg.backbone, path.name
        got = model.state_dict()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), path.name
        _same_output(tiny, model)
    model, info = load_checkpoint(original, with_info=True)
    assert info["kind"] == "original" and info["meta"]["global_step"] == 7
    assert load_checkpoint(safetensors, with_info=True).info["kind"] == "wordepth"


def test_a_state_read_for_a_resume_gives_the_same_network(tiny, tmp_path):
    path = save_checkpoint({**_project_checkpoint(tiny), "global_step": 3, "optimizer": {"state": {}}},
                           tmp_path / "last.pth")
    state = load_training_state(path)
    assert state["global_step"] == 3 and state["optimizer"] == {"state": {}}
    _same_output(tiny, load_checkpoint(state))


def test_original_layout_roundtrip_with_numpy_entry(tiny, tmp_path):
    path = tmp_path / "orig.pth"
    save_original_checkpoint(tiny, path, global_step=7, best_steps=np.arange(9, dtype=np.int32))
    raw = load_training_state(path)
    assert all(k.startswith("module.") for k in raw["model"])
    assert "module.backbone.layers.0.downsample.reduction.weight" in raw["model"]  # original naming
    assert "module.backbone.layers.0.blocks.0.attn.relative_position_index" in raw["model"]
    assert isinstance(raw["best_eval_steps"], np.ndarray) and raw["best_eval_steps"][8] == 8
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)  # plain weights_only refuses the numpy array
    _same_output(tiny, load_checkpoint(raw))


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
    assert load_training_state(rewritten)["global_step"] == 1


def test_with_and_without_module_prefix(tiny):
    original = project_to_original(tiny)
    bare = {k[len("module."):]: v for k, v in original.items()}
    ddp = {"module." + k: v for k, v in tiny.state_dict().items()}  # this project's keys under DDP
    for state in (bare, original, ddp):
        _same_output(tiny, load_checkpoint(state))


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
    with pytest.raises(CheckpointError, match=r"missing keys \(6\): text_encoder.mean.0.bias"):
        load_checkpoint(partial)
    wide = {**project_to_original(tiny), "module.backbone.absolute_pos_embed": torch.zeros(1, 48, 24, 32)}
    with pytest.raises(CheckpointError, match="unsupported backbone width 48"):
        load_checkpoint(wide)
    truncated = tmp_path / "trunc.pth"
    save_original_checkpoint(tiny, truncated, 0)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="cannot read"):
        wordepth.load_checkpoint(truncated)
    with pytest.raises(FileNotFoundError):
        wordepth.load_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="is a folder"):
        load_training_state(tmp_path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": torch.zeros(1)}, "payload": _Evil(str(marker))}, path)
    for load in (wordepth.load_checkpoint, load_training_state):
        with pytest.raises(CheckpointError, match="weights-only"):
            load(path)
    assert not marker.exists()


def test_ape_grid_is_resized_on_load(tiny):
    model = load_checkpoint(project_to_original(tiny), overrides={"ape_grid": (12, 16)})
    assert model.backbone.absolute_pos_embed.shape[2:] == (12, 16)


def test_reading_zip_and_legacy_format_files_alike(tmp_path):
    """mmap=True maps zip-format files; torch's legacy (pre-1.6) format cannot be mapped and is read."""
    obj = {"model": {"w": torch.arange(6.0).view(2, 3), "b": torch.ones(3, dtype=torch.float64)}, "global_step": 7}
    for name, zipped in (("new.pth", True), ("legacy.pth", False)):
        torch.save(obj, tmp_path / name, _use_new_zipfile_serialization=zipped)
        for mmap in (False, True):
            loaded = load_training_state(tmp_path / name, mmap=mmap)
            assert loaded["global_step"] == 7 and loaded["model"].keys() == obj["model"].keys()
            for k, v in obj["model"].items():
                assert torch.equal(loaded["model"][k], v) and loaded["model"][k].dtype == v.dtype
    (tmp_path / "cut.pth").write_bytes((tmp_path / "new.pth").read_bytes()[:200])
    for mmap in (False, True):
        with pytest.raises(CheckpointError, match="cannot read"):
            load_training_state(tmp_path / "cut.pth", mmap=mmap)


# --------------------------------------------------------------------------- Swin ImageNet weights
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


def test_missing_swin_weights_say_where_to_get_them(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="swin_large_patch4_window12_384_22k.pth from https://"):
        load_swin_pretrained(WorDepth(tiny.cfg).backbone, str(tmp_path / "swin_large_patch4_window12_384_22k.pth"))
    wrong = tmp_path / "wrong.pth"
    save_original_checkpoint(tiny, wrong, 0)
    with pytest.raises(CheckpointError, match="is not Swin ImageNet weights: it looks like an original WorDepth"):
        load_swin_pretrained(WorDepth(tiny.cfg).backbone, str(wrong))


# --------------------------------------------------------------------------- writing
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_checkpoints_get_the_file_mode_of_every_other_output(tiny, tmp_path, umask):
    previous = os.umask(umask)
    try:
        written = [save_checkpoint(_project_checkpoint(tiny), tmp_path / "last.pth"),
                   save_original_checkpoint(tiny, tmp_path / "model-1-best_abs_rel_0.10000", 1),
                   *save_safetensors(tiny, tmp_path / "tiny.safetensors")]
        other = write_json(tmp_path / "metrics.json", {"abs_rel": 0.1})
    finally:
        os.umask(previous)
    want = stat.S_IMODE(other.stat().st_mode)
    assert want == 0o666 & ~umask
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == {p.name: want for p in written}


def _fails_midway(err):
    real = torch.save

    def save(obj, f, *args, **kwargs):
        real({"half": torch.zeros(1000)}, f)  # bytes on disk, then the failure
        raise err

    return save


@pytest.mark.parametrize("err, raised", [
    (OSError(errno.ENOSPC, "No space left on device"), OutputError),
    (RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), OutputError),
    (KeyboardInterrupt(), KeyboardInterrupt),
])
def test_a_failed_checkpoint_write_leaves_no_partial_file(tiny, tmp_path, monkeypatch, err, raised):
    last = save_checkpoint(_project_checkpoint(tiny), tmp_path / "last.pth")
    before = last.read_bytes()
    monkeypatch.setattr(torch, "save", _fails_midway(err))
    with pytest.raises(raised) as caught:
        save_checkpoint(_project_checkpoint(tiny), last)
    with pytest.raises(raised):
        save_original_checkpoint(tiny, tmp_path / "model-2-best_abs_rel_0.20000", 2)
    if raised is OutputError:
        assert str(caught.value).startswith(f"could not write {last}: ") and "\n" not in str(caught.value)
        assert str(caught.value).endswith("the previous file is kept")
    assert last.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temporary, no half-written best

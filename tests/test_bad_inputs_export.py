"""Bad inputs to wordepth-export, wordepth-convert, .safetensors loading and ``wordepth-predict --onnx``.

Every case runs the command's ``main(argv)`` through :func:`tests.catalogue.run_case`: the exit
status, one ``error:`` line naming the file or flag, no traceback, files that existed before
unchanged, nothing created outside the output folder. A full or read-only disk is simulated by a
writer that fails midway.
"""
from __future__ import annotations

import errno
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.catalogue import run_case
from wordepth.checkpoints import writing as checkpoint_writing
from wordepth.checkpoints import CheckpointError, load_checkpoint, save_safetensors
from wordepth.cli import convert as convert_cli
from wordepth.models.wordepth import WorDepth, preset_config


def tiny(seed: int = 0) -> WorDepth:
    torch.manual_seed(seed)
    return WorDepth(preset_config("tiny", drop_path_rate=0.0)).eval()


def save_pth(model: WorDepth, path: Path) -> Path:
    torch.save({"format": "wordepth", "config": {"model": model.cfg.to_dict()}, "model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_pth(tiny(), tmp_path_factory.mktemp("ck") / "tiny.pth")


def safetensors_with(path: Path, metadata: dict | None, model: WorDepth | None = None) -> Path:
    """A .safetensors file of the tiny network with the header metadata given (None: no metadata)."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in (model or tiny()).state_dict().items()}
    save_file(state, str(path), metadata=metadata)
    return path


def config_with(**fields) -> dict:
    cfg = tiny().cfg.to_dict()
    for key, value in fields.items():
        target = cfg["backbone"] if key in cfg["backbone"] else cfg
        target[key] = value
    return {"wordepth": json.dumps({"format": "wordepth", "config": {"model": cfg}})}


def failing_writer(err: int, partial: bytes = b"partial"):
    def write(*args, **kwargs):
        path = next((a for a in args if isinstance(a, (str, Path)) and str(a).endswith((".onnx", ".safetensors"))),
                    None)
        if path is not None:
            Path(path).write_bytes(partial)
        raise OSError(err, errno.errorcode[err] if err not in (errno.ENOSPC, errno.EROFS)
                      else ("No space left on device" if err == errno.ENOSPC else "Read-only file system"))
    return write


# --------------------------------------------------------------------------- wordepth-convert
def test_convert_never_overwrites_a_json_beside_it_and_reads_old_sidecars(ckpt, tmp_path):
    metrics = tmp_path / "nyu.json"
    metrics.write_text('{"abs_rel": 0.1}\n')  # the README's eval example writes it beside nyu.pth
    out = tmp_path / "nyu.safetensors"
    run_case(convert_cli.main, [ckpt, out], tmp_path, code=0, out_root=tmp_path)
    assert json.loads(metrics.read_text()) == {"abs_rel": 0.1}
    assert json.loads((tmp_path / "nyu.safetensors.json").read_text())["format"] == "wordepth"
    assert load_checkpoint(out).cfg == tiny().cfg
    # a file made before: no header metadata, its settings in OUT.json
    old = safetensors_with(tmp_path / "old.safetensors", None, tiny(3))
    cfg = tiny().cfg.replace(max_depth=80.0, prior_mean=2.54)
    (tmp_path / "old.json").write_text(json.dumps({"format": "wordepth", "config": {"model": cfg.to_dict()}}))
    assert load_checkpoint(old).cfg.max_depth == 80.0


@pytest.mark.parametrize("case", ["under_a_file", "proc", "full_disk", "read_only"])
def test_convert_output_that_cannot_be_written(ckpt, tmp_path, monkeypatch, case):
    (tmp_path / "blocker").write_text("x")
    out = tmp_path / "out" / "m.safetensors"
    names = ["m.safetensors"]
    if case == "under_a_file":
        out, names = tmp_path / "blocker" / "m.safetensors", ["OUT", "blocker", "not a folder"]
    elif case == "proc":
        out, names = Path("/proc/wordepth_test.safetensors"), ["/proc/wordepth_test.safetensors"]
    elif case == "full_disk":
        monkeypatch.setattr(checkpoint_writing, "save_file", failing_writer(errno.ENOSPC))
        names += ["No space left on device"]
    else:
        monkeypatch.setattr(checkpoint_writing, "save_file", failing_writer(errno.EROFS))
        names += ["Read-only file system"]
    if case in ("full_disk", "read_only"):
        out.parent.mkdir()
        out.write_bytes(b"the previous conversion")
        names += ["previous file is kept"]
    run_case(convert_cli.main, [ckpt, out], tmp_path, names=names)
    assert not Path("/proc/wordepth_test.safetensors").exists()


@pytest.mark.parametrize("metadata, names", [
    (config_with(embed_dim=8192), ["bad.safetensors", "embed_dim 8192"]),
    (config_with(latent_dim=-5), ["bad.safetensors", "latent_dim -5"]),
    (config_with(ape_grid=[100000, 100000]), ["bad.safetensors", "ape_grid"]),
    (config_with(depths="two"), ["bad.safetensors", "depths"]),
    (config_with(window_size=4), ["bad.safetensors", "does not match"]),  # valid, but not these tensors
    ({"wordepth": json.dumps({"format": "wordepth"})}, ["bad.safetensors", "config"]),
    ({"wordepth": "[1, 2]"}, ["bad.safetensors", "list"]),
    ({"wordepth": '{"format": "wordepth", "config": {"mod'}, ["bad.safetensors", "not valid JSON"]),
])
def test_safetensors_settings_are_validated_before_building(tmp_path, metadata, names):
    bad = safetensors_with(tmp_path / "bad.safetensors", metadata)
    run_case(convert_cli.main, [bad, tmp_path / "out" / "x.safetensors"], tmp_path, names=names)
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)


def test_malformed_sidecar_is_named(tmp_path):
    bare = safetensors_with(tmp_path / "x.safetensors", None)
    (tmp_path / "x.safetensors.json").write_text("{oops")
    run_case(convert_cli.main, [bare, tmp_path / "out" / "y.safetensors"], tmp_path,
             names=["x.safetensors.json", "not valid JSON"])
    (tmp_path / "x.safetensors.json").write_text("[]")
    run_case(convert_cli.main, [bare, tmp_path / "out" / "y.safetensors"], tmp_path,
             names=["x.safetensors.json", "list"])


def test_truncated_safetensors_header_is_named(tmp_path):
    good = safetensors_with(tmp_path / "good.safetensors", config_with())
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:100])
    run_case(convert_cli.main, [cut, tmp_path / "out" / "y.safetensors"], tmp_path, names=["cut.safetensors"])


def duplicated_name(src: Path, dst: Path, name: str) -> Path:
    """``src`` with the header entry of tensor ``name`` given a second time (the same entry)."""
    raw = src.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = raw[8:8 + n].decode().rstrip()
    text = header[:-1] + f', "{name}": {json.dumps(json.loads(header)[name])}}}'
    dst.write_bytes(len(text).to_bytes(8, "little") + text.encode() + raw[8 + n:])
    return dst


def test_safetensors_header_with_a_duplicate_tensor_name_is_refused(tmp_path):
    from safetensors.torch import load_file

    good = safetensors_with(tmp_path / "good.safetensors", config_with())
    dup = duplicated_name(good, tmp_path / "dup.safetensors", "backbone.absolute_pos_embed")
    assert "backbone.absolute_pos_embed" in load_file(dup)  # the library alone takes it: the last entry wins
    run_case(convert_cli.main, [dup, tmp_path / "out" / "y.safetensors"], tmp_path,
             names=["dup.safetensors", "'backbone.absolute_pos_embed' twice"])
    with pytest.raises(CheckpointError, match=r"dup\.safetensors .*'backbone\.absolute_pos_embed' twice\): malformed;"):
        load_checkpoint(dup)


# --------------------------------------------------------------------------- wordepth-export
@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    from wordepth.inference.export import export_onnx

    return export_onnx(tiny(), tmp_path_factory.mktemp("graph") / "tiny.onnx")


def test_export_int8_keeps_a_users_file_named_like_its_temporary(ckpt, tmp_path):
    pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")
    from wordepth.cli import export as export_cli

    mine = tmp_path / "m.fp32.onnx"
    mine.write_bytes(b"my own float32 graph")
    run_case(export_cli.main, [ckpt, tmp_path / "m.onnx", "--int8"], tmp_path, code=0, out_root=tmp_path,
             may_change=[])
    assert mine.read_bytes() == b"my own float32 graph"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fp32.onnx", "m.onnx"]


@pytest.mark.parametrize("case", ["full_disk", "under_a_file", "equal_to_input"])
def test_export_that_cannot_write_keeps_the_previous_graph(ckpt, graph, tmp_path, monkeypatch, case):
    import onnx as onnx_lib

    from wordepth.cli import export as export_cli

    out = tmp_path / "m.onnx"
    out.write_bytes(graph.read_bytes())  # a previous good graph
    if case == "full_disk":
        monkeypatch.setattr(onnx_lib, "save", failing_writer(errno.ENOSPC))
        argv, names = [ckpt, out], ["m.onnx", "No space left on device", "previous file is kept"]
    elif case == "under_a_file":
        argv, names = [ckpt, out / "x.onnx"], ["OUT", "m.onnx/x.onnx"]
    else:
        argv, names = [out, out], ["OUT", "m.onnx", "inputs"]
    run_case(export_cli.main, argv, tmp_path, names=names)


def test_predict_refuses_a_graph_of_another_checkpoint_and_a_graph_without_text(graph, tmp_path):
    import onnx as onnx_lib
    from onnx import TensorProto, helper

    from wordepth.cli import predict as predict_cli

    photo = tmp_path / "room.png"
    cv2.imwrite(str(photo), np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    other = save_pth(tiny(seed=1), tmp_path / "other.pth")
    base = ["--images", photo, "--out", tmp_path / "out"]
    run_case(predict_cli.main, ["--checkpoint", other, "--onnx", graph, *base], tmp_path,
             names=["tiny.onnx", "another network"])
    same = save_pth(tiny(), tmp_path / "same.pth")  # the graph's own weights: accepted
    run_case(predict_cli.main, ["--checkpoint", same, "--onnx", graph, *base], tmp_path, code=0,
             out_root=tmp_path / "out")
    node = helper.make_node("Identity", ["image"], ["depth"])
    bare = helper.make_model(helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("depth", TensorProto.FLOAT, [1, 3, 32, 32])]))
    onnx_lib.save(bare, str(tmp_path / "notext.onnx"))
    run_case(predict_cli.main, ["--checkpoint", same, "--onnx", tmp_path / "notext.onnx", *base], tmp_path,
             names=["notext.onnx", "text"], out_root=tmp_path / "out")


def test_export_records_the_network_it_came_from(graph):
    from wordepth.inference.export import SOURCE_KEY, OnnxDepthModel, network_fingerprint

    assert OnnxDepthModel(graph).metadata[SOURCE_KEY] == network_fingerprint(tiny())
    assert network_fingerprint(tiny()) != network_fingerprint(tiny(seed=1))


def test_safetensors_round_trip_keeps_the_fingerprint(tmp_path):
    from wordepth.inference.export import network_fingerprint

    path, sidecar = save_safetensors(tiny(), tmp_path / "t.safetensors")
    assert sidecar.name == "t.safetensors.json"
    assert network_fingerprint(load_checkpoint(path)) == network_fingerprint(tiny())

"""ONNX export of the image network (wordepth.inference.export, wordepth-export) on the tiny preset."""
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the [onnx] extra (onnx, onnxruntime) is not installed")

from wordepth.checkpoints import save_safetensors  # noqa: E402
from wordepth.cli import export as export_cli  # noqa: E402
from wordepth.inference.export import OnnxDepthModel, export_onnx  # noqa: E402
from wordepth.models.wordepth import WorDepth, preset_config  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = WorDepth(preset_config("tiny", drop_path_rate=0.0)).eval()
    with torch.no_grad():  # fills the blocks' size caches: they must not leak into the graph
        model(torch.randn(1, 3, 64, 96), torch.randn(1, 1024))
    return model


@pytest.fixture(scope="module")
def graph(tiny, tmp_path_factory):
    return export_onnx(tiny, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.mark.parametrize("batch,size", [(2, (64, 96)), (2, (96, 160)), (1, (128, 64))])
def test_graph_equals_pytorch_for_other_sizes_and_batches(tiny, graph, batch, size):
    """Exported at 1x96x128; batch, height and width are dynamic."""
    g = torch.Generator().manual_seed(sum(size) + batch)
    image, text = torch.randn(batch, 3, *size, generator=g), torch.randn(batch, 1024, generator=g)
    with torch.no_grad():
        expected = tiny(image, text).numpy()
    got = OnnxDepthModel(graph, threads=1)(image.numpy(), text.numpy())
    assert got.shape == expected.shape == (batch, 1, *size)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=0)


def test_runner_pads_any_size_like_predict(tiny, graph):
    image, text = torch.randn(1, 3, 50, 70), torch.randn(1, 1024)
    with torch.no_grad():
        expected = tiny(image, text).numpy()  # replicate-padded to 64x96 and cropped back
    np.testing.assert_allclose(OnnxDepthModel(graph)(image.numpy(), text.numpy()), expected, rtol=1e-4, atol=0)


def test_export_leaves_the_model_as_it_was(tiny, graph):
    assert not tiny.training and tiny.fast_paths


class _EditedDecode(WorDepth):
    """A researcher's edit of one stage: the graph must compute it too."""

    def decode(self, z, x, x3, x2):
        return [t * 1.25 for t in super().decode(z, x, x3, x2)]


def test_an_edited_stage_is_exported_as_edited(tiny, tmp_path):
    edited = _EditedDecode(tiny.cfg).eval()
    edited.load_state_dict(tiny.state_dict())
    image, text = torch.randn(1, 3, 64, 96), torch.randn(1, 1024)
    with torch.no_grad():
        expected, unedited = edited(image, text).numpy(), tiny(image, text).numpy()
    got = OnnxDepthModel(export_onnx(edited, tmp_path / "edited.onnx"), threads=1)(image.numpy(), text.numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=0)
    assert not np.allclose(got, unedited, rtol=1e-3)


@pytest.mark.slow  # two more exports
def test_export_command_float32_and_int8(tiny, tmp_path):
    ckpt, _ = save_safetensors(tiny, tmp_path / "tiny.safetensors")
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 3, 64, 96)).astype(np.float32)
    text = rng.standard_normal((2, 1024)).astype(np.float32)
    with torch.no_grad():
        expected = tiny(torch.from_numpy(image), torch.from_numpy(text)).numpy()
    assert export_cli.main([str(ckpt), str(tmp_path / "f.onnx")]) == 0
    np.testing.assert_allclose(OnnxDepthModel(tmp_path / "f.onnx")(image, text), expected, rtol=1e-4, atol=0)
    assert export_cli.main([str(ckpt), str(tmp_path / "q.onnx"), "--int8"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["f.onnx", "q.onnx"]  # no float32 leftover
    quantized = OnnxDepthModel(tmp_path / "q.onnx")(image, text)
    assert quantized.shape == expected.shape and np.isfinite(quantized).all()
    assert np.median(np.abs(quantized / expected - 1)) < 0.1  # int8: close, not exact
    with pytest.raises(SystemExit, match="must end in .onnx"):
        export_cli.main([str(ckpt), str(tmp_path / "x.pt")])


def test_predict_command_with_onnx_equals_pytorch(tiny, graph, tmp_path):
    """wordepth-predict --onnx runs the image network from the graph: the same depth files to 1e-4;
    a missing or broken graph is one error line."""
    import cv2

    from wordepth.cli import predict as predict_cli

    ckpt, _ = save_safetensors(tiny, tmp_path / "tiny.safetensors")
    rng = np.random.default_rng(2)
    photo = tmp_path / "room.png"
    cv2.imwrite(str(photo), cv2.GaussianBlur(rng.integers(0, 256, (70, 100, 3), dtype=np.uint8), (5, 5), 0))
    base = ["--checkpoint", str(ckpt), "--images", str(photo), "--max_pixels", "0"]
    assert predict_cli.main(base + ["--out", str(tmp_path / "torch"), "--device", "cpu"]) == 0
    assert predict_cli.main(base + ["--out", str(tmp_path / "onnx"), "--onnx", str(graph)]) == 0
    expected = np.load(tmp_path / "torch" / "room_depth.npy")
    assert expected.shape == (70, 100)
    np.testing.assert_allclose(np.load(tmp_path / "onnx" / "room_depth.npy"), expected, rtol=1e-4, atol=0)
    with pytest.raises(SystemExit, match="ONNX graph not found"):
        predict_cli.main(base + ["--out", str(tmp_path / "x"), "--onnx", str(tmp_path / "missing.onnx")])
    (tmp_path / "bad.onnx").write_text("not a graph")
    with pytest.raises(SystemExit, match="cannot load .*bad.onnx as an ONNX graph"):
        predict_cli.main(base + ["--out", str(tmp_path / "y"), "--onnx", str(tmp_path / "bad.onnx")])

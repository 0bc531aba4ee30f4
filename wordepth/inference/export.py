"""The image network as an ONNX graph, and a small ONNX Runtime runner for it.

    from wordepth.inference.export import OnnxDepthModel, export_onnx
    export_onnx(load_checkpoint("nyu.pth", variant="nyu"), "wordepth_nyu.onnx")
    depth = OnnxDepthModel("wordepth_nyu.onnx")(image, text)    # numpy in, numpy out

The graph takes the ImageNet-normalised image (B, 3, H, W) float32 and the CLIP caption feature
(B, 1024) float32 and returns metric depth (B, 1, H, W) of the image branch, what
``WorDepth.forward`` evaluates; batch, height and width are dynamic. H and W must be multiples of
32 inside the graph: :class:`OnnxDepthModel` pads any size (replicate, like ``WorDepth.predict``)
and crops the result back. Needs the ``[onnx]`` extra (``pip install wordepth[onnx]``: onnx and
onnxruntime). Measured speed and error: docs/performance.md.

Every graph records the network it came from (:func:`network_fingerprint`, a SHA-256 of the state
dict, in its ``metadata_props``), so that ``wordepth-predict --onnx GRAPH --checkpoint CK`` can
refuse a graph of another checkpoint. Files are written atomically (``wordepth.outputs``).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from wordepth.errors import UserError
from wordepth.models.wordepth import INPUT_MULTIPLE, WorDepth
from wordepth.outputs import write_atomic

__all__ = ["OPSET", "SOURCE_KEY", "OnnxDepthModel", "check_graph_source", "export_onnx", "missing_onnx_packages",
           "network_fingerprint", "quantize_int8"]

OPSET = 17
SOURCE_KEY = "wordepth_network_sha256"  # the graph's metadata_props entry: which network it was exported from


def missing_onnx_packages(packages: tuple[str, ...] = ("onnx", "onnxruntime")) -> list[str]:
    """The packages of the ``[onnx]`` extra that are not installed, found without importing them."""
    return [name for name in packages if importlib.util.find_spec(name) is None]


class _ImageNetwork(nn.Module):
    """image (B, 3, H, W), caption feature (B, D) -> depth (B, 1, H, W): ``WorDepth.forward``, the image
    branch's stages as the model defines them (an edited stage is exported as edited)."""

    def __init__(self, model: WorDepth):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.model(image, text)


@contextlib.contextmanager
def _traceable(model: WorDepth):
    """The model in eval mode, its modules computing explicitly (fast paths off), with empty size caches.

    The ONNX exporter traces one forward; shape arithmetic becomes graph operations, but what the
    backbone caches per input size (masks, gather indices, the resized position embedding) would
    enter the graph as constants if it were cached before. The shortcuts' index arithmetic does not
    trace for dynamic sizes; the explicit computation gives the same values (the same stages run:
    only the kernels inside the modules differ).
    """
    was_training, fast = model.training, model.fast_paths
    blocks = [b for stage in model.backbone.layers for b in stage.blocks]

    def clear():
        for b in blocks:
            for name in ("_mask_cache", "_index_cache"):
                b.__dict__.pop(name, None)
        model.backbone.__dict__.pop("_ape_cache", None)

    model.eval()
    model.fast_paths = False
    clear()
    try:
        yield model
    finally:
        clear()
        model.fast_paths = fast
        model.train(was_training)


def network_fingerprint(model: nn.Module) -> str:
    """SHA-256 of a network's state dict (names, dtypes, shapes and float32 values), independent of the file.

    The same weights give the same fingerprint from a ``.pth`` and its ``.safetensors`` conversion.
    """
    digest = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        t = value.detach().to("cpu", torch.float32) if value.is_floating_point() else value.detach().cpu()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _graph_bytes(model: WorDepth, example: tuple[torch.Tensor, torch.Tensor], opset: int) -> bytes:
    """The traced graph of the image network, serialised in memory."""
    image, text = example
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "text": {0: "batch"},
            "depth": {0: "batch", 2: "height", 3: "width"}}
    buffer = io.BytesIO()
    with _traceable(model), torch.no_grad(), warnings.catch_warnings():
        # the TorchScript-based exporter (which records shape arithmetic as graph operations, so that
        # height and width stay dynamic) warns that it is deprecated and about traced size checks
        warnings.simplefilter("ignore")
        torch.onnx.export(_ImageNetwork(model), (image.float(), text.float()), buffer,
                          input_names=["image", "text"], output_names=["depth"], dynamic_axes=axes,
                          opset_version=opset, dynamo=False)
    return buffer.getvalue()


def _with_source(graph, fingerprint: str):
    """The ONNX model proto with its source network recorded in ``metadata_props``."""
    for prop in list(graph.metadata_props):
        if prop.key == SOURCE_KEY:
            graph.metadata_props.remove(prop)
    entry = graph.metadata_props.add()
    entry.key, entry.value = SOURCE_KEY, fingerprint
    return graph


def export_onnx(model: WorDepth, path: str | os.PathLike, example: tuple[torch.Tensor, torch.Tensor] | None = None,
                opset: int = OPSET, int8: bool = False) -> Path:
    """Write the image network of ``model`` to ``path`` as ONNX (dynamic batch, height and width), atomically.

    Args:
        model: the network (on the CPU, float32); it is left as it was.
        path: output ``.onnx`` file (weights inside: about 1.1 GB for Swin-L). A previous file there
            is replaced only by a whole new graph; nothing else is written or removed.
        example: an (image, caption feature) pair to trace with; default 1x3x96x128 zeros and a
            zero feature (any multiple-of-32 size gives the same graph).
        opset: ONNX opset.
        int8: quantize the matrix products (:func:`quantize_int8`); the float32 graph goes through
            a private temporary folder beside ``path``.

    Raises:
        OutputError: ``path`` cannot be written (the previous file is kept).
    """
    import onnx  # onnx: optional ([onnx]), only when a graph is exported

    path = Path(path)
    if example is None:
        example = (torch.zeros(1, 3, 96, 128), torch.zeros(1, model.cfg.text_dim))
    image, _ = example
    if image.shape[-2] % INPUT_MULTIPLE or image.shape[-1] % INPUT_MULTIPLE:
        raise ValueError(f"the example image must have sides that are multiples of {INPUT_MULTIPLE}, "
                         f"got {tuple(image.shape[-2:])}")
    fingerprint = network_fingerprint(model)
    graph = _with_source(onnx.load_from_string(_graph_bytes(model, example, opset)), fingerprint)

    def write(tmp: Path) -> None:
        if not int8:
            onnx.save(graph, str(tmp))
            return
        with tempfile.TemporaryDirectory(prefix=".wordepth-export-", dir=tmp.parent) as work:
            fp32 = Path(work) / "float32.onnx"
            onnx.save(graph, str(fp32))
            quantize_int8(fp32, tmp)
        onnx.save(_with_source(onnx.load(str(tmp)), fingerprint), str(tmp))

    return write_atomic(path, write, what=f"the ONNX graph {path}")


def quantize_int8(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """int8 dynamic quantization of the graph's matrix products (ONNX Runtime); convolutions stay float32.

    Weights of every ``MatMul`` / ``Gemm`` (the Swin blocks' linear layers) are stored as int8 and
    activations are quantized per call: a smaller file and faster CPU inference, at a cost in
    accuracy measured in docs/performance.md.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic  # onnxruntime: optional ([onnx])

    out = Path(out)
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # onnxruntime logs a pre-processing hint on the root logger
    try:
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        logger.setLevel(level)
    return out


def check_graph_source(runner: "OnnxDepthModel", model: nn.Module) -> None:
    """Refuse a graph exported from another network than ``model``; warn when the graph records none.

    Raises:
        UserError: naming the graph, when its recorded fingerprint differs from the model's.
    """
    recorded = runner.metadata.get(SOURCE_KEY)
    if recorded is None:
        logging.getLogger(__name__).warning(
            "%s records no source network (exported before graphs recorded it): cannot check that it comes "
            "from the checkpoint; export it again with wordepth-export to have it checked", runner.path)
        return
    if recorded != network_fingerprint(model):
        raise UserError(f"the ONNX graph {runner.path} was exported from another network than the checkpoint "
                         f"(fingerprint {recorded[:12]}, the checkpoint's {network_fingerprint(model)[:12]}): "
                         "export it from this checkpoint with wordepth-export CHECKPOINT GRAPH")


class OnnxDepthModel:
    """Runs an exported graph with ONNX Runtime on the CPU; any image size (padded to x32, cropped back).

    Args:
        path: the ``.onnx`` file from :func:`export_onnx`.
        threads: intra-op threads (default: ONNX Runtime's choice, the physical cores).

    Raises:
        FileNotFoundError: no such file.
        UserError: the file is not an ONNX graph, or not one of ``wordepth-export`` (inputs ``image``
            and ``text``, output ``depth``), naming the file.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort  # onnxruntime: optional ([onnx]), only when a graph is run

        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"the ONNX graph {self.path} is a folder, not a file")
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX graph not found: {self.path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime's errors for a file that is not a graph
            first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
            raise UserError(f"cannot load {self.path} as an ONNX graph: {first}") from None
        inputs = sorted(i.name for i in self.session.get_inputs())
        outputs = [o.name for o in self.session.get_outputs()]
        if inputs != ["image", "text"] or "depth" not in outputs:
            raise UserError(f"{self.path} is not a wordepth-export graph: it has inputs {inputs} and outputs "
                             f"{outputs}, expected inputs ['image', 'text'] and output 'depth'")
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def __call__(self, image: np.ndarray, text: np.ndarray) -> np.ndarray:
        """image (B, 3, H, W) ImageNet-normalised, text (B, D) -> depth (B, 1, H, W), float32 metres."""
        image = np.asarray(image, dtype=np.float32)
        text = np.asarray(text, dtype=np.float32)
        H, W = image.shape[-2:]
        pad_h, pad_w = -H % INPUT_MULTIPLE, -W % INPUT_MULTIPLE
        if pad_h or pad_w:
            image = np.pad(image, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="edge")  # = replicate
        depth = self.session.run(["depth"], {"image": np.ascontiguousarray(image), "text": text})[0]
        return depth[..., :H, :W]

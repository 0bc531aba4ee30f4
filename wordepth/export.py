"""The image network as an ONNX graph, and a small ONNX Runtime runner for it.

    from wordepth.export import OnnxDepthModel, export_onnx
    export_onnx(load_checkpoint("nyu.pth", variant="nyu"), "wordepth_nyu.onnx")
    depth = OnnxDepthModel("wordepth_nyu.onnx")(image, text)    # numpy in, numpy out

The graph takes the ImageNet-normalised image (B, 3, H, W) float32 and the CLIP caption feature
(B, 1024) float32 and returns metric depth (B, 1, H, W) of the image branch, what
``WorDepth.forward`` evaluates; batch, height and width are dynamic. H and W must be multiples of
32 inside the graph: :class:`OnnxDepthModel` pads any size (replicate, like ``WorDepth.predict``)
and crops the result back. Needs the ``[onnx]`` extra (``pip install wordepth[onnx]``: onnx and
onnxruntime). Measured speed and error: docs/performance.md.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from wordepth.models.wordepth import INPUT_MULTIPLE, WorDepth

__all__ = ["OPSET", "OnnxDepthModel", "export_onnx", "quantize_int8"]

OPSET = 17


class _ImageNetwork(nn.Module):
    """image (B, 3, H, W), caption feature (B, D) -> depth (B, 1, H, W): the image branch's stages."""

    def __init__(self, model: WorDepth):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        m = self.model
        feats = m.encode_image(image)
        mean, std, logvar = m.encode_text(text)
        z, _ = m.sample("image", feats["x"], mean, std, logvar)
        return m.to_depth(m.decode(z, feats["x"], feats["x3"], feats["x2"]), feats["metric"], "image")


@contextlib.contextmanager
def _traceable(model: WorDepth):
    """The model in eval mode, computing explicitly (no exact shortcuts), with empty size caches.

    The ONNX exporter traces one forward; shape arithmetic becomes graph operations, but what the
    backbone caches per input size (masks, gather indices, the resized position embedding) would
    enter the graph as constants if it were cached before. The shortcuts' index arithmetic does not
    trace for dynamic sizes; the explicit computation gives the same values.
    """
    was_training, shortcuts = model.training, model.exact_shortcuts
    blocks = [b for stage in model.backbone.layers for b in stage.blocks]

    def clear():
        for b in blocks:
            for name in ("_mask_cache", "_index_cache"):
                b.__dict__.pop(name, None)
        model.backbone.__dict__.pop("_ape_cache", None)

    model.eval()
    model.exact_shortcuts = False
    clear()
    try:
        yield model
    finally:
        clear()
        model.exact_shortcuts = shortcuts
        model.train(was_training)


def export_onnx(model: WorDepth, path: str | os.PathLike, example: tuple[torch.Tensor, torch.Tensor] | None = None,
                opset: int = OPSET) -> Path:
    """Write the image network of ``model`` to ``path`` as ONNX (dynamic batch, height and width).

    Args:
        model: the network (on the CPU, float32); it is left as it was.
        path: output ``.onnx`` file (weights inside: about 1.1 GB for Swin-L).
        example: an (image, caption feature) pair to trace with; default 1x3x96x128 zeros and a
            zero feature (any multiple-of-32 size gives the same graph).
        opset: ONNX opset.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if example is None:
        example = (torch.zeros(1, 3, 96, 128), torch.zeros(1, model.cfg.text_dim))
    image, text = example
    if image.shape[-2] % INPUT_MULTIPLE or image.shape[-1] % INPUT_MULTIPLE:
        raise ValueError(f"the example image must have sides that are multiples of {INPUT_MULTIPLE}, "
                         f"got {tuple(image.shape[-2:])}")
    axes = {"image": {0: "batch", 2: "height", 3: "width"}, "text": {0: "batch"},
            "depth": {0: "batch", 2: "height", 3: "width"}}
    with _traceable(model), torch.no_grad(), warnings.catch_warnings():
        # the TorchScript-based exporter (which records shape arithmetic as graph operations, so that
        # height and width stay dynamic) warns that it is deprecated and about traced size checks
        warnings.simplefilter("ignore")
        torch.onnx.export(_ImageNetwork(model), (image.float(), text.float()), str(path),
                          input_names=["image", "text"], output_names=["depth"], dynamic_axes=axes,
                          opset_version=opset, dynamo=False)
    return path


def quantize_int8(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """int8 dynamic quantization of the graph's matrix products (ONNX Runtime); convolutions stay float32.

    Weights of every ``MatMul`` / ``Gemm`` (the Swin blocks' linear layers) are stored as int8 and
    activations are quantized per call: a smaller file and faster CPU inference, at a cost in
    accuracy measured in docs/performance.md.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out)
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # onnxruntime logs a pre-processing hint on the root logger
    try:
        quantize_dynamic(str(path), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        logger.setLevel(level)
    return out


class OnnxDepthModel:
    """Runs an exported graph with ONNX Runtime on the CPU; any image size (padded to x32, cropped back).

    Args:
        path: the ``.onnx`` file from :func:`export_onnx`.
        threads: intra-op threads (default: ONNX Runtime's choice, the physical cores).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

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

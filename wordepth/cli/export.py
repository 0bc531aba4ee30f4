"""``wordepth-export``: the image network as an ONNX graph for ONNX Runtime (CPU inference without PyTorch).

::

    wordepth-export nyu.pth wordepth_nyu.onnx --variant nyu            # float32: the PyTorch output within 1e-4
    wordepth-export nyu.pth wordepth_nyu_int8.onnx --variant nyu --int8 # int8 matrix products: faster, less exact

Inputs ``image`` (B, 3, H, W) ImageNet-normalised float32, H and W multiples of 32, and ``text``
(B, 1024) CLIP caption feature; output ``depth`` (B, 1, H, W) metres; batch, height and width are
dynamic. ``wordepth.export.OnnxDepthModel`` runs it on any image size. Needs the ``[onnx]`` extra.
Speed and error of both graphs: docs/performance.md.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from wordepth.cli import common


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wordepth-export", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("checkpoint", help="an original-release or this project's checkpoint (.pth / .safetensors)")
    p.add_argument("out", help="the .onnx file to write")
    common.add_variant_arg(p)
    p.add_argument("--int8", action="store_true",
                   help="int8 dynamic quantization of the matrix products (ONNX Runtime)")
    return p


def main(argv: list[str] | None = None) -> int:
    common.setup_logging()
    args = build_parser().parse_args(argv)
    if not args.out.endswith(".onnx"):
        raise SystemExit(f"error: {args.out}: the output must end in .onnx")
    try:
        from wordepth.export import export_onnx, quantize_int8
    except ImportError as err:
        raise SystemExit(f"error: wordepth-export needs onnx and onnxruntime ({err.name} is missing): "
                         "pip install 'wordepth[onnx]'") from None
    from wordepth.checkpoints import CheckpointError, load_checkpoint

    out = Path(args.out)
    with common.exit_on_user_errors(CheckpointError):
        model = load_checkpoint(args.checkpoint, variant=args.variant)
        if args.int8:
            fp32 = export_onnx(model, out.with_name(out.stem + ".fp32.onnx"))
            quantize_int8(fp32, out)
            fp32.unlink()
        else:
            export_onnx(model, out)
    logging.getLogger(__name__).info("wrote %s (%s)", out, "int8 matrix products" if args.int8 else "float32")
    return 0


if __name__ == "__main__":
    main()

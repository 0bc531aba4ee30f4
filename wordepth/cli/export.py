"""``wordepth-export``: the image network as an ONNX graph for ONNX Runtime (CPU inference without PyTorch).

::

    wordepth-export nyu.pth wordepth_nyu.onnx --variant nyu            # float32: the PyTorch output within 1e-4
    wordepth-export nyu.pth wordepth_nyu_int8.onnx --variant nyu --int8 # int8 matrix products: faster, less exact

Inputs ``image`` (B, 3, H, W) ImageNet-normalised float32, H and W multiples of 32, and ``text``
(B, 1024) CLIP caption feature; output ``depth`` (B, 1, H, W) metres; batch, height and width are
dynamic. ``wordepth.inference.export.OnnxDepthModel`` runs it on any image size. Needs the ``[onnx]`` extra.
The graph records which network it came from (checked by ``wordepth-predict --onnx``) and is written
atomically: a failed export keeps the previous file and leaves nothing else.
Speed and error of both graphs: docs/performance.md.
"""
from __future__ import annotations

import argparse
import logging

from wordepth.checkpoints import load_checkpoint
from wordepth.cli import common
from wordepth.errors import user_errors
from wordepth.inference.export import export_onnx, missing_onnx_packages
from wordepth.outputs import check_outputs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="wordepth-export", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("checkpoint", help="an original-release or this project's checkpoint (.pth / .safetensors)")
    p.add_argument("out", help="the .onnx file to write")
    common.add_variant_arg(p)
    p.add_argument("--int8", action="store_true",
                   help="int8 dynamic quantization of the matrix products (ONNX Runtime)")
    return p


def main(argv: list[str] | None = None) -> int:
    common.setup_logging()
    args = build_parser().parse_args(argv)
    common.require_suffix(args.out, ".onnx")
    missing = missing_onnx_packages()
    if missing:
        raise SystemExit(f"error: wordepth-export needs onnx and onnxruntime ({' and '.join(missing)} missing): "
                         "pip install 'wordepth[onnx]'")
    with user_errors():
        check_outputs({"OUT": args.out}, inputs=[args.checkpoint])
        model = load_checkpoint(args.checkpoint, variant=args.variant)
        export_onnx(model, args.out, int8=args.int8)
    logging.getLogger(__name__).info("wrote %s (%s)", args.out, "int8 matrix products" if args.int8 else "float32")
    return 0


if __name__ == "__main__":
    main()

"""``wordepth-convert``: a checkpoint as ``.safetensors`` (tensors only, no pickle) plus a small JSON.

::

    wordepth-convert nyu_legacy.pth nyu_legacy.safetensors --variant nyu_legacy   # original release
    wordepth-convert models/run/last.pth run.safetensors                           # this project's

The network's config and variant go into the file's header and into ``OUT.safetensors.json`` beside
it (a name no other file of a run has; files made before, with ``OUT.json``, still load), so
``wordepth.load_checkpoint(OUT)``, ``wordepth-eval --checkpoint_path OUT`` and
``wordepth-predict --checkpoint OUT`` need no flags. Only the network is kept (not the optimizer).
"""
from __future__ import annotations

import argparse
import logging

from wordepth.checkpoints import load_checkpoint, save_safetensors, sidecar_path
from wordepth.cli import common
from wordepth.errors import user_errors
from wordepth.outputs import check_outputs
from wordepth.variants import variant_of


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="wordepth-convert", description=__doc__.splitlines()[0].split(": ", 1)[1])
    p.add_argument("checkpoint", help="an original-release or this project's checkpoint (.pth)")
    p.add_argument("out", help="the .safetensors file to write (OUT.safetensors.json is written beside it)")
    common.add_variant_arg(p)
    return p


def main(argv: list[str] | None = None) -> int:
    common.setup_logging()
    args = build_parser().parse_args(argv)
    common.require_suffix(args.out, ".safetensors")
    with user_errors():
        check_outputs({"OUT": args.out, "the settings file": sidecar_path(args.out)}, inputs=[args.checkpoint])
        model = load_checkpoint(args.checkpoint, variant=args.variant)
        out, sidecar = save_safetensors(model, args.out)
    logging.getLogger(__name__).info("wrote %s and %s (variant %s)", out, sidecar, variant_of(model.cfg) or "custom")
    return 0


if __name__ == "__main__":
    main()

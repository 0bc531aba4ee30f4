"""The ImageNet Swin weights a new training run starts its backbone from (``--pretrain``)."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from wordepth.checkpoints.identify import describe, inspect_checkpoint
from wordepth.checkpoints.layouts import swin_imagenet_to_backbone
from wordepth.checkpoints.reading import CheckpointError, _read_pth

SWIN_L_URL = ("https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
              "swin_large_patch4_window12_384_22k.pth")


def load_swin_pretrained(backbone: nn.Module, source: str) -> tuple[list[str], list[str]]:
    """Initialise the backbone from ImageNet weights.

    Args:
        source: a file in the Swin release layout (``swin_large_patch4_window12_384_22k.pth``) or
            ``timm:<model name>`` (e.g. ``timm:swin_large_patch4_window12_384.ms_in22k``), which timm
            downloads (needs internet).

    Returns:
        (missing, unexpected) keys; the APE and the stage norms are new, as in the original.
    """
    if source.startswith("timm:"):
        import timm  # only for weights timm downloads

        name = source[len("timm:"):]
        try:
            ref = timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as err:
            raise CheckpointError(
                f"could not get timm weights {name!r} ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
                "Without internet, download swin_large_patch4_window12_384_22k.pth elsewhere and pass its path."
            ) from None
        state = ref.state_dict()
    else:
        if not Path(source).is_file():
            raise FileNotFoundError(
                f"Swin weights not found: {source}. Download swin_large_patch4_window12_384_22k.pth from "
                f"{SWIN_L_URL}, or pass --pretrain timm:swin_large_patch4_window12_384.ms_in22k (needs internet)")
        obj = _read_pth(source)
        if inspect_checkpoint(obj) != "swin_imagenet":
            raise CheckpointError(f"{source} is not Swin ImageNet weights: it looks like {describe(obj)}.")
        state = obj
    state = swin_imagenet_to_backbone(state)
    own = backbone.state_dict()
    bad = [k for k in state if k in own and state[k].shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{source}: shapes differ from the backbone for {bad[:5]} "
                              "(a different Swin size or window?)")
    result = backbone.load_state_dict(state, strict=False)
    new = [k for k in result.missing_keys if not k.startswith(("norm", "absolute_pos_embed"))]
    if new:
        raise CheckpointError(f"{source}: backbone weights missing for {new[:5]} (+{max(len(new) - 5, 0)})")
    return list(result.missing_keys), list(result.unexpected_keys)

"""WorDepth: variational language prior for monocular depth estimation (CVPR 2024).

    import wordepth
    predictor = wordepth.Predictor.from_checkpoint("nyu.pth", variant="nyu")
    depth = predictor.infer("room.jpg", "a bedroom with a bed")   # (H, W) float32 metres

    model = wordepth.load_checkpoint("nyu.pth", variant="nyu")    # the network itself
    depth = model(image, text_feature)                               # (B,3,H,W), (B,1024) -> (B,1,H,W)

The names below are imported on first use (PEP 562), so that ``import wordepth.<module>`` and the
commands that do not run the network (the web app's page, ``--help``) do not import torch and timm.
"""
from __future__ import annotations

import importlib

# name -> the module that defines it
_LAZY = {
    "load_checkpoint": "wordepth.checkpoints",
    "WorDepth": "wordepth.models.wordepth",
    "WorDepthConfig": "wordepth.models.wordepth",
    "preset_config": "wordepth.models.wordepth",
    "Predictor": "wordepth.inference.predictor",
    "VARIANTS": "wordepth.variants",
}

__all__ = ["VARIANTS", "Predictor", "WorDepth", "WorDepthConfig", "load_checkpoint", "preset_config"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    raise AttributeError(f"module 'wordepth' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""WorDepth: variational language prior for monocular depth estimation (CVPR 2024).

    import wordepth
    model = wordepth.load_checkpoint("nyu.pth")          # original release or this project's
    depth = model(image, text_feature)                     # (B,3,H,W), (B,1024) -> (B,1,H,W) metres
"""
from wordepth.checkpoints import load_checkpoint
from wordepth.models.wordepth import WorDepth, WorDepthConfig, preset_config

__all__ = ["WorDepth", "WorDepthConfig", "load_checkpoint", "preset_config"]
__version__ = "0.1.0"

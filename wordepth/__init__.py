"""WorDepth: variational language prior for monocular depth estimation (CVPR 2024).

    import wordepth
    predictor = wordepth.Predictor.from_checkpoint("nyu.pth", variant="nyu")
    depth = predictor.infer("room.jpg", "a bedroom with a bed")   # (H, W) float32 metres

    model = wordepth.load_checkpoint("nyu.pth", variant="nyu")    # the network itself
    depth = model(image, text_feature)                               # (B,3,H,W), (B,1024) -> (B,1,H,W)
"""
from wordepth.checkpoints import load_checkpoint
from wordepth.models.wordepth import WorDepth, WorDepthConfig, preset_config
from wordepth.inference.predictor import Predictor
from wordepth.variants import VARIANTS

__all__ = ["VARIANTS", "Predictor", "WorDepth", "WorDepthConfig", "load_checkpoint", "preset_config"]
__version__ = "0.1.0"

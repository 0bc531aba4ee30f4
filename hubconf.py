"""torch.hub entry point: ``torch.hub.load(<this repository or a local checkout>, "wordepth", ...)``.

::

    import torch
    predictor = torch.hub.load("path/to/WorDepth", "wordepth", source="local",
                               checkpoint="nyu.pth", variant="nyu")
    depth = predictor.infer("room.jpg", "a bedroom with a bed")   # (H, W) float32 metres

It returns the same predictor as ``wordepth.Predictor.from_checkpoint(checkpoint, variant=...)`` (the
one-line Python API, docs/inference.md). The checkpoint is a local file: nothing is downloaded.
"""
dependencies = ["torch", "timm", "numpy", "cv2", "PIL", "safetensors", "open_clip"]


def wordepth(checkpoint=None, variant=None, **kwargs):
    """A :class:`wordepth.Predictor` for a local checkpoint (``.pth`` or ``.safetensors``; ``"demo"``: the toy model).

    Args:
        checkpoint: the checkpoint file (the original release's or this project's).
        variant: which released model an original checkpoint is (``nyu``, ``nyu_legacy``, ``kitti``,
            ``kitti_legacy``); this project's files record it.
        **kwargs: the other arguments of ``Predictor.from_checkpoint`` (``device``, ``clip_weights``,
            ``no_caption``, ``max_pixels``, ``precision``, ...).
    """
    from wordepth.errors import UserError
    from wordepth.inference.predictor import Predictor

    if checkpoint is None:
        raise UserError('torch.hub.load(..., "wordepth") needs checkpoint= (a local .pth / .safetensors file, or '
                        '"demo" for the toy model): it downloads nothing')
    return Predictor.from_checkpoint(checkpoint, variant=variant, **kwargs)

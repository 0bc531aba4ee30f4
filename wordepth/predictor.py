"""From a photo and a sentence to metric depth in one line.

    import wordepth
    predictor = wordepth.Predictor.from_checkpoint("nyu.pth", variant="nyu")
    depth = predictor.infer("room.jpg", "a bedroom with a bed and a lamp")   # (H, W) float32 metres

The image is a path, a PIL image or an (H, W, 3) uint8 RGB array of any size; the caption is encoded
by the frozen CLIP RN50 text encoder (open_clip), loaded once. Without a caption the predictor uses
the mean caption feature of the model's training set (default) or captions the image with CoCa.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wordepth.datasets import NYU
from wordepth.runtime import PRECISIONS, autocast, default_device, warn_if_emulated_bf16
from wordepth.variants import get_variant, variant_of

__all__ = ["MEAN_FEATURES_FILE", "NO_CAPTION_MODES", "Predictor", "budget_size", "check_memory", "fit_to_budget",
           "mean_caption_feature", "pixel_budget"]

log = logging.getLogger(__name__)

# Mean CLIP RN50 caption features of the original release per dataset and split (`wordepth-text mean`).
MEAN_FEATURES_FILE = Path(__file__).resolve().parent / "assets" / "mean_text_features.pt"
NO_CAPTION_MODES = ("mean", "auto")


def mean_caption_feature(dataset: str = "nyu", split: str = "train",
                         path: str | os.PathLike | None = None) -> torch.Tensor:
    """The mean caption feature (1024,) float32 of a dataset split (the original release's by default).

    Args:
        dataset: ``nyu`` or ``kitti`` (or any name the file holds).
        split: ``train`` or ``test``.
        path: a file written by ``wordepth-text mean`` (default: the one shipped with the package).
    """
    path = Path(path) if path is not None else MEAN_FEATURES_FILE
    table = _load_mean_table(str(path))
    key = f"{dataset}_{split}_mean"
    if key not in table:
        known = sorted(k[:-len("_mean")] for k in table if k.endswith("_mean"))
        raise ValueError(f"{path} holds no mean feature for {dataset}/{split} (it has: {', '.join(known)})")
    feature = table[key].float().flatten()
    if not torch.isfinite(feature).all():
        raise ValueError(f"{path}: the mean feature of {dataset}/{split} is not finite")
    return feature


@lru_cache(maxsize=4)
def _load_mean_table(path: str) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"mean caption feature file not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


@lru_cache(maxsize=2)
def _text_encoder(weights: str | None, device: str):
    """The frozen CLIP RN50 text encoder, loaded once per weights file and device."""
    from wordepth.text.clip_features import load_text_encoder

    return load_text_encoder(weights_path=weights, device=device)


# Peak memory of an evaluation forward per input pixel, Swin-L (embed 192) in float32 on a CPU:
# measured 6.3 GB for a 12 MP photo; other widths scale with the embedding width.
_BYTES_PER_PIXEL_SWIN_L = 525
MIN_SIDE = 4  # the Swin patch: a smaller image has no patch to embed


def pixel_budget(model: torch.nn.Module) -> int:
    """The default largest input the network runs at: the area of its training size."""
    h, w = model.cfg.backbone.ape_grid
    return 16 * h * w


def fit_to_budget(rgb: np.ndarray, max_pixels: int | None) -> np.ndarray:
    """``rgb`` resized (area interpolation, aspect kept) so that it has at most ``max_pixels`` pixels.

    Raises:
        ValueError: an image smaller than the network's patch.
    """
    import cv2

    size = budget_size(*rgb.shape[:2], max_pixels)
    if size == rgb.shape[:2]:
        return rgb
    return cv2.resize(rgb, size[::-1], interpolation=cv2.INTER_AREA)


def budget_size(h: int, w: int, max_pixels: int | None) -> tuple[int, int]:
    """The network input size of an h x w image under the pixel budget (aspect kept).

    Raises:
        ValueError: an image smaller than the network's patch.
    """
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"image is {h}x{w}: too small for the network (at least {MIN_SIDE} pixels a side)")
    if max_pixels is None or h * w <= max_pixels:
        return h, w
    scale = (max_pixels / (h * w)) ** 0.5
    return max(MIN_SIDE, int(h * scale)), max(MIN_SIDE, int(w * scale))


def check_memory(model: torch.nn.Module, hw: tuple[int, int], batch: int = 1, what: str = "the input") -> None:
    """Refuse, before allocating, a forward pass that would not fit in the available memory (CPU)."""
    need = _BYTES_PER_PIXEL_SWIN_L * model.cfg.backbone.embed_dim / 192 * hw[0] * hw[1] * batch
    available = _available_bytes()
    if available is not None and need > available:
        raise MemoryError(f"{what} at {hw[0]}x{hw[1]} needs about {need / 2**30:.1f} GB for the network, "
                          f"{available / 2**30:.1f} GB are available: lower --max_pixels / max_pixels=")


def resize_depth(depth: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(h, w) depth resized (bilinear) to ``hw``."""
    return torch.nn.functional.interpolate(depth[None, None], size=tuple(hw), mode="bilinear",
                                           align_corners=False)[0, 0]


def _available_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _as_rgb(image: Any) -> np.ndarray:
    """A path, PIL image or (H, W, 3) uint8 RGB array -> (H, W, 3) uint8 RGB array."""
    from wordepth.data.transforms import read_image

    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"a numpy image must be (H, W, 3) uint8 RGB, got {image.dtype} {image.shape}")
        return image
    raise TypeError(f"image must be a path, a PIL image or an (H, W, 3) uint8 array, not {type(image).__name__}")


class Predictor:
    """A WorDepth model with its input pipeline: images and captions in, metric depth out.

    Args:
        model: a WorDepth network (put in eval mode on ``device``).
        device: where to run (default: CUDA when present, else the CPU).
        clip_weights: a local CLIP RN50 weights file (default: open_clip's download / cache).
        no_caption: what ``caption=None`` uses: ``"mean"`` (the mean caption feature of the model's
            training set) or ``"auto"`` (CoCa captions the image).
        caption_weights: a local CoCa weights file for ``no_caption="auto"``.
        mean_features: a ``wordepth-text mean`` file instead of the shipped one.
        max_pixels: larger images are resized to this many pixels for the network and the depth
            resized back (default: the model's training size, 480x640 for NYU); None: no limit.
        precision: ``"fp32"`` (default) or ``"bf16"`` (autocast; faster only where the processor
            or GPU computes in bfloat16 natively; error and speed: docs/performance.md).
    """

    FEATURE_CACHE_SIZE = 256  # caption features kept by :meth:`encode`

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None,
                 clip_weights: str | os.PathLike | None = None, no_caption: str = "mean",
                 caption_weights: str | os.PathLike | None = None,
                 mean_features: str | os.PathLike | None = None, max_pixels: int | None | str = "model",
                 precision: str = "fp32"):
        if no_caption not in NO_CAPTION_MODES:
            raise ValueError(f"no_caption must be one of {NO_CAPTION_MODES}, got {no_caption!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.device = default_device(device)
        warn_if_emulated_bf16(self.device, precision)
        self.model = model.to(self.device).eval()
        self.clip_weights = None if clip_weights is None else str(clip_weights)
        self.no_caption = no_caption
        self.caption_weights = caption_weights
        self.mean_features = mean_features
        self.max_pixels = pixel_budget(model) if max_pixels == "model" else max_pixels
        self.variant = variant_of(model.cfg)
        self.dataset = get_variant(self.variant).dataset if self.variant else NYU  # for the mean feature
        self._captioner = None
        self._features_of: OrderedDict[str, torch.Tensor] = OrderedDict()  # caption -> (D,) feature

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, variant: str | None = None,
                        device: str | torch.device | None = None, **kwargs) -> "Predictor":
        """Load ``path`` (``.pth`` or ``.safetensors``; ``variant`` for the original release's files)."""
        from wordepth.checkpoints import load_checkpoint

        return cls(load_checkpoint(path, variant=variant), device=device, **kwargs)

    # ------------------------------------------------------------------ text
    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """CLIP RN50 features (N, 1024) of captions, as the original's text features.

        Each distinct caption is encoded once; the last ``FEATURE_CACHE_SIZE`` are kept, so a
        caption used again (every frame of a video, every click in the web app) costs nothing.
        """
        from wordepth.text.clip_features import encode_captions

        captions = [" ".join(str(c).split()) for c in captions]
        if any(not c for c in captions):
            raise ValueError("a caption is empty")
        new = [c for c in dict.fromkeys(captions) if c not in self._features_of]
        if new:
            model, tokenizer = self.text_encoder()
            self._features_of.update(zip(new, encode_captions(model, tokenizer, new, device=self.device)))
        out = torch.stack([self._features_of[c] for c in captions])  # (N, D)
        for c in captions:
            self._features_of.move_to_end(c)
        while len(self._features_of) > self.FEATURE_CACHE_SIZE:
            self._features_of.popitem(last=False)
        return out

    def text_encoder(self):
        """The CLIP text encoder and its tokenizer that :meth:`encode` uses (loaded once per process)."""
        return _text_encoder(self.clip_weights, str(self.device))

    def caption(self, images: Sequence[np.ndarray]) -> list[str]:
        """CoCa captions of RGB arrays (the model is loaded on first use)."""
        import open_clip
        from PIL import Image

        from wordepth.text.captioning import DEFAULT_CAPTION_MODEL, generate_captions, load_captioner

        if self._captioner is None:
            model, preprocess = load_captioner(weights_path=self.caption_weights, device=self.device)
            self._captioner = model, preprocess, open_clip.get_tokenizer(DEFAULT_CAPTION_MODEL)
        model, preprocess, tokenizer = self._captioner
        pixels = torch.stack([preprocess(Image.fromarray(rgb)) for rgb in images]).to(self.device)
        return generate_captions(model, pixels, tokenizer)

    def _features(self, rgbs: Sequence[np.ndarray], captions: Sequence[str | None]) -> torch.Tensor:
        feats = torch.empty(len(rgbs), self.model.cfg.text_dim)
        given = [i for i, c in enumerate(captions) if c is not None]
        if given:
            feats[given] = self.encode([captions[i] for i in given])
        missing = [i for i, c in enumerate(captions) if c is None]
        if missing and self.no_caption == "mean":
            feats[missing] = mean_caption_feature(self.dataset.name, "train", self.mean_features)
        elif missing:
            auto = self.caption([rgbs[i] for i in missing])
            for i, text in zip(missing, auto):
                log.info("caption: %s", text)
            feats[missing] = self.encode(auto)
        return feats

    # ------------------------------------------------------------------ depth
    @torch.inference_mode()
    def infer(self, image: Any, caption: str | Sequence[str | None] | None = None, return_tensor: bool = False):
        """Metric depth of an image (or a list of images) at the input's size.

        Args:
            image: a path, a PIL image or an (H, W, 3) uint8 RGB array; or a list of them.
            caption: a sentence (for every image), a list with one per image, or None (see
                ``no_caption``).
            return_tensor: return torch tensors instead of numpy arrays.

        Returns:
            (H, W) float32 metres; for a list of images, a list of them.
        """
        from wordepth.data.transforms import image_to_tensor

        batch = isinstance(image, (list, tuple))
        images = list(image) if batch else [image]
        if isinstance(caption, (list, tuple)):
            if len(caption) != len(images):
                raise ValueError(f"{len(caption)} captions for {len(images)} images")
            captions = list(caption)
        else:
            captions = [caption] * len(images)
        rgbs = [_as_rgb(im) for im in images]
        nets = [fit_to_budget(rgb, self.max_pixels) for rgb in rgbs]
        for net in nets:
            if self.device.type == "cpu":
                check_memory(self.model, net.shape[:2])
        feats = self._features(rgbs, captions)
        out = []
        for rgb, net, feat in zip(rgbs, nets, feats):
            x = image_to_tensor(np.ascontiguousarray(net))[None].to(self.device)  # (1, 3, h, w)
            with autocast(self.device, self.precision):
                depth = self.model(x, feat[None].to(self.device))[0, 0].float().cpu()  # (h, w)
            if not torch.isfinite(depth).all():
                raise RuntimeError("the prediction is not finite: check the checkpoint and the input")
            if net.shape != rgb.shape:
                log.info("%dx%d is above the pixel budget (%d): predicted at %dx%d and resized back",
                         *rgb.shape[:2], self.max_pixels, *net.shape[:2])
                depth = resize_depth(depth, rgb.shape[:2])
            out.append(depth if return_tensor else depth.numpy())
        return out if batch else out[0]

    @torch.inference_mode()
    def prior(self, caption: str | None, size: tuple[int, int] | None = None, k: int = 4, seed: int = 0,
              image: Any = None, return_tensor: bool = False):
        """``k`` depth maps sampled from the caption alone (text branch), (k, H, W) float32 metres.

        ``size`` defaults to the model's training size; eps ~ N(0, 1) is drawn on the CPU from
        ``seed``, so the samples are the same on any device. ``caption=None`` uses the mean caption
        feature. The paper's model (legacy) also reads image features: give ``image`` for it.
        """
        from wordepth.data.transforms import image_to_tensor

        if size is None:
            size = tuple(4 * g for g in self.model.cfg.backbone.ape_grid)
        img = None
        if self.model.cfg.legacy:
            if image is None:
                raise ValueError("the paper's (legacy) model samples its prior with image features: pass image=")
            rgb = _as_rgb(image)
            size = rgb.shape[:2]
            img = image_to_tensor(np.ascontiguousarray(rgb))[None].expand(k, -1, -1, -1).to(self.device)
        if caption is None:
            feat = mean_caption_feature(self.dataset.name, "train", self.mean_features)[None]  # (1, D)
        else:
            feat = self.encode([caption])
        gen = torch.Generator().manual_seed(seed)
        eps = torch.randn(k, self.model.cfg.latent_dim, *self.model.latent_grid(size), generator=gen)
        with autocast(self.device, self.precision):
            depth = self.model.prior_depth(feat.expand(k, -1).to(self.device), tuple(size), image=img,
                                           eps=eps.to(self.device))[:, 0].float().cpu()  # (k, H, W)
        return depth if return_tensor else depth.numpy()

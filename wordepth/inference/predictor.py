"""From a photo and a sentence to metric depth in one line.

    import wordepth
    predictor = wordepth.Predictor.from_checkpoint("nyu.pth", variant="nyu")
    depth = predictor.infer("room.jpg", "a bedroom with a bed and a lamp")   # (H, W) float32 metres

The image is a path, a PIL image or an (H, W, 3) uint8 RGB array of any size; the caption is encoded
by the frozen CLIP RN50 text encoder (open_clip), loaded once. Without a caption the predictor uses
the mean caption feature of the model's training set (default) or captions the image with CoCa.

This is the one inference path: ``wordepth-predict`` (images, videos, ``--prior``), the web app and
the demo are file layers over :class:`Predictor`; :func:`sample_prior` is the one prior sampler
(also for the training loop's pictures and the experiments).
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from wordepth.checkpoints import load_checkpoint
from wordepth.checkpoints.identify import is_demo_file
from wordepth.data.facts import NYU
from wordepth.data.generated.scale_rooms import FOCAL_PER_WIDTH
from wordepth.data.text_features import FeatureWidthError, load_mean_table
from wordepth.data.transforms import image_to_tensor, read_image
from wordepth.errors import UserError
from wordepth.models.wordepth import WorDepthConfig
from wordepth.inference.export import OnnxDepthModel, check_graph_source
from wordepth.runtime import PRECISIONS, autocast, default_device, warn_if_emulated_bf16
from wordepth.text.captioning import DEFAULT_CAPTION_MODEL, generate_captions, load_captioner
from wordepth.text.clip_features import (DEFAULT_CLIP_PRETRAINED, encode_captions, get_tokenizer, load_text_encoder,
                                         resolve_weights)
from wordepth.variants import get_variant, variant_of

__all__ = ["MEAN_FEATURES_FILE", "NO_CAPTION_MODES", "DemoPredictor", "NonFiniteDepthError", "Predictor", "as_caption",
           "as_rgb", "budget_size", "check_memory", "fit_to_budget", "is_demo_model", "mean_caption_feature",
           "pixel_budget", "sample_prior"]

log = logging.getLogger(__name__)

# Mean CLIP RN50 caption features of the original release per dataset and split (`wordepth-text mean`).
MEAN_FEATURES_FILE = Path(__file__).resolve().parents[1] / "assets" / "mean_text_features.pt"
NO_CAPTION_MODES = ("mean", "auto")


def mean_caption_feature(dataset: str = "nyu", split: str = "train",
                         path: str | os.PathLike | None = None) -> torch.Tensor:
    """The mean caption feature (D,) float32 of a dataset split (the original release's CLIP RN50 means, D = 1024,
    by default).

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
        raise UserError(f"{path} holds no mean feature for {dataset}/{split} (it has: {', '.join(known)})")
    feature = table[key].float().flatten()
    if not torch.isfinite(feature).all():
        raise UserError(f"{path}: the mean feature of {dataset}/{split} is not finite")
    return feature


@lru_cache(maxsize=4)
def _load_mean_table(path: str) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"mean caption feature file not found: {path}")
    return load_mean_table(path)


@lru_cache(maxsize=2)
def _text_encoder(model_name: str, weights: str | None, device: str):
    """The frozen CLIP text encoder (the model's ``clip_model``, RN50 for the released models), loaded once per
    model, resolved weights file and device."""
    return load_text_encoder(model_name, weights_path=weights, device=device)


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
        UserError: an image smaller than the network's patch.
    """
    size = budget_size(*rgb.shape[:2], max_pixels)
    if size == rgb.shape[:2]:
        return rgb
    return cv2.resize(rgb, size[::-1], interpolation=cv2.INTER_AREA)


def budget_size(h: int, w: int, max_pixels: int | None) -> tuple[int, int]:
    """The network input size of an h x w image under the pixel budget (aspect kept).

    Raises:
        UserError: an image smaller than the network's patch.
    """
    if min(h, w) < MIN_SIDE:
        raise UserError(f"image is {h}x{w}: too small for the network (at least {MIN_SIDE} pixels a side)")
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


class NonFiniteDepthError(UserError):
    """The network predicted NaN or inf (a damaged checkpoint, or an input far outside its training)."""


def as_rgb(image: Any) -> np.ndarray:
    """A path, PIL image or (H, W, 3) uint8 RGB array -> (H, W, 3) uint8 RGB array.

    A path and the same file opened with PIL give the same array: the EXIF orientation is applied
    to both (OpenCV applies it when decoding a path), and a 16-bit image is reduced to 8 bits by
    its high byte (as OpenCV reads it), not clipped to white.
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if hasattr(image, "convert") and hasattr(image, "size") and hasattr(image, "mode"):  # a PIL image
        return _pil_to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"a numpy image must be (H, W, 3) uint8 RGB, got {image.dtype} {image.shape}")
        return image
    raise TypeError(f"image must be a path, a PIL image or an (H, W, 3) uint8 array, not {type(image).__name__}")



def _pil_to_rgb(image: Any) -> np.ndarray:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grey (a depth PNG): its high byte
        grey = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
        return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
    if image.mode == "F":
        raise UserError("a floating-point PIL image (mode F) is not a photo: give an 8-bit RGB image")
    return np.asarray(image.convert("RGB"))


def as_caption(caption: Any) -> str | torch.Tensor | None:
    """A caption as the predictor takes it: a sentence (``bytes`` decoded as UTF-8), a text feature
    tensor of floats, or None.

    Raises:
        TypeError: another type, or an integer tensor (a feature is float; it is not cast).
        UserError: bytes that are not UTF-8.
    """
    if caption is None or isinstance(caption, str):
        return caption
    if isinstance(caption, (bytes, bytearray)):
        try:
            return bytes(caption).decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"a caption given as bytes must be UTF-8 text ({err})") from None
    if torch.is_tensor(caption):
        if not caption.is_floating_point():
            raise TypeError(f"a text feature must be a float tensor, got {caption.dtype} (integer features are "
                            "not cast: convert them yourself if that is meant)")
        return caption
    raise TypeError(f"a caption must be a str, a float text-feature tensor or None, not {type(caption).__name__}")


def _feature(value: torch.Tensor, dim: int, clip_model: str = WorDepthConfig.clip_model) -> torch.Tensor:
    """A text feature (1, D) / (D,) as (D,) float32, checked against the model's width ``dim``."""
    if value.numel() != dim:
        raise FeatureWidthError(f"text feature has {value.numel()} values, the model takes {dim} (CLIP {clip_model} "
                                "features, its text_dim / clip_model): give a feature of that CLIP model")
    feature = value.detach().reshape(dim).float().cpu()
    if not torch.isfinite(feature).all():
        raise UserError("the text feature is not finite (NaN/inf)")
    return feature


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def sample_prior(model: torch.nn.Module, feature: torch.Tensor, size: tuple[int, int] | None = None, k: int = 1,
                 seed: int = 0, image: torch.Tensor | None = None, batch_size: int | None = None,
                 precision: str = "fp32") -> torch.Tensor:
    """``k`` depth maps sampled from the text branch alone: the one prior sampler (predictor, commands,
    the training loop's pictures, the experiments).

    eps ~ N(0, 1) of shape (k, latent_dim, h, w) is drawn on the CPU from ``seed`` in one call, so the
    samples are the same on any device and for any ``batch_size``.

    Args:
        model: a WorDepth network (any device; it is not switched to eval mode here).
        feature: text features, (D,) / (1, D) for every sample or (k, D) one per sample; float.
        size: (H, W) of the samples; default the model's training size. The legacy model takes it
            from ``image``.
        k: number of samples, at least 1.
        seed: seed of eps.
        image: ImageNet-normalised image(s) (3, H, W) / (1, 3, H, W) / (k, 3, H, W); the paper's
            (legacy) model reads image features in its text branch and needs it; ignored otherwise.
        batch_size: samples per forward pass (default: all k).
        precision: ``"fp32"`` or ``"bf16"`` (autocast).

    Returns:
        (k, H, W) float32 depth in metres, on the CPU.

    Raises:
        UserError: k < 1, a size that is not two positive integers, a feature of the wrong size or
            type, a legacy model without an image.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise UserError(f"the number of prior samples must be an integer of at least 1, got {k!r}")
    k = int(k)
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise UserError(f"batch_size must be at least 1, got {batch_size!r}")
    legacy = model.cfg.legacy
    if legacy:
        if image is None:
            raise UserError("the paper's (legacy) model samples its prior with image features: pass image=")
        image = image.detach().float()
        image = image[None] if image.ndim == 3 else image  # (1 or k, 3, H, W)
        if image.ndim != 4 or image.shape[1] != 3 or image.shape[0] not in (1, k):
            raise UserError(f"image must be (3, H, W), (1, 3, H, W) or ({k}, 3, H, W), got {tuple(image.shape)}")
        size = tuple(image.shape[-2:])
    elif size is None:
        size = tuple(4 * g for g in model.cfg.backbone.ape_grid)
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in size)):
        raise UserError(f"size must be two positive integers (H, W), got {size!r}")
    size = (int(size[0]), int(size[1]))
    if not torch.is_tensor(feature) or not feature.is_floating_point():
        raise UserError(f"feature must be a float tensor, got {getattr(feature, 'dtype', type(feature).__name__)}")
    dim = model.cfg.text_dim
    text = feature.detach().reshape(-1, dim) if feature.numel() % dim == 0 else None
    if text is None or text.shape[0] not in (1, k):
        raise UserError(f"feature must be ({dim},), (1, {dim}) or ({k}, {dim}), got {tuple(feature.shape)}")
    text = text.float().expand(k, -1)  # (k, D)
    gen = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(k, model.cfg.latent_dim, *model.latent_grid(size), generator=gen)  # (k, L, h, w)
    device = _model_device(model)
    step = batch_size or k
    out = []
    for start in range(0, k, step):
        e = eps[start:start + step].to(device)
        n = e.shape[0]
        img = None if not legacy else image.expand(k, -1, -1, -1)[start:start + n].to(device)
        with autocast(device, precision):
            depth = model.prior_depth(text[start:start + n].to(device), size, image=img, eps=e)  # (n, 1, H, W)
        out.append(depth[:, 0].float().cpu())
    return torch.cat(out)  # (k, H, W)


class Predictor:
    """A WorDepth model with its input pipeline: images and captions in, metric depth out.

    The one inference path: ``wordepth-predict`` (images, video), the web app and the demo run
    through it.

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
        onnx: run the image network from this ``wordepth-export`` graph with ONNX Runtime (CPU,
            float32); the graph must come from ``model`` (checked against the identity it records).
    """

    FEATURE_CACHE_SIZE = 256  # caption features kept by :meth:`encode`

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None,
                 clip_weights: str | os.PathLike | None = None, no_caption: str = "mean",
                 caption_weights: str | os.PathLike | None = None,
                 mean_features: str | os.PathLike | None = None, max_pixels: int | None | str = "model",
                 precision: str = "fp32", onnx: str | os.PathLike | None = None):
        if no_caption not in NO_CAPTION_MODES:
            raise UserError(f"no_caption must be one of {NO_CAPTION_MODES}, got {no_caption!r}")
        if precision not in PRECISIONS:
            raise UserError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.device = default_device(device if device is not None or onnx is None else "cpu")
        warn_if_emulated_bf16(self.device, precision)
        self.model = model.to(self.device).eval()
        self.clip_weights = None if clip_weights is None else str(clip_weights)
        self.no_caption = no_caption
        self.caption_weights = caption_weights
        self.mean_features = mean_features
        self.max_pixels = pixel_budget(model) if max_pixels == "model" else max_pixels
        self.variant = variant_of(model.cfg)
        self.dataset = get_variant(self.variant).dataset if self.variant else NYU  # for the mean feature
        self.checkpoint_info: dict = {}
        self._captioner = None
        self._features_of: OrderedDict[str, torch.Tensor] = OrderedDict()  # caption -> (D,) feature
        self._forward = self.model if onnx is None else self._onnx_forward(onnx)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, variant: str | None = None,
                        device: str | torch.device | None = None, legacy: bool | None = None,
                        max_depth: float | None = None, prior_mean: float | None = None,
                        overrides: dict | Any = None, **kwargs) -> "Predictor":
        """Load ``path`` (``.pth`` or ``.safetensors``; ``variant`` for the original release's files).

        ``path="demo"`` or a demo model's file gives a :class:`DemoPredictor` (its own
        text encoder; ``kwargs`` other than ``device`` do not apply to it). ``legacy``, ``max_depth``,
        ``prior_mean`` and ``overrides`` go to :func:`wordepth.checkpoints.load_checkpoint`, the
        other ``kwargs`` to the constructor.
        """
        if str(path) == "demo" or is_demo_model(path):
            return DemoPredictor.load(None if str(path) == "demo" else path, device=device)
        model, info = load_checkpoint(path, variant=variant, legacy=legacy, max_depth=max_depth,
                                      prior_mean=prior_mean, overrides=overrides, with_info=True)
        predictor = cls(model, device=device, **kwargs)
        predictor.checkpoint_info = info
        return predictor

    # ------------------------------------------------------------------ text
    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """CLIP features (N, text_dim) of captions with the model's ``clip_model``, as the original's text features.

        Each distinct caption is encoded once; the last ``FEATURE_CACHE_SIZE`` are kept, so a
        caption used again (every frame of a video, every click in the web app) costs nothing.
        """
        texts = []
        for c in captions:
            c = as_caption(c)
            if not isinstance(c, str):
                raise TypeError(f"encode takes sentences, not {type(c).__name__}")
            texts.append(" ".join(c.split()))
        if any(not c for c in texts):
            raise UserError("a caption is empty")
        new = [c for c in dict.fromkeys(texts) if c not in self._features_of]
        if new:
            model, tokenizer = self.text_encoder()
            encoded = encode_captions(model, tokenizer, new, device=self.device)  # (n, D)
            if encoded.shape[1] != self.model.cfg.text_dim:
                raise FeatureWidthError(
                    f"the CLIP text encoder gives {encoded.shape[1]}-d features, but the model takes "
                    f"{self.model.cfg.text_dim}-d {self.model.cfg.clip_model} features: give that model's "
                    "weights (clip_weights= / --clip_weights)")
            self._features_of.update(zip(new, encoded))
        out = torch.stack([self._features_of[c] for c in texts])  # (N, D)
        for c in texts:
            self._features_of.move_to_end(c)
        while len(self._features_of) > self.FEATURE_CACHE_SIZE:
            self._features_of.popitem(last=False)
        return out

    def text_encoder(self):
        """The CLIP text encoder and its tokenizer that :meth:`encode` uses (loaded once per process)."""
        model_name = self.model.cfg.clip_model
        # the file first (a clear error when it is missing offline), then the encoder cached by that file
        weights = resolve_weights(model_name, DEFAULT_CLIP_PRETRAINED, self.clip_weights)
        return _text_encoder(model_name, weights, str(self.device))

    def caption(self, images: Sequence[Any]) -> list[str]:
        """CoCa captions of images (paths, PIL images or RGB arrays); the model is loaded on first use."""
        if self._captioner is None:
            model, preprocess = load_captioner(weights_path=self.caption_weights, device=self.device)
            self._captioner = model, preprocess, get_tokenizer(DEFAULT_CAPTION_MODEL)
        model, preprocess, tokenizer = self._captioner
        pixels = torch.stack([preprocess(Image.fromarray(as_rgb(im))) for im in images]).to(self.device)
        return generate_captions(model, pixels, tokenizer)

    def mean_feature(self) -> torch.Tensor:
        """(D,) the mean caption feature of the model's training set (``no_caption="mean"``).

        Raises:
            FeatureWidthError: the file holds no mean of the model's width (a model trained on features
                of another CLIP model than the released RN50: make its mean with ``wordepth-text mean``).
        """
        cfg, default = self.model.cfg, WorDepthConfig
        how = ("give a caption, or the mean feature of the model's training captions (wordepth-text mean "
               "--text_feat_dir DIR --dataset NAME --split train --out FILE, then --mean_features FILE / "
               "mean_features=FILE)")
        if self.mean_features is None and (cfg.clip_model, cfg.text_dim) != (default.clip_model, default.text_dim):
            raise FeatureWidthError(f"no caption given, and the shipped mean caption features are CLIP "
                                    f"{default.clip_model}'s ({default.text_dim}-d) while this model takes "
                                    f"{cfg.text_dim}-d {cfg.clip_model} features: {how}")
        feature = mean_caption_feature(self.dataset.name, "train", self.mean_features)
        if feature.numel() != cfg.text_dim:
            raise FeatureWidthError(f"no caption given, and {self.mean_features} holds a {feature.numel()}-d mean "
                                    f"feature while this model takes {cfg.text_dim}-d {cfg.clip_model} features: {how}")
        return feature

    def features(self, captions: Sequence[Any], images: Sequence[Any] | None = None) -> torch.Tensor:
        """(N, D) text features of captions: sentences (encoded), float feature tensors (checked, not
        cast), or None (``no_caption``: the mean feature, or CoCa's caption of the matching image)."""
        captions = [as_caption(c) for c in captions]
        dim = self.model.cfg.text_dim
        feats = torch.empty(len(captions), dim)
        sentences = [i for i, c in enumerate(captions) if isinstance(c, str)]
        if sentences:
            feats[sentences] = self.encode([captions[i] for i in sentences])
        for i, c in enumerate(captions):
            if torch.is_tensor(c):
                feats[i] = _feature(c, dim, self.model.cfg.clip_model)
        missing = [i for i, c in enumerate(captions) if c is None]
        if missing and self.no_caption == "mean":
            feats[missing] = self.mean_feature()
        elif missing:
            if images is None:
                raise UserError("no_caption='auto' captions the image: give the images")
            auto = self.caption([images[i] for i in missing])
            for i, text in zip(missing, auto):
                log.info("caption: %s", text)
            feats[missing] = self.encode(auto)
        return feats

    # ------------------------------------------------------------------ depth
    def _onnx_forward(self, graph: str | os.PathLike):
        """The image network of a ``wordepth-export`` graph (ONNX Runtime, CPU), checked to come from the model."""
        if self.device.type != "cpu" or self.precision != "fp32":
            raise UserError("an ONNX graph runs on the CPU in float32: leave device / precision at their defaults")
        runner = OnnxDepthModel(graph, threads=torch.get_num_threads())
        check_graph_source(runner, self.model)
        log.info("image network: %s (ONNX Runtime, %d threads)", graph, torch.get_num_threads())
        return lambda image, text: torch.from_numpy(runner(image.numpy(), text.numpy()))

    def _network_inputs(self, rgbs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each image within the pixel budget (checked against the available memory on a CPU)."""
        nets = [fit_to_budget(rgb, self.max_pixels) for rgb in rgbs]
        if self.device.type == "cpu":
            sizes: dict[tuple[int, int], int] = {}
            for net in nets:
                sizes[net.shape[:2]] = sizes.get(net.shape[:2], 0) + 1
            for hw, n in sizes.items():
                check_memory(self.model, hw, n)
        return nets

    @torch.inference_mode()
    def infer(self, image: Any, caption: Any = None, return_tensor: bool = False):
        """Metric depth of an image (or a list of images) at the input's size.

        Images of equal size in a list share one forward pass.

        Args:
            image: a path, a PIL image or an (H, W, 3) uint8 RGB array; or a list of them.
            caption: a sentence (for every image), a float text-feature tensor (D,), a list with
                one of them per image, or None (see ``no_caption``).
            return_tensor: return torch tensors instead of numpy arrays.

        Returns:
            (H, W) float32 metres; for a list of images, a list of them.

        Raises:
            NonFiniteDepthError: the network predicted NaN/inf for an image.
        """
        batch = isinstance(image, (list, tuple))
        images = list(image) if batch else [image]
        if isinstance(caption, (list, tuple)):
            if len(caption) != len(images):
                raise UserError(f"{len(caption)} captions for {len(images)} images")
            captions = list(caption)
        else:
            captions = [caption] * len(images)
        rgbs = [as_rgb(im) for im in images]
        nets = self._network_inputs(rgbs)
        feats = self.features(captions, rgbs)  # (N, D)
        groups: OrderedDict[tuple[int, int], list[int]] = OrderedDict()
        for i, net in enumerate(nets):
            groups.setdefault(net.shape[:2], []).append(i)
        out: list[Any] = [None] * len(images)
        for idx in groups.values():
            x = torch.stack([image_to_tensor(np.ascontiguousarray(nets[i])) for i in idx]).to(self.device)
            with autocast(self.device, self.precision):
                depth = self._forward(x, feats[idx].to(self.device))[:, 0].float().cpu()  # (B, h, w)
            for i, d in zip(idx, depth):
                if not torch.isfinite(d).all():
                    raise NonFiniteDepthError("the prediction is not finite (NaN/inf): check the checkpoint "
                                              "and the image")
                if nets[i].shape != rgbs[i].shape:
                    log.info("%dx%d is above the pixel budget (%d, --max_pixels): predicted at %dx%d and "
                             "resized back", *rgbs[i].shape[:2], self.max_pixels, *nets[i].shape[:2])
                    d = resize_depth(d, rgbs[i].shape[:2])
                out[i] = d if return_tensor else d.numpy()
        return out if batch else out[0]

    def prior(self, caption: Any, size: tuple[int, int] | None = None, k: int = 4, seed: int = 0,
              image: Any = None, return_tensor: bool = False, batch_size: int | None = None):
        """``k`` depth maps sampled from the caption alone (text branch), (k, H, W) float32 metres.

        ``size`` defaults to the model's training size; eps ~ N(0, 1) is drawn on the CPU from
        ``seed`` (:func:`sample_prior`), so the samples are the same on any device. ``caption``: a
        sentence, a float text-feature tensor, or None (the mean caption feature). The paper's model
        (legacy) also reads image features: give ``image`` for it; the samples then have its size
        (within the pixel budget).
        """
        caption = as_caption(caption)
        feat = self.mean_feature() if caption is None else self.features([caption])[0]
        img = None
        if self.model.cfg.legacy:
            if image is None:
                raise UserError("the paper's (legacy) model samples its prior with image features: pass image=")
            img = image_to_tensor(np.ascontiguousarray(self._network_inputs([as_rgb(image)])[0]))  # (3, h, w)
        depth = sample_prior(self.model, feat, size, k, seed, image=img, batch_size=batch_size,
                             precision=self.precision)
        return depth if return_tensor else depth.numpy()


# --------------------------------------------------------------------------- the toy demo model
def is_demo_model(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds the toy demo model (a ``.safetensors`` file whose JSON beside it says so)."""
    return is_demo_file(path)


class DemoPredictor(Predictor):
    """The toy demo model (:mod:`wordepth.demo.toy`) as a :class:`Predictor`: random-weight CLIP captions,
    inputs at the training size.

    Images are resized (aspect kept) to about the training size (64 x 96 pixels) before the
    network and the depth is resized back, since the toy network knows objects only at that size.
    The rooms' camera has a focal length of ``focal_per_width`` (0.6) times the image width.

    It lives here, beside :class:`Predictor`, so that :meth:`Predictor.from_checkpoint` gives it without
    an import cycle; what it needs of the demo (its file, its text encoder) is imported when used.
    """

    focal_per_width = FOCAL_PER_WIDTH

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None, **kwargs):
        super().__init__(model, device=device, **kwargs)
        self.work_hw = tuple(4 * g for g in model.cfg.backbone.ape_grid)  # (64, 96)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device | None = None,
             progress: bool = True) -> "DemoPredictor":
        """The demo model (:func:`wordepth.demo.toy.demo_model_file` when ``path`` is None), checked against
        its text encoder."""
        if path is None:
            from wordepth.demo.toy import demo_model_file  # training code: only when the file is needed

            path = demo_model_file(progress=progress)
        path = Path(path)
        model, info = load_checkpoint(path, with_info=True)
        predictor = cls(model, device=device)
        predictor.checkpoint_info = info
        check = info["meta"].get("demo", {}).get("text_encoder")
        if check:
            feat = predictor.encode([check["check_caption"]])[0, :8]
            if not torch.allclose(feat, torch.tensor(check["check_feature_head"]), atol=1e-4):
                log.warning("the random-weight text encoder differs from the one %s was trained with (another "
                            "torch or open_clip version?): captions will not set the scale; retrain it with "
                            "wordepth.demo.toy.train_demo_model", path)
        return predictor

    def text_encoder(self):
        """CLIP RN50 with the random weights the demo model was trained with."""
        from wordepth.demo.toy import random_text_encoder

        return random_text_encoder(str(self.device))

    def caption(self, images):
        """The demo model has no captioner: the rooms' scale cannot be seen, so a caption must name it."""
        from wordepth.demo.toy import DEMO_CAPTIONS

        raise NotImplementedError("the toy model has no captioner: no caption model can see these rooms' scale "
                                  "(that is the point of the demo); type a caption such as "
                                  f"'{DEMO_CAPTIONS[0]}'")

    def _to_work_size(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        f = float(np.sqrt(self.work_hw[0] * self.work_hw[1] / (h * w)))
        size = (max(8, round(w * f)), max(8, round(h * f)))  # (w, h) for OpenCV
        return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)

    def infer(self, image: Any, caption=None, return_tensor: bool = False):
        """As :meth:`Predictor.infer`, run at about the training size; depth at the input's size."""
        batch = isinstance(image, (list, tuple))
        rgbs = [as_rgb(im) for im in (image if batch else [image])]
        small = super().infer([self._to_work_size(rgb) for rgb in rgbs], caption)
        out = [cv2.resize(d, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
               for d, rgb in zip(small, rgbs)]
        out = [torch.from_numpy(d) for d in out] if return_tensor else out
        return out if batch else out[0]

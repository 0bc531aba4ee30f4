"""Depth for your own images with a trained WorDepth model, and depth sampled from a caption alone.

The library behind the ``wordepth-predict`` command (``wordepth.cli.predict``; ``python
scripts/predict.py`` is the same): `run` takes a `PredictOptions`. ::

    # one caption for every image, CLIP weights from the cache (or a local file)
    wordepth-predict --checkpoint nyu.pth --dataset nyu --images room.jpg photos/ \\
        --caption "a bedroom with a stand and a bed" --out pred/ --ply
    # precomputed CLIP feature(s): one file, or a folder of <image stem>.pt
    wordepth-predict --checkpoint nyu.pth --images photos/ --text_feature feats/ --out pred/
    # caption every image with CoCa first
    wordepth-predict --checkpoint nyu.pth --images photos/ --auto_caption --out pred/
    # the paper's Fig. 1: 8 depth maps sampled from the caption alone (text branch)
    wordepth-predict --checkpoint nyu.pth --caption "a bedroom with a stand and a bed" \\
        --prior 8 --seed 0 --out prior/

Folders are searched recursively; an image ``<stem>`` (its path under the folder given, without
extension) writes into ``--out``: ``<stem>_depth.png`` (uint16, millimetres by
default, as NYU; ``--dataset kitti`` uses KITTI's x256), ``<stem>_depth.npy`` (float32 metres),
``<stem>_depth_color.png`` (colour map with a colour bar), ``<stem>_caption.txt`` when a caption
was used, and with ``--ply`` ``<stem>.ply`` (points coloured by the image). ``--prior K`` writes
``prior_<i>.png``, ``prior_<i>.npy`` (i = 0..K-1) and ``prior_grid.png``.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch
from tqdm import tqdm

from wordepth import visualize as vis
from wordepth.data.depth_png import depth_to_png16
from wordepth.data.images import collect_images
from wordepth.data.text_features import normalize_key
from wordepth.datasets import DATASETS, KB_CROP_HW, NYU
from wordepth.metrics import uncrop_kb
from wordepth.pointcloud import backproject, write_ply
from wordepth.predictor import budget_size, check_memory, fit_to_budget, pixel_budget, resize_depth
from wordepth.runtime import autocast, default_device, warn_if_emulated_bf16
from wordepth.variants import get_variant, variant_of

logger = logging.getLogger(__name__)
T = TypeVar("T")

@dataclass
class Item:
    """One input image."""

    path: Path
    stem: str  # its outputs' name: the path under the folder given (or the file name), without extension
    caption: str | None = None
    feature: torch.Tensor | None = None  # (D,) float32


@dataclass
class PredictOptions:
    """What to predict and write; the fields are the options of ``wordepth-predict`` (see its --help)."""

    checkpoint: str
    out: str
    # model
    variant: str | None = None  # "nyu" | "nyu_legacy" | "kitti" | "kitti_legacy" (wordepth.variants)
    dataset: str | None = None  # "nyu" | "kitti": focal length; max depth and prior mean of original checkpoints
    legacy: bool | None = None
    max_depth: float | None = None
    prior_mean: float | None = None
    device: str | None = None  # default: cuda if available
    precision: str = "fp32"  # "fp32" | "bf16" (autocast; fast only where bfloat16 is native: docs/performance.md)
    onnx: str | None = None  # run the image network from this wordepth-export graph with ONNX Runtime (CPU)
    # inputs
    images: Sequence[str] = ()  # image files and/or folders
    kb_crop: bool = False
    batch_size: int = 1
    # text: one of caption / caption_file / text_feature / auto_caption
    caption: str | None = None
    caption_file: str | None = None  # a file, or a folder of <stem>.txt
    text_feature: str | None = None  # a .pt file, or a folder of <stem>.pt
    auto_caption: bool = False
    mean_features: str | None = None  # none of the above: the mean caption feature (this file, or the shipped one)
    clip_weights: str | None = None
    caption_weights: str | None = None
    # outputs
    png_scale: float | None = None
    cmap: str = "turbo"
    vmin: float | None = None
    vmax: float | None = None
    ply: bool = False
    focal: float | None = None
    cx: float | None = None
    cy: float | None = None
    max_pixels: int | None = None  # larger inputs run at this many pixels (None: the model's training size; 0: no limit)
    strict: bool = False  # stop at the first image that fails (default: skip it, list it, exit non-zero)
    # sampling from the caption alone
    prior: int = 0
    seed: int = 0
    prior_size: tuple[int, int] | None = None


class PredictError(ValueError):
    """A missing or unusable input, said in one line."""


# --------------------------------------------------------------------------- inputs
def collect_items(sources: Sequence[str]) -> list[Item]:
    """The images named (files, folders searched recursively) as `Item`s, in the order given.

    Raises:
        PredictError: a source is missing, a folder holds no image, or two images share a name
            (their outputs would overwrite each other).
    """
    try:
        return [Item(path, normalize_key(name)) for name, path in collect_images(sources)]
    except (FileNotFoundError, ValueError) as err:
        raise PredictError(str(err)) from None


def _read_caption(path: Path) -> str:
    if not path.is_file():
        raise PredictError(f"caption file not found: {path}")
    text = " ".join(path.read_text(encoding="utf-8").split())
    if not text:
        raise PredictError(f"caption file is empty: {path}")
    return text


def _load_feature(path: Path) -> torch.Tensor:
    from wordepth.data.text_features import load_feature_file

    try:
        return load_feature_file(path)
    except (FileNotFoundError, ValueError) as err:
        raise PredictError(str(err).splitlines()[0]) from None


def auto_caption(items: Sequence[Item], weights: str | None, device: torch.device, batch_size: int) -> None:
    """Caption every image with CoCa (``wordepth.text.captioning``), in place."""
    import open_clip
    from PIL import Image

    from wordepth.text.captioning import DEFAULT_CAPTION_MODEL, generate_captions, load_captioner
    from wordepth.text.clip_features import WeightsUnavailableError

    try:
        model, preprocess = load_captioner(weights_path=weights, device=device)
    except WeightsUnavailableError as err:
        detail = str(err).replace("--weights_path", "--caption_weights")
        raise PredictError(f"--auto_caption needs the CoCa weights: {detail}") from None
    tokenizer = open_clip.get_tokenizer(DEFAULT_CAPTION_MODEL)
    for start in tqdm(range(0, len(items), batch_size), desc="captioning", unit="batch"):
        batch = items[start:start + batch_size]
        pixels = []
        for it in batch:
            with Image.open(it.path) as img:
                pixels.append(preprocess(img.convert("RGB")))  # (3, h, w)
        captions = generate_captions(model, torch.stack(pixels).to(device), tokenizer)
        for it, caption in zip(batch, captions):
            it.caption = caption
            logger.info("%s: %s", it.path.name, caption)


def encode_captions(captions: Sequence[str], weights: str | None, device: torch.device) -> dict[str, torch.Tensor]:
    """CLIP RN50 features of distinct captions, ``caption -> (D,)`` (``wordepth.text.clip_features``)."""
    from wordepth.text.clip_features import WeightsUnavailableError, encode_captions as clip_encode, \
        load_text_encoder

    unique = list(dict.fromkeys(captions))
    try:
        model, tokenizer = load_text_encoder(weights_path=weights, device=device)
    except WeightsUnavailableError as err:
        detail = str(err).replace("--weights_path", "--clip_weights").rstrip(".")
        raise PredictError(f"encoding the caption needs the CLIP RN50 weights: {detail}. "
                    "Alternatively pass a precomputed --text_feature") from None
    feats = clip_encode(model, tokenizer, unique, batch_size=64, device=device)  # (N, D)
    return {c: f for c, f in zip(unique, feats)}


def _file_or_folder(src: str, items: Sequence[Item], suffix: str, read: Callable[[Path], T]
                    ) -> tuple[T | None, list[T]]:
    """``src`` is one file for all images: (what it holds, []); or a folder of ``<stem><suffix>``: (None, one each)."""
    path = Path(src)
    if path.is_dir():
        return None, [read(path / f"{it.stem}{suffix}") for it in items]
    return read(path), []


def resolve_text(opts: PredictOptions, items: list[Item], device: torch.device, dataset: str = "nyu"
                 ) -> tuple[torch.Tensor | None, str | None]:
    """Fill ``caption``/``feature`` of every item; return the single (feature, caption) if the text
    source is one for all images (else None, None). Without any text source: the mean caption
    feature of ``dataset``'s training set."""
    single_feat: torch.Tensor | None = None
    single_caption: str | None = None
    if opts.text_feature is not None:
        single_feat, per_image = _file_or_folder(opts.text_feature, items, ".pt", _load_feature)
        for it, feature in zip(items, per_image):
            it.feature = feature
    elif opts.caption is not None:
        single_caption = " ".join(opts.caption.split())
        if not single_caption:
            raise PredictError("--caption is empty")
    elif opts.caption_file is not None:
        single_caption, per_image = _file_or_folder(opts.caption_file, items, ".txt", _read_caption)
        for it, text in zip(items, per_image):
            it.caption = text
    elif opts.auto_caption:
        auto_caption(items, opts.caption_weights, device, opts.batch_size)
    else:
        from wordepth.predictor import mean_caption_feature

        try:
            single_feat = mean_caption_feature(dataset, "train", opts.mean_features)
        except (FileNotFoundError, ValueError) as err:
            raise PredictError(str(err)) from None
        logger.info("no caption given: using the mean caption feature of the %s training set", dataset)

    if single_caption is not None:
        for it in items:
            it.caption = single_caption
    if single_feat is not None:
        for it in items:
            it.feature = single_feat
    captions = [it.caption for it in items if it.feature is None and it.caption is not None]
    if single_caption is not None:
        captions.append(single_caption)
    if captions:
        table = encode_captions(captions, opts.clip_weights, device)
        for it in items:
            if it.feature is None:
                it.feature = table[it.caption]
        if single_caption is not None:
            single_feat = table[single_caption]
    return single_feat, single_caption


# --------------------------------------------------------------------------- model
def _checkpoint_kind(path: str) -> str:
    """The checkpoint's layout without reading its tensors (memory-mapped)."""
    from wordepth.checkpoints import NUMPY_SAFE_GLOBALS, inspect_checkpoint

    try:
        with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # legacy (non-zip) files cannot be memory-mapped; load_checkpoint decides
        return "unknown"
    return inspect_checkpoint(obj)


def load_model(opts: PredictOptions, device: torch.device) -> torch.nn.Module:
    """The network of ``--checkpoint`` with the preset/override flags, in eval mode on ``device``.

    ``--dataset`` fills in max depth and prior mean only for original-release checkpoints, which
    do not record them; this project's checkpoints keep their own unless overridden explicitly.
    """
    from wordepth.checkpoints import CheckpointError, load_checkpoint

    preset = DATASETS.get(opts.dataset or "")
    max_depth, prior_mean = opts.max_depth, opts.prior_mean
    kind = _checkpoint_kind(opts.checkpoint)
    if preset is not None and kind != "wordepth" and opts.variant is None:
        max_depth = preset.max_depth if max_depth is None else max_depth
        prior_mean = preset.prior_mean if prior_mean is None else prior_mean
    try:
        model = load_checkpoint(opts.checkpoint, variant=opts.variant, legacy=opts.legacy, max_depth=max_depth,
                                prior_mean=prior_mean)
    except (CheckpointError, FileNotFoundError) as err:
        raise PredictError(str(err).splitlines()[0]) from None
    if preset is not None and prior_mean is None and abs(model.cfg.prior_mean - preset.prior_mean) > 1e-6:
        logger.warning("the checkpoint's prior mean is %g, not %s's %g; keeping the checkpoint's",
                       model.cfg.prior_mean, opts.dataset, preset.prior_mean)
    logger.info("model: %s (%s), legacy=%s, prior_mean=%g, max_depth=%g", opts.checkpoint, kind,
                model.cfg.legacy, model.cfg.prior_mean, model.cfg.max_depth)
    return model.to(device).eval()


# --------------------------------------------------------------------------- outputs
def _scale(depth: np.ndarray, vmin: float | None, vmax: float | None) -> tuple[float, float]:
    valid = np.isfinite(depth) & (depth > 0)
    lo = float(depth[valid].min()) if valid.any() else 0.0
    hi = float(depth[valid].max()) if valid.any() else 1.0
    lo = lo if vmin is None else vmin
    hi = hi if vmax is None else vmax
    return lo, max(hi, lo + 1e-6)


def colour_with_bar(depth: np.ndarray, vmin: float | None, vmax: float | None, cmap: str) -> np.ndarray:
    """Colourised depth with a colour bar in metres."""
    lo, hi = _scale(depth, vmin, vmax)
    return vis.add_colorbar(vis.colorize(depth, lo, hi, cmap), lo, hi, label="m", cmap=cmap)


def render_outputs(item: Item, depth: np.ndarray, rgb: np.ndarray, opts: PredictOptions, png_scale: float,
                   focal: float | None) -> dict[str, object]:
    """Every output of one image, in memory: name suffix -> array / text (nothing written yet)."""
    outputs: dict[str, object] = {
        "_depth.png": depth_to_png16(depth, png_scale),
        "_depth.npy": depth.astype(np.float32),
        "_depth_color.png": colour_with_bar(depth, opts.vmin, opts.vmax, opts.cmap),
    }
    if item.caption is not None:
        outputs["_caption.txt"] = item.caption + "\n"
    if opts.ply:
        outputs[".ply"] = (backproject(depth, focal, opts.cx, opts.cy), rgb.reshape(-1, 3))  # (H*W, 3) each
    return outputs


def save_prediction(out: Path, item: Item, depth: np.ndarray, rgb: np.ndarray, opts: PredictOptions,
                    png_scale: float, focal: float | None) -> None:
    """Write the outputs of one image (see the module docstring); all are rendered before any is
    written, so an image that cannot be rendered leaves no partial outputs."""
    outputs = render_outputs(item, depth, rgb, opts, png_scale, focal)
    (out / item.stem).parent.mkdir(parents=True, exist_ok=True)  # stems of images in subfolders hold a "/"
    for suffix, value in outputs.items():
        path = out / f"{item.stem}{suffix}"
        if suffix == "_depth.npy":
            np.save(path, value)
        elif suffix == "_caption.txt":
            path.write_text(value, encoding="utf-8")
        elif suffix == ".ply":
            write_ply(path, *value)
        else:
            vis.save_png(path, value)


def _prepare(item: Item, kb_crop: bool, max_pixels: int | None
             ) -> tuple[np.ndarray, torch.Tensor, tuple[int, int] | None, tuple[int, int]]:
    """(full RGB image, network input (3, h, w) normalised and within the pixel budget, KB-crop offset
    or None, size of the region predicted (the image or its KB crop))."""
    from wordepth.data.transforms import image_to_tensor, kb_crop_offsets, read_image

    try:
        rgb = read_image(item.path)
        offset = kb_crop_offsets(*rgb.shape[:2]) if kb_crop else None
        net = rgb
        if offset is not None:
            (top, left), (h, w) = offset, KB_CROP_HW
            net = rgb[top:top + h, left:left + w]
        region = net.shape[:2]
        net = fit_to_budget(net, max_pixels)
    except (FileNotFoundError, ValueError) as err:
        raise PredictError(f"{item.path}: {err}") from None
    return rgb, image_to_tensor(np.ascontiguousarray(net)), offset, region


def _input_size(item: Item, kb_crop: bool, max_pixels: int | None) -> tuple[int, int]:
    """(h, w) of the network input for an image, from its header where possible."""
    from PIL import Image

    try:
        with Image.open(item.path) as img:
            width, height = img.size
    except Exception:  # formats PIL cannot read: decode with OpenCV
        return tuple(_prepare(item, kb_crop, max_pixels)[1].shape[-2:])
    if kb_crop:
        h, w = KB_CROP_HW
        if height < h or width < w:
            raise PredictError(f"{item.path}: --kb_crop needs an image of at least {h}x{w}, got {height}x{width}")
        height, width = h, w
    try:
        return budget_size(height, width, max_pixels)
    except ValueError as err:
        raise PredictError(f"{item.path}: {err}") from None


@torch.inference_mode()
def predict_images(model: torch.nn.Module, items: Sequence[Item], opts: PredictOptions, out: Path,
                   device: torch.device, png_scale: float, focal: float | None,
                   max_pixels: int | None = None, forward: Callable | None = None) -> list[tuple[Item, str]]:
    """Predict and save every image; images of equal size share a batch.

    ``forward`` (image, text) -> depth replaces ``model``'s forward pass (``--onnx``: ONNX Runtime).

    An image that cannot be read, predicted or rendered is skipped and returned with the reason
    (``opts.strict``: the first one stops the run instead). Inputs above ``max_pixels`` run at a
    reduced size and their depth is resized back.
    """
    failures: list[tuple[Item, str]] = []

    def failed(item: Item, message: str) -> None:
        message = message if message.startswith(str(item.path)) else f"{item.path}: {message}"
        if opts.strict:
            raise PredictError(message)
        logger.error("skipping %s", message)
        failures.append((item, message))

    groups: OrderedDict[tuple[int, int], list[Item]] = OrderedDict()
    for it in items:  # sizes only, so memory holds one batch of images at a time
        try:
            groups.setdefault(_input_size(it, opts.kb_crop, max_pixels), []).append(it)
        except PredictError as err:
            failed(it, str(err))
    with tqdm(total=len(items), initial=len(failures), desc="predicting", unit="img") as bar:
        for size, group in groups.items():
            if device.type == "cpu":
                try:
                    check_memory(model, size, min(opts.batch_size, len(group)), what=str(group[0].path))
                except MemoryError as err:
                    raise PredictError(str(err)) from None
            for start in range(0, len(group), opts.batch_size):
                batch, prepared = [], []
                for it in group[start:start + opts.batch_size]:
                    try:
                        prepared.append(_prepare(it, opts.kb_crop, max_pixels))
                        batch.append(it)
                    except PredictError as err:
                        failed(it, str(err))
                        bar.update(1)
                if not batch:
                    continue
                image = torch.stack([p[1] for p in prepared]).to(device)  # (B, 3, h, w)
                text = torch.stack([it.feature for it in batch]).to(device)  # (B, D)
                with autocast(device, opts.precision):
                    depth = (forward or model)(image, text).float().cpu()  # (B, 1, h, w)
                for it, (rgb, net, offset, region), d in zip(batch, prepared, depth):
                    d = d[0]  # (h, w)
                    if not torch.isfinite(d).all():
                        failed(it, "the prediction is not finite (NaN/inf): check the checkpoint and the image")
                        bar.update(1)
                        continue
                    if tuple(d.shape) != tuple(region):
                        logger.info("%s: %dx%d is above the pixel budget (%d, --max_pixels): predicted at %dx%d "
                                    "and resized back", it.path.name, *region, max_pixels, *d.shape)
                        d = resize_depth(d, region)
                    if offset is not None:
                        d = uncrop_kb(d, rgb.shape[:2])  # (H, W), zeros outside the crop
                    try:
                        save_prediction(out, it, d.numpy(), rgb, opts, png_scale, focal)
                    except (ValueError, cv2.error) as err:
                        failed(it, f"cannot render the outputs: {err}")
                    bar.update(1)
    return failures


@torch.inference_mode()
def sample_prior(model: torch.nn.Module, feature: torch.Tensor, caption: str | None, opts: PredictOptions,
                 out: Path, device: torch.device, image: torch.Tensor | None = None) -> list[np.ndarray]:
    """``--prior K``: K depth maps from the text branch alone, eps ~ N(0, 1) from a seeded generator.

    eps is drawn on the CPU (the same samples on any device) for the stride-16 grid of the size
    padded to a multiple of 32.
    """
    if image is not None:
        size = tuple(image.shape[-2:])
    else:
        size = opts.prior_size or tuple(4 * g for g in model.cfg.backbone.ape_grid)
    K, H, W = opts.prior, size[0], size[1]
    h, w = model.latent_grid((H, W))
    gen = torch.Generator().manual_seed(opts.seed)
    eps = torch.randn(K, model.cfg.latent_dim, h, w, generator=gen)  # (K, L, h, w)
    maps = []
    for start in tqdm(range(0, K, opts.batch_size), desc="sampling prior", unit="batch"):
        e = eps[start:start + opts.batch_size].to(device)
        text = feature.to(device)[None].expand(e.shape[0], -1)  # (k, D)
        img = None if image is None else image.to(device)[None].expand(e.shape[0], -1, -1, -1)
        with autocast(device, opts.precision):
            d = model.prior_depth(text, size=(H, W), image=img, eps=e).float().cpu()  # (k, 1, H, W)
        maps += [m[0].numpy() for m in d]
    lo, hi = _scale(np.stack(maps), opts.vmin, opts.vmax)
    coloured = [vis.colorize(m, lo, hi, opts.cmap) for m in maps]
    for i, (m, c) in enumerate(zip(maps, coloured)):
        np.save(out / f"prior_{i}.npy", m.astype(np.float32))
        vis.save_png(out / f"prior_{i}.png", vis.add_colorbar(c, lo, hi, label="m", cmap=opts.cmap))
    grid = make_prior_grid(coloured, lo, hi, caption, opts.seed, opts.cmap)
    vis.save_png(out / "prior_grid.png", grid)
    logger.info("wrote %d prior samples (%dx%d, seed %d) to %s", K, H, W, opts.seed, out)
    return maps


def make_prior_grid(coloured: Sequence[np.ndarray], vmin: float, vmax: float, caption: str | None,
                    seed: int, cmap: str) -> np.ndarray:
    """Samples side by side (at most 4 per row), one colour bar, the caption above."""
    h, w = coloured[0].shape[:2]
    ncols = min(2 if w > 2 * h else 4, len(coloured))  # wide KITTI maps: two per row
    grid = vis.make_grid(list(coloured), ncols=ncols, labels=[f"sample {i}" for i in range(len(coloured))],
                         cell_width=640)
    grid = vis.add_colorbar(grid, vmin, vmax, label="m", cmap=cmap)
    title = f'"{caption}"' if caption else "(precomputed text feature)"
    return vis.add_title(grid, f"{title}  -  depth from the caption alone, seed {seed}")


# --------------------------------------------------------------------------- everything
def run(opts: PredictOptions) -> Path:
    """Predict the images and/or sample the prior as `opts` say; returns the output folder.

    Raises:
        PredictError: a missing or unusable input (the checkpoint, an image, a caption or feature file).
    """
    device = default_device(opts.device or ("cpu" if opts.onnx else None))  # ONNX Runtime runs on the CPU
    warn_if_emulated_bf16(device, opts.precision)
    items = collect_items(opts.images) if opts.images else []
    model = load_model(opts, device)
    variant = variant_of(model.cfg) if opts.variant is None else opts.variant
    preset = DATASETS.get(opts.dataset or "") or (get_variant(variant).dataset if variant else None)
    png_scale = opts.png_scale or (preset or NYU).depth_png_scale
    focal = opts.focal if opts.focal is not None else (preset.focal if preset else None)

    feature, caption = resolve_text(opts, items, device, (preset or NYU).name)
    if opts.prior > 0 and feature is None:
        first = items[0]
        feature, caption = first.feature, first.caption
        logger.info("--prior uses the text of %s", first.path.name)

    dim = model.cfg.text_dim
    for f in [it.feature for it in items] + [feature]:
        if f is not None and f.numel() != dim:
            raise PredictError(f"text feature has {f.numel()} values, the model expects {dim} (CLIP RN50)")

    out = Path(opts.out)
    check_output_folder(out)
    max_pixels = pixel_budget(model) if opts.max_pixels is None else (opts.max_pixels or None)
    failures = []
    if items:
        forward = onnx_forward(opts, device) if opts.onnx else None
        failures = predict_images(model, items, opts, out, device, png_scale, focal, max_pixels, forward)
        logger.info("wrote predictions for %d of %d images to %s", len(items) - len(failures), len(items), out)
    if opts.prior > 0:
        image = None
        if model.cfg.legacy:
            if not items:
                raise PredictError("the legacy model's text branch uses image features: --prior needs --images")
            image = _prepare(items[0], opts.kb_crop, max_pixels)[1]
            if opts.prior_size is not None:
                logger.warning("legacy model: prior samples take the size of %s, not --prior_size", items[0].path)
        sample_prior(model, feature, caption, opts, out, device, image=image)
    if failures:
        raise PredictError(f"{len(failures)} of {len(items)} images failed (the others were written): "
                           + "; ".join(message for _, message in failures))
    return out


def onnx_forward(opts: PredictOptions, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``--onnx``: the image network of a ``wordepth-export`` graph, run by ONNX Runtime on the CPU.

    The graph must be exported from ``--checkpoint`` (which still gives the settings: variant,
    focal length, the caption-free mean feature, and the network for ``--prior``).
    """
    if device.type != "cpu" or opts.precision != "fp32":
        raise PredictError("--onnx runs on the CPU in float32: leave out --device / --precision")
    if not Path(opts.onnx).is_file():
        raise PredictError(f"ONNX graph not found: {opts.onnx}")
    try:
        from wordepth.export import OnnxDepthModel
        runner = OnnxDepthModel(opts.onnx, threads=torch.get_num_threads())
    except ImportError as err:
        raise PredictError(f"--onnx needs onnxruntime ({err.name} is missing): pip install 'wordepth[onnx]'") from None
    except Exception as err:  # onnxruntime's errors for a file that is not a graph
        raise PredictError(f"cannot load {opts.onnx} as an ONNX graph: {str(err).splitlines()[0]}") from None
    logger.info("image network: %s (ONNX Runtime, %d threads)", opts.onnx, torch.get_num_threads())
    return lambda image, text: torch.from_numpy(runner(image.numpy(), text.numpy()))


def check_output_folder(out: Path) -> None:
    """Create ``out`` and make sure files can be written there, before any work.

    Raises:
        PredictError: ``out`` is a file, or cannot be created or written to.
    """
    if out.exists() and not out.is_dir():
        raise PredictError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PredictError(f"cannot write to --out {out}: {err.strerror or err}") from None

"""Depth for your own images with a trained WorDepth model, and depth sampled from a caption alone.

The file and batch layer of the ``wordepth-predict`` command (``wordepth.cli.predict``; ``python
scripts/predict.py`` is the same) over :class:`wordepth.Predictor`, which does the inference (text
features, pixel budget, the network, the prior sampler): `run` takes a `PredictOptions`. ::

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

Every file is written atomically (``wordepth.outputs``): a full disk leaves the previous file or
none, never a part; a symbolic link at an output name is replaced, not followed; an output that
would overwrite one of the inputs is refused before any work.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from wordepth import visualize as vis
from wordepth.data.depth_png import depth_to_png16
from wordepth.data.images import collect_images
from wordepth.data.facts import KB_CROP_HW, NYU
from wordepth.data.registry import find_facts
from wordepth.data.text_features import load_feature_file, normalize_key
from wordepth.data.transforms import kb_crop_offsets, read_image
from wordepth.errors import UserError
from wordepth.metrics import uncrop_kb
from wordepth.outputs import OutputError, output_problem, write_array, write_atomic, write_text
from wordepth.pointcloud import backproject, write_ply
from wordepth.inference.export import missing_onnx_packages
from wordepth.inference.predictor import NonFiniteDepthError, Predictor, budget_size
from wordepth.text.clip_features import WeightsUnavailableError
from wordepth.variants import get_variant

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


class PredictError(UserError):
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
    except (FileNotFoundError, UserError) as err:
        raise PredictError(str(err)) from None


def _read_caption(path: Path) -> str:
    if not path.is_file():
        raise PredictError(f"caption file not found: {path}")
    try:
        text = " ".join(path.read_text(encoding="utf-8").split())
    except UnicodeDecodeError as err:
        raise PredictError(f"caption file {path} is not UTF-8 text ({err.reason})") from None
    if not text:
        raise PredictError(f"caption file is empty: {path}")
    return text


def _load_feature(path: Path) -> torch.Tensor:
    try:
        return load_feature_file(path)
    except (FileNotFoundError, UserError) as err:
        raise PredictError(str(err).splitlines()[0]) from None


def _file_or_folder(src: str, items: Sequence[Item], suffix: str, read: Callable[[Path], T]
                    ) -> tuple[T | None, list[T]]:
    """``src`` is one file for all images: (what it holds, []); or a folder of ``<stem><suffix>``: (None, one each)."""
    path = Path(src)
    if path.is_dir():
        return None, [read(path / f"{it.stem}{suffix}") for it in items]
    return read(path), []


def _weights_error(err: Exception, flag: str, what: str, hint: str = "") -> PredictError:
    detail = str(err).replace("--weights_path", flag).rstrip(".")
    return PredictError(f"{what}: {detail}{hint}")


def auto_caption(predictor: Predictor, items: Sequence[Item], batch_size: int) -> None:
    """Caption every image with CoCa (:meth:`Predictor.caption`), in place."""
    for start in tqdm(range(0, len(items), batch_size), desc="captioning", unit="batch"):
        batch = items[start:start + batch_size]
        try:
            captions = predictor.caption([read_image(it.path) for it in batch])
        except WeightsUnavailableError as err:
            raise _weights_error(err, "--caption_weights", "--auto_caption needs the CoCa weights") from None
        for it, caption in zip(batch, captions):
            it.caption = caption
            logger.info("%s: %s", it.path.name, caption)


def resolve_text(opts: PredictOptions, items: list[Item], predictor: Predictor
                 ) -> tuple[torch.Tensor | None, str | None]:
    """Fill ``caption``/``feature`` of every item; return the single (feature, caption) if the text
    source is one for all images (else None, None). Without any text source: the predictor's mean
    caption feature of the model's training set. Captions are encoded by the predictor, before any
    output is written."""
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
        auto_caption(predictor, items, opts.batch_size)
    else:
        try:
            single_feat = predictor.mean_feature()
        except (FileNotFoundError, UserError) as err:
            raise PredictError(str(err)) from None
        logger.info("no caption given: using the mean caption feature of the %s training set", predictor.dataset.name)

    for it in items:
        it.caption = single_caption if single_caption is not None else it.caption
        it.feature = single_feat if single_feat is not None else it.feature
    captions = list(dict.fromkeys([it.caption for it in items if it.feature is None and it.caption is not None]
                                  + ([single_caption] if single_caption is not None else [])))
    if captions:
        try:
            table = dict(zip(captions, predictor.encode(captions)))
        except WeightsUnavailableError as err:
            raise _weights_error(err, "--clip_weights", f"encoding the caption needs the CLIP "
                                 f"{predictor.model.cfg.clip_model} weights",
                                 ". Alternatively pass a precomputed --text_feature") from None
        for it in items:
            it.feature = table[it.caption] if it.feature is None else it.feature
        single_feat = table[single_caption] if single_caption is not None else single_feat
    dim = predictor.model.cfg.text_dim
    for f in [it.feature for it in items] + [single_feat]:
        if f is not None and f.numel() != dim:
            raise PredictError(f"text feature has {f.numel()} values, the model takes {dim} (CLIP "
                               f"{predictor.model.cfg.clip_model} features, its text_dim / clip_model)")
    return single_feat, single_caption


# --------------------------------------------------------------------------- model
def build_predictor(opts: PredictOptions) -> Predictor:
    """The :class:`Predictor` of ``--checkpoint`` with the variant/override flags (and ``--onnx``).

    ``--dataset`` fills in max depth and prior mean only for original-release checkpoints, which
    do not record them; this project's checkpoints keep their own unless overridden explicitly.
    """
    preset = find_facts(opts.dataset)

    def dataset_defaults(stored: dict | None) -> dict:
        if preset is None or stored is not None or opts.variant is not None:
            return {}
        return {"max_depth": preset.max_depth, "prior_mean": preset.prior_mean}

    kwargs: dict[str, Any] = dict(
        variant=opts.variant, device=opts.device, legacy=opts.legacy, max_depth=opts.max_depth,
        prior_mean=opts.prior_mean, overrides=dataset_defaults, clip_weights=opts.clip_weights,
        caption_weights=opts.caption_weights, mean_features=opts.mean_features, precision=opts.precision,
        no_caption="auto" if opts.auto_caption else "mean",
        max_pixels="model" if opts.max_pixels is None else (opts.max_pixels or None))
    if opts.onnx is not None:
        if opts.device not in (None, "cpu") or opts.precision != "fp32":
            raise PredictError("--onnx runs on the CPU in float32: leave out --device / --precision")
        if missing_onnx_packages(("onnxruntime",)):  # a clear message before the checkpoint is loaded
            raise PredictError("--onnx needs onnxruntime (onnxruntime is missing): pip install 'wordepth[onnx]'")
    try:
        predictor = Predictor.from_checkpoint(opts.checkpoint, onnx=opts.onnx, **kwargs)
    except FileNotFoundError as err:
        raise PredictError(str(err).splitlines()[0]) from None
    cfg = predictor.model.cfg
    if preset is not None and opts.prior_mean is None and abs(cfg.prior_mean - preset.prior_mean) > 1e-6:
        logger.warning("the checkpoint's prior mean is %g, not %s's %g; keeping the checkpoint's",
                       cfg.prior_mean, opts.dataset, preset.prior_mean)
    logger.info("model: %s (%s), legacy=%s, prior_mean=%g, max_depth=%g", opts.checkpoint,
                predictor.checkpoint_info.get("kind", "?"), cfg.legacy, cfg.prior_mean, cfg.max_depth)
    return predictor


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


OUTPUT_SUFFIXES = ("_depth.png", "_depth.npy", "_depth_color.png", "_caption.txt", ".ply")


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


def write_output(path: Path, value: object) -> None:
    """One output file, atomically, by its suffix (``.txt``, ``.ply``, or an array's: ``.npy``, ``.png``).

    Raises:
        OutputError: it cannot be written (disk full, no permission); the previous file is kept.
    """
    if path.suffix == ".txt":
        write_text(path, value)
    elif path.suffix == ".ply":
        write_atomic(path, lambda tmp: write_ply(tmp, *value))
    else:
        write_array(path, value)


def save_prediction(out: Path, item: Item, depth: np.ndarray, rgb: np.ndarray, opts: PredictOptions,
                    png_scale: float, focal: float | None) -> None:
    """Write the outputs of one image (see the module docstring); all are rendered before any is
    written, so an image that cannot be rendered leaves no outputs."""
    outputs = render_outputs(item, depth, rgb, opts, png_scale, focal)
    for suffix, value in outputs.items():
        write_output(out / f"{item.stem}{suffix}", value)


def check_out_outside_images(out: Path, sources: Sequence[str | os.PathLike]) -> None:
    """Refuse an ``--out`` equal to or inside an ``--images`` folder: the outputs would sit among the
    photos, and the next run over that folder would take them for photos.

    Raises:
        OutputError: naming both folders.
    """
    target = Path(os.path.realpath(out))
    for src in sources:
        if not Path(src).is_dir():
            continue
        folder = Path(os.path.realpath(src))
        if target == folder or folder in target.parents:
            where = "is" if target == folder else "is inside"
            raise OutputError(f"--out {out} {where} the --images folder {src}: the outputs would be listed as "
                              "images by the next run over it; choose an --out outside it")


def check_outputs_against_inputs(out: Path, items: Sequence[Item], opts: PredictOptions) -> None:
    """Refuse, before any work, an output name that is one of the inputs (a re-run over ``--out`` itself).

    Raises:
        OutputError: naming the output and ``--out``.
    """
    inputs = [it.path for it in items] + [Path(p) for p in (opts.checkpoint, opts.onnx, opts.text_feature,
                                                             opts.caption_file, opts.mean_features) if p]
    real = {os.path.realpath(p) for p in inputs}
    names = [f"{it.stem}{suffix}" for it in items for suffix in OUTPUT_SUFFIXES]
    names += [f"prior_{i}{ext}" for i in range(opts.prior) for ext in (".npy", ".png")] + ["prior_grid.png"]
    for name in names:
        if os.path.realpath(out / name) in real:
            raise OutputError(f"--out {out}: the output {out / name} is one of the inputs; it would be overwritten; "
                              "choose another --out")


def _read_region(item: Item, kb_crop: bool) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None]:
    """(full RGB image, the region the network sees (the image or its KB crop), KB-crop offset or None)."""
    try:
        rgb = read_image(item.path)
        offset = kb_crop_offsets(*rgb.shape[:2]) if kb_crop else None
    except (FileNotFoundError, UserError) as err:
        raise PredictError(f"{item.path}: {err}") from None
    if offset is None:
        return rgb, rgb, None
    (top, left), (h, w) = offset, KB_CROP_HW
    return rgb, np.ascontiguousarray(rgb[top:top + h, left:left + w]), offset


def _input_size(item: Item, kb_crop: bool, max_pixels: int | None) -> tuple[int, int]:
    """(h, w) of the network input for an image, from its header where possible (grouping into batches)."""
    try:
        with Image.open(item.path) as img:
            width, height = img.size
    except Exception:  # formats PIL cannot read: decode with OpenCV
        height, width = _read_region(item, kb_crop)[1].shape[:2]
        kb_crop = False
    if kb_crop:
        h, w = KB_CROP_HW
        if height < h or width < w:
            raise PredictError(f"{item.path}: --kb_crop needs an image of at least {h}x{w}, got {height}x{width}")
        height, width = h, w
    try:
        return budget_size(height, width, max_pixels)
    except UserError as err:
        raise PredictError(f"{item.path}: {err}") from None


def predict_images(predictor: Predictor, items: Sequence[Item], opts: PredictOptions, out: Path, png_scale: float,
                   focal: float | None) -> list[tuple[Item, str]]:
    """Predict and save every image through ``predictor``; images of equal size share a batch.

    An image that cannot be read, predicted or rendered is skipped and returned with the reason
    (``opts.strict``: the first one stops the run instead). An output that cannot be written (a full
    disk) stops the run.
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
            groups.setdefault(_input_size(it, opts.kb_crop, predictor.max_pixels), []).append(it)
        except PredictError as err:
            failed(it, str(err))
    with tqdm(total=len(items), initial=len(failures), desc="predicting", unit="img") as bar:
        for group in groups.values():
            for start in range(0, len(group), opts.batch_size):
                batch, read = [], []
                for it in group[start:start + opts.batch_size]:
                    try:
                        read.append(_read_region(it, opts.kb_crop))
                        batch.append(it)
                    except PredictError as err:
                        failed(it, str(err))
                        bar.update(1)
                for it, (rgb, region, offset), depth in zip(batch, read, _infer(predictor, batch, read, failed)):
                    if depth is not None:
                        d = torch.from_numpy(depth)
                        if offset is not None:
                            d = uncrop_kb(d, rgb.shape[:2])  # (H, W), zeros outside the crop
                        try:
                            save_prediction(out, it, d.numpy(), rgb, opts, png_scale, focal)
                        except (ValueError, cv2.error) as err:
                            if isinstance(err, OutputError):
                                raise
                            failed(it, f"cannot render the outputs: {err}")
                    bar.update(1)
    return failures


def _infer(predictor: Predictor, batch: list[Item], read: list[tuple], failed: Callable[[Item, str], None]
           ) -> list[np.ndarray | None]:
    """Depth of a batch's regions; after a non-finite prediction, each image alone to tell which failed."""
    if not batch:
        return []
    try:
        return predictor.infer([r[1] for r in read], [it.feature for it in batch])
    except NonFiniteDepthError as err:
        if len(batch) == 1:
            failed(batch[0], str(err))
            return [None]
    except MemoryError as err:
        raise PredictError(f"{batch[0].path}: {err}") from None
    return [d for it, r in zip(batch, read) for d in _infer(predictor, [it], [r], failed)]


def write_prior(predictor: Predictor, feature: torch.Tensor | None, caption: str | None, opts: PredictOptions,
                out: Path, image: np.ndarray | None = None) -> np.ndarray:
    """``--prior K``: K depth maps from the text branch alone (:meth:`Predictor.prior`), written with a grid."""
    maps = predictor.prior(feature, size=opts.prior_size, k=opts.prior, seed=opts.seed, image=image,
                           batch_size=opts.batch_size)  # (K, H, W)
    lo, hi = _scale(maps, opts.vmin, opts.vmax)
    coloured = [vis.colorize(m, lo, hi, opts.cmap) for m in maps]
    for i, (m, c) in enumerate(zip(maps, coloured)):
        write_output(out / f"prior_{i}.npy", m.astype(np.float32))
        write_output(out / f"prior_{i}.png", vis.add_colorbar(c, lo, hi, label="m", cmap=opts.cmap))
    write_output(out / "prior_grid.png", make_prior_grid(coloured, lo, hi, caption, opts.seed, opts.cmap))
    logger.info("wrote %d prior samples (%dx%d, seed %d) to %s", len(maps), *maps.shape[1:], opts.seed, out)
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
        PredictError, OutputError: a missing or unusable input, an output that cannot be written.
    """
    out = Path(opts.out)
    problem = output_problem(out, "--out", folder=True)
    if problem:
        raise OutputError(problem)
    check_out_outside_images(out, opts.images)
    items = collect_items(opts.images) if opts.images else []
    check_outputs_against_inputs(out, items, opts)
    predictor = build_predictor(opts)
    variant = predictor.variant if opts.variant is None else opts.variant
    preset = find_facts(opts.dataset) or (get_variant(variant).dataset if variant else None)
    png_scale = opts.png_scale or (preset or NYU).depth_png_scale or NYU.depth_png_scale  # .npy datasets: mm
    focal = opts.focal if opts.focal is not None else (preset.focal if preset else None)
    if opts.mean_features is None and preset is not None:
        predictor.dataset = preset  # the mean caption feature of the dataset named
    feature, caption = resolve_text(opts, items, predictor)
    if opts.prior > 0 and feature is None:
        feature, caption = items[0].feature, items[0].caption
        logger.info("--prior uses the text of %s", items[0].path.name)
    legacy_image = None
    if opts.prior > 0 and predictor.model.cfg.legacy:
        if not items:
            raise PredictError("the legacy model's text branch uses image features: --prior needs --images")
        legacy_image = _read_region(items[0], opts.kb_crop)[1]
        if opts.prior_size is not None:
            logger.warning("legacy model: prior samples take the size of %s, not --prior_size", items[0].path)

    out.mkdir(parents=True, exist_ok=True)
    failures = []
    if items:
        failures = predict_images(predictor, items, opts, out, png_scale, focal)
        logger.info("wrote predictions for %d of %d images to %s", len(items) - len(failures), len(items), out)
    if opts.prior > 0:
        write_prior(predictor, feature, caption, opts, out, image=legacy_image)
    if failures:
        raise PredictError(f"{len(failures)} of {len(items)} images failed (the others were written): "
                           + "; ".join(message for _, message in failures))
    return out

"""Depth for your own images with a trained WorDepth model, and depth sampled from a caption alone.

::

    # one caption for every image, CLIP weights from the cache (or a local file)
    python scripts/predict.py --checkpoint nyu.pth --dataset nyu --images room.jpg photos/ \\
        --caption "a bedroom with a stand and a bed" --out pred/ --ply
    # precomputed CLIP feature(s): one file, or a folder of <image stem>.pt
    python scripts/predict.py --checkpoint nyu.pth --images photos/ --text_feature feats/ --out pred/
    # caption every image with CoCa first
    python scripts/predict.py --checkpoint nyu.pth --images photos/ --auto_caption --out pred/
    # the paper's Fig. 1: 8 depth maps sampled from the caption alone (text branch)
    python scripts/predict.py --checkpoint nyu.pth --caption "a bedroom with a stand and a bed" \\
        --prior 8 --seed 0 --out prior/

Per image ``<stem>``, written into ``--out``: ``<stem>_depth.png`` (uint16, millimetres by
default, as NYU; ``--dataset kitti`` uses KITTI's x256), ``<stem>_depth.npy`` (float32 metres),
``<stem>_depth_color.png`` (colour map with a colour bar), ``<stem>_caption.txt`` when a caption
was used, and with ``--ply`` ``<stem>.ply`` (points coloured by the image). ``--prior K`` writes
``prior_<i>.png``, ``prior_<i>.npy`` (i = 0..K-1) and ``prior_grid.png``.
"""
from __future__ import annotations

import argparse
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wordepth import visualize as vis
from wordepth.metrics import KB_CROP_HW, uncrop_kb

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Camera and output-layer constants of the two benchmarks (focal in pixels at full resolution).
DATASET_PRESETS = {
    "nyu": {"focal": 518.8579, "prior_mean": 1.54, "max_depth": 10.0, "png_scale": 1000.0},
    "kitti": {"focal": 721.5377, "prior_mean": 2.54, "max_depth": 80.0, "png_scale": 256.0},
}


@dataclass
class Item:
    """One input image."""

    path: Path
    stem: str
    caption: str | None = None
    feature: torch.Tensor | None = None  # (D,) float32


# --------------------------------------------------------------------------- arguments
def _size(text: str) -> tuple[int, int]:
    """'480x640' -> (480, 640)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 480x640, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``scripts/predict.py``."""
    p = argparse.ArgumentParser(description="Predict depth for images with a trained WorDepth model.")
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", required=True, help="original-release or this project's checkpoint")
    g.add_argument("--dataset", choices=sorted(DATASET_PRESETS),
                   help="camera/model preset: focal length, and for original checkpoints max depth and "
                        "prior mean (nyu: 518.8579 px, 1.54; kitti: 721.5377 px, 2.54)")
    g.add_argument("--legacy", action="store_true", default=None,
                   help="original checkpoint of the paper's model (decoder skip connections)")
    g.add_argument("--max_depth", type=float, default=None, help="override the model's maximum depth")
    g.add_argument("--prior_mean", type=float, default=None, help="override the output layer's log-depth prior")
    g.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available)")

    g = p.add_argument_group("inputs")
    g.add_argument("--images", nargs="+", default=[], help="image files and/or folders of images")
    g.add_argument("--kb_crop", action="store_true",
                   help="KITTI-sized inputs: predict on the 352x1216 KB crop, paste back into zeros")
    g.add_argument("--batch_size", type=int, default=1, help="images per forward pass (equal sizes are grouped)")

    g = p.add_argument_group("text (one of)")
    t = g.add_mutually_exclusive_group(required=True)
    t.add_argument("--caption", help="one caption for every image (encoded with CLIP)")
    t.add_argument("--caption_file", help="a caption file for every image, or a folder of <image stem>.txt")
    t.add_argument("--text_feature", help="a precomputed (1, 1024) CLIP feature .pt for every image, "
                                          "or a folder of <image stem>.pt")
    t.add_argument("--auto_caption", action="store_true", help="caption each image with CoCa, then encode with CLIP")
    g.add_argument("--clip_weights", "--clip_weights_path", dest="clip_weights", default=None,
                   help="local CLIP RN50 weights (else the cache / a download)")
    g.add_argument("--caption_weights", "--caption_weights_path", dest="caption_weights", default=None,
                   help="local CoCa weights for --auto_caption")

    g = p.add_argument_group("outputs")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--png_scale", type=float, default=None,
                   help="16-bit PNG units per metre (default 1000 = millimetres; 256 with --dataset kitti)")
    g.add_argument("--cmap", default="turbo", choices=sorted(vis.CMAPS), help="colour map")
    g.add_argument("--vmin", type=float, default=None, help="colour scale bottom in metres (default: map minimum)")
    g.add_argument("--vmax", type=float, default=None, help="colour scale top in metres (default: map maximum)")
    g.add_argument("--ply", action="store_true", help="also write <stem>.ply point clouds (needs a focal length)")
    g.add_argument("--focal", type=float, default=None, help="focal length in pixels for --ply (default: preset)")
    g.add_argument("--cx", type=float, default=None, help="principal point x (default: width / 2)")
    g.add_argument("--cy", type=float, default=None, help="principal point y (default: height / 2)")

    g = p.add_argument_group("sampling from the caption alone")
    g.add_argument("--prior", type=int, default=0, metavar="K", help="sample K depth maps from the text branch")
    g.add_argument("--seed", type=int, default=0, help="seed of the prior samples")
    g.add_argument("--prior_size", type=_size, default=None, metavar="HxW",
                   help="size of the prior samples (default: the model's training size)")
    return p


def _fail(msg: str) -> SystemExit:
    return SystemExit(f"error: {msg}")


def _check_args(args: argparse.Namespace) -> None:
    if not args.images and args.prior <= 0:
        raise _fail("nothing to do: give --images and/or --prior K")
    if args.batch_size < 1:
        raise _fail("--batch_size must be at least 1")
    if args.prior < 0:
        raise _fail("--prior must be >= 0")
    if args.ply and args.focal is None and args.dataset is None:
        raise _fail("--ply needs a focal length: --focal PIXELS or --dataset nyu|kitti")
    if args.auto_caption and not args.images:
        raise _fail("--auto_caption captions the --images; give some")
    if not Path(args.checkpoint).is_file():
        raise _fail(f"checkpoint not found: {args.checkpoint}")


# --------------------------------------------------------------------------- inputs
def collect_images(sources: Sequence[str]) -> list[Item]:
    """Image files named directly or found (non-recursively) in folders, in the order given.

    Raises:
        SystemExit: a source is missing, a folder holds no image, or two images share a stem
            (their outputs would overwrite each other).
    """
    items: list[Item] = []
    for src in sources:
        path = Path(src)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise _fail(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
            items += [Item(p, p.stem) for p in found]
        elif path.is_file():
            items.append(Item(path, path.stem))
        else:
            raise _fail(f"image not found: {path}")
    seen: dict[str, Path] = {}
    for it in items:
        if it.stem in seen:
            raise _fail(f"{seen[it.stem]} and {it.path} would both write {it.stem}_*; rename one")
        seen[it.stem] = it.path
    return items


def _read_caption(path: Path) -> str:
    if not path.is_file():
        raise _fail(f"caption file not found: {path}")
    text = " ".join(path.read_text(encoding="utf-8").split())
    if not text:
        raise _fail(f"caption file is empty: {path}")
    return text


def _load_feature(path: Path) -> torch.Tensor:
    from wordepth.data.text_features import load_feature_file

    try:
        return load_feature_file(path)
    except (FileNotFoundError, ValueError) as err:
        raise _fail(str(err).splitlines()[0]) from None


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
        raise _fail(f"--auto_caption needs the CoCa weights: {detail}") from None
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
        raise _fail(f"encoding the caption needs the CLIP RN50 weights: {detail}. "
                    "Alternatively pass a precomputed --text_feature") from None
    feats = clip_encode(model, tokenizer, unique, batch_size=64, device=device)  # (N, D)
    return {c: f for c, f in zip(unique, feats)}


def resolve_text(args: argparse.Namespace, items: list[Item], device: torch.device
                 ) -> tuple[torch.Tensor | None, str | None]:
    """Fill ``caption``/``feature`` of every item; return the single (feature, caption) if the text
    source is one for all images (else None, None)."""
    single_feat: torch.Tensor | None = None
    single_caption: str | None = None
    if args.text_feature is not None:
        src = Path(args.text_feature)
        if src.is_dir():
            for it in items:
                it.feature = _load_feature(src / f"{it.stem}.pt")
        else:
            single_feat = _load_feature(src)
    elif args.caption is not None:
        single_caption = " ".join(args.caption.split())
        if not single_caption:
            raise _fail("--caption is empty")
    elif args.caption_file is not None:
        src = Path(args.caption_file)
        if src.is_dir():
            for it in items:
                it.caption = _read_caption(src / f"{it.stem}.txt")
        else:
            single_caption = _read_caption(src)
    else:  # --auto_caption
        auto_caption(items, args.caption_weights, device, args.batch_size)

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
        table = encode_captions(captions, args.clip_weights, device)
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


def load_model(args: argparse.Namespace, device: torch.device) -> torch.nn.Module:
    """The network of ``--checkpoint`` with the preset/override flags, in eval mode on ``device``.

    ``--dataset`` fills in max depth and prior mean only for original-release checkpoints, which
    do not record them; this project's checkpoints keep their own unless overridden explicitly.
    """
    from wordepth.checkpoints import CheckpointError, load_checkpoint

    preset = DATASET_PRESETS.get(args.dataset or "")
    max_depth, prior_mean = args.max_depth, args.prior_mean
    kind = _checkpoint_kind(args.checkpoint)
    if preset is not None and kind != "wordepth":
        max_depth = preset["max_depth"] if max_depth is None else max_depth
        prior_mean = preset["prior_mean"] if prior_mean is None else prior_mean
    try:
        model = load_checkpoint(args.checkpoint, legacy=args.legacy, max_depth=max_depth, prior_mean=prior_mean)
    except (CheckpointError, FileNotFoundError) as err:
        raise _fail(str(err).splitlines()[0]) from None
    if preset is not None and prior_mean is None and abs(model.cfg.prior_mean - preset["prior_mean"]) > 1e-6:
        logger.warning("the checkpoint's prior mean is %g, not %s's %g; keeping the checkpoint's",
                       model.cfg.prior_mean, args.dataset, preset["prior_mean"])
    logger.info("model: %s (%s), legacy=%s, prior_mean=%g, max_depth=%g", args.checkpoint, kind,
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


def save_prediction(out: Path, item: Item, depth: np.ndarray, rgb: np.ndarray, args: argparse.Namespace,
                    png_scale: float, focal: float | None) -> None:
    """Write the outputs of one image (see the module docstring)."""
    vis.save_png(out / f"{item.stem}_depth.png", vis.depth_to_png16(depth, png_scale))
    np.save(out / f"{item.stem}_depth.npy", depth.astype(np.float32))
    vis.save_png(out / f"{item.stem}_depth_color.png", colour_with_bar(depth, args.vmin, args.vmax, args.cmap))
    if item.caption is not None:
        (out / f"{item.stem}_caption.txt").write_text(item.caption + "\n", encoding="utf-8")
    if args.ply:
        points = vis.backproject(depth, focal, args.cx, args.cy)  # (H*W, 3)
        vis.write_ply(out / f"{item.stem}.ply", points, rgb.reshape(-1, 3))


def _prepare(item: Item, kb_crop: bool) -> tuple[np.ndarray, torch.Tensor, tuple[int, int] | None]:
    """(full RGB image, normalised network input (3, h, w), KB-crop offset or None)."""
    from wordepth.data.transforms import image_to_tensor, kb_crop_offsets, read_image

    try:
        rgb = read_image(item.path)
        offset = kb_crop_offsets(*rgb.shape[:2]) if kb_crop else None
    except (FileNotFoundError, ValueError) as err:
        raise _fail(f"{item.path}: {err}") from None
    net = rgb
    if offset is not None:
        (top, left), (h, w) = offset, KB_CROP_HW
        net = rgb[top:top + h, left:left + w]
    return rgb, image_to_tensor(np.ascontiguousarray(net)), offset


def _input_size(item: Item, kb_crop: bool) -> tuple[int, int]:
    """(h, w) of the network input for an image, from its header where possible."""
    from PIL import Image

    try:
        with Image.open(item.path) as img:
            width, height = img.size
    except Exception:  # formats PIL cannot read: decode with OpenCV
        return tuple(_prepare(item, kb_crop)[1].shape[-2:])
    if kb_crop:
        h, w = KB_CROP_HW
        if height < h or width < w:
            raise _fail(f"{item.path}: --kb_crop needs an image of at least {h}x{w}, got {height}x{width}")
        return h, w
    return height, width


@torch.inference_mode()
def predict_images(model: torch.nn.Module, items: Sequence[Item], args: argparse.Namespace, out: Path,
                   device: torch.device, png_scale: float, focal: float | None) -> None:
    """Predict and save every image; images of equal size share a batch."""
    groups: OrderedDict[tuple[int, int], list[Item]] = OrderedDict()
    for it in items:  # sizes only, so memory holds one batch of images at a time
        groups.setdefault(_input_size(it, args.kb_crop), []).append(it)
    with tqdm(total=len(items), desc="predicting", unit="img") as bar:
        for group in groups.values():
            for start in range(0, len(group), args.batch_size):
                batch = group[start:start + args.batch_size]
                prepared = [_prepare(it, args.kb_crop) for it in batch]
                image = torch.stack([p[1] for p in prepared]).to(device)  # (B, 3, h, w)
                text = torch.stack([it.feature for it in batch]).to(device)  # (B, D)
                depth = model(image, text).float().cpu()  # (B, 1, h, w)
                for it, (rgb, _, offset), d in zip(batch, prepared, depth):
                    d = d[0]  # (h, w)
                    if offset is not None:
                        d = uncrop_kb(d, rgb.shape[:2])  # (H, W), zeros outside the crop
                    save_prediction(out, it, d.numpy(), rgb, args, png_scale, focal)
                bar.update(len(batch))


@torch.inference_mode()
def sample_prior(model: torch.nn.Module, feature: torch.Tensor, caption: str | None, args: argparse.Namespace,
                 out: Path, device: torch.device, image: torch.Tensor | None = None) -> list[np.ndarray]:
    """``--prior K``: K depth maps from the text branch alone, eps ~ N(0, 1) from a seeded generator.

    eps is drawn on the CPU (the same samples on any device) for the stride-16 grid of the size
    padded to a multiple of 32.
    """
    if image is not None:
        size = tuple(image.shape[-2:])
    else:
        size = args.prior_size or tuple(4 * g for g in model.cfg.backbone.ape_grid)
    K, H, W = args.prior, size[0], size[1]
    h, w = 2 * -(-H // 32), 2 * -(-W // 32)
    gen = torch.Generator().manual_seed(args.seed)
    eps = torch.randn(K, model.cfg.latent_dim, h, w, generator=gen)  # (K, L, h, w)
    maps = []
    for start in tqdm(range(0, K, args.batch_size), desc="sampling prior", unit="batch"):
        e = eps[start:start + args.batch_size].to(device)
        text = feature.to(device)[None].expand(e.shape[0], -1)  # (k, D)
        img = None if image is None else image.to(device)[None].expand(e.shape[0], -1, -1, -1)
        d = model.prior_depth(text, size=(H, W), image=img, eps=e).float().cpu()  # (k, 1, H, W)
        maps += [m[0].numpy() for m in d]
    lo, hi = _scale(np.stack(maps), args.vmin, args.vmax)
    coloured = [vis.colorize(m, lo, hi, args.cmap) for m in maps]
    for i, (m, c) in enumerate(zip(maps, coloured)):
        np.save(out / f"prior_{i}.npy", m.astype(np.float32))
        vis.save_png(out / f"prior_{i}.png", vis.add_colorbar(c, lo, hi, label="m", cmap=args.cmap))
    grid = make_prior_grid(coloured, lo, hi, caption, args.seed, args.cmap)
    vis.save_png(out / "prior_grid.png", grid)
    logger.info("wrote %d prior samples (%dx%d, seed %d) to %s", K, H, W, args.seed, out)
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


# --------------------------------------------------------------------------- entry point
def run(args: argparse.Namespace) -> Path:
    """Everything ``main`` does, from parsed arguments; returns the output folder."""
    _check_args(args)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    items = collect_images(args.images)
    preset = DATASET_PRESETS.get(args.dataset or "")
    png_scale = args.png_scale or (preset["png_scale"] if preset else 1000.0)
    focal = args.focal if args.focal is not None else (preset["focal"] if preset else None)

    feature, caption = resolve_text(args, items, device)
    if args.prior > 0 and feature is None:
        first = items[0]
        feature, caption = first.feature, first.caption
        logger.info("--prior uses the text of %s", first.path.name)

    model = load_model(args, device)
    dim = model.cfg.text_dim
    for f in [it.feature for it in items] + [feature]:
        if f is not None and f.numel() != dim:
            raise _fail(f"text feature has {f.numel()} values, the model expects {dim} (CLIP RN50)")

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise _fail(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if items:
        predict_images(model, items, args, out, device, png_scale, focal)
        logger.info("wrote predictions for %d images to %s", len(items), out)
    if args.prior > 0:
        image = None
        if model.cfg.legacy:
            if not items:
                raise _fail("the legacy model's text branch uses image features: --prior needs --images")
            image = _prepare(items[0], args.kb_crop)[1]
            if args.prior_size is not None:
                logger.warning("legacy model: prior samples take the size of %s, not --prior_size", items[0].path)
        sample_prior(model, feature, caption, args, out, device, image=image)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``scripts/predict.py``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    run(build_parser().parse_args(argv))
    return 0

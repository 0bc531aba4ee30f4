"""Zero-shot evaluation: a trained model on SUN RGB-D, iBims-1 and DIODE, each by a published protocol.

Per image: predict (optionally averaged with the flipped image's prediction), resize the
prediction to the ground truth where the protocol resized the input, apply the dataset's
validity masks and the protocol's ground-truth cap, align the prediction to the ground truth
on the evaluated pixels (``none``: metric, the paper's setting; ``median``: median scaling;
``lstsq``: least-squares scale and shift, the affine-invariant protocol), clamp it to the
protocol's range and compute the nine metrics of `wordepth.metrics`; the numbers are the mean
over images. Protocols and their sources: `wordepth.data.facts` and docs/zeroshot.md.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from wordepth.checkpoints import load_checkpoint
from wordepth.data.facts import EvalProtocol
from wordepth.errors import UserError, error_message
from wordepth.metrics import METRIC_NAMES, MetricAccumulator, clamp_prediction, eval_mask, per_image_metrics
from wordepth.runtime import autocast

__all__ = ["ALIGNMENTS", "ZeroShotResult", "align_least_squares", "align_median", "align_prediction",
           "alignment_problem", "evaluate_zeroshot", "format_table", "image_metrics", "load_model", "markdown_table", "predict_depth",
           "protocol_ground_truth", "results_json", "run_suite"]

log = logging.getLogger(__name__)

ALIGNMENTS = ("none", "median", "lstsq")


# --------------------------------------------------------------------------- model
def load_model(path: str | os.PathLike, variant: str | None = None) -> torch.nn.Module:
    """The network of a checkpoint in eval mode; ``variant`` names the model an original-release
    checkpoint holds (:func:`wordepth.checkpoints.load_checkpoint`); this project's checkpoints record it."""
    return load_checkpoint(path, variant=variant)


# --------------------------------------------------------------------------- alignment


def align_median(pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """``pred * median(gt) / median(pred)`` over the pixels of ``mask`` (numpy's median: the mean
    of the two middle values for an even count). Unchanged where ``mask`` is empty.

    Args:
        pred, gt: (H, W) depth maps.
        mask: (H, W) bool, the evaluated pixels.
    """
    if not bool(mask.any()):
        return pred
    p, g = pred[mask].double(), gt[mask].double()
    scale = torch.quantile(g, 0.5) / torch.quantile(p, 0.5)
    return (pred.double() * scale).to(pred.dtype)


def align_least_squares(pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """``s * pred + t`` with (s, t) minimising ``sum((s * pred + t - gt)^2)`` over ``mask``.

    The closed form in float64: ``s = cov(pred, gt) / var(pred)``, ``t = mean(gt) - s mean(pred)``;
    a constant prediction becomes ``mean(gt)`` (every least-squares solution fits that). Unchanged
    where ``mask`` is empty.
    """
    if not bool(mask.any()):
        return pred
    p, g = pred[mask].double(), gt[mask].double()
    pm, gm = p.mean(), g.mean()
    var = ((p - pm) ** 2).sum()
    scale = ((p - pm) * (g - gm)).sum() / var if var > 0 else torch.zeros((), dtype=torch.float64)
    shift = gm - scale * pm
    return (pred.double() * scale + shift).to(pred.dtype)


def align_prediction(pred: Tensor, gt: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Per-image alignment of ``pred`` to ``gt`` on ``mask``: ``none``, ``median`` or ``lstsq``.

    Args:
        pred, gt: (..., H, W) with the same shape; leading dimensions are images.
        mask: bool, the shape of ``gt``.
    """
    if mode not in ALIGNMENTS:
        raise UserError(f"unknown alignment {mode!r}: use one of {', '.join(ALIGNMENTS)}")
    if mode == "none":
        return pred
    fn = align_median if mode == "median" else align_least_squares
    flat_p, flat_g, flat_m = (x.reshape(-1, *x.shape[-2:]) for x in (pred, gt, mask))
    return torch.stack([fn(p, g, m) for p, g, m in zip(flat_p, flat_g, flat_m)]).reshape(pred.shape)


def alignment_problem(gt: Tensor, mask: Tensor, mode: str) -> str | None:
    """Why aligning one image (``gt``, ``mask``: (H, W)) by ``mode`` would fake its scores, or None.

    ``lstsq`` fits two parameters: with fewer than three evaluated pixels, or a ground truth that is
    the same everywhere, the fit is exact whatever the prediction, and the image would score perfectly.
    ``median`` scales one pixel onto its ground truth exactly. Such images are skipped.
    """
    if mode == "none":
        return None
    count = int(mask.sum())
    need = 3 if mode == "lstsq" else 2
    if count < need:
        return (f"{mode} alignment needs at least {need} evaluated pixels, the image has {count}: any prediction "
                "would score perfectly")
    if mode == "lstsq":
        values = gt[mask]
        if bool((values == values[0]).all()):
            return (f"lstsq alignment on a constant ground truth ({float(values[0]):g} m at every evaluated pixel) "
                    "fits any prediction exactly")
    return None


# --------------------------------------------------------------------------- one dataset


@dataclass
class ZeroShotResult:
    """One dataset's evaluation.

    Attributes:
        dataset: its name.
        metrics: the nine metrics (mean over images) and ``count``.
        skipped: images without a valid pixel.
        protocol: the protocol used (``EvalProtocol.to_dict``), plus ``align`` and ``flip``.
        rows: per image ``{"path": key, <metric>: value}``.
    """

    dataset: str
    metrics: dict
    skipped: int
    protocol: dict
    rows: list = field(default_factory=list)


def _resize_short_side(image: Tensor, short: int) -> Tensor:
    """Bilinear resize of a (B, C, H, W) batch so that min(H, W) == short (aspect kept, as
    torchvision's ``Resize(short)``)."""
    h, w = image.shape[-2:]
    if min(h, w) == short:
        return image
    if h <= w:
        size = (short, int(short * w / h))
    else:
        size = (int(short * h / w), short)
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def predict_depth(model: torch.nn.Module, image: Tensor, text: Tensor, *, flip: bool = False,
                  input_short_side: int | None = None, out_hw: tuple[int, int] | None = None,
                  amp: str = "none") -> Tensor:
    """The image branch's depth (B, 1, H, W), float32.

    Args:
        image: (B, 3, H, W) normalised images. text: (B, D) caption features.
        flip: average with the prediction for the horizontally flipped image (flipped back).
        input_short_side: resize the input first (bilinear), see `EvalProtocol`.
        out_hw: upsample the prediction to this size (bilinear, corners aligned, as ZoeDepth).
        amp: autocast precision (`wordepth.runtime.autocast`).
    """
    x = _resize_short_side(image, input_short_side) if input_short_side else image
    with autocast(x.device, amp):
        pred = model(x, text).float()
        if flip:
            pred = 0.5 * (pred + model(torch.flip(x, dims=[3]), text).float().flip(dims=[3]))
    if out_hw is not None and tuple(pred.shape[-2:]) != tuple(out_hw):
        pred = F.interpolate(pred, size=tuple(out_hw), mode="bilinear", align_corners=True)
    return pred


def protocol_ground_truth(depth: Tensor, valid_mask: Tensor | None, protocol: EvalProtocol) -> Tensor:
    """The ground truth as the protocol sees it: 0 where the dataset's masks reject a pixel
    (``use_masks``), capped at ``gt_cap``."""
    gt = depth
    if protocol.use_masks and valid_mask is not None:
        gt = torch.where(valid_mask.to(gt.device), gt, torch.zeros_like(gt))
    if protocol.gt_cap is not None:
        gt = gt.clamp_max(protocol.gt_cap)
    return gt


def image_metrics(pred: Tensor, depth: Tensor, valid_mask: Tensor | None, protocol: EvalProtocol,
                  align: str = "none", skipped_why: list | None = None) -> Tensor:
    """The nine metrics (B, 9) of predictions already at the ground truth's size.

    An image whose alignment would be exact whatever the prediction (:func:`alignment_problem`) gets
    NaN metrics (skipped and counted, like an image without a valid pixel).

    Args:
        pred: (B, 1, H, W). depth: (B, 1, H, W) metres. valid_mask: (B, 1, H, W) bool or None.
        skipped_why: if given, receives one entry per image: None, or why it was skipped.
    """
    gt = protocol_ground_truth(depth, valid_mask, protocol)
    mask = eval_mask(gt, protocol.min_depth, protocol.max_depth, protocol.crop, "nyu")
    why = [alignment_problem(g.reshape(g.shape[-2:]), m.reshape(m.shape[-2:]), align)
           for g, m in zip(gt.reshape(-1, *gt.shape[-2:]), mask.reshape(-1, *mask.shape[-2:]))]
    pred = align_prediction(pred, gt, mask, align)
    pred = clamp_prediction(pred, *protocol.clamp_range)
    metrics = per_image_metrics(pred, gt, min_depth=protocol.min_depth, max_depth=protocol.max_depth,
                                crop=protocol.crop, dataset="nyu")
    for i, reason in enumerate(why):
        if reason is not None:
            metrics[i] = float("nan")
    if skipped_why is not None:
        skipped_why.extend(why)
    return metrics


def evaluate_zeroshot(model: torch.nn.Module, dataset, protocol: EvalProtocol, *, device: torch.device,
                      align: str = "none", flip: bool | None = None, amp: str = "none", num_workers: int = 0,
                      progress: bool = True, per_image: bool = False) -> ZeroShotResult:
    """Evaluates ``model`` on a zero-shot dataset (`wordepth.zeroshot.data`) by ``protocol``.

    Images are evaluated one at a time (their sizes differ within SUN RGB-D).

    Args:
        flip: flip averaging; None follows the protocol's published setting.
        per_image: also return each image's metrics.

    Raises:
        RuntimeError: no image had a valid pixel.
    """
    if align not in ALIGNMENTS:
        raise UserError(f"unknown alignment {align!r}: use one of {', '.join(ALIGNMENTS)}")
    flip = protocol.flip if flip is None else flip
    name = dataset.facts.name
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers)
    acc = MetricAccumulator()
    rows = []
    for batch in tqdm(loader, desc=name, disable=not progress, dynamic_ncols=True, leave=False):
        depth = batch["depth"].to(device)
        pred = predict_depth(model, batch["image"].to(device), batch["text_feature"].to(device), flip=flip,
                             input_short_side=protocol.input_short_side, out_hw=depth.shape[-2:], amp=amp)
        why: list = []
        metrics = image_metrics(pred, depth, batch["valid_mask"].to(device), protocol, align, why).cpu()
        for path, reason in zip(batch["path"], why):
            if reason is not None:
                log.warning("%s: %s: %s; skipped", name, path, reason)
        acc.update(metrics)
        if per_image:
            rows += [{"path": p, **dict(zip(METRIC_NAMES, m.tolist()))} for p, m in zip(batch["path"], metrics)]
    if was_training:
        model.train()
    if acc.count == 0:
        raise RuntimeError(f"{name}: no image with valid ground truth was evaluated")
    record = {**protocol.to_dict(), "align": align, "flip": flip}
    return ZeroShotResult(name, acc.as_dict(), acc.skipped, record, rows)


# --------------------------------------------------------------------------- reporting


def _value(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.4f}"


def format_table(results: Sequence[ZeroShotResult], errors: dict[str, str] | None = None) -> str:
    """A plain-text table: one row per dataset, the nine metrics, the image count; then failures."""
    width = max([len("dataset"), *(len(r.dataset) for r in results), *(len(n) for n in errors or {})])
    head = f"{'dataset':<{width}}  {'protocol':<9} " + " ".join(f"{m:>8}" for m in METRIC_NAMES) + f" {'images':>7}"
    lines = [head]
    for r in results:
        values = " ".join(f"{_value(r.metrics[m]):>8}" for m in METRIC_NAMES)
        lines.append(f"{r.dataset:<{width}}  {r.protocol['name']:<9} {values} {r.metrics['count']:>7}")
    for name, message in (errors or {}).items():
        lines.append(f"{name:<{width}}  not evaluated: {message}")
    return "\n".join(lines)


def markdown_table(results: Sequence[ZeroShotResult], errors: dict[str, str] | None = None,
                   note: str | None = None) -> str:
    """The same table in Markdown (arrows: lower / higher is better), with the protocols below."""
    arrows = {m: "↑" if m in ("d1", "d2", "d3") else "↓" for m in METRIC_NAMES}
    lines = ["| dataset | protocol | alignment | flip | " + " | ".join(f"{m} {arrows[m]}" for m in METRIC_NAMES)
             + " | images |", "|---|---|---|---|" + "---:|" * (len(METRIC_NAMES) + 1)]
    for r in results:
        p = r.protocol
        values = " | ".join(_value(r.metrics[m]) for m in METRIC_NAMES)
        lines.append(f"| {r.dataset} | {p['name']} | {p['align']} | {'yes' if p['flip'] else 'no'} | {values} "
                     f"| {r.metrics['count']} |")
    for name, message in (errors or {}).items():
        lines.append(f"| {name} | not evaluated: {message} |" + " |" * (len(METRIC_NAMES) + 3))
    lines.append("")
    for r in results:
        p = r.protocol
        crop = p["crop"] or "none"
        lines.append(f"- {r.dataset}: {p['name']} protocol ({p['source']}): valid {p['min_depth']:g} < gt < "
                     f"{p['max_depth']:g} m, prediction clamped to [{p['pred_range'][0]:g}, {p['pred_range'][1]:g}], "
                     f"crop {crop}, ground-truth cap {p['gt_cap'] or 'none'}, dataset masks "
                     f"{'yes' if p['use_masks'] else 'no'}, input short side {p['input_short_side'] or 'as is'}.")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def run_suite(model: torch.nn.Module, names: Sequence[str], build: Callable[[str], object],
              protocols: dict[str, EvalProtocol], *, device: torch.device, align: str = "none",
              flip: bool | None = None, amp: str = "none", num_workers: int = 0, progress: bool = True,
              on_error: Callable[[str, str], None] | None = None) -> tuple[list[ZeroShotResult], dict[str, str]]:
    """Evaluates each dataset in turn; one that cannot be built or read is recorded, the rest still run.

    Args:
        build: name -> dataset (raises ``FileNotFoundError``/``UserError`` when missing or broken).
        protocols: name -> protocol.
        on_error: called with (name, message) as soon as a dataset fails.

    Returns:
        The results, and name -> one-line error of the datasets not evaluated.
    """
    results, errors = [], {}
    for name in names:
        try:
            dataset = build(name)
            results.append(evaluate_zeroshot(model, dataset, protocols[name], device=device, align=align, flip=flip,
                                             amp=amp, num_workers=num_workers, progress=progress))
        except (FileNotFoundError, ValueError, RuntimeError, OSError, IndexError, KeyError, TypeError) as err:
            # error_message keeps the original message of an error re-raised by a DataLoader worker
            message = " ".join(error_message(err).split()) or type(err).__name__
            errors[name] = message
            if on_error is not None:
                on_error(name, message)
    return results, errors


def results_json(results: Sequence[ZeroShotResult], errors: dict[str, str], **extra) -> dict:
    """The ``--metrics_json`` payload: per dataset the metrics, counts and protocol; the failures."""
    return {**extra,
            "datasets": {r.dataset: {**r.metrics, "skipped": r.skipped, "protocol": r.protocol} for r in results},
            "errors": dict(errors)}


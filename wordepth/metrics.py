"""Depth evaluation exactly as the original WorDepth release computes it.

The original evaluates one image at a time in numpy: the prediction is pasted
back to the ground truth's size (KITTI KB crop), clamped to the evaluation
range, restricted to ``min < gt < max`` and the Garg/Eigen crop, and nine
metrics are computed on the remaining pixels; the reported numbers are the
mean of the per-image metrics. This module does the same with torch tensors on
any device, vectorised over the batch (valid pixels gathered, summed per
image); sums are float64, the delta ratios stay in the inputs' precision
(float32, like the original).
"""
import logging
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from wordepth.data.facts import NYU_EIGEN_CROP
from wordepth.errors import UserError

logger = logging.getLogger(__name__)

METRIC_NAMES = ('silog', 'abs_rel', 'log10', 'rms', 'sq_rel', 'log_rms', 'd1', 'd2', 'd3')
HIGHER_BETTER = frozenset({'d1', 'd2', 'd3'})  # the delta accuracies; the other six are errors
CROPS = ('garg', 'eigen')



def clamp_prediction(pred: Tensor, min_depth: float, max_depth: float) -> Tensor:
    """Clamp a prediction to the evaluation range, in the original's order.

    Values below ``min_depth`` become ``min_depth``, values above ``max_depth``
    (including +inf) become ``max_depth``, NaN becomes ``min_depth``.

    Args:
        pred: predicted depth, any shape.
        min_depth: minimum evaluation depth.
        max_depth: maximum evaluation depth.

    Returns:
        A new tensor of the same shape and dtype.
    """
    out = pred.clone()
    out[out < min_depth] = min_depth
    out[out > max_depth] = max_depth
    out[torch.isinf(out)] = max_depth  # only +inf is left here; -inf was < min
    out[torch.isnan(out)] = min_depth
    return out


def uncrop_kb(pred: Tensor, full_hw: tuple[int, int]) -> Tensor:
    """Paste a KB-cropped prediction back into zeros of the full image size.

    The crop sits at the bottom, horizontally centred:
    ``top = H - h``, ``left = (W - w) // 2`` (the original's ``int((W - 1216) / 2)``).

    Args:
        pred: prediction of shape ``(..., h, w)``.
        full_hw: ``(H, W)`` of the ground truth, with ``H >= h`` and ``W >= w``.

    Returns:
        Tensor of shape ``(..., H, W)``, zero outside the crop.
    """
    full_h, full_w = int(full_hw[0]), int(full_hw[1])
    h, w = pred.shape[-2:]
    if h > full_h or w > full_w:
        raise ValueError(f"prediction {h}x{w} is larger than the ground truth {full_h}x{full_w}")
    top, left = full_h - h, (full_w - w) // 2
    out = pred.new_zeros((*pred.shape[:-2], full_h, full_w))
    out[..., top:top + h, left:left + w] = pred
    return out


def crop_window(height: int, width: int, crop: str, dataset: str) -> tuple[int, int, int, int]:
    """Rows/cols ``(top, bottom, left, right)`` of an evaluation crop.

    Args:
        height: ground-truth height H.
        width: ground-truth width W.
        crop: ``'garg'`` or ``'eigen'``.
        dataset: ``'nyu'`` or ``'kitti'`` (only used by the Eigen crop).

    Returns:
        Slice bounds; the crop is ``[top:bottom, left:right]``.
    """
    if crop == 'garg':
        return (int(0.40810811 * height), int(0.99189189 * height),
                int(0.03594771 * width), int(0.96405229 * width))
    if crop == 'eigen':
        if dataset == 'kitti':
            return (int(0.3324324 * height), int(0.91351351 * height),
                    int(0.0359477 * width), int(0.96405229 * width))
        if dataset == 'nyu':
            return NYU_EIGEN_CROP
        raise UserError(f"eigen crop is defined for 'nyu' and 'kitti', not {dataset!r}")
    raise UserError(f"unknown crop {crop!r}; expected one of {CROPS} or None")


def eval_mask(gt: Tensor, min_depth: float, max_depth: float, crop: str | None,
              dataset: str) -> Tensor:
    """Pixels that count in the evaluation.

    ``min_depth < gt < max_depth`` (compared in the ground truth's own dtype,
    as the original does), AND-ed with the crop window when ``crop`` is given.
    The original gives Garg precedence when both crop flags are set; callers
    that map two flags to ``crop`` should do the same.

    Args:
        gt: ground truth of shape ``(..., H, W)``.
        min_depth: minimum evaluation depth (exclusive).
        max_depth: maximum evaluation depth (exclusive).
        crop: ``None``, ``'garg'`` or ``'eigen'``.
        dataset: ``'nyu'`` or ``'kitti'``.

    Returns:
        Boolean tensor with the shape of ``gt``.
    """
    valid = (gt > min_depth) & (gt < max_depth)
    if crop is None:
        return valid
    top, bottom, left, right = crop_window(gt.shape[-2], gt.shape[-1], crop, dataset)
    window = torch.zeros(gt.shape[-2:], dtype=torch.bool, device=gt.device)
    window[top:bottom, left:right] = True
    return valid & window


def _masked_errors(gt: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
    """The nine metrics per row over the masked entries.

    Only the masked pixels are gathered (KITTI ground truth is sparse), then
    per-row sums are formed with one ``index_add_``.

    Args:
        gt: ``(B, N)`` ground truth.
        pred: ``(B, N)`` prediction (positive where ``mask``).
        mask: ``(B, N)`` boolean.

    Returns:
        ``(B, 9)`` float64 in ``METRIC_NAMES`` order; NaN rows where a row has
        no masked entry.
    """
    batch = mask.shape[0]
    row = torch.arange(batch, device=mask.device)[:, None].expand_as(mask)[mask]  # (P,) image index
    work = torch.promote_types(torch.promote_types(gt.dtype, pred.dtype), torch.float32)
    gt_v, pred_v = gt[mask].to(work), pred[mask].to(work)  # (P,)

    # The delta ratio stays in the inputs' precision (float32 in the original):
    # a pixel on a threshold can flip between float32 and float64.
    thresh = torch.maximum(gt_v / pred_v, pred_v / gt_v)
    gt_v, pred_v = gt_v.to(torch.float64), pred_v.to(torch.float64)
    diff = gt_v - pred_v
    err = torch.log(pred_v) - torch.log(gt_v)
    terms = torch.stack([
        err,                                                  # silog, first moment
        err ** 2,                                             # silog second moment, log_rms
        diff.abs() / gt_v,                                    # abs_rel
        (torch.log10(gt_v) - torch.log10(pred_v)).abs(),      # log10
        diff ** 2,                                            # rms
        diff ** 2 / gt_v,                                     # sq_rel
        (thresh < 1.25).to(torch.float64),                    # d1
        (thresh < 1.25 ** 2).to(torch.float64),               # d2
        (thresh < 1.25 ** 3).to(torch.float64),               # d3
    ], dim=1)  # (P, 9)
    sums = terms.new_zeros(batch, terms.shape[1]).index_add_(0, row, terms)  # (B, 9)
    n = mask.sum(dim=1).to(torch.float64)[:, None]
    means = sums / n  # 0/0 = NaN for images without a valid pixel
    e1, e2, abs_rel, log10, sq, sq_rel, d1, d2, d3 = means.unbind(dim=1)
    # Clamped at 0 so float rounding cannot turn a zero variance into NaN.
    silog = (e2 - e1 ** 2).clamp_min(0.0).sqrt() * 100
    return torch.stack([silog, abs_rel, log10, sq.sqrt(), sq_rel, e2.sqrt(), d1, d2, d3], dim=1)


def compute_errors(gt: Tensor, pred: Tensor) -> Tensor:
    """The nine metrics on 1-D tensors of valid pixels (the original's compute_errors).

    Args:
        gt: ``(N,)`` ground-truth depths, all valid.
        pred: ``(N,)`` predicted depths, positive.

    Returns:
        ``(9,)`` float64 in ``METRIC_NAMES`` order (all NaN when ``N == 0``).
    """
    if gt.shape != pred.shape or gt.dim() != 1:
        raise ValueError(f"expected two 1-D tensors of equal length, got {tuple(gt.shape)} "
                         f"and {tuple(pred.shape)}")
    mask = torch.ones_like(gt, dtype=torch.bool)
    return _masked_errors(gt[None], pred[None], mask[None])[0]


def _as_bhw(x: Tensor, name: str) -> Tensor:
    """``(B,1,H,W)``, ``(B,H,W)`` or ``(H,W)`` -> ``(B,H,W)``."""
    if x.dim() == 4:
        if x.shape[1] != 1:
            raise ValueError(f"{name} must have one channel, got shape {tuple(x.shape)}")
        return x[:, 0]
    if x.dim() == 3:
        return x
    if x.dim() == 2:
        return x[None]
    raise ValueError(f"{name} must be (B,1,H,W), (B,H,W) or (H,W), got shape {tuple(x.shape)}")


def per_image_metrics(pred: Tensor | Sequence[Tensor], gt: Tensor | Sequence[Tensor], *,
                      min_depth: float, max_depth: float, crop: str | None, dataset: str,
                      kb_crop: bool = False) -> Tensor:
    """The nine metrics for each image of a batch, as the original evaluates them.

    Per image: paste the prediction back to the ground truth's size when
    ``kb_crop``, clamp it to ``[min_depth, max_depth]``, keep the pixels of
    :func:`eval_mask`, compute :func:`compute_errors`.

    Ground truths of different sizes (KITTI) can be given as a list; the
    predictions may then be a batch tensor or a list too. Tensors are processed
    in one vectorised pass.

    Args:
        pred: ``(B,1,h,w)`` or ``(B,h,w)`` predictions, or a list of ``(h,w)``/``(1,h,w)``.
        gt: ``(B,1,H,W)`` or ``(B,H,W)`` ground truths, or a list of them per image.
        min_depth: minimum evaluation depth.
        max_depth: maximum evaluation depth.
        crop: ``None``, ``'garg'`` or ``'eigen'``.
        dataset: ``'nyu'`` or ``'kitti'``.
        kb_crop: predictions are KB crops to paste back (``h <= H``, ``w <= W``).

    Returns:
        ``(B, 9)`` float64 on the predictions' device, ``METRIC_NAMES`` order.
        An image with no valid pixel gets a row of NaN; skip it
        (:class:`MetricAccumulator` does).
    """
    if not isinstance(gt, Tensor):
        if len(pred) != len(gt):
            raise ValueError(f"{len(pred)} predictions for {len(gt)} ground truths")
        rows = [per_image_metrics(p, g, min_depth=min_depth, max_depth=max_depth, crop=crop,
                                  dataset=dataset, kb_crop=kb_crop) for p, g in zip(pred, gt)]
        if not rows:
            return torch.zeros(0, len(METRIC_NAMES), dtype=torch.float64)
        return torch.cat(rows, dim=0)
    if not isinstance(pred, Tensor):
        pred = torch.stack([_as_bhw(p, 'pred')[0] for p in pred])

    pred = _as_bhw(pred, 'pred')
    gt = _as_bhw(gt, 'gt').to(pred.device)
    if pred.shape[0] != gt.shape[0]:
        raise ValueError(f"batch sizes differ: pred {pred.shape[0]}, gt {gt.shape[0]}")
    if kb_crop:
        pred = uncrop_kb(pred, gt.shape[-2:])
    elif pred.shape[-2:] != gt.shape[-2:]:
        raise ValueError(f"prediction size {tuple(pred.shape[-2:])} differs from ground truth "
                         f"{tuple(gt.shape[-2:])}; pass kb_crop=True for KB-cropped predictions")
    # Uncrop before clamping: the zeros outside the crop become min_depth, as in the original.
    pred = clamp_prediction(pred, min_depth, max_depth)
    mask = eval_mask(gt, min_depth, max_depth, crop, dataset)
    batch = gt.shape[0]
    return _masked_errors(gt.reshape(batch, -1), pred.reshape(batch, -1), mask.reshape(batch, -1))


def per_image_medians(pred: Tensor | Sequence[Tensor], gt: Tensor | Sequence[Tensor], *,
                      min_depth: float, max_depth: float, crop: str | None, dataset: str,
                      kb_crop: bool = False) -> Tensor:
    """Medians over each image's evaluated pixels (the pixels, clamping and paste-back of
    :func:`per_image_metrics`): predicted depth, true depth, and predicted / true depth (1 when the scale is
    right, whatever the shape's errors).

    Returns:
        ``(B, 3)`` float64 (numpy's median); NaN for an image without a valid pixel.
    """
    if not isinstance(gt, Tensor):
        out = [per_image_medians(p, g, min_depth=min_depth, max_depth=max_depth, crop=crop, dataset=dataset,
                                 kb_crop=kb_crop) for p, g in zip(pred, gt)]
        return torch.cat(out) if out else torch.zeros(0, 3, dtype=torch.float64)
    if not isinstance(pred, Tensor):
        pred = torch.stack([_as_bhw(p, 'pred')[0] for p in pred])
    pred = _as_bhw(pred, 'pred')
    gt = _as_bhw(gt, 'gt').to(pred.device)
    if kb_crop:
        pred = uncrop_kb(pred, gt.shape[-2:])
    pred = clamp_prediction(pred, min_depth, max_depth)
    mask = eval_mask(gt, min_depth, max_depth, crop, dataset)
    out = []
    for p, g, m in zip(pred, gt, mask):  # per image: the valid pixels differ in number
        p, g = p[m].to(torch.float64), g[m].to(torch.float64)
        if not p.numel():
            out.append(torch.full((3,), float('nan'), dtype=torch.float64, device=p.device))
            continue
        out.append(torch.quantile(torch.stack([p, g, p / g]), 0.5, dim=1))  # (3,)
    return torch.stack(out) if out else torch.zeros(0, 3, dtype=torch.float64)


def per_image_median_ratio(pred: Tensor | Sequence[Tensor], gt: Tensor | Sequence[Tensor], **protocol) -> Tensor:
    """``(B,)`` median predicted / true depth of each image (:func:`per_image_medians`' last column)."""
    return per_image_medians(pred, gt, **protocol)[:, 2]

class MetricAccumulator:
    """Running sum of per-image metrics, mergeable across processes.

    Rows containing NaN (images without a valid pixel) are skipped and counted
    in ``skipped``. For distributed evaluation, ``all_reduce`` (sum) each
    rank's :meth:`state` and rebuild with :meth:`from_state`; the result equals
    a single-process accumulation over all images.

    Args:
        device: where the running sum lives (use the GPU for NCCL all_reduce).
    """

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.sum = torch.zeros(len(METRIC_NAMES), dtype=torch.float64, device=device)
        self.count = 0
        self.skipped = 0

    def update(self, per_image: Tensor) -> None:
        """Add a ``(B, 9)`` block of per-image metrics (or a single ``(9,)`` row)."""
        per_image = per_image.detach().to(device=self.sum.device, dtype=torch.float64)
        if per_image.dim() == 1:
            per_image = per_image[None]
        if per_image.dim() != 2 or per_image.shape[1] != len(METRIC_NAMES):
            raise ValueError(f"expected (B, {len(METRIC_NAMES)}) metrics, got {tuple(per_image.shape)}")
        keep = ~torch.isnan(per_image).any(dim=1)
        n_keep = int(keep.sum())
        self.sum += per_image[keep].sum(dim=0)
        self.count += n_keep
        self.skipped += per_image.shape[0] - n_keep

    def mean(self) -> Tensor:
        """``(9,)`` float64 mean over the images seen (NaN when none)."""
        if self.count == 0:
            return torch.full_like(self.sum, float('nan'))
        return self.sum / self.count

    def state(self) -> Tensor:
        """``(10,)`` float64: the nine sums then the image count, for all_reduce (sum)."""
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.sum.device)
        return torch.cat([self.sum, count])

    @classmethod
    def from_state(cls, state: Tensor) -> 'MetricAccumulator':
        """Rebuild from a (possibly all-reduced) :meth:`state` tensor."""
        if state.shape != (len(METRIC_NAMES) + 1,):
            raise ValueError(f"expected a state of shape ({len(METRIC_NAMES) + 1},), "
                             f"got {tuple(state.shape)}")
        acc = cls(device=state.device)
        acc.sum = state[:-1].detach().to(torch.float64).clone()
        acc.count = int(round(float(state[-1])))
        return acc

    def merge(self, other: 'MetricAccumulator') -> 'MetricAccumulator':
        """Add another accumulator's images to this one; returns self."""
        self.sum += other.sum.to(self.sum.device)
        self.count += other.count
        self.skipped += other.skipped
        return self

    def as_dict(self) -> dict[str, float | int]:
        """``{name: mean, ..., 'count': count}``."""
        out: dict[str, float | int] = {
            name: float(v) for name, v in zip(METRIC_NAMES, self.mean().tolist())}
        out['count'] = self.count
        return out


def format_metrics(values: Tensor | Sequence[float] | Mapping[str, float]) -> str:
    """The original's two-line print: a header of names, then the values.

    Args:
        values: nine numbers in ``METRIC_NAMES`` order, or a mapping by name.

    Returns:
        ``"  silog, abs_rel, ...\\n xx.xxxx,  x.xxxx, ..."``.
    """
    if isinstance(values, Mapping):
        values = [values[name] for name in METRIC_NAMES]
    elif isinstance(values, Tensor):
        values = values.detach().flatten().tolist()
    values = [float(v) for v in values]
    if len(values) != len(METRIC_NAMES):
        raise ValueError(f"expected {len(METRIC_NAMES)} values, got {len(values)}")
    header = ', '.join('{:>7}'.format(name) for name in METRIC_NAMES)
    row = ', '.join('{:7.4f}'.format(v) for v in values)
    return f"{header}\n{row}"

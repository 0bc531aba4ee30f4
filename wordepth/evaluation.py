"""The evaluation loop: the original's protocol (see wordepth.metrics), batched and distributable."""
from __future__ import annotations

import csv
import heapq
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from wordepth.metrics import METRIC_NAMES, MetricAccumulator, per_image_metrics
from wordepth.runtime import autocast

log = logging.getLogger(__name__)


class ShardSampler(Sampler[int]):
    """Indices ``rank::world_size`` in order, without the padding DistributedSampler adds.

    Every image is evaluated exactly once across ranks, so combined metrics equal one process's.
    """

    def __init__(self, length: int, rank: int, world_size: int):
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


SKIP_REASONS = {
    "missing_ground_truth": "without a ground-truth file",
    "no_ground_truth": "listed without ground truth (None)",
    "no_valid_pixels": "without a valid ground-truth pixel in the evaluation range and crop",
}


@dataclass
class EvalResult:
    metrics: dict  # METRIC_NAMES -> mean, plus 'count'
    rows: list = field(default_factory=list)  # per image: {'path': str, <metric>: float}
    skipped: int = 0  # images not evaluated, for any of SKIP_REASONS
    skipped_by_reason: dict = field(default_factory=dict)  # SKIP_REASONS key -> count


def describe_skipped(by_reason: dict) -> str:
    """``'1 without a ground-truth file, 2 without a valid ...'`` (reasons with a count only)."""
    return ", ".join(f"{n} {SKIP_REASONS[k]}" for k, n in by_reason.items() if n)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, *, dataset: str, min_depth: float, max_depth: float,
             crop: str | None, kb_crop: bool, device: torch.device, amp: str = "none",
             per_image: bool = False, save_vis: str | None = None, worst_n: int = 8,
             progress: bool = True) -> EvalResult:
    """Evaluate ``model`` (image branch) on ``loader``; in a process group, the result is combined.

    Args:
        loader: batches from a dataset in eval mode (``collate`` keeps ragged ground truths as lists).
        crop: 'garg', 'eigen' or None. kb_crop: paste KITTI predictions back into the full frame.
        per_image: also return one row of metrics per image (gathered across ranks).
        save_vis: folder for input / gt / prediction / abs-rel error PNGs and a worst-N summary.
    """
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(device=device)
    rows, worst = [], []
    skipped = 0
    no_pixels: list[str] = []  # this process's images without a valid pixel (for the warning)
    distributed = dist.is_available() and dist.is_initialized()
    show = progress and (not distributed or dist.get_rank() == 0)
    for batch in tqdm(loader, desc="eval", disable=not show, leave=False, dynamic_ncols=True):
        image = batch["image"].to(device, non_blocking=True)
        text = batch["text_feature"].to(device, non_blocking=True)
        with autocast(device, amp):
            pred = model(image, text)
        pred = pred.float()
        finite = torch.isfinite(pred).flatten(1).all(1)
        if not bool(finite.all()):
            bad = [batch["path"][i] for i in (~finite).nonzero().flatten().tolist()]
            raise ValueError(f"the prediction for {', '.join(bad)} is not finite (NaN or inf): the checkpoint's "
                             "weights or the image's text feature are broken")
        gts = batch["depth"]
        gts = list(gts) if isinstance(gts, (list, tuple)) else list(gts.unbind(0))
        valid = torch.as_tensor(batch["has_valid_depth"]).bool().tolist()
        keep = [i for i, ok in enumerate(valid) if ok]
        skipped += len(valid) - len(keep)
        if not keep:
            continue
        gt_list = [gts[i].to(device) for i in keep]
        same = len({tuple(g.shape) for g in gt_list}) == 1
        metrics = per_image_metrics(pred[keep], torch.stack(gt_list) if same else gt_list,
                                    min_depth=min_depth, max_depth=max_depth, crop=crop, dataset=dataset,
                                    kb_crop=kb_crop)
        acc.update(metrics)
        no_pixels += [batch["path"][i] for j, i in enumerate(keep) if bool(torch.isnan(metrics[j]).any())]
        if per_image or save_vis:
            for j, i in enumerate(keep):
                row = {"path": batch["path"][i], **{n: float(v) for n, v in zip(METRIC_NAMES, metrics[j].tolist())}}
                rows.append(row)
                if save_vis:
                    _save_vis(save_vis, row, batch["image"][i], gts[i], pred[i].cpu(), kb_crop, max_depth,
                              worst, worst_n)
    if distributed:
        state = acc.state()
        dist.all_reduce(state)
        acc = MetricAccumulator.from_state(state)
        if per_image:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, rows)
            rows = [r for part in gathered for r in part]
        counts = torch.tensor([skipped, len(no_pixels)], device=device)
        dist.all_reduce(counts)
        skipped, n_no_pixels = (int(c) for c in counts.tolist())
    else:
        n_no_pixels = len(no_pixels)
    if save_vis and worst:
        from wordepth.visualize import worst_summary

        records = [rec for _, _, rec in sorted(worst, reverse=True)]
        worst_summary(save_vis, records, n=worst_n)
    if was_training:
        model.train()
    by_reason = {"missing_ground_truth": int(getattr(loader.dataset, "skipped", 0)), "no_ground_truth": skipped,
                 "no_valid_pixels": n_no_pixels}
    split = getattr(loader.dataset, "split_file", "the evaluation split")
    if acc.count == 0:
        if not sum(by_reason.values()):
            raise ValueError(f"nothing to evaluate: {split} has no entries")
        raise ValueError(f"no image of {split} could be evaluated: {describe_skipped(by_reason)}. Check "
                         "--gt_path_eval, the depth units and --min_depth_eval / --max_depth_eval")
    if n_no_pixels:
        log.warning("%d evaluation image(s) have no valid ground-truth pixel in the evaluation range and crop: "
                    "skipped (%s%s)", n_no_pixels, ", ".join(no_pixels[:5]), " ..." if len(no_pixels) > 5 else "")
    return EvalResult(metrics=acc.as_dict(), rows=rows, skipped=sum(by_reason.values()), skipped_by_reason=by_reason)


def _save_vis(out_dir, row, image, gt, pred, kb_crop, max_depth, worst, worst_n):
    from wordepth.visualize import save_eval_visuals

    gt = gt.squeeze()
    pred = pred.squeeze()
    if kb_crop and pred.shape != gt.shape:
        h, w = pred.shape
        H, W = gt.shape
        top, left = H - h, (W - w) // 2
        gt = gt[top:top + h, left:left + w]  # show the region the network saw
    name = Path(row["path"]).with_suffix("").as_posix().strip("/").replace("/", "__")
    save_eval_visuals(out_dir, name, image, gt, pred, max_depth)
    score = row["abs_rel"] if math.isfinite(row["abs_rel"]) else -1.0
    item = (score, len(worst) + len(row["path"]) * 1e-9, (name, score, image, gt, pred))
    if len(worst) < worst_n:
        heapq.heappush(worst, item)
    else:
        heapq.heappushpop(worst, item)


def write_metrics_json(path: str | Path, result: EvalResult, extra: dict | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = dict(result.metrics)
    payload["count"] = int(payload.get("count", 0))
    payload["skipped"] = result.skipped
    payload["skipped_by_reason"] = dict(result.skipped_by_reason)
    if extra:
        payload.update(extra)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def write_per_image_csv(path: str | Path, rows: list[dict]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", *METRIC_NAMES])
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in ["path", *METRIC_NAMES]})

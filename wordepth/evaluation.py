"""The evaluation loop: the original's protocol (see wordepth.metrics), batched and distributable."""
from __future__ import annotations

import csv
import heapq
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from wordepth.build import model_from_checkpoint_obj, run_dataset
from wordepth.caption_ablation import (BOOTSTRAP_DRAWS, CaptionSettings, CaptionSwap, Samples, ablation_results,
                                       ablation_table, caption_features, parse_ablation, parse_caption_mode,
                                       scale_plot_path, write_scale_plot)
from wordepth.checkpoints import inspect_checkpoint, load_training_state
from wordepth.config import RunConfig, saved_run_record
from wordepth.data import collate
from wordepth.data.check import dataset_mismatch
from wordepth.errors import UserError
from wordepth.metrics import (METRIC_NAMES, MetricAccumulator, format_metrics, per_image_medians,
                              per_image_metrics)
from wordepth.outputs import write_atomic, write_atomic_files, write_json
from wordepth.recorded import describe_selection
from wordepth.reproducibility import configure_determinism, provenance
from wordepth.runtime import Runtime, autocast, compile_for_inference, setup_logging, setup_runtime
from wordepth.visualize import save_eval_visuals, worst_summary

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


NONFINITE_POLICIES = ("clamp", "error")  # --nonfinite: the original clamps NaN/inf predictions

SKIP_REASONS = {
    "missing_ground_truth": "without a ground-truth file",
    "no_ground_truth": "listed without ground truth (None)",
    "no_valid_pixels": "without a valid ground-truth pixel in the evaluation range and crop",
}


class NothingEvaluated(UserError):
    """No image of the split could be scored: ``wordepth-eval`` exits non-zero; an online evaluation
    during training logs it and the training goes on (:class:`wordepth.runfolder.RunRecords`)."""


@dataclass
class EvalResult:
    metrics: dict  # METRIC_NAMES -> mean, plus 'count'
    rows: list = field(default_factory=list)  # per image: {'path': str, <metric>: float}
    skipped: int = 0  # images not evaluated, for any of SKIP_REASONS
    skipped_by_reason: dict = field(default_factory=dict)  # SKIP_REASONS key -> count
    nonfinite_pixels: int = 0  # predicted pixels that were NaN or inf (clamped, as the original does)
    nonfinite_images: int = 0  # images with at least one such pixel


def describe_skipped(by_reason: dict) -> str:
    """``'1 without a ground-truth file, 2 without a valid ...'`` (reasons with a count only)."""
    return ", ".join(f"{n} {SKIP_REASONS[k]}" for k, n in by_reason.items() if n)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, *, dataset: str, min_depth: float, max_depth: float,
             crop: str | None, kb_crop: bool, device: torch.device, amp: str = "none",
             per_image: bool = False, save_vis: str | None = None, worst_n: int = 8,
             progress: bool = True, nonfinite: str = "clamp", median_ratio: bool = False) -> EvalResult:
    """Evaluate ``model`` (image branch) on ``loader``; in a process group, the result is combined.

    Args:
        loader: batches from a dataset in eval mode (``collate`` keeps ragged ground truths as lists).
        crop: 'garg', 'eigen' or None. kb_crop: paste KITTI predictions back into the full frame.
        per_image: also return one row of metrics per image (gathered across ranks).
        save_vis: folder for input / gt / prediction / abs-rel error PNGs and a worst-N summary.
        nonfinite: what to do with NaN/inf predicted pixels: ``"clamp"`` (the original: inf to
            ``max_depth``, NaN to ``min_depth``, then a warning with the counts) or ``"error"`` (refuse).
        median_ratio: with ``per_image``, each row also holds ``median_depth``, ``median_gt`` and ``median_ratio``,
            the medians of predicted, true and predicted / true depth (:func:`wordepth.metrics.per_image_medians`).
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise UserError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, not {nonfinite!r}")
    was_training = model.training
    model.eval()
    acc = MetricAccumulator(device=device)
    rows, worst = [], []
    skipped = 0
    bad_counts = torch.zeros(2, dtype=torch.long, device=device)  # non-finite pixels, images (read at the end)
    no_pixels: list[str] = []  # this process's images without a valid pixel (for the warning)
    distributed = dist.is_available() and dist.is_initialized()
    show = progress and (not distributed or dist.get_rank() == 0)
    for batch in tqdm(loader, desc="eval", disable=not show, leave=False, dynamic_ncols=True):
        image = batch["image"].to(device, non_blocking=True)
        text = batch["text_feature"].to(device, non_blocking=True)
        with autocast(device, amp):
            pred = model(image, text)
        pred = pred.float()
        bad_pixels = (~torch.isfinite(pred)).flatten(1).sum(1)  # (B,)
        if nonfinite == "error" and bool(bad_pixels.any()):
            bad = [batch["path"][i] for i in bad_pixels.nonzero().flatten().tolist()]
            raise UserError(f"the prediction for {', '.join(bad)} is not finite (NaN or inf): the checkpoint's "
                             "weights or the image's text feature are broken")
        bad_counts += torch.stack([bad_pixels.sum(), (bad_pixels > 0).sum()])
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
            medians = (per_image_medians(pred[keep], torch.stack(gt_list) if same else gt_list,
                                         min_depth=min_depth, max_depth=max_depth, crop=crop, dataset=dataset,
                                         kb_crop=kb_crop).tolist() if median_ratio else None)
            for j, i in enumerate(keep):
                row = {"path": batch["path"][i], **{n: float(v) for n, v in zip(METRIC_NAMES, metrics[j].tolist())}}
                if medians is not None:
                    row.update(zip(("median_depth", "median_gt", "median_ratio"), medians[j]))
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
        dist.all_reduce(bad_counts)
        skipped, n_no_pixels = (int(c) for c in counts.tolist())
    else:
        n_no_pixels = len(no_pixels)
    if save_vis and worst:
        records = [rec for _, _, rec in sorted(worst, reverse=True)]
        write_atomic_files(save_vis, lambda tmp: [worst_summary(tmp, records, n=worst_n)],
                           what="the --save_vis summary")
    if was_training:
        model.train()
    by_reason = {"missing_ground_truth": int(getattr(loader.dataset, "skipped", 0)), "no_ground_truth": skipped,
                 "no_valid_pixels": n_no_pixels}
    split = getattr(loader.dataset, "split_file", "the evaluation split")
    if acc.count == 0:
        if not sum(by_reason.values()):
            raise NothingEvaluated(f"nothing to evaluate: {split} has no entries")
        raise NothingEvaluated(f"no image of {split} could be evaluated: {describe_skipped(by_reason)}. Check "
                         "--gt_path_eval, the depth units and --min_depth_eval / --max_depth_eval")
    n_bad_pixels, n_bad_images = (int(c) for c in bad_counts.tolist())
    if n_bad_pixels:
        log.warning("%d predicted pixel(s) in %d image(s) were not finite (NaN or inf): clamped as the original "
                    "does (inf to %g m, NaN to %g m) and counted in the metrics; pass --nonfinite error to refuse",
                    n_bad_pixels, n_bad_images, max_depth, min_depth)
    if n_no_pixels:
        log.warning("%d evaluation image(s) have no valid ground-truth pixel in the evaluation range and crop: "
                    "skipped (%s%s)", n_no_pixels, ", ".join(no_pixels[:5]), " ..." if len(no_pixels) > 5 else "")
    return EvalResult(metrics=acc.as_dict(), rows=rows, skipped=sum(by_reason.values()), skipped_by_reason=by_reason,
                      nonfinite_pixels=n_bad_pixels, nonfinite_images=n_bad_images)


def _save_vis(out_dir, row, image, gt, pred, kb_crop, max_depth, worst, worst_n):
    gt = gt.squeeze()
    pred = pred.squeeze()
    if kb_crop and pred.shape != gt.shape:
        h, w = pred.shape
        H, W = gt.shape
        top, left = H - h, (W - w) // 2
        gt = gt[top:top + h, left:left + w]  # show the region the network saw
    name = Path(row["path"]).with_suffix("").as_posix().strip("/").replace("/", "__")
    # the four pictures are rendered aside and renamed into out_dir (a full disk: one error line, no
    # partial PNG); the name has no '/' left, so they stay inside out_dir
    write_atomic_files(out_dir, lambda tmp: save_eval_visuals(tmp, name, image, gt, pred, max_depth),
                       what=f"the --save_vis pictures of {row['path']} in {out_dir}")
    score = row["abs_rel"] if math.isfinite(row["abs_rel"]) else -1.0
    item = (score, len(worst) + len(row["path"]) * 1e-9, (name, score, image, gt, pred))
    if len(worst) < worst_n:
        heapq.heappush(worst, item)
    else:
        heapq.heappushpop(worst, item)


def write_metrics_json(path: str | Path, result: EvalResult, extra: dict | None = None) -> None:
    """The mean metrics, the skipped and non-finite counts and ``extra`` as JSON (atomic write)."""
    payload = dict(result.metrics)
    payload["count"] = int(payload.get("count", 0))
    payload["skipped"] = result.skipped
    payload["skipped_by_reason"] = dict(result.skipped_by_reason)
    payload["nonfinite_pixels"] = result.nonfinite_pixels
    payload["nonfinite_images"] = result.nonfinite_images
    if extra:
        payload.update(extra)
    write_json(path, payload)


def write_per_image_csv(path: str | Path, rows: list[dict]) -> None:
    """One row of the nine metrics per image (atomic write)."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", *METRIC_NAMES])
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row[k] for k in ["path", *METRIC_NAMES]})

    write_atomic(path, write)


# --------------------------------------------------------------------------- the evaluation command
def eval_loader(cfg: RunConfig, rt: Runtime, feature_dim: int | None = None, *, dataset=None,
                captions: dict | None = None) -> DataLoader:
    """The evaluation loader of a run: every image once across the processes, in split order; ``feature_dim``:
    the network's ``text_dim``; ``dataset``: an evaluation set already built; ``captions``: image path -> caption
    feature replacing the stored ones (:mod:`wordepth.caption_ablation`; None: the stored features)."""
    ds = dataset if dataset is not None else eval_dataset(cfg, feature_dim)
    if captions is not None:
        ds = CaptionSwap(ds, captions)
    sampler = ShardSampler(len(ds), rt.rank, rt.world_size)
    return DataLoader(ds, batch_size=cfg.eval.eval_batch_size, sampler=sampler, num_workers=cfg.data.num_threads,
                      collate_fn=collate, pin_memory=rt.device.type == "cuda")


def eval_dataset(cfg: RunConfig, feature_dim: int | None = None):
    """The evaluation split of a run (all its images; a warning for those without ground truth)."""
    ds = run_dataset(cfg, "eval", feature_dim)
    if getattr(ds, "skipped", 0):
        log.warning("%d evaluation samples skipped: ground truth missing (see warnings above)", ds.skipped)
    return ds


def run_evaluation(model: torch.nn.Module, loader: DataLoader, cfg: RunConfig, rt: Runtime,
                   per_image: bool = False, save_vis: str | None = None, median_ratio: bool = False) -> EvalResult:
    """:func:`evaluate` with the run's protocol (crop, depth range), precision and non-finite policy."""
    p = cfg.protocol
    return evaluate(model, loader, dataset=p.dataset, min_depth=p.min_depth, max_depth=p.max_depth, crop=p.crop,
                    kb_crop=p.full_frame, device=rt.device, amp=cfg.run.amp, per_image=per_image, save_vis=save_vis,
                    progress=not cfg.run.no_tqdm, nonfinite=cfg.eval.nonfinite, median_ratio=median_ratio)


def eval_main(cfg: RunConfig) -> dict:
    """Evaluate ``--checkpoint_path``; print the 9 metrics, write JSON/CSV/pictures if asked.

    A checkpoint that records no settings (a run's best-per-metric file, in the original layout) takes
    the network's from its run's ``config.json`` (:func:`wordepth.config.saved_run_record`).
    """
    rt = setup_runtime(cfg.run.device)
    setup_logging(rt)
    if not cfg.run.deterministic:
        configure_determinism(False)  # the original's cudnn.benchmark = True (wordepth.reproducibility)
    path, ev = cfg.run.checkpoint_path, cfg.eval
    if not path:
        raise UserError("--checkpoint_path is required for evaluation")
    obj = load_training_state(path, mmap=True)  # the weights are copied into the network
    # a file that records no network settings (the original layout): its run's config.json, if any
    saved = saved_run_record(path) if inspect_checkpoint(obj) == "original" else None
    model = model_from_checkpoint_obj(obj, cfg, path, saved=saved)
    selection = obj.get("selection") if isinstance(obj, dict) else None  # how a run chose it (wordepth.recorded)
    del obj
    net_cfg = getattr(model, "cfg", None)  # a WorDepth's settings (a stand-in network may have none)
    mismatch = dataset_mismatch(net_cfg.to_dict(), cfg.data.dataset) if net_cfg is not None else None
    if mismatch:
        log.warning("%s: %s", path, mismatch)
    model.to(rt.device).eval()
    if cfg.run.compile:
        model = compile_for_inference(model)
    text_dim = net_cfg.text_dim if net_cfg is not None else None
    settings = CaptionSettings(dataset=cfg.data.dataset, seed=cfg.run.seed, text_dim=text_dim,
                               clip_model=net_cfg.clip_model if net_cfg is not None else "RN50",
                               clip_weights=ev.clip_weights, text_dir=ev.text_dir, mean_features=ev.mean_features,
                               device=str(rt.device))
    if ev.caption_ablation:
        return caption_ablation_main(model, cfg, rt, settings, selection, str(path))
    mode = parse_caption_mode(ev.captions)
    dataset = eval_dataset(cfg, text_dim)
    captions = caption_features(mode, dataset, settings)  # None for 'dataset': the stored features
    loader = eval_loader(cfg, rt, text_dim, dataset=dataset, captions=captions)
    result = run_evaluation(model, loader, cfg, rt, per_image=bool(ev.per_image_csv), save_vis=ev.save_vis)
    if rt.is_main:
        skipped = (f" ({result.skipped} skipped: {describe_skipped(result.skipped_by_reason)})"
                   if result.skipped else "")
        print(f"Computing errors for {result.metrics['count']} eval samples{skipped}")
        print(format_metrics([result.metrics[n] for n in METRIC_NAMES]))
        print(describe_selection({"selection": selection}))
        if mode.kind != "dataset":
            print(f"captions: {mode.name} (docs/evaluation.md, 'Caption ablations')")
        if ev.metrics_json:
            extra = {"checkpoint": str(path), "protocol": cfg.protocol.record(), "checkpoint_selection": selection,
                     "captions": mode.name,
                     "provenance": provenance(cfg.options(), selection="the checkpoint given (--checkpoint_path)")}
            write_metrics_json(ev.metrics_json, result, extra)
        if ev.per_image_csv:
            write_per_image_csv(ev.per_image_csv, result.rows)
    return result.metrics


def caption_ablation_main(model: torch.nn.Module, cfg: RunConfig, rt: Runtime, settings: CaptionSettings,
                          selection, checkpoint: str) -> dict:
    """``--caption_ablation``: the evaluation under each caption mode, the network and the images loaded once.

    Prints the nine metrics and the median pred/gt ratio per mode, and the change from ``dataset`` with a paired
    bootstrap 95% interval over images (draws from ``--seed``); ``--metrics_json`` holds them under
    ``caption_ablation.<mode>``. Returns that mapping.
    """
    ev = cfg.eval
    modes = parse_ablation(ev.caption_ablation)
    dataset = eval_dataset(cfg, settings.text_dim)
    features = {m.name: caption_features(m, dataset, settings) for m in modes}  # every mode checked before a forward
    shard = ShardSampler(len(dataset), rt.rank, rt.world_size)
    reader = DataLoader(dataset, batch_size=None, sampler=shard, num_workers=cfg.data.num_threads)
    # this process's images, read once for every mode (copied out of the workers' shared memory, which would
    # otherwise hold one open file per tensor)
    samples = Samples(dataset, [{k: v.clone() if torch.is_tensor(v) else v for k, v in sample.items()}
                                for sample in tqdm(reader, desc="read", disable=cfg.run.no_tqdm or not rt.is_main,
                                                   leave=False)])
    metrics_of: dict[str, dict] = {}
    rows_of: dict[str, list] = {}
    for mode in modes:
        ds = samples if features[mode.name] is None else CaptionSwap(samples, features[mode.name])
        loader = DataLoader(ds, batch_size=ev.eval_batch_size, collate_fn=collate, num_workers=0)
        result = run_evaluation(model, loader, cfg, rt, per_image=True, median_ratio=True)
        rows_of[mode.name], metrics_of[mode.name] = result.rows, result.metrics
    results = ablation_results(rows_of, cfg.run.seed, metrics_of)  # the medians, the change from dataset
    if rt.is_main:
        print(f"Caption ablation on {results['dataset']['count']} eval samples "
              f"({len(modes)} modes; docs/evaluation.md, 'Caption ablations')")
        print(ablation_table(results))
        print(describe_selection({"selection": selection}))
        if ev.metrics_json:
            payload = {"caption_ablation": results,
                       "bootstrap": {"draws": BOOTSTRAP_DRAWS, "seed": cfg.run.seed, "interval": 0.95,
                                     "paired_over": "images"},
                       "checkpoint": checkpoint, "protocol": cfg.protocol.record(), "checkpoint_selection": selection,
                       "provenance": provenance(cfg.options(), selection="the checkpoint given (--checkpoint_path)")}
            write_json(ev.metrics_json, payload)
            truth = torch.tensor([r["median_gt"] for r in rows_of["dataset"]], dtype=torch.float64)
            plot = scale_plot_path(ev.metrics_json)
            write_atomic(plot, lambda tmp: write_scale_plot(tmp, results, float(torch.nanquantile(truth, 0.5))),
                         what="the scale-sensitivity plot")
            print(f"scale-sensitivity plot: {plot}")
    return results

"""The training loop and the evaluation entry.

:class:`Trainer` sets a run up top to bottom from the pieces of :mod:`wordepth.build` (network,
optimizer, data) on the device and process group of :mod:`wordepth.runtime`, then runs the
original's alternating training loop with online evaluation and checkpoints. :func:`eval_main`
evaluates a checkpoint.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from wordepth.build import (build_dataset_from_args, build_optimizer, eval_loader, learning_rate,
                            model_from_checkpoint_obj, new_model, steps_per_epoch, train_sampler)
from wordepth.checkpoints import (FORMAT, FORMAT_VERSION, NUMPY_SAFE_GLOBALS, CheckpointError, atomic_save,
                                  inspect_checkpoint, safe_load, save_original_checkpoint)
from wordepth.cli.options import USER_ERRORS, error_message
from wordepth.config import eval_crop, eval_protocol, kitti_full_frame, preset_of
from wordepth.evaluation import (EvalResult, describe_skipped, evaluate, write_metrics_json,
                                 write_per_image_csv)
from wordepth.losses import MIN_TRAIN_DEPTH, valid_depth_mask
from wordepth.metrics import HIGHER_BETTER, METRIC_NAMES, format_metrics
from wordepth.runfolder import claim_run_folder
from wordepth.variants import variant_of
from wordepth.runtime import (Runtime, autocast, compile_for_inference, git_commit, rng_state, seed_everything,
                              set_rng_state, setup_logging, setup_runtime)

log = logging.getLogger("wordepth")


def run_evaluation(model: torch.nn.Module, loader: DataLoader, args: argparse.Namespace, rt: Runtime,
                   per_image: bool = False, save_vis: str | None = None) -> EvalResult:
    return evaluate(model, loader, dataset=args.dataset, min_depth=args.min_depth_eval,
                    max_depth=args.max_depth_eval, crop=eval_crop(args),
                    kb_crop=kitti_full_frame(args), device=rt.device, amp=args.amp,
                    per_image=per_image, save_vis=save_vis, progress=not args.no_tqdm)


# --------------------------------------------------------------------------- writing files
class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (disk full, no permission); the previous file is kept."""


def _write_reason(err: BaseException) -> str:
    """The OS's reason for a failed write, from the error or the errors it was raised from."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    text = str(err)
    if "No space left on device" in text:
        return "No space left on device"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    return first[:200]


def _disk_hint(folder: Path) -> str:
    """`` (disk full: N MiB free)`` when the folder's file system is (nearly) full, else empty."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" (disk full? {free / 2**20:.0f} MiB free on {folder})" if free < 100 * 2**20 else ""


def write_checkpoint(path: Path, save: Callable[[Path], None]) -> None:
    """``save(path)``, an atomic checkpoint write (:func:`wordepth.checkpoints.atomic_save`), with any
    failure in one line.

    Raises:
        CheckpointWriteError: ``could not write PATH: <reason>; the previous file is kept``.
    """
    try:
        save(path)
    except CheckpointError as err:  # atomic_save's own message for an OSError
        raise CheckpointWriteError(str(err)) from None
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
        reason = _write_reason(err)
        hint = "" if reason == "No space left on device" else _disk_hint(Path(path).parent)
        raise CheckpointWriteError(f"could not write {path}: {reason}{hint}; the previous file is kept") from None


def write_output(path: str, write: Callable[[str], None]) -> None:
    """``write(path)`` of an evaluation output; an OS error becomes a one-line ValueError."""
    try:
        write(path)
    except OSError as err:
        raise ValueError(f"could not write {path}: {err.strerror or err}") from None


# --------------------------------------------------------------------------- evaluation entry
def eval_main(args: argparse.Namespace) -> dict:
    """Evaluate ``--checkpoint_path``; print the 9 metrics, write JSON/CSV/pictures if asked."""
    rt = setup_runtime(args.device)
    setup_logging(rt)
    if not args.checkpoint_path:
        raise SystemExit("error: --checkpoint_path is required for evaluation")
    obj = safe_load(args.checkpoint_path, mmap=True)  # the weights are copied into the network
    model = model_from_checkpoint_obj(obj, args, args.checkpoint_path)
    del obj
    model.to(rt.device).eval()
    if args.compile:
        model = compile_for_inference(model)
    loader = eval_loader(args, rt)
    result = run_evaluation(model, loader, args, rt, per_image=bool(args.per_image_csv), save_vis=args.save_vis)
    if rt.is_main:
        skipped = (f" ({result.skipped} skipped: {describe_skipped(result.skipped_by_reason)})"
                   if result.skipped else "")
        print(f"Computing errors for {result.metrics['count']} eval samples{skipped}")
        print(format_metrics([result.metrics[n] for n in METRIC_NAMES]))
        if args.metrics_json:
            extra = {"checkpoint": str(args.checkpoint_path), "protocol": eval_protocol(args)}
            write_output(args.metrics_json, lambda p: write_metrics_json(p, result, extra))
        if args.per_image_csv:
            write_output(args.per_image_csv, lambda p: write_per_image_csv(p, result.rows))
    return result.metrics


# --------------------------------------------------------------------------- training
class StopRequested(Exception):
    pass


def saved_step(path: Path) -> int | None:
    """``global_step`` of an existing checkpoint file (memory-mapped: cheap even for Swin-L), or None."""
    if not path.is_file():
        return None
    for mmap in (True, False):
        try:
            with torch.serialization.safe_globals(NUMPY_SAFE_GLOBALS):
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            return int(obj["global_step"])
        except Exception:  # not a zip archive (no mmap), unreadable, no step: try again / unknown
            continue
    return None


class Trainer:
    """The alternating training loop (one object so that signal handlers and saving share state).

    ``Trainer(args)`` sets the run up in this order: runtime (device, process group), the run folder
    (locked, and refused if it holds another run: :mod:`wordepth.runfolder`), logging, seeds, the
    network (new, or from ``--checkpoint_path``), the optimizer, resume state, the wrapped network
    (compile, DDP), the data, the step counts, the online-evaluation data and the run's records.
    """

    def __init__(self, args: argparse.Namespace):
        self.args = args
        # ---- runtime, and the run folder, claimed before anything is written there
        self.rt = rt = setup_runtime(args.device)
        self.run_dir = Path(args.log_directory) / args.model_name
        self.lock = (claim_run_folder(self.run_dir, args.checkpoint_path, args.retrain, args.overwrite,
                                      args.log_directory) if rt.is_main else None)
        self.writer = None
        try:
            self._setup()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Close TensorBoard and release the run folder (the end of the run, or a failed start)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.lock is not None:
            self.lock.release()

    def _setup(self) -> None:
        args, rt = self.args, self.rt
        setup_logging(rt, self.run_dir)
        if self.lock is not None and self.lock.taken_over:
            log.warning("%s", self.lock.taken_over)
        # the step of the run's last.pth on disk: a crash or a signal never replaces it by an earlier one
        self.saved_step = saved_step(self.run_dir / "last.pth") if rt.is_main else None
        seed_everything(args.seed)
        self.branch_gen = torch.Generator().manual_seed(args.seed + 1)  # same on every rank

        # ---- progress (restored below when resuming)
        self.global_step = self.epoch = self.step_in_epoch = 0
        # the original's starting values: a metric must beat 1e3 (lower is better) or 0 to be saved
        self.best = {n: (0.0 if n in HIGHER_BETTER else 1e3) for n in METRIC_NAMES}
        self.best_steps = {n: 0 for n in METRIC_NAMES}
        self.branch_counts = {"text": 0, "image": 0}
        self.stop_signal: int | None = None
        self.skip_next_eval = False
        self.depth_seen = False  # a batch of this run had a valid depth pixel
        self.last_batch_had_depth = True

        # ---- network, optimizer, resume
        checkpoint = safe_load(args.checkpoint_path) if args.checkpoint_path else None
        if checkpoint is None:
            self.model = new_model(args)
        else:
            self.model = model_from_checkpoint_obj(checkpoint, args, args.checkpoint_path)
            log.info("loaded weights from %s (%s layout)", args.checkpoint_path, inspect_checkpoint(checkpoint))
        self.cfg = self.model.cfg
        self.model.to(rt.device)
        if args.grad_checkpoint:
            self.model.backbone.set_grad_checkpointing(True)
        self.optimizer = build_optimizer(self.model, args)
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=args.amp == "fp16")
        if checkpoint is not None and not args.retrain:
            if inspect_checkpoint(checkpoint) == "wordepth" and "optimizer" in checkpoint:
                self._restore(checkpoint)
            elif inspect_checkpoint(checkpoint) == "original":
                # the original resumes at the start of the epoch of its global_step, and does not
                # evaluate at the first step after loading
                self.global_step = int(checkpoint.get("global_step", 0))
                self.skip_next_eval = True
        net: torch.nn.Module = self.model
        if args.compile:
            net = torch.compile(net)
        if rt.distributed:
            net = DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                                          find_unused_parameters=True)
        self.net = net  # forward through this one: gradients are synchronised

        # ---- data and step counts (the original keeps each epoch's last partial batch)
        from wordepth.data import collate

        self.train_set = build_dataset_from_args(args, "train")
        if len(self.train_set) == 0:
            raise ValueError(f"the training split {args.filenames_file} has no entries")
        self.sampler = train_sampler(self.train_set, args, rt)
        self.loader_kw = dict(batch_size=args.batch_size, num_workers=args.num_threads, collate_fn=collate,
                              pin_memory=rt.device.type == "cuda", drop_last=False, persistent_workers=False)
        self.steps_per_epoch = steps_per_epoch(len(self.train_set), args.batch_size, rt.world_size)
        self.total_steps = args.num_epochs * self.steps_per_epoch
        if args.max_steps is not None:
            self.total_steps = min(self.total_steps, args.max_steps)
        if self.skip_next_eval:
            self.epoch = self.global_step // self.steps_per_epoch
        self.eval_loader = eval_loader(args, rt) if (args.do_online_eval or args.eval_before_train) else None

        # ---- the run's records: TensorBoard, the resolved configuration
        if rt.is_main:
            self._open_run_folder()

    def _open_run_folder(self) -> None:
        from tensorboardX import SummaryWriter

        args, rt = self.args, self.rt
        summary = (Path(args.eval_summary_directory) / args.model_name if args.eval_summary_directory
                   else self.run_dir / "summary")
        self.writer = SummaryWriter(str(summary), flush_secs=30)
        resolved = {k: v for k, v in vars(args).items()}
        resolved["preset"] = preset_of(self.cfg.backbone)  # what was built (a checkpoint's, not --preset's)
        resolved["model_config"] = self.cfg.to_dict()
        resolved["git_commit"] = git_commit()
        resolved["world_size"] = rt.world_size
        resolved["steps_per_epoch"], resolved["total_steps"] = self.steps_per_epoch, self.total_steps
        (self.run_dir / "config.json").write_text(json.dumps(resolved, indent=2, default=str) + "\n")
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info("WorDepth (%s, %s) with %.1fM parameters on %s x%d; %d steps (%d per epoch)",
                 preset_of(self.cfg.backbone), "legacy" if self.cfg.legacy else "current", n_params / 1e6,
                 rt.device, rt.world_size, self.total_steps, self.steps_per_epoch)

    def _restore(self, obj: dict) -> None:
        self.optimizer.load_state_dict(obj["optimizer"])
        self.global_step = int(obj["global_step"])
        self.epoch = int(obj["epoch"])
        self.step_in_epoch = int(obj.get("step_in_epoch", 0))
        self.best = {k: float(v) for k, v in obj.get("best", self.best).items()}
        self.best_steps = {k: int(v) for k, v in obj.get("best_steps", self.best_steps).items()}
        self.branch_counts = {k: int(v) for k, v in obj.get("branch_counts", self.branch_counts).items()}
        if "scaler" in obj and obj["scaler"]:
            self.scaler.load_state_dict(obj["scaler"])
        if "rng" in obj:
            set_rng_state(obj["rng"], self.branch_gen)
        log.info("resuming at step %d (epoch %d, step %d of it)", self.global_step, self.epoch, self.step_in_epoch)

    # ---- checkpoints
    def checkpoint_state(self) -> dict:
        """Model, optimizer, progress, best metrics, RNG states and the config, as plain data."""
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "config": {"model": self.cfg.to_dict(), "variant": variant_of(self.cfg),
                       "args": {k: v for k, v in vars(self.args).items()
                                if isinstance(v, (str, int, float, bool, type(None)))}},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "global_step": self.global_step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "best": dict(self.best), "best_steps": dict(self.best_steps),
            "branch_counts": dict(self.branch_counts),
            "rng": rng_state(self.branch_gen),
        }

    def save_last(self) -> Path | None:
        """Write ``run_dir/last.pth`` (rank 0).

        Raises:
            CheckpointWriteError: the write failed (one line); the previous file is kept.
        """
        if not self.rt.is_main:
            return None
        path = self.run_dir / "last.pth"
        write_checkpoint(path, lambda p: atomic_save(self.checkpoint_state(), p))
        self.saved_step = self.global_step
        log.info("saved %s (step %d)", path, self.global_step)
        return path

    def save_last_if_newer(self, why: str) -> None:
        """The save of a crash or a signal: never over a checkpoint of the same or a later step, and
        never an untrained one."""
        if not self.rt.is_main:
            return
        floor = self.saved_step if self.saved_step is not None else 0
        if self.global_step <= floor:
            if self.saved_step is not None:
                log.warning("%s: %s (step %d) is kept; this run is at step %d", why, self.run_dir / "last.pth",
                            self.saved_step, self.global_step)
            return
        log.info("%s: saving a last checkpoint (step %d)", why, self.global_step)
        self.save_last()

    # ---- signals
    def _on_signal(self, signum, frame) -> None:
        log.warning("received %s: saving a last checkpoint at the end of this step", signal.Signals(signum).name)
        self.stop_signal = signum

    def _stop_requested(self) -> bool:
        """A signal on any rank stops every rank at the same step (no rank left waiting in a collective)."""
        stop = self.stop_signal is not None
        if self.rt.distributed:
            flag = torch.tensor([float(stop)], device=self.rt.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    # ---- the loop
    def _batches(self, epoch: int, skip_batches: int = 0):
        """This epoch's loader; resuming mid-epoch drops the batches already done (same order)."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            sampler = self.sampler
        else:
            g = torch.Generator().manual_seed(self.args.seed * 1000003 + epoch)
            sampler = RandomSampler(self.train_set, generator=g)
        if skip_batches:
            sampler = list(sampler)[skip_batches * self.args.batch_size:]
            if not sampler:
                return []
        self.train_set.set_epoch(epoch)
        # its own generator: creating the iterator must not consume the global RNG (exact resume)
        loader_gen = torch.Generator().manual_seed(self.args.seed * 7919 + epoch)
        loader = DataLoader(self.train_set, sampler=sampler, generator=loader_gen, **self.loader_kw)
        return loader

    def train(self) -> dict:
        args = self.args
        handlers = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                handlers[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        last_eval = None
        try:
            if args.eval_before_train and self.eval_loader is not None:
                last_eval = self.online_eval(self.global_step, track_best=False)
            last_eval = self._loop() or last_eval
        except StopRequested:
            name = signal.Signals(self.stop_signal).name
            log.warning("stopped by %s at step %d; resume with --checkpoint_path %s", name, self.global_step,
                        self.run_dir / "last.pth")
        except (SystemExit, CheckpointWriteError):  # too many bad steps, a failed write: the last checkpoint stays
            raise
        except BaseException as err:
            if isinstance(err, (CheckpointError, *USER_ERRORS)):  # one line: the user can fix it
                log.error("training stopped by an error at step %d: %s", self.global_step, error_message(err))
            else:
                log.exception("training stopped by an error at step %d", self.global_step)
            try:
                self.save_last_if_newer("training stopped by an error")
            except CheckpointWriteError as save_err:  # keep the original error
                log.error("%s", save_err)
            except Exception:
                log.exception("could not save the last checkpoint")
            raise
        finally:
            skipped = getattr(self.train_set, "skipped", 0)
            if skipped:
                log.warning("%d training samples were skipped as unreadable (see the warnings above)", skipped)
            for sig, h in handlers.items():
                signal.signal(sig, h)
            self.release()
        return {"global_step": self.global_step, "branch_counts": dict(self.branch_counts),
                "eval": last_eval, "signal": self.stop_signal}

    def _loop(self) -> dict | None:
        args, rt = self.args, self.rt
        bar = tqdm(total=self.total_steps, initial=self.global_step, desc="train", dynamic_ncols=True,
                   disable=not rt.is_main or args.no_tqdm)
        nonfinite = no_depth = steps_run = 0
        last_eval = None
        t0 = time.time()
        while self.global_step < self.total_steps and self.epoch < args.num_epochs:
            for batch in self._batches(self.epoch, skip_batches=self.step_in_epoch):
                if self.global_step >= self.total_steps:
                    break
                stats = self.train_step(batch)
                step = self.global_step  # the original's (pre-increment) global_step of this update
                self.global_step += 1
                self.step_in_epoch += 1
                steps_run += 1
                bar.update(1)
                no_depth = 0 if self.last_batch_had_depth else no_depth + 1
                if no_depth >= args.max_no_depth_steps:
                    raise SystemExit(f"error: {no_depth} consecutive training batches without a valid depth pixel "
                                     f"({_depth_range(self.cfg)}); last batch: {', '.join(batch['path'])}. The "
                                     "ground truth is empty, in other units or beyond --max_depth: check it with "
                                     "--check_data")
                if stats is None:
                    nonfinite += 1
                    if nonfinite >= args.max_nonfinite_steps:
                        paths = ", ".join(batch["path"])
                        raise SystemExit(f"error: {nonfinite} consecutive steps with a non-finite loss or gradient; "
                                         f"last batch: {paths}. The last good checkpoint is kept.")
                    continue
                nonfinite = 0
                if rt.is_main and (self.global_step % args.log_freq == 0 or self.global_step == 1):
                    self._log_step(stats, bar, t0)
                if rt.is_main and self.global_step % args.save_freq == 0:
                    self.save_last()
                if self._eval_due(step):
                    last_eval = self.online_eval(step)
                self.skip_next_eval = False
                if self._stop_requested():
                    self.save_last_if_newer(f"received {signal.Signals(self.stop_signal or signal.SIGTERM).name}")
                    raise StopRequested
            else:
                self.epoch += 1
                self.step_in_epoch = 0
                continue
            break
        bar.close()
        if steps_run and not self.depth_seen:
            raise SystemExit(f"error: no training batch of this run had a valid depth pixel "
                             f"({_depth_range(self.cfg)}); the ground truth is empty, in other units or beyond "
                             "--max_depth: check it with --check_data. No checkpoint was saved.")
        self.save_last()
        if args.final_eval and args.do_online_eval and self.eval_loader is not None and (
                last_eval is None or last_eval.get("step") != self.global_step - 1):
            last_eval = self.online_eval(self.global_step - 1)
        return last_eval

    def _eval_due(self, step: int) -> bool:
        """The original evaluates when its pre-increment step is a positive multiple of eval_freq,
        i.e. after updates eval_freq + 1, 2 eval_freq + 1, ... (not right after loading its checkpoint)."""
        return (self.args.do_online_eval and self.eval_loader is not None and step > 0
                and step % self.args.eval_freq == 0 and not self.skip_next_eval)

    def train_step(self, batch: dict) -> dict | None:
        """One optimisation step; None when the loss or gradient was non-finite (step skipped)."""
        args, rt = self.args, self.rt
        branch = self.model.choose_branch(self.branch_gen)
        self.branch_counts[branch] += 1
        lr = learning_rate(self.global_step, self.total_steps, args)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        image = batch["image"].to(rt.device, non_blocking=True)
        depth = batch["depth"].to(rt.device, non_blocking=True)
        text = batch["text_feature"].to(rt.device, non_blocking=True)
        has_depth = valid_depth_mask(depth, self.cfg.max_depth).any().float()
        if rt.distributed:  # the same answer on every rank
            dist.all_reduce(has_depth, op=dist.ReduceOp.MAX)
        self.last_batch_had_depth = bool(has_depth)
        if self.last_batch_had_depth:
            self.depth_seen = True
        else:
            log.warning("step %d: no valid depth pixel (%s) in the batch %s: only the KL term trains",
                        self.global_step, _depth_range(self.cfg), ", ".join(batch["path"]))
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(rt.device, args.amp):
            out = self._forward(image, text, depth, branch)
        loss = out["loss"].float()
        finite = torch.isfinite(loss)
        if rt.distributed:
            flag = finite.float().to(rt.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = flag > 0
        if not bool(finite):
            log.warning("step %d: non-finite loss (%s branch) on %s; step skipped", self.global_step, branch,
                        ", ".join(batch["path"]))
            return None
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        if not torch.isfinite(grad_norm):
            if self.scaler.is_enabled():
                self.scaler.update()  # fp16: lower the scale, as GradScaler does
            log.warning("step %d: non-finite gradient (%s branch) on %s; step skipped", self.global_step, branch,
                        ", ".join(batch["path"]))
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"loss": loss.item(), "silog": out["silog"].item(), "kl": out["kl"].item(), "branch": branch,
                "lr": lr, "grad_norm": float(grad_norm), "image": batch["image"][:1], "depth_gt": depth[:1],
                "depth": out["depth"][:1].detach().float(), "text": text[:1]}

    def _forward(self, image, text, depth, branch):
        """Through the (possibly DDP / compiled) wrapper so that gradients are synchronised."""
        return self.net(image, text, depth_gt=depth, branch=branch)

    def _log_step(self, stats: dict, bar, t0: float) -> None:
        w = self.writer
        step = self.global_step
        log.info("epoch %d step %d/%d loss %.4f (silog %.4f, kl %.3f, %s branch) lr %.2e",
                 self.epoch, step, self.total_steps, stats["loss"], stats["silog"], stats["kl"], stats["branch"],
                 stats["lr"])
        bar.set_postfix(loss=f"{stats['loss']:.3f}", branch=stats["branch"])
        w.add_scalar("train/loss", stats["loss"], step)
        w.add_scalar("train/silog", stats["silog"], step)
        w.add_scalar(f"train/kl_{stats['branch']}", stats["kl"], step)
        w.add_scalar("train/branch_is_text", float(stats["branch"] == "text"), step)
        w.add_scalar("train/learning_rate", stats["lr"], step)
        w.add_scalar("train/grad_norm", stats["grad_norm"], step)
        self._log_images("train", stats["image"], stats["depth_gt"], stats["depth"], stats["text"])

    @torch.no_grad()
    def _log_images(self, tag: str, image, gt, pred, text) -> None:
        from wordepth.visualize import abs_rel_error_map, colorize, denormalize

        w, step = self.writer, self.global_step
        vmax = float(self.cfg.max_depth)
        w.add_image(f"{tag}/input", denormalize(image[0].cpu()), step, dataformats="HWC")
        w.add_image(f"{tag}/depth_pred", colorize(pred[0, 0].cpu().numpy(), 0, vmax), step, dataformats="HWC")
        gt2 = gt[0, 0].cpu()
        w.add_image(f"{tag}/depth_gt", colorize(gt2.numpy(), 0, vmax), step, dataformats="HWC")
        if gt2.shape == pred[0, 0].shape:
            w.add_image(f"{tag}/abs_rel_error", abs_rel_error_map(pred[0, 0].cpu().numpy(), gt2.numpy()), step,
                        dataformats="HWC")
        was = self.model.training
        self.model.eval()
        g = torch.Generator(device="cpu").manual_seed(0)
        h, w_ = image.shape[-2:]
        if self.cfg.legacy:
            prior = self.model.prior_depth(text.to(self.rt.device), (h, w_), image=image.to(self.rt.device))
        else:
            eps_shape = (1, self.cfg.latent_dim, *self.model.latent_grid((h, w_)))
            eps = torch.randn(eps_shape, generator=g).to(self.rt.device)
            prior = self.model.prior_depth(text.to(self.rt.device), (h, w_), eps=eps)
        self.model.train(was)
        self.writer.add_image(f"{tag}/prior_depth_from_text", colorize(prior[0, 0].float().cpu().numpy(), 0, vmax),
                              step, dataformats="HWC")

    def online_eval(self, step: int, track_best: bool = True) -> dict:
        """Evaluate; with ``track_best``, keep a best-per-metric checkpoint named after ``step`` (the
        original's pre-increment global_step, also stored in the file as its ``global_step``)."""
        args, rt = self.args, self.rt
        result = run_evaluation(self.model, self.eval_loader, args, rt)
        m = result.metrics
        if rt.is_main:
            log.info("step %d (%d updates), %d images:\n%s", step, self.global_step, m["count"],
                     format_metrics([m[n] for n in METRIC_NAMES]))
            for n in METRIC_NAMES:
                self.writer.add_scalar(f"eval/{n}", m[n], step)
                better = m[n] > self.best[n] if n in HIGHER_BETTER else m[n] < self.best[n]
                if track_best and better:
                    old = self.run_dir / f"model-{self.best_steps[n]}-best_{n}_{self.best[n]:.5f}"
                    self.best[n], self.best_steps[n] = m[n], step
                    new = self.run_dir / f"model-{step}-best_{n}_{m[n]:.5f}"
                    self._save_best(new, step)
                    if old.exists() and old != new:
                        old.unlink()
            payload = {**m, "step": step, "updates": self.global_step, "protocol": eval_protocol(args)}
            (self.run_dir / "metrics.json").write_text(json.dumps(payload, indent=2) + "\n")
        return {**m, "step": step}

    def _save_best(self, path: Path, step: int) -> None:
        """Best-per-metric checkpoints in the original release's layout (loadable by the original code)."""
        lower = torch.tensor([self.best[n] for n in METRIC_NAMES[:6]])
        higher = torch.tensor([self.best[n] for n in METRIC_NAMES[6:]])
        steps = np.array([self.best_steps[n] for n in METRIC_NAMES], dtype=np.int32)
        write_checkpoint(path, lambda p: save_original_checkpoint(self.model, p, step, higher, lower, steps))


def _depth_range(cfg) -> str:
    """The depth range the training loss uses, for messages."""
    return f"{MIN_TRAIN_DEPTH:g} < depth < max_depth {cfg.max_depth:g} m"


def train_main(args: argparse.Namespace) -> dict:
    """Train; the result's ``signal`` is the number of a signal that stopped the run (else None)."""
    trainer = Trainer(args)
    return trainer.train()

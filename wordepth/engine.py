"""Building runs from a configuration, the training loop and the evaluation entry.

One place decides the device, precision and process group (:func:`setup_runtime`); the model
code follows its inputs. Works the same on a laptop CPU, one GPU (``python train.py``) and many
GPUs or nodes (``torchrun``).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler
from tqdm import tqdm

from wordepth.checkpoints import (FORMAT, FORMAT_VERSION, atomic_save, inspect_checkpoint, load_swin_pretrained,
                                  network_from_checkpoint, safe_load, save_original_checkpoint)
from wordepth.config import eval_crop, model_overrides
from wordepth.evaluation import EvalResult, ShardSampler, autocast, evaluate, write_metrics_json, write_per_image_csv
from wordepth.metrics import METRIC_NAMES, format_metrics
from wordepth.models.wordepth import WorDepth, WorDepthConfig, preset_config

log = logging.getLogger("wordepth")
HIGHER_BETTER = ("d1", "d2", "d3")


# --------------------------------------------------------------------------- runtime
@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(device: str | None = None) -> Runtime:
    """Pick the device (CUDA if present, else CPU) and join the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("error: --device cuda asked for, but no CUDA GPU is available (use --device cpu)")
        if world > 1 and dev.index is None:
            if local >= torch.cuda.device_count():
                raise SystemExit(f"error: LOCAL_RANK {local} but only {torch.cuda.device_count()} GPU(s) visible: "
                                 "lower --nproc_per_node / NUM_GPUS")
            dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Runtime(dev, rank, world, local)


def setup_logging(rt: Runtime, run_dir: Path | None = None) -> None:
    """``logging`` on rank 0 only (to the console and run_dir/train.log); other ranks log warnings."""
    level = logging.INFO if rt.is_main else logging.WARNING
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None and rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers, force=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- builders
def model_config(args: argparse.Namespace) -> WorDepthConfig:
    kw = dict(**model_overrides(args), alter_prob=args.alter_prob, weight_kld=args.weight_kld,
              variance_focus=args.variance_focus,
              ape_grid=(math.ceil(args.input_height / 4), math.ceil(args.input_width / 4)))
    if args.drop_path_rate is not None:
        kw["drop_path_rate"] = args.drop_path_rate
    cfg = preset_config(args.preset, **kw)
    if args.no_fused_attn:
        cfg = cfg.replace(fused_attn=False)
    return cfg


def model_from_checkpoint_obj(obj: dict, args: argparse.Namespace, path: str) -> WorDepth:
    """Network for a loaded checkpoint: settings given on the command line win over the checkpoint's."""
    run = dict(alter_prob=args.alter_prob, weight_kld=args.weight_kld, variance_focus=args.variance_focus)
    if args.drop_path_rate is not None:
        run["drop_path_rate"] = args.drop_path_rate
    model = network_from_checkpoint(obj, path, lambda stored: {**run, **model_overrides(args, stored)})
    grid = (math.ceil(args.input_height / 4), math.ceil(args.input_width / 4))
    if inspect_checkpoint(obj) == "wordepth" and not args.eval_only and tuple(model.cfg.backbone.ape_grid) != grid:
        log.warning("input size %dx%d differs from the checkpoint's training size %dx%d: the position "
                    "embedding is interpolated", args.input_height, args.input_width,
                    model.cfg.backbone.ape_grid[0] * 4, model.cfg.backbone.ape_grid[1] * 4)
    return model


def build_dataset_from_args(args: argparse.Namespace, mode: str):
    from wordepth.data import build_dataset

    if mode == "train":
        kw = dict(data_path=args.data_path, gt_path=args.gt_path, split_file=args.filenames_file)
        extra = dict(seed=args.seed)
        if args.dataset == "nyu":
            extra.update(do_random_rotate=args.do_random_rotate, degree=args.degree)
        else:
            extra.update(do_kb_crop=args.do_kb_crop)
    else:
        kw = dict(data_path=args.data_path_eval, gt_path=args.gt_path_eval, split_file=args.filenames_file_eval)
        extra = {"do_kb_crop": args.do_kb_crop} if args.dataset == "kitti" else {}
    ds = build_dataset(args.dataset, mode, text_feat_dir=args.text_feat_dir, input_height=args.input_height,
                       input_width=args.input_width, **kw, **extra)
    if mode == "train" and getattr(args, "skip_bad_samples", False):
        from wordepth.data.check import SkipBadSamples

        ds = SkipBadSamples(ds)
    return ds


def eval_loader(args: argparse.Namespace, rt: Runtime) -> DataLoader:
    from wordepth.data import collate

    ds = build_dataset_from_args(args, "eval")
    if getattr(ds, "skipped", 0):
        log.warning("%d evaluation samples skipped: ground truth missing (see warnings above)", ds.skipped)
    sampler = ShardSampler(len(ds), rt.rank, rt.world_size)
    return DataLoader(ds, batch_size=args.eval_batch_size, sampler=sampler, num_workers=args.num_threads,
                      collate_fn=collate, pin_memory=rt.device.type == "cuda")


def run_evaluation(model: torch.nn.Module, loader: DataLoader, args: argparse.Namespace, rt: Runtime,
                   per_image: bool = False, save_vis: str | None = None) -> EvalResult:
    return evaluate(model, loader, dataset=args.dataset, min_depth=args.min_depth_eval,
                    max_depth=args.max_depth_eval, crop=eval_crop(args),
                    kb_crop=args.dataset == "kitti" and args.do_kb_crop, device=rt.device, amp=args.amp,
                    per_image=per_image, save_vis=save_vis, progress=not args.no_tqdm)


# --------------------------------------------------------------------------- evaluation entry
def eval_main(args: argparse.Namespace) -> dict:
    """Evaluate ``--checkpoint_path``; print the 9 metrics, write JSON/CSV/pictures if asked."""
    rt = setup_runtime(args.device)
    setup_logging(rt)
    if not args.checkpoint_path:
        raise SystemExit("error: --checkpoint_path is required for evaluation")
    obj = safe_load(args.checkpoint_path)
    model = model_from_checkpoint_obj(obj, args, args.checkpoint_path)
    model.to(rt.device).eval()
    loader = eval_loader(args, rt)
    result = run_evaluation(model, loader, args, rt, per_image=bool(args.per_image_csv), save_vis=args.save_vis)
    if rt.is_main:
        print(f"Computing errors for {result.metrics['count']} eval samples")
        print(format_metrics([result.metrics[n] for n in METRIC_NAMES]))
        if args.metrics_json:
            write_metrics_json(args.metrics_json, result, extra={"checkpoint": str(args.checkpoint_path)})
        if args.per_image_csv:
            write_per_image_csv(args.per_image_csv, result.rows)
    return result.metrics


# --------------------------------------------------------------------------- training
def poly_lr(step: int, total: int, lr: float, end_lr: float) -> float:
    """The original schedule: step k uses the value set after step k-1 (step 0 uses ``lr``)."""
    k = max(step - 1, 0)
    return (lr - end_lr) * (1 - min(k, total) / total) ** 0.9 + end_lr


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def rng_state(branch_gen: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "branch": branch_gen.get_state(),
             "python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, branch_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    branch_gen.set_state(state["branch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(state["numpy_pos"]), 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopRequested(Exception):
    pass


class Trainer:
    """The alternating training loop (one object so that signal handlers and saving share state)."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rt = setup_runtime(args.device)
        self.run_dir = Path(args.log_directory) / args.model_name
        setup_logging(self.rt, self.run_dir)
        seed_everything(args.seed)
        self.branch_gen = torch.Generator().manual_seed(args.seed + 1)  # same on every rank
        self.global_step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.best = {n: (-math.inf if n in HIGHER_BETTER else math.inf) for n in METRIC_NAMES}
        self.best_steps = {n: 0 for n in METRIC_NAMES}
        self.stop_signal: int | None = None
        self.branch_counts = {"text": 0, "image": 0}
        self._build()

    # ---- set-up
    def _build(self) -> None:
        args, rt = self.args, self.rt
        resume = None
        if args.checkpoint_path:
            obj = safe_load(args.checkpoint_path)
            self.model = model_from_checkpoint_obj(obj, args, args.checkpoint_path)
            log.info("loaded weights from %s (%s layout)", args.checkpoint_path, inspect_checkpoint(obj))
            if not args.retrain and inspect_checkpoint(obj) == "wordepth" and "optimizer" in obj:
                resume = obj
            elif not args.retrain and inspect_checkpoint(obj) == "original":
                self.global_step = int(obj.get("global_step", 0))
        else:
            self.model = WorDepth(model_config(args))
            if args.pretrain:
                missing, _ = load_swin_pretrained(self.model.backbone, args.pretrain)
                log.info("backbone initialised from %s (new: %s)", args.pretrain, ", ".join(missing))
        self.cfg = self.model.cfg
        self.model.to(rt.device)
        if args.grad_checkpoint:
            self.model.backbone.set_grad_checkpointing(True)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.learning_rate,
                                          weight_decay=args.weight_decay, eps=args.adam_eps)
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=args.amp == "fp16")
        if resume is not None:
            self._restore(resume)
        net: torch.nn.Module = self.model
        if args.compile:
            net = torch.compile(net)
        if rt.distributed:
            net = DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                                          find_unused_parameters=True)
        self.net = net

        from wordepth.data import collate

        self.train_set = build_dataset_from_args(args, "train")
        self.sampler = (DistributedSampler(self.train_set, rt.world_size, rt.rank, shuffle=True, seed=args.seed,
                                           drop_last=True)
                        if rt.distributed else None)
        self.loader_kw = dict(batch_size=args.batch_size, num_workers=args.num_threads, collate_fn=collate,
                              pin_memory=rt.device.type == "cuda", drop_last=True,
                              persistent_workers=False)
        self.steps_per_epoch = len(self.train_set) // (args.batch_size * rt.world_size)
        if self.steps_per_epoch == 0:
            raise SystemExit(f"error: {len(self.train_set)} training samples are fewer than one batch "
                             f"({args.batch_size} x {rt.world_size} processes)")
        self.total_steps = args.num_epochs * self.steps_per_epoch
        if args.max_steps:
            self.total_steps = min(self.total_steps, args.max_steps)
        self.eval_loader = eval_loader(args, rt) if (args.do_online_eval or args.eval_before_train) else None
        self.writer = None
        if rt.is_main:
            from tensorboardX import SummaryWriter

            self.run_dir.mkdir(parents=True, exist_ok=True)
            summary = (Path(args.eval_summary_directory) / args.model_name if args.eval_summary_directory
                       else self.run_dir / "summary")
            self.writer = SummaryWriter(str(summary), flush_secs=30)
            resolved = {k: v for k, v in vars(args).items()}
            resolved["model_config"] = self.cfg.to_dict()
            resolved["git_commit"] = git_commit()
            resolved["world_size"] = rt.world_size
            (self.run_dir / "config.json").write_text(json.dumps(resolved, indent=2, default=str) + "\n")
            n_params = sum(p.numel() for p in self.model.parameters())
            log.info("WorDepth (%s, %s) with %.1fM parameters on %s x%d; %d steps (%d per epoch)",
                     args.preset, "legacy" if self.cfg.legacy else "current", n_params / 1e6, rt.device,
                     rt.world_size, self.total_steps, self.steps_per_epoch)

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
            "config": {"model": self.cfg.to_dict(),
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
        if not self.rt.is_main:
            return None
        path = self.run_dir / "last.pth"
        atomic_save(self.checkpoint_state(), path)
        log.info("saved %s (step %d)", path, self.global_step)
        return path

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
                last_eval = self.online_eval()
            last_eval = self._loop() or last_eval
        except StopRequested:
            pass
        except SystemExit:  # e.g. too many non-finite steps: the last good checkpoint stays as it is
            raise
        except BaseException:
            log.exception("training stopped by an error at step %d; saving a last checkpoint", self.global_step)
            try:
                self.save_last()
            except Exception:  # keep the original error
                log.exception("could not save the last checkpoint")
            raise
        finally:
            skipped = getattr(self.train_set, "skipped", 0)
            if skipped:
                log.warning("%d training samples were skipped as unreadable (see the warnings above)", skipped)
            for sig, h in handlers.items():
                signal.signal(sig, h)
            if self.writer is not None:
                self.writer.close()
        return {"global_step": self.global_step, "branch_counts": dict(self.branch_counts),
                "eval": last_eval}

    def _loop(self) -> dict | None:
        args, rt = self.args, self.rt
        bar = tqdm(total=self.total_steps, initial=self.global_step, desc="train", dynamic_ncols=True,
                   disable=not rt.is_main or args.no_tqdm)
        nonfinite = 0
        last_eval = None
        t0 = time.time()
        while self.global_step < self.total_steps and self.epoch < args.num_epochs:
            for batch in self._batches(self.epoch, skip_batches=self.step_in_epoch):
                if self.global_step >= self.total_steps:
                    break
                stats = self.train_step(batch)
                self.global_step += 1
                self.step_in_epoch += 1
                bar.update(1)
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
                if args.do_online_eval and self.eval_loader is not None and self.global_step % args.eval_freq == 0:
                    last_eval = self.online_eval()
                if self._stop_requested():
                    self.save_last()
                    raise StopRequested
            else:
                self.epoch += 1
                self.step_in_epoch = 0
                continue
            break
        bar.close()
        self.save_last()
        if args.do_online_eval and self.eval_loader is not None and (last_eval is None or last_eval.get("step")
                                                                      != self.global_step):
            last_eval = self.online_eval()
        return last_eval

    def train_step(self, batch: dict) -> dict | None:
        """One optimisation step; None when the loss or gradient was non-finite (step skipped)."""
        args, rt = self.args, self.rt
        branch = self.model.choose_branch(self.branch_gen)
        self.branch_counts[branch] += 1
        lr = poly_lr(self.global_step, self.total_steps, args.learning_rate,
                     args.learning_rate if args.end_learning_rate == -1 else args.end_learning_rate)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        image = batch["image"].to(rt.device, non_blocking=True)
        depth = batch["depth"].to(rt.device, non_blocking=True)
        text = batch["text_feature"].to(rt.device, non_blocking=True)
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
            eps_shape = (1, self.cfg.latent_dim, math.ceil(h / 32) * 2, math.ceil(w_ / 32) * 2)
            eps = torch.randn(eps_shape, generator=g).to(self.rt.device)
            prior = self.model.prior_depth(text.to(self.rt.device), (h, w_), eps=eps)
        self.model.train(was)
        self.writer.add_image(f"{tag}/prior_depth_from_text", colorize(prior[0, 0].float().cpu().numpy(), 0, vmax),
                              step, dataformats="HWC")

    def online_eval(self) -> dict:
        args, rt = self.args, self.rt
        result = run_evaluation(self.model, self.eval_loader, args, rt)
        m = result.metrics
        if rt.is_main:
            log.info("step %d, %d images:\n%s", self.global_step, m["count"],
                     format_metrics([m[n] for n in METRIC_NAMES]))
            for n in METRIC_NAMES:
                self.writer.add_scalar(f"eval/{n}", m[n], self.global_step)
                better = m[n] > self.best[n] if n in HIGHER_BETTER else m[n] < self.best[n]
                if better:
                    old = self.run_dir / f"model-{self.best_steps[n]}-best_{n}_{self.best[n]:.5f}"
                    self.best[n], self.best_steps[n] = m[n], self.global_step
                    new = self.run_dir / f"model-{self.global_step}-best_{n}_{m[n]:.5f}"
                    self._save_best(new)
                    if old.exists() and old != new:
                        old.unlink()
            (self.run_dir / "metrics.json").write_text(json.dumps({**m, "step": self.global_step}, indent=2) + "\n")
        return {**m, "step": self.global_step}

    def _save_best(self, path: Path) -> None:
        """Best-per-metric checkpoints in the original release's layout (loadable by the original code)."""
        lower = torch.tensor([self.best[n] for n in METRIC_NAMES[:6]])
        higher = torch.tensor([self.best[n] for n in METRIC_NAMES[6:]])
        steps = np.array([self.best_steps[n] for n in METRIC_NAMES], dtype=np.int32)
        save_original_checkpoint(self.model, path, self.global_step, higher, lower, steps)


def train_main(args: argparse.Namespace) -> dict:
    trainer = Trainer(args)
    return trainer.train()

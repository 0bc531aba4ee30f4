"""Building a run from a parsed configuration: the network, the data, the optimizer and its schedule.

Read top to bottom, these are the pieces :class:`wordepth.engine.Trainer` puts together: the model
(new, from Swin ImageNet weights, or from a checkpoint), the datasets and loaders, Adam and the
learning rate exactly as the original builds them.
"""
from __future__ import annotations

import argparse
import logging
import math

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from wordepth.checkpoints import load_network, load_swin_pretrained
from wordepth.config import DEFAULT_PRESET, kitti_full_frame, model_overrides
from wordepth.data import build_dataset, collate
from wordepth.data.robust import SkipBadSamples
from wordepth.engine import poly_lr
from wordepth.models.wordepth import WorDepth, WorDepthConfig, preset_config
from wordepth.reproducibility import seed_worker
from wordepth.runtime import Runtime

log = logging.getLogger("wordepth")


# --------------------------------------------------------------------------- the network
def model_config(args: argparse.Namespace) -> WorDepthConfig:
    """The network of ``--preset`` (default Swin-L) for the run's settings (dataset defaults, input size, p, ...)."""
    kw = dict(**model_overrides(args), alter_prob=args.alter_prob, weight_kld=args.weight_kld,
              variance_focus=args.variance_focus,
              ape_grid=(math.ceil(args.input_height / 4), math.ceil(args.input_width / 4)))
    if args.drop_path_rate is not None:
        kw["drop_path_rate"] = args.drop_path_rate
    cfg = preset_config(args.preset or DEFAULT_PRESET, **kw)
    if args.no_fused_attn:
        cfg = cfg.replace(fused_attn=False)
    return cfg


def model_from_checkpoint_obj(obj: dict, args: argparse.Namespace, path: str) -> WorDepth:
    """Network for a loaded checkpoint: the checkpoint's settings, with those given on the command line.

    A flag that contradicts a setting this project's checkpoint records is an error unless
    ``--force_config`` (:func:`wordepth.config.model_overrides`).
    """
    run = dict(alter_prob=args.alter_prob, weight_kld=args.weight_kld, variance_focus=args.variance_focus)
    if args.drop_path_rate is not None:
        run["drop_path_rate"] = args.drop_path_rate
    model, info = load_network(obj, overrides=lambda stored: {**run, **model_overrides(args, stored, source=str(path))},
                               name=str(path))
    model.train()  # as a new network is built: the training loop sets the mode it needs
    grid = (math.ceil(args.input_height / 4), math.ceil(args.input_width / 4))
    if info["kind"] == "wordepth" and not args.eval_only and tuple(model.cfg.backbone.ape_grid) != grid:
        log.warning("input size %dx%d differs from the checkpoint's training size %dx%d: the position "
                    "embedding is interpolated", args.input_height, args.input_width,
                    model.cfg.backbone.ape_grid[0] * 4, model.cfg.backbone.ape_grid[1] * 4)
    return model


def new_model(args: argparse.Namespace) -> WorDepth:
    """A new network; Swin from ``--pretrain`` (ImageNet weights) when given."""
    model = WorDepth(model_config(args))
    if args.pretrain:
        missing, _ = load_swin_pretrained(model.backbone, args.pretrain)
        log.info("backbone initialised from %s (new: %s)", args.pretrain, ", ".join(missing))
    return model


# --------------------------------------------------------------------------- data
def build_dataset_from_args(args: argparse.Namespace, mode: str):
    """The training (``mode='train'``) or evaluation (``'eval'``) dataset of the configuration."""
    if mode == "train":
        kw = dict(data_path=args.data_path, gt_path=args.gt_path, split_file=args.filenames_file)
        extra = dict(seed=args.seed, do_random_rotate=args.do_random_rotate, degree=args.degree)
        if args.dataset == "kitti":
            extra.update(do_kb_crop=args.do_kb_crop)
    else:
        kw = dict(data_path=args.data_path_eval, gt_path=args.gt_path_eval, split_file=args.filenames_file_eval)
        extra = ({"do_kb_crop": args.do_kb_crop, "full_frame_gt": kitti_full_frame(args)} if args.dataset == "kitti"
                 else {})
    ds = build_dataset(args.dataset, mode, text_feat_dir=args.text_feat_dir, input_height=args.input_height,
                       input_width=args.input_width, **kw, **extra)
    if mode == "train" and getattr(args, "skip_bad_samples", False):
        ds = SkipBadSamples(ds)
    return ds


def train_sampler(train_set, args: argparse.Namespace, rt: Runtime) -> DistributedSampler | None:
    """Several processes: a DistributedSampler, reshuffled each epoch, that pads the epoch with repeated
    samples to a multiple of the world size so that every process takes as many steps. One process: None."""
    if not rt.distributed:
        return None
    n = len(train_set)
    if n % rt.world_size and rt.is_main:
        per_rank = math.ceil(n / rt.world_size)
        log.info("%d training samples on %d processes: each epoch repeats %d sample(s) so that every process "
                 "takes %d", n, rt.world_size, per_rank * rt.world_size - n, per_rank)
    return DistributedSampler(train_set, rt.world_size, rt.rank, shuffle=True, seed=args.seed, drop_last=False)


class TrainData:
    """The training set by epoch, as the engine asks for it (:class:`wordepth.engine.EpochData`).

    The order is the original's (a shuffle per epoch); resuming mid-epoch drops the batches already
    done, so that the data after a resume are those of an uninterrupted run.
    """

    def __init__(self, train_set, sampler: DistributedSampler | None, args: argparse.Namespace, rt: Runtime):
        self.train_set, self.sampler = train_set, sampler
        self.batch_size, self.seed = args.batch_size, args.seed
        self.loader_kw = dict(batch_size=args.batch_size, num_workers=args.num_threads, collate_fn=collate,
                              pin_memory=rt.device.type == "cuda", drop_last=False, persistent_workers=False,
                              worker_init_fn=seed_worker)  # with the seeded generator of each epoch below

    def epoch(self, epoch: int, skip_batches: int = 0) -> DataLoader | list:
        """Epoch ``epoch``'s loader without its first ``skip_batches`` batches."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
            sampler = self.sampler
        else:
            g = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
            sampler = RandomSampler(self.train_set, generator=g)
        if skip_batches:
            sampler = list(sampler)[skip_batches * self.batch_size:]
            if not sampler:
                return []
        self.train_set.set_epoch(epoch)
        # its own generator: creating the iterator must not consume the global RNG (exact resume)
        loader_gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        return DataLoader(self.train_set, sampler=sampler, generator=loader_gen, **self.loader_kw)


def steps_per_epoch(n_samples: int, batch_size: int, world_size: int = 1) -> int:
    """As the original's DataLoader without drop_last: ceil(N / batch), the last batch partial."""
    if n_samples == 0:
        raise ValueError("the training split is empty")
    return math.ceil(math.ceil(n_samples / world_size) / batch_size)


# --------------------------------------------------------------------------- optimisation
def build_optimizer(model: torch.nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """Adam exactly as the original builds it from a parsed config.

    The original passes learning rate and weight decay but never ``--adam_eps``: its Adam runs
    with torch's default eps (1e-8) although every config says 1e-3. ``--use_adam_eps`` applies it.
    """
    kwargs = {"lr": args.learning_rate, "weight_decay": args.weight_decay}
    if getattr(args, "use_adam_eps", False):
        kwargs["eps"] = args.adam_eps
    elif getattr(args, "adam_eps", None) is not None:
        log.info("--adam_eps %g is ignored, as in the original (Adam eps = torch's default 1e-8); "
                 "--use_adam_eps applies it", args.adam_eps)
    return torch.optim.Adam([{"params": model.parameters()}], **kwargs)


def learning_rate(step: int, total_steps: int, args: argparse.Namespace) -> float:
    """The learning rate the original applies at optimizer step ``step`` (0-based).

    The original updates the rate after ``optimizer.step()`` from the pre-increment step, so step 0
    uses ``--learning_rate`` and step k >= 1 uses poly(k - 1); ``--end_learning_rate -1`` keeps it constant.
    """
    end = args.learning_rate if args.end_learning_rate == -1 else args.end_learning_rate
    return poly_lr(step, total_steps, args.learning_rate, end)

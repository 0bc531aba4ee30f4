"""Building a run from its configuration (:class:`wordepth.config.RunConfig`): the network, the data, the
optimizer and its schedule.

Read top to bottom, these are the pieces :class:`wordepth.engine.Trainer` puts together: the model
(new, from Swin ImageNet weights, or from a checkpoint), the datasets and loaders, Adam and the
learning rate exactly as the original builds them.
"""
from __future__ import annotations

import logging
import math

import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from wordepth.checkpoints import load_checkpoint, load_swin_pretrained
from wordepth.config import CONFIG_FILE, DEFAULT_PRESET, OptimConfig, RunConfig, RunRecord, model_overrides
from wordepth.data import build_dataset, collate
from wordepth.data.robust import SkipBadSamples
from wordepth.engine import poly_lr
from wordepth.errors import UserError
from wordepth.models.wordepth import WorDepth, WorDepthConfig, preset_config
from wordepth.reproducibility import seed_worker
from wordepth.runtime import Runtime

log = logging.getLogger("wordepth")


# --------------------------------------------------------------------------- the network
def model_config(cfg: RunConfig) -> WorDepthConfig:
    """The network of ``--preset`` (default Swin-L) for the run's settings (dataset defaults, input size, p, ...)."""
    m, data = cfg.model, cfg.data
    kw = dict(**model_overrides(m, data.dataset), alter_prob=m.alter_prob, weight_kld=m.weight_kld,
              variance_focus=m.variance_focus,
              ape_grid=(math.ceil(data.input_height / 4), math.ceil(data.input_width / 4)))
    if m.drop_path_rate is not None:
        kw["drop_path_rate"] = m.drop_path_rate
    net = preset_config(m.preset or DEFAULT_PRESET, **kw)
    if m.no_fused_attn:
        net = net.replace(fused_attn=False)
    return net


def model_from_checkpoint_obj(obj: dict, cfg: RunConfig, path: str, saved: RunRecord | None = None) -> WorDepth:
    """Network for a loaded checkpoint: the checkpoint's settings, with those given on the command line.

    A flag that contradicts a setting this project's checkpoint records is an error unless
    ``--force_config`` (:func:`wordepth.config.model_overrides`). A file that records no settings (the
    original layout: the best-per-metric checkpoints of a run) takes them from ``saved``, its run's
    ``config.json`` (:func:`wordepth.config.saved_run_record`).
    """
    m, data = cfg.model, cfg.data
    run = dict(alter_prob=m.alter_prob, weight_kld=m.weight_kld, variance_focus=m.variance_focus)
    if m.drop_path_rate is not None:
        run["drop_path_rate"] = m.drop_path_rate

    def overrides(stored: dict | None) -> dict:
        source = str(path)
        if stored is None and saved is not None:
            stored, source = saved.network.to_dict(), f"{path} (its run's {CONFIG_FILE})"
        return {**run, **model_overrides(m, data.dataset, stored, source=source, force=cfg.run.force_config)}

    model, info = load_checkpoint(obj, overrides=overrides, name=str(path), with_info=True)
    model.train()  # as a new network is built: the training loop sets the mode it needs
    grid = (math.ceil(data.input_height / 4), math.ceil(data.input_width / 4))
    if info["kind"] == "wordepth" and not cfg.run.eval_only and tuple(model.cfg.backbone.ape_grid) != grid:
        log.warning("input size %dx%d differs from the checkpoint's training size %dx%d: the position "
                    "embedding is interpolated", data.input_height, data.input_width,
                    model.cfg.backbone.ape_grid[0] * 4, model.cfg.backbone.ape_grid[1] * 4)
    return model


def new_model(cfg: RunConfig) -> WorDepth:
    """A new network; Swin from ``--pretrain`` (ImageNet weights) when given."""
    model = WorDepth(model_config(cfg))
    if cfg.run.pretrain:
        missing, _ = load_swin_pretrained(model.backbone, cfg.run.pretrain)
        log.info("backbone initialised from %s (new: %s)", cfg.run.pretrain, ", ".join(missing))
    return model


# --------------------------------------------------------------------------- data
def run_dataset(cfg: RunConfig, mode: str, feature_dim: int | None = None):
    """The training (``mode='train'``) or evaluation (``'eval'``) dataset of the configuration; ``feature_dim``:
    the network's ``text_dim`` (features of another width are a one-line error when read)."""
    data, ev = cfg.data, cfg.eval
    if mode == "train":
        kw = dict(data_path=data.data_path, gt_path=data.gt_path, split_file=data.filenames_file)
        extra = dict(seed=cfg.run.seed, do_random_rotate=data.do_random_rotate, degree=data.degree)
        if data.dataset == "kitti":
            extra.update(do_kb_crop=data.do_kb_crop)
    else:
        kw = dict(data_path=ev.data_path_eval, gt_path=ev.gt_path_eval, split_file=ev.filenames_file_eval)
        extra = ({"do_kb_crop": data.do_kb_crop, "full_frame_gt": cfg.protocol.full_frame}
                 if data.dataset == "kitti" else {})
    ds = build_dataset(data.dataset, mode, text_feat_dir=data.text_feat_dir, input_height=data.input_height,
                       input_width=data.input_width, feature_dim=feature_dim, **kw, **extra)
    if mode == "train" and data.skip_bad_samples:
        ds = SkipBadSamples(ds)
    return ds


def train_sampler(train_set, seed: int, rt: Runtime) -> DistributedSampler | None:
    """Several processes: a DistributedSampler, reshuffled each epoch, that pads the epoch with repeated
    samples to a multiple of the world size so that every process takes as many steps. One process: None."""
    if not rt.distributed:
        return None
    n = len(train_set)
    if n % rt.world_size and rt.is_main:
        per_rank = math.ceil(n / rt.world_size)
        log.info("%d training samples on %d processes: each epoch repeats %d sample(s) so that every process "
                 "takes %d", n, rt.world_size, per_rank * rt.world_size - n, per_rank)
    return DistributedSampler(train_set, rt.world_size, rt.rank, shuffle=True, seed=seed, drop_last=False)


class TrainData:
    """The training set by epoch, as the engine asks for it (:class:`wordepth.engine.EpochData`).

    The order is the original's (a shuffle per epoch); resuming mid-epoch drops the batches already
    done, so that the data after a resume are those of an uninterrupted run.
    """

    def __init__(self, train_set, sampler: DistributedSampler | None, batch_size: int, seed: int, num_workers: int,
                 rt: Runtime):
        self.train_set, self.sampler = train_set, sampler
        self.batch_size, self.seed = batch_size, seed
        self.loader_kw = dict(batch_size=batch_size, num_workers=num_workers, collate_fn=collate,
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
        raise UserError("the training split is empty")
    return math.ceil(math.ceil(n_samples / world_size) / batch_size)


# --------------------------------------------------------------------------- optimisation
def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """Adam exactly as the original builds it from its config.

    The original passes learning rate and weight decay but never ``--adam_eps``: its Adam runs
    with torch's default eps (1e-8) although every config says 1e-3. ``--use_adam_eps`` applies it.
    """
    kwargs = {"lr": optim.learning_rate, "weight_decay": optim.weight_decay}
    if optim.use_adam_eps:
        kwargs["eps"] = optim.adam_eps
    elif optim.adam_eps is not None:
        log.info("--adam_eps %g is ignored, as in the original (Adam eps = torch's default 1e-8); "
                 "--use_adam_eps applies it", optim.adam_eps)
    return torch.optim.Adam([{"params": model.parameters()}], **kwargs)


def learning_rate(step: int, total_steps: int, optim: OptimConfig) -> float:
    """The learning rate the original applies at optimizer step ``step`` (0-based).

    The original updates the rate after ``optimizer.step()`` from the pre-increment step, so step 0
    uses ``--learning_rate`` and step k >= 1 uses poly(k - 1); ``--end_learning_rate -1`` keeps it constant.
    """
    return poly_lr(step, total_steps, optim.learning_rate, optim.end_lr)

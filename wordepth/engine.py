"""The training loop: the original's alternating optimisation, one step at a time.

:class:`Trainer` takes a built network, its optimizer, the training batches and a
:class:`LoopSettings`; it does not parse arguments or open files. Each step reads like the method:
pick the branch (text with probability p, else image), forward, loss (SILog + w_kld KL), backward,
clip the gradient norm to 1, optimizer step, with the learning rate of the original's schedule
(:func:`poly_lr`). The same loop trains a real run (``wordepth-train`` builds it from a config:
:mod:`wordepth.cli.train`) and the toy model of :mod:`wordepth.demo.toy` (in-memory batches).

What a run writes (TensorBoard, checkpoints, online evaluation) is behind :class:`Records`
(:class:`wordepth.runfolder.RunRecords` for a run folder); stop signals are :mod:`wordepth.signals`.

Host-device synchronisation: a step that does not log reads the device once — one packed tensor of
flags (batch has depth, loss non-finite, gradient non-finite, stop requested), agreed across the
processes by one all-reduce. Statistics stay on the device until a log step reads them.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist
from tqdm import tqdm

from wordepth.errors import USER_ERRORS, UserError, error_message
from wordepth.losses import MIN_TRAIN_DEPTH, valid_depth_mask
from wordepth.runtime import (BranchGradients, Runtime, autocast, collective_failure, mark_failed, rng_state,
                              set_rng_state)
from wordepth.signals import StopRequested, StopSignals

log = logging.getLogger("wordepth")

__all__ = ["LoopSettings", "Records", "StopRequested", "Trainer", "TrainingStopped", "poly_lr"]


class TrainingStopped(UserError):
    """The run cannot go on (too many non-finite steps, no depth in the data); the last checkpoint is kept."""


def poly_lr(step: int, total: int, lr: float, end_lr: float) -> float:
    """The original schedule: step k uses the value set after step k-1 (step 0 uses ``lr`` itself).

    The original updates the rate after ``optimizer.step()`` from the pre-increment step, so step 0
    uses ``lr`` and step k >= 1 uses ``(lr - end_lr) * (1 - (k - 1) / total) ** 0.9 + end_lr``.
    """
    if step <= 0:
        return lr  # the optimizer's initial rate, before any update of the original's formula
    k = step - 1
    return (lr - end_lr) * (1 - min(k, total) / total) ** 0.9 + end_lr


@dataclass
class LoopSettings:
    """What the loop needs, whichever entry built it (a parsed config or the toy's settings)."""

    total_steps: int
    lr: float
    end_lr: float  # equal to lr: a constant rate
    clip_norm: float = 1.0
    amp: str = "none"  # autocast: none, bf16 or fp16 (with a gradient scaler)
    num_epochs: int | None = None  # None: as many passes over the data as total_steps takes
    log_freq: int = 100
    save_freq: int = 0  # 0: no periodic saves
    eval_freq: int = 0  # 0: no online evaluation
    eval_before_train: bool = False
    final_eval: bool = False
    max_nonfinite_steps: int = 20
    max_no_depth_steps: int = 20
    progress: bool = False
    progress_desc: str = "train"


class Records:
    """What a run writes as it trains; these defaults write nothing (the toy, tests).

    :class:`wordepth.runfolder.RunRecords` writes a run folder: TensorBoard, ``last.pth``, the
    best-per-metric checkpoints and the online evaluation.
    """

    last_checkpoint = None  # the path a crash or a stop leaves for resuming

    def log_step(self, trainer: Trainer, stats: dict) -> None:
        pass

    def save_last(self, trainer: Trainer) -> None:
        pass

    def save_last_if_newer(self, trainer: Trainer, why: str) -> None:
        pass

    def online_eval(self, trainer: Trainer, step: int, track_best: bool) -> dict | None:
        return None

    def restore(self, obj: dict) -> None:
        pass

    def state(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class EpochData(Protocol):
    """Training data by epoch: ``epoch(k, skip)`` gives epoch k's batches without its first ``skip``."""

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterable[dict]: ...


class _Batches:
    """A plain iterable of dict batches as :class:`EpochData` (in-memory data: one pass is one epoch)."""

    def __init__(self, batches: Iterable[dict]):
        self.batches = batches

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterable[dict]:
        return itertools.islice(iter(self.batches), skip_batches, None)


def _depth_range(max_depth: float) -> str:
    """The depth range the training loss uses, for messages."""
    return f"{MIN_TRAIN_DEPTH:g} < depth < max_depth {max_depth:g} m"


class Trainer:
    """The alternating training loop of a built network.

    Args:
        model: the network (:class:`~wordepth.models.wordepth.WorDepth`), on its device.
        optimizer: its optimizer (the original's Adam: :func:`wordepth.build.build_optimizer`).
        data: :class:`EpochData`, or any iterable of dict batches (``image``, ``depth``,
            ``text_feature``, optionally ``path``).
        settings: the schedule, clipping, precision and limits.
        rt: device and process group (default: the model's device, one process).
        net: what the forward goes through (DDP and/or ``torch.compile`` of ``model``); default ``model``.
        branch_gen: the branch choice's generator, seeded alike on every process (default: seed 1).
        noise_gen: a generator for the text branch's eps (default: the global RNG).
        records: what the run writes (default: nothing).
        branch_grads: the per-branch gradient bookkeeping of DDP without ``find_unused_parameters``
            (:func:`wordepth.runtime.distribute` gives it with ``net``; default: built here).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: EpochData | Iterable[dict],
                 settings: LoopSettings, *, rt: Runtime | None = None, net: torch.nn.Module | None = None,
                 branch_gen: torch.Generator | None = None, noise_gen: torch.Generator | None = None,
                 records: Records | None = None, branch_grads: BranchGradients | None = None):
        self.model, self.optimizer, self.settings = model, optimizer, settings
        self.data = data if hasattr(data, "epoch") else _Batches(data)
        self.rt = rt or Runtime(next(model.parameters()).device)
        self.net = net if net is not None else model
        self.branch_gen = branch_gen if branch_gen is not None else torch.Generator().manual_seed(1)
        self.noise_gen = noise_gen
        self.records = records or Records()
        self.branch_grads = branch_grads or BranchGradients(model, self.rt.distributed)
        self.scaler = torch.amp.GradScaler(self.rt.device.type, enabled=settings.amp == "fp16")
        self.max_depth = float(model.cfg.max_depth)
        # progress, restored by load_state_dict
        self.global_step = self.epoch = self.step_in_epoch = 0
        self.branch_counts = {"text": 0, "image": 0}
        self.skip_next_eval = False  # the original does not evaluate right after loading its checkpoint
        self.depth_seen = False  # a batch of this run had a valid depth pixel
        self.last_good: tuple[int, torch.Tensor] | None = None  # (step, loss) of the last applied update
        self.stop = StopSignals()

    # ---- state (a checkpoint's progress part)
    def state_dict(self) -> dict:
        """Optimizer, scaler, progress and RNG states as plain data."""
        return {"optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "global_step": self.global_step, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "branch_counts": dict(self.branch_counts), "rng": rng_state(self.branch_gen),
                **self.records.state()}

    def load_state_dict(self, obj: dict) -> None:
        """Resume from :meth:`state_dict` (a checkpoint of this project)."""
        self.optimizer.load_state_dict(obj["optimizer"])
        self.global_step = int(obj["global_step"])
        self.epoch = int(obj["epoch"])
        self.step_in_epoch = int(obj.get("step_in_epoch", 0))
        self.branch_counts = {k: int(v) for k, v in obj.get("branch_counts", self.branch_counts).items()}
        if obj.get("scaler"):
            self.scaler.load_state_dict(obj["scaler"])
        if "rng" in obj:
            set_rng_state(obj["rng"], self.branch_gen, rank=self.rt.rank, step=self.global_step)
        self.records.restore(obj)
        log.info("resuming at step %d (epoch %d, step %d of it)", self.global_step, self.epoch, self.step_in_epoch)

    # ---- the run
    def train(self) -> dict:
        """Train to ``settings.total_steps``; the result's ``signal`` is a signal that stopped the run (else None).

        A failure on any process ends the run on every process: the failing one leaves the process
        group (the others' next collective fails at once instead of waiting), and the main process
        saves ``last.pth`` if it is newer than the one on disk and names it in the log.
        """
        last_eval = None
        try:
            with self.stop:
                if self.settings.eval_before_train:
                    last_eval = self.online_eval(self.global_step, track_best=False)
                last_eval = self._loop() or last_eval
        except StopRequested:
            log.warning("stopped by %s at step %d; resume with --checkpoint_path %s", self.stop.name,
                        self.global_step, self.records.last_checkpoint)
        except TrainingStopped:  # the data or the numbers: the last good checkpoint stays as it is
            self._leave_process_group()
            raise
        except BaseException as err:
            self._on_failure(err)
            raise
        finally:
            self.records.close()
        return {"global_step": self.global_step, "branch_counts": dict(self.branch_counts),
                "eval": last_eval, "signal": self.stop.received}

    def _on_failure(self, err: BaseException) -> None:
        """Log the error, save what can be saved (main process), leave the process group, name the checkpoint."""
        peer = collective_failure(err, self.rt)  # another process died or hangs: one line naming its rank
        if peer is None and self.rt.distributed:
            mark_failed(self.rt.rank)  # the others' line names this rank
        if peer is not None:
            log.error("training stopped at step %d: %s", self.global_step, peer)
            log.debug("the failed collective", exc_info=(type(err), err, err.__traceback__))
        elif isinstance(err, USER_ERRORS):  # one line: the user can fix it
            log.error("training stopped by an error at step %d: %s", self.global_step, error_message(err))
        else:
            log.error("training stopped by an error at step %d (rank %d)", self.global_step, self.rt.rank,
                      exc_info=(type(err), err, err.__traceback__))
        if self.rt.is_main and not isinstance(err, KeyboardInterrupt):
            try:
                self.records.save_last_if_newer(self, "training stopped by an error")
            except Exception as save_err:  # keep the original error
                log.error("could not save a last checkpoint: %s", error_message(save_err))
        self._leave_process_group()
        if self.rt.is_main and self.records.last_checkpoint is not None:
            log.error("the last checkpoint is %s: resume with --checkpoint_path %s", self.records.last_checkpoint,
                      self.records.last_checkpoint)

    def _leave_process_group(self) -> None:
        """Destroy the process group so that no other process waits for this one in a collective."""
        if self.rt.distributed and dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # already broken: nothing left to release
                pass

    def _loop(self) -> dict | None:
        s, rt = self.settings, self.rt
        bar = tqdm(total=s.total_steps, initial=self.global_step, desc=s.progress_desc, unit="step",
                   dynamic_ncols=True, disable=not (rt.is_main and s.progress))
        nonfinite = no_depth = steps_run = 0
        last_eval = None
        while self.global_step < s.total_steps and (s.num_epochs is None or self.epoch < s.num_epochs):
            for batch in self.data.epoch(self.epoch, self.step_in_epoch):
                if self.global_step >= s.total_steps:
                    break
                stats = self.train_step(batch)
                step = self.global_step  # the original's (pre-increment) global_step of this update
                self.global_step += 1
                self.step_in_epoch += 1
                steps_run += 1
                bar.update(1)
                no_depth = 0 if stats["has_depth"] else no_depth + 1
                if no_depth >= s.max_no_depth_steps:
                    raise TrainingStopped(
                        f"{no_depth} consecutive training batches without a valid depth pixel "
                        f"({_depth_range(self.max_depth)}); last batch: {_paths(batch)}. The ground truth is "
                        "empty, in other units or beyond --max_depth: check it with --check_data")
                nonfinite = nonfinite + 1 if stats["counted_fault"] else 0
                if nonfinite >= s.max_nonfinite_steps:
                    raise TrainingStopped(self._nonfinite_message(step, nonfinite, batch))
                if not stats["skipped"]:
                    if self.global_step % s.log_freq == 0 or self.global_step == 1:
                        self.records.log_step(self, stats)
                    if s.save_freq and self.global_step % s.save_freq == 0:
                        self.records.save_last(self)
                    if self._eval_due(step):
                        last_eval = self.online_eval(step)
                    self.skip_next_eval = False
                # one process: a signal that arrived after the step's read counts for this step too
                if stats["stop"] or (not rt.distributed and self.stop.received is not None):
                    self.records.save_last_if_newer(self, f"received {self.stop.name}")
                    raise StopRequested
            else:
                self.epoch += 1
                self.step_in_epoch = 0
                continue
            break
        bar.close()
        if steps_run and not self.depth_seen:
            raise TrainingStopped(f"no training batch of this run had a valid depth pixel "
                                  f"({_depth_range(self.max_depth)}); the ground truth is empty, in other units or "
                                  "beyond --max_depth: check it with --check_data. No checkpoint was saved.")
        self.records.save_last(self)
        if s.final_eval and s.eval_freq and (last_eval is None or last_eval.get("step") != self.global_step - 1):
            last_eval = self.online_eval(self.global_step - 1)
        return last_eval

    def _nonfinite_message(self, step: int, count: int, batch: dict) -> str:
        """One line: the step, how many in a row, fp16's scale, the last finite loss, the kept checkpoint."""
        fp16 = (f" (fp16: GradScaler skipped each update and lowered its scale to {self.scaler.get_scale():.3g}; "
                "gradients that stay non-finite at any scale are not an overflow)") if self.scaler.is_enabled() else ""
        last = ("no step of this run had a finite loss and gradient" if self.last_good is None else
                f"the last finite loss was {float(self.last_good[1]):.6g} (step {self.last_good[0]})")
        kept = f": {self.records.last_checkpoint}" if self.records.last_checkpoint is not None else ""
        return (f"step {step}: {count} consecutive steps with a non-finite loss or gradient{fp16}; {last}; last "
                f"batch: {_paths(batch)}. The last good checkpoint is kept{kept}.")

    def _eval_due(self, step: int) -> bool:
        """The original evaluates when its pre-increment step is a positive multiple of eval_freq,
        i.e. after updates eval_freq + 1, 2 eval_freq + 1, ... (not right after loading its checkpoint)."""
        f = self.settings.eval_freq
        return bool(f) and step > 0 and step % f == 0 and not self.skip_next_eval

    def online_eval(self, step: int, track_best: bool = True) -> dict | None:
        """Evaluate (every process) and let the records keep the best checkpoints, named after ``step``."""
        return self.records.online_eval(self, step, track_best)

    # ---- one step
    def train_step(self, batch: dict) -> dict:
        """One optimisation step.

        Returns the step's statistics: ``loss``, ``terms`` (every scalar tensor ``training_loss`` returns,
        by name: loss, silog, kl and any term a subclass adds), ``grad_norm`` (device tensors, read
        only when logged), ``branch``, ``lr``, and the flags agreed across processes: ``has_depth``,
        ``skipped`` (a non-finite loss or gradient: no update), ``counted_fault`` (a skip that counts
        toward ``max_nonfinite_steps``: every skip, an fp16 overflow that GradScaler skips included: a
        healthy fp16 run overflows now and then, never ``max_nonfinite_steps`` times in a row, each one
        halving the scale) and ``stop``.
        """
        rt = self.rt
        branch = self.model.choose_branch(self.branch_gen)  # a CPU generator: no device sync
        self.branch_counts[branch] += 1
        lr = poly_lr(self.global_step, self.settings.total_steps, self.settings.lr, self.settings.end_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        image = batch["image"].to(rt.device, non_blocking=True)
        depth = batch["depth"].to(rt.device, non_blocking=True)
        text = batch["text_feature"].to(rt.device, non_blocking=True)

        self.optimizer.zero_grad(set_to_none=True)
        with autocast(rt.device, self.settings.amp):
            out = self._forward(image, text, depth, branch)
        loss = out["loss"].float()
        # several processes: zero gradients for the parameters the branch does not use (DDP waits for every
        # parameter), set back to None after the backward (Adam skips them, as on one process)
        self.scaler.scale(self.branch_grads.loss_with_unused(branch, loss)).backward()
        self.branch_grads.drop_unused(branch)
        self.scaler.unscale_(self.optimizer)  # fp16: true gradients (inf after an overflow) before clipping
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.clip_norm)

        # the step's one read of the device: [has depth, bad loss, bad gradient, stop], agreed by all ranks
        flags = torch.stack([valid_depth_mask(depth, self.max_depth).any(), ~torch.isfinite(loss),
                             ~torch.isfinite(grad_norm), torch.full((), self.stop.received is not None,
                                                                    device=rt.device)]).float()
        if rt.distributed:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        has_depth, bad_loss, bad_grad, stop = (bool(f) for f in flags.tolist())

        self.depth_seen |= has_depth
        if not has_depth:
            log.warning("step %d: no valid depth pixel (%s) in the batch %s: only the KL term trains",
                        self.global_step, _depth_range(self.max_depth), _paths(batch))
        overflow = bad_grad and not bad_loss and self.scaler.is_enabled()
        skipped = bad_loss or bad_grad
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            if overflow:  # fp16: GradScaler's normal overflow skip, the scale is lowered
                log.debug("step %d: fp16 gradient overflow, scale lowered from %g", self.global_step,
                          self.scaler.get_scale())
            else:
                log.warning("step %d: non-finite %s (%s branch) on %s; step skipped", self.global_step,
                            "loss" if bad_loss else "gradient", branch, _paths(batch))
        else:
            self.optimizer.step()  # not scaler.step: its found-inf check would read the device again
            self.last_good = (self.global_step, loss.detach())  # read only if the run stops on non-finite steps
        self.scaler.update()  # fp16: lowers the scale after an overflow, raises it after enough good steps
        # every scalar term of the loss is logged (non-scalars such as the predicted depth are not)
        terms = {"loss": loss.detach(), **{name: value.detach() for name, value in out.items()
                                           if name != "loss" and torch.is_tensor(value) and value.dim() == 0}}
        return {"loss": terms["loss"], "terms": terms, "grad_norm": grad_norm.detach(), "branch": branch, "lr": lr, "has_depth": has_depth,
                "skipped": skipped, "counted_fault": skipped, "stop": stop,
                "image": batch["image"][:1], "depth_gt": depth[:1], "depth": out["depth"][:1].detach().float(),
                "text": text[:1]}

    def _forward(self, image: torch.Tensor, text: torch.Tensor, depth: torch.Tensor, branch: str) -> dict:
        """The branch's training loss, through the (DDP / compiled) wrapper so that gradients are
        synchronised; with a noise generator (the toy), the text branch's eps comes from it."""
        if self.noise_gen is not None:
            return self.model.training_loss(image, text, depth, branch, generator=self.noise_gen)
        return self.net(image, text, depth_gt=depth, branch=branch)


def _paths(batch: dict) -> str:
    """The batch's sample paths, for messages (in-memory batches have none)."""
    return ", ".join(batch["path"]) if "path" in batch else "(in-memory batch)"

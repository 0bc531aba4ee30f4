"""A training's run folder (``log_directory/model_name``): one run at a time, no run overwrites another,
and what a run writes there (:class:`RunRecords`: TensorBoard, ``config.json``, ``last.pth``, the
best-per-metric checkpoints, ``metrics.json``).

:func:`claim_run_folder` is what :class:`wordepth.engine.Trainer` calls before it writes anything
there: it creates the folder, takes its lock (``.lock``, holding the PID and host of the run) and
refuses a new run into a folder that already holds another run's checkpoints, unless that run is
being resumed (``--checkpoint_path RUN/last.pth``) or ``--overwrite`` is given. A lock left by a
process that no longer exists on this host is taken over with a warning.
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tensorboardX import SummaryWriter

from wordepth.checkpoints import (FORMAT, FORMAT_VERSION, load_training_state, save_checkpoint,
                                  save_original_checkpoint)
from wordepth.config import RunRecord
from wordepth.engine import Records, Trainer
from wordepth.errors import UserError, error_message
from wordepth.evaluation import NothingEvaluated
from wordepth.metrics import HIGHER_BETTER, METRIC_NAMES, format_metrics
from wordepth.outputs import write_json
from wordepth.inference.predictor import sample_prior
from wordepth.recorded import flat_settings, selection_record
from wordepth.reproducibility import provenance
from wordepth.variants import variant_of
from wordepth.visualize import abs_rel_error_map, colorize, denormalize

log = logging.getLogger("wordepth")

__all__ = ["LOCK_NAME", "RunFolderError", "RunLock", "RunRecords", "claim_run_folder", "previous_run_files",
           "remove_previous_run", "replaced_run_files"]

LOCK_NAME = ".lock"
_UNWRITTEN_LOCK_GRACE_S = 30.0  # an empty lock younger than this belongs to a run that is starting


class RunFolderError(UserError):
    """A run folder this run may not use; the message says what to do instead."""


def previous_run_files(run_dir: Path) -> list[Path]:
    """The checkpoints a run leaves in its folder: ``last.pth`` and ``model-<step>-best_*``."""
    if not run_dir.is_dir():
        return []
    found = [run_dir / "last.pth"] if (run_dir / "last.pth").exists() else []
    return found + sorted(run_dir.glob("model-*-best_*"))


def replaced_run_files(run_dir: Path) -> list[Path]:
    """What a replaced run wrote in its folder that a new run there would be confused with: the
    ``model-<step>-best_*`` checkpoints (same naming scheme), ``metrics.json``, the evaluation history,
    the validation split files and the TensorBoard event files of ``summary/``. ``last.pth`` stays until the new run saves its own (a crash of the new run
    never puts an earlier step in its place); ``config.json`` is rewritten at the start."""
    found = sorted(run_dir.glob("model-*-best_*"))
    found += [run_dir / n for n in ("metrics.json", "eval_history.jsonl", "split_train.txt", "split_val.txt")
              if (run_dir / n).is_file()]  # the last three: wordepth.selection
    return found + sorted((run_dir / "summary").glob("events.out.tfevents.*"))


def remove_previous_run(run_dir: Path, keep: str | os.PathLike | None = None) -> list[str]:
    """``--overwrite``: delete the replaced run's files (:func:`replaced_run_files`), never ``keep`` (the
    checkpoint the new run starts from) nor anything the project did not write. Returns their names."""
    removed = []
    for path in replaced_run_files(run_dir):
        if keep and path.exists() and Path(keep).exists() and path.resolve() == Path(keep).resolve():
            continue
        try:
            path.unlink()
        except OSError as err:
            raise RunFolderError(f"--overwrite: cannot remove {path} of the replaced run: "
                                 f"{err.strerror or err}") from None
        removed.append(str(path.relative_to(run_dir)))
    return removed


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), to tell a reused PID from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (name) ": state is fields[0], starttime fields[19]
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, start: str | None) -> bool:
    """Whether ``pid`` is a running (not zombie) process of this host, and the same one when ``start`` is known."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
        if state[state.rfind(")") + 2:].startswith("Z"):
            return False
    except OSError:
        pass
    now = _process_start(pid)
    return start is None or now is None or now == start


class RunLock:
    """``run_dir/.lock``, created with ``O_EXCL``: held by one process at a time.

    Attributes:
        taken_over: a warning to log when a stale lock was taken over (else None).
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.held = False
        self.taken_over: str | None = None
        self.replaced: list[str] = []  # --overwrite: the replaced run's best checkpoints, metrics, events: removed
        self._token = uuid.uuid4().hex  # tells this lock from another taken by the same process

    def _owner(self) -> tuple[dict | None, str]:
        """The lock's contents (None if unreadable) and its raw text."""
        try:
            raw = self.path.read_text()
        except OSError:
            return None, ""
        try:
            owner = json.loads(raw)
            return (owner if isinstance(owner, dict) and "pid" in owner else None), raw
        except ValueError:
            return None, raw

    def _stale_reason(self, owner: dict | None, raw: str) -> str | None:
        """Why the existing lock is stale, or None if its owner may still be running."""
        if owner is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except OSError:
                return "it is gone"
            return f"it is unreadable and {age:.0f} s old" if age > _UNWRITTEN_LOCK_GRACE_S else None
        pid, host = int(owner.get("pid", -1)), str(owner.get("host", ""))
        if host != socket.gethostname():
            return None  # cannot tell: another machine (a shared file system)
        if pid == os.getpid():
            return "it was left by this process"
        if not _alive(pid, owner.get("start")):
            return f"process {pid} is no longer running"
        return None

    def _remove_stale(self, raw: str) -> None:
        """Move the stale lock aside, making sure it is still the one that was judged stale."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if aside.read_text() != raw:  # another process took it over in between: give it back
                os.replace(aside, self.path)
                return
        except OSError:
            pass
        aside.unlink(missing_ok=True)

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            RunFolderError: another live run holds it.
        """
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner, raw = self._owner()
                why = self._stale_reason(owner, raw)
                if why is None:
                    who = (f"PID {owner.get('pid')} on {owner.get('host')}, started {owner.get('since', '?')}"
                           if owner else "a run that is starting")
                    raise RunFolderError(
                        f"{self.run_dir} is in use by another training ({who}; lock {self.path}): wait for it to "
                        "finish or choose another --model_name; if no such run is active, delete the lock") from None
                self._remove_stale(raw)
                self.taken_over = f"took over the stale lock {self.path} ({why})"
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S"), "token": self._token}, f)
            self.held = True
            atexit.register(self.release)  # also when the run is never started or ends by sys.exit
            return
        raise RunFolderError(f"could not take the lock {self.path}: other processes keep taking it")

    def release(self) -> None:
        """Remove the lock if this process holds it (idempotent)."""
        if not self.held:
            return
        self.held = False
        owner, _ = self._owner()
        if owner is not None and owner.get("token") == self._token:
            self.path.unlink(missing_ok=True)


def claim_run_folder(run_dir: Path, checkpoint_path: str | None, retrain: bool, overwrite: bool,
                     log_directory: str) -> RunLock:
    """Create ``run_dir``, lock it, and check that this run may write there.

    A folder holding another run's checkpoints is refused, except when that run is resumed from its
    own ``last.pth`` (``--checkpoint_path RUN/last.pth`` without ``--retrain``) or with ``overwrite``.

    Returns:
        The held lock; release it when the run ends.

    Raises:
        RunFolderError: the folder cannot be created, is in use, or holds another run.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"cannot create the run folder {run_dir} (--log_directory {log_directory}): "
                             f"{err.strerror or err}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunFolderError(f"the run folder {run_dir} (--log_directory {log_directory}) is not writable")
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        existing = previous_run_files(run_dir)
        last = run_dir / "last.pth"
        resuming = (bool(checkpoint_path) and not retrain and last.exists()
                    and Path(checkpoint_path).resolve() == last.resolve())
        if existing and not overwrite and not resuming:
            more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
            names = ", ".join(p.name for p in existing[:3]) + more
            raise RunFolderError(
                f"{run_dir} already holds a run ({names}): resume it with --checkpoint_path {last}, "
                "or start a new run with another --model_name (or --overwrite to replace it)")
        if overwrite and not resuming:
            lock.replaced = remove_previous_run(run_dir, keep=checkpoint_path)
    except BaseException:
        lock.release()
        raise
    return lock


# --------------------------------------------------------------------------- what a run writes
def saved_step(path: Path) -> int | None:
    """``global_step`` of an existing checkpoint file (memory-mapped: cheap even for Swin-L), or None."""
    if not path.is_file():
        return None
    try:
        return int(load_training_state(path, mmap=True)["global_step"])
    except Exception:  # unreadable, no step: unknown
        return None


class RunRecords(Records):
    """A run folder's records for :class:`wordepth.engine.Trainer`; only the main process writes.

    Args:
        run_dir: the claimed run folder; ``lock``: its lock (released by :meth:`close`).
        record: the run's configuration (:class:`wordepth.config.RunRecord`): ``config.json``, and stored
            in every checkpoint under ``config['record']``.
        evaluate: the online evaluation: the network -> its mean metrics (every process calls it).
        protocol: the evaluation protocol's name (``metrics.json``).
        summary_dir: the TensorBoard folder (default ``run_dir/summary``).
    """

    def __init__(self, run_dir: Path, lock: RunLock | None, is_main: bool, record: RunRecord,
                 evaluate: Callable[[torch.nn.Module], dict] | None = None, protocol: dict | None = None,
                 summary_dir: Path | None = None):
        self.run_dir, self.lock, self.is_main = Path(run_dir), lock, is_main
        self.record, self.evaluate, self.protocol = record, evaluate, protocol or {}
        # the step of the run's last.pth on disk: a crash or a signal never replaces it by an earlier one
        self.saved_step = saved_step(self.run_dir / "last.pth") if is_main else None
        # the original's starting values: a metric must beat 1e3 (lower is better) or 0 to be saved
        self.best = {n: (0.0 if n in HIGHER_BETTER else 1e3) for n in METRIC_NAMES}
        self.best_steps = {n: 0 for n in METRIC_NAMES}
        self.writer = SummaryWriter(str(summary_dir or self.run_dir / "summary"), flush_secs=30) if is_main else None

    @property
    def last_checkpoint(self) -> Path | None:
        return self.run_dir / "last.pth" if self.saved_step is not None else None

    def write_config(self) -> None:
        """``config.json``: the run's :class:`~wordepth.config.RunRecord` (atomic; a planted link is replaced,
        not followed)."""
        if self.is_main:
            self.record.write(self.run_dir)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.lock is not None:
            self.lock.release()

    # ---- checkpoints
    def state(self) -> dict:
        return {"best": dict(self.best), "best_steps": dict(self.best_steps)}

    def restore(self, obj: dict) -> None:
        self.best = {k: float(v) for k, v in obj.get("best", self.best).items()}
        self.best_steps = {k: int(v) for k, v in obj.get("best_steps", self.best_steps).items()}

    def checkpoint(self, trainer: Trainer) -> dict:
        """Model, optimizer, progress, best metrics, RNG states and the config, as plain data."""
        model = trainer.model
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "config": {"model": model.cfg.to_dict(), "variant": variant_of(model.cfg),
                           "record": self.record.to_dict()},
                "model": model.state_dict(), **trainer.state_dict()}

    def save_last(self, trainer: Trainer) -> Path | None:
        """Write ``run_dir/last.pth`` (main process).

        Raises:
            OutputError: the write failed (one line); the previous file is kept.
        """
        if not self.is_main:
            return None
        path = self.run_dir / "last.pth"
        save_checkpoint(self.checkpoint(trainer), path)
        self.saved_step = trainer.global_step
        log.info("saved %s (step %d)", path, trainer.global_step)
        return path

    def save_last_if_newer(self, trainer: Trainer, why: str) -> None:
        """The save of a crash or a signal: never over a checkpoint of the same or a later step, and
        never an untrained one."""
        if not self.is_main:
            return
        floor = self.saved_step if self.saved_step is not None else 0
        if trainer.global_step <= floor:
            if self.saved_step is not None:
                log.warning("%s: %s (step %d) is kept; this run is at step %d", why, self.run_dir / "last.pth",
                            self.saved_step, trainer.global_step)
            return
        log.info("%s: saving a last checkpoint (step %d)", why, trainer.global_step)
        self.save_last(trainer)

    # ---- online evaluation
    def online_eval(self, trainer: Trainer, step: int, track_best: bool) -> dict | None:
        """Evaluate; with ``track_best``, keep a best-per-metric checkpoint named after ``step`` (the
        original's pre-increment global_step, also stored in the file as its ``global_step``)."""
        if self.evaluate is None:
            return None
        try:
            m = self.evaluate(trainer.model)
        except NothingEvaluated as err:  # an online evaluation never ends a training (every process agrees)
            if self.is_main:
                log.warning("step %d: the online evaluation scored no image, training goes on: %s", step,
                            error_message(err))
            return None
        if self.is_main:
            log.info("step %d (%d updates), %d images:\n%s", step, trainer.global_step, m["count"],
                     format_metrics([m[n] for n in METRIC_NAMES]))
            for n in METRIC_NAMES:
                self.writer.add_scalar(f"eval/{n}", m[n], step)
                better = m[n] > self.best[n] if n in HIGHER_BETTER else m[n] < self.best[n]
                if track_best and better:
                    old = self.run_dir / f"model-{self.best_steps[n]}-best_{n}_{self.best[n]:.5f}"
                    self.best[n], self.best_steps[n] = m[n], step
                    new = self.run_dir / f"model-{step}-best_{n}_{m[n]:.5f}"
                    self._save_best(trainer.model, new, step, metric=n)
                    if old.exists() and old != new:
                        old.unlink()
            write_json(self.run_dir / "metrics.json",
                       {**m, "step": step, "updates": trainer.global_step, "protocol": self.protocol,
                        "provenance": provenance(self.record.config.options(), steps=trainer.global_step,
                                                 selection=f"the online evaluation at step {step}")})
        return {**m, "step": step}

    def _save_best(self, model: torch.nn.Module, path: Path, step: int, metric: str | None = None) -> None:
        """Best-per-metric checkpoints in the original release's layout (loadable by the original code),
        recording which split and metric chose them at which step (``selection``)."""
        lower = torch.tensor([self.best[n] for n in METRIC_NAMES[:6]])
        higher = torch.tensor([self.best[n] for n in METRIC_NAMES[6:]])
        steps = np.array([self.best_steps[n] for n in METRIC_NAMES], dtype=np.int32)
        selection = None
        if metric is not None:
            test_split = flat_settings(self.record.config).get("filenames_file_eval") if self.record else None
            selection = selection_record("test", metric, self.best[metric], step, test_split)
        save_original_checkpoint(model, path, step, higher, lower, steps, selection=selection)

    # ---- TensorBoard
    def log_step(self, trainer: Trainer, stats: dict) -> None:
        """The step's line in the log and its scalars and pictures (the statistics are read here)."""
        if not self.is_main:
            return
        w, step, branch = self.writer, trainer.global_step, stats["branch"]
        names = list(stats["terms"])  # every scalar term of training_loss: loss first, then silog, kl, ...
        *values, grad_norm = torch.stack([*(stats["terms"][n].float() for n in names),
                                          stats["grad_norm"].float()]).tolist()  # the log step's one read
        terms = dict(zip(names, values))
        parts = ", ".join(f"{n} {v:.4g}" for n, v in terms.items() if n != "loss")
        log.info("epoch %d step %d/%d loss %.4f (%s; %s branch) lr %.2e", trainer.epoch, step,
                 trainer.settings.total_steps, terms["loss"], parts, branch, stats["lr"])
        for name, value in terms.items():  # the KL of each branch is its own curve, as before
            w.add_scalar(f"train/kl_{branch}" if name == "kl" else f"train/{name}", value, step)
        w.add_scalar("train/branch_is_text", float(stats["branch"] == "text"), step)
        w.add_scalar("train/learning_rate", stats["lr"], step)
        w.add_scalar("train/grad_norm", grad_norm, step)
        self._log_images(trainer, "train", stats["image"], stats["depth_gt"], stats["depth"], stats["text"])

    @torch.no_grad()
    def _log_images(self, trainer: Trainer, tag: str, image, gt, pred, text) -> None:
        model, device, w, step = trainer.model, trainer.rt.device, self.writer, trainer.global_step
        vmax = float(model.cfg.max_depth)
        w.add_image(f"{tag}/input", denormalize(image[0].cpu()), step, dataformats="HWC")
        w.add_image(f"{tag}/depth_pred", colorize(pred[0, 0].cpu().numpy(), 0, vmax), step, dataformats="HWC")
        gt2 = gt[0, 0].cpu()
        w.add_image(f"{tag}/depth_gt", colorize(gt2.numpy(), 0, vmax), step, dataformats="HWC")
        if gt2.shape == pred[0, 0].shape:
            w.add_image(f"{tag}/abs_rel_error", abs_rel_error_map(pred[0, 0].cpu().numpy(), gt2.numpy()), step,
                        dataformats="HWC")
        # the text-only prior through the one prior sampler; its eps come from a seeded CPU generator of
        # its own, so the run's random streams (and an exact resume, on every rank) do not depend on it
        was = model.training
        model.eval()
        image_in = image[:1].to(device) if model.cfg.legacy else None  # the legacy text branch uses image features
        prior = sample_prior(model, text[:1].to(device), tuple(image.shape[-2:]), k=1, seed=0, image=image_in)
        model.train(was)
        w.add_image(f"{tag}/prior_depth_from_text", colorize(prior[0].numpy(), 0, vmax), step, dataformats="HWC")

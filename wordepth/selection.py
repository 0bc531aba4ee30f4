"""Choosing the checkpoint without the test set: a validation split held out of the training split by
scene (:mod:`wordepth.data.holdout`), evaluated at every online evaluation next to the test split.

:class:`SelectionRecords` is the run folder's records (:class:`wordepth.runfolder.RunRecords`, which
keeps the original's best-per-metric checkpoints chosen on the test split, unchanged) plus:

* ``eval_history.jsonl``: one record per split and online evaluation (``step``, ``updates``, ``split``,
  ``final``, the nine metrics), what ``wordepth-sweep`` reports from (:mod:`wordepth.sweep`);
* with a validation split: its metrics in TensorBoard (``val/<metric>``) and the checkpoint whose
  validation ``select_metric`` is best, ``model-<step>-best_val_<metric>_<value>`` (the original
  release's layout, like the others).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from wordepth.checkpoints import save_original_checkpoint
from wordepth.config import RunConfig
from wordepth.data import build_dataset, collate
from wordepth.data.holdout import holdout, write_holdout
from wordepth.errors import error_message
from wordepth.evaluation import NothingEvaluated, ShardSampler
from wordepth.metrics import HIGHER_BETTER, METRIC_NAMES, format_metrics
from wordepth.outputs import write_text
from wordepth.recorded import selection_record
from wordepth.runfolder import RunRecords
from wordepth.sweep import HISTORY_FILE

log = logging.getLogger("wordepth")

__all__ = ["SelectionRecords", "append_history", "validation_loader", "validation_split"]


def append_history(path: Path, records: list[dict]) -> None:
    """Add records to a JSON-lines file (the whole file rewritten atomically: readers never see half a line)."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    write_text(path, old + "".join(json.dumps(r) + "\n" for r in records))


def validation_split(cfg: RunConfig, run_dir: Path, write: bool) -> tuple[Path, Path]:
    """The training split without the validation scenes and the validation split, as files in the run
    folder (``split_train.txt``, ``split_val.txt``); ``write`` on the main process only."""
    split = holdout(cfg.data.filenames_file, cfg.eval.val_split, test_split=cfg.eval.filenames_file_eval,
                    data_path=cfg.data.data_path, gt_path=cfg.data.gt_path)  # a validation file is checked here
    paths = run_dir / "split_train.txt", run_dir / "split_val.txt"
    if write:
        write_holdout(split, run_dir)
        log.info("%s", split.summary())
    return paths


def validation_loader(cfg: RunConfig, rt, split_file: Path, feature_dim: int | None = None) -> DataLoader:
    """The held-out images in evaluation mode (training roots and text features, the evaluation protocol),
    every image once across the processes."""
    data = cfg.data
    extra = ({"do_kb_crop": data.do_kb_crop, "full_frame_gt": cfg.protocol.full_frame} if data.dataset == "kitti"
             else {})  # as the test split's loader (wordepth.build.run_dataset)
    ds = build_dataset(data.dataset, "eval", data_path=data.data_path, gt_path=data.gt_path, split_file=split_file,
                       text_feat_dir=data.text_feat_dir, input_height=data.input_height,
                       input_width=data.input_width, text_split="train", feature_dim=feature_dim, **extra)
    return DataLoader(ds, batch_size=cfg.eval.eval_batch_size, sampler=ShardSampler(len(ds), rt.rank, rt.world_size),
                      num_workers=data.num_threads, collate_fn=collate, pin_memory=rt.device.type == "cuda")


class SelectionRecords(RunRecords):
    """:class:`~wordepth.runfolder.RunRecords` with the evaluation history and validation-based selection.

    Args:
        validate: the held-out split's evaluation (the network -> its mean metrics; every process), or None.
        select_metric: the validation metric that chooses the checkpoint.
        *args, **kwargs: those of :class:`~wordepth.runfolder.RunRecords`.
    """

    def __init__(self, *args, validate: Callable[[torch.nn.Module], dict] | None = None,
                 select_metric: str = "abs_rel", **kwargs):
        super().__init__(*args, **kwargs)
        self.validate, self.select_metric = validate, select_metric
        self.best_val: dict = {"value": None, "step": None}

    def state(self) -> dict:
        return {**super().state(), "best_val": dict(self.best_val)}

    def restore(self, obj: dict) -> None:
        super().restore(obj)
        self.best_val = dict(obj.get("best_val", self.best_val))

    def online_eval(self, trainer, step: int, track_best: bool) -> dict | None:
        out = super().online_eval(trainer, step, track_best)
        if out is None or not track_best:  # no evaluation, or the one before training
            return out
        freq = trainer.settings.eval_freq
        # an evaluation the original does not make (--final_eval): not a candidate of its rule
        final = not (freq and step > 0 and step % freq == 0)
        base = {"step": step, "updates": trainer.global_step, "final": final}
        records = [{**base, "split": "test", **{k: v for k, v in out.items() if k != "step"}}]
        if self.validate is not None:
            try:
                val = self.validate(trainer.model)
            except NothingEvaluated as err:  # never ends a training: no validation record at this step
                val = None
                if self.is_main:
                    log.warning("step %d: the validation split scored no image, training goes on: %s", step,
                                error_message(err))
            if val is not None:
                records.append({**base, "split": "val", **val})
                if self.is_main:
                    self._track_val(trainer.model, step, val)
        if self.is_main:
            append_history(self.run_dir / HISTORY_FILE, records)
        return out

    def _track_val(self, model: torch.nn.Module, step: int, val: dict) -> None:
        n = self.select_metric
        log.info("step %d, validation (%d images):\n%s", step, val["count"], format_metrics([val[k] for k in METRIC_NAMES]))
        for k in METRIC_NAMES:
            self.writer.add_scalar(f"val/{k}", val[k], step)
        best = self.best_val["value"]
        if best is not None and not (val[n] > best if n in HIGHER_BETTER else val[n] < best):
            return
        old = (self.run_dir / f"model-{self.best_val['step']}-best_val_{n}_{best:.5f}" if best is not None else None)
        new = self.run_dir / f"model-{step}-best_val_{n}_{val[n]:.5f}"
        lower = torch.tensor([val[k] for k in METRIC_NAMES[:6]])
        higher = torch.tensor([val[k] for k in METRIC_NAMES[6:]])
        steps = np.full(len(METRIC_NAMES), step, dtype=np.int32)
        save_original_checkpoint(model, new, step, higher, lower, steps,
                                 selection=selection_record("val", n, val[n], step, self.run_dir / "split_val.txt"))
        self.best_val = {"value": float(val[n]), "step": step}
        if old is not None and old != new and old.exists():
            old.unlink()
        log.info("best validation %s so far: %.5f at step %d (%s)", n, val[n], step, new.name)

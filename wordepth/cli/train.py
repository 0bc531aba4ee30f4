"""``wordepth-train``: train WorDepth, e.g. ``wordepth-train configs/arguments_train_nyu.txt``.

The original configs are accepted. Multi-GPU: ``torchrun --nproc_per_node=N -m wordepth.cli.train CONFIG.txt``
(``sh run_nyu.sh`` does this). ``--eval_only`` evaluates ``--checkpoint_path`` instead, as the
original did. The options are defined in `wordepth.cli.options`.

This module builds a run from its configuration, top to bottom (runtime, run folder, seeds, network,
optimizer, resume state, wrappers, data, records), and hands it to :class:`wordepth.engine.Trainer`.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from wordepth.build import (TrainData, build_optimizer, model_from_checkpoint_obj, new_model, run_dataset,
                            steps_per_epoch, train_sampler)
from wordepth.checkpoints import inspect_checkpoint, load_training_state
from wordepth.cli.options import build_parser, parse_args, run_config, validate_args
from wordepth.config import RunConfig, RunRecord, preset_of, saved_run_record
from wordepth.data.check import check_data_main
from wordepth.engine import LoopSettings, Trainer
from wordepth.errors import UserError, user_errors
from wordepth.evaluation import eval_loader, eval_main, run_evaluation
from wordepth.reproducibility import (configure_determinism, describe_determinism, determinism_state, provenance,
                                      restore_determinism)
from wordepth.recorded import selection_changes
from wordepth.runfolder import claim_run_folder
from wordepth.runtime import Runtime, distribute, git_commit, seed_everything, setup_logging, setup_runtime
from wordepth.selection import SelectionRecords, validation_loader, validation_split

log = logging.getLogger("wordepth")

# settings a resumed run must share with its checkpoint: they fix the steps per epoch and the schedule
RESUME_SETTINGS = ("batch_size", "learning_rate", "end_learning_rate", "input_height", "input_width", "world_size")


def parse(argv, prog: str) -> argparse.Namespace:
    """The shared training/evaluation options (`wordepth.cli.options`), with `prog` in the usage line."""
    parser = build_parser()
    parser.prog = prog
    return parse_args(argv, parser=parser)


def loop_settings(cfg: RunConfig, total_steps: int) -> LoopSettings:
    """The loop's settings of a run's configuration."""
    run, optim, ev = cfg.run, cfg.optim, cfg.eval
    return LoopSettings(total_steps=total_steps, lr=optim.learning_rate, end_lr=optim.end_lr, amp=run.amp,
                        num_epochs=optim.num_epochs, log_freq=run.log_freq, save_freq=run.save_freq,
                        eval_freq=ev.eval_freq if ev.do_online_eval else 0,
                        eval_before_train=ev.eval_before_train, final_eval=ev.final_eval,
                        max_nonfinite_steps=run.max_nonfinite_steps, max_no_depth_steps=run.max_no_depth_steps,
                        progress=not run.no_tqdm)


def check_resume_settings(saved: RunRecord | None, cfg: RunConfig, world_size: int, path: str) -> None:
    """Refuse to resume with settings that change the steps per epoch or the schedule (unless ``--force_config``).

    ``saved``: the run's record (its ``config.json``, else the copy in the checkpoint).

    Raises:
        UserError: naming each setting, the checkpoint's value and the new one.
    """
    if saved is None:
        return
    was = {**saved.config.options(), "world_size": saved.world_size}
    now = {**cfg.options(), "world_size": world_size}
    changed = [f"--{k} {now[k]} (the checkpoint's: {was[k]})" for k in RESUME_SETTINGS if was[k] != now[k]]
    selection = selection_changes(was, now)  # one rule measures and selects a run's checkpoints: never forced
    if selection:
        raise UserError(f"resuming {path} with another evaluation or checkpoint selection: {'; '.join(selection)}. "
                        "One run keeps one rule: resume with the run's settings, or start a new run (another "
                        "--model_name, or --retrain from this checkpoint)")
    if changed and not cfg.run.force_config:
        raise UserError(f"resuming {path} with other settings: {'; '.join(changed)}. The steps per epoch and the "
                        "learning-rate schedule would not match the saved progress: resume with the checkpoint's "
                        "settings, start a new run with --retrain, or pass --force_config")
    if changed:
        log.warning("resuming with other settings (--force_config): %s", "; ".join(changed))


def wrap(model: torch.nn.Module, cfg: RunConfig, rt: Runtime):
    """What the forward goes through (DDP across processes, then ``torch.compile``) and the per-branch
    gradient bookkeeping the loop applies: :func:`wordepth.runtime.distribute`."""
    return distribute(model, rt, compile=cfg.run.compile)


def build_trainer(cfg: RunConfig) -> Trainer:
    """The run of a configuration, ready to :meth:`~wordepth.engine.Trainer.train`."""
    run = cfg.run
    rt = setup_runtime(run.device, run.dist_timeout)
    # the run folder is claimed (locked, checked) before anything is written there
    lock = (claim_run_folder(run.run_dir, run.checkpoint_path, run.retrain, run.overwrite, run.log_directory)
            if rt.is_main else None)
    try:
        return _build(cfg, rt, run.run_dir, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _build(cfg: RunConfig, rt: Runtime, run_dir: Path, lock) -> Trainer:
    setup_logging(rt, run_dir)
    if lock is not None and lock.taken_over:
        log.warning("%s", lock.taken_over)
    if lock is not None and lock.replaced:
        log.warning("--overwrite: removed the replaced run's %s", ", ".join(lock.replaced))
    seed_everything(cfg.run.seed, rt.rank)  # its own random numbers per process; DDP copies rank 0's weights
    log.info("%s", describe_determinism(rt.device))  # set by train_main (--deterministic)

    # ---- network, optimizer
    path = cfg.run.checkpoint_path
    checkpoint = load_training_state(path) if path else None
    kind = inspect_checkpoint(checkpoint) if checkpoint is not None else None
    resuming = kind == "wordepth" and not cfg.run.retrain
    # the run configuration of a resumed checkpoint, or of one that records no network settings (the original
    # layout): its run's config.json, else the copy it holds; read before anything is written to the run folder
    saved = saved_run_record(path, checkpoint.get("config")) if resuming or kind == "original" else None
    if resuming and "optimizer" in checkpoint:
        check_resume_settings(saved, cfg, rt.world_size, path)
    if checkpoint is None:
        model = new_model(cfg)
    else:
        model = model_from_checkpoint_obj(checkpoint, cfg, path, saved=saved)
        log.info("loaded weights from %s (%s layout)", path, inspect_checkpoint(checkpoint))
    model.to(rt.device)
    if cfg.run.grad_checkpoint:
        model.backbone.set_grad_checkpointing(True)
    optimizer = build_optimizer(model, cfg.optim)

    # ---- data and step counts (the original keeps each epoch's last partial batch)
    validate = None
    train_cfg = cfg  # what the training set is read with (the run records cfg, as given)
    if cfg.eval.val_split is not None:  # whole scenes held out of the training split, for choosing a checkpoint
        train_file, val_file = validation_split(cfg, run_dir, write=rt.is_main)
        if rt.distributed:
            torch.distributed.barrier()  # the main process has written the split files
        val_loader = validation_loader(cfg, rt, val_file, model.cfg.text_dim)
        validate = lambda net: run_evaluation(net, val_loader, cfg, rt).metrics  # noqa: E731
        train_cfg = cfg.with_options(filenames_file=str(train_file))
    train_set = run_dataset(train_cfg, "train", model.cfg.text_dim)  # features of another width: one error line
    if len(train_set) == 0:
        raise UserError(f"the training split {train_cfg.data.filenames_file} has no entries")
    optim = cfg.optim
    data = TrainData(train_set, train_sampler(train_set, cfg.run.seed, rt), optim.batch_size, cfg.run.seed,
                     cfg.data.num_threads, rt)
    per_epoch = steps_per_epoch(len(train_set), optim.batch_size, rt.world_size)
    total = optim.num_epochs * per_epoch
    if optim.max_steps is not None:
        total = min(total, optim.max_steps)
    evaluate = None
    if cfg.eval.do_online_eval or cfg.eval.eval_before_train:
        loader = eval_loader(cfg, rt, model.cfg.text_dim)
        evaluate = lambda net: run_evaluation(net, loader, cfg, rt).metrics  # noqa: E731

    # ---- the run's records: config.json, TensorBoard, checkpoints
    record = RunRecord(config=cfg, network=model.cfg, world_size=rt.world_size, steps_per_epoch=per_epoch,
                       total_steps=total, git_commit=git_commit(),
                       provenance=provenance(cfg.options(), steps=total, selection=selection_rules(cfg)),
                       **({"run_id": saved.run_id} if resuming and saved is not None and saved.run_id else {}))
    summary = cfg.eval.eval_summary_directory
    records = SelectionRecords(run_dir, lock, rt.is_main, record, evaluate=evaluate, protocol=cfg.protocol.record(),
                               summary_dir=Path(summary) / cfg.run.model_name if summary else None,
                               validate=validate, select_metric=cfg.eval.select_metric)
    net, branch_grads = wrap(model, cfg, rt)
    trainer = Trainer(model, optimizer, data, loop_settings(cfg, total), rt=rt, net=net, branch_grads=branch_grads,
                      branch_gen=torch.Generator().manual_seed(cfg.run.seed + 1),  # the same on every process
                      records=records)
    if checkpoint is not None and not cfg.run.retrain:
        if inspect_checkpoint(checkpoint) == "wordepth" and "optimizer" in checkpoint:
            trainer.load_state_dict(checkpoint)
        elif inspect_checkpoint(checkpoint) == "original":
            # the original resumes at the start of the epoch of its global_step, and does not
            # evaluate at the first step after loading
            trainer.global_step = int(checkpoint.get("global_step", 0))
            trainer.epoch = trainer.global_step // per_epoch
            trainer.skip_next_eval = True
    del checkpoint
    if rt.is_main:
        records.write_config()
        log.info("WorDepth (%s, %s) with %.1fM parameters on %s x%d; %d steps (%d per epoch)",
                 preset_of(model.cfg.backbone), "legacy" if model.cfg.legacy else "current",
                 sum(p.numel() for p in model.parameters()) / 1e6, rt.device, rt.world_size, total, per_epoch)
    return trainer


def selection_rules(cfg: RunConfig) -> str:
    """How the run's reported checkpoints are chosen (recorded in its provenance)."""
    rules = "selected on test (best per metric, the original's rule)"
    if cfg.eval.val_split is not None:
        rules += f"; selected on validation ({cfg.eval.select_metric}, --val_split {cfg.eval.val_split})"
    return rules


def train_main(cfg: RunConfig) -> dict:
    """Train; the result's ``signal`` is the number of a signal that stopped the run (else None)."""
    before = determinism_state()
    configure_determinism(cfg.run.deterministic, cfg.run.device)  # before the run touches the GPU (cuBLAS)
    try:
        trainer = build_trainer(cfg)
        try:
            return trainer.train()
        finally:
            skipped = getattr(trainer.data.train_set, "skipped", 0)
            if skipped:
                log.warning("%d training samples were skipped as unreadable (see the warnings above)", skipped)
    finally:
        restore_determinism(before)  # an in-process caller (tests, notebooks) gets its settings back


def main(argv=None):
    """Train (or ``--eval_only`` / ``--check_data``); returns the engine's result (a dict)."""
    args = parse(argv, "wordepth-train")
    validate_args(args, training=not args.eval_only)
    return dispatch(args)


def dispatch(args: argparse.Namespace):
    """``--check_data``, ``--eval_only`` or training, with user errors as one ``error:`` line; the library
    takes the typed configuration, built here once (:func:`wordepth.cli.options.run_config`)."""
    command = check_data_main if args.check_data else eval_main if args.eval_only else train_main
    with user_errors():
        return command(run_config(args))


def exit_status(result) -> int:
    """0, or 128 + N for a run that signal N stopped (after saving): ``train && eval`` can tell."""
    sig = result.get("signal") if isinstance(result, dict) else None
    return 128 + int(sig) if sig else 0


def console() -> None:
    """The ``wordepth-train`` command: `main` without its result (a console command's return is its exit status);
    a run stopped by SIGINT / SIGTERM exits with 130 / 143."""
    raise SystemExit(exit_status(main()))


if __name__ == "__main__":
    console()

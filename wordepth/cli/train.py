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
from torch.nn.parallel import DistributedDataParallel

from wordepth.build import (TrainData, build_dataset_from_args, build_optimizer, model_from_checkpoint_obj,
                            new_model, steps_per_epoch, train_sampler)
from wordepth.checkpoints import inspect_checkpoint, safe_load
from wordepth.cli.options import build_parser, parse_args, validate_args
from wordepth.config import eval_protocol, preset_of
from wordepth.data.check import check_data_main
from wordepth.engine import LoopSettings, Trainer
from wordepth.errors import UserError, user_errors
from wordepth.evaluation import eval_loader, eval_main, run_evaluation
from wordepth.reproducibility import (configure_determinism, describe_determinism, determinism_state, provenance,
                                      restore_determinism)
from wordepth.runfolder import claim_run_folder
from wordepth.runtime import Runtime, git_commit, seed_everything, setup_logging, setup_runtime
from wordepth.selection import SelectionRecords, validation_loader, validation_split

log = logging.getLogger("wordepth")

# settings a resumed run must share with its checkpoint: they fix the steps per epoch and the schedule
RESUME_SETTINGS = ("batch_size", "learning_rate", "end_learning_rate", "input_height", "input_width", "world_size")


def parse(argv, prog: str) -> argparse.Namespace:
    """The shared training/evaluation options (`wordepth.cli.options`), with `prog` in the usage line."""
    parser = build_parser()
    parser.prog = prog
    return parse_args(argv, parser=parser)


def loop_settings(args: argparse.Namespace, total_steps: int) -> LoopSettings:
    """The loop's settings of a parsed configuration."""
    end = args.learning_rate if args.end_learning_rate == -1 else args.end_learning_rate
    return LoopSettings(total_steps=total_steps, lr=args.learning_rate, end_lr=end, amp=args.amp,
                        num_epochs=args.num_epochs, log_freq=args.log_freq, save_freq=args.save_freq,
                        eval_freq=args.eval_freq if args.do_online_eval else 0,
                        eval_before_train=args.eval_before_train, final_eval=args.final_eval,
                        max_nonfinite_steps=args.max_nonfinite_steps, max_no_depth_steps=args.max_no_depth_steps,
                        progress=not args.no_tqdm)


def check_resume_settings(checkpoint: dict, args: argparse.Namespace, world_size: int, path: str) -> None:
    """Refuse to resume with settings that change the steps per epoch or the schedule (unless ``--force_config``).

    Raises:
        UserError: naming each setting, the checkpoint's value and the new one.
    """
    saved = checkpoint.get("config", {}).get("args", {})
    now = {**vars(args), "world_size": world_size}
    changed = [f"--{k} {now[k]} (the checkpoint's: {saved[k]})" for k in RESUME_SETTINGS
               if k in saved and saved[k] != now[k]]
    if changed and not args.force_config:
        raise UserError(f"resuming {path} with other settings: {'; '.join(changed)}. The steps per epoch and the "
                        "learning-rate schedule would not match the saved progress: resume with the checkpoint's "
                        "settings, start a new run with --retrain, or pass --force_config")
    if changed:
        log.warning("resuming with other settings (--force_config): %s", "; ".join(changed))


def wrap(model: torch.nn.Module, args: argparse.Namespace, rt: Runtime) -> torch.nn.Module:
    """What the forward goes through: DDP across processes, then ``torch.compile`` of the DDP module.

    Compiling the DDP-wrapped module lets TorchDynamo split the graph at DDP's buckets
    (``optimize_ddp``), so the all-reduce of each bucket overlaps the rest of the backward; a compiled
    module wrapped in DDP afterwards would be one graph whose gradients are all-reduced only at its end.
    """
    net = model
    if rt.distributed:
        net = DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
                                      find_unused_parameters=True)
    if args.compile:
        net = torch.compile(net)
    return net


def build_trainer(args: argparse.Namespace) -> Trainer:
    """The run of a parsed configuration, ready to :meth:`~wordepth.engine.Trainer.train`."""
    rt = setup_runtime(args.device)
    run_dir = Path(args.log_directory) / args.model_name
    # the run folder is claimed (locked, checked) before anything is written there
    lock = (claim_run_folder(run_dir, args.checkpoint_path, args.retrain, args.overwrite, args.log_directory)
            if rt.is_main else None)
    try:
        return _build(args, rt, run_dir, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _build(args: argparse.Namespace, rt: Runtime, run_dir: Path, lock) -> Trainer:
    setup_logging(rt, run_dir)
    if lock is not None and lock.taken_over:
        log.warning("%s", lock.taken_over)
    if lock is not None and lock.replaced:
        log.warning("--overwrite: removed the replaced run's %s", ", ".join(lock.replaced))
    seed_everything(args.seed, rt.rank)  # its own random numbers per process; DDP copies rank 0's weights
    log.info("%s", describe_determinism(rt.device))  # set by train_main (--deterministic)

    # ---- network, optimizer
    checkpoint = safe_load(args.checkpoint_path) if args.checkpoint_path else None
    resuming = checkpoint is not None and not args.retrain and inspect_checkpoint(checkpoint) == "wordepth"
    if resuming and "optimizer" in checkpoint:  # before anything is written to the run folder
        check_resume_settings(checkpoint, args, rt.world_size, args.checkpoint_path)
    if checkpoint is None:
        model = new_model(args)
    else:
        model = model_from_checkpoint_obj(checkpoint, args, args.checkpoint_path)
        log.info("loaded weights from %s (%s layout)", args.checkpoint_path, inspect_checkpoint(checkpoint))
    model.to(rt.device)
    if args.grad_checkpoint:
        model.backbone.set_grad_checkpointing(True)
    optimizer = build_optimizer(model, args)

    # ---- data and step counts (the original keeps each epoch's last partial batch)
    validate = None
    if args.val_split is not None:  # whole scenes held out of the training split, for choosing a checkpoint
        train_file, val_file = validation_split(args, run_dir, write=rt.is_main)
        if rt.distributed:
            torch.distributed.barrier()  # the main process has written the split files
        val_loader = validation_loader(args, rt, val_file)
        validate = lambda net: run_evaluation(net, val_loader, args, rt).metrics  # noqa: E731
        args = argparse.Namespace(**{**vars(args), "filenames_file": str(train_file)})
    train_set = build_dataset_from_args(args, "train")
    if len(train_set) == 0:
        raise UserError(f"the training split {args.filenames_file} has no entries")
    data = TrainData(train_set, train_sampler(train_set, args, rt), args, rt)
    per_epoch = steps_per_epoch(len(train_set), args.batch_size, rt.world_size)
    total = args.num_epochs * per_epoch
    if args.max_steps is not None:
        total = min(total, args.max_steps)
    evaluate = None
    if args.do_online_eval or args.eval_before_train:
        loader = eval_loader(args, rt)
        evaluate = lambda net: run_evaluation(net, loader, args, rt).metrics  # noqa: E731

    # ---- the run's records: TensorBoard, checkpoints, the resolved configuration
    plain = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
    records = SelectionRecords(run_dir, lock, rt.is_main, {"args": {**plain, "world_size": rt.world_size}},
                               evaluate=evaluate, protocol=eval_protocol(args),
                               summary_dir=(Path(args.eval_summary_directory) / args.model_name
                                            if args.eval_summary_directory else None),
                               validate=validate, select_metric=args.select_metric)
    trainer = Trainer(model, optimizer, data, loop_settings(args, total), rt=rt, net=wrap(model, args, rt),
                      branch_gen=torch.Generator().manual_seed(args.seed + 1),  # the same on every process
                      records=records)
    if checkpoint is not None and not args.retrain:
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
        resolved = dict(vars(args))
        resolved["preset"] = preset_of(model.cfg.backbone)  # what was built (a checkpoint's, not --preset's)
        resolved["model_config"] = model.cfg.to_dict()
        resolved["git_commit"] = git_commit()
        resolved["world_size"] = rt.world_size
        resolved["steps_per_epoch"], resolved["total_steps"] = per_epoch, total
        resolved["provenance"] = provenance(args, steps=total, selection=selection_rules(args))
        records.write_config(_plain(resolved))
        log.info("WorDepth (%s, %s) with %.1fM parameters on %s x%d; %d steps (%d per epoch)",
                 preset_of(model.cfg.backbone), "legacy" if model.cfg.legacy else "current",
                 sum(p.numel() for p in model.parameters()) / 1e6, rt.device, rt.world_size, total, per_epoch)
    return trainer


def _plain(obj):
    """JSON-ready: paths and other objects as strings."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj if isinstance(obj, (str, int, float, bool, type(None))) else str(obj)


def selection_rules(args: argparse.Namespace) -> str:
    """How the run's reported checkpoints are chosen (recorded in its provenance)."""
    rules = "selected on test (best per metric, the original's rule)"
    if args.val_split is not None:
        rules += f"; selected on validation ({args.select_metric}, --val_split {args.val_split})"
    return rules


def train_main(args: argparse.Namespace) -> dict:
    """Train; the result's ``signal`` is the number of a signal that stopped the run (else None)."""
    before = determinism_state()
    configure_determinism(args.deterministic, args.device)  # before the run touches the GPU (cuBLAS)
    try:
        trainer = build_trainer(args)
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
    """``--check_data``, ``--eval_only`` or training, with user errors as one ``error:`` line."""
    command = check_data_main if args.check_data else eval_main if args.eval_only else train_main
    with user_errors():
        return command(args)


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

"""``wordepth-sweep``: train one configuration with several seeds and report mean ± std.

    wordepth-sweep configs/arguments_train_nyu.txt --seeds 0 1 2 --val_split 0.1 --deterministic

Every option that is not the sweep's own goes to ``wordepth-train`` unchanged; each seed runs
``python -m wordepth.cli.train ... --seed N --model_name <model_name>_seedN --do_online_eval
--final_eval`` in turn (an interrupted sweep resumes each unfinished run exactly from its
``last.pth``). The equivalent ``torchrun`` command of each seed is printed for those who prefer one
job per seed (then ``--report_only`` collects them). Writes ``sweep.md``, ``sweep.json``,
``sweep_test.png`` (and ``sweep_val.png``) and ``seed_<N>.json`` to ``--sweep_dir``; the rules:
`wordepth.sweep`.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from wordepth.cli.options import parse_args, validate_args
from wordepth.errors import user_errors
from wordepth.outputs import check_outputs, write_json
from wordepth.reproducibility import provenance
from wordepth.recorded import flat_settings
from wordepth.sweep import (HISTORY_FILE, RULES, inspect_seed, read_history, refusal, release_lock_of,
                            run_forwarding_signals, seed_report, seed_run_name, torchrun_command, train_command,
                            write_sweep_report)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wordepth-sweep", allow_abbrev=False,  # --seeds must not swallow wordepth-train's --seed
        description="Train one configuration with several seeds, one after another, and report each seed "
                    "and their mean +- std next to the paper's numbers. Options not listed here go to "
                    "wordepth-train (a config file too).")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the seeds to train")
    p.add_argument("--sweep_dir", default=None, help="where the report goes (default: "
                                                     "<log_directory>/<model_name>_sweep)")
    p.add_argument("--nproc_per_node", type=int, default=1, help="GPUs per job in the printed torchrun commands")
    p.add_argument("--dry_run", action="store_true", help="print the commands and stop")
    p.add_argument("--report_only", action="store_true",
                   help="train nothing: report the seeds' runs as they are (e.g. after separate torchrun jobs)")
    p.add_argument("--replace_runs", action="store_true",
                   help="train again from step 0 the seeds whose runs were made with other settings (or stopped "
                        "before their first checkpoint), replacing those runs; without it such a sweep is refused")
    return p


def main(argv: list[str] | None = None) -> dict:
    """Run the sweep; returns the report (``sweep.json``'s content; with ``--dry_run`` the commands).

    A seed whose run finished with the requested settings is reused; one that stopped half way is
    resumed from its ``last.pth``; one whose run records other settings is refused (one line naming
    them) unless ``--replace_runs``. A seed that fails is reported missing, and the exit status is then
    non-zero. SIGTERM / SIGINT are forwarded to the running training, which saves and stops; the
    sweep then exits with 128 + the signal's number, and the same command resumes it.
    """
    sweep, train_args = build_parser().parse_known_args(argv)
    if len(set(sweep.seeds)) != len(sweep.seeds):
        raise SystemExit("error: --seeds lists a seed twice; give each seed once")
    if sweep.report_only and sweep.replace_runs:
        raise SystemExit("error: --report_only trains nothing: leave out --replace_runs")
    args = parse_args([*train_args, "--do_online_eval", "--final_eval"])
    validate_args(args, training=True)
    opts = flat_settings(args)  # an argparse.Namespace or the typed run configuration
    if opts.get("eval_only") or opts.get("check_data"):
        raise SystemExit("error: --eval_only / --check_data have no place in a sweep; run wordepth-eval instead")
    select_metric = opts.get("select_metric", "abs_rel")  # wordepth-train's option, which the runs use too
    model_name = opts["model_name"]
    log_dir = Path(opts["log_directory"])
    out_dir = Path(sweep.sweep_dir) if sweep.sweep_dir else log_dir / f"{model_name}_sweep"
    with user_errors():
        check_outputs({"--sweep_dir": out_dir}, folders=["--sweep_dir"])
    jobs = [torchrun_command(train_args, seed, model_name, sweep.nproc_per_node) for seed in sweep.seeds]
    print("Each seed as a separate job:\n  " + "\n  ".join(jobs))
    if sweep.dry_run:
        return {"torchrun": jobs}

    # ---- every seed's run folder judged before anything trains: a refusal writes nothing
    with user_errors():
        runs = {seed: inspect_seed(log_dir / seed_run_name(model_name, seed), seed, args) for seed in sweep.seeds}
    conflicts = [r for r in runs.values() if r.differences]
    failed = [r for r in runs.values() if r.state == "failed"]
    if (conflicts or failed) and not sweep.replace_runs:
        if conflicts:
            raise SystemExit("error: " + refusal(conflicts))
        if not sweep.report_only:
            raise SystemExit(f"error: {failed[0].describe()}: add --replace_runs to train seed(s) "
                             f"{', '.join(str(r.seed) for r in failed)} again from step 0 (their leftovers are "
                             "replaced), or choose a new --model_name")

    missing: dict[int, str] = {}
    for seed, state in runs.items():
        if sweep.report_only or (state.state == "finished" and not state.differences):
            if state.state != "finished":
                missing[seed] = state.describe().split(": ", 1)[1]
            continue
        replace = bool(state.differences) or state.state == "failed"
        last = state.run / "last.pth"
        resume = last if state.state == "partial" and not replace else None
        cmd = train_command(train_args, seed, model_name, resume=resume, replace=replace)
        print(f"seed {seed}: {'resuming at step ' + str(state.step) + ': ' if resume else ''}"
              f"{' '.join(cmd[1:])}", flush=True)
        status, sig = run_forwarding_signals(cmd, on_kill=lambda pid, run=state.run: release_lock_of(run, pid))
        if sig is not None:
            how = ("did not stop in time and was killed; its last saved checkpoint is kept"
                   if getattr(run_forwarding_signals, "killed", False) else "saved its last checkpoint")
            print(f"error: the sweep was stopped by {signal.Signals(sig).name} during seed {seed} (its run "
                  f"{state.run} {how}): run the same command again to resume", file=sys.stderr)
            raise SystemExit(128 + sig)
        with user_errors():
            runs[seed] = inspect_seed(state.run, seed, args)
        if status != 0 or runs[seed].state != "finished":
            why = f"ended with exit status {status}" if status != 0 else "did not reach its last step"
            missing[seed] = (f"{why} at step {runs[seed].step if runs[seed].step is not None else 0}; "
                             "run the sweep again to resume it")
            print(f"error: seed {seed} {missing[seed]} (its folder {state.run})", file=sys.stderr, flush=True)

    histories, reports = {}, {}
    for seed in sweep.seeds:
        if seed in missing:
            continue
        run = runs[seed].run
        with user_errors():
            history = read_history(run / HISTORY_FILE)
        if not _split_records(history, "test"):
            missing[seed] = (f"{run / HISTORY_FILE} holds no test evaluation (train with --do_online_eval, long "
                             "enough for one: --eval_freq)")
            continue
        histories[seed] = history
        reports[seed] = seed_report(history, select_metric)
        with user_errors():
            write_json(out_dir / f"seed_{seed}.json",
                       {"seed": seed, "run": str(run), "report": reports[seed],
                        "provenance": provenance({**opts, "seed": seed, "model_name": run.name},
                                                 steps=_updates(history), selection=_rules(reports[seed]))})
    if not histories:
        raise SystemExit("error: no seed of the sweep finished: " + "; ".join(f"seed {s}: {why}" for s, why
                                                                            in missing.items()))
    rules = _rules(next(iter(reports.values())))
    record = provenance({**opts, "seed": None}, steps=max(_updates(h) or 0 for h in histories.values()),
                        selection=rules, seeds=list(histories), seeds_requested=sweep.seeds,
                        select_metric=select_metric, torchrun=jobs)
    with user_errors():
        paths = write_sweep_report(out_dir, histories, opts["dataset"], select_metric, record,
                                   title=f"Seed sweep of {model_name}",
                                   missing={s: missing[s] for s in sweep.seeds if s in missing})
    print(paths["md"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if missing:
        raise SystemExit(f"error: {len(missing)} of {len(sweep.seeds)} seeds missing from the report "
                         f"({', '.join(map(str, missing))}): run the same command again to resume them")
    return json.loads(paths["json"].read_text(encoding="utf-8"))


def _split_records(history: list[dict], split: str) -> list[dict]:
    return [r for r in history if r.get("split") == split]


def _updates(history: list[dict]) -> int | None:
    """Optimizer steps of a run: the most updates an evaluation record names."""
    steps = [int(r["updates"]) for r in history if "updates" in r]
    return max(steps) if steps else None


def _rules(report: dict) -> str:
    return "; ".join(r["rule"] for r in report.values()) or RULES["test"]


def console() -> None:
    """The ``wordepth-sweep`` command: `main` without its result (a console command's return is its exit status)."""
    main()


if __name__ == "__main__":
    console()

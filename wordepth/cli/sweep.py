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
import subprocess
from pathlib import Path

from wordepth.cli.options import parse_args, validate_args
from wordepth.errors import user_errors
from wordepth.outputs import check_outputs, write_json
from wordepth.reproducibility import provenance
from wordepth.sweep import (HISTORY_FILE, RULES, read_history, seed_report, seed_run_name, torchrun_command,
                            train_command, write_sweep_report)


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
    return p


def main(argv: list[str] | None = None) -> dict:
    """Run the sweep; returns the report (``sweep.json``'s content; with ``--dry_run`` the commands)."""
    sweep, train_args = build_parser().parse_known_args(argv)
    if len(set(sweep.seeds)) != len(sweep.seeds):
        raise SystemExit("error: --seeds lists a seed twice")
    args = parse_args([*train_args, "--do_online_eval", "--final_eval"])
    validate_args(args, training=True)
    if args.eval_only or args.check_data:
        raise SystemExit("error: --eval_only / --check_data have no place in a sweep")
    select_metric = getattr(args, "select_metric", "abs_rel")  # wordepth-train's option, which the runs use too
    log_dir = Path(args.log_directory)
    out_dir = Path(sweep.sweep_dir) if sweep.sweep_dir else log_dir / f"{args.model_name}_sweep"
    with user_errors():
        check_outputs({"--sweep_dir": out_dir}, folders=["--sweep_dir"])
    jobs = [torchrun_command(train_args, seed, args.model_name, sweep.nproc_per_node) for seed in sweep.seeds]
    print("Each seed as a separate job:\n  " + "\n  ".join(jobs))
    if sweep.dry_run:
        return {"torchrun": jobs}

    histories, reports = {}, {}
    for seed in sweep.seeds:
        run = log_dir / seed_run_name(args.model_name, seed)
        marker = out_dir / f"seed_{seed}.json"
        if not sweep.report_only and not marker.is_file():
            last = run / "last.pth"
            cmd = train_command(train_args, seed, args.model_name, resume=last if last.is_file() else None)
            print(f"seed {seed}: {' '.join(cmd[1:])}", flush=True)
            status = subprocess.run(cmd).returncode
            if status != 0:
                raise SystemExit(f"error: the run of seed {seed} ended with exit status {status}; its folder "
                                 f"{run} keeps its last checkpoint: run the sweep again to resume it")
        with user_errors():
            history = read_history(run / HISTORY_FILE)
        if not history:
            raise SystemExit(f"error: {run / HISTORY_FILE} holds no evaluation: was seed {seed} trained by this "
                             "sweep (or with --do_online_eval) and long enough for one (--eval_freq)?")
        histories[seed] = history
        reports[seed] = seed_report(history, select_metric)
        with user_errors():
            write_json(marker, {"seed": seed, "run": str(run), "report": reports[seed],
                                "provenance": provenance({**vars(args), "seed": seed, "model_name": run.name},
                                                         steps=_updates(history), selection=_rules(reports[seed]))})
    rules = _rules(next(iter(reports.values())))
    record = provenance({**vars(args), "seed": None}, steps=max(_updates(h) or 0 for h in histories.values()),
                        selection=rules, seeds=sweep.seeds, select_metric=select_metric,
                        torchrun=jobs)
    with user_errors():
        paths = write_sweep_report(out_dir, histories, args.dataset, select_metric, record,
                                   title=f"Seed sweep of {args.model_name}")
    print(paths["md"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return json.loads(paths["json"].read_text(encoding="utf-8"))


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

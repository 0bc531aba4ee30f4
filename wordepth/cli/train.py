"""``wordepth-train``: train WorDepth, e.g. ``wordepth-train configs/arguments_train_nyu.txt``.

The original configs are accepted. Multi-GPU: ``torchrun --nproc_per_node=N train.py CONFIG.txt``
(or ``-m wordepth.cli.train``). ``--eval_only`` evaluates ``--checkpoint_path`` instead, as the
original did. The options are defined in `wordepth.cli.options`.
"""
import argparse

from wordepth.cli.options import build_parser, parse_args, run_cli, validate_args


def parse(argv, prog: str) -> argparse.Namespace:
    """The shared training/evaluation options (`wordepth.cli.options`), with `prog` in the usage line."""
    parser = build_parser()
    parser.prog = prog
    return parse_args(argv, parser=parser)


def dispatch(args: argparse.Namespace):
    """``--check_data``, ``--eval_only`` or training; returns the engine's result (a dict)."""
    if args.check_data:
        from wordepth.data.check import check_data_main

        return run_cli(check_data_main, args)
    if args.eval_only:
        from wordepth.engine import eval_main

        return run_cli(eval_main, args)
    from wordepth.engine import train_main

    return run_cli(train_main, args)


def main(argv=None):
    """Train (or ``--eval_only`` / ``--check_data``); returns the engine's result (a dict)."""
    args = parse(argv, "wordepth-train")
    validate_args(args, training=not args.eval_only)
    return dispatch(args)


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

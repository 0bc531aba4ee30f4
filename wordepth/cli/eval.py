"""``wordepth-eval``: evaluate a checkpoint, e.g. ``wordepth-eval CONFIG.txt --checkpoint_path model.pth``.

Prints the 9 metrics of the original protocol; ``--metrics_json``, ``--per_image_csv`` and
``--save_vis`` write them to files. Works with the original release's checkpoints and configs.
The options are defined in `wordepth.cli.options`.
"""
from wordepth.cli.train import dispatch, parse
from wordepth.cli.options import validate_args


def main(argv=None):
    """Evaluate (or ``--check_data``); returns the metrics (a dict)."""
    args = parse(argv, "wordepth-eval")
    args.eval_only = True
    validate_args(args, training=False)
    return dispatch(args)


def console() -> None:
    """The ``wordepth-eval`` command: `main` without its result (a console command's return is its exit status)."""
    main()


if __name__ == "__main__":
    main()

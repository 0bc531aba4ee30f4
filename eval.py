"""Evaluate a checkpoint: ``python eval.py CONFIG.txt --checkpoint_path model.pth``.

Prints the 9 metrics of the original protocol; ``--metrics_json``, ``--per_image_csv`` and
``--save_vis`` write them to files. Works with the original release's checkpoints and configs.
"""
from wordepth.config import parse_args, run_cli, validate_args


def main(argv=None):
    args = parse_args(argv)
    args.eval_only = True
    validate_args(args, training=False)
    if args.check_data:
        from wordepth.data.check import check_data_main

        return run_cli(check_data_main, args)
    from wordepth.engine import eval_main

    return run_cli(eval_main, args)


if __name__ == "__main__":
    main()

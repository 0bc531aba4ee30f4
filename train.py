"""Train WorDepth: ``python train.py configs/arguments_train_nyu.txt`` (original configs accepted).

Multi-GPU: ``torchrun --nproc_per_node=N train.py CONFIG.txt``. ``--eval_only`` evaluates
``--checkpoint_path`` instead, as the original did.
"""
from wordepth.config import parse_args, run_cli, validate_args


def main(argv=None):
    args = parse_args(argv)
    validate_args(args, training=not args.eval_only)
    if args.check_data:
        from wordepth.data.check import check_data_main

        return run_cli(check_data_main, args)
    if args.eval_only:
        from wordepth.engine import eval_main

        return run_cli(eval_main, args)
    from wordepth.engine import train_main

    return run_cli(train_main, args)


if __name__ == "__main__":
    main()

"""Train WorDepth: ``python train.py configs/arguments_train_nyu.txt`` (the ``wordepth-train`` command)."""
from wordepth.cli.train import main

if __name__ == "__main__":
    main()

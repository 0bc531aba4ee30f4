"""Train WorDepth: ``python train.py configs/arguments_train_nyu.txt`` (the ``wordepth-train`` command)."""
from wordepth.cli.train import console, main  # noqa: F401  (main: for Python callers and tests)

if __name__ == "__main__":
    console()

"""Train WorDepth: ``python train.py configs/arguments_train_nyu.txt`` (the ``wordepth-train`` command)."""
from wordepth.cli.train import console, main

__all__ = ["console", "main"]  # main returns the result to Python callers; console exits 130/143 after a signal

if __name__ == "__main__":
    console()

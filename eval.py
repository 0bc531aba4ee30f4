"""Evaluate a checkpoint: ``python eval.py CONFIG.txt --checkpoint_path model.pth`` (the ``wordepth-eval`` command)."""
from wordepth.cli.eval import main

if __name__ == "__main__":
    main()

"""Depth for your own images with a trained WorDepth model (see ``wordepth/predict.py``).

    python scripts/predict.py --checkpoint nyu.pth --dataset nyu --images room.jpg \\
        --caption "a bedroom with a stand and a bed" --out pred/ --ply
    python scripts/predict.py --checkpoint nyu.pth --caption "a bedroom with a stand and a bed" \\
        --prior 8 --seed 0 --out prior/
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wordepth.predict import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

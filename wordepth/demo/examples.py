"""What the toy demo shows before its model is loaded: the example rooms and their captions (no torch).

The web app (``wordepth-app --demo``) serves its page with these, then loads the model
(:mod:`wordepth.demo.toy`, which re-exports every name here) behind a status line.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from wordepth.data.generated.scale_rooms import SCALES, caption_for, render_layout
from wordepth.outputs import write_array

__all__ = ["DEMO_CAPTIONS", "DEMO_OBJECTS", "TRAIN_HW", "cache_dir", "example_images"]

TRAIN_HW = (64, 96)  # the toy model's training size (height, width)
# the demo's example scene: one layout of the held-out rooms, at each scale
DEMO_OBJECTS = ("sofa", "bed")
DEMO_CAPTIONS = tuple(caption_for(s, DEMO_OBJECTS) for s in SCALES)


def cache_dir() -> Path:
    """``$WORDEPTH_CACHE``, else ``$XDG_CACHE_HOME/wordepth``, else ``~/.cache/wordepth``."""
    if os.environ.get("WORDEPTH_CACHE"):
        return Path(os.environ["WORDEPTH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wordepth"


def example_images(out_dir: str | os.PathLike, n: int = 3, zoom: int = 3, seed: int = 2
                   ) -> list[tuple[Path, tuple[str, str]]]:
    """Render ``n`` held-out rooms (layouts the demo model never saw) at ``zoom`` times the training size.

    The first holds the demo's objects (:data:`DEMO_OBJECTS`), so that :data:`DEMO_CAPTIONS` fit it.
    Deterministic; files that exist are kept. Returns each PNG's path and the two objects in it.
    """
    out_dir = Path(out_dir)  # created by the first write
    rng = np.random.default_rng(seed)
    paths = []
    for _ in range(200):
        if len(paths) == n:
            break
        before = rng.bit_generator.state
        _, _, names = render_layout(rng, 8, 12, supersample=1)  # cheap: only the layout's objects matter here
        if not paths and set(names) != set(DEMO_OBJECTS):
            continue
        path = out_dir / f"room_{len(paths)}_{names[0]}_{names[1]}.png"
        if not path.is_file():
            after = rng.bit_generator.state
            rng.bit_generator.state = before  # the same layout (drawn first), at full size
            image, _, _ = render_layout(rng, TRAIN_HW[0] * zoom, TRAIN_HW[1] * zoom)
            rng.bit_generator.state = after  # the next layouts do not depend on what was cached
            write_array(path, image)
        paths.append((path, names))
    return paths

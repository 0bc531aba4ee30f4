"""Shared fixtures: the reference folder with the original release's golden data, a tiny checkpoint."""
import os
from pathlib import Path

import pytest
import torch

from wordepth.models.wordepth import WorDepth, preset_config

ROOT = Path(__file__).resolve().parents[1]


def reference_dir() -> Path | None:
    """`../shared/reference` beside the project root, or $WORDEPTH_REFERENCE_DIR."""
    env = os.environ.get("WORDEPTH_REFERENCE_DIR")
    path = Path(env) if env else ROOT.parent / "shared" / "reference"
    return path if (path / "README.md").is_file() else None


@pytest.fixture(scope="session")
def reference() -> Path:
    path = reference_dir()
    if path is None:
        pytest.skip("reference data (../shared/reference) not found; set WORDEPTH_REFERENCE_DIR")
    return path


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A checkpoint (this project's ``.pth`` format) of the tiny preset with seed-0 random weights."""
    torch.manual_seed(0)
    model = WorDepth(preset_config("tiny"))
    path = tmp_path_factory.mktemp("tiny") / "tiny.pth"
    torch.save({"format": "wordepth", "config": {"model": model.cfg.to_dict()}, "model": model.state_dict()}, path)
    return path

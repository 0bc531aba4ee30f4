"""Shared fixtures: the reference folder with the original release's golden data."""
import os
from pathlib import Path

import pytest

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

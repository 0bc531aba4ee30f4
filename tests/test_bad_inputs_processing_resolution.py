"""Bad inputs to ``python -m benchmarks.processing_resolution`` (docs/demo.md's table), through the catalogue:
exit status 1, one ``error:`` line naming the option or file, no traceback, nothing written, no demo trained."""
from __future__ import annotations

import json
import shutil

import pytest

from benchmarks import processing_resolution as pr
from tests.catalogue import run_case


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo folder at the demo's quick settings (seconds)."""
    from wordepth.cli import demo as demo_cli

    out = tmp_path_factory.mktemp("bad_resolution") / "demo_output"
    demo_cli.main(["--out", str(out), *pr.QUICK_DEMO])
    return out


BAD_VALUES = [
    (["--scales", "abc"], ["--scales", "abc"]),
    (["--scales", "0.5,0"], ["--scales", "above 0"]),
    (["--scales", "1,nan"], ["--scales", "above 0"]),
    (["--scales", ""], ["--scales"]),
    (["--zoom", "0"], ["--zoom"]),
    (["--runs", "0"], ["--runs"]),
    (["--threads", "-1"], ["--threads"]),
]


@pytest.mark.parametrize("argv, names", BAD_VALUES, ids=[" ".join(argv) for argv, _ in BAD_VALUES])
def test_bad_option_values_stop_before_any_work(tmp_path, argv, names):
    """Checked before the demo would be trained into --demo (which does not exist here)."""
    run_case(pr.main, ["--demo", tmp_path / "demo_output", *argv], tmp_path, names=names)
    assert not (tmp_path / "demo_output").exists()


def test_demo_that_is_a_file(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a demo\n")
    run_case(pr.main, ["--demo", notes], tmp_path, names=["--demo", "notes.txt"])


def test_demo_folder_without_its_data(demo, tmp_path):
    """A model but no held-out rooms (data/ deleted): the split file is named, and how to remake it."""
    folder = tmp_path / "partial"
    (folder / "run").mkdir(parents=True)
    shutil.copy(demo / "run" / "last.pth", folder / "run" / "last.pth")
    run_case(pr.main, ["--demo", folder], tmp_path, names=["nyudepthv2_test_files_with_gt.txt", "run_demo.sh"])


def test_demo_folder_whose_rooms_are_not_its_runs(demo, tmp_path):
    """The larger rooms are rendered from the run's seed; a folder whose rooms came from another seed is refused
    rather than scored against other rooms."""
    folder = tmp_path / "mixed"
    shutil.copytree(demo, folder)
    config = json.loads((folder / "run" / "config.json").read_text())
    config["run"]["seed"] = config["run"]["seed"] + 5
    (folder / "run" / "config.json").write_text(json.dumps(config))
    run_case(pr.main, ["--demo", folder, "--quick"], tmp_path, names=["mixed", "seed"])

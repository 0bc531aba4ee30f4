"""Bad-input catalogue: a run's config.json (wordepth.config.RunRecord) when a run is resumed or evaluated.

Each case: one ``error:`` line naming the file and the key, exit status 1, nothing else changed.
"""
from __future__ import annotations

import json
import shutil

import pytest

import eval as eval_entry
import train as train_entry
from tests.catalogue import run_case
from tests.train_args import train_argv
from wordepth.data.generated.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step tiny run (its last.pth and config.json), copied fresh by each case."""
    root = tmp_path_factory.mktemp("cfg")
    data = make_synthetic_dataset(root / "syn", "nyu", n_train=4, n_test=2, height=64, width=96, seed=0)
    train_entry.main(train_argv(data, root / "runs", "r", max_steps=2))
    return data, root / "runs" / "r"


def _case(trained, tmp_path, edit) -> tuple[dict, object]:
    data, run = trained
    copy = tmp_path / "runs" / "r"
    shutil.copytree(run, copy)
    (copy / ".lock").unlink(missing_ok=True)
    config = copy / "config.json"
    d = json.loads(config.read_text())
    text = edit(d)
    config.write_text(text if isinstance(text, str) else json.dumps(d))
    return data, copy


@pytest.mark.parametrize("edit,names", [
    (lambda d: d["optim"].update(lerning_rate=1e-3), ["config.json", "unknown key optim.lerning_rate"]),
    (lambda d: d["data"].pop("input_height"), ["config.json", "missing key data.input_height"]),
    (lambda d: d["optim"].update(batch_size="2"), ["config.json", "optim.batch_size must be int"]),
    (lambda d: d.update(version=7), ["config.json", "version 7"]),
], ids=["unknown-key", "missing-key", "wrong-type", "other-version"])
def test_resume_with_a_broken_config_json_is_one_line(trained, tmp_path, edit, names):
    data, run = _case(trained, tmp_path, edit)
    run_case(train_entry.main, train_argv(data, tmp_path / "runs", "r", max_steps=3,
                                          checkpoint_path=run / "last.pth"),
             tmp_path, names=names, may_change=[run / "train.log", run / ".lock"])


def test_resume_with_settings_other_than_config_json_names_them(trained, tmp_path):
    data, run = _case(trained, tmp_path, lambda d: d["optim"].update(batch_size=3))
    run_case(train_entry.main, train_argv(data, tmp_path / "runs", "r", max_steps=3,
                                          checkpoint_path=run / "last.pth"),
             tmp_path, names=["last.pth", "--batch_size 2 (the checkpoint's: 3)", "--force_config"],
             may_change=[run / "train.log", run / ".lock"])


def test_evaluating_a_last_pth_ignores_a_broken_config_json_beside_it(trained, tmp_path):
    """A checkpoint that records its own network does not need its run's config.json to be evaluated."""
    data, run = _case(trained, tmp_path, lambda d: '{"format": "wordepth-run", ')
    argv = [a for a in train_argv(data, tmp_path / "runs", "r") if a not in ("--max_steps", "6")]
    metrics = eval_entry.main(argv + ["--checkpoint_path", str(run / "last.pth")])
    assert metrics["count"] == 2

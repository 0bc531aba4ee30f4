"""The typed run configuration: argparse stays in wordepth/cli/, config.json round trip and validation,
resume reading config.json, and every loss term reaching the log and TensorBoard."""
from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from tests.tensorboard_events import summary_values

import train as train_entry
from tests.train_args import train_argv
from wordepth.cli.options import build_parser, parse_args, run_config
from wordepth.config import (SECTIONS, ConfigError, RunConfig, RunRecord, read_run_record, saved_run_record)
from wordepth.data.generated.synthetic import make_synthetic_dataset
from wordepth.models.wordepth import WorDepth, preset_config

PACKAGE = Path(__file__).resolve().parents[1] / "wordepth"

# Uses of the parsed argparse.Namespace outside wordepth/cli/ that are allowed, each with its reason
# ("path:line-text" -> why). The issue allows at most 10; today there is none.
EXPLAINED_NAMESPACE_USES: dict[str, str] = {}


def _namespace_uses(package: Path = PACKAGE) -> list[str]:
    """``args.X`` reads and ``Namespace`` references (parameters typed with it, isinstance checks) outside
    wordepth/cli/, as ``path:line``."""
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).as_posix()
        if rel.startswith("wordepth/cli/"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            hit = (
                (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "args")
                or (isinstance(node, ast.Attribute) and node.attr == "Namespace")
                or (isinstance(node, ast.Name) and node.id == "Namespace")
            )
            if hit:
                found.append(f"{rel}:{node.lineno}")
    return sorted(found, key=lambda u: (u.rsplit(":", 1)[0], int(u.rsplit(":", 1)[1])))


def test_the_parsed_namespace_does_not_leave_the_cli():
    uses = _namespace_uses()
    unexplained = [u for u in uses if u not in EXPLAINED_NAMESPACE_USES]
    assert not unexplained, f"argparse.Namespace used outside wordepth/cli/: {unexplained}"
    assert len(uses) <= 10


def test_the_scan_finds_a_namespace_use(tmp_path):
    """The scan above is not vacuous: library code taking or reading the Namespace is found, cli/ is not."""
    fake = tmp_path / "wordepth"
    (fake / "cli").mkdir(parents=True)
    (fake / "lib.py").write_text("import argparse\n\n\ndef f(args: argparse.Namespace):\n"
                                 "    return args.learning_rate\n")
    (fake / "cli" / "ok.py").write_text("def g(args):\n    return args.learning_rate\n")
    assert sorted(_namespace_uses(fake)) == ["wordepth/lib.py:4", "wordepth/lib.py:5"]


def test_every_option_has_one_typed_home_with_the_parsers_default():
    parser = build_parser()
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    fields = {f.name: f for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    assert dests == set(fields) - {"unknown_flags"}
    defaults = parser.parse_args([])
    for name in dests - {"dataset"}:  # --dataset: None until --variant or the NYU default fills it in
        assert getattr(defaults, name) == fields[name].default, name


def test_built_once_from_the_options_and_the_original_config_files(tmp_path):
    cfg_file = tmp_path / "arguments_train_nyu.txt"
    cfg_file.write_text("--mode train\n--batch_size 8\n# a comment\n--learning_rate 3e-5\n--end_learning_rate 1e-5\n"
                        "--do_random_rotate\n--degree 2.5\n--eigen_crop\n--adam_eps 1e-3\n")
    cfg = run_config(parse_args([str(cfg_file), "--seed", "3"]))
    assert (cfg.optim.batch_size, cfg.optim.learning_rate, cfg.optim.end_lr) == (8, 3e-5, 1e-5)
    assert cfg.data.do_random_rotate and cfg.data.degree == 2.5 and cfg.run.seed == 3
    assert cfg.protocol.crop == "eigen" and cfg.protocol.max_depth == 10.0  # NYU's by default
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.optim.batch_size = 1
    changed = cfg.with_options(filenames_file="split_train.txt", batch_size=2)
    assert changed.data.filenames_file == "split_train.txt" and changed.optim.batch_size == 2
    assert cfg.optim.batch_size == 8  # a copy


def _record() -> RunRecord:
    cfg = run_config(parse_args(["--variant", "kitti_legacy", "--batch_size", "3", "--val_split", "0.1",
                                 "--select_metric", "d1", "--do_online_eval", "--max_steps", "7"]))
    return RunRecord(config=cfg, network=preset_config("tiny", legacy=True, max_depth=80.0, prior_mean=2.54),
                     world_size=2, steps_per_epoch=5, total_steps=7, git_commit="abc", provenance={"seed": 0})


def test_run_record_round_trips_through_json(tmp_path):
    record = _record()
    path = record.write(tmp_path)
    assert path == tmp_path / "config.json"
    back = read_run_record(path)
    assert back == record and back.config.eval.val_split == "0.1" and back.config.eval.select_metric == "d1"
    assert back.network.backbone.depths == (2, 2, 2, 2) and back.preset == "tiny"
    raw = json.loads(path.read_text())
    assert raw["optim"]["batch_size"] == 3 and raw["model"]["legacy"] is True and raw["data"]["dataset"] == "kitti"


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["optim"].update(lerning_rate=1.0), r": unknown key optim\.lerning_rate; the keys of 'optim' are "),
    (lambda d: d["optim"].pop("batch_size"), r": missing key optim\.batch_size"),
    (lambda d: d["optim"].update(batch_size="4"), r": optim\.batch_size must be int, got '4'"),
    (lambda d: d["optim"].update(batch_size=True), r": optim\.batch_size must be int, got True"),
    (lambda d: d["eval"].update(val_split=0.1), r": eval\.val_split must be str or null, got 0\.1"),
    (lambda d: d.pop("data"), r": missing section\(s\) data"),
    (lambda d: d.update(extra=1), r": unknown key extra"),
    (lambda d: d.update(version=99), r"version 99 is not a run configuration this version reads"),
    (lambda d: d["resolved"].pop("total_steps"), r": missing key resolved\.total_steps"),
    (lambda d: d["resolved"]["network"]["backbone"].update(embed_dim=-4), r"the recorded network: "),
])
def test_a_bad_config_json_is_one_line_naming_the_file_and_the_key(tmp_path, edit, message):
    d = _record().to_dict()
    edit(d)
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=str(tmp_path / "config.json").replace(".", r"\.") + ".*" + message) as err:
        read_run_record(tmp_path / "config.json")
    assert "\n" not in str(err.value)


def test_a_float_field_takes_a_json_integer():
    d = _record().to_dict()
    d["optim"]["learning_rate"] = 1
    cfg = RunConfig.from_dict(d)
    assert cfg.optim.learning_rate == 1.0 and isinstance(cfg.optim.learning_rate, float)


def test_an_earlier_versions_flat_config_json_is_read(tmp_path):
    """Run folders of earlier versions stored the options flat, with the network as ``model_config``."""
    flat = {**vars(parse_args(["--batch_size", "5", "--val_split", "0.2"])), "preset": "tiny",
            "model_config": preset_config("tiny").to_dict(), "git_commit": "old", "world_size": 1,
            "steps_per_epoch": 4, "total_steps": 8, "provenance": {}}
    flat["unknown_flags"] = list(flat["unknown_flags"])
    flat.pop("nonfinite")  # an option the earlier version did not have: its default
    (tmp_path / "config.json").write_text(json.dumps(flat, default=str))
    record = read_run_record(tmp_path / "config.json")
    assert record.config.optim.batch_size == 5 and record.config.eval.val_split == "0.2"
    assert record.config.eval.nonfinite == "clamp" and record.total_steps == 8
    (tmp_path / "config.json").write_text(json.dumps({"batch_size": 5}))
    with pytest.raises(ConfigError, match="neither a run configuration of this version"):
        read_run_record(tmp_path / "config.json")


def test_another_tools_config_json_beside_a_checkpoint_is_not_used(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Foo"]}))
    assert saved_run_record(tmp_path / "model.pth", None) is None


# --------------------------------------------------------------------------- through wordepth-train
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("syn"), "nyu", n_train=4, n_test=2, height=64, width=96,
                                  seed=0)


def test_resume_reads_the_runs_config_json(data, tmp_path):
    train_entry.main(train_argv(data, tmp_path, "r", max_steps=2))
    run = tmp_path / "r"
    record = read_run_record(run / "config.json")
    assert record.config.optim.batch_size == 2 and record.total_steps == 2
    last = str(run / "last.pth")
    # what config.json says is what the resume is checked against
    d = record.to_dict()
    d["optim"]["batch_size"] = 3
    (run / "config.json").write_text(json.dumps(d))
    with pytest.raises(SystemExit) as err:  # one error line
        train_entry.main(train_argv(data, tmp_path, "r", max_steps=3, checkpoint_path=last))
    assert str(err.value.code).startswith("error: resuming ") and "--batch_size 2 (the checkpoint's: 3)" in str(
        err.value.code) and "\n" not in str(err.value.code)
    d["optim"]["batch_size"] = 2
    d["optim"]["lerning_rate"] = 1e-3
    (run / "config.json").write_text(json.dumps(d))
    with pytest.raises(SystemExit) as err:
        train_entry.main(train_argv(data, tmp_path, "r", max_steps=3, checkpoint_path=last))
    assert f"{run / 'config.json'}: unknown key optim.lerning_rate" in str(err.value.code)
    d["optim"].pop("lerning_rate")
    (run / "config.json").write_text(json.dumps(d))
    out = train_entry.main(train_argv(data, tmp_path, "r", max_steps=3, checkpoint_path=last))
    assert out["global_step"] == 3
    resumed = read_run_record(run / "config.json")
    assert resumed.run_id == record.run_id and resumed.total_steps == 3  # the same run, resumed


def test_resume_refusal_names_the_setting_and_config_json(data, tmp_path, capsys):
    from wordepth.cli.train import check_resume_settings
    from wordepth.errors import UserError

    record = _record()
    now = record.config.with_options(learning_rate=5e-4)
    with pytest.raises(UserError, match=r"--learning_rate 0\.0005 \(the checkpoint's: 0\.0001\)"):
        check_resume_settings(record, now, 2, "run/last.pth")
    check_resume_settings(record, record.config, 2, "run/last.pth")  # the same settings: resumed


class WithSmoothness(WorDepth):
    """A researcher's edit: one more loss term (and a non-scalar one that is not logged)."""

    def training_loss(self, image, text, depth_gt, branch, eps=None, generator=None):
        out = super().training_loss(image, text, depth_gt, branch, eps=eps, generator=generator)
        dx = (out["depth"][..., 1:] - out["depth"][..., :-1]).abs()
        out["smooth"] = dx.mean()
        out["loss"] = out["loss"] + 0.01 * out["smooth"]
        out["edges"] = dx.mean(dim=(1, 2, 3))  # per image: not a scalar
        return out


def _scalar_tags(summary: Path) -> dict[str, list[float]]:
    tags: dict[str, list[float]] = {}
    for tag, kind, value in summary_values(summary.glob("events.out.tfevents.*")):
        if kind == "simple_value":
            tags.setdefault(tag, []).append(value)
    return tags


def test_a_new_loss_term_reaches_the_log_line_and_tensorboard(data, tmp_path, monkeypatch):
    import wordepth.build

    monkeypatch.setattr(wordepth.build, "WorDepth", WithSmoothness)
    out = train_entry.main(train_argv(data, tmp_path, "s", max_steps=2, log_freq=1))
    assert out["global_step"] == 2
    log = (tmp_path / "s" / "train.log").read_text()
    lines = [line for line in log.splitlines() if " loss " in line and " step " in line]
    assert len(lines) == 2 and all("smooth " in line and "silog " in line for line in lines)
    assert not any("edges" in line for line in lines)
    tags = _scalar_tags(tmp_path / "s" / "summary")
    assert len(tags["train/smooth"]) == 2 and all(v > 0 for v in tags["train/smooth"])
    assert "train/loss" in tags and "train/silog" in tags and "train/edges" not in tags
    assert any(t.startswith("train/kl_") for t in tags)

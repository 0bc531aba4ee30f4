"""Seed sweeps (wordepth.sweep, wordepth-sweep): selection rules, mean ± std, the report and its plot."""
import json
import sys

import cv2
import numpy as np
import pytest

from wordepth.metrics import METRIC_NAMES
from wordepth.reproducibility import PAPER_RESULTS
from wordepth.sweep import (aggregate, curves, markdown_report, plot_curves, read_history, select_last,
                            select_on_test, select_on_val, seed_report, summarise, torchrun_command, train_command,
                            write_sweep_report)


def rec(step, split, abs_rel, d1, final=False, **over):
    m = {n: 1.0 for n in METRIC_NAMES}
    m.update(abs_rel=abs_rel, d1=d1, **over)
    return {"step": step, "split": split, "final": final, "updates": step + 1, **m}


# test abs_rel is best at step 4, test d1 at step 2; validation abs_rel best at step 2; a final eval at 5
HISTORY = [
    rec(2, "val", 0.20, 0.70), rec(2, "test", 0.30, 0.90),
    rec(4, "val", 0.25, 0.60), rec(4, "test", 0.10, 0.50),
    rec(5, "val", 0.22, 0.65, final=True), rec(5, "test", 0.05, 0.95, final=True),
]


def test_selected_on_test_is_the_best_of_each_metric_over_online_evaluations_only():
    sel = select_on_test(HISTORY)
    assert sel["rule"] == "selected on test"
    assert sel["metrics"]["abs_rel"] == 0.10 and sel["steps"]["abs_rel"] == 4  # not the final eval's 0.05
    assert sel["metrics"]["d1"] == 0.90 and sel["steps"]["d1"] == 2  # each metric its own step


def test_selected_on_validation_reports_the_test_metrics_of_that_step():
    sel = select_on_val(HISTORY, "abs_rel")
    assert sel["step"] == 2 and sel["metrics"]["abs_rel"] == 0.30 and sel["val_metrics"]["abs_rel"] == 0.20
    assert select_on_val(HISTORY, "d1")["step"] == 2
    assert select_on_val([r for r in HISTORY if r["split"] == "test"]) is None  # no validation split
    with pytest.raises(ValueError, match="unknown metric"):
        select_on_val(HISTORY, "accuracy")


def test_last_is_the_final_evaluation():
    assert select_last(HISTORY)["metrics"]["abs_rel"] == 0.05
    assert set(seed_report(HISTORY)) == {"test", "val", "last"}


def test_aggregate_mean_and_sample_std():
    agg = aggregate([{"abs_rel": 0.1}, {"abs_rel": 0.2}, {"abs_rel": 0.3}])
    assert agg["abs_rel"]["mean"] == pytest.approx(0.2)
    assert agg["abs_rel"]["std"] == pytest.approx(0.1)  # n - 1 in the denominator
    assert agg["abs_rel"]["n"] == 3
    assert aggregate([{"abs_rel": 0.1}])["abs_rel"]["std"] == 0.0


def test_read_history_keeps_the_later_of_a_repeated_record(tmp_path):
    path = tmp_path / "eval_history.jsonl"
    lines = [rec(2, "test", 0.3, 0.9), rec(4, "test", 0.2, 0.9), rec(4, "test", 0.25, 0.9)]  # resumed run
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    hist = read_history(path)
    assert [r["step"] for r in hist] == [2, 4] and hist[1]["abs_rel"] == 0.25
    assert read_history(tmp_path / "missing.jsonl") == []
    path.write_text("not json\n")
    with pytest.raises(ValueError, match="line 1"):
        read_history(path)


def test_markdown_report_labels_the_rules_and_shows_the_paper():
    reports = {0: seed_report(HISTORY), 1: seed_report(HISTORY)}
    md = markdown_report(summarise(reports), "nyu")
    assert "## selected on test" in md and "## selected on validation (abs_rel)" in md and "## last checkpoint" in md
    assert "| paper (nyu_legacy) |" in md and f"{PAPER_RESULTS['nyu']['abs_rel']:.4f}" in md
    assert "0.1000 ± 0.0000" in md  # abs_rel selected on test, both seeds equal
    assert "| seed 1 |" in md


def test_curves_and_plot_show_the_band(tmp_path):
    h1 = [rec(s, "test", 0.3 - 0.01 * s, 0.8) for s in (2, 4, 6)]
    h2 = [rec(s, "test", 0.4 - 0.01 * s, 0.8) for s in (2, 4, 6)]
    data = curves([h1, h2])
    steps, values = data["abs_rel"]
    assert steps.tolist() == [2, 4, 6] and values.shape == (2, 3)
    img = plot_curves(data, "test")
    assert img.dtype == np.uint8 and img.ndim == 3
    # the band (a light tint of the mean's colour) is drawn: pixels neither white nor grey
    tinted = (np.abs(img.astype(int) - img.mean(axis=2, keepdims=True)).max(axis=2) > 20).mean()
    assert tinted > 0.01
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_curves({}, "x")


def test_write_sweep_report(tmp_path):
    paths = write_sweep_report(tmp_path / "sweep", {0: HISTORY, 3: HISTORY}, "kitti",
                               provenance={"git": {"commit": "abc"}})
    data = json.loads(paths["json"].read_text())
    assert data["seeds"] == [0, 3] and data["paper"]["metrics"]["rms"] == PAPER_RESULTS["kitti"]["rms"]
    assert data["rules"]["test"] == "selected on test"
    assert data["summary"]["val"]["mean_std"]["abs_rel"]["mean"] == pytest.approx(0.30)
    assert data["provenance"]["git"]["commit"] == "abc"
    for key in ("png_test", "png_val"):
        assert cv2.imread(str(paths[key])) is not None
    with pytest.raises(ValueError, match="no test evaluation"):
        write_sweep_report(tmp_path / "s2", {0: [rec(2, "val", 0.2, 0.7)]}, "nyu")


def test_commands_pass_the_training_options_through():
    cmd = train_command(["configs/x.txt", "--batch_size", "2"], 7, "nyu", resume="runs/nyu_seed7/last.pth")
    assert cmd[:3] == [sys.executable, "-m", "wordepth.cli.train"]
    assert cmd[cmd.index("--seed") + 1] == "7" and cmd[cmd.index("--model_name") + 1] == "nyu_seed7"
    assert cmd[-2:] == ["--checkpoint_path", "runs/nyu_seed7/last.pth"]
    line = torchrun_command(["configs/x.txt"], 1, "nyu", nproc=4)
    assert line.startswith("torchrun --nproc_per_node=4 -m wordepth.cli.train configs/x.txt --seed 1")


def test_dry_run_prints_one_torchrun_job_per_seed_and_writes_nothing(tmp_path, capsys):
    from wordepth.cli import sweep as sweep_cli

    argv = ["--seeds", "3", "4", "--dry_run", "--nproc_per_node", "2", "--model_name", "m", "--log_directory",
            str(tmp_path), "--data_path", "d", "--gt_path", "d", "--filenames_file", "f.txt", "--data_path_eval", "d",
            "--gt_path_eval", "d", "--filenames_file_eval", "f.txt"]
    out = sweep_cli.main(argv)
    assert len(out["torchrun"]) == 2 and "--seed 4 --model_name m_seed4" in out["torchrun"][1]
    assert "torchrun --nproc_per_node=2" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())
    with pytest.raises(SystemExit, match="twice"):
        sweep_cli.main([*argv, "--seeds", "1", "1"])


# --------------------------------------------------------------------------- end to end: three seeds, tiny preset
@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """One shared sweep: three seeds of the tiny preset on synthetic data, a scene-level validation split."""
    from wordepth.cli import sweep as sweep_cli
    from wordepth.data.generated.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("sweep")
    data = make_synthetic_dataset(root / "data", "nyu", n_train=12, n_test=2, height=64, width=96, seed=0)
    argv = ["--seeds", "0", "1", "2", "--model_name", "tiny", "--log_directory", str(root / "runs"),
            "--preset", "tiny", "--dataset", "nyu", "--data_path", str(data["data_path"]),
            "--gt_path", str(data["gt_path"]), "--filenames_file", str(data["train_split"]),
            "--text_feat_dir", str(data["text_feat_dir"]), "--data_path_eval", str(data["data_path_eval"]),
            "--gt_path_eval", str(data["gt_path_eval"]), "--filenames_file_eval", str(data["test_split"]),
            "--input_height", "64", "--input_width", "96", "--batch_size", "2", "--num_epochs", "100",
            "--max_steps", "5", "--eval_freq", "2", "--learning_rate", "1e-3", "--end_learning_rate", "1e-4",
            "--max_depth", "10", "--max_depth_eval", "10", "--num_threads", "0", "--log_freq", "100",
            "--val_split", "0.3", "--deterministic", "--no_tqdm"]
    report = sweep_cli.main(argv)
    assert report["seeds"] == [0, 1, 2] and set(report["rules"]) == {"test", "val", "last"}
    return root, data


def test_sweep_reports_three_seeds_with_mean_std_next_to_the_paper(tiny_sweep):
    root, _ = tiny_sweep
    out = root / "runs" / "tiny_sweep"
    md = (out / "sweep.md").read_text()
    for label in ("## selected on test", "## selected on validation (abs_rel)", "## last checkpoint"):
        assert label in md
    assert md.count("| seed ") == 9 and "mean ± std** (n=3)" in md and "| paper (nyu_legacy) |" in md
    data = json.loads((out / "sweep.json").read_text())
    assert data["seeds"] == [0, 1, 2]
    per_seed = data["summary"]["test"]["per_seed"]
    assert len({v["abs_rel"] for v in per_seed.values()}) == 3  # the seeds differ
    mean = data["summary"]["test"]["mean_std"]["abs_rel"]["mean"]
    assert mean == pytest.approx(np.mean([v["abs_rel"] for v in per_seed.values()]))
    prov = data["provenance"]
    assert prov["seeds"] == [0, 1, 2] and prov["steps"] == 5 and "selected on test" in prov["selection"]
    assert prov["packages"]["torch"] and prov["hardware"]["cpu_count"] and len(prov["torchrun"]) == 3
    for split in ("test", "val"):
        img = cv2.imread(str(out / f"sweep_{split}.png"))
        assert img is not None and img.shape[0] > 300
    assert json.loads((out / "seed_1.json").read_text())["provenance"]["seed"] == 1


def test_sweep_runs_hold_out_whole_scenes_and_keep_the_validation_choice(tiny_sweep):
    from wordepth.data.holdout import scene_of
    from wordepth.data.splits import read_split

    root, data = tiny_sweep
    run = root / "runs" / "tiny_seed0"
    train, val = read_split(run / "split_train.txt"), read_split(run / "split_val.txt")
    assert train and val and len(train) + len(val) == len(read_split(data["train_split"]))
    assert {scene_of(e.rgb) for e in train}.isdisjoint({scene_of(e.rgb) for e in val})
    history = read_history(run / "eval_history.jsonl")
    assert {r["split"] for r in history} == {"test", "val"}
    chosen = select_on_val(history)
    assert len(list(run.glob(f"model-{chosen['step']}-best_val_abs_rel_*"))) == 1
    assert len(list(run.glob("model-*-best_val_*"))) == 1  # the previous best was replaced


def test_overwrite_removes_a_replaced_runs_history_and_split_files(tmp_path):
    from wordepth.runfolder import replaced_run_files

    for name in ("eval_history.jsonl", "split_train.txt", "split_val.txt", "model-4-best_val_abs_rel_0.20000",
                 "last.pth"):
        (tmp_path / name).write_text("x")
    found = {p.name for p in replaced_run_files(tmp_path)}
    assert {"eval_history.jsonl", "split_train.txt", "split_val.txt", "model-4-best_val_abs_rel_0.20000"} <= found
    assert "last.pth" not in found

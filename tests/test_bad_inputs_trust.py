"""Bad-input catalogue, round four: sweeps, held-out splits, typos and temporary files (issue 31).

Every case goes through :func:`tests.catalogue.run_case`: the exit status, one ``error:`` line naming
the file or option, no traceback, no file changed. One tiny run (2 steps, online evaluation) is
trained once per module; the sweep cases copy it as a seed's run, so none of them trains.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.catalogue import run_case
from wordepth.cli import eval as eval_cli
from wordepth.cli import predict as predict_cli
from wordepth.cli import sweep as sweep_cli
from wordepth.cli import train as train_cli
from wordepth.data.generated.synthetic import make_synthetic_dataset
from wordepth.data.holdout import HoldoutError, check_val_file
from wordepth.data.images import list_images
from wordepth.data.splits import SplitEntry
from wordepth.outputs import is_temporary, write_atomic, write_atomic_files
from wordepth.recorded import describe_selection, differing_settings, flat_settings, selection_changes
from wordepth.sweep import inspect_seed, release_lock_of, run_forwarding_signals

H, W = 64, 96


def common(data: dict, log_dir: Path) -> list:
    return ["--preset", "tiny", "--dataset", "nyu", "--data_path", data["data_path"], "--gt_path", data["gt_path"],
            "--filenames_file", data["train_split"], "--text_feat_dir", data["text_feat_dir"],
            "--data_path_eval", data["data_path_eval"], "--gt_path_eval", data["gt_path_eval"],
            "--filenames_file_eval", data["test_split"], "--input_height", H, "--input_width", W,
            "--batch_size", 2, "--num_epochs", 10, "--max_steps", 2, "--eval_freq", 1, "--learning_rate", "1e-3",
            "--max_depth_eval", 10, "--log_directory", log_dir, "--num_threads", 0, "--no_tqdm",
            "--log_freq", 1000, "--save_freq", 1000]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Synthetic NYU data and one finished 2-step run of seed 0 as ``wordepth-sweep`` trains it."""
    root = tmp_path_factory.mktemp("trust")
    data = make_synthetic_dataset(root / "d", "nyu", 8, 2, H, W, seed=0)
    argv = [str(a) for a in common(data, root / "trained")]
    train_cli.main([*argv, "--seed", "0", "--model_name", "m_seed0", "--do_online_eval", "--final_eval"])
    return {"root": root, "data": data, "argv": argv, "run": root / "trained" / "m_seed0"}


def seed_folder(world: dict, tmp_path: Path) -> Path:
    """A copy of the finished run as seed 0 of sweep ``m`` under ``tmp_path/runs``."""
    dst = tmp_path / "runs" / "m_seed0"
    shutil.copytree(world["run"], dst, ignore=shutil.ignore_patterns(".lock", "summary"))
    return dst


def sweep_argv(world: dict, tmp_path: Path, *extra) -> list:
    argv = list(world["argv"])
    argv[argv.index("--log_directory") + 1] = str(tmp_path / "runs")
    return ["--seeds", "0", "--model_name", "m", *argv, *extra]


# --------------------------------------------------------------------------- sweeps
def test_a_finished_seed_is_reused_only_with_the_same_settings(world, tmp_path):
    seed_folder(world, tmp_path)
    report = sweep_cli.main(sweep_argv(world, tmp_path))  # the same settings: nothing trains
    assert report["seeds"] == [0] and report["missing"] == {}
    sweep_json = tmp_path / "runs" / "m_sweep" / "sweep.json"
    before = sweep_json.read_bytes()
    out = run_case(sweep_cli.main, sweep_argv(world, tmp_path, "--learning_rate", "2e-2", "--max_steps", "3"),
                   tmp_path, names=["--learning_rate 0.001 (requested 0.02)", "--max_steps 2 (requested 3)",
                                    "--model_name", "--log_directory", "--replace_runs"])
    assert sweep_json.read_bytes() == before  # the earlier report is untouched
    assert "seed(s) 0" in out.error_lines()[0]


def test_a_half_finished_seed_is_never_reported_as_finished(world, tmp_path):
    run = seed_folder(world, tmp_path)
    state = inspect_seed(run, 0, sweep_cli.parse_args(world["argv"] + ["--do_online_eval", "--final_eval"]))
    assert state.state == "finished" and state.step == 2 and not state.differences
    config = json.loads((run / "config.json").read_text())
    text = json.dumps(config).replace('"total_steps": 2', '"total_steps": 5')  # as if it stopped at step 2 of 5
    (run / "config.json").write_text(text)
    state = inspect_seed(run, 0, sweep_cli.parse_args(world["argv"] + ["--do_online_eval", "--final_eval"]))
    assert state.state == "partial" and state.total == 5
    out = run_case(sweep_cli.main, sweep_argv(world, tmp_path, "--report_only"), tmp_path,
                   names=["no seed of the sweep finished", "seed 0", "stopped at step 2 of 5"])
    assert not (tmp_path / "runs" / "m_sweep" / "sweep.json").exists()
    assert out.code == 1


def test_a_seed_stopped_before_its_first_checkpoint_needs_replace_runs(world, tmp_path):
    run = seed_folder(world, tmp_path)
    (run / "last.pth").unlink()
    run_case(sweep_cli.main, sweep_argv(world, tmp_path), tmp_path,
             names=["seed 0", "nothing to resume", "--replace_runs", "--model_name"])


def test_report_only_and_replace_runs_contradict(world, tmp_path):
    run_case(sweep_cli.main, sweep_argv(world, tmp_path, "--report_only", "--replace_runs"), tmp_path,
             names=["--report_only", "--replace_runs"])


def test_sweep_report_names_the_missing_seeds(tmp_path):
    from tests.test_sweep import HISTORY
    from wordepth.sweep import write_sweep_report

    paths = write_sweep_report(tmp_path, {0: HISTORY, 2: HISTORY}, "nyu", missing={1: "ended with exit status 1"})
    data = json.loads(paths["json"].read_text())
    assert data["seeds"] == [0, 2] and data["missing"] == {"1": "ended with exit status 1"}
    md = paths["md"].read_text()
    assert "**2 of 3 seeds**" in md and "seed 1: ended with exit status 1" in md


# --------------------------------------------------------------------------- signals
CHILD = """
import signal, sys, time, pathlib
out = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    out.write_text(f"saved after {signal.Signals(signum).name}")
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
out.with_suffix(".started").write_text("x")
time.sleep(60)
"""

STUBBORN = """
import signal, sys, time, pathlib
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pathlib.Path(sys.argv[1]).with_suffix(".started").write_text("x")
time.sleep(60)
"""


def _signal_when_started(marker: Path, sig: int) -> threading.Thread:
    def send():
        deadline = time.monotonic() + 30
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        signal.raise_signal(sig)  # to this process, as `kill` or Ctrl-C would

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_reaches_the_training_child_which_saves_and_stops(tmp_path, sig):
    out = tmp_path / "child.txt"
    _signal_when_started(out.with_suffix(".started"), sig)
    t0 = time.monotonic()
    status, received = run_forwarding_signals([sys.executable, "-c", CHILD, str(out)])
    assert received == sig and status == 128 + sig
    assert out.read_text() == f"saved after {signal.Signals(sig).name}"  # the child's handler ran, not a kill
    assert time.monotonic() - t0 < 30


def test_a_child_that_does_not_stop_is_killed_and_its_lock_released(tmp_path):
    out = tmp_path / "child.txt"
    killed = []
    _signal_when_started(out.with_suffix(".started"), signal.SIGTERM)
    t0 = time.monotonic()
    status, received = run_forwarding_signals([sys.executable, "-c", STUBBORN, str(out)], grace_s=0.5,
                                              on_kill=killed.append)
    assert received == signal.SIGTERM and status == -signal.SIGKILL and len(killed) == 1
    assert time.monotonic() - t0 < 10
    (tmp_path / ".lock").write_text(json.dumps({"pid": killed[0]}))
    assert release_lock_of(tmp_path, killed[0] + 1) is False and (tmp_path / ".lock").exists()
    assert release_lock_of(tmp_path, killed[0]) is True and not (tmp_path / ".lock").exists()


@pytest.mark.slow
def test_sigterm_to_a_sweep_stops_its_training_saves_and_the_rerun_resumes(world, tmp_path):
    argv = sweep_argv(world, tmp_path)
    argv[argv.index("--max_steps") + 1] = "400"
    argv[argv.index("--eval_freq") + 1] = "1000"
    argv[argv.index("--num_epochs") + 1] = "1000"
    out, err_file = open(tmp_path / "out.txt", "w"), open(tmp_path / "err.txt", "w")  # no pipe to fill up
    proc = subprocess.Popen([sys.executable, "-m", "wordepth.cli.sweep", *argv], stdout=out, stderr=err_file)
    run = tmp_path / "runs" / "m_seed0"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # the training has made its first step (logged at step 1)
        if "step 1/400" in (tmp_path / "err.txt").read_text(errors="replace"):
            break
        time.sleep(0.2)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    out.close(), err_file.close()
    err = (tmp_path / "err.txt").read_text(errors="replace")
    assert time.monotonic() - t0 < 10, "the sweep took longer than 10 s to stop"
    assert proc.returncode == 143, err
    assert not (run / ".lock").exists()
    assert "run the same command again to resume" in err
    # on a loaded CPU one tiny step may outlast the grace period: then the child is killed, never half-saved
    if "was killed" not in err:
        assert (run / "last.pth").is_file()
    state = inspect_seed(run, 0, sweep_cli.parse_args(argv[4:] + ["--do_online_eval", "--final_eval"]))
    assert state.state in ("partial", "new") and not state.differences


# --------------------------------------------------------------------------- held-out selection
def _val_file(tmp_path: Path, lines: list[str]) -> Path:
    f = tmp_path / "val.txt"
    f.write_text("".join(line + "\n" for line in lines))
    return f


def test_a_validation_scene_outside_the_training_split_is_refused(world, tmp_path):
    val = _val_file(tmp_path, ["/nowhere_0001/rgb_00000.jpg /nowhere_0001/sync_depth_00000.png 518.8579"])
    argv = [*world["argv"], "--log_directory", tmp_path / "runs", "--model_name", "v", "--do_online_eval",
            "--val_split", val]
    run_case(train_cli.main, argv, tmp_path, names=["--val_split", "val.txt", "nowhere_0001", "training split"],
             out_root=tmp_path / "runs")


def test_a_validation_image_that_does_not_exist_is_refused(world, tmp_path):
    first = Path(world["data"]["train_split"]).read_text().splitlines()[0].split()
    scene = first[0].strip("/").split("/")[0]
    val = _val_file(tmp_path, [f"/{scene}/rgb_99999.jpg /{scene}/sync_depth_99999.png 518.8579"])
    argv = [*world["argv"], "--log_directory", tmp_path / "runs", "--model_name", "v", "--do_online_eval",
            "--val_split", val]
    run_case(train_cli.main, argv, tmp_path, names=["--val_split", "--data_path", "rgb_99999.jpg"],
             out_root=tmp_path / "runs")


def test_a_validation_split_sharing_the_test_split_is_refused(tmp_path):
    def e(rgb):
        return SplitEntry(rgb, None, 518.8579, 1)

    train = [e("/2011_09_26_drive_0001_sync/a.png"), e("/2011_09_26_drive_0002_sync/b.png")]
    val = [e("/2011_09_26_drive_0002_sync/b.png")]
    test = tmp_path / "test.txt"
    test.write_text("2011_09_26/2011_09_26_drive_0002_sync/image_02/data/c.png None 721.5377\n")
    with pytest.raises(HoldoutError, match="2011_09_26_drive_0002_sync.*also in the test split"):
        check_val_file(Path("val.txt"), val, train, "train.txt", test)
    test.write_text("2011_09_26/2011_09_26_drive_0009_sync/image_02/data/c.png None 721.5377\n")
    check_val_file(Path("val.txt"), val, train, "train.txt", test)  # disjoint: fine


def test_resuming_with_another_selection_rule_is_refused():
    was = {"val_split": "0.1", "select_metric": "abs_rel", "learning_rate": 1e-3, "min_depth_eval": 1e-3}
    assert selection_changes(was, {**was, "learning_rate": 2e-3}) == []  # not a selection setting
    changes = selection_changes(was, {**was, "select_metric": "rms", "val_split": "0.2"})
    assert changes == ["--val_split 0.1 (requested 0.2)", "--select_metric abs_rel (requested rms)"]
    assert selection_changes(was, {**was, "min_depth_eval": 0.5}) == ["--min_depth_eval 0.001 (requested 0.5)"]


def test_resume_with_another_select_metric_is_refused_end_to_end(world, tmp_path):
    run = seed_folder(world, tmp_path)
    argv = [*world["argv"], "--log_directory", tmp_path / "runs", "--model_name", "m_seed0", "--do_online_eval",
            "--final_eval", "--checkpoint_path", run / "last.pth", "--max_depth_eval", "9"]
    run_case(train_cli.main, argv, tmp_path, names=["--max_depth_eval 10 (requested 9)", "--model_name", "--retrain"],
             may_change=[run / "config.json", run / "train.log"])


def test_selected_checkpoints_record_their_selection_and_eval_prints_it(world, tmp_path, capsys):
    best = sorted(world["run"].glob("model-*-best_abs_rel_*"))
    assert len(best) == 1
    from wordepth.checkpoints import load_training_state

    sel = load_training_state(best[0])["selection"]
    assert sel["split"] == "test" and sel["metric"] == "abs_rel" and sel["step"] == int(best[0].name.split("-")[1])
    assert sel["split_file"] == str(world["data"]["test_split"])
    argv = ["--dataset", "nyu", "--data_path_eval", world["data"]["data_path_eval"], "--gt_path_eval",
            world["data"]["gt_path_eval"], "--filenames_file_eval", world["data"]["test_split"], "--text_feat_dir",
            world["data"]["text_feat_dir"], "--checkpoint_path", best[0], "--num_threads", "0", "--no_tqdm",
            "--max_depth_eval", "10"]
    eval_cli.main([str(a) for a in argv])
    out = capsys.readouterr().out
    assert f"best abs_rel {sel['value']:.5f} on the test split" in out and f"at step {sel['step']}" in out
    assert "not recorded" in describe_selection({})


# --------------------------------------------------------------------------- a typo never changes a number
@pytest.mark.parametrize("flag, near", [("--lerning_rate", "--learning_rate"), ("--max_depth_evl", "--max_depth_eval"),
                                        ("--learning", "--learning_rate")])
def test_an_unknown_or_abbreviated_option_is_an_error_naming_the_closest(world, tmp_path, flag, near):
    argv = ["--dataset", "nyu", "--data_path_eval", "d", "--gt_path_eval", "d", "--filenames_file_eval", "f.txt",
            "--checkpoint_path", world["run"] / "last.pth", flag, "5"]
    run_case(eval_cli.main, argv, tmp_path, code=2, names=[flag, f"did you mean {near}?"])


def test_an_unknown_option_in_a_config_file_names_the_file(world, tmp_path):
    cfg = tmp_path / "mine.txt"
    cfg.write_text("--dataset nyu\n--lerning_rate 5\n")
    run_case(eval_cli.main, [cfg, "--checkpoint_path", world["run"] / "last.pth"], tmp_path, code=2,
             names=["--lerning_rate", "mine.txt", "--learning_rate"])


def test_the_originals_launch_options_are_tolerated_in_a_config_file_only(tmp_path):
    from wordepth.cli.options import parse_args

    cfg = tmp_path / "orig.txt"
    cfg.write_text("--dataset nyu\n--dist_url tcp://127.0.0.1:2345\n")
    args = parse_args([str(cfg)])
    assert args.unknown_flags == ("--dist_url",)
    with pytest.raises(SystemExit):
        parse_args(["--dist_url", "tcp://127.0.0.1:2345"])


def test_abbreviations_are_off_in_every_command(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse's own usage error
        predict_cli.main(["--checkpoint", str(tmp_path / "x.pth"), "--imag", str(tmp_path), "--out", str(tmp_path)])
    assert exc.value.code == 2 and "unrecognized arguments: --imag" in capsys.readouterr().err


# --------------------------------------------------------------------------- temporary files, --out inside --images
def test_temporary_outputs_are_not_listed_as_images(tmp_path):
    img = np.zeros((4, 4, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    cv2.imwrite(str(tmp_path / ".b.x1y2.part.png"), img)  # a killed write_atomic's file
    (tmp_path / ".part-abc").mkdir()
    cv2.imwrite(str(tmp_path / ".part-abc" / "c.png"), img)  # a killed write_atomic_files' folder
    assert list_images(tmp_path) == ["a.png"]
    assert is_temporary(".rgb_0001.k3j2.part.jpg") and is_temporary(".part-x/y.png")
    assert not is_temporary("rgb_0001.jpg") and not is_temporary(".hidden.png")

    # the names the writer really makes
    seen = []
    write_atomic(tmp_path / "d.png", lambda p: seen.append(p.name) or p.write_bytes(b""))
    write_atomic_files(tmp_path / "vis", lambda d: seen.append(d.name) or [])
    assert all(is_temporary(name) for name in seen)


def test_zeroshot_scan_skips_temporary_files(tmp_path):
    from wordepth.zeroshot.data import DIODEIndoorDataset

    scan = tmp_path / "val" / "indoors" / "scene_00001" / "scan_00001"
    scan.mkdir(parents=True)
    for name in ("a.png", ".a.zz.part.png"):
        cv2.imwrite(str(scan / name), np.zeros((4, 4, 3), np.uint8))
    ds = DIODEIndoorDataset.__new__(DIODEIndoorDataset)
    ds.root = tmp_path
    assert [e.key for e in ds._list().entries] == ["scene_00001/scan_00001/a"]


@pytest.mark.parametrize("inside", [False, True])
def test_out_equal_to_or_inside_images_is_refused_up_front(world, tmp_path, inside):
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), np.zeros((8, 8, 3), np.uint8))
    out = photos / "pred" if inside else photos
    run_case(predict_cli.main, ["--checkpoint", world["run"] / "last.pth", "--images", photos, "--out", out],
             tmp_path, names=["--out", "--images", "photos"])


# --------------------------------------------------------------------------- edge semantics
def test_an_online_evaluation_with_every_image_empty_does_not_end_training(world, tmp_path):
    argv = [str(a) for a in world["argv"]]
    argv[argv.index("--log_directory") + 1] = str(tmp_path / "runs")
    # every ground-truth pixel beyond the evaluation range: no image scores
    result = train_cli.main([*argv, "--model_name", "e", "--do_online_eval", "--min_depth_eval", "50",
                             "--max_depth_eval", "60"])
    assert result["global_step"] == 2 and result["eval"] is None
    assert (tmp_path / "runs" / "e" / "last.pth").is_file()


def test_eval_still_exits_non_zero_when_no_image_scored(world, tmp_path):
    d = world["data"]
    argv = ["--dataset", "nyu", "--data_path_eval", d["data_path_eval"], "--gt_path_eval", d["gt_path_eval"],
            "--filenames_file_eval", d["test_split"], "--text_feat_dir", d["text_feat_dir"], "--checkpoint_path",
            world["run"] / "last.pth", "--num_threads", "0", "--no_tqdm", "--min_depth_eval", "50",
            "--max_depth_eval", "60"]
    run_case(eval_cli.main, argv, tmp_path, names=["could be evaluated", "--max_depth_eval"])


def test_flat_settings_reads_every_record_layout():
    import argparse

    ns = argparse.Namespace(learning_rate=1e-3, seed=3)
    assert flat_settings(ns) == {"learning_rate": 1e-3, "seed": 3}
    assert flat_settings({"args": {"learning_rate": 1e-3}}) == {"learning_rate": 1e-3}
    assert flat_settings({"optim": {"learning_rate": 1e-3}, "run": {"seed": 1}, "total_steps": 9}) == \
        {"learning_rate": 1e-3, "seed": 1}
    assert differing_settings({"seed": 1, "learning_rate": 1e-3}, {"seed": 2, "learning_rate": 1e-3}) == []

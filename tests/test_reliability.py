"""Bad inputs, faults and untrusted files: each is handled, and each test fails without the handling.

Data problems (``check_split`` / ``--check_data``, dataset errors, ``--skip_bad_samples``),
numerical faults (non-finite loss or gradient), process faults (SIGTERM, an exception, an
interrupted checkpoint write, ``kill -9`` and resume), untrusted files (``weights_only`` loading)
and bad configurations. Everything runs on tiny synthetic data (64x96) and the tiny preset.
"""
import ast
import errno
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import eval as eval_entry
import train
from wordepth.checkpoints import load_checkpoint, load_training_state, save_checkpoint
from wordepth.outputs import OutputError
from wordepth.cli.options import parse_args, run_config
from wordepth.data import NYUDataset, collate
from wordepth.data.check import Problem, check_split
from wordepth.data.robust import SkipBadSamples
from wordepth.data.generated.synthetic import make_synthetic_dataset
from wordepth.data.text_features import feature_path, load_feature_file, pack_features
from wordepth.build import model_from_checkpoint_obj
from wordepth.engine import Trainer
from wordepth.models.wordepth import WorDepth

ROOT = Path(__file__).resolve().parents[1]
H, W = 64, 96


# --------------------------------------------------------------------------- helpers
def _synthetic(root: Path, n_train: int = 8, n_test: int = 2) -> dict:
    return make_synthetic_dataset(root, "nyu", n_train, n_test, H, W, seed=0)


def _train_argv(p: dict, log_dir: Path, *extra: str, split=None, max_steps: int = 2) -> list[str]:
    return ["--preset", "tiny", "--dataset", "nyu", "--data_path", str(p["data_path"]), "--gt_path",
            str(p["gt_path"]), "--filenames_file", str(split or p["train_split"]), "--text_feat_dir",
            str(p["text_feat_dir"]), "--input_height", str(H), "--input_width", str(W), "--batch_size", "2",
            "--num_epochs", "10", "--max_steps", str(max_steps), "--log_directory", str(log_dir), "--model_name",
            "r", "--num_threads", "0", "--no_tqdm", "--learning_rate", "1e-3", "--log_freq", "1000",
            "--save_freq", "1000", *extra]


def _train_lines(p: dict) -> list[str]:
    return Path(p["train_split"]).read_text().splitlines()


def _clone(p: dict, line: str, name: str) -> tuple[str, Path, Path, Path]:
    """Copies the sample of ``line`` to ``/case/<name>``: (split line, image, depth, feature)."""
    rgb, depth, focal = line.split()
    img = Path(p["data_path"]) / "case" / f"{name}.jpg"
    dep = Path(p["gt_path"]) / "case" / f"{name}_depth.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(p["data_path"]) / rgb.lstrip("/"), img)
    shutil.copy(Path(p["gt_path"]) / depth.lstrip("/"), dep)
    feat = feature_path(p["text_feat_dir"], "nyu", "train", f"/case/{name}.jpg")
    feat.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(feature_path(p["text_feat_dir"], "nyu", "train", rgb), feat)
    return f"/case/{name}.jpg /case/{name}_depth.png {focal}", img, dep, feat


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([q.detach().flatten() for q in model.parameters()]).clone()


def _load_last(run: Path) -> dict:
    """The run's last.pth, loaded with plain ``weights_only=True`` (no allow-list)."""
    return torch.load(run / "last.pth", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """8 training and 2 test images; tests must not modify it (copy what they corrupt)."""
    return _synthetic(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """last.pth of a 1-step tiny run (on the module's data)."""
    log_dir = tmp_path_factory.mktemp("trained")
    train.main(_train_argv(data, log_dir, max_steps=1))
    return log_dir / "r" / "last.pth"


@pytest.fixture()
def bad_split(tmp_path) -> tuple[dict, Path, dict[int, str], dict[int, str]]:
    """A split with one problem per line (CRLF endings, a blank line).

    Returns the data paths, the split file, {line: expected error word}, {line: expected warning word}.
    """
    p = _synthetic(tmp_path / "d", n_train=2, n_test=0)
    good = _train_lines(p)[0]
    lines: list[str] = [good, ""]  # 1 good, 2 blank
    lines.append("/case/only_two_fields.jpg 518.8")  # 3 malformed
    errors = {3: "expected 3 fields"}
    warnings = {}

    def case(name, damage, word):
        line, img, dep, feat = _clone(p, good, name)
        damage(img, dep, feat)
        lines.append(line)
        errors[len(lines)] = word

    case("missing_image", lambda i, d, f: i.unlink(), "image not found")  # 4
    case("missing_depth", lambda i, d, f: d.unlink(), "depth map not found")  # 5
    case("missing_feature", lambda i, d, f: f.unlink(), "text feature not found")  # 6
    case("truncated_jpeg", lambda i, d, f: _truncate(i), "truncated JPEG")  # 7
    case("truncated_png", lambda i, d, f: _truncate(d), "truncated PNG")  # 8
    case("uint8_depth", lambda i, d, f: cv2.imwrite(str(d), np.full((H, W), 50, np.uint8)), "uint8")  # 9
    case("wrong_size_depth", lambda i, d, f: cv2.imwrite(str(d), np.full((H // 2, W), 900, np.uint16)),
         "must be the same size")  # 10
    case("wrong_shape_feature", lambda i, d, f: torch.save(torch.zeros(1, 512, dtype=torch.float16), f),
         "holds 512-d text features")  # 11

    for name, conv, word in (("rgba", cv2.COLOR_BGR2BGRA, "RGBA"), ("gray", cv2.COLOR_BGR2GRAY, "grayscale")):
        line, img, dep, feat = _clone(p, good, name)
        rgb = cv2.imread(str(img))
        img.unlink()
        cv2.imwrite(str(img.with_suffix(".png")), cv2.cvtColor(rgb, conv))  # the feature key is the same
        lines.append(line.replace(f"{name}.jpg", f"{name}.png"))
        warnings[len(lines)] = word  # 12, 13
    lines.append(_train_lines(p)[1])  # 14 good
    split = tmp_path / "bad_split.txt"
    split.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return p, split, errors, warnings


# --------------------------------------------------------------------------- bad data
def test_check_split_reports_every_problem_with_its_line(bad_split):
    p, split, errors, warnings = bad_split
    found = check_split("nyu", split, p["data_path"], p["gt_path"], p["text_feat_dir"], "train", feature_dim=1024)
    assert all(isinstance(f, Problem) for f in found)
    got_errors = {f.line_no: f for f in found if f.is_error}
    got_warnings = {f.line_no: f for f in found if not f.is_error}
    assert sorted(got_errors) == sorted(errors), "\n".join(map(str, found))
    assert sorted(got_warnings) == sorted(warnings), "\n".join(map(str, found))
    for line_no, word in errors.items():
        assert word in got_errors[line_no].message, str(got_errors[line_no])
    for line_no, word in warnings.items():
        assert word in got_warnings[line_no].message and "reads it as RGB" in got_warnings[line_no].message
    assert got_errors[4].path.endswith("missing_image.jpg")
    assert got_errors[6].path.endswith("missing_feature.pt")
    assert str(got_errors[7]).startswith("line 7: ") and "truncated_jpeg.jpg" in str(got_errors[7])
    quick = check_split("nyu", split, p["data_path"], p["gt_path"], p["text_feat_dir"], "train", decode=False)
    assert sorted(f.line_no for f in quick) == [3, 4, 5, 6]  # without decoding: only missing files


def test_check_split_uses_the_packed_feature_store(tmp_path):
    p = _synthetic(tmp_path / "d", n_train=3, n_test=0)
    lines = _train_lines(p)
    pack_features(p["text_feat_dir"], "nyu", "train", [line.split()[0] for line in lines[:2]])
    for line in lines[:2]:
        feature_path(p["text_feat_dir"], "nyu", "train", line.split()[0]).unlink()
    found = check_split("nyu", p["train_split"], p["data_path"], p["gt_path"], p["text_feat_dir"], "train")
    assert found == []  # lines 1-2 are in the packed store, line 3's file is still there
    feature_path(p["text_feat_dir"], "nyu", "train", lines[2].split()[0]).unlink()
    found = check_split("nyu", p["train_split"], p["data_path"], p["gt_path"], p["text_feat_dir"], "train")
    assert [(f.line_no, f.message.split(";")[0]) for f in found] == [(3, "text feature not found")]


def test_check_split_nonexistent_roots_reported_once(data, tmp_path):
    found = check_split("nyu", data["train_split"], tmp_path / "nope", data["gt_path"], tmp_path / "no_feat",
                        "train")
    assert [(f.line_no, f.is_error) for f in found] == [(0, True), (0, True)], found
    assert "image root (--data_path) does not exist" in found[0].message and found[0].path.endswith("nope")
    assert "text feature folder" in found[1].message
    missing = check_split("nyu", tmp_path / "absent.txt", data["data_path"], data["gt_path"],
                          data["text_feat_dir"], "train")
    assert [(f.line_no, f.message) for f in missing] == [(0, "split file not found")]


def test_check_split_clean_data_and_eval_missing_gt_is_a_warning(data, tmp_path):
    assert check_split("nyu", data["train_split"], data["data_path"], data["gt_path"], data["text_feat_dir"],
                       "train") == []
    root = Path(data["gt_path_eval"])
    split = tmp_path / "test.txt"
    lines = Path(data["test_split"]).read_text().splitlines()
    split.write_text("\n".join([lines[0], lines[1].split()[0] + " missing/depth.png 518.8"]) + "\n")
    found = check_split("nyu", split, data["data_path_eval"], root, data["text_feat_dir"], "test")
    assert [(f.line_no, f.level) for f in found] == [(2, "warning")] and "evaluation skips" in found[0].message


def test_rgba_and_grayscale_inputs_are_read_as_rgb(bad_split):
    p, split, _, warnings = bad_split
    lines = split.read_text().splitlines()
    rgba_gray = split.with_name("rgba_gray.txt")
    rgba_gray.write_text("\n".join(lines[n - 1] for n in sorted(warnings)) + "\n")
    ds = NYUDataset(rgba_gray, p["data_path"], p["gt_path"], p["text_feat_dir"], mode="eval", text_split="train")
    for i in range(len(ds)):
        assert ds[i]["image"].shape == (3, H, W)


def _check_argv(p: dict, split: Path, log_dir: Path) -> list[str]:
    return _train_argv(p, log_dir, "--check_data", split=split)


def test_check_data_flag_exits_nonzero_listing_every_problem(bad_split, tmp_path, capsys):
    p, split, errors, warnings = bad_split
    with pytest.raises(SystemExit) as exc:
        train.main(_check_argv(p, split, tmp_path))
    assert exc.value.code == 1
    out = capsys.readouterr().out
    for line_no in [*errors, *warnings]:
        assert f"train:line {line_no}: " in out, out
    assert f"{len(errors)} error(s), {len(warnings)} warning(s)" in out
    assert not (tmp_path / "r").exists()  # nothing was trained


def test_check_data_from_a_config_file_passes_on_good_data(data, tmp_path, capsys):
    cfg = tmp_path / "cfg.txt"
    argv = _train_argv(data, tmp_path)
    argv += ["--filenames_file_eval", str(data["test_split"]), "--data_path_eval", str(data["data_path_eval"]),
             "--gt_path_eval", str(data["gt_path_eval"])]
    cfg.write_text("".join(f"{a} {b}\n" if not b.startswith("--") else f"{a}\n"
                           for a, b in zip(argv, argv[1:] + ["--"]) if a.startswith("--")))
    assert train.main([str(cfg), "--check_data"]) == 0
    assert eval_entry.main([str(cfg), "--check_data"]) == 0
    out = capsys.readouterr().out
    assert "train split" in out and "eval split" in out and "no errors" in out


def test_dataset_getitem_names_the_missing_or_bad_file(data, tmp_path):
    p = _synthetic(tmp_path / "d", n_train=4, n_test=0)
    rgb, depth, _ = _train_lines(p)[0].split()
    ds = NYUDataset(p["train_split"], p["data_path"], p["gt_path"], p["text_feat_dir"], input_height=H,
                    input_width=W, seed=0)
    image = Path(p["data_path"]) / rgb.lstrip("/")
    image.unlink()
    with pytest.raises(FileNotFoundError, match=str(image)):
        ds[0]
    feat = feature_path(p["text_feat_dir"], "nyu", "train", _train_lines(p)[1].split()[0])
    feat.unlink()
    with pytest.raises(FileNotFoundError, match=str(feat)):
        ds[1]
    dep = Path(p["gt_path"]) / _train_lines(p)[2].split()[1].lstrip("/")
    cv2.imwrite(str(dep), np.full((H, W), 3, np.uint8))  # an 8-bit depth map: values in the wrong units
    with pytest.raises(ValueError, match="uint8"):
        ds[2]


def test_dataset_refuses_a_truncated_jpeg(tmp_path):
    """cv2.imread decodes a truncated JPEG with its missing part grey: it must not reach training."""
    p = _synthetic(tmp_path / "d", n_train=2, n_test=0)
    rgb = _train_lines(p)[0].split()[0]
    _truncate(Path(p["data_path"]) / rgb.lstrip("/"))
    ds = NYUDataset(p["train_split"], p["data_path"], p["gt_path"], p["text_feat_dir"], input_height=H,
                    input_width=W, seed=0)
    with pytest.raises(ValueError, match="rgb_"):
        ds[0]


def test_skip_bad_samples_returns_the_next_good_sample_and_counts(tmp_path, caplog):
    p = _synthetic(tmp_path / "d", n_train=4, n_test=0)
    entries = [line.split()[0] for line in _train_lines(p)]
    (Path(p["data_path"]) / entries[1].lstrip("/")).write_bytes(b"not an image")
    ds = NYUDataset(p["train_split"], p["data_path"], p["gt_path"], p["text_feat_dir"], input_height=H,
                    input_width=W, seed=0)
    wrapped = SkipBadSamples(ds)
    assert len(wrapped) == 4 and wrapped.entries is ds.entries
    wrapped.set_epoch(3)
    assert ds.epoch == 3
    with caplog.at_level(logging.WARNING, logger="wordepth.data.check"):
        assert wrapped[0]["path"] == entries[0]
        assert wrapped[1]["path"] == entries[2]  # the next good one
    assert wrapped.skipped == 1
    assert entries[1] in caplog.text and "cannot decode" in caplog.text and "1 skipped so far" in caplog.text
    # counted in DataLoader workers too
    loader = torch.utils.data.DataLoader(wrapped, batch_size=2, num_workers=1, collate_fn=collate)
    paths = [path for batch in loader for path in batch["path"]]
    assert paths == [entries[0], entries[2], entries[2], entries[3]]
    assert wrapped.skipped == 2
    for e in entries:  # all bad: a clear error, not an endless loop
        (Path(p["data_path"]) / e.lstrip("/")).unlink()
    with pytest.raises(RuntimeError, match="4 consecutive samples"):
        wrapped[0]


def test_training_with_skip_bad_samples_completes(tmp_path):
    p = _synthetic(tmp_path / "d", n_train=4, n_test=0)
    bad = _train_lines(p)[2].split()[0]
    (Path(p["data_path"]) / bad.lstrip("/")).write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(SystemExit, match=Path(bad).name):  # without the flag: stops, naming the image
        train.main(_train_argv(p, tmp_path / "a"))
    result = train.main(_train_argv(p, tmp_path / "b", "--skip_bad_samples"))
    assert result["global_step"] == 2
    assert _load_last(tmp_path / "b" / "r")["global_step"] == 2
    assert bad in (tmp_path / "b" / "r" / "train.log").read_text()


# --------------------------------------------------------------------------- numerical faults
def test_nonfinite_loss_or_gradient_skips_the_step_leaving_parameters_unchanged(data, tmp_path, monkeypatch):
    real_loss = WorDepth.training_loss
    calls = []

    def faulty(self, *args, **kw):
        out = real_loss(self, *args, **kw)
        calls.append(1)
        if len(calls) == 2:  # a NaN loss
            out = {**out, "loss": out["loss"] * float("nan")}
        if len(calls) == 3:  # a finite loss with a NaN gradient (0 * d sqrt(x)/dx at 0)
            s = next(self.parameters()).sum()
            out = {**out, "loss": out["loss"] + 0.0 * torch.sqrt(s - s)}
        return out

    monkeypatch.setattr(WorDepth, "training_loss", faulty)
    record = []
    real_step = Trainer.train_step

    def step(self, batch):
        before = _flat_params(self.model)
        stats = real_step(self, batch)
        first = next(self.model.parameters())
        adam_steps = int(self.optimizer.state[first]["step"]) if first in self.optimizer.state else 0
        record.append((stats["skipped"], torch.equal(before, _flat_params(self.model)), adam_steps))
        return stats

    monkeypatch.setattr(Trainer, "train_step", step)
    result = train.main(_train_argv(data, tmp_path, max_steps=3))
    assert result["global_step"] == 3
    # (skipped, parameters unchanged, Adam steps taken): the faulty steps 2 and 3 change nothing
    assert record == [(False, False, 1), (True, True, 1), (True, True, 1)]
    ckpt = _load_last(tmp_path / "r")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_consecutive_nonfinite_steps_stop_naming_the_samples_and_keep_the_weights(data, trained, tmp_path,
                                                                                 monkeypatch):
    run = tmp_path / "r"
    run.mkdir()
    shutil.copy(trained, run / "last.pth")
    good = torch.load(trained, weights_only=True)["model"]
    monkeypatch.setattr(WorDepth, "training_loss",
                        lambda self, image, *a, **k: {"loss": torch.tensor(float("nan"), requires_grad=True),
                                                      "silog": torch.tensor(float("nan")), "kl": torch.tensor(0.0),
                                                      "depth": torch.full_like(image[:, :1], float("nan"))})
    with pytest.raises(SystemExit) as exc:
        train.main(_train_argv(data, tmp_path, "--checkpoint_path", str(run / "last.pth"),
                               "--max_nonfinite_steps", "2", max_steps=20))
    msg = str(exc.value.code)
    assert "2 consecutive steps with a non-finite loss" in msg
    entries = [line.split()[0] for line in _train_lines(data)]
    assert sum(e in msg for e in entries) == 2, msg  # the batch's two sample paths
    kept = load_training_state(run / "last.pth")
    assert set(kept["model"]) == set(good)
    assert all(torch.equal(kept["model"][k], good[k]) for k in good)


# --------------------------------------------------------------------------- process faults
def test_sigterm_mid_run_saves_a_loadable_last_checkpoint(data, tmp_path, monkeypatch):
    real_step = Trainer.train_step
    calls = []

    def step(self, batch):
        stats = real_step(self, batch)
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives during the step
        return stats

    monkeypatch.setattr(Trainer, "train_step", step)
    seen = []

    def guard(signum, frame):  # only reached if the trainer did not install its handler
        seen.append(signum)

    previous = signal.signal(signal.SIGTERM, guard)
    try:
        result = train.main(_train_argv(data, tmp_path, max_steps=6))
        assert signal.getsignal(signal.SIGTERM) is guard  # the trainer restored the handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [] and result["global_step"] == 1
    ckpt = _load_last(tmp_path / "r")
    assert ckpt["global_step"] == 1 and ckpt["step_in_epoch"] == 1


def test_exception_mid_epoch_leaves_a_loadable_last_checkpoint(data, tmp_path, monkeypatch):
    real_step = Trainer.train_step
    calls = []

    def step(self, batch):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated failure at step 2")
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(RuntimeError, match="simulated failure"):
        train.main(_train_argv(data, tmp_path, max_steps=4))
    ckpt = _load_last(tmp_path / "r")
    assert ckpt["global_step"] == 1 and ckpt["epoch"] == 0 and ckpt["step_in_epoch"] == 1
    assert isinstance(load_checkpoint(tmp_path / "r" / "last.pth"), WorDepth)


def _half_then_enospc(real_save):
    def save(obj, f, *args, **kw):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    return save


def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"step": 1, "w": torch.arange(10.0)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _half_then_enospc(torch.save))
    with pytest.raises(OutputError, match=r"could not write .*last\.pth: No space left on device; "
                                          r"the previous file is kept"):
        save_checkpoint({"step": 2, "w": torch.zeros(10000)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pth"]  # no temporary file left behind


def test_failed_checkpoint_write_in_training_keeps_the_previous_file(data, trained, tmp_path, monkeypatch):
    run = tmp_path / "r"
    run.mkdir()
    shutil.copy(trained, run / "last.pth")
    before = (run / "last.pth").read_bytes()
    monkeypatch.setattr(torch, "save", _half_then_enospc(torch.save))
    with pytest.raises(SystemExit, match="No space left on device"):  # one line from train.py
        train.main(_train_argv(data, tmp_path, "--checkpoint_path", str(run / "last.pth"), max_steps=2))
    assert (run / "last.pth").read_bytes() == before
    assert sorted(x.name for x in run.iterdir() if x.name.endswith(".tmp")) == []


def test_kill_9_after_a_save_then_resume_continues_from_the_saved_step(data, tmp_path):
    argv = _train_argv(data, tmp_path, "--save_freq", "1", max_steps=200)
    log = open(tmp_path / "stderr.txt", "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT, stdout=log, stderr=log)
    last = tmp_path / "r" / "last.pth"
    try:
        deadline = time.time() + 180
        while not last.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert last.exists(), (tmp_path / "stderr.txt").read_text()
    finally:
        proc.kill()  # SIGKILL: no handler, no final save
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    saved = _load_last(tmp_path / "r")["global_step"]  # whatever step it reached, the file is complete
    assert saved >= 1
    result = train.main(_train_argv(data, tmp_path, "--checkpoint_path", str(last), max_steps=saved + 1))
    assert result["global_step"] == saved + 1
    assert _load_last(tmp_path / "r")["global_step"] == saved + 1
    assert f"resuming at step {saved}" in (tmp_path / "r" / "train.log").read_text()


# --------------------------------------------------------------------------- untrusted files
def _project_sources() -> list[Path]:
    files = [ROOT / "train.py", ROOT / "eval.py"]
    for folder in ("wordepth", "scripts"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return [f for f in files if f.is_file()]


def test_every_torch_load_is_weights_only_and_nothing_unpickles():
    offending = []
    for path in _project_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if owner == "torch" and node.func.attr == "load":
                value = kw.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    offending.append(f"{where}: torch.load without weights_only=True")
            elif owner in ("np", "numpy") and node.func.attr == "load":
                value = kw.get("allow_pickle")
                if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                    offending.append(f"{where}: np.load with allow_pickle")
            elif owner in ("pickle", "dill", "joblib") and node.func.attr in ("load", "loads"):
                offending.append(f"{where}: {owner}.{node.func.attr}")
    assert offending == []


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_malicious_text_feature_file_is_refused(tmp_path):
    path = tmp_path / "feat.pt"
    marker = tmp_path / "pwned"
    torch.save(_Exploit(marker), path)
    with pytest.raises(ValueError, match="cannot read text feature file"):
        load_feature_file(path)
    assert not marker.exists()


def test_own_checkpoint_is_plain_data_loadable_without_an_allow_list(trained):
    ckpt = torch.load(trained, map_location="cpu", weights_only=True)  # no safe_globals
    plain = (str, int, float, bool, type(None), torch.Tensor)

    def walk(obj, where="ckpt"):
        if isinstance(obj, dict):
            for k, v in obj.items():
                assert isinstance(k, (str, int)), f"{where}: key {k!r}"
                walk(v, f"{where}[{k!r}]")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]")
        else:
            assert isinstance(obj, plain), f"{where} is a {type(obj).__name__}"

    walk(ckpt)
    assert ckpt["format"] == "wordepth" and ckpt["global_step"] == 1


# --------------------------------------------------------------------------- bad configuration
@pytest.mark.parametrize("extra, word", [
    (["--alter_prob", "1.5"], "--alter_prob must be in [0, 1]"),
    (["--alter_prob", "-0.1"], "--alter_prob must be in [0, 1]"),
    (["--learning_rate", "-0.0001"], "--learning_rate must be positive"),
    (["--dataset", "nyuv3"], "'nyuv3' is not a registered dataset"),
    (["--min_depth_eval", "10", "--max_depth_eval", "1"], "eval depth range inverted"),
])
def test_bad_configuration_is_one_clear_line_at_start_up(data, tmp_path, extra, word):
    with pytest.raises(SystemExit) as exc:
        train.main(_train_argv(data, tmp_path, *extra))
    msg = str(exc.value.code)
    assert word in msg and "\n" not in msg and msg.startswith("error: ")
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_device_cuda_without_a_gpu_is_a_clear_error(data, tmp_path):
    with pytest.raises(SystemExit, match="no CUDA GPU is available"):
        train.main(_train_argv(data, tmp_path, "--device", "cuda"))


def test_unknown_device_name_is_a_clear_error(data, tmp_path):
    with pytest.raises(SystemExit, match="--device 'gpu'"):
        train.main(_train_argv(data, tmp_path, "--device", "gpu"))


def test_input_size_other_than_the_checkpoints_interpolates_with_a_warning(data, trained, tmp_path, caplog):
    args = parse_args(_train_argv(data, tmp_path, "--checkpoint_path", str(trained)) +
                      ["--input_height", "96", "--input_width", "128"])
    with caplog.at_level(logging.WARNING, logger="wordepth"):
        model = model_from_checkpoint_obj(load_training_state(trained), run_config(args), str(trained))
    assert "position embedding is interpolated" in caplog.text
    with torch.no_grad():
        depth = model.eval()(torch.randn(1, 3, 96, 128), torch.randn(1, 1024))
    assert depth.shape == (1, 1, 96, 128) and torch.isfinite(depth).all()


# --------------------------------------------------------------------------- what a checkpoint records wins
def test_a_flag_contradicting_the_checkpoint_is_an_error_unless_forced():
    import dataclasses

    from wordepth.config import model_overrides, preset_of
    from wordepth.models.wordepth import PRESETS

    stored = {"legacy": False, "max_depth": 10.0, "prior_mean": 1.54, "backbone": dataclasses.asdict(PRESETS["tiny"])}

    def overrides(flags, stored, source="the checkpoint"):
        cfg = run_config(parse_args(flags))
        return model_overrides(cfg.model, cfg.data.dataset, stored, source, force=cfg.run.force_config)

    assert preset_of(stored["backbone"]) == "tiny" and preset_of(PRESETS["swin_large"]) == "swin_large"
    text = {"clip_model": "RN50", "text_dim": 1024}  # what the caption features are (recorded, else CLIP RN50)
    assert overrides([], stored, "ck.pth") == {"legacy": False, "max_depth": 10.0, "prior_mean": 1.54, **text}
    assert overrides(["--max_depth", "10"], stored, "ck.pth")["max_depth"] == 10  # agrees
    with pytest.raises(ValueError, match=r"^--legacy but ck\.pth records legacy=False .*--force_config"):
        overrides(["--lagacy"], stored, "ck.pth")
    with pytest.raises(ValueError, match=r"--prior_mean 2\.54 but ck\.pth records prior_mean=1\.54"):
        overrides(["--prior_mean", "2.54"], stored, "ck.pth")
    forced = overrides(["--legacy", "--prior_mean", "2.54", "--force_config"], stored, "ck.pth")
    assert forced == {"legacy": True, "max_depth": 10.0, "prior_mean": 2.54, **text}
    with pytest.raises(ValueError, match="--preset swin_large but ck.pth holds a tiny network"):  # never forced
        overrides(["--preset", "swin_large", "--force_config"], stored, "ck.pth")
    # the original release's checkpoints record nothing: the flags say which model they are
    assert overrides(["--legacy"], None)["legacy"] is True


def test_the_run_lock_is_exclusive_and_a_dead_owners_lock_is_taken_over(tmp_path):
    import json
    import socket

    from wordepth.runfolder import RunFolderError, RunLock

    first = RunLock(tmp_path)
    first.acquire()
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ".lock").write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        with pytest.raises(RunFolderError, match=f"in use by another training \\(PID {other.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        other.kill()
        other.wait()
    second = RunLock(tmp_path)
    second.acquire()
    lock = tmp_path / ".lock"
    assert second.taken_over == f"took over the stale lock {lock} (process {other.pid} is no longer running)"
    first.release()  # no longer its lock: left alone
    assert (tmp_path / ".lock").exists()
    second.release()
    assert not (tmp_path / ".lock").exists() and os.listdir(tmp_path) == []

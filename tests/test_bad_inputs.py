"""The catalogue of bad inputs: each one run through a real entry point in its own process.

Every case of :data:`CASES` builds one bad input (a flag, a file, a run folder) in its own folder,
runs ``train.py`` / ``eval.py`` / ``wordepth-text`` / ``wordepth-pack-text`` on it and asserts what
a user sees: the exit status, exactly one ``error:`` line on stderr naming the file or flag, no
Python traceback, and no pre-existing file written over (hashes before and after). The cases that
are not one error line (signals, two runs in one folder, a stale lock, skipped images, a byte-order
mark) follow the catalogue as their own tests. docs/troubleshooting.md lists the same messages.

Speed: the processes are forked from a server that has imported torch and wordepth once
(``multiprocessing``'s forkserver), so a case costs its work, not an interpreter start.
``WORDEPTH_CATALOGUE_FRESH=1`` runs every case as a fresh ``python`` process instead.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import multiprocessing
import os
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
import torch

from tests.catalogue import Outcome
from wordepth.data.generated.synthetic import caption_feature, make_synthetic_dataset
from wordepth.data.text_features import feature_path, make_cuda_tagged_file, pack_features, save_feature_file

ROOT = Path(__file__).resolve().parents[1]
H, W = 64, 96
SCRIPTS = {"train": "train.py", "eval": "eval.py"}
MODULES = {"text": "wordepth.cli.text", "pack": "wordepth.cli.pack_text"}
FRESH = bool(os.environ.get("WORDEPTH_CATALOGUE_FRESH"))


# --------------------------------------------------------------------------- running an entry point
def _child(cmd: str, argv: list[str], out: str, err: str, env: dict, prelude: str) -> None:
    """The body of one run, in a forked process: what ``python train.py ARGV`` would do."""
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.stdout = open(1, "w", closefd=False, buffering=1)
    sys.stderr = open(2, "w", closefd=False, buffering=1)
    os.environ.update(env)
    os.chdir(ROOT)
    if prelude:
        exec(prelude, {"__name__": "prelude"})
    if cmd in SCRIPTS:
        sys.argv = [SCRIPTS[cmd], *argv]
        runpy.run_path(str(ROOT / SCRIPTS[cmd]), run_name="__main__")
    else:
        sys.argv = [MODULES[cmd], *argv]
        importlib.import_module(MODULES[cmd]).main()


_CTX = None


def _context():
    global _CTX
    if _CTX is None:
        _CTX = multiprocessing.get_context("forkserver")
        _CTX.set_forkserver_preload(["torch", "wordepth.cli.train", "wordepth.cli.eval", "wordepth.engine",
                                     "wordepth.cli.text", "wordepth.cli.pack_text"])
    return _CTX


class Run:
    """One started entry point; :meth:`wait` gives its :class:`Outcome`."""

    def __init__(self, cmd: str, argv: list, folder: Path, prelude: str = "", env: dict | None = None,
                 fresh: bool = FRESH):
        argv = [str(a) for a in argv]
        folder.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.time_ns()}"
        self.out, self.err = folder / f"stdout.{stamp}.txt", folder / f"stderr.{stamp}.txt"
        env = {**(env or {}), "PYTHONUNBUFFERED": "1"}
        if fresh:
            if prelude or cmd in MODULES:
                code = (f"{prelude}\nimport sys, runpy, importlib\nsys.argv = [{cmd!r}, *{argv!r}]\n" +
                        (f"runpy.run_path({str(ROOT / SCRIPTS[cmd])!r}, run_name='__main__')" if cmd in SCRIPTS
                         else f"importlib.import_module({MODULES[cmd]!r}).main()"))
                command = [sys.executable, "-c", code]
            else:
                command = [sys.executable, str(ROOT / SCRIPTS[cmd]), *argv]
            with open(self.out, "w") as o, open(self.err, "w") as e:
                self.proc = subprocess.Popen(command, cwd=ROOT, stdout=o, stderr=e, env={**os.environ, **env})
            self.pid = self.proc.pid
        else:
            self.proc = _context().Process(target=_child, args=(cmd, argv, str(self.out), str(self.err), env, prelude))
            self.proc.start()
            self.pid = self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None if isinstance(self.proc, subprocess.Popen) else self.proc.is_alive()

    def wait(self, timeout: float = 300) -> Outcome:
        if isinstance(self.proc, subprocess.Popen):
            code = self.proc.wait(timeout)
        else:
            self.proc.join(timeout)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
                raise AssertionError(f"timed out after {timeout} s:\n{self.err.read_text()}")
            code = self.proc.exitcode
        return Outcome(code, self.out.read_text(), self.err.read_text())


def run(cmd: str, argv: list, folder: Path, **kw) -> Outcome:
    return Run(cmd, argv, folder, **kw).wait()


# --------------------------------------------------------------------------- files: snapshots, damage
def _signature(path: Path) -> tuple:
    stat = path.stat()
    if stat.st_size > 2**20:  # large checkpoints: size, time and inode (rewritten files get a new inode)
        return stat.st_size, stat.st_mtime_ns, stat.st_ino
    return (hashlib.sha256(path.read_bytes()).hexdigest(),)


def snapshot(*folders: Path) -> dict[Path, tuple]:
    return {f: _signature(f) for folder in folders for f in sorted(Path(folder).rglob("*")) if f.is_file()}


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _lines(split: Path) -> list[str]:
    return [line for line in Path(split).read_text().splitlines() if line.strip()]


class _Exploit:
    """Unpickling this runs code (touches a marker file): what a malicious pickle does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# --------------------------------------------------------------------------- the shared world
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Synthetic NYU data (4 train, 2 test images, 64x96) and a 2-step tiny run; cases copy what they damage."""
    root = tmp_path_factory.mktemp("bad_inputs")
    data = make_synthetic_dataset(root / "d", "nyu", 4, 2, H, W, seed=0)
    res = run("train", train_argv(data, root / "trained", name="r"), root / "logs")
    assert res.code == 0, res.err
    return {"root": root, "data": data, "ckpt": root / "trained" / "r" / "last.pth"}


def train_argv(p: dict, log_dir: Path, *extra, name: str = "new", max_steps: int = 2, split=None) -> list:
    return ["--preset", "tiny", "--dataset", "nyu", "--data_path", p["data_path"], "--gt_path", p["gt_path"],
            "--filenames_file", split or p["train_split"], "--text_feat_dir", p["text_feat_dir"],
            "--input_height", H, "--input_width", W, "--batch_size", 2, "--num_epochs", 10, "--max_steps",
            max_steps, "--log_directory", log_dir, "--model_name", name, "--num_threads", 0, "--no_tqdm",
            "--log_freq", 1000, "--save_freq", 1000, *extra]


def eval_argv(p: dict, ckpt: Path, *extra, split=None) -> list:
    return ["--dataset", "nyu", "--data_path_eval", p["data_path_eval"], "--gt_path_eval", p["gt_path_eval"],
            "--filenames_file_eval", split or p["test_split"], "--text_feat_dir", p["text_feat_dir"],
            "--checkpoint_path", ckpt, "--num_threads", 0, "--no_tqdm", *extra]


@dataclass
class Spec:
    """What to run for a case and what the user must see."""

    cmd: str
    argv: list
    expect: list[str]  # substrings of the one error line (or of stdout for stream='stdout')
    code: int = 1
    stream: str = "stderr"  # 'stdout': a report (--check_data), no error line
    prelude: str = ""
    may_change: list[Path] = field(default_factory=list)  # pre-existing files the run may rewrite
    check: Callable[[Outcome], None] | None = None  # more assertions


class Case:
    """The folder of one case and helpers to damage copies of the world's data."""

    def __init__(self, world: dict, folder: Path):
        self.world, self.dir = world, folder
        self.runs = folder / "runs"

    def data(self) -> dict:
        """A private copy of the synthetic data (to damage)."""
        src = self.world["data"]["root"]
        shutil.copytree(src, self.dir / "d")
        return {k: self.dir / "d" / Path(v).relative_to(src) if k != "root" else self.dir / "d"
                for k, v in self.world["data"].items()}

    def old_run(self, name: str = "old") -> Path:
        """A run folder holding the trained run's files (last.pth, config.json, train.log)."""
        run_dir = self.runs / name
        shutil.copytree(self.world["ckpt"].parent, run_dir)
        return run_dir

    def split(self, lines: list[str], name: str = "split.txt") -> Path:
        path = self.dir / name
        path.write_text("".join(line + "\n" for line in lines))
        return path


CASES: dict[str, Callable[[Case], Spec]] = {}


def case(name: str):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


# --------------------------------------------------------------------------- configuration
for _flag, _value in [("num_epochs", "0"), ("num_epochs", "-1"), ("max_steps", "0"), ("max_steps", "-5"),
                      ("input_height", "0"), ("input_width", "-32"), ("save_freq", "0"), ("log_freq", "0"),
                      ("eval_freq", "0"), ("max_nonfinite_steps", "0"), ("batch_size", "0"),
                      ("alter_prob", "1.5"), ("learning_rate", "-0.0001"), ("max_depth", "0"),
                      ("num_threads", "-1"), ("dist_timeout", "0")]:
    def _bad_value(c: Case, flag=_flag, value=_value) -> Spec:
        argv = [a for a in train_argv(c.world["data"], c.runs)] + [f"--{flag}={value}"]
        word = "batch sizes" if flag == "batch_size" else f"--{flag}"
        return Spec("train", argv, [word], check=lambda r: _nothing_created(c))
    case(f"train --{_flag} {_value}")(_bad_value)


def _nothing_created(c: Case) -> None:
    assert not c.runs.exists(), "a refused run created its run folder"


@case("train --dataset nyuv3")
def _(c):
    return Spec("train", train_argv(c.world["data"], c.runs, "--dataset", "nyuv3"),
                ["--dataset 'nyuv3' is not a registered dataset", "kitti, nyu", "docs/data.md"],
                check=lambda r: _nothing_created(c))


# --------------------------------------------------------------------------- text features of another width
def _512_features(p: dict, split: str = "train") -> Path:
    """The split's features replaced by 512-d ones (ViT-B/32's width); returns the first file."""
    files = sorted((Path(p["text_feat_dir"]) / "nyu" / split).rglob("*.pt"))
    for f in files:
        make_cuda_tagged_file(f, caption_feature(f.stem, dim=512))
    return files[0]


@case("train on 512-d features with a 1024-d network")
def _(c):
    p = c.data()
    _512_features(p)
    return Spec("train", train_argv(p, c.runs), ["text feature file", "512-d", "1024-d", "--text_dim 512"])


@case("--check_data reports 512-d features for a new 1024-d network")
def _(c):
    p = c.data()
    feat = _512_features(p)
    return Spec("train", [*train_argv(p, c.runs), "--check_data"], ["train:line", str(feat.parent), "512-d", "1024-d"],
                stream="stdout")


@case("--check_data with a 1024-d checkpoint reports 512-d features")
def _(c):
    p = c.data()
    feat = _512_features(p)
    argv = [*train_argv(p, c.runs), "--checkpoint_path", c.world["ckpt"], "--check_data"]
    return Spec("train", argv, ["train:line", str(feat.parent), "512-d", "1024-d"], stream="stdout")


@case("resume a 1024-d checkpoint with --clip_model ViT-B-32")
def _(c):
    argv = train_argv(c.world["data"], c.runs, "--checkpoint_path", c.world["ckpt"], "--clip_model", "ViT-B-32")
    return Spec("train", argv, ["--clip_model ViT-B-32", "1024-d RN50", "cannot change"])


@case("train --clip_model that open_clip does not know, without --text_dim")
def _(c):
    argv = train_argv(c.world["data"], c.runs, "--clip_model", "MyCLIP")
    return Spec("train", argv, ["--clip_model MyCLIP", "--text_dim"])


@case("train --text_dim 256 --clip_model ViT-B-32 (512-d)")
def _(c):
    argv = train_argv(c.world["data"], c.runs, "--text_dim", "256", "--clip_model", "ViT-B-32")
    return Spec("train", argv, ["--text_dim 256", "ViT-B-32", "512-d"])


@case("train --device gpu")
def _(c):
    return Spec("train", train_argv(c.world["data"], c.runs, "--device", "gpu"), ["--device 'gpu'"])


@case("eval depth range inverted")
def _(c):
    argv = eval_argv(c.world["data"], c.world["ckpt"], "--min_depth_eval", "10", "--max_depth_eval", "1")
    return Spec("eval", argv, ["eval depth range inverted"])


@case("train without --data_path")
def _(c):
    argv = train_argv(c.world["data"], c.runs)
    i = argv.index("--data_path")
    return Spec("train", argv[:i] + argv[i + 2:], ["--data_path is required"])


@case("config file not found")
def _(c):
    return Spec("train", ["configs/no_such_config.txt"], ["config file not found: configs/no_such_config.txt"],
                code=2)


@case("train --batch_size abc (argparse)")
def _(c):
    return Spec("train", train_argv(c.world["data"], c.runs, "--batch_size", "abc"), ["--batch_size", "abc"], code=2)


# --------------------------------------------------------------------------- run folders (findings 1, 2, 8)
@case("new run into a folder holding last.pth")
def _(c):
    old = c.old_run()
    argv = train_argv(c.world["data"], c.runs, name="old")
    return Spec("train", argv, [str(old), "--checkpoint_path", "--overwrite"], check=lambda r: _no_new_files(old, c))


def _no_new_files(run_dir: Path, c: Case) -> None:
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in c.world["ckpt"].parent.iterdir())


@case("--retrain into the run it starts from")
def _(c):
    old = c.old_run()
    argv = train_argv(c.world["data"], c.runs, "--checkpoint_path", old / "last.pth", "--retrain", name="old")
    return Spec("train", argv, ["already holds a run"], check=lambda r: _no_new_files(old, c))


@case("resume another checkpoint into a folder holding last.pth")
def _(c):
    old = c.old_run()
    argv = train_argv(c.world["data"], c.runs, "--checkpoint_path", c.world["ckpt"], name="old")
    return Spec("train", argv, ["already holds a run", str(old / "last.pth")], check=lambda r: _no_new_files(old, c))


@case("run folder locked by a live process")
def _(c):
    run_dir = c.runs / "busy"
    run_dir.mkdir(parents=True)
    (run_dir / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
    argv = train_argv(c.world["data"], c.runs, name="busy")
    return Spec("train", argv, ["in use by another training", f"PID {os.getpid()}", ".lock"],
                check=lambda r: _only(run_dir, [".lock"]))


@case("run folder locked from another machine")
def _(c):
    run_dir = c.runs / "busy"
    run_dir.mkdir(parents=True)
    (run_dir / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "since": "now"}))
    return Spec("train", train_argv(c.world["data"], c.runs, name="busy"), ["in use", "elsewhere.example"],
                check=lambda r: _only(run_dir, [".lock"]))


def _only(folder: Path, names: list[str]) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)


@case("--log_directory is a file")
def _(c):
    c.dir.mkdir(parents=True, exist_ok=True)
    (c.dir / "logs_file").write_text("not a folder\n")
    return Spec("train", train_argv(c.world["data"], c.dir / "logs_file"), ["cannot create the run folder",
                                                                            "--log_directory"])


# --------------------------------------------------------------------------- what the checkpoint records (finding 3)
@case("eval --legacy on a current checkpoint")
def _(c):
    return Spec("eval", eval_argv(c.world["data"], c.world["ckpt"], "--legacy"),
                ["--legacy", str(c.world["ckpt"]), "legacy=False", "--force_config"])


@case("eval --lagacy (original spelling) on a current checkpoint")
def _(c):
    return Spec("eval", eval_argv(c.world["data"], c.world["ckpt"], "--lagacy"), ["--legacy", "legacy=False"])


@case("shipped arguments_eval_nyu_legacy.txt on a current checkpoint")
def _(c):
    return Spec("eval", ["configs/arguments_eval_nyu_legacy.txt", *eval_argv(c.world["data"], c.world["ckpt"])],
                ["--legacy", str(c.world["ckpt"])])


@case("eval --max_depth 80 --prior_mean 2.54 on an NYU checkpoint")
def _(c):
    argv = eval_argv(c.world["data"], c.world["ckpt"], "--max_depth", "80", "--prior_mean", "2.54")
    return Spec("eval", argv, ["--max_depth 80", "max_depth=10", "--prior_mean 2.54", "prior_mean=1.54"])


@case("resume with another --preset")
def _(c):
    old = c.old_run()
    argv = [a if a != "tiny" else "swin_large" for a in
            train_argv(c.world["data"], c.runs, "--checkpoint_path", old / "last.pth", name="old", max_steps=3)]
    return Spec("train", argv, ["--preset swin_large", "tiny"], may_change=[old / "train.log"],
                check=lambda r: _no_new_files(old, c))


@case("resume with --legacy")
def _(c):
    old = c.old_run()
    argv = train_argv(c.world["data"], c.runs, "--checkpoint_path", old / "last.pth", "--legacy", name="old",
                      max_steps=3)
    return Spec("train", argv, ["--legacy", "legacy=False"], may_change=[old / "train.log"],
                check=lambda r: _no_new_files(old, c))


# --------------------------------------------------------------------------- non-finite values (finding 4)
def _first_feature(p: dict, split: str = "test") -> Path:
    rgb = _lines(p["test_split"] if split == "test" else p["train_split"])[0].split()[0]
    return feature_path(p["text_feat_dir"], "nyu", split, rgb)


@case("eval with a NaN text feature file")
def _(c):
    p = c.data()
    feat = _first_feature(p)
    torch.save(torch.full((1, 1024), float("nan"), dtype=torch.float16), feat)
    return Spec("eval", eval_argv(p, c.world["ckpt"]), [str(feat), "non-finite"])


@case("train with an inf text feature file")
def _(c):
    p = c.data()
    feats = [feature_path(p["text_feat_dir"], "nyu", "train", line.split()[0]) for line in _lines(p["train_split"])]
    for feat in feats:
        torch.save(torch.full((1, 1024), float("inf"), dtype=torch.float16), feat)
    return Spec("train", train_argv(p, c.runs), ["non-finite", "text feature file", ".pt"])


def _packed(c: Case) -> tuple[dict, Path, Path]:
    """A private copy of the data with the test features packed: (paths, .packed.npy, .packed.json)."""
    p = c.data()
    npy = pack_features(p["text_feat_dir"], "nyu", "test", [ln.split()[0] for ln in _lines(p["test_split"])])
    return p, npy, npy.with_name("test.packed.json")


def _poison(npy: Path, row: int, value: float) -> None:
    """Writes ``value`` into the first entries of one row of a packed store."""
    arr = np.load(npy, mmap_mode="r+")
    arr[row, :4] = value
    arr.flush()


@case("eval with a NaN row in the packed store")
def _(c):
    p, npy, _ = _packed(c)
    _poison(npy, 1, np.nan)
    return Spec("eval", eval_argv(p, c.world["ckpt"]), [str(npy), _lines(p["test_split"])[1].split()[0], "non-finite"])


@case("--check_data reports a NaN feature file")
def _(c):
    p = c.data()
    feat = _first_feature(p)
    torch.save(torch.full((1, 1024), float("nan"), dtype=torch.float16), feat)
    return Spec("eval", [*eval_argv(p, c.world["ckpt"]), "--check_data"], ["eval:line 1: ", str(feat), "non-finite"],
                stream="stdout")


@case("--check_data reports an inf in a row of the packed store")
def _(c):
    p, npy, _ = _packed(c)
    _poison(npy, 0, np.inf)
    return Spec("eval", [*eval_argv(p, c.world["ckpt"]), "--check_data"], ["eval:line 1: ", str(npy), "non-finite"],
                stream="stdout")


# --------------------------------------------------------------------------- disk full (finding 6)
_DISK_FULL_RUNTIME = """
import torch
def _full(obj, f, *args, **kwargs):
    f.write(b"PK partial")
    raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0: No space left on device")
torch.save = _full
"""
_DISK_FULL_OSERROR = """
import errno, torch
def _full(obj, f, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
torch.save = _full
"""

for _name, _prelude in (("RuntimeError", _DISK_FULL_RUNTIME), ("OSError", _DISK_FULL_OSERROR)):
    def _disk_full(c: Case, prelude=_prelude) -> Spec:
        old = c.old_run()
        argv = train_argv(c.world["data"], c.runs, "--checkpoint_path", old / "last.pth", name="old", max_steps=3)

        def no_temporary_file(r: Outcome) -> None:
            assert not list(old.glob(".last.pth*")), list(old.iterdir())
            assert r.err.count("Traceback") == 0
        return Spec("train", argv, [f"could not write {old / 'last.pth'}: No space left on device",
                                    "the previous file is kept"], prelude=prelude,
                    may_change=[old / "config.json", old / "train.log"], check=no_temporary_file)
    case(f"disk full while saving ({_name})")(_disk_full)


# --------------------------------------------------------------------------- a crash never goes back (finding 1)
_CRASH_AT_SECOND_STEP = """
from wordepth.engine import Trainer
from wordepth.errors import UserError
_real, _calls = Trainer.train_step, []
def _step(self, batch):
    _calls.append(1)
    if len(_calls) == 2:  # what the readers raise for a file they cannot decode
        raise UserError("simulated unreadable sample /case/broken.jpg")
    return _real(self, batch)
Trainer.train_step = _step
"""


@case("--overwrite run crashing before the old run's step")
def _(c):
    old = c.old_run()
    argv = train_argv(c.world["data"], c.runs, "--overwrite", name="old", max_steps=5)

    def kept(r: Outcome) -> None:
        assert "is kept; this run is at step 1" in r.err, r.err
    # --overwrite removes what the replaced run wrote that the new run would be confused with (its best
    # checkpoints, metrics, TensorBoard events); its last.pth stays until the new run saves one
    replaced = [*old.rglob("events.out.tfevents*"), *old.glob("model-*-best_*"), old / "metrics.json"]
    return Spec("train", argv, ["simulated unreadable sample /case/broken.jpg"], prelude=_CRASH_AT_SECOND_STEP,
                may_change=[old / "config.json", old / "train.log", *replaced], check=kept)


# --------------------------------------------------------------------------- no valid depth (finding 7)
def _zero_depths(p: dict, split_key: str = "train_split", root_key: str = "gt_path") -> list[str]:
    rgbs = []
    for line in _lines(p[split_key]):
        rgb, depth, _ = line.split()
        png = Path(p[root_key]) / depth.lstrip("/")
        cv2.imwrite(str(png), np.zeros(cv2.imread(str(png), cv2.IMREAD_UNCHANGED).shape, np.uint16))
        rgbs.append(rgb)
    return rgbs


@case("training data without valid depth: N batches in a row")
def _(c):
    p = c.data()
    rgbs = _zero_depths(p)
    argv = train_argv(p, c.runs, "--max_no_depth_steps", "2", max_steps=50)

    def nothing_saved(r: Outcome) -> None:
        assert not (c.runs / "new" / "last.pth").exists()
        assert sum(rgb in r.error_lines()[0] for rgb in rgbs) == 2  # the last batch's two images
    return Spec("train", argv, ["2 consecutive training batches without a valid depth pixel", "--check_data"],
                check=nothing_saved)


@case("training data without valid depth: a run shorter than N")
def _(c):
    p = c.data()
    _zero_depths(p)
    def nothing_saved(r: Outcome) -> None:
        assert not (c.runs / "new" / "last.pth").exists()
    return Spec("train", train_argv(p, c.runs, max_steps=1), ["no training batch of this run had a valid depth pixel"],
                check=nothing_saved)


# --------------------------------------------------------------------------- output paths (finding 8)
def _no_evaluation(r: Outcome) -> None:
    assert "Computing errors" not in r.out, "the output path must be checked before the evaluation"


@case("eval --metrics_json under a file")
def _(c):
    c.dir.mkdir(parents=True, exist_ok=True)
    (c.dir / "plain").write_text("x\n")
    out = c.dir / "plain" / "m.json"
    return Spec("eval", eval_argv(c.world["data"], c.world["ckpt"], "--metrics_json", out),
                ["--metrics_json", str(out), "is a file"], check=_no_evaluation)


@case("eval --metrics_json is a folder")
def _(c):
    c.dir.mkdir(parents=True, exist_ok=True)
    return Spec("eval", eval_argv(c.world["data"], c.world["ckpt"], "--metrics_json", c.dir),
                ["--metrics_json", "is a folder"], check=_no_evaluation)


@case("eval --per_image_csv under a file")
def _(c):
    c.dir.mkdir(parents=True, exist_ok=True)
    (c.dir / "plain").write_text("x\n")
    out = c.dir / "plain" / "sub" / "rows.csv"
    return Spec("eval", eval_argv(c.world["data"], c.world["ckpt"], "--per_image_csv", out),
                ["--per_image_csv", str(out)], check=_no_evaluation)


@case("eval --save_vis is a file")
def _(c):
    c.dir.mkdir(parents=True, exist_ok=True)
    (c.dir / "vis").write_text("x\n")
    return Spec("eval", eval_argv(c.world["data"], c.world["ckpt"], "--save_vis", c.dir / "vis"),
                ["--save_vis", "is a file"], check=_no_evaluation)


# --------------------------------------------------------------------------- splits (findings 8, 11)
@case("eval on an empty split")
def _(c):
    split = c.split([])
    return Spec("eval", eval_argv(c.world["data"], c.world["ckpt"], split=split), [str(split), "has no entries"])


@case("train on an empty split")
def _(c):
    split = c.split(["", "   "])
    return Spec("train", train_argv(c.world["data"], c.runs, split=split), [str(split), "has no entries"])


@case("eval on a split whose ground truth is all zero")
def _(c):
    p = c.data()
    _zero_depths(p, "test_split", "gt_path_eval")
    return Spec("eval", eval_argv(p, c.world["ckpt"]), [str(p["test_split"]), "could be evaluated",
                                                        "2 without a valid ground-truth pixel"])


@case("eval on a split whose ground-truth files are all missing")
def _(c):
    lines = _lines(c.world["data"]["test_split"])
    split = c.split([f"{ln.split()[0]} missing/{i}.png {ln.split()[2]}" for i, ln in enumerate(lines)])
    return Spec("eval", eval_argv(c.world["data"], c.world["ckpt"], split=split),
                [str(split), "2 without a ground-truth file"])


@case("split file that is not UTF-8")
def _(c):
    lines = _lines(c.world["data"]["test_split"])
    c.dir.mkdir(parents=True, exist_ok=True)
    split = c.dir / "latin1.txt"
    split.write_bytes((lines[0] + "\n").encode() + "caf\u00e9/rgb.jpg caf\u00e9/d.png 518.8\n".encode("latin-1"))
    return Spec("eval", eval_argv(c.world["data"], c.world["ckpt"], split=split), [str(split), "line 2",
                                                                                    "not UTF-8"])


@case("split file with a malformed line")
def _(c):
    split = c.split([*_lines(c.world["data"]["test_split"]), "only_two fields"])
    return Spec("eval", eval_argv(c.world["data"], c.world["ckpt"], split=split), [str(split), "line 3",
                                                                                    "expected 3 fields"])


@case("split file not found")
def _(c):
    missing = c.dir / "absent.txt"
    return Spec("eval", eval_argv(c.world["data"], c.world["ckpt"], split=missing), ["split file not found",
                                                                                      str(missing)])


@case("training entry without depth (None)")
def _(c):
    line = _lines(c.world["data"]["train_split"])[0].split()
    split = c.split([f"{line[0]} None {line[2]}"])
    return Spec("train", train_argv(c.world["data"], c.runs, split=split), [str(split), "line 1", "needs a depth map"])


# --------------------------------------------------------------------------- packed store (findings 8, 11)
@case("packed store: truncated .json")
def _(c):
    p, npy, index = _packed(c)
    _truncate(index)
    return Spec("eval", eval_argv(p, c.world["ckpt"]), [str(index), "truncated or not JSON", "wordepth-pack-text"])


@case("packed store: .json without its keys")
def _(c):
    p, npy, index = _packed(c)
    index.write_text(json.dumps({"dim": 1024}))
    return Spec("eval", eval_argv(p, c.world["ckpt"]), [str(index), "has no 'keys' entry"])


@case("packed store: truncated .npy")
def _(c):
    p, npy, index = _packed(c)
    _truncate(npy)
    return Spec("eval", eval_argv(p, c.world["ckpt"]), [str(npy), "truncated or corrupt"])


@case("packed store: another dimension")
def _(c):
    p, npy, index = _packed(c)
    meta = json.loads(index.read_text())
    index.write_text(json.dumps({**meta, "dim": 512}))
    return Spec("eval", eval_argv(p, c.world["ckpt"]), [str(npy), "holds 512-d text features, but the model takes 1024-d"])


# --------------------------------------------------------------------------- feature files (findings 4, 11)
@case("malicious text feature pickle")
def _(c):
    p = c.data()
    feat, marker = _first_feature(p), c.dir / "pwned"
    torch.save(_Exploit(marker), feat)

    def not_run(r: Outcome) -> None:
        assert not marker.exists(), "the pickle ran code"
    return Spec("eval", eval_argv(p, c.world["ckpt"]), [str(feat), "arbitrary code", "weights_only"], check=not_run)


@case("truncated text feature file")
def _(c):
    p = c.data()
    feat = _first_feature(p)
    _truncate(feat)
    return Spec("eval", eval_argv(p, c.world["ckpt"]), [str(feat), "truncated or corrupt"])


@case("text feature of another CLIP model (1, 512)")
def _(c):
    p = c.data()
    feat = _first_feature(p)
    torch.save(torch.zeros(1, 512, dtype=torch.float16), feat)
    return Spec("eval", eval_argv(p, c.world["ckpt"]), [str(feat), "512-d", "1024-d", "--clip_model"])


@case("text feature missing")
def _(c):
    p = c.data()
    feat = _first_feature(p)
    feat.unlink()
    return Spec("eval", eval_argv(p, c.world["ckpt"]), [str(feat), "not found"])


# --------------------------------------------------------------------------- images (already handled)
@case("training image missing")
def _(c):
    p = c.data()
    img = Path(p["data_path"]) / _lines(p["train_split"])[0].split()[0].lstrip("/")
    img.unlink()
    return Spec("train", train_argv(p, c.runs), [str(img), "not found"])


@case("truncated training JPEG")
def _(c):
    p = c.data()
    img = Path(p["data_path"]) / _lines(p["train_split"])[0].split()[0].lstrip("/")
    _truncate(img)
    return Spec("train", train_argv(p, c.runs), [img.name])


@case("8-bit training depth map")
def _(c):
    p = c.data()
    png = Path(p["gt_path"]) / _lines(p["train_split"])[0].split()[1].lstrip("/")
    cv2.imwrite(str(png), np.full((H, W), 50, np.uint8))
    return Spec("train", train_argv(p, c.runs), ["uint8", png.name])


@case("training --input_height larger than the images")
def _(c):
    argv = [a if a != H else 1000 for a in train_argv(c.world["data"], c.runs)]
    return Spec("train", argv, ["--input_height", "1000x96"])


@case("eval checkpoint not found")
def _(c):
    return Spec("eval", eval_argv(c.world["data"], c.dir / "nope.pth"), ["checkpoint not found", "nope.pth"])


# --------------------------------------------------------------------------- extract --weights_path (finding 8)
def _extract(c: Case, weights: Path) -> list:
    p = c.world["data"]
    return ["extract", "--text_dir", p["text_dir"], "--dataset", "nyu", "--split", "test", "--text_feat_dir",
            c.dir / "feat", "--weights_path", weights, "--device", "cpu"]


@case("extract --weights_path: a corrupt file")
def _(c):
    c.dir.mkdir(parents=True, exist_ok=True)
    weights = c.dir / "RN50.pt"
    weights.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 16)  # a zip header, then garbage
    return Spec("text", _extract(c, weights), [str(weights), "RN50", "corrupt"], check=lambda r: _no_features(c))


@case("extract --weights_path: another model's weights")
def _(c):
    return Spec("text", _extract(c, c.world["ckpt"]), [str(c.world["ckpt"]), "RN50"],
                check=lambda r: _no_features(c))


@case("extract --weights_path: a malicious pickle")
def _(c):
    c.dir.mkdir(parents=True, exist_ok=True)
    weights, marker = c.dir / "RN50.pt", c.dir / "pwned"
    torch.save(_Exploit(marker), weights)

    def refused(r: Outcome) -> None:
        _no_features(c)
        assert not marker.exists()
    return Spec("text", _extract(c, weights), [str(weights), "arbitrary code"], check=refused)


@case("extract --weights_path: missing")
def _(c):
    return Spec("text", _extract(c, c.dir / "absent.pt"), ["--weights_path", "absent.pt", "does not exist"])


@case("extract keeps existing features of another CLIP model's width")
def _(c):
    p = c.world["data"]
    rgb = _lines(p["test_split"])[0].split()[0]
    old = feature_path(c.dir / "feat", "nyu", "test", rgb)
    save_feature_file(old, torch.randn(1, 512))  # a ViT-B-32 feature; RN50's are 1024-d
    argv = ["extract", "--text_dir", p["text_dir"], "--dataset", "nyu", "--split", "test",
            "--text_feat_dir", c.dir / "feat", "--device", "cpu"]

    def nothing_added(r: Outcome) -> None:
        assert [f for f in (c.dir / "feat").rglob("*.pt")] == [old]
    return Spec("text", argv, [str(old), "512-d", "1024-d", "--overwrite"], check=nothing_added)


def _no_features(c: Case) -> None:
    assert not (c.dir / "feat").exists() or not list((c.dir / "feat").rglob("*.pt"))


@case("pack-text with no features")
def _(c):
    return Spec("pack", ["--text_feat_dir", c.dir / "none", "--dataset", "nyu", "--split", "test"],
                [str(c.dir / "none")])


# --------------------------------------------------------------------------- the catalogue
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, world, tmp_path):
    c = Case(world, tmp_path / "case")
    c.dir.mkdir()
    spec = CASES[name](c)
    before = snapshot(world["root"], c.dir)
    res = run(spec.cmd, spec.argv, tmp_path / "logs", prelude=spec.prelude)
    after = snapshot(world["root"], c.dir)
    shown = f"exit {res.code}\n--- stdout\n{res.out[-3000:]}\n--- stderr\n{res.err[-3000:]}"
    assert res.code == spec.code, shown
    assert "Traceback" not in res.err + res.out, shown
    if spec.stream == "stdout":
        for word in spec.expect:
            assert word in res.out, f"{word!r} not reported\n{shown}"
    elif spec.code == 2:  # argparse: usage, then "prog: error: ..."
        errors = [line for line in res.err.splitlines() if ": error: " in line]
        assert len(errors) == 1 and all(word in errors[0] for word in spec.expect), shown
    else:
        errors = res.error_lines()
        assert len(errors) == 1, shown
        line = errors[0]
        following = res.err.split(line, 1)[1].strip()
        assert not following, f"lines after the error line:\n{shown}"
        for word in spec.expect:
            assert word in line, f"{word!r} not in the error line\n{shown}"
    print(f"CATALOGUE [{name}] exit {res.code}:", *(res.error_lines() or [ln for ln in res.out.splitlines()
                                                                         if ln.startswith("eval:")]))
    changed = [str(f) for f, sig in before.items() if f not in spec.may_change and after.get(f) != sig]
    assert changed == [], f"pre-existing files changed: {changed}\n{shown}"
    if spec.check:
        spec.check(res)


def test_debug_shows_the_traceback(world, tmp_path):
    res = run("eval", eval_argv(world["data"], world["ckpt"], "--legacy"), tmp_path,
              env={"WORDEPTH_DEBUG": "1"})
    assert res.code == 1 and "Traceback" in res.err and "force_config" in res.err


# --------------------------------------------------------------------------- signals (finding 12)
def _wait_for(predicate, proc: Run, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.running(), proc.err.read_text()
        assert time.time() < deadline, proc.err.read_text()
        time.sleep(0.05)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_then_exits_128_plus_its_number(world, tmp_path, sig, code):
    log = tmp_path / "runs" / "new" / "train.log"
    proc = Run("train", train_argv(world["data"], tmp_path / "runs", "--log_freq", "1", max_steps=10000), tmp_path)
    _wait_for(lambda: log.exists() and "step 1/" in log.read_text(), proc)
    os.kill(proc.pid, sig)
    res = proc.wait()
    assert res.code == code, res.err
    assert "Traceback" not in res.err and not res.error_lines()
    assert f"stopped by {sig.name}" in res.err and "--checkpoint_path" in res.err
    saved = torch.load(tmp_path / "runs" / "new" / "last.pth", weights_only=True)["global_step"]
    assert saved >= 1 and f"step {saved})" in res.err
    assert not (tmp_path / "runs" / "new" / ".lock").exists()


# --------------------------------------------------------------------------- two runs, one folder (finding 2)
def test_a_second_run_into_a_running_runs_folder_is_refused(world, tmp_path):
    run_dir = tmp_path / "runs" / "new"
    first = Run("train", train_argv(world["data"], tmp_path / "runs", "--log_freq", "1", max_steps=10000),
                tmp_path / "a")
    _wait_for(lambda: (run_dir / "train.log").exists() and "step 1/" in (run_dir / "train.log").read_text(), first)
    before = snapshot(run_dir)
    second = run("train", train_argv(world["data"], tmp_path / "runs", max_steps=1), tmp_path / "b")
    lines_after = (run_dir / "train.log").read_text()
    os.kill(first.pid, signal.SIGTERM)
    res = first.wait()
    assert second.code == 1 and len(second.error_lines()) == 1 and "Traceback" not in second.err, second.err
    assert "in use by another training" in second.error_lines()[0] and f"PID {first.pid}" in second.error_lines()[0]
    assert snapshot(run_dir)[run_dir / "config.json"] == before[run_dir / "config.json"]
    assert "WorDepth (tiny" not in lines_after.split("step 1/", 1)[1]  # the second run logged nothing there
    assert res.code == 143 and not (run_dir / ".lock").exists()


def test_a_stale_lock_is_taken_over_with_a_warning(world, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_dir = tmp_path / "runs" / "new"
    run_dir.mkdir(parents=True)
    (run_dir / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "then"}))
    res = run("train", train_argv(world["data"], tmp_path / "runs", max_steps=1), tmp_path, fresh=True)
    assert res.code == 0, res.err
    assert f"took over the stale lock {run_dir / '.lock'} (process {dead.pid} is no longer running)" in res.err
    assert (run_dir / "last.pth").exists() and not (run_dir / ".lock").exists()


# --------------------------------------------------------------------------- counted, not silent (findings 9, 11)
def test_skipped_images_are_counted_and_said(world, tmp_path):
    p = make_synthetic_dataset(tmp_path / "d", "nyu", 0, 4, H, W, seed=3)
    lines = _lines(p["test_split"])
    (Path(p["gt_path_eval"]) / lines[0].split()[1]).unlink()  # missing ground truth
    png = Path(p["gt_path_eval"]) / lines[1].split()[1]
    cv2.imwrite(str(png), np.zeros((H, W), np.uint16))  # no valid pixel
    res = run("eval", eval_argv(p, world["ckpt"], "--metrics_json", tmp_path / "m.json"), tmp_path)
    assert res.code == 0, res.err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["count"] == 2 and metrics["skipped"] == 2
    assert metrics["skipped_by_reason"] == {"missing_ground_truth": 1, "no_ground_truth": 0, "no_valid_pixels": 1}
    assert "Computing errors for 2 eval samples (2 skipped: 1 without a ground-truth file, 1 without a valid" in res.out
    assert lines[1].split()[0] in res.err  # the image without a valid pixel is named


def test_a_split_with_a_byte_order_mark_works(world, tmp_path):
    split = tmp_path / "bom.txt"
    split.write_bytes(b"\xef\xbb\xbf" + Path(world["data"]["test_split"]).read_bytes())
    res = run("eval", eval_argv(world["data"], world["ckpt"], split=split), tmp_path)
    assert res.code == 0 and "Computing errors for 2 eval samples" in res.out, res.err


def test_check_data_points_to_a_page_that_exists(world, tmp_path):
    split = tmp_path / "bad.txt"
    split.write_text("only_two fields\n")
    res = run("eval", [*eval_argv(world["data"], world["ckpt"], split=split), "--check_data"], tmp_path)
    assert res.code == 1 and "line 1" in res.out
    page = res.out.split("every message, its cause and fix: ", 1)[1].split(")", 1)[0]
    assert Path(page).is_file(), res.out

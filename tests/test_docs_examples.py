"""Every example in the README and docs/ runs (issue 30, "Docs whose examples run").

The fenced ``python`` / ``bash`` / ``sh`` blocks of the pages in :data:`PAGES` are taken from the
pages as they are, and each page's blocks run top to bottom, as a reader follows the page, in a
working folder that holds what the examples name: tiny-preset checkpoints under the released names
(``nyu.pth``, ``checkpoints/nyu_legacy.pth``, ``wordepth_kitti.pth`` in the original layout, ...),
photos (``room.jpg``, ``photos/``, ``frame.png``, short videos), the ``configs/`` and synthetic NYU and
KITTI data where the configs look (``./data/...``, ``./data_splits/``, ``./text_feat/``), the dataset of
docs/data.md under ``/data/mine`` and zero-shot fixtures under ``/data/zeroshot`` (absolute paths are
moved under the folder, :data:`ABSOLUTE`), and local stand-ins for every download (:func:`stand_ins`).

How a command runs (:meth:`Runner.run`):

* ``wordepth-X``: the console command's function of pyproject.toml ``[project.scripts]``, in-process
  (``console`` entries: their ``main``); ``python train.py`` / ``eval.py``: ``wordepth-train`` /
  ``wordepth-eval`` (the files are checked to be those commands); ``python -m M``: ``M.main(argv)``.
* ``sh run_*.sh``: the real script, with ``python`` and ``$PYTHON`` recording the command the script
  would start (``torch.distributed.run`` and its process count for ``NUM_GPUS``/``NNODES``); that
  command then runs in-process as one CPU process. ``torchrun``: the same, one process.
* Training commands get :data:`TINY_TRAIN` appended (tiny preset, one step, small crops), the demo and
  the benchmark/experiment runs their quick settings (:data:`QUICK_FLAGS`), ``--device cuda`` becomes
  ``--device cpu``, and :data:`PLACEHOLDERS` (the checkout's path) are the only changes to what the
  pages say, besides :data:`ABSOLUTE`. Training lines also get ``--overwrite``: the lines of one
  block are alternatives, run one after the other in one folder. docs/demo.md's retraining of the demo
  model uses ``toy.QUICK``.
* ``wordepth-app`` builds its page and loads its model; serving is replaced by a recorder.
* Python blocks run with ``exec`` in the folder and their results are checked (:data:`PYTHON_CHECKS`);
  a block that is a file to save (its docstring opens with the file's name, ``mine: ...``) is saved
  and imported as the page says.
* What a command is asked to write (``--out``, ``--markdown``, ``--metrics_json``) must exist after it.

Every page is marked slow (each runs several commands on tiny models: 1-5 minutes on 2 busy cores);
the coverage checks at the top run in seconds.
* Downloads: ``wordepth-download`` clones a local git repository (its default URL replaced); CLIP RN50,
  CLIP ViT-B/32 and CoCa come from the local caches open_clip reads (``~/.cache/clip``, the Hugging
  Face cache) with random weights, ViT-B/32 and CoCa at a tiny size; ``HF_HUB_OFFLINE=1``.

:data:`NOT_RUN` lists the few lines not executed and why. A block or a command this file does not
know how to run fails :func:`test_every_example_has_a_way_to_run`, so the pages cannot drift.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.test_text_pipeline import TINY_COCA_CFG

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")),
         "benchmarks/README.md", *sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("experiments/*/README.md")),
         "configs/README.md"]
RUN = {"python", "bash", "sh"}
NOT_CODE = {"", "text", "bibtex"}  # folder layouts, split-file lines, the citation

# Lines not executed, and why (matched after joining continuation lines and dropping comments).
NOT_RUN = {
    # installing: checked instead (the file / the extra exists), see test_install_lines_name_what_exists
    "pip install -r requirements.txt": "install",
    "pip install -e .[demo]": "install",
    # the test suite itself
    "python -m pytest -q": "the test suite",
    "WORDEPTH_SCREENSHOTS=docs/images python -m pytest -q tests/test_app.py -k browser": "the test suite",
    # outside this repository: the 1 GB reference checkpoint and the original release's code checkout;
    # the benchmark's options are checked by its parser (test_not_run_commands_parse)
    "python ../shared/reference/make_reference_checkpoint.py /tmp/ref.pth": "outside the repository",
    "python -m benchmarks.benchmark --only original,fastpaths,predict --original PATH/TO/WorDepth "
    "--checkpoint /tmp/ref.pth --runs 5 --compile --out bench.json": "needs the original release's code",
    # Swin-L for minutes: the `--quick` line beside them runs the same sections on the tiny preset
    "python -m benchmarks.benchmark --out bench.json": "Swin-L (the --quick line runs)",
    "python -m benchmarks.benchmark --only eval,train --runs 5": "Swin-L (the --quick line runs)",
}

# Appended to every training command: the tiny preset, one step, small crops, no Swin-L ImageNet file.
TINY_TRAIN = ["--preset", "tiny", "--max_steps", "1", "--batch_size", "1", "--input_height", "48",
              "--input_width", "64", "--num_threads", "0", "--pretrain", "", "--no_tqdm"]
KITTI_CROP = ["--input_height", "352", "--input_width", "96"]  # KITTI: all rows, where the sparse lidar depth is
# (and --overwrite: the lines of a block are alternatives, run one after the other in one folder)
# Appended to full-size runs that have a quick mode (module -> flags).
QUICK_FLAGS = {
    "wordepth.cli.demo": ["--steps", "2", "--n_train", "4", "--n_test", "2", "--height", "48", "--width", "64",
                          "--no_tqdm"],
    "benchmarks.benchmark": ["--quick"],
    "benchmarks.memory_estimate": ["--quick"],
    "benchmarks.processing_resolution": ["--quick"],
    "experiments.scale_ambiguity.run": ["--quick"],
}
ABSOLUTE = ("/data/",)  # absolute paths in the pages: moved under <workspace>/abs/
# Names of python blocks that are files a user saves (a block starting with '"""NAME: ...').
# Upstream of wordepth-download (a local git repository standing in for the original's GitHub).
UPSTREAM = {"data_splits/upstream_split.txt": "nyu/test/a.jpg nyu/test/a.png 518.8579\n",
            "text/nyu/test/upstream.txt": "a kitchen with a table and chairs\n"}


# --------------------------------------------------------------------------- the pages
@dataclass(frozen=True)
class Block:
    page: str
    line: int
    lang: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    text = (ROOT / page).read_text(encoding="utf-8")
    out = []
    for m in re.finditer(r"^```(\S*)[^\n]*\n(.*?)^```", text, re.S | re.M):
        out.append(Block(page, text[:m.start()].count("\n") + 1, m.group(1), m.group(2)))
    return out


def commands(code: str) -> list[list[str]]:
    """The commands of a shell block as argument lists: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [tokens for line in joined.splitlines() if (tokens := shlex.split(line, comments=True))]


def line_of(tokens: list[str]) -> str:
    """A command as NOT_RUN spells it: its words joined by one space."""
    return " ".join(tokens)


def all_blocks() -> list[Block]:
    return [b for page in PAGES if (ROOT / page).is_file() for b in blocks(page)]


SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
ENTRY_FILES = {"train.py": "wordepth-train", "eval.py": "wordepth-eval"}


def kind_of(tokens: list[str]) -> str:
    """How a command runs (see the module docstring); 'unknown' fails the coverage test."""
    if line_of(tokens) in NOT_RUN:
        return "not run"
    while tokens and re.match(r"^[A-Z_]+=", tokens[0]):
        tokens = tokens[1:]
    prog, args = tokens[0], tokens[1:]
    if prog in SCRIPTS:
        return "console command"
    if prog == "python" and args and args[0] in ENTRY_FILES:
        return "entry file"
    if prog == "python" and args[:1] == ["-m"] and args[1] != "pytest":
        return "module"
    if prog == "sh" and args and re.fullmatch(r"run_\w+\.sh", args[0]) and (ROOT / args[0]).is_file():
        return "shell script"
    if prog == "torchrun" and any(a in ENTRY_FILES for a in args):
        return "torchrun"
    return "unknown"


def test_every_example_has_a_way_to_run():
    """A new block of another language, or a command this file cannot run, fails here (add its treatment)."""
    problems = []
    for b in all_blocks():
        if b.lang not in RUN | NOT_CODE:
            problems.append(f"{b.name}: a ```{b.lang} block (run it here, or make it ```text)")
        if b.lang in ("bash", "sh"):
            problems += [f"{b.name}: {line_of(c)}" for c in commands(b.code) if kind_of(c) == "unknown"]
    assert not problems, "examples this test does not run:\n" + "\n".join(problems)


def test_not_run_list_is_current():
    """Every line of NOT_RUN is still in a page (a stale exception would hide nothing, but mislead)."""
    shown = {line_of(c) for b in all_blocks() if b.lang in ("bash", "sh") for c in commands(b.code)}
    assert not set(NOT_RUN) - shown


def test_every_python_example_has_a_check():
    """Each python block (but a file the page has the reader save) says what it gives in PYTHON_CHECKS, and
    each check still finds its block."""
    python = [b for b in all_blocks() if b.lang == "python" and not b.code.lstrip().startswith('"""')]
    unchecked = [b.name for b in python
                 if not any(w == b.page and line in b.code.splitlines() for w, line, _ in PYTHON_CHECKS)]
    assert not unchecked, f"python examples without a check in PYTHON_CHECKS: {unchecked}"
    for where, line, _ in PYTHON_CHECKS:
        assert sum(b.page == where and line in b.code.splitlines() for b in python) == 1, (where, line)


def test_install_lines_name_what_exists():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for command in NOT_RUN:
        m = re.fullmatch(r"pip install -e \.\[(\w+)\]", command)
        if m:
            assert m.group(1) in project["optional-dependencies"], command
        m = re.fullmatch(r"pip install -r (\S+)", command)
        if m:
            lines = (ROOT / m.group(1)).read_text().split()
            assert "-e" in lines and "." in lines  # "... and this package", as the README says
    assert "def test_app_in_a_browser" in (ROOT / "tests" / "test_app.py").read_text()  # `-k browser` selects it


def test_not_run_commands_parse():
    """The benchmark lines not run: their options exist."""
    from benchmarks import benchmark

    parsed = [benchmark.build_parser().parse_args(shlex.split(command)[3:]) for command in NOT_RUN
              if command.startswith("python -m benchmarks.benchmark ")]
    assert len(parsed) == 3 and not any(a.quick for a in parsed)
    assert any(a.original == "PATH/TO/WorDepth" and a.compile for a in parsed)


def test_demo_table_has_the_format_the_demo_writes():
    """docs/inference.md's demo table is OUT_DIR/metrics.md of `sh run_demo.sh`, pasted: the same labels, columns,
    digits and bold (rebuilt from the table's own numbers by the demo's writer)."""
    from wordepth.cli.demo import TABLE_LABELS
    from wordepth.compare import markdown_table

    text = (ROOT / "docs" / "inference.md").read_text(encoding="utf-8")
    table = re.search(r"^\| model \|.*?\n(?=\n)", text, re.S | re.M).group(0)
    rows = [line.strip("|").split("|") for line in table.splitlines()[2:]]
    header = [c.split()[0] for c in table.splitlines()[0].strip("|").split("|")[1:]]
    results = [{k: float(v.strip().strip("*")) for k, v in zip(header, row[1:])} for row in rows]
    assert [row[0].strip() for row in rows] == list(TABLE_LABELS)
    assert markdown_table(results, TABLE_LABELS) == table
    assert "depend on the CPU" in text and "OUT_DIR/metrics.md" in text


def test_entry_files_are_the_console_commands():
    for name, script in ENTRY_FILES.items():
        module = SCRIPTS[script].split(":")[0]
        assert f"from {module} import" in (ROOT / name).read_text(), name


# --------------------------------------------------------------------------- the working folder
def _tiny_state(legacy: bool, max_depth: float, prior_mean: float, seed: int = 0) -> tuple[dict, dict]:
    from wordepth.models.wordepth import WorDepth, preset_config

    torch.manual_seed(seed)
    model = WorDepth(preset_config("tiny").replace(legacy=legacy, max_depth=max_depth, prior_mean=prior_mean))
    return model.cfg.to_dict(), model.state_dict()


def _image(path: Path, hw=(48, 64), seed=0) -> None:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:hw[0], 0:hw[1]]
    img = np.stack([xx * 3 + seed, yy * 4, xx + yy], -1).astype(np.uint8) + rng.integers(0, 20, (*hw, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def _video(path: Path, frames=3, hw=(48, 64)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (hw[1], hw[0]))
    for i in range(frames):
        img = np.full((*hw, 3), 40 * i, np.uint8)
        img[:, : hw[1] // 2] = 200
        writer.write(img)
    writer.release()


def _git_repo(path: Path) -> str:
    for rel, content in UPSTREAM.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(content)
    for args in (["init", "-q"], ["add", "."], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "d"]):
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)
    return "file://" + str(path)



TINY_CLIP = {  # stand-ins at the names the pages use: the real widths (512, CoCa's tokens), tiny towers
    "ViT-B-32": {"embed_dim": 512,
                 "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
    "coca_ViT-L-14": TINY_COCA_CFG,  # the text pipeline tests' tiny CoCa
}


@contextlib.contextmanager
def tiny_clip_configs():
    import open_clip.factory as factory

    saved = {k: factory._MODEL_CONFIGS.get(k) for k in TINY_CLIP}
    factory._MODEL_CONFIGS.update(TINY_CLIP)
    try:
        yield
    finally:
        for k, v in saved.items():
            factory._MODEL_CONFIGS[k] = v


def stand_ins(home: Path) -> None:
    """Random-weight CLIP RN50 (full size), ViT-B/32 and CoCa (tiny) where open_clip looks, offline."""
    import open_clip

    clip = home / ".cache" / "clip"
    clip.mkdir(parents=True)
    torch.manual_seed(0)
    rn50 = open_clip.create_model("RN50", pretrained=None, force_quick_gelu=True)
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in rn50.state_dict().items()}, clip / "RN50.pt")
    with tiny_clip_configs():
        vit = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
        torch.save(vit.state_dict(), clip / "ViT-B-32.pt")
        coca = open_clip.create_model("coca_ViT-L-14", pretrained=None)
    snap = (home / "hf" / "hub" / "models--laion--mscoco_finetuned_CoCa-ViT-L-14-laion2B-s13B-b90k")
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("0" * 40)
    (snap / "snapshots" / ("0" * 40)).mkdir(parents=True)
    torch.save(coca.state_dict(), snap / "snapshots" / ("0" * 40) / "open_clip_pytorch_model.bin")
    weights = home / "weights"
    (weights / "coca_ViT-L-14_mscoco").mkdir(parents=True)
    os.link(clip / "RN50.pt", weights / "RN50.pt")
    from safetensors.torch import save_model
    save_model(coca, str(weights / "coca_ViT-L-14_mscoco" / "open_clip_model.safetensors"))


def _mine(root: Path, ws: Path) -> None:
    """docs/data.md's dataset under /data/mine: 48x64 JPEGs, depth .npy in metres, captions, features."""
    from wordepth.data.generated.synthetic import caption_feature
    from wordepth.data.text_features import feature_path, make_cuda_tagged_file

    for split, n in (("train", 4), ("test", 2)):
        lines = []
        for i in range(n):
            rgb, dep = f"scene_{split}_{i // 2}/rgb_{i:04d}.jpg", f"scene_{split}_{i // 2}/depth_{i:04d}.npy"
            depth = np.tile(np.linspace(1.0, 15.0, 64, dtype=np.float32), (48, 1)) * (1 + 0.1 * i)
            _image(root / rgb, seed=i)
            np.save(root / dep, depth)
            caption = f"A corridor number {i} with a door."
            (ws / "text" / "mine" / split / rgb).parent.mkdir(parents=True, exist_ok=True)
            (ws / "text" / "mine" / split / rgb).with_suffix(".txt").write_text(caption + "\n")
            make_cuda_tagged_file(feature_path(ws / "text_feat", "mine", split, rgb), caption_feature(caption))
            lines.append(f"{rgb} {dep} 500.0\n")
        for where in (ws, ws / "data_splits"):
            (where / f"mine_{split}.txt").write_text("".join(lines))


@pytest.fixture(scope="session")
def template(tmp_path_factory) -> Path:
    """The working folder every page starts from (copied per page as hard links)."""
    from wordepth.checkpoints.layouts import project_to_original
    from wordepth.data.generated.synthetic import caption_feature, make_synthetic_dataset
    from wordepth.data.generated.zeroshot_fixtures import make_zeroshot_fixtures
    from wordepth.models.wordepth import WorDepth, WorDepthConfig

    ws = tmp_path_factory.mktemp("docs_ws")
    shutil.copytree(ROOT / "configs", ws / "configs")
    # checkpoints under the pages' names: this project's format, the variant's settings
    settings = {"nyu": (False, 10.0, 1.54), "nyu_legacy": (True, 10.0, 1.54), "kitti": (False, 80.0, 2.54),
                "kitti_legacy": (True, 80.0, 2.54)}
    files = {"nyu.pth": "nyu", "nyu_legacy.pth": "nyu_legacy", "kitti.pth": "kitti", "kitti_legacy.pth": "kitti_legacy",
             "checkpoints/nyu.pth": "nyu", "checkpoints/nyu_legacy.pth": "nyu_legacy",
             "checkpoints/kittieigen.pth": "kitti", "checkpoints/kittieigen_legacy.pth": "kitti_legacy",
             "runs/nyu/best.pth": "nyu"}
    for rel, variant in files.items():
        cfg, state = _tiny_state(*settings[variant])
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": "wordepth", "config": {"model": cfg}, "model": state}, ws / rel)
    cfg, _ = _tiny_state(*settings["kitti_legacy"])
    model = WorDepth(WorDepthConfig.from_dict(cfg))
    torch.save({"model": project_to_original(model), "global_step": 0}, ws / "wordepth_kitti.pth")  # original layout
    # photos and videos
    for rel in ("room.jpg", "room.png", "room1.jpg", "photos/p1.jpg", "photos/p2.jpg", "my_photos/m1.jpg",
                "my_photos/m2.jpg", "drive/d1.png", "drive/d2.png"):
        _image(ws / rel, seed=len(rel))
    for rel in ("frame.png", "frame2.png"):
        _image(ws / rel, hw=(64, 208), seed=len(rel))
    _image(ws / "0000000005.png", hw=(375, 1242))  # a KITTI frame: --kb_crop takes 352x1216 of it
    torch.save(caption_feature("a car on a street"), ws / "0000000005.pt")
    (ws / "wordepth" / "assets").mkdir(parents=True)  # docs/demo.md names the shipped demo model by its path
    for name in ("demo_scale_rooms.safetensors", "demo_scale_rooms.json"):
        shutil.copy(ROOT / "wordepth" / "assets" / name, ws / "wordepth" / "assets" / name)
    _video(ws / "walk.mp4")
    _video(ws / "rooms.mp4")
    # NYU and KITTI where the configs look (./data, ./data_splits, ./text, ./text_feat)
    syn = ws / "_synthetic"
    nyu = make_synthetic_dataset(syn, "nyu", n_train=4, n_test=2, height=64, width=96, seed=0)
    kitti = make_synthetic_dataset(syn, "kitti", n_train=1, n_test=1, seed=0)  # 375x1242: the KB crop needs it
    (ws / "data").mkdir()
    (ws / "data_splits").mkdir()
    shutil.move(syn / "nyu", ws / "data" / "nyu_depth_v2")
    shutil.move(kitti["data_path"], ws / "data" / "kitti_raw_data")
    shutil.move(kitti["gt_path"], ws / "data" / "kitti_ground_truth")
    for split in (nyu["train_split"], nyu["test_split"]):
        shutil.move(ws / "data" / "nyu_depth_v2" / split.name, ws / "data_splits" / split.name)
    for split in (kitti["train_split"], kitti["test_split"]):
        shutil.move(split, ws / "data_splits" / split.name)
    shutil.move(syn / "text", ws / "text")
    shutil.move(syn / "text_feat", ws / "text_feat")
    shutil.rmtree(syn)
    # photos' captions and features (docs/inference.md: --text_feature / --caption_file folders)
    for stem in ("p1", "p2"):
        (ws / "text_feat" / "mine" / "test").mkdir(parents=True, exist_ok=True)
        torch.save(caption_feature(f"a photo {stem}"), ws / "text_feat" / "mine" / "test" / f"{stem}.pt")
        (ws / "text" / "mine" / "test").mkdir(parents=True, exist_ok=True)
        (ws / "text" / "mine" / "test" / f"{stem}.txt").write_text(f"a bedroom number {stem}\n")
    _mine(ws / "abs" / "data" / "mine", ws)
    make_zeroshot_fixtures(ws / "abs" / "data" / "zeroshot", n=1, hw=(48, 64))
    # wordepth-compare's inputs
    for run, abs_rel in (("paper", 0.1), ("ours", 0.2)):
        (ws / "runs" / run).mkdir(parents=True, exist_ok=True)
        (ws / "runs" / run / "metrics.json").write_text(json.dumps(
            {"silog": 10.0, "abs_rel": abs_rel, "log10": 0.04, "rms": 0.4, "sq_rel": 0.05, "log_rms": 0.12,
             "d1": 0.9, "d2": 0.98, "d3": 0.99, "count": 4}))
    stand_ins(ws / "home")
    os.link(ws / "home" / ".cache" / "clip" / "RN50.pt", ws / "RN50.pt")
    os.link(ws / "home" / "hf" / "hub" / "models--laion--mscoco_finetuned_CoCa-ViT-L-14-laion2B-s13B-b90k"
            / "snapshots" / ("0" * 40) / "open_clip_pytorch_model.bin", ws / "coca.bin")
    return ws


@pytest.fixture(scope="session")
def upstream(tmp_path_factory) -> str:
    return _git_repo(tmp_path_factory.mktemp("upstream"))


# --------------------------------------------------------------------------- running a page
class Runner:
    """Runs one page's commands in its working folder."""

    def __init__(self, ws: Path, monkeypatch):
        self.ws = ws
        self.mp = monkeypatch
        self.ran: list[str] = []

    def argv(self, tokens: list[str]) -> list[str]:
        out = []
        for t in tokens:
            for prefix in ABSOLUTE:
                t = t.replace(prefix, str(self.ws / "abs" / prefix.strip("/")) + "/") if t.startswith(prefix) else t
            out.append(os.path.expanduser(t))
        for i, t in enumerate(out[:-1]):
            if t == "--device" and out[i + 1] == "cuda":
                out[i + 1] = "cpu"  # no GPU in the test
        return out

    def call(self, entry: str, argv: list[str]) -> object:
        module, func = entry.split(":")
        if func == "console":
            func = "main"  # console() drops main's result and reads sys.argv
        if module in ("wordepth.cli.train", "wordepth.cli.sweep") and "--check_data" not in argv:
            argv = argv + TINY_TRAIN + (KITTI_CROP if any("kitti" in a for a in argv) else [])
            if module == "wordepth.cli.train" and "--eval_only" not in argv:
                argv.append("--overwrite")  # a block's lines are alternatives: each replaces the run of the last
        argv = argv + QUICK_FLAGS.get(module, [])
        mod = importlib.import_module(module)
        if module == "wordepth.cli.app":
            return self.app(mod, argv)
        try:
            result = getattr(mod, func)(argv)
        except SystemExit as exc:
            assert exc.code in (None, 0), f"{module} {argv} exited with {exc.code}"
            result = 0
        assert result in (None, 0) or isinstance(result, dict), f"{module} {argv} returned {result!r}"
        if module == "wordepth.cli.demo":  # the table docs/inference.md pastes
            from wordepth.compare import load_metrics, markdown_table

            out = Path(argv[argv.index("--out") + 1])
            runs = [load_metrics(out / "metrics.json"), load_metrics(out / "baseline_metrics.json")]
            assert (out / "metrics.md").read_text() == markdown_table(runs, mod.TABLE_LABELS)
        self.ran.append(f"{module} {' '.join(argv)}")
        return result

    def app(self, mod, argv: list[str]) -> None:
        """The app builds its page and loads its model; the server is a recorder."""
        from wordepth.app import views

        served, apps = [], []
        original = views.DepthApp.start_loading

        def start_loading(app):
            thread = original(app)
            thread.join()  # the model, loaded before the command returns
            apps.append(app)
            return thread

        self.mp.setattr(mod.webapp, "launch", lambda blocks, **kw: served.append(kw))
        self.mp.setattr(views.DepthApp, "start_loading", start_loading)
        assert mod.main(argv) == 0
        assert served and apps and apps[0].ready, f"wordepth-app {argv}: {apps and apps[0].model_status()}"
        host = argv[argv.index("--host") + 1] if "--host" in argv else "127.0.0.1"
        assert (served[0]["host"], served[0]["port"]) == (host, int(argv[argv.index("--port") + 1])
                                                          if "--port" in argv else 7860)
        self.ran.append(f"wordepth-app {' '.join(argv)}")

    def shell_script(self, env: dict, args: list[str]) -> None:
        """The script itself runs; the python command it starts is recorded, then run in-process."""
        stub = self.ws / "_bin"
        stub.mkdir(exist_ok=True)
        record = self.ws / "_bin" / "argv"
        (stub / "python").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{record}"\n')
        (stub / "python").chmod(0o755)
        run_env = {**os.environ, **env, "PATH": f"{stub}{os.pathsep}{os.environ['PATH']}",
                   "PYTHON": str(stub / "python")}
        subprocess.run(["sh", str(ROOT / args[0]), *args[1:]], check=True, env=run_env, cwd=self.ws)
        recorded = record.read_text().splitlines()
        record.unlink()
        self.launched(recorded, env)

    def launched(self, recorded: list[str], env: dict) -> None:
        """A recorded ``python [-m torch.distributed.run OPTIONS] -m MODULE ARGS`` as one in-process run."""
        if recorded[:2] == ["-m", "torch.distributed.run"]:
            opts = dict(a.lstrip("-").split("=", 1) for a in recorded[2:] if a.startswith("--") and "=" in a)
            assert opts["nproc_per_node"] == env.get("NUM_GPUS", "1") and opts["nnodes"] == env.get("NNODES", "1")
            if "MASTER_ADDR" in env:
                assert opts["rdzv_endpoint"] == f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT', '29500')}"
            recorded = recorded[next(i for i, a in enumerate(recorded) if i > 1 and a == "-m"):]
        assert recorded[0] == "-m", recorded
        module = recorded[1]
        entry = next((e for e in SCRIPTS.values() if e.split(":")[0] == module), f"{module}:main")
        self.call(entry, recorded[2:])

    def run(self, command: list[str]) -> None:
        kind = kind_of(command)
        if kind == "not run":
            return
        tokens = list(command)
        env = {}
        while re.match(r"^[A-Z_]+=", tokens[0]):
            key, value = tokens.pop(0).split("=", 1)
            env[key] = value
        prog, args = tokens[0], self.argv(tokens[1:])
        if kind == "console command":
            self.call(SCRIPTS[prog], args)
        elif kind == "entry file":
            self.call(SCRIPTS[ENTRY_FILES[args[0]]], args[1:])
        elif kind == "module":
            self.call(f"{args[1]}:main", args[2:])
        elif kind == "shell script":
            self.shell_script(env, args)
        elif kind == "torchrun":
            at = next(i for i, a in enumerate(args) if a in ENTRY_FILES)
            self.call(SCRIPTS[ENTRY_FILES[args[at]]], args[at + 1:])  # one CPU process
        else:
            pytest.fail(f"no way to run: {line_of(command)}")
        self.check_outputs(args)

    def check_outputs(self, args: list[str]) -> None:
        """What a command was asked to write exists."""
        for flag in ("--out", "--markdown", "--metrics_json"):
            if flag in args and args[args.index(flag) + 1] not in (".",):
                path = self.ws / args[args.index(flag) + 1]
                assert path.exists() and (path.is_file() or any(path.iterdir())), f"{flag} {path} not written"

    def python(self, block: Block) -> dict:
        first = block.code.lstrip().splitlines()[0]
        m = re.match(r'^"""(\w+): ', first)
        if m:  # a file the page tells the reader to save (docs/data.md's dataset): saved and imported
            from wordepth.data.registry import import_datasets

            path = self.ws / f"{m.group(1)}.py"
            path.write_text(block.code)
            sys.path.insert(0, str(self.ws))  # as PYTHONPATH=<folder> WORDEPTH_DATASETS=<module>
            try:
                sys.modules.pop(m.group(1), None)
                import_datasets(m.group(1))
            finally:
                sys.path.remove(str(self.ws))
            return {}
        namespace = {"__name__": "__docs__"}
        code = block.code
        for placeholder, value in PLACEHOLDERS.items():
            code = code.replace(placeholder, value)
        exec(compile(code, block.name, "exec"), namespace)
        return namespace


@pytest.fixture
def workspace(template, upstream, tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    shutil.copytree(template, ws, copy_function=os.link, symlinks=True)
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "WORDEPTH_CACHE", "WORDEPTH_DATASETS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(ws / "home"))
    monkeypatch.setenv("HF_HOME", str(ws / "home" / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ws)
    from wordepth.cli import download
    from wordepth.data.registry import unregister_dataset

    monkeypatch.setattr(download, "DEFAULT_REPO_URL", upstream)
    with tiny_clip_configs():
        yield ws
    unregister_dataset("mine")


# What the python blocks say they give: (page, a line of the block, check of the block's namespace).
PYTHON_CHECKS = [
    ("README.md", "import wordepth", lambda ns: (
        ns["depth"].shape == cv2.imread("room.jpg").shape[:2] and ns["depth"].dtype == np.float32
        and ns["samples"].shape[0] == 4 and not np.array_equal(ns["depth"], ns["toy"]))),
    ("docs/inference.md", "import wordepth", lambda ns: (
        ns["samples"].shape == (4, 352, 1216) and len(ns["depths"]) == 2 and ns["auto"].no_caption == "auto")),
    ("docs/inference.md", "import torch", lambda ns: ns["predictor"].variant == "nyu"),
    ("docs/demo.md", "from wordepth import Predictor", lambda ns: ns["depth"].shape == cv2.imread("room.png").shape[:2]),
    ("docs/training.md", "from wordepth.config import read_run_record",
     lambda ns: ns["record"].config.optim.learning_rate > 0),
    ("docs/zeroshot.md", "from wordepth.data.generated.zeroshot_fixtures import make_zeroshot_fixtures",
     lambda ns: Path("demo_zeroshot/text_feat").is_dir()),
]
# Placeholders of the pages that name this checkout (python blocks and commands).
PLACEHOLDERS = {"path/to/WorDepth": str(ROOT)}
SLOW_PAGES = {"README.md", "docs/training.md", "docs/reproducing.md", "docs/evaluation.md", "docs/data.md",
              "benchmarks/README.md", "experiments/scale_ambiguity/README.md", "docs/troubleshooting.md",
              "docs/inference.md", "docs/demo.md", "docs/zeroshot.md"}


def _page_params():
    pages = [p for p in PAGES if (ROOT / p).is_file() and any(b.lang in RUN for b in blocks(p))]
    return [pytest.param(p, marks=[pytest.mark.slow] if p in SLOW_PAGES else [], id=p) for p in pages]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed (wordepth-download's stand-in)")
@pytest.mark.parametrize("page", _page_params())
def test_page_examples_run(page, workspace, monkeypatch):
    runner = Runner(workspace, monkeypatch)
    if page == "docs/demo.md":  # retraining the demo model at its full budget takes minutes: its quick settings
        from wordepth.demo import toy

        train = toy.train_demo_model
        monkeypatch.setattr(toy, "train_demo_model", lambda path, *a, **k: train(path, toy.QUICK, progress=False))
    for block in blocks(page):
        if block.lang == "python":
            ns = runner.python(block)
            for where, line, check in PYTHON_CHECKS:
                if where == page and line in block.code.splitlines():
                    assert check(ns), f"{block.name}: the example does not give what the page says"
        elif block.lang in ("bash", "sh"):
            for command in commands(block.code):
                runner.run(command)

"""Bad-input catalogue: caption ablations in evaluation (--captions, --caption_ablation; issue 34).

Every case goes through :func:`tests.catalogue.run_case`: exit status 1, one ``error:`` line naming the option
or file, no traceback, nothing written (the --metrics_json file is not created) and no input changed. None of
them needs CLIP weights: each is refused before a sentence would be encoded.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.catalogue import run_case
from wordepth.cli import eval as eval_cli
from wordepth.data.generated.synthetic import make_synthetic_dataset
from wordepth.models.wordepth import WorDepth, preset_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("capbad")
    torch.manual_seed(0)
    model = WorDepth(preset_config("tiny", max_depth=10, prior_mean=1.54))
    ckpt = root / "tiny.pth"
    torch.save({"format": "wordepth", "config": {"model": model.cfg.to_dict()}, "model": model.state_dict()}, ckpt)
    paths = make_synthetic_dataset(root / "data", "nyu", n_train=0, n_test=3, height=48, width=64, seed=3)
    return {"ckpt": ckpt, "paths": paths, "root": root}


def argv(world, tmp_path: Path, *extra, split=None):
    p = world["paths"]
    return ["--dataset", "nyu", "--data_path_eval", p["data_path_eval"], "--gt_path_eval", p["gt_path_eval"],
            "--filenames_file_eval", split or p["test_split"], "--text_feat_dir", p["text_feat_dir"],
            "--checkpoint_path", world["ckpt"], "--min_depth_eval", "1e-3", "--max_depth_eval", "10", "--no_tqdm",
            "--metrics_json", tmp_path / "m.json", *extra]


def rgbs(world) -> list[str]:
    return [line.split()[0] for line in open(world["paths"]["test_split"]) if line.strip()]


def case(world, tmp_path, *extra, names, split=None):
    return run_case(eval_cli.main, argv(world, tmp_path, *extra, split=split), tmp_path, names=names,
                    watch=[world["root"]])


@pytest.mark.parametrize("flags, names", [
    (["--captions", "random"], ["--captions", "random", "shuffled"]),
    (["--captions", "template:"], ["template", "needs"]),
    (["--captions", "template:   "], ["template", "needs"]),
    (["--captions", "file:"], ["file", "caption file"]),
    (["--captions", "template:a {scene}"], ["{caption}"]),
    (["--caption_ablation", "none,nonsense"], ["--caption_ablation", "nonsense"]),
    (["--caption_ablation", "none,none"], ["--caption_ablation", "twice"]),
    (["--caption_ablation", "none", "--captions", "shuffled"], ["--captions", "--caption_ablation"]),
    (["--caption_ablation", "none", "--per_image_csv", "rows.csv"], ["--per_image_csv"]),
])
def test_bad_caption_options_are_refused_before_anything_runs(world, tmp_path, flags, names):
    case(world, tmp_path, *flags, names=names)


def test_caption_file_missing_images(world, tmp_path):
    names = rgbs(world)
    captions = tmp_path / "captions.txt"
    captions.write_text("".join(f"{r} a small room\n" for r in names[:-1]))
    case(world, tmp_path, "--captions", f"file:{captions}", names=["captions.txt", "no sentence", names[-1]])


def test_caption_file_naming_an_image_not_in_the_split(world, tmp_path):
    captions = tmp_path / "captions.json"
    captions.write_text('{' + ", ".join(f'"{r}": "a room"' for r in rgbs(world)) + ', "ghost/rgb_1.jpg": "a room"}')
    case(world, tmp_path, "--captions", f"file:{captions}",
         names=["captions.json", "ghost/rgb_1.jpg", "not an image of the evaluation split"])


def test_caption_file_with_an_empty_sentence(world, tmp_path):
    names = rgbs(world)
    captions = tmp_path / "captions.txt"
    captions.write_text("".join(f"{r} a small room\n" for r in names[1:]) + f"{names[0]}\n")
    case(world, tmp_path, "--captions", f"file:{captions}", names=["captions.txt", "line 3", "empty", names[0]])


def test_caption_file_that_does_not_exist(world, tmp_path):
    case(world, tmp_path, "--captions", f"file:{tmp_path / 'nowhere.txt'}", names=["nowhere.txt"])


def test_template_with_caption_needs_the_captions(world, tmp_path):
    case(world, tmp_path, "--captions", "template:a toy {caption}", names=["--text_dir", "{caption}"])


@pytest.mark.parametrize("mode", ["shuffled", "other-scene"])
def test_one_test_image_has_no_permutation(world, tmp_path, mode):
    split = tmp_path / "one.txt"
    split.write_text(open(world["paths"]["test_split"]).readline())
    out = case(world, tmp_path, "--captions", mode, names=[mode], split=split)
    assert "two" in out.error_lines()[0]


def test_ablation_with_one_test_image_is_refused_before_any_forward(world, tmp_path):
    split = tmp_path / "one.txt"
    split.write_text(open(world["paths"]["test_split"]).readline())
    out = case(world, tmp_path, "--caption_ablation", "none,shuffled", names=["shuffled"], split=split)
    assert "silog" not in out.out  # no table, not even the modes that could run

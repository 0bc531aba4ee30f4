"""Caption ablations in evaluation (--captions MODE, --caption_ablation): what each mode feeds the network.

Offline: the CLIP text encoder of template:/file: is a tiny open_clip model whose weights come from a local
file (as tests/test_text_pipeline.py builds its encoders), and the network takes its 32-d features.
"""
import json
from pathlib import Path

import cv2
import numpy as np
import open_clip
import pytest
import torch

from wordepth.caption_ablation import (CaptionModeError, ablation_results, derangement, other_scene_assignment,
                                       paired_bootstrap, parse_ablation, parse_caption_mode, scene_of,
                                       tensor_caption_features)
from wordepth.cli import eval as eval_entry
from wordepth.data.generated.synthetic import make_synthetic_dataset
from wordepth.data.text_features import feature_path, load_feature_file, save_feature_file
from wordepth.metrics import METRIC_NAMES, per_image_median_ratio
from wordepth.models.wordepth import WorDepth, preset_config
from wordepth.text.captioning import caption_path, read_caption
from wordepth.text.clip_features import encode_captions, load_text_encoder

TINY_CLIP = "wordepth_test_clip_tiny"
TINY_CLIP_CFG = {"embed_dim": 32,
                 "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


# --------------------------------------------------------------------------- pure parts
def test_derangement_has_no_fixed_point_and_depends_only_on_the_seed():
    for n in (2, 3, 7, 50):
        for seed in range(5):
            order = derangement(n, seed)
            assert sorted(order) == list(range(n))
            assert all(i != j for i, j in enumerate(order))
            assert order == derangement(n, seed)
    assert len({tuple(derangement(8, s)) for s in range(10)}) > 1
    with pytest.raises(CaptionModeError, match="at least two"):
        derangement(1, 0)


def test_scenes_and_other_scene_assignment():
    assert scene_of("kitchen_0028b/rgb_00045.jpg", "nyu") == "kitchen"
    assert scene_of("/living_room_0001/rgb_1.jpg", "nyu") == "living_room"
    assert scene_of("bathroom/rgb_00045.jpg", "nyu") == "bathroom"
    kitti = "2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000069.png"
    assert scene_of(kitti, "kitti") == "2011_09_26_drive_0002"
    paths = ["kitchen/a.jpg", "kitchen/b.jpg", "bedroom/c.jpg", "office/d.jpg"]
    for seed in range(5):
        order = other_scene_assignment(paths, "nyu", seed)
        assert all(scene_of(paths[j], "nyu") != scene_of(p, "nyu") for p, j in zip(paths, order))
        assert order == other_scene_assignment(paths, "nyu", seed)
    with pytest.raises(CaptionModeError, match="two scenes"):
        other_scene_assignment(["kitchen/a.jpg", "kitchen_0002/b.jpg"], "nyu", 0)


def test_parse_modes():
    assert parse_caption_mode("template:a toy {caption}").arg == "a toy {caption}"
    assert parse_caption_mode("file:/x/c.json").kind == "file"
    for bad in ("random", "template:", "template:   ", "file:", "template:{scene}"):
        with pytest.raises(CaptionModeError):
            parse_caption_mode(bad)
    modes = parse_ablation("shuffled,template:a toy, small {caption},none")
    assert [m.name for m in modes] == ["dataset", "shuffled", "template:a toy, small {caption}", "none"]
    with pytest.raises(CaptionModeError, match="twice"):
        parse_ablation("none,none")


def test_paired_bootstrap_change_and_interval():
    rng = np.random.default_rng(0)
    ref = [{"path": f"i{k}", **{m: float(rng.normal()) for m in METRIC_NAMES}} for k in range(30)]
    shift = [{**r, "abs_rel": r["abs_rel"] + 0.5 + 0.01 * k} for k, r in enumerate(ref)]
    out = paired_bootstrap(list(reversed(shift)), ref, seed=3)  # paired by path, not by order
    assert out["abs_rel"]["change"] == pytest.approx(0.5 + 0.01 * np.mean(range(30)))
    lo, hi = out["abs_rel"]["ci95"]
    assert 0.5 < lo < out["abs_rel"]["change"] < hi < 0.5 + 0.01 * 29
    assert out["rms"] == {"change": 0.0, "ci95": [0.0, 0.0]}
    assert out == paired_bootstrap(shift, ref, seed=3)
    assert out["abs_rel"]["ci95"] != paired_bootstrap(shift, ref, seed=4)["abs_rel"]["ci95"]


def test_tensor_caption_features_make_the_same_draws_as_a_split():
    """The modes for samples held as tensors (experiments/scale_ambiguity): the permutation and the other-scene
    draws of a split with the same images and scenes, the mean for none, the template through the encoder."""
    stored = torch.arange(12, dtype=torch.float32).view(6, 2)  # (N, D): row i is sample i's own feature
    paths = ["kitchen/a.jpg", "kitchen/b.jpg", "bedroom/c.jpg", "office/d.jpg", "office/e.jpg", "bedroom/f.jpg"]
    scenes = [scene_of(p, "nyu") for p in paths]
    mode = parse_caption_mode
    shuffled = tensor_caption_features(mode("shuffled"), stored, seed=4)
    assert torch.equal(shuffled, stored[derangement(6, 4)])
    other = tensor_caption_features(mode("other-scene"), stored, seed=4, scenes=scenes)
    assert torch.equal(other, stored[other_scene_assignment(paths, "nyu", 4)])
    source = (other[:, 0] / 2).long().tolist()  # which sample's feature each one got
    assert all(scenes[j] != scenes[i] for i, j in enumerate(source))
    mean = torch.tensor([0.5, -1.0])
    assert torch.equal(tensor_caption_features(mode("none"), stored, seed=0, mean=mean), mean.expand(6, 2))
    assert tensor_caption_features(mode("dataset"), stored, seed=0) is stored
    seen = []
    encoded = tensor_caption_features(mode("template:a toy {caption}"), stored, seed=0,
                                      captions=[f"room {i}" for i in range(6)],
                                      encode=lambda s: seen.extend(s) or torch.ones(len(s), 2, dtype=torch.float64))
    assert seen == [f"a toy room {i}" for i in range(6)] and encoded.dtype == torch.float32
    with pytest.raises(CaptionModeError, match="mean training feature"):
        tensor_caption_features(mode("none"), stored, seed=0)
    with pytest.raises(CaptionModeError, match="2-d"):
        tensor_caption_features(mode("none"), stored, seed=0, mean=torch.zeros(3))
    with pytest.raises(CaptionModeError, match="image paths"):
        tensor_caption_features(mode("file:c.json"), stored, seed=0)
    with pytest.raises(CaptionModeError, match="two scenes"):
        tensor_caption_features(mode("other-scene"), stored, seed=0, scenes=["kitchen"] * 6)
    with pytest.raises(CaptionModeError, match="empty sentence"):
        tensor_caption_features(mode("template:{caption}"), stored, seed=0, captions=[""] * 6, encode=torch.zeros)


def test_ablation_results_means_medians_and_change():
    """Without the evaluation's metrics, the means over the rows with finite metrics; the medians over images."""
    def row(k, scale, nan=False):
        return {"path": f"i{k}", **{m: float("nan") if nan else scale * (k + 1) for m in METRIC_NAMES},
                "median_depth": scale * (k + 1), "median_gt": 1.0, "median_ratio": scale * (k + 1)}

    rows_of = {"dataset": [row(k, 1.0) for k in range(4)], "shuffled": [row(k, 2.0) for k in range(3)]
               + [row(3, 2.0, nan=True)]}
    out = ablation_results(rows_of, seed=0)
    assert list(out) == ["dataset", "shuffled"]
    assert out["dataset"]["abs_rel"] == pytest.approx(2.5) and out["dataset"]["count"] == 4
    assert out["shuffled"]["abs_rel"] == pytest.approx(4.0) and out["shuffled"]["count"] == 3  # NaN row left out
    assert out["dataset"]["median_ratio"] == pytest.approx(2.5)
    assert out["shuffled"]["median_depth"] == pytest.approx(5.0)  # medians over every image: 2, 4, 6, 8
    assert out["dataset"]["change"]["rms"] == {"change": 0.0, "ci95": [0.0, 0.0]}
    # paired over the images with finite metrics in both modes (the NaN row's image is left out)
    assert out["shuffled"]["change"]["abs_rel"]["change"] == pytest.approx((2 + 4 + 6) / 3 - (1 + 2 + 3) / 3)
    given = ablation_results(rows_of, seed=0, metrics_of={m: {**{k: 7.0 for k in METRIC_NAMES}, "count": 9}
                                                          for m in rows_of})
    assert given["shuffled"]["abs_rel"] == 7.0 and given["shuffled"]["count"] == 9


def test_median_ratio_per_image():
    gt = torch.tensor([[[1.0, 2.0, 4.0], [8.0, 0.0, 50.0]]])  # 0 and 50 m are outside (1e-3, 10)
    pred = gt * torch.tensor([[[2.0, 3.0, 0.5], [1.0, 9.0, 9.0]]])
    ratio = per_image_median_ratio(pred, gt, min_depth=1e-3, max_depth=10, crop=None, dataset="nyu")
    assert ratio.tolist() == [float(np.median([2.0, 3.0, 0.5, 1.0]))]  # the four valid pixels' ratios
    gt[0, 0, 0] = 0.0  # three valid pixels left
    ratio = per_image_median_ratio(pred[:, None], gt[:, None], min_depth=1e-3, max_depth=10, crop=None, dataset="nyu")
    assert ratio.tolist() == [1.0]  # ratios 3, 0.5 and 1


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny open_clip CLIP (32-d text features), its weights in a local file."""
    folder = tmp_path_factory.mktemp("clip")
    cfg = folder / f"{TINY_CLIP}.json"
    cfg.write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model, tokenizer = load_text_encoder(TINY_CLIP, pretrained=None)
    weights = folder / "tiny_clip.pt"
    torch.save(model.state_dict(), weights)
    return model, tokenizer, weights


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_clip):
    """A tiny network for 32-d features of the tiny CLIP and a 4-image synthetic NYU test split."""
    root = tmp_path_factory.mktemp("cap")
    torch.manual_seed(0)
    model = WorDepth(preset_config("tiny", max_depth=10, prior_mean=1.54, text_dim=32, clip_model=TINY_CLIP))
    ckpt = root / "tiny.pth"
    torch.save({"format": "wordepth", "config": {"model": model.cfg.to_dict()}, "model": model.state_dict()}, ckpt)
    paths = make_synthetic_dataset(root / "data", "nyu", n_train=0, n_test=4, height=48, width=64, seed=3,
                                   text_dim=32)
    return {"ckpt": ckpt, "paths": paths, "root": root, "weights": tiny_clip[2]}


def argv(world, out_json=None, *extra, feat_dir=None):
    p = world["paths"]
    a = ["--dataset", "nyu", "--data_path_eval", p["data_path_eval"], "--gt_path_eval", p["gt_path_eval"],
         "--filenames_file_eval", p["test_split"], "--text_feat_dir", feat_dir or p["text_feat_dir"],
         "--checkpoint_path", world["ckpt"], "--min_depth_eval", "1e-3", "--max_depth_eval", "10", "--no_tqdm",
         "--eval_batch_size", "2", *extra]
    if out_json:
        a += ["--metrics_json", out_json]
    return [str(x) for x in a]


def rgbs(world):
    return [line.split()[0] for line in open(world["paths"]["test_split"]) if line.strip()]


def test_dataset_mode_gives_exactly_the_plain_numbers(world, tmp_path):
    plain = eval_entry.main(argv(world, tmp_path / "a.json"))
    flagged = eval_entry.main(argv(world, tmp_path / "b.json", "--captions", "dataset"))
    assert plain == flagged and plain["count"] == 4
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert [a[m] for m in METRIC_NAMES] == [b[m] for m in METRIC_NAMES] and b["captions"] == "dataset"


@pytest.mark.parametrize("nonfinite", ["clamp", pytest.param("error", marks=pytest.mark.slow)])
def test_dataset_mode_is_todays_evaluation_on_kitti(tmp_path, nonfinite):
    """KITTI (KB crop, Garg crop), both --nonfinite policies: --captions dataset changes no digit."""
    torch.manual_seed(1)
    model = WorDepth(preset_config("tiny", max_depth=80, prior_mean=2.54))
    ckpt = tmp_path / "k.pth"
    torch.save({"format": "wordepth", "config": {"model": model.cfg.to_dict()}, "model": model.state_dict()}, ckpt)
    p = make_synthetic_dataset(tmp_path / "d", "kitti", n_train=0, n_test=4, height=64, width=192, seed=2)
    base = [str(x) for x in ["--dataset", "kitti", "--data_path_eval", p["data_path_eval"], "--gt_path_eval",
                             p["gt_path_eval"], "--filenames_file_eval", p["test_split"], "--text_feat_dir",
                             p["text_feat_dir"], "--checkpoint_path", ckpt, "--garg_crop", "--max_depth_eval", "80",
                             "--no_tqdm", "--nonfinite", nonfinite]]
    plain = eval_entry.main(base)
    assert plain == eval_entry.main(base + ["--captions", "dataset"]) and plain["count"] == 4
    assert plain != eval_entry.main(base + ["--captions", "shuffled"])


def test_training_refuses_caption_modes(tmp_path):
    from wordepth.cli import train as train_entry

    with pytest.raises(SystemExit, match="^error: .*--captions.*wordepth-eval"):
        train_entry.main(["--data_path", tmp_path, "--gt_path", tmp_path, "--filenames_file", tmp_path / "x.txt",
                          "--captions", "shuffled"])


def _copy_features(world, tmp_path, feature_of):
    """A text_feat folder where image i holds feature_of(i, rgb) (saved as wordepth-text extract saves them)."""
    src, dst = world["paths"]["text_feat_dir"], tmp_path / "feat"
    names = rgbs(world)
    for i, rgb in enumerate(names):
        save_feature_file(feature_path(dst, "nyu", "test", rgb), feature_of(i, rgb))
    assert not (Path(src) / "nyu" / "test.packed.json").exists()
    return dst


def test_shuffled_equals_an_evaluation_on_permuted_feature_files(world, tmp_path):
    """shuffled gives image i the stored feature of image derangement(n, seed)[i]: the same numbers as a plain
    evaluation on a copy of the features permuted on disk; the seed alone picks the permutation."""
    names = rgbs(world)
    stored = [load_feature_file(feature_path(world["paths"]["text_feat_dir"], "nyu", "test", r)) for r in names]
    for seed in (0, 1):
        order = derangement(len(names), seed)
        feat = _copy_features(world, tmp_path / str(seed), lambda i, _: stored[order[i]])
        by_hand = eval_entry.main(argv(world, None, feat_dir=feat))
        shuffled = eval_entry.main(argv(world, None, "--captions", "shuffled", "--seed", str(seed)))
        assert shuffled == by_hand
    plain = eval_entry.main(argv(world))
    assert shuffled["abs_rel"] != plain["abs_rel"]


def test_other_scene_and_none_equal_evaluations_on_substituted_files(world, tmp_path):
    from wordepth.inference.predictor import mean_caption_feature

    names = rgbs(world)
    stored = [load_feature_file(feature_path(world["paths"]["text_feat_dir"], "nyu", "test", r)) for r in names]
    order = other_scene_assignment(names, "nyu", 5)
    feat = _copy_features(world, tmp_path / "o", lambda i, _: stored[order[i]])
    assert eval_entry.main(argv(world, None, "--captions", "other-scene", "--seed", "5")) == \
        eval_entry.main(argv(world, None, feat_dir=feat))
    mean = torch.randn(32)
    table = tmp_path / "mean.pt"
    torch.save({"nyu_train_mean": mean, "nyu_train_count": 10}, table)
    assert mean_caption_feature("nyu", "train", table).tolist() == mean.tolist()
    feat = _copy_features(world, tmp_path / "m", lambda i, _: mean)
    none = eval_entry.main(argv(world, None, "--captions", "none", "--mean_features", table))
    by_hand = eval_entry.main(argv(world, None, feat_dir=feat))
    for m in METRIC_NAMES:  # the file round-trips the mean through float16; the mode uses it as it is
        assert none[m] == pytest.approx(by_hand[m], rel=1e-3, abs=1e-4)


def test_template_and_file_are_encoded_by_the_networks_clip(world, tiny_clip, tmp_path):
    """template:{caption} with the images' captions equals features extracted from them (stored as float16), and
    file: with the same sentences gives the same numbers; another template changes them."""
    model, tokenizer, weights = tiny_clip
    names = rgbs(world)
    text_dir = world["paths"]["text_dir"]
    own = [read_caption(caption_path(text_dir, "nyu", "test", r)) for r in names]
    encoded = encode_captions(model, tokenizer, own)
    feat = _copy_features(world, tmp_path / "t", lambda i, _: encoded[i])
    by_hand = eval_entry.main(argv(world, None, feat_dir=feat))
    clip = ["--clip_weights", weights]
    template = eval_entry.main(argv(world, None, "--captions", "template:{caption}", "--text_dir", text_dir, *clip))
    assert template == by_hand
    captions = tmp_path / "captions.txt"
    captions.write_text("".join(f"/{r}\t{c}\n" for r, c in zip(names, own)))  # NYU-train style '/' accepted
    assert eval_entry.main(argv(world, None, "--captions", f"file:{captions}", *clip)) == by_hand
    toy = eval_entry.main(argv(world, None, "--captions", "template:a tiny toy model of {caption}", "--text_dir",
                               text_dir, *clip))
    assert toy["abs_rel"] != by_hand["abs_rel"]


def test_caption_ablation_one_table_and_json(world, tmp_path, capsys):
    out = tmp_path / "abl.json"
    singles = {m: eval_entry.main(argv(world, None, "--captions", m, "--seed", "2")) for m in ("shuffled",)}
    capsys.readouterr()
    results = eval_entry.main(argv(world, out, "--caption_ablation", "shuffled,other-scene", "--seed", "2"))
    printed = capsys.readouterr().out
    got = json.loads(out.read_text())
    assert list(got["caption_ablation"]) == ["dataset", "shuffled", "other-scene"]
    plain = eval_entry.main(argv(world))
    for m in METRIC_NAMES:  # the same numbers as one mode at a time
        assert got["caption_ablation"]["dataset"][m] == pytest.approx(plain[m], rel=1e-12)
        assert got["caption_ablation"]["shuffled"][m] == pytest.approx(singles["shuffled"][m], rel=1e-12)
        change = got["caption_ablation"]["shuffled"]["change"][m]
        assert change["change"] == pytest.approx(singles["shuffled"][m] - plain[m], abs=1e-9)
        lo, hi = change["ci95"]
        assert lo <= change["change"] <= hi
        assert got["caption_ablation"]["dataset"]["change"][m] == {"change": 0.0, "ci95": [0.0, 0.0]}
    for mode in got["caption_ablation"].values():
        assert 0 < mode["median_ratio"] < 100 and mode["count"] == 4 and 0 < mode["median_depth"] <= 10
    plot = cv2.imread(str(tmp_path / "abl.scale.png"))  # beside the metrics
    assert plot is not None and plot.shape[0] > 100 and plot.shape[1] >= 3 * 100
    assert got["bootstrap"]["seed"] == 2
    assert "shuffled" in printed and "other-scene" in printed and "pred/gt" in printed
    # a rerun reproduces the permutations and the bootstrap draws
    again = eval_entry.main(argv(world, None, "--caption_ablation", "other-scene", "--seed", "2"))
    assert again["other-scene"] == results["other-scene"] and again["dataset"] == results["dataset"]


def test_none_without_a_mean_of_the_networks_width_is_refused(world, tmp_path):
    """The shipped means are CLIP RN50's (1024-d); a 32-d network needs its own (wordepth-text mean)."""
    from tests.catalogue import run_case

    run_case(eval_entry.main, argv(world, tmp_path / "m.json", "--captions", "none"), tmp_path,
             names=["--captions none", "1024-d", "32-d", "--mean_features"], watch=[world["root"]])

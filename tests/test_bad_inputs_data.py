"""Catalogue cases of the data and text commands: zero-shot evaluation, the text pipeline, compare,
synthetic, download (issue 24, reliability round three).

Every case runs the real console ``main(argv)`` through :func:`tests.catalogue.run_case`, which checks
the exit status, exactly one ``error:`` line naming the file or flag, no traceback, every file that
existed before unchanged, and nothing created outside the output root. The pure checks behind them
(alignment that would fake perfect scores, depth units, cross-dataset checkpoints) follow at the end.
"""
from __future__ import annotations

import json
import pathlib
import shutil
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
import scipy.io
import torch

from tests.catalogue import run_case
from wordepth.cli import compare as compare_cli
from wordepth.cli import download as download_cli
from wordepth.cli import pack_text as pack_cli
from wordepth.cli import synthetic as synthetic_cli
from wordepth.cli import text as text_cli
from wordepth.cli import zeroshot as zeroshot_cli
from wordepth.data.check import check_split, dataset_mismatch
from wordepth.data.generated.synthetic import caption_feature, make_synthetic_dataset
from wordepth.data.text_features import feature_path, make_cuda_tagged_file, pack_features
from wordepth.zeroshot.data import read_ibims_mat
from wordepth.data.generated.zeroshot_fixtures import make_zeroshot_fixtures
from wordepth.data.facts import zeroshot_facts
from wordepth.outputs import OutputError, write_atomic_files
from wordepth.zeroshot.evaluate import alignment_problem, image_metrics

HW = (48, 64)


# --------------------------------------------------------------------------- shared inputs
@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    return make_zeroshot_fixtures(tmp_path_factory.mktemp("zs"), n=1, hw=HW, seed=1)


def _data(fx, tmp_path) -> pathlib.Path:
    """A private copy of the fixtures (data and features) to damage."""
    root = tmp_path / "data"
    shutil.copytree(fx["data_root"], root)
    return root


def _zs(root, ckpt, out, datasets, *extra):
    return ["--checkpoint", ckpt, "--data_root", root, "--text_feat_dir", root / "text_feat", "--datasets", datasets,
            "--metrics_json", out / "z.json", "--no_tqdm", "--no-flip", *extra]


def _sun_depth(root) -> pathlib.Path:
    split = root / "sunrgbd" / zeroshot_facts("sunrgbd").split_file
    return root / "sunrgbd" / split.read_text().split()[1]


def _ibims_mat(root) -> pathlib.Path:
    return next((root / "ibims" / "ibims1_core_mat").glob("*.mat"))


def _resave_mat(path, **changes) -> None:
    data = read_ibims_mat(path)
    data.update(edges=np.zeros(data["depth"].shape, np.uint8))
    data.update(changes)
    scipy.io.savemat(path, {"data": {k: v for k, v in data.items() if v is not None}}, format="5")


def _diode_files(root, suffix) -> pathlib.Path:
    return next((root / "diode" / "val" / "indoors").rglob(f"*{suffix}"))


# --------------------------------------------------------------------------- 4. outputs that collide
@pytest.mark.parametrize("case", ["json_is_markdown_default", "markdown_is_json", "json_is_checkpoint",
                                  "json_under_a_file"])
def test_zeroshot_outputs_are_checked_before_any_work(fx, tiny_ckpt, tmp_path, case):
    argv = ["--checkpoint", tiny_ckpt, "--data_root", fx["data_root"], "--text_feat_dir", fx["text_feat_dir"],
            "--datasets", "sunrgbd", "--no_tqdm", "--num_workers", "0"]
    if case == "json_is_markdown_default":  # --markdown defaults to the JSON path with .md
        argv += ["--metrics_json", tmp_path / "r.md"]
        names = ["--metrics_json", "--markdown", "r.md"]
    elif case == "markdown_is_json":
        (tmp_path / "r.json").write_text("{}\n")  # an earlier result: must survive
        argv += ["--metrics_json", tmp_path / "r.json", "--markdown", tmp_path / "r.json"]
        names = ["--metrics_json", "--markdown", "r.json"]
    elif case == "json_is_checkpoint":
        argv += ["--metrics_json", tiny_ckpt]
        names = ["--metrics_json", "tiny.pth", "inputs"]
    else:
        (tmp_path / "plain").write_text("x")
        argv += ["--metrics_json", tmp_path / "plain" / "z.json"]
        names = ["--metrics_json", "plain"]
    out = run_case(zeroshot_cli.main, argv, tmp_path, names=names, watch=[tiny_ckpt, fx["data_root"]])
    assert "sunrgbd" not in out.out  # refused before the evaluation, not after it


# --------------------------------------------------------------------------- 6. atomic writes
def test_zeroshot_json_leaves_no_temporary_file(fx, tiny_ckpt, tmp_path):
    out = tmp_path / "out"
    run_case(zeroshot_cli.main, _zs(fx["data_root"], tiny_ckpt, out, "ibims", "--num_workers", "0"), tmp_path,
             code=0, out_root=out, watch=[fx["data_root"]])
    assert sorted(p.name for p in out.iterdir()) == ["z.json", "z.md"]
    assert json.loads((out / "z.json").read_text())["datasets"]["ibims"]["count"] == 1


def test_zeroshot_json_on_a_full_disk_keeps_the_previous_file(fx, tiny_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "z.json").write_text('{"previous": true}\n')
    real = pathlib.Path.write_text

    def full(self, *args, **kwargs):
        if ".part" in self.name:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    result = run_case(zeroshot_cli.main, _zs(fx["data_root"], tiny_ckpt, out, "ibims", "--num_workers", "0"), tmp_path,
                      names=["z.json", "No space left on device"], out_root=out, watch=[fx["data_root"]])
    assert "previous file is kept" in result.error_lines()[0]


def test_save_vis_on_a_full_disk_is_one_error_and_no_partial_picture(tmp_path, monkeypatch):
    from wordepth.evaluation import _save_vis

    monkeypatch.setattr(cv2, "imwrite", lambda *a, **k: False)
    image, gt, pred = torch.zeros(3, 16, 20), torch.ones(16, 20), torch.ones(16, 20)
    row = {"path": "/kitchen/rgb_00001.jpg", "abs_rel": 0.1}
    with pytest.raises(OutputError, match="--save_vis pictures of /kitchen/rgb_00001.jpg"):
        _save_vis(tmp_path / "vis", row, image, gt, pred, False, 10.0, [], 4)
    assert list((tmp_path / "vis").iterdir()) == []  # neither a PNG nor the temporary folder
    with pytest.raises(OutputError, match="could not write"):
        write_atomic_files(tmp_path / "x", lambda tmp: [tmp.parent.parent / "elsewhere.png"])


# --------------------------------------------------------------------------- 15, 11, 14. bad samples
def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _eight_bit(path):
    cv2.imwrite(str(path), np.full(HW, 40, np.uint8))


def _plain_mm(path):  # millimetres as they are, not bit-rotated (ZoeDepth's preprocessed PNGs)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(path), rng.integers(500, 8000, HW).astype(np.uint16))


def _v73(path):
    data = bytearray(path.read_bytes())
    data[124:126] = b"\x00\x02"  # the header's version field of an HDF5-based v7.3 file
    path.write_bytes(bytes(data))


def _nonfinite_feature(root, name):
    key = next(iter((root / "text_feat" / name).rglob("*.pt")))
    make_cuda_tagged_file(key, torch.full((1, 1024), float("nan"), dtype=torch.float16))
    return key


def _short_feature(root, name):
    key = next(iter((root / "text_feat" / name).rglob("*.pt")))
    make_cuda_tagged_file(key, caption_feature("A room.", dim=512).half())
    return key


@dataclass
class Sample:
    dataset: str
    damage: object  # root -> the file the message must name
    words: tuple = ()


SAMPLES = {
    "sun_truncated_png": Sample("sunrgbd", lambda r: (_truncate(p := _sun_depth(r)), p)[1]),
    "sun_8bit_png": Sample("sunrgbd", lambda r: (_eight_bit(p := _sun_depth(r)), p)[1], ("uint8",)),
    "sun_plain_millimetres": Sample("sunrgbd", lambda r: (_plain_mm(p := _sun_depth(r)), p)[1],
                                    ("plain millimetres",)),
    "ibims_v73": Sample("ibims", lambda r: (_v73(p := _ibims_mat(r)), p)[1], ("v7.3",)),
    "ibims_missing_field": Sample("ibims", lambda r: (_resave_mat(p := _ibims_mat(r), mask_transp=None), p)[1],
                                  ("mask_transp",)),
    "ibims_empty_calib": Sample("ibims", lambda r: (_resave_mat(p := _ibims_mat(r), calib=np.zeros((0, 0))), p)[1],
                                ("calib",)),
    "ibims_wrong_shape": Sample("ibims", lambda r: (_resave_mat(p := _ibims_mat(r),
                                                               mask_invalid=np.ones((3, 3), np.uint8)), p)[1],
                                ("mask_invalid",)),
    "diode_wrong_mask_shape": Sample("diode_indoor", lambda r: (np.save(p := _diode_files(r, "_depth_mask.npy"),
                                                                        np.ones((5, 5), np.float32)), p.name)[1],
                                     ("(5, 5)",)),
    "diode_structured_npy": Sample("diode_indoor", lambda r: (np.save(p := _diode_files(r, "_depth.npy"),
                                                                      np.zeros(HW, [("d", "<f4")])), p)[1]),
    "diode_millimetres": Sample("diode_indoor", lambda r: (np.save(p := _diode_files(r, "_depth.npy"),
                                                                   np.load(p) * 1000.0), p)[1], ("millimetres",)),
    "nonfinite_feature": Sample("sunrgbd", lambda r: _nonfinite_feature(r, "sunrgbd"), ("non-finite",)),
    "feature_512": Sample("diode_indoor", lambda r: _short_feature(r, "diode_indoor"), ("1024",)),
}


@pytest.mark.parametrize("case", sorted(SAMPLES))
def test_zeroshot_bad_sample_names_the_file_from_a_worker(fx, tiny_ckpt, tmp_path, case):
    """With DataLoader workers, the message is the sample's own (not 'Caught ValueError in DataLoader worker');
    the other dataset still runs and is in the JSON."""
    sample = SAMPLES[case]
    root = _data(fx, tmp_path)
    bad = sample.damage(root)
    other = "ibims" if sample.dataset != "ibims" else "diode_indoor"
    out = tmp_path / "out"
    result = run_case(zeroshot_cli.main, _zs(root, tiny_ckpt, out, f"{sample.dataset},{other}", "--num_workers", "1"),
                      tmp_path, names=[f"error: {sample.dataset}", str(bad), *sample.words], out_root=out,
                      watch=[tiny_ckpt])
    assert "DataLoader worker" not in result.err
    saved = json.loads((out / "z.json").read_text())
    assert list(saved["datasets"]) == [other] and list(saved["errors"]) == [sample.dataset]


def test_ibims_float_rgb_in_unit_range_is_scaled_not_black(fx, tmp_path):
    mat = tmp_path / "a.mat"
    shutil.copy(next((fx["data_root"] / "ibims" / "ibims1_core_mat").glob("*.mat")), mat)
    rgb = read_ibims_mat(mat)["rgb"]
    _resave_mat(mat, rgb=rgb.astype(np.float64) / 255.0)
    again = read_ibims_mat(mat)["rgb"]
    assert again.dtype == np.uint8 and np.abs(again.astype(int) - rgb.astype(int)).max() <= 1


# --------------------------------------------------------------------------- 8. paths from data
VICTIM = "../../../outside/victim.jpg"


def _text_world(tmp_path):
    """captions of a split whose only line climbs out of every root, and a victim file there."""
    split = tmp_path / "split.txt"
    split.write_text(f"{VICTIM} x.png 500\n")
    victim = tmp_path / "outside" / "victim.pt"
    victim.parent.mkdir()
    torch.save(torch.zeros(1, 1024), victim)
    (tmp_path / "text" / "d" / "s").mkdir(parents=True)
    (tmp_path / "text" / "d" / "s" / "a.txt").write_text("A room.\n")
    return split


@pytest.mark.parametrize("command", ["extract", "prepare", "caption", "pack"])
def test_split_line_that_climbs_out_is_refused(tmp_path, command):
    split = _text_world(tmp_path)
    layout = ["--dataset", "d", "--split", "s", "--text_dir", tmp_path / "text"]
    feats = ["--text_feat_dir", tmp_path / "text" / "feat"]
    if command == "extract":
        entry, argv = text_cli.main, ["extract", *layout, *feats, "--filenames_file", split, "--overwrite"]
    elif command == "prepare":
        entry, argv = text_cli.main, ["prepare", *layout, *feats, "--filenames_file", split, "--data_path",
                                      tmp_path / "a" / "b" / "c", "--overwrite"]
    elif command == "caption":
        entry, argv = text_cli.main, ["caption", *layout, "--filenames_file", split, "--data_path",
                                      tmp_path / "a" / "b" / "c", "--overwrite"]
    else:
        entry, argv = pack_cli.main, ["--text_feat_dir", tmp_path / "text", "--dataset", "nyu", "--split", "test",
                                      "--filenames_file", split]
    run_case(entry, argv, tmp_path, names=["split.txt", "line 1", VICTIM])


@pytest.mark.parametrize("command", ["extract", "prepare", "caption", "pack"])
def test_a_dataset_name_that_is_not_a_folder_name_is_refused(tmp_path, command):
    """``--dataset`` names <text_feat_dir>/<dataset>/: a path that climbs out is one error line, nothing written."""
    (tmp_path / "text" / "up").mkdir(parents=True)
    (tmp_path / "text" / "up" / "a.txt").write_text("A room.\n")
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    layout = ["--dataset", "../up", "--split", "s", "--text_dir", tmp_path / "text" / "x"]
    feats = ["--text_feat_dir", tmp_path / "feat"]
    if command == "pack":
        entry, argv = pack_cli.main, [*feats, "--dataset", "../up", "--split", "test"]
    else:
        extra = ["--images", tmp_path / "img"] if command != "extract" else []
        entry, argv = text_cli.main, [command, *layout, *(feats if command != "caption" else []), *extra]
    run_case(entry, argv, tmp_path, names=["--dataset '../up'", "plain folder name"])


@pytest.mark.parametrize("dataset", ["sunrgbd", "ibims"])
def test_zeroshot_list_entry_that_climbs_out_is_refused(fx, tmp_path, dataset):
    root = _data(fx, tmp_path)
    if dataset == "sunrgbd":
        listing = root / "sunrgbd" / zeroshot_facts("sunrgbd").split_file
        listing.write_text("../../../outside/victim.jpg ../../../outside/victim.png\n")
    else:
        listing = root / "ibims" / "imagelist.txt"
        listing.write_text("../../../outside/victim\n")
    argv = ["--data_root", root, "--text_feat_dir", root / "text_feat", "--text_dir", root / "text",
            "--datasets", dataset, "--prepare_text", "--no_tqdm"]
    run_case(zeroshot_cli.main, argv, tmp_path, names=[dataset, str(listing), "outside/victim"])


# --------------------------------------------------------------------------- 16. mean features
class Gadget:  # a class a weights-only load refuses to build
    pass


@pytest.mark.parametrize("case", ["pickle_needs_code", "inside_the_features", "is_the_packed_store"])
def test_mean_out_is_refused(tmp_path, case):
    feats = tmp_path / "feat"
    for i in range(2):
        make_cuda_tagged_file(feature_path(feats, "nyu", "train", f"{i}.jpg"), caption_feature(f"room {i}").half())
    if case == "pickle_needs_code":
        out = tmp_path / "mean.pt"
        torch.save({"nyu_train_mean": Gadget()}, out)
        names = ["mean.pt", "arbitrary code"]
    elif case == "inside_the_features":
        out = feats / "nyu" / "train" / "mean.pt"
        names = ["--out", "inside"]
    else:
        pack_features(feats, "nyu", "train")
        out = feats / "nyu" / "train.packed.npy"
        names = ["--out", "train.packed.npy", "inputs"]
    run_case(text_cli.main, ["mean", "--text_feat_dir", feats, "--dataset", "nyu", "--out", out, "--no_progress"],
             tmp_path, names=names)


# --------------------------------------------------------------------------- compare, synthetic, download
def _metrics(path):
    path.write_text(json.dumps({"abs_rel": 0.1, "rms": 0.4, "d1": 0.9, "count": 3}))
    return path


@pytest.mark.parametrize("case", ["out_is_input", "markdown_is_input", "out_is_markdown", "picture_extension"])
def test_compare_outputs_are_refused(tmp_path, case):
    a, b = _metrics(tmp_path / "a.json"), _metrics(tmp_path / "b.json")
    flags = {"out_is_input": (["--out", b], ["--out", "b.json"]),
             "markdown_is_input": (["--markdown", a], ["--markdown", "a.json"]),
             "out_is_markdown": (["--out", tmp_path / "c.png", "--markdown", tmp_path / "c.png"], ["--out", "c.png"]),
             "picture_extension": (["--out", tmp_path / "chart.xyz"], ["--out", "chart.xyz"])}[case]
    run_case(compare_cli.main, [a, b, *flags[0]], tmp_path, names=flags[1])


def test_compare_writes_atomically(tmp_path):
    a, b = _metrics(tmp_path / "a.json"), _metrics(tmp_path / "b.json")
    out = tmp_path / "out"
    run_case(compare_cli.main, [a, b, "--out", out / "c.png", "--markdown", out / "c.md"], tmp_path, code=0,
             out_root=out)
    assert sorted(p.name for p in out.iterdir()) == ["c.md", "c.png"]


def test_synthetic_never_replaces_an_existing_dataset(tmp_path):
    out = tmp_path / "d"
    make_synthetic_dataset(out, "nyu", 1, 1, 32, 40)
    run_case(synthetic_cli.main, ["--out", out, "--n_train", "1", "--n_test", "1", "--height", "32", "--width", "40",
                                  "--no_progress"], tmp_path, names=["--out", "nyudepthv2_train_files_with_gt.txt"])
    (tmp_path / "f").write_text("x")
    run_case(synthetic_cli.main, ["--out", tmp_path / "f", "--no_progress"], tmp_path, names=["--out", "f"])
    # asked: --overwrite replaces it
    run_case(synthetic_cli.main, ["--out", out, "--n_train", "1", "--n_test", "1", "--height", "32", "--width", "40",
                                  "--no_progress", "--overwrite"], tmp_path, code=0, out_root=out,
             may_change=[p for p in out.rglob("*") if p.is_file()])


def test_download_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    run_case(download_cli.main, ["--out", tmp_path / "f", "--repo_url", "file:///nowhere"], tmp_path,
             names=["--out", "f"])


# --------------------------------------------------------------------------- the pure checks
def test_alignment_that_would_fake_perfect_scores_is_skipped():
    protocol = zeroshot_facts("ibims").protocol("official")  # no crop, no depth limit
    pred = torch.rand(1, 1, 8, 8) + 0.5
    constant = torch.full((1, 1, 8, 8), 2.0)
    one = torch.zeros(1, 1, 8, 8)
    one[..., 3, 4] = 2.0
    varied = torch.rand(1, 1, 8, 8) + 1.0
    assert "constant" in alignment_problem(constant[0, 0], constant[0, 0] > 0, "lstsq")
    assert "1" in alignment_problem(one[0, 0], one[0, 0] > 0, "median")
    assert alignment_problem(varied[0, 0], varied[0, 0] > 0, "lstsq") is None
    assert alignment_problem(constant[0, 0], constant[0, 0] > 0, "none") is None
    why = []
    m = image_metrics(pred.expand(3, 1, 8, 8), torch.cat([constant, one, varied]), None, protocol, "lstsq", why)
    assert torch.isnan(m[0]).all() and torch.isnan(m[1]).all() and torch.isfinite(m[2]).all()
    assert why[0] and why[1] and why[2] is None
    # without alignment a constant ground truth is a fair comparison
    assert torch.isfinite(image_metrics(pred, constant, None, protocol, "none")).all()


def test_dataset_mismatch_names_both_datasets():
    kitti = {"max_depth": 80.0, "prior_mean": 2.54, "legacy": False}
    nyu = {"max_depth": 10.0, "prior_mean": 1.54}
    message = dataset_mismatch(kitti, "nyu")
    assert "KITTI" in message and "NYU" in message and "80" in message
    assert "NYU" in dataset_mismatch(nyu, "kitti") and "KITTI" in dataset_mismatch(nyu, "kitti")
    assert dataset_mismatch(kitti, "kitti") is None and dataset_mismatch(nyu, "nyu") is None
    assert dataset_mismatch(None, "nyu") is None  # the original release records nothing
    assert dataset_mismatch(None, "nyu", max_depth=80.0, prior_mean=2.54) is not None
    assert dataset_mismatch({"max_depth": 20.0, "prior_mean": 2.0}, "nyu") is None  # neither: not judged
    assert dataset_mismatch({"dataset": "kitti", "max_depth": 80.0, "prior_mean": 2.54}, "sunrgbd") is None


def test_check_data_warns_about_depth_in_other_units(tmp_path):
    kitti = make_synthetic_dataset(tmp_path / "k", "kitti", 0, 3, 64, 160)
    nyu = make_synthetic_dataset(tmp_path / "n", "nyu", 0, 3, 48, 64)

    def units(dataset, p):
        found = check_split(dataset, p["test_split"], p["data_path_eval"], p["gt_path_eval"], p["text_feat_dir"],
                            "test", mode="eval")
        return [x for x in found if "other units" in x.message]

    assert units("kitti", kitti) == [] and units("nyu", nyu) == []
    # KITTI's x256 PNGs read as NYU millimetres (the text features are looked for under nyu/: errors, not this)
    wrong = units("nyu", kitti)
    assert len(wrong) == 1 and not wrong[0].is_error and "NYU" in wrong[0].message and "KITTI" in wrong[0].message


# --------------------------------------------------------------------------- WORDEPTH_DATASETS
@pytest.mark.parametrize("value, names", [
    ("{dir}/mine.py", ["WORDEPTH_DATASETS", "module names", "PYTHONPATH={dir}", "WORDEPTH_DATASETS=mine"]),
    ("no_such_dataset_module", ["no_such_dataset_module", "PYTHONPATH"]),
])
def test_a_dataset_plugin_is_a_module_name_never_a_file(tmp_path, value, names):
    plugin = tmp_path / "mine.py"
    marker = tmp_path / "ran"
    plugin.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")  # loading it by path would run it
    value, names = value.format(dir=tmp_path), [n.format(dir=tmp_path) for n in names]
    run_case("wordepth.cli.train", ["--dataset", "mine", "--check_data", "--filenames_file", tmp_path / "none.txt"],
             tmp_path, names=names, env={"WORDEPTH_DATASETS": value})
    assert not marker.exists()

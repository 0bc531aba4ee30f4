"""The scene-level validation split (wordepth.data.holdout)."""
import pytest

from wordepth.data.holdout import (HoldoutError, check_disjoint, holdout, parse_val_split, scene_of,
                                   split_by_scene, write_holdout)
from wordepth.data.splits import SplitEntry, read_split
from wordepth.data.generated.synthetic import make_synthetic_dataset


def entries(paths):
    return [SplitEntry(p, p.replace("rgb", "depth"), 518.8579, i + 1) for i, p in enumerate(paths)]


@pytest.mark.parametrize("rgb, scene", [
    ("/bedroom_0001/rgb_00012.jpg", "bedroom_0001"),
    ("kitchen_0028b/rgb_00045.jpg", "kitchen_0028b"),
    ("2011_09_26/2011_09_26_drive_0002_sync/image_02/data/0000000005.png", "2011_09_26_drive_0002_sync"),
    ("2011_09_26_drive_0002_sync/proj_depth/groundtruth/image_02/0000000005.png", "2011_09_26_drive_0002_sync"),
])
def test_scene_of(rgb, scene):
    assert scene_of(rgb) == scene


def test_scene_of_a_bare_file_is_an_error():
    with pytest.raises(HoldoutError, match="no folder"):
        scene_of("rgb_00001.jpg")


def test_split_by_scene_keeps_scenes_whole_and_hits_the_fraction():
    paths = [f"/scene_{s:03d}/rgb_{i:05d}.jpg" for s in range(40) for i in range(5)]
    train, val = split_by_scene(entries(paths), 0.2)
    assert len(train) + len(val) == 200
    assert len(val) == 40  # 8 scenes of 5
    check_disjoint(train, val)
    assert [e.line_no for e in train] == sorted(e.line_no for e in train)  # file order kept
    # the same scenes on every call (a hash of the names, not a seed)
    assert split_by_scene(entries(paths), 0.2)[1] == val


def test_split_by_scene_needs_two_scenes_and_a_fraction_in_range():
    with pytest.raises(HoldoutError, match="at least two"):
        split_by_scene(entries(["/a/rgb_1.jpg", "/a/rgb_2.jpg"]), 0.5)
    with pytest.raises(HoldoutError, match="between 0 and 1"):
        split_by_scene(entries(["/a/rgb_1.jpg", "/b/rgb_2.jpg"]), 1.0)
    # a tiny fraction still holds out one scene, and training always keeps one
    train, val = split_by_scene(entries(["/a/rgb_1.jpg", "/b/rgb_2.jpg"]), 0.99)
    assert len(train) == 1 and len(val) == 1


def test_check_disjoint_names_the_shared_scene():
    with pytest.raises(HoldoutError, match="bedroom_0001"):
        check_disjoint(entries(["/bedroom_0001/rgb_1.jpg"]), entries(["/bedroom_0001/rgb_2.jpg"]))


def test_parse_val_split(tmp_path):
    assert parse_val_split("0.1") == 0.1
    f = tmp_path / "val.txt"
    f.write_text("/a/rgb_1.jpg /a/depth_1.png 518.8579\n")
    assert parse_val_split(str(f)) == f
    for bad in ("0", "1.5", str(tmp_path / "missing.txt")):
        with pytest.raises(HoldoutError):
            parse_val_split(bad)


@pytest.mark.parametrize("dataset", ["nyu", "kitti"])
def test_synthetic_training_split_has_scenes_and_none_leaks(tmp_path, dataset):
    data = make_synthetic_dataset(tmp_path, dataset, n_train=16, n_test=2, height=24, width=32, seed=0)
    split = holdout(data["train_split"], 0.25)
    assert split.val and split.train
    assert len({scene_of(e.rgb) for e in split.train + split.val}) > 2
    train_file, val_file = write_holdout(split, tmp_path / "run")
    train, val = read_split(train_file), read_split(val_file)
    assert [(e.rgb, e.depth, e.focal) for e in train] == [(e.rgb, e.depth, e.focal) for e in split.train]
    assert {scene_of(e.rgb) for e in train}.isdisjoint({scene_of(e.rgb) for e in val})
    assert len(train) + len(val) == 16
    assert "no scene on both sides" in split.summary()


def test_a_validation_file_removes_its_scenes_from_training(tmp_path):
    data = make_synthetic_dataset(tmp_path, "nyu", n_train=12, n_test=1, height=24, width=32, seed=0)
    lines = data["train_split"].read_text().splitlines()
    val_file = tmp_path / "val.txt"
    val_file.write_text(lines[0] + "\n")  # one image; its whole scene must leave the training side
    split = holdout(data["train_split"], str(val_file))
    scene = scene_of(lines[0].split()[0])
    assert len(split.val) == 1
    assert all(scene_of(e.rgb) != scene for e in split.train)
    assert len(split.train) < 12


def test_val_split_option_is_checked_before_training(tmp_path):
    from wordepth.cli.options import parse_args, validate_args

    base = ["--data_path", "d", "--gt_path", "d", "--filenames_file", "f.txt", "--data_path_eval", "d",
            "--gt_path_eval", "d", "--filenames_file_eval", "f.txt"]
    with pytest.raises(SystemExit, match="between 0 and 1"):
        validate_args(parse_args([*base, "--val_split", "1.5", "--do_online_eval"]), training=True)
    with pytest.raises(SystemExit, match="add --do_online_eval"):
        validate_args(parse_args([*base, "--val_split", "0.1"]), training=True)
    validate_args(parse_args([*base, "--val_split", "0.1", "--do_online_eval"]), training=True)  # fine

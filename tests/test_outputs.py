"""The one home for writing outputs: atomic replace, no followed links, refused collisions, contained paths."""
import errno
import os

import cv2
import numpy as np
import pytest

from wordepth.outputs import (OutputError, PathEscapeError, check_outputs, contained, write_array, write_atomic,
                              write_text)


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "m.json"
    out.write_text("old")

    def half_then_full_disk(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match="m.json: No space left on device; the previous file is kept"):
        write_atomic(out, half_then_full_disk)
    assert out.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_a_planted_symlink_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    link = tmp_path / "out.txt"
    link.symlink_to(victim)
    write_text(link, "new")
    assert victim.read_text() == "keep me"
    assert not link.is_symlink() and link.read_text() == "new"


def test_outputs_equal_to_an_input_or_to_each_other_are_refused(tmp_path):
    src = tmp_path / "clip.mp4"
    src.write_bytes(b"x")
    with pytest.raises(OutputError, match="--video_out .*clip.mp4 is one of the inputs"):
        check_outputs({"--video_out": src}, inputs=[src])
    with pytest.raises(OutputError, match="--metrics_json and --markdown name the same file"):
        check_outputs({"--metrics_json": tmp_path / "r.json", "--markdown": tmp_path / "r.json"})
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_outputs({"--out": tmp_path / "f" / "x.json"})
    check_outputs({"--metrics_json": tmp_path / "new" / "m.json"}, inputs=[src])  # a new folder is fine


@pytest.mark.parametrize("key", ["../outside/victim.jpg", "/etc/passwd", "a/../../b.png", "a\x00b"])
def test_paths_from_data_stay_under_their_root(tmp_path, key):
    with pytest.raises(PathEscapeError):
        contained(tmp_path, key, "split entry")


def test_contained_keeps_inner_paths(tmp_path):
    assert contained(tmp_path, "a/./b/../c.png") == tmp_path / "a" / "c.png"


def test_write_array_by_suffix(tmp_path):
    depth = np.arange(12, dtype=np.float32).reshape(3, 4)
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 0] = 255  # red
    assert np.array_equal(np.load(write_array(tmp_path / "d.npy", depth)), depth)
    with np.load(write_array(tmp_path / "d.npz", {"a": depth, "b": depth * 2})) as z:
        assert np.array_equal(z["b"], depth * 2)
    png16 = (depth * 1000).astype(np.uint16)
    assert np.array_equal(cv2.imread(str(write_array(tmp_path / "d16.png", png16)), cv2.IMREAD_UNCHANGED), png16)
    bgr = cv2.imread(str(write_array(tmp_path / "c.png", rgb)))
    assert (bgr[..., 2] == 255).all() and (bgr[..., 0] == 0).all()  # RGB in, stored as a red image
    with pytest.raises(ValueError, match="d.txt"):
        write_array(tmp_path / "d.txt", depth)
    assert not [p for p in os.listdir(tmp_path) if ".part" in p]


def test_write_array_writes_rgb_images_with_opencv_parameters(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    png = write_array(tmp_path / "a.png", rgb)
    assert np.array_equal(cv2.imread(str(png))[:, :, ::-1], rgb)  # stored as RGB, whatever OpenCV's order
    low = write_array(tmp_path / "low.jpg", rgb, params=[cv2.IMWRITE_JPEG_QUALITY, 10])
    high = write_array(tmp_path / "high.jpg", rgb, params=[cv2.IMWRITE_JPEG_QUALITY, 95])
    assert low.stat().st_size < high.stat().st_size  # the parameters reach the encoder

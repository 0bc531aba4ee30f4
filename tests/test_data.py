"""Split files, the NYU/KITTI datasets, the training augmentation and collate."""
from __future__ import annotations

import logging
import random

import cv2
import numpy as np
import pytest
import torch

from wordepth.data import KITTIDataset, NYUDataset, build_dataset, collate
from wordepth.data import transforms as T
from wordepth.data.splits import SplitFileError, join_entry, read_split
from wordepth.data.generated.synthetic import caption_feature, make_synthetic_dataset

MEAN = torch.tensor(T.IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(T.IMAGENET_STD).view(3, 1, 1)


class ScriptedRandom(random.Random):
    """A random source that returns scripted values in [0, 1), to steer each draw."""

    def __init__(self, values):
        super().__init__(0)
        self.values = list(values)

    def random(self):
        return self.values.pop(0)

    def randint(self, a, b):
        return a + int(self.random() * (b - a + 1))


@pytest.fixture(scope="module")
def nyu_small(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("nyu_small"), "nyu", 4, 3, 120, 160, seed=1)


@pytest.fixture(scope="module")
def nyu_full(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("nyu_full"), "nyu", 1, 1, seed=2)


@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("kitti"), "kitti", 2, 2, seed=3)


def nyu(paths, mode="train", **kwargs):
    train = mode == "train"
    kwargs.setdefault("input_height", 120)
    kwargs.setdefault("input_width", 160)
    return NYUDataset(
        paths["train_split" if train else "test_split"],
        paths["data_path" if train else "data_path_eval"],
        paths["gt_path" if train else "gt_path_eval"],
        paths["text_feat_dir"],
        mode=mode,
        **kwargs,
    )


def kitti_ds(paths, mode="train", split_file=None, **kwargs):
    return KITTIDataset(
        split_file or paths["train_split" if mode == "train" else "test_split"],
        paths["data_path"],
        paths["gt_path"],
        paths["text_feat_dir"],
        mode=mode,
        **kwargs,
    )


def png(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float32)


# ---------------------------------------------------------------- split files


def test_read_split_tolerates_blank_lines_crlf_and_none(tmp_path):
    f = tmp_path / "split.txt"
    f.write_bytes(
        b"/kitchen_0028b/rgb_00045.jpg /kitchen_0028b/sync_depth_00045.png 518.8579\r\n"
        b"\r\n   \n"
        b"2011_09_26/d/image_02/data/0000000069.png None 721.5377\r\n"
    )
    entries = read_split(f)
    assert [e.rgb for e in entries] == ["/kitchen_0028b/rgb_00045.jpg", "2011_09_26/d/image_02/data/0000000069.png"]
    assert entries[0].depth == "/kitchen_0028b/sync_depth_00045.png" and entries[1].depth is None
    assert entries[0].focal == pytest.approx(518.8579) and entries[1].line_no == 4


@pytest.mark.parametrize(
    "bad, expect", [("a.jpg b.png", "expected 3 fields"), ("a.jpg b.png 5 6", "found 4"), ("a.jpg b.png f", "not a number")]
)
def test_read_split_malformed_line_names_file_and_line(tmp_path, bad, expect):
    f = tmp_path / "bad_split.txt"
    f.write_text("a.jpg b.png 518.8\n\n" + bad + "\n")
    with pytest.raises(SplitFileError, match=r"bad_split\.txt, line 3") as info:
        read_split(f)
    assert expect in str(info.value) and isinstance(info.value, ValueError)


def test_join_entry_with_and_without_slash(tmp_path):
    assert join_entry(tmp_path, "/kitchen/rgb_1.jpg") == tmp_path / "kitchen" / "rgb_1.jpg"
    assert join_entry(str(tmp_path) + "/", "kitchen/rgb_1.jpg") == tmp_path / "kitchen" / "rgb_1.jpg"


# ---------------------------------------------------------------- NYU


def test_nyu_train_sample_keys_shapes_dtypes(nyu_small):
    ds = nyu(nyu_small, seed=0)
    s = ds[1]
    assert set(s) == {"image", "depth", "text_feature", "path", "focal", "has_valid_depth"}
    assert s["image"].shape == (3, 120, 160) and s["image"].dtype == torch.float32
    assert s["depth"].shape == (1, 120, 160) and s["depth"].dtype == torch.float32
    assert s["text_feature"].shape == (1024,) and s["text_feature"].dtype == torch.float32
    assert s["path"] == ds.entries[1].rgb and s["path"].startswith("/")
    assert s["focal"] == pytest.approx(ds.entries[1].focal) and s["has_valid_depth"] is True
    pixels = s["image"] * STD + MEAN  # back to [0, 1]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5 and pixels.std() > 0.05
    assert 0 < s["depth"].max() < 10
    caption = (nyu_small["text_dir"] / "nyu" / "train" / (s["path"][1:-4] + ".txt")).read_text().strip()
    assert torch.equal(s["text_feature"], caption_feature(caption).float()[0])


def test_nyu_eval_depth_in_metres_full_size(nyu_small):
    ds = nyu(nyu_small, "eval")
    s = ds[0]
    raw = png(join_entry(nyu_small["gt_path_eval"], ds.entries[0].depth))
    assert torch.equal(s["depth"][0], torch.from_numpy(raw / np.float32(1000.0)))
    rgb = cv2.cvtColor(cv2.imread(str(join_entry(nyu_small["data_path_eval"], ds.entries[0].rgb))), cv2.COLOR_BGR2RGB)
    expect = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - MEAN) / STD
    assert torch.allclose(s["image"], expect, atol=1e-5)
    assert not s["path"].startswith("/") and s["has_valid_depth"] is True


def test_nyu_border_zeroing_uses_480x640_coordinates(nyu_full):
    ds = nyu(nyu_full, input_height=480, input_width=640, do_random_rotate=False)
    s = ds.get_sample(0, ScriptedRandom([0.1, 0.1]))  # no flip, no colour
    d = s["depth"][0]
    inside = torch.zeros_like(d, dtype=torch.bool)
    inside[45:472, 43:608] = True
    assert (d[~inside] == 0).all() and (d[inside] > 0).all()
    assert T.nyu_valid_box(480, 640) == (45, 472, 43, 608)
    assert T.nyu_valid_box(120, 160) == (11, 118, 11, 152)


def test_nyu_full_height_input_zeroes_the_border_whatever_the_width(nyu_full):
    """The original tests ``input_height == 480`` only: a 480x600 input keeps the frame, zeroes the
    unregistered border and crops 600 of the 640 columns (cropping to the region first could not fit)."""
    ds = nyu(nyu_full, input_height=480, input_width=600, do_random_rotate=False)
    s = ds.get_sample(0, ScriptedRandom([0.999, 0.5, 0.1, 0.1]))  # crop x at its maximum (40), y = 0
    assert s["depth"].shape == (1, 480, 600)
    raw = png(join_entry(nyu_full["gt_path"], ds.entries[0].depth)) / np.float32(1000)
    expect = np.zeros_like(raw)
    expect[45:472, 43:608] = raw[45:472, 43:608]
    assert torch.equal(s["depth"][0], torch.from_numpy(expect[:, 40:640]))


def test_nyu_smaller_input_crops_to_valid_region_first(nyu_full):
    ds = nyu(nyu_full, input_height=416, input_width=544, do_random_rotate=False)
    # crop x, crop y at their maxima, no flip, no colour
    s = ds.get_sample(0, ScriptedRandom([0.999, 0.999, 0.1, 0.1]))
    assert s["image"].shape == (3, 416, 544)
    raw = png(join_entry(nyu_full["gt_path"], ds.entries[0].depth)) / np.float32(1000)
    # valid region rows 45:472 (427), cols 43:608 (565); max offsets y=11, x=21
    assert torch.equal(s["depth"][0], torch.from_numpy(raw[45 + 11 : 45 + 11 + 416, 43 + 21 : 43 + 21 + 544]))


def test_replaying_the_same_draws_gives_the_same_sample(nyu_small):
    ds = nyu(nyu_small, input_height=96, input_width=128)
    a, b = ds.get_sample(2, random.Random(7)), ds.get_sample(2, random.Random(7))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["depth"], b["depth"])
    others = [ds.get_sample(2, random.Random(k)) for k in range(8, 12)]
    assert any(not torch.equal(a["image"], o["image"]) for o in others)

    seeded = nyu(nyu_small, input_height=96, input_width=128, seed=5)
    first = seeded[2]
    assert torch.equal(first["image"], seeded[2]["image"])
    seeded.set_epoch(1)
    assert not torch.equal(first["image"], seeded[2]["image"])


def test_flip_flips_depth_with_image(nyu_small):
    ds = nyu(nyu_small, do_random_rotate=False)
    plain = ds.get_sample(0, ScriptedRandom([0.1, 0.1]))
    flipped = ds.get_sample(0, ScriptedRandom([0.9, 0.1]))
    assert torch.equal(flipped["image"], plain["image"].flip(-1))
    assert torch.equal(flipped["depth"], plain["depth"].flip(-1))
    assert not torch.equal(flipped["depth"], plain["depth"])


def test_draw_statistics_match_the_original_ranges():
    rng = random.Random(0)
    draws = [T.draw_augment_params(rng, (480, 640), (416, 544), 2.5, (0.75, 1.25)) for _ in range(400)]
    assert 0.4 < np.mean([d.flip for d in draws]) < 0.6
    assert 0.4 < np.mean([d.color for d in draws]) < 0.6
    assert max(abs(d.angle) for d in draws) <= 2.5 and max(abs(d.angle) for d in draws) > 2.0
    assert {d.crop_y for d in draws} <= set(range(65)) and max(d.crop_x for d in draws) > 80
    colored = [d for d in draws if d.color]
    assert all(0.9 <= d.gamma <= 1.1 and 0.75 <= d.brightness <= 1.25 for d in colored)
    assert max(d.brightness for d in colored) > 1.15 and all(0.9 <= c <= 1.1 for d in colored for c in d.colors)
    assert T.draw_augment_params(random.Random(0), (352, 1216), (352, 1216), None, (0.9, 1.1)).angle == 0.0


def _original_pipeline(image, depth_mm, values, degree, out_hw):
    """The original data loader's NYU training path (PIL rotation, float32 numpy ops)."""
    from PIL import Image

    rng = ScriptedRandom(values)
    if out_hw[0] == 480:
        depth_mm = depth_mm.copy()
        mask = np.zeros_like(depth_mm)
        mask[45:472, 43:608] = 1
        depth_mm[mask == 0] = 0
    else:
        image, depth_mm = image[45:472, 43:608], depth_mm[45:472, 43:608]
    # the original's Pillow (10.1.0) opens the 16-bit PNG in mode I (32-bit integers)
    img, dep = Image.fromarray(np.ascontiguousarray(image)), Image.fromarray(depth_mm.astype(np.int32))
    if degree is not None:
        angle = (rng.random() - 0.5) * 2 * degree
        img, dep = img.rotate(angle, resample=Image.BILINEAR), dep.rotate(angle, resample=Image.NEAREST)
    img = np.asarray(img, dtype=np.float32) / 255.0
    dep = np.expand_dims(np.asarray(dep, dtype=np.float32), axis=2) / 1000.0
    if img.shape[:2] != out_hw:
        x = rng.randint(0, img.shape[1] - out_hw[1])
        y = rng.randint(0, img.shape[0] - out_hw[0])
        img, dep = img[y : y + out_hw[0], x : x + out_hw[1]], dep[y : y + out_hw[0], x : x + out_hw[1]]
    if rng.random() > 0.5:
        img, dep = img[:, ::-1].copy(), dep[:, ::-1].copy()
    if rng.random() > 0.5:
        gamma = rng.uniform(0.9, 1.1)
        brightness = rng.uniform(0.75, 1.25)
        colors = np.array([rng.uniform(0.9, 1.1) for _ in range(3)])
        aug = img**gamma * brightness
        aug *= np.stack([np.ones(img.shape[:2]) * colors[i] for i in range(3)], axis=2)
        img = np.clip(aug, 0, 1)
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    return (t - MEAN) / STD, torch.from_numpy(np.ascontiguousarray(dep.transpose(2, 0, 1)))


def _raw_pair(paths, entry):
    rgb = cv2.cvtColor(cv2.imread(str(join_entry(paths["data_path"], entry.rgb))), cv2.COLOR_BGR2RGB)
    return rgb, cv2.imread(str(join_entry(paths["gt_path"], entry.depth)), cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("values", [[0.9, 0.7, 0.3, 0.8, 0.2, 0.95, 0.6], [0.2, 0.3]])
def test_training_sample_matches_the_original_without_rotation(nyu_full, values):
    ds = nyu(nyu_full, input_height=480, input_width=640, do_random_rotate=False)
    image, depth = _original_pipeline(*_raw_pair(nyu_full, ds.entries[0]), values[:], None, (480, 640))
    s = ds.get_sample(0, ScriptedRandom(values[:]))
    assert torch.equal(s["depth"], depth)
    assert torch.allclose(s["image"], image, atol=1e-6, rtol=0)


@pytest.mark.parametrize("out_hw", [(480, 640), (416, 544)])
def test_training_sample_matches_the_original_with_rotation_and_crop(nyu_full, out_hw):
    values = [0.93, 0.4, 0.6, 0.7, 0.9, 0.5, 0.7, 0.1, 0.3, 0.8]  # angle, (x, y), flip, colour, ...
    if out_hw == (480, 640):
        values = values[:1] + values[3:]  # no crop drawn
    ds = nyu(nyu_full, input_height=out_hw[0], input_width=out_hw[1])
    image, depth = _original_pipeline(*_raw_pair(nyu_full, ds.entries[0]), values[:], 2.5, out_hw)
    s = ds.get_sample(0, ScriptedRandom(values[:]))
    assert s["image"].shape == (3, *out_hw) and s["depth"].shape == (1, *out_hw)
    assert torch.equal(s["depth"], depth)  # border and corners included
    assert torch.allclose(s["image"], image, atol=1e-6, rtol=0)


def _pillow_mode_i_rotation(depth_mm: np.ndarray, angle: float) -> np.ndarray:
    """Nearest rotation as Pillow 10.1.0 ran it: on the PNG opened in mode I (32-bit integers)."""
    from PIL import Image

    return np.asarray(Image.fromarray(depth_mm.astype(np.int32)).rotate(angle, resample=Image.NEAREST))


@pytest.mark.parametrize("angle", [-2.5, -1.7312, -0.4, 0.013, 1.3, 2.4999])
def test_rotation_is_pillows_bit_for_bit(tmp_path, angle):
    """T.rotate: the image against Pillow's bilinear rotate of the file, the depth against Pillow's
    nearest rotate in mode I, the mode the original's Pillow 10.1.0 opens a 16-bit PNG in (480x640)."""
    from PIL import Image

    rng = np.random.default_rng(7)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (5, 5), 0)
    depth_mm = rng.integers(0, 10000, (480, 640), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "rgb.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    pil_rgb = np.asarray(Image.open(tmp_path / "rgb.png").rotate(angle, resample=Image.BILINEAR))
    pil_depth = _pillow_mode_i_rotation(depth_mm, angle)
    ours = T.rotate({"image": rgb, "depth": depth_mm.astype(np.float32) / np.float32(1000)}, angle)
    assert np.array_equal(ours["image"], pil_rgb)
    assert np.array_equal(ours["depth"], pil_depth.astype(np.float32) / np.float32(1000))
    if abs(angle) > 1:
        assert (ours["depth"][:2, :2] == 0).all() and (ours["image"][0, 0] == 0).all()  # filled corners


def test_depth_rotation_reproduces_pillow_10_1_golden(reference):
    """The golden made with the original's Pillow (10.1.0): bit for bit at each of its angles."""
    golden = np.load(reference / "golden_rotation_pillow10_1.npz")
    assert str(golden["pillow"]) == "10.1.0" and str(golden["mode_opened"]) == "I"
    depth_mm = golden["depth_mm"]
    image = np.zeros((*depth_mm.shape, 3), dtype=np.uint8)
    for angle, expected in zip(golden["angles"], golden["depth_mm_rotated"]):
        ours = T.rotate({"image": image, "depth": depth_mm}, float(angle))["depth"]
        assert ours.dtype == np.uint16
        assert np.array_equal(ours, expected), f"angle {angle}: {(ours != expected).sum()} pixels differ"


def test_depth_rotation_differs_from_the_i16_mode_near_ties(reference):
    """Guards the reason for the fixed-point path: Pillow's floating-point (mode I;16) rotation
    picks other pixels for a fraction of a percent of a 480x640 map."""
    from PIL import Image

    golden = np.load(reference / "golden_rotation_pillow10_1.npz")
    depth_mm, angle = golden["depth_mm"], float(golden["angles"][0])
    i16 = np.asarray(Image.fromarray(depth_mm).rotate(angle, resample=Image.NEAREST))
    ours = T.rotate({"image": np.zeros((*depth_mm.shape, 3), np.uint8), "depth": depth_mm}, angle)["depth"]
    differ = (ours != i16).mean()
    assert 0 < differ < 0.01


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_depth_rotation_matches_mode_i_at_any_size_and_angle(seed):
    """Odd sizes, wide and tall maps, large angles and the right angles Pillow special-cases."""
    rng = np.random.default_rng(seed)
    for angle in [*rng.uniform(-2.5, 2.5, 3), rng.uniform(-180, 180), 90.0, -90.0, 180.0, 0.0, 361.25]:
        h, w = (int(v) for v in rng.integers(2, 300, 2))
        if angle in (90.0, -90.0):
            w = h  # Pillow transposes square images at right angles
        depth_mm = rng.integers(0, 65535, (h, w), dtype=np.uint16)
        ours = T.rotate({"image": np.zeros((h, w, 3), np.uint8), "depth": depth_mm}, float(angle))["depth"]
        assert np.array_equal(ours, _pillow_mode_i_rotation(depth_mm, float(angle))), (h, w, angle)


# ---------------------------------------------------------------- KITTI


def test_kitti_train_kb_crop_and_depth_scale(kitti):
    ds = kitti_ds(kitti)
    s = ds.get_sample(0, ScriptedRandom([0.1, 0.1]))  # no flip, no colour
    assert s["image"].shape == (3, 352, 1216) and s["depth"].shape == (1, 352, 1216)
    raw = png(join_entry(kitti["gt_path"], ds.entries[0].depth))
    top, left = T.kb_crop_offsets(*raw.shape)
    assert (top, left) == (23, 13)
    expect = raw[top : top + 352, left : left + 1216] / np.float32(256.0)
    assert torch.equal(s["depth"][0], torch.from_numpy(expect))
    assert 0 < (s["depth"] > 0).float().mean() < 0.5  # sparse
    assert s["has_valid_depth"] is True and not s["path"].startswith("/")


def test_kitti_train_brightness_range_is_narrower(kitti):
    ds = kitti_ds(kitti)
    # flip no, colour yes, gamma 1.0 (0.5), brightness at the top (0.999999), colours 1.0
    s = ds.get_sample(0, ScriptedRandom([0.1, 0.9, 0.5, 0.999999, 0.5, 0.5, 0.5]))
    base = ds.get_sample(0, ScriptedRandom([0.1, 0.1]))
    ratio = ((s["image"] * STD + MEAN) / (base["image"] * STD + MEAN).clamp(min=0.2)).median()
    assert ratio.item() == pytest.approx(1.1, abs=0.01)


def test_kitti_eval_kb_crops_image_and_ground_truth_alike(kitti):
    """The original's protocol: the ground truth is cropped to the image's 352x1216 window."""
    raw = png(join_entry(kitti["gt_path"], kitti_ds(kitti, "eval").entries[0].depth))
    top, left = T.kb_crop_offsets(*raw.shape)
    s = kitti_ds(kitti, "eval")[0]
    assert s["image"].shape == (3, 352, 1216) and s["depth"].shape == (1, 352, 1216)
    assert torch.equal(s["depth"][0], torch.from_numpy(raw[top:top + 352, left:left + 1216] / np.float32(256.0)))
    assert kitti_ds(kitti, "eval", do_kb_crop=False)[0]["image"].shape == (3, 375, 1242)


def test_kitti_eval_full_frame_keeps_full_depth(kitti):
    ds = kitti_ds(kitti, "eval", full_frame_gt=True)
    s = ds[0]
    raw = png(join_entry(kitti["gt_path"], ds.entries[0].depth))
    assert s["image"].shape == (3, 352, 1216)
    assert s["depth"].shape == (1, 375, 1242)
    assert torch.equal(s["depth"][0], torch.from_numpy(raw / np.float32(256.0)))


def test_eval_entry_without_gt_is_kept_as_invalid(kitti, tmp_path):
    lines = read_split(kitti["test_split"])
    split = tmp_path / "split.txt"
    split.write_text(f"{lines[0].rgb} None 721.5377\n{lines[1].rgb} {lines[1].depth} 721.5377\n")
    ds = kitti_ds(kitti, "eval", split_file=split)
    assert len(ds) == 2 and ds.skipped == 0
    s = ds[0]
    assert s["has_valid_depth"] is False and s["depth"].shape == (1, 352, 1216) and not s["depth"].any()
    assert ds[1]["has_valid_depth"] is True


def test_missing_eval_ground_truth_is_skipped_and_counted(kitti, tmp_path, caplog):
    lines = read_split(kitti["test_split"])
    split = tmp_path / "split.txt"
    missing = lines[0].depth.replace(".png", "_gone.png")
    split.write_text(
        "".join(f"{e.rgb} {missing if i == 0 else e.depth} {e.focal}\n" for i, e in enumerate(lines))
    )
    with caplog.at_level(logging.WARNING):
        ds = kitti_ds(kitti, "eval", split_file=split)
    assert ds.skipped == 1 and len(ds) == len(lines) - 1
    assert any("_gone.png" in r.getMessage() for r in caplog.records)
    assert [e.rgb for e in ds.entries] == [e.rgb for e in lines[1:]]


def test_missing_image_in_train_raises_naming_the_file(nyu_small, tmp_path):
    split = tmp_path / "split.txt"
    e = read_split(nyu_small["train_split"])[0]
    split.write_text(f"/nowhere/rgb_99999.jpg {e.depth} 518.8579\n{e.rgb} /nowhere/sync_depth_1.png 518.8579\n")
    ds = NYUDataset(split, nyu_small["data_path"], nyu_small["gt_path"], nyu_small["text_feat_dir"], "train", 120, 160)
    with pytest.raises(FileNotFoundError, match="rgb_99999.jpg"):
        ds[0]
    with pytest.raises(FileNotFoundError, match="sync_depth_1.png"):
        ds[1]


def test_build_dataset_dispatch_and_errors(nyu_small, kitti):
    common = dict(input_height=120, input_width=160, text_feat_dir=nyu_small["text_feat_dir"])
    ds = build_dataset(
        "nyu", "train", data_path=nyu_small["data_path"], gt_path=nyu_small["gt_path"],
        split_file=nyu_small["train_split"], do_random_rotate=False, **common,
    )
    assert isinstance(ds, NYUDataset) and len(ds) == 4 and not ds.do_random_rotate
    ds = build_dataset(
        "kitti", "eval", data_path=kitti["data_path"], gt_path=kitti["gt_path"],
        split_file=kitti["test_split"], text_feat_dir=kitti["text_feat_dir"], input_height=352, input_width=1216,
    )
    assert isinstance(ds, KITTIDataset) and len(ds) == 2
    with pytest.raises(ValueError, match="unknown dataset 'diode'"):
        build_dataset("diode", "train", data_path="", gt_path="", split_file=nyu_small["train_split"], **common)
    with pytest.raises(ValueError, match="mode"):
        build_dataset("nyu", "test", data_path="", gt_path="", split_file=nyu_small["train_split"], **common)


# ---------------------------------------------------------------- collate


def test_collate_keeps_ragged_depths_as_list(nyu_small):
    def sample(h, w):
        return {
            "image": torch.zeros(3, 4, 8), "depth": torch.ones(1, h, w), "text_feature": torch.zeros(1024),
            "path": f"p{h}", "focal": 1.0, "has_valid_depth": True,
        }

    batch = collate([sample(375, 1242), sample(370, 1224)])
    assert isinstance(batch["depth"], list) and [d.shape[-1] for d in batch["depth"]] == [1242, 1224]
    assert batch["image"].shape == (2, 3, 4, 8) and batch["path"] == ["p375", "p370"]
    same = collate([sample(5, 6), sample(5, 6)])
    assert isinstance(same["depth"], torch.Tensor) and same["depth"].shape == (2, 1, 5, 6)

    loader = torch.utils.data.DataLoader(nyu(nyu_small, "eval"), batch_size=2, collate_fn=collate)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 120, 160) and batch["text_feature"].shape == (2, 1024)
    assert batch["has_valid_depth"].dtype == torch.bool


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_image_decoding_equals_pillows(tmp_path, ext):
    """The original opens images with Pillow; OpenCV's decoder gives the same 8-bit values."""
    from PIL import Image

    rng = np.random.default_rng(3)
    rgb = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (5, 5), 0)
    cv2.imwrite(str(tmp_path / f"x{ext}"), rgb)
    assert np.array_equal(T.read_image(tmp_path / f"x{ext}"), np.asarray(Image.open(tmp_path / f"x{ext}").convert("RGB")))

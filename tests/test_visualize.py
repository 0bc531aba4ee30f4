"""Colour maps, error maps, PNG/PLY writers and evaluation pictures (wordepth/visualize.py)."""
import cv2
import numpy as np
import pytest
import torch

from wordepth import pointcloud
from wordepth import visualize as vis
from wordepth.data import depth_png


def _normalise(rgb: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(rgb).float().permute(2, 0, 1) / 255
    mean = torch.tensor(vis.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(vis.IMAGENET_STD)[:, None, None]
    return (x - mean) / std


def test_colorize_maps_values_onto_the_colour_map_and_blacks_out_invalid():
    depth = np.array([[1.0, 3.0, 5.0], [0.0, np.nan, 9.0]], np.float32)
    rgb = vis.colorize(depth, vmin=1.0, vmax=5.0, cmap="magma")
    lut = vis.colormap_lut("magma")
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], lut[0])
    np.testing.assert_array_equal(rgb[0, 1], lut[128])  # 0.5 * 255 rounds to 128
    np.testing.assert_array_equal(rgb[0, 2], lut[255])
    np.testing.assert_array_equal(rgb[1, 2], lut[255])  # above vmax: clipped
    assert (rgb[1, 0] == 0).all() and (rgb[1, 1] == 0).all()  # zero and NaN are invalid
    # default range: the valid min/max; tensors with leading singleton dims work too
    auto = vis.colorize(torch.from_numpy(depth)[None, None])
    np.testing.assert_array_equal(auto[0, 0], vis.colormap_lut("turbo")[0])
    np.testing.assert_array_equal(auto[1, 2], vis.colormap_lut("turbo")[255])


def test_colormap_lut_is_rgb():
    # turbo's low end is dark blue/purple: blue channel above red in RGB order
    lo = vis.colormap_lut("turbo")[0]
    assert lo[2] > lo[0]
    with pytest.raises(ValueError, match="unknown colour map"):
        vis.colormap_lut("nope")


def test_abs_rel_error_map_known_pixel():
    gt = np.full((4, 5), 2.0, np.float32)
    pred = gt.copy()
    pred[1, 2] = 2.2  # abs rel 0.1 = half the fixed 0.2 scale
    pred[2, 3] = 4.0  # abs rel 1.0: clipped to the top colour
    gt[3, 4] = 0.0  # invalid ground truth
    err = vis.abs_rel_error_map(pred, gt)
    lut = vis.colormap_lut("turbo")
    assert err.shape == (4, 5, 3) and err.dtype == np.uint8
    np.testing.assert_array_equal(err[1, 2], lut[int(round(0.1 / 0.2 * 255))])
    np.testing.assert_array_equal(err[2, 3], lut[255])
    np.testing.assert_array_equal(err[0, 0], lut[0])  # zero error is a colour, not black
    assert (err[3, 4] == 0).all()
    with pytest.raises(ValueError, match="differ"):
        vis.abs_rel_error_map(pred[:2], gt)


def test_denormalize_inverts_imagenet_normalisation():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(vis.denormalize(_normalise(rgb)), rgb)


def test_png16_roundtrip_and_clipping():
    depth = np.array([[0.0, 1.2345, 9.9996], [np.inf, -1.0, 70.0]], np.float32)
    png = depth_png.depth_to_png16(depth)
    assert png.dtype == np.uint16
    assert png[0, 1] == 1234 or png[0, 1] == 1235
    assert png[1, 0] == 0 and png[1, 1] == 0  # invalid -> 0
    assert png[1, 2] == 65535  # beyond 65.535 m in millimetres
    back = depth_png.png16_to_depth(png)
    assert np.abs(back[0, :] - depth[0, :]).max() <= 0.0005
    kitti = depth_png.png16_to_depth(depth_png.depth_to_png16(depth, scale=256.0), scale=256.0)
    assert abs(kitti[1, 2] - 70.0) < 1 / 256


def test_save_png_writes_rgb_and_uint16(tmp_path):
    red = np.zeros((3, 4, 3), np.uint8)
    red[..., 0] = 255
    vis.save_png(tmp_path / "sub" / "red.png", red)
    bgr = cv2.imread(str(tmp_path / "sub" / "red.png"))
    assert tuple(bgr[0, 0]) == (0, 0, 255)
    png = np.array([[1, 65535]], np.uint16)
    vis.save_png(tmp_path / "d.png", png)
    np.testing.assert_array_equal(depth_png.read_depth_png(tmp_path / "d.png", scale=1.0), [[1, 65535]])
    with pytest.raises(ValueError):
        vis.save_png(tmp_path / "bad.png", np.zeros((3, 4, 3), np.float32))


def test_backproject_pinhole():
    H, W, f = 6, 8, 50.0
    depth = np.arange(1, H * W + 1, dtype=np.float32).reshape(H, W) / 10
    pts = pointcloud.backproject(depth, f)
    assert pts.shape == (H * W, 3)
    v, u = 5, 1
    z = depth[v, u]
    np.testing.assert_allclose(pts[v * W + u], [(u - W / 2) * z / f, (v - H / 2) * z / f, z], rtol=1e-6)
    # the principal point maps to the optical axis; custom cx, cy and (fx, fy)
    np.testing.assert_allclose(pts[3 * W + 4, :2], [0, 0], atol=1e-7)
    p2 = pointcloud.backproject(depth, (40.0, 20.0), cx=0, cy=0)
    np.testing.assert_allclose(p2[v * W + u], [u * z / 40, v * z / 20, z], rtol=1e-6)


@pytest.mark.parametrize("binary", [True, False])
def test_write_ply(tmp_path, binary):
    pts = np.array([[0.5, -1.0, 2.0], [1.0, 2.0, 3.0], [0, 0, 0]], np.float32)
    cols = np.array([[255, 0, 0], [0, 128, 0], [1, 2, 3]], np.uint8)
    path = pointcloud.write_ply(tmp_path / "c.ply", pts, cols, binary=binary)
    data = path.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    assert b"element vertex 3" in head
    assert (b"binary_little_endian" in head) == binary
    if binary:
        rec = np.frombuffer(body, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                         ("r", "u1"), ("g", "u1"), ("b", "u1")])
        np.testing.assert_array_equal(np.stack([rec["x"], rec["y"], rec["z"]], 1), pts)
        np.testing.assert_array_equal(np.stack([rec["r"], rec["g"], rec["b"]], 1), cols)
    else:
        rows = np.array([line.split() for line in body.decode().strip().splitlines()], np.float64)
        np.testing.assert_allclose(rows[:, :3], pts)
        np.testing.assert_array_equal(rows[:, 3:], cols)
    with pytest.raises(ValueError):
        pointcloud.write_ply(tmp_path / "bad.ply", pts, cols[:2])


def test_make_grid_layout_and_labels():
    a = np.zeros((10, 20, 3), np.uint8)
    b = np.full((6, 8), 7, np.uint8)
    grid = vis.make_grid([a, b, a], ncols=2, pad=4)
    assert grid.shape == (2 * 10 + 3 * 4, 2 * 20 + 3 * 4, 3)
    assert (grid[4:14, 4:24] == 0).all()  # first cell
    assert (grid[4:10, 28:36] == 7).all()  # second cell, grey expanded to RGB
    labelled = vis.make_grid([a, a], ncols=2, labels=["x", "y"])
    assert labelled.shape[0] > 10 + 2 * 4
    with pytest.raises(ValueError):
        vis.make_grid([a], ncols=1, labels=["x", "y"])
    shrunk = vis.make_grid([np.zeros((100, 400, 3), np.uint8)], ncols=1, pad=0, cell_width=200)
    assert shrunk.shape == (50, 200, 3)


def test_add_colorbar_runs_from_vmin_to_vmax():
    img = np.zeros((120, 50, 3), np.uint8)
    out = vis.add_colorbar(img, 0.0, 10.0, cmap="turbo")
    assert out.shape[0] == 120 and out.shape[1] > 50
    np.testing.assert_array_equal(out[:, :50], img)
    lut = vis.colormap_lut("turbo")
    panel = out[:, 50:].astype(int)
    # some pixel of the panel has the top colour and some the bottom colour
    assert (np.abs(panel - lut[255]).sum(-1) == 0).any()
    assert (np.abs(panel - lut[0]).sum(-1) == 0).any()
    titled = vis.add_title(out, "a bedroom with a stand and a bed " * 4)
    assert titled.shape[1] == out.shape[1] and titled.shape[0] > out.shape[0]


def test_save_eval_visuals_sizes_and_error_colour(tmp_path):
    H, W = 12, 16
    rgb = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    gt = torch.full((H, W), 4.0)
    gt[0] = 0  # invalid row
    pred = gt.clone()
    pred[5, 6] = 4.4  # abs rel 0.1
    paths = vis.save_eval_visuals(tmp_path, "scene/rgb_1", _normalise(rgb), gt, pred, vmax_depth=10.0)
    assert [p.name for p in paths] == ["scene_rgb_1_input.png", "scene_rgb_1_gt.png", "scene_rgb_1_pred.png",
                                       "scene_rgb_1_abs_rel.png"]
    for p in paths:
        assert cv2.imread(str(p)).shape == (H, W, 3)
    np.testing.assert_array_equal(cv2.imread(str(paths[0]))[..., ::-1], rgb)
    err = cv2.imread(str(paths[3]))[..., ::-1]
    np.testing.assert_array_equal(err[5, 6], vis.colormap_lut("turbo")[128])
    assert (err[0] == 0).all()
    gt_png = cv2.imread(str(paths[1]))[..., ::-1]
    np.testing.assert_array_equal(gt_png[3, 3], vis.colormap_lut("turbo")[int(round(4 / 10 * 255))])


def test_save_eval_visuals_crops_a_full_frame_ground_truth(tmp_path):
    rgb = np.zeros((8, 10, 3), np.uint8)
    gt = torch.zeros(12, 14)
    gt[4:, 2:12] = 5.0  # the KB-crop window: top = 12 - 8, left = (14 - 10) // 2
    paths = vis.save_eval_visuals(tmp_path, "k", _normalise(rgb), gt, gt, vmax_depth=None)
    gt_png = cv2.imread(str(paths[1]))
    assert gt_png.shape == (8, 10, 3) and (gt_png.sum(-1) > 0).all()
    with pytest.raises(ValueError, match="smaller"):
        vis.save_eval_visuals(tmp_path, "k", _normalise(rgb), gt[:4, :4], gt[:4, :4], 10.0)


def test_worst_images_and_summary(tmp_path):
    rng = np.random.default_rng(2)
    keeper = vis.WorstImages(n=2)
    gt = torch.full((8, 10), 2.0)
    for i, score in enumerate([0.1, 0.5, 0.05, 0.3]):
        keeper.add(f"img{i}", score, _normalise(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)), gt, gt * 1.1)
    assert len(keeper) == 2
    assert [r[0] for r in keeper.records] == ["img1", "img3"]
    path = vis.worst_summary(tmp_path, keeper.records, n=8)
    img = cv2.imread(str(path))
    assert img is not None
    # two rows of four 8x10 cells plus labels; more than one row's height
    assert img.shape[1] >= 4 * 10 and img.shape[0] >= 2 * 8
    one = cv2.imread(str(vis.worst_summary(tmp_path, keeper.records, n=1, filename="one.png")))
    assert one.shape[0] < img.shape[0] and one.shape[1] == img.shape[1]

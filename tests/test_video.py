"""Depth for a video (`wordepth.inference.video`, ``wordepth-predict --video``) on a generated clip with the toy demo model."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from wordepth.demo import toy
from wordepth.cli import predict as cli_predict
from wordepth.data.generated.scale_rooms import render_layout
from wordepth.inference.predictor import DemoPredictor
from wordepth.inference.video import predict_video, read_frames

DOLLHOUSE, HALL = toy.DEMO_CAPTIONS[0], toy.DEMO_CAPTIONS[-1]
N_FRAMES, H, W = 10, 96, 144


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 10-frame mp4 panning across one rendered room (96 x 144 frames, 10 fps)."""
    room, _, _ = render_layout(np.random.default_rng(0), H, W + 3 * N_FRAMES)
    path = tmp_path_factory.mktemp("clip") / "pan.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    for i in range(N_FRAMES):
        writer.write(np.ascontiguousarray(room[:, 3 * i:3 * i + W, ::-1]))
    writer.release()
    return path


@pytest.fixture(scope="module")
def demo() -> DemoPredictor:
    return DemoPredictor.load(device="cpu", progress=False)


def _video_info(path: Path) -> tuple[int, int, int]:
    cap = cv2.VideoCapture(str(path))
    frames = 0
    while cap.read()[0]:
        frames += 1
    size = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    cap.release()
    return frames, *size


def test_depth_video_and_png16_frames_follow_the_caption(demo, clip, tmp_path):
    frames, fps, _ = read_frames(clip)
    rgbs = list(frames)
    assert len(rgbs) == N_FRAMES and rgbs[0].shape == (H, W, 3) and fps == pytest.approx(10)
    small = predict_video(demo, clip, tmp_path / "small", caption=DOLLHOUSE, frames_png=True, batch_size=4,
                          progress=False)
    assert small.frames == N_FRAMES and len(small.pngs) == N_FRAMES and small.video.is_file()
    n, width, height = _video_info(small.video)
    assert n == N_FRAMES and height == H and width > 2 * W  # the frame, its depth and a colour bar
    assert (tmp_path / "small" / "pan_caption.txt").read_text().strip() == DOLLHOUSE
    depth = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in small.pngs]
    assert all(d.dtype == np.uint16 and d.shape == (H, W) for d in depth)
    # every frame as the predictor sees it alone, in millimetres; the colour scale is the first frame's
    for i in (0, N_FRAMES - 1):
        expected = demo.infer(rgbs[i], DOLLHOUSE) * 1000
        assert np.abs(depth[i] - expected).max() <= 0.5 + 1e-2
    assert small.vmin == pytest.approx(depth[0].min() / 1000, abs=1e-3)
    assert small.vmax == pytest.approx(depth[0].max() / 1000, abs=1e-3)

    large = predict_video(demo, clip, tmp_path / "large", caption=HALL, frames_png=True, batch_size=3,
                          progress=False)
    ratio = np.median([np.median(b / a) for a, b in
                       zip(depth, [cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(float) for p in large.pngs])])
    assert 2.5 < ratio < 6.0  # one sentence rescales the whole clip


def test_predict_command_takes_a_video(clip, tmp_path):
    out = tmp_path / "pred"
    assert cli_predict.main(["--checkpoint", str(toy.DEMO_MODEL_FILE), "--video", str(clip), "--caption", HALL,
                             "--out", str(out), "--frames_png", "--batch_size", "5"]) == 0
    assert _video_info(out / "pan_depth.webm")[0] == N_FRAMES  # WebM/VP8: browsers play it
    assert len(list((out / "pan_frames").glob("pan_*_depth.png"))) == N_FRAMES
    custom = tmp_path / "elsewhere" / "depth.mp4"
    assert cli_predict.main(["--checkpoint", str(toy.DEMO_MODEL_FILE), "--video", str(clip), "--out", str(out),
                             "--video_out", str(custom)]) == 0  # no caption: the mean caption feature
    assert _video_info(custom)[0] == N_FRAMES


def test_predict_command_video_mistakes(clip, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    for argv, message in (
            (["--video", str(text)], "cannot read"),
            (["--video", str(tmp_path / "missing.mp4")], "video not found"),
            (["--video", str(clip), "--images", str(clip)], "--video"),
    ):
        with pytest.raises(SystemExit) as exc:
            cli_predict.main(["--checkpoint", str(toy.DEMO_MODEL_FILE), "--out", str(tmp_path / "o"), *argv])
        assert str(exc.value.code).startswith("error:") and message in str(exc.value.code)

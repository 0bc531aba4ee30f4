"""Depth for a video: one caption for the clip, every frame through a `Predictor`, a side-by-side video out.

    from wordepth.inference.video import predict_video
    result = predict_video(predictor, "walk.mp4", "pred/", caption="a hallway with doors", frames_png=True)

writes ``pred/walk_depth.webm`` (each frame beside its colourised depth, with a colour bar in
metres; WebM/VP8, which browsers play and OpenCV writes without any extra codec; a ``video_out``
ending in another suffix, e.g. ``.mp4``, gets MPEG-4 part 2 ``mp4v``, for players, not browsers), and with
``frames_png`` ``pred/walk_frames/walk_000000_depth.png`` ... (16-bit depth PNGs). The colour
scale is fixed for the whole clip, so that colours mean the same depth in every frame. The command
is ``wordepth-predict --video IN --out DIR`` (`wordepth.cli.predict`).
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from wordepth import visualize as vis
from wordepth.data.depth_png import depth_to_png16
from wordepth.errors import UserError
from wordepth.outputs import check_outputs, video_writer, write_array, write_atomic, write_text

__all__ = ["BROWSER_CODECS", "VideoResult", "browser_playable", "predict_video", "preview_copy",
           "read_frames", "side_by_side", "video_outputs"]

# what Chromium and Firefox play: (container suffixes, codec FourCCs as OpenCV reports them)
BROWSER_CODECS = ({".webm", ".mp4", ".m4v"}, {"VP80", "VP90", "vp08", "vp09", "avc1", "h264", "H264", "av01", "AV01"})

log = logging.getLogger(__name__)


@dataclass
class VideoResult:
    """What :func:`predict_video` wrote."""

    video: Path
    frames: int
    fps: float
    caption: str | None
    vmin: float
    vmax: float
    seconds: float
    pngs: list[Path] = field(default_factory=list)


def read_frames(path: str | os.PathLike) -> tuple[Iterator[np.ndarray], float, int]:
    """The frames of a video as (H, W, 3) uint8 RGB arrays, its frame rate and frame count (0: unknown).

    Raises:
        FileNotFoundError: no such file.
        UserError: OpenCV cannot read it as a video.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    cap = cv2.VideoCapture(str(path))
    ok, first = cap.read() if cap.isOpened() else (False, None)
    if not ok:
        cap.release()
        raise UserError(f"cannot read {path} as a video (OpenCV could not decode a frame)")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = float(fps) if fps and np.isfinite(fps) and fps > 0 else 25.0
    count = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))

    def frames() -> Iterator[np.ndarray]:
        frame = first
        try:
            while frame is not None:
                yield np.ascontiguousarray(frame[:, :, ::-1])  # BGR -> RGB
                ok, frame = cap.read()
                frame = frame if ok else None
        finally:
            cap.release()

    return frames(), fps, count


def side_by_side(rgb: np.ndarray, depth: np.ndarray, vmin: float, vmax: float, cmap: str = "turbo") -> np.ndarray:
    """The frame, then its depth coloured on [vmin, vmax] with a colour bar in metres: (H, 2W + bar, 3) RGB."""
    return np.concatenate([rgb, vis.add_colorbar(vis.colorize(depth, vmin, vmax, cmap), vmin, vmax, "m", cmap)], 1)


def video_outputs(video: str | os.PathLike, out_dir: str | os.PathLike,
                  video_out: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(the depth video's path, the folder of the frames' PNGs) for ``video`` and ``out_dir``."""
    video, out_dir = Path(video), Path(out_dir)
    return (Path(video_out) if video_out is not None else out_dir / f"{video.stem}_depth.webm",
            out_dir / f"{video.stem}_frames")


def predict_video(predictor, video: str | os.PathLike, out_dir: str | os.PathLike, caption: str | None = None,
                  frames_png: bool = False, png_scale: float | None = None, cmap: str = "turbo",
                  vmin: float | None = None, vmax: float | None = None, batch_size: int = 1,
                  video_out: str | os.PathLike | None = None, progress: bool = True) -> VideoResult:
    """Predict depth for every frame of ``video`` with one caption and write the depth video.

    Every file is written atomically (``wordepth.outputs``): the video goes to a temporary file beside
    ``video_out`` and replaces it only once complete and readable, so a full disk or an error midway
    leaves the previous video (or none), never an unreadable one.

    Args:
        predictor: a :class:`wordepth.Predictor` (or :class:`wordepth.inference.predictor.DemoPredictor`).
        video: any file OpenCV reads (mp4, avi, mov, ...).
        out_dir: folder for ``<stem>_depth.webm``, ``<stem>_caption.txt`` and ``<stem>_frames/``.
        caption: one sentence for the clip; None: the predictor's ``no_caption`` (with ``"auto"`` CoCa
            captions the first frame once, and that caption is used for the whole clip).
        frames_png: also write each frame's depth as a 16-bit PNG.
        png_scale: PNG units per metre (default: the predictor's dataset, 1000 = millimetres for NYU).
        cmap: colour map of the depth video.
        vmin, vmax: colour scale in metres; default the first frame's depth range, fixed for the clip.
        batch_size: frames per forward pass.
        video_out: the depth video's path (default ``out_dir/<stem>_depth.webm``; the suffix picks the
            codec: ``.webm`` VP8, anything else ``mp4v``).
        progress: a tqdm bar over the frames.

    Raises:
        OutputError: an output is the input video, or cannot be written.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    t0 = time.time()
    video, out_dir = Path(video), Path(out_dir)
    out_path, png_dir = video_outputs(video, out_dir, video_out)
    check_outputs({"--video_out" if video_out is not None else "the depth video": out_path}, inputs=[video])
    frames, fps, count = read_frames(video)
    png_scale = predictor.dataset.depth_png_scale if png_scale is None else png_scale
    result = VideoResult(out_path, 0, fps, caption, float("nan"), float("nan"), 0.0)

    def write_video(tmp: Path) -> None:
        nonlocal caption
        writer = None
        bar = tqdm(total=count or None, desc=f"depth for {video.name}", unit="frame", disable=not progress)
        try:
            for batch in _batches(frames, batch_size):
                if result.frames == 0 and caption is None and getattr(predictor, "no_caption", "mean") == "auto":
                    caption = result.caption = predictor.caption([batch[0]])[0]
                    log.info("caption for the clip: %s", caption)
                depths = predictor.infer(batch, caption)
                if result.frames == 0:
                    result.vmin = float(np.min(depths[0])) if vmin is None else float(vmin)
                    result.vmax = float(np.max(depths[0])) if vmax is None else float(vmax)
                for rgb, depth in zip(batch, depths):
                    panel = _even(side_by_side(rgb, depth, result.vmin, result.vmax, cmap))
                    if writer is None:
                        writer = video_writer(tmp, fps, panel.shape[1], panel.shape[0], suffix=out_path.suffix)
                    writer.write(np.ascontiguousarray(panel[:, :, ::-1]))  # RGB -> BGR
                    if frames_png:
                        png = png_dir / f"{video.stem}_{result.frames:06d}_depth.png"
                        write_array(png, depth_to_png16(depth, png_scale))
                        result.pngs.append(png)
                    result.frames += 1
                    bar.update(1)
        finally:
            bar.close()
            if writer is not None:
                writer.release()
        _check_readable(tmp, result.frames)

    write_atomic(out_path, write_video, what=f"the depth video {out_path}")
    if result.caption is not None:
        write_text(out_dir / f"{video.stem}_caption.txt", result.caption + "\n")
    result.seconds = time.time() - t0
    log.info("%d frames in %.1f s -> %s", result.frames, result.seconds, out_path)
    return result


def _check_readable(path: Path, frames: int) -> None:
    """Refuse a written video that OpenCV cannot open or that holds fewer frames (the writer reports no errors)."""
    cap = cv2.VideoCapture(str(path))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else -1
    finally:
        cap.release()
    if n != frames:
        raise OSError(5, f"the video writer produced an unreadable file ({max(n, 0)} of {frames} frames; "
                         "disk full?)")


def _batches(frames: Iterator[np.ndarray], n: int) -> Iterator[list[np.ndarray]]:
    """Lists of ``n`` frames (the last may be shorter)."""
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def _even(panel: np.ndarray) -> np.ndarray:
    """Pad to even height and width (some MPEG-4 decoders need them) by repeating the last row/column."""
    h, w = panel.shape[:2]
    return np.pad(panel, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def browser_playable(path: str | os.PathLike) -> bool:
    """Whether Chromium and Firefox play the file: an MP4 or WebM of H.264, VP8, VP9 or AV1 (MPEG-4 part 2,
    ``mp4v``, and AVI, MOV or MKV files are not, or not everywhere)."""
    suffixes, codecs = BROWSER_CODECS
    if Path(path).suffix.lower() not in suffixes:
        return False
    cap = cv2.VideoCapture(str(path))
    try:
        code = int(cap.get(cv2.CAP_PROP_FOURCC)) if cap.isOpened() else 0
    finally:
        cap.release()
    return "".join(chr((code >> 8 * i) & 0xFF) for i in range(4)) in codecs


def preview_copy(video: str | os.PathLike, out: str | os.PathLike, max_frames: int = 300,
                 max_pixels: float = 0.5e6) -> Path:
    """A WebM/VP8 copy of ``video`` that browsers play (the web app's preview of an upload): its first
    ``max_frames`` frames, shrunk to at most ``max_pixels``, written atomically to ``out`` (``.webm``).

    Raises:
        UserError: not a video OpenCV reads.
    """
    frames, fps, _ = read_frames(video)
    out = Path(out)

    def write(tmp: Path) -> None:
        writer = None
        try:
            for n, frame in enumerate(frames):
                if n == max_frames:
                    break
                h, w = frame.shape[:2]
                f = min(1.0, (max_pixels / (h * w)) ** 0.5)
                size = (max(2, int(w * f)) // 2 * 2, max(2, int(h * f)) // 2 * 2)  # even sides for VP8
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
                if writer is None:
                    writer = video_writer(tmp, fps, size[0], size[1], suffix=".webm")
                writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
        finally:
            if writer is not None:
                writer.release()
            frames.close()

    return write_atomic(out, write, what=f"the preview {out}")

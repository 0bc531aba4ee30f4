"""What the web app accepts from a browser: photos and clips read within fixed size and pixel limits.

An upload is checked before it is decoded: its size on disk, then the width and height its header
declares (read with Pillow, which parses headers only), so that a small file declaring 20000 x 20000
pixels (a decompression bomb) is refused without allocating the picture. A photo within the limit is
decoded by OpenCV, JPEGs at a reduced size where the app would shrink them anyway, and larger ones are
shrunk to the app's working size before anything else touches them.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from wordepth.errors import UserError

__all__ = ["AppError", "Limits", "Photo", "read_photo", "check_video", "photo_header"]

FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "TIFF", "BMP")  # what Pillow must recognise in the header
MIN_SIDE = 16  # pixels a side; smaller pictures carry nothing the model can use
NOT_AN_IMAGE = "That file is not an image that can be read: upload a photo (PNG, JPEG, WebP, GIF, TIFF or BMP)."


class AppError(UserError):
    """A problem with what the user gave; its message is shown in the app as it is."""


@dataclass(frozen=True)
class Limits:
    """What one request may cost.

    Attributes:
        max_upload_mb: largest file accepted (Gradio refuses larger uploads before they are stored).
        max_image_mp: photos declaring more megapixels are refused before decoding.
        work_mp: larger photos are shrunk to this many megapixels first; every output is at the photo's
            size up to that (the network itself runs at ``--max_pixels`` and its depth is resized back).
        max_video_frames: frames of a clip that are processed (the rest are left out, with a note).
        max_video_mp: video frames declaring more megapixels are refused.
        keep_results: request folders kept on disk; older ones are deleted.
        cache_mb: the app's temporary files (uploads, Gradio's copies, results) are trimmed to this many
            megabytes at each request, oldest first (the result shown is kept).
    """

    max_upload_mb: float = 25.0
    max_image_mp: float = 40.0
    work_mp: float = 12.0  # a phone's photo
    max_video_frames: int = 300
    max_video_mp: float = 8.5  # 4K UHD
    keep_results: int = 8
    cache_mb: float = 200.0

    def __post_init__(self):
        for name in ("max_upload_mb", "max_image_mp", "work_mp", "max_video_mp", "cache_mb"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_video_frames < 1 or self.keep_results < 1:
            raise UserError("max_video_frames and keep_results must be at least 1")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


@dataclass
class Photo:
    """A decoded upload: ``rgb`` (H, W, 3) uint8 at the working size, the file's own size, and a note."""

    rgb: np.ndarray
    original_hw: tuple[int, int]
    note: str = ""


def _check_file(path: str | os.PathLike | None, limits: Limits, what: str = "photo") -> Path:
    if path is None or str(path) == "":
        raise AppError(f"Upload a {what} first.")
    path = Path(path)
    if path.is_dir():
        raise AppError(f"That is a folder, not a {what}: upload a file.")
    try:
        size = path.stat().st_size
    except OSError:
        raise AppError(f"The uploaded {what} is no longer on the server (it was cleaned up): "
                       "upload it again.") from None
    if size == 0:
        raise AppError(f"That file is empty (0 bytes): upload a {what}.")
    if size > limits.max_upload_bytes:
        raise AppError(f"That file is {size / 2**20:.1f} MB: the app takes files up to {limits.max_upload_mb:g} MB.")
    return path


def photo_header(path: str | os.PathLike, max_mp: float = Limits.max_image_mp) -> tuple[str, int, int, int]:
    """The format, width and height a file's header declares, and 2 for an animated GIF, else 1 (nothing decoded).

    Raises:
        AppError: not a picture Pillow recognises, not one of :data:`FORMATS`, or a header declaring
            so many pixels that Pillow itself refuses it as a decompression bomb.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning: our own limit decides
            with Image.open(path) as im:
                fmt, (w, h) = im.format, im.size
                frames = 2 if fmt == "GIF" and getattr(im, "is_animated", False) else 1
    except Image.DecompressionBombError:
        raise AppError(f"That image declares more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels: the app "
                       f"takes photos up to {max_mp:g} megapixels. Shrink it first.") from None
    except Exception:  # noqa: BLE001 - any parser failure means: not a picture we read
        raise AppError(NOT_AN_IMAGE) from None
    if fmt not in FORMATS:
        raise AppError(f"{NOT_AN_IMAGE} (this one is {fmt})")
    return fmt, w, h, frames


def read_photo(path: str | os.PathLike | None, limits: Limits = Limits()) -> Photo:
    """Read an uploaded photo within ``limits``: header check, bounded decode, shrink to the working size.

    Raises:
        AppError: no file, a folder, an empty, oversized, undecodable or truncated file, a picture
            declaring more than ``limits.max_image_mp`` megapixels, or one smaller than 16 pixels a side.
    """
    path = _check_file(path, limits)
    fmt, w, h, frames = photo_header(path, limits.max_image_mp)
    if w * h > limits.max_image_mp * 1e6:
        raise AppError(f"That image declares {w}×{h} pixels ({w * h / 1e6:.0f} megapixels): the app takes photos "
                       f"up to {limits.max_image_mp:g} megapixels. Shrink it first.")
    if min(w, h) < MIN_SIDE:
        raise AppError(f"That image is {w}×{h} pixels: too small (at least {MIN_SIDE} pixels a side).")
    data = path.read_bytes()
    if fmt in ("JPEG", "MPO") and not data.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9"):
        raise AppError("That JPEG is incomplete (truncated: it has no end marker): upload the whole file.")
    work = limits.work_mp * 1e6
    flag = cv2.IMREAD_COLOR
    if fmt == "JPEG":  # libjpeg decodes at 1/2, 1/4 or 1/8 size directly: the full picture is never held
        shrink = math.sqrt(w * h / work)
        for f, reduced in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                           (2, cv2.IMREAD_REDUCED_COLOR_2)):
            if shrink >= f:
                flag = reduced
                break
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    del data
    if bgr is None:
        bgr = _decode_with_pillow(path)
    if bgr.shape[0] * bgr.shape[1] > work:
        s = math.sqrt(work / (bgr.shape[0] * bgr.shape[1]))
        bgr = cv2.resize(bgr, (max(1, int(bgr.shape[1] * s)), max(1, int(bgr.shape[0] * s))),
                         interpolation=cv2.INTER_AREA)
    rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    notes = []
    if rgb.shape[:2] != (h, w):
        notes.append(f"the {w}×{h} photo was shrunk to {rgb.shape[1]}×{rgb.shape[0]} px "
                     f"(the app works at up to {limits.work_mp:g} megapixels)")
    if frames > 1:
        notes.append("an animated GIF: its first frame is used")
    return Photo(rgb, (h, w), "; ".join(notes))


def _decode_with_pillow(path: Path) -> np.ndarray:
    """What OpenCV could not decode, through Pillow (first frame, any mode -> 8-bit BGR)."""
    try:
        with Image.open(path) as im:
            im.seek(0)
            if im.mode.startswith("I;16") or im.mode == "I":
                arr = np.asarray(im, dtype=np.float64)
                arr = (255 * arr / max(1.0, float(arr.max()))).astype(np.uint8)
                rgb = np.repeat(arr[:, :, None], 3, axis=2)
            else:
                rgb = np.asarray(im.convert("RGB"))
    except Exception as err:  # noqa: BLE001 - truncated, corrupt, unsupported compression, ...
        if "truncated" in str(err):
            raise AppError("That image file is incomplete (truncated): upload the whole file.") from None
        raise AppError(NOT_AN_IMAGE) from None
    if rgb.ndim != 3 or min(rgb.shape[:2]) < MIN_SIDE:
        raise AppError(NOT_AN_IMAGE)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def check_video(path: str | os.PathLike | None, limits: Limits = Limits()) -> tuple[Path, int, int, int, float]:
    """Check a clip before decoding its frames: size on disk, frame size, frame count.

    Returns:
        the path, width, height, frames to process (at most ``limits.max_video_frames``) and the frame rate.

    Raises:
        AppError: no file, a folder, an empty or oversized file, not a video OpenCV reads, or frames
            larger than ``limits.max_video_mp``.
    """
    path = _check_file(path, limits, "video")
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise AppError("That file is not a video that can be read: upload an MP4, WebM, AVI or MOV clip.")
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0)
    finally:
        cap.release()
    if w <= 0 or h <= 0:
        raise AppError("That file is not a video that can be read: upload an MP4, WebM, AVI or MOV clip.")
    if w * h > limits.max_video_mp * 1e6:
        raise AppError(f"That video's frames are {w}×{h} pixels: the app takes frames up to "
                       f"{limits.max_video_mp:g} megapixels.")
    if min(w, h) < MIN_SIDE:
        raise AppError(f"That video's frames are {w}×{h} pixels: too small (at least {MIN_SIDE} pixels a side).")
    fps = fps if math.isfinite(fps) and fps > 0 else 25.0
    return path, w, h, min(count, limits.max_video_frames) if count > 0 else limits.max_video_frames, fps

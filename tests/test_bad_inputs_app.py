"""Hostile uploads to the web app: every one gets a message (an AppError), none costs much memory.

The files are made here: decompression bombs (small files whose headers declare huge pictures) in
PNG, JPEG, GIF, WebP and TIFF, truncated and empty files, text named .jpg, SVG, a folder, names that
are not UTF-8; and the odd but valid ones that must be read: 16-bit, grey, RGBA, CMYK, animated GIF.
"""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.hostile_images import png_bomb, png_chunk as _png_chunk
from wordepth.app.uploads import AppError, Limits, check_video, photo_header, read_photo

LIMITS = Limits()


def _small(fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 48, 3), 120, np.uint8)).save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg_bomb(path: Path, w: int = 30000, h: int = 30000) -> Path:
    """A small JPEG whose frame header (SOF0) declares w x h pixels."""
    data = bytearray(_small("JPEG"))
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", h, w)
    path.write_bytes(bytes(data))
    return path


def gif_bomb(path: Path) -> Path:
    """A small GIF whose logical screen and image are declared 65535 x 65535."""
    data = bytearray(_small("GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)
    i = data.index(b"\x2c", 13)  # image descriptor
    data[i + 5:i + 9] = struct.pack("<HH", 65535, 65535)
    path.write_bytes(bytes(data))
    return path


def webp_bomb(path: Path) -> Path:
    """A lossless WebP whose header declares 16383 x 16383 pixels (the format's largest)."""
    data = bytearray(_small("WEBP", lossless=True))
    i = data.index(b"VP8L") + 8  # chunk header, then the signature byte 0x2f and 14+14 bits of size
    bits = int.from_bytes(data[i + 1:i + 5], "little")
    bits = (bits & ~((1 << 28) - 1)) | (16382 << 14) | 16382
    data[i + 1:i + 5] = bits.to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


def tiff_bomb(path: Path, w: int = 100000, h: int = 100000) -> Path:
    """A TIFF whose tags declare w x h grey pixels, with one tiny deflated strip."""
    strip = zlib.compress(b"\x00" * w * 4)
    tags = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 8), (262, 3, 1), (273, 4, 0), (277, 3, 1),
            (278, 4, h), (279, 4, len(strip))]
    ifd_at = 8
    data_at = ifd_at + 2 + 12 * len(tags) + 4
    ifd = struct.pack("<H", len(tags))
    for tag, typ, value in tags:
        value = data_at if tag == 273 else value
        ifd += struct.pack("<HHI", tag, typ, 1) + (struct.pack("<HH", value, 0) if typ == 3
                                                     else struct.pack("<I", value))
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_at) + ifd + b"\x00\x00\x00\x00" + strip)
    return path


def hostile(tmp: Path) -> dict[str, tuple[Path, str]]:
    """Each hostile file and a piece of the message it must get."""
    tmp.mkdir(parents=True, exist_ok=True)
    photo = cv2.imencode(".png", np.full((64, 96, 3), 90, np.uint8))[1].tobytes()
    noise = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    jpeg = cv2.imencode(".jpg", noise)[1].tobytes()  # its header is a small part of it: the cut is in the scan
    webp = _small("WEBP")
    files = {
        "png_bomb": (png_bomb(tmp / "bomb.png"), "megapixels"),
        "jpeg_bomb": (jpeg_bomb(tmp / "bomb.jpg"), "megapixels"),
        "gif_bomb": (gif_bomb(tmp / "bomb.gif"), "megapixels"),
        "webp_bomb": (webp_bomb(tmp / "bomb.webp"), ""),  # refused from its header (size, or not readable)
        "tiff_bomb": (tiff_bomb(tmp / "bomb.tif"), "megapixels"),
        "huge_png_header": (tmp / "huge.png", ""),  # refused: too large or not readable
        "truncated_png": (tmp / "cut.png", ""),
        "truncated_jpeg": (tmp / "cut.jpg", "truncated"),
        "truncated_webp": (tmp / "cut.webp", ""),
        "empty": (tmp / "empty.png", "empty"),
        "text_as_jpg": (tmp / "notes.jpg", "not an image"),
        "svg": (tmp / "drawing.svg", "not an image"),
        "folder": (tmp / "a_folder.png", "folder"),
        "missing": (tmp / "gone.png", "no longer"),
        "tiny": (tmp / "tiny.png", "too small"),
        "oversized": (tmp / "big.png", "MB"),
    }
    # a 50000 x 50000 RGB header in front of nothing
    (tmp / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 50000,
                                                                                           8, 2, 0, 0, 0)))
    (tmp / "cut.png").write_bytes(photo[:len(photo) // 2])
    (tmp / "cut.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (tmp / "cut.webp").write_bytes(webp[:len(webp) // 2])
    (tmp / "empty.png").write_bytes(b"")
    (tmp / "notes.jpg").write_text("a shopping list, not a picture\n")
    (tmp / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="99999" height="99999">'
                                     '<rect width="10" height="10"/></svg>')
    (tmp / "a_folder.png").mkdir(exist_ok=True)
    (tmp / "tiny.png").write_bytes(cv2.imencode(".png", np.zeros((5, 3, 3), np.uint8))[1].tobytes())
    with open(tmp / "big.png", "wb") as f:  # a sparse file over the upload limit
        f.truncate(LIMITS.max_upload_bytes + 1)
    return files


def valid(tmp: Path) -> dict[str, tuple[Path, tuple[int, int]]]:
    """Odd but valid photos and the (H, W) they must be read at."""
    tmp.mkdir(parents=True, exist_ok=True)
    ramp = np.tile(np.linspace(0, 65535, 96).astype(np.uint16), (64, 1))
    cv2.imwrite(str(tmp / "depth16.png"), ramp)
    cv2.imwrite(str(tmp / "grey.png"), np.full((64, 96), 77, np.uint8))
    rgba = np.dstack([np.full((64, 96, 3), 50, np.uint8), np.full((64, 96), 128, np.uint8)])
    cv2.imwrite(str(tmp / "rgba.png"), rgba)
    Image.new("CMYK", (96, 64), (0, 255, 0, 0)).save(tmp / "cmyk.jpg")
    frames = [Image.new("RGB", (96, 64), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(tmp / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    name = os.fsdecode(b"caf\xe9_\xff.png")  # not UTF-8: a surrogate-escaped name
    cv2.imwrite(str(tmp / "photo.png"), np.full((64, 96, 3), 90, np.uint8))
    os.rename(tmp / "photo.png", tmp / name)
    Image.new("RGB", (96, 64), (10, 200, 30)).save(tmp / "photo.tif")
    Image.new("RGB", (96, 64), (10, 200, 30)).save(tmp / "photo.bmp")
    Image.new("RGB", (96, 64), (10, 200, 30)).save(tmp / "photo.webp")
    names = ("depth16.png", "grey.png", "rgba.png", "cmyk.jpg", "animated.gif", "photo.tif", "photo.bmp", "photo.webp")
    return {p: (tmp / p, (64, 96)) for p in names} | {"non-utf8": (tmp / name, (64, 96))}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return hostile(tmp_path_factory.mktemp("hostile"))


@pytest.mark.parametrize("name", ["png_bomb", "jpeg_bomb", "gif_bomb", "webp_bomb", "tiff_bomb", "huge_png_header",
                                  "truncated_png", "truncated_jpeg", "truncated_webp", "empty", "text_as_jpg", "svg",
                                  "folder", "missing", "tiny", "oversized"])
def test_hostile_uploads_get_a_message(files, name):
    path, message = files[name]
    with pytest.raises(AppError, match=f"(?i){message}"):
        read_photo(path, LIMITS)


def test_bombs_are_refused_from_the_header(files):
    for name in ("png_bomb", "jpeg_bomb", "gif_bomb", "tiff_bomb"):
        path = files[name][0]
        assert path.stat().st_size < 500_000, name  # small files ...
        try:
            _, w, h, _ = photo_header(path)
        except AppError as err:  # ... that Pillow itself refuses as bombs, or
            assert "megapixels" in str(err), name
        else:
            assert w * h > 100e6, name  # ... declaring over 100 megapixels


def test_odd_but_valid_photos_are_read(tmp_path):
    for name, (path, hw) in valid(tmp_path).items():
        photo = read_photo(path, LIMITS)
        assert photo.rgb.shape == (*hw, 3) and photo.rgb.dtype == np.uint8, name
    rgb = read_photo(tmp_path / "depth16.png").rgb
    assert rgb[0, 0, 0] < 5 and rgb[0, -1, 0] > 250  # 16 bits scaled to 8, not clipped
    assert np.abs(read_photo(tmp_path / "cmyk.jpg").rgb[10, 10].astype(int) - (255, 0, 255)).max() <= 3  # magenta
    assert "first frame" in read_photo(tmp_path / "animated.gif").note


def test_large_photos_are_shrunk_to_the_working_size(tmp_path):
    big = np.zeros((3000, 4000, 3), np.uint8)
    cv2.circle(big, (2000, 1500), 900, (200, 100, 50), -1)
    cv2.imwrite(str(tmp_path / "big.jpg"), big)
    cv2.imwrite(str(tmp_path / "big.png"), big)
    limits = Limits(work_mp=1.0)
    for name in ("big.jpg", "big.png"):
        photo = read_photo(tmp_path / name, limits)
        h, w = photo.rgb.shape[:2]
        assert h * w <= 1e6 and abs(w / h - 4 / 3) < 0.01 and "shrunk" in photo.note
        assert photo.original_hw == (3000, 4000)


def test_reading_hostile_files_costs_little_memory(files, tmp_path):
    """In a fresh process: the peak resident memory grows by less than 150 MB over all hostile files."""
    paths = [str(p) for p, _ in files.values()]
    script = (
        "import sys\n"
        "from wordepth.app.uploads import read_photo, AppError\n"
        "def hwm():\n"
        "    return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) * 1024\n"
        "before = hwm()\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        read_photo(p)\n"
        "        print('accepted', p)\n"
        "    except AppError:\n"
        "        pass\n"
        "print('grew', hwm() - before)\n")
    out = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "accepted" not in out.stdout
    grew = int(out.stdout.split("grew")[-1])
    assert grew < 150 * 2**20, f"peak memory grew by {grew / 2**20:.0f} MB"


def test_videos_are_checked_before_their_frames_are_decoded(tmp_path, files):
    with pytest.raises(AppError, match="not a video"):
        check_video(files["text_as_jpg"][0])
    with pytest.raises(AppError, match="empty"):
        check_video(files["empty"][0])
    with pytest.raises(AppError, match="folder"):
        check_video(tmp_path)
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    for i in range(5):
        writer.write(np.full((64, 96, 3), 40 * i, np.uint8))
    writer.release()
    path, w, h, n, fps = check_video(clip, Limits(max_video_frames=3))
    assert (w, h, n) == (96, 64, 3) and fps == pytest.approx(10)
    with pytest.raises(AppError, match="megapixels"):
        check_video(clip, Limits(max_video_mp=0.001))

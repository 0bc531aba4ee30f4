"""Bad inputs to wordepth-predict and to checkpoint loading, through the real command.

Each case asserts the exit status, one ``error:`` line on stderr naming the file or flag, no
traceback, and that files that existed before are untouched: the first cases in subprocesses, the
catalogue cases at the end through :func:`tests.catalogue.run_case` (``main(argv)`` in this process,
where a full disk can be simulated).
"""
import hashlib
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from wordepth.checkpoints import CheckpointError, load_checkpoint
from wordepth.models.wordepth import WorDepth, preset_config


def save_tiny(path: Path, model: WorDepth | None = None, **extra) -> Path:
    model = model or WorDepth(preset_config("tiny"))
    torch.save({"format": "wordepth", "config": {"model": model.cfg.to_dict()}, "model": model.state_dict(),
                **extra}, path)
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_predict")
    torch.manual_seed(0)
    save_tiny(d / "tiny.pth")
    photos = d / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(photos / "a_good.png"), rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    cv2.imwrite(str(photos / "b_thin.png"), rng.integers(0, 256, (1, 56, 3), dtype=np.uint8))
    (photos / "c_not_an_image.jpg").write_bytes(b"<html>404</html>")
    cv2.imwrite(str(photos / "d_good.png"), rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    return d


def predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wordepth.cli.predict", "--device", "cpu", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_images_in_a_folder_are_skipped_listed_and_fail_at_the_end(assets, tmp_path):
    out = tmp_path / "out"
    proc = predict("--checkpoint", assets / "tiny.pth", "--images", assets / "photos", "--out", out)
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert "2 of 4 images failed" in line and "b_thin.png" in line and "c_not_an_image.jpg" in line
    assert "too small" in line
    written = {p.name for p in out.iterdir()}
    assert {"a_good_depth.npy", "d_good_depth.npy"} <= written  # the images after the bad ones ran
    assert not any(n.startswith(("b_thin", "c_not")) for n in written)  # no partial outputs


def test_strict_stops_at_the_first_bad_image(assets, tmp_path):
    out = tmp_path / "out"
    proc = predict("--checkpoint", assets / "tiny.pth", "--images", assets / "photos", "--out", out, "--strict")
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert "b_thin.png" in line and "failed" not in line


@pytest.mark.parametrize("case", ["folder", "nan_weights", "no_config", "bad_config"])
def test_unusable_checkpoints_are_one_line(assets, tmp_path, case):
    if case == "folder":
        ckpt, expect = tmp_path, "is a folder"
    else:
        ckpt = tmp_path / f"{case}.pth"
        model = WorDepth(preset_config("tiny"))
        if case == "nan_weights":
            with torch.no_grad():
                model.outc.conv.weight[0, 0, 0, 0] = float("nan")
            save_tiny(ckpt, model)
            expect = "non-finite weights"
        else:
            obj = {"format": "wordepth", "model": model.state_dict()}
            obj["config"] = {} if case == "no_config" else {"model": {"backbone": "swin"}}
            torch.save(obj, ckpt)
            expect = "config is missing or malformed"
    before = digest(tmp_path)
    proc = predict("--checkpoint", ckpt, "--images", assets / "photos" / "a_good.png", "--out", tmp_path / "out")
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert expect in line and str(ckpt.name) in line
    assert digest(tmp_path) == before or not (tmp_path / "out").exists()
    if case != "folder":
        with pytest.raises(CheckpointError, match=expect):
            load_checkpoint(ckpt)


def test_unwritable_out_is_one_line_before_any_work(assets, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = predict("--checkpoint", assets / "tiny.pth", "--images", assets / "photos" / "a_good.png",
                   "--out", blocker / "sub")
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert "--out" in line and "file/sub" in line and "is a file, not a folder" in line
    assert blocker.read_text() == "x"


def test_large_photo_runs_at_the_pixel_budget_and_is_resized_back(assets, tmp_path):
    photo = tmp_path / "big.png"
    rng = np.random.default_rng(1)
    cv2.imwrite(str(photo), cv2.resize(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), (800, 600)))
    out = tmp_path / "out"
    proc = predict("--checkpoint", assets / "tiny.pth", "--images", photo, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "above the pixel budget (12288" in proc.stderr and "predicted at 96x128" in proc.stderr
    depth = np.load(out / "big_depth.npy")
    assert depth.shape == (600, 800) and np.isfinite(depth).all()


def test_a_request_that_cannot_fit_says_so_before_allocating(assets, tmp_path, monkeypatch):
    import wordepth.inference.predictor as predictor

    monkeypatch.setattr(predictor, "_available_bytes", lambda: 2**30)  # 1 GB free
    model = WorDepth(preset_config("tiny"))
    predictor.check_memory(model, (480, 640))  # about 27 MB: fits
    with pytest.raises(MemoryError, match="needs about 6.6 GB .* 1.0 GB are available"):
        predictor.check_memory(model, (9000, 9000), what="huge.jpg")


def test_non_finite_prediction_names_the_image(assets, tmp_path):
    model = WorDepth(preset_config("tiny"))
    with torch.no_grad():
        model.outc.conv.bias.fill_(1e6)  # exp(1e6) = inf: finite weights, non-finite depth
    ckpt = save_tiny(tmp_path / "inf.pth", model)
    out = tmp_path / "out"
    proc = predict("--checkpoint", ckpt, "--images", assets / "photos" / "a_good.png", "--out", out)
    assert proc.returncode == 1
    (line,) = error_lines(proc)
    assert "a_good.png" in line and "not finite" in line
    assert not list(out.glob("a_good*"))


# --------------------------------------------------------------------------- catalogue (tests/catalogue.py)
import errno  # noqa: E402

from tests.catalogue import run_case  # noqa: E402
from wordepth.cli import predict as predict_cli  # noqa: E402


def enospc(after_bytes: bytes = b"\x93NUMPY partial"):
    """A writer that puts a few bytes into its file, then fails as a full disk does."""
    def write(file, *args, **kwargs):
        with open(file, "wb") as f:
            f.write(after_bytes)
        raise OSError(errno.ENOSPC, "No space left on device")
    return write


def make_clip(path: Path, frames: int = 4, hw: tuple[int, int] = (48, 64)) -> Path:
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, hw[::-1])
    for _ in range(frames):
        writer.write(rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
    writer.release()
    return path


def demo_checkpoint() -> str:
    from wordepth.demo import toy

    return str(toy.demo_model_file(train=False))


def test_video_out_equal_to_the_input_is_refused(tmp_path):
    clip = make_clip(tmp_path / "c.mp4")
    run_case(predict_cli.main, ["--checkpoint", demo_checkpoint(), "--video", clip, "--video_out", clip,
                                "--out", tmp_path / "out"], tmp_path, names=["--video_out", "c.mp4", "inputs"])
    # the same file through a link is the same file
    link = tmp_path / "link.mp4"
    link.symlink_to(clip)
    run_case(predict_cli.main, ["--checkpoint", demo_checkpoint(), "--video", clip, "--video_out", link,
                                "--out", tmp_path / "out"], tmp_path, names=["--video_out", "link.mp4", "inputs"])


def test_an_image_output_equal_to_an_input_is_refused_before_any_work(assets, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cv2.imwrite(str(out / "x.png"), np.full((40, 56, 3), 128, np.uint8))
    cv2.imwrite(str(out / "x_depth.png"), np.full((40, 56, 3), 64, np.uint8))  # a photo named like an output
    # the images folder as --out: refused as such, before any file is looked at
    run_case(predict_cli.main, ["--checkpoint", assets / "tiny.pth", "--images", out, "--out", out,
                                "--device", "cpu"], tmp_path, names=["--out", "--images folder"])
    # photos listed one by one, one of them where an output would go
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "x.png"), np.full((40, 56, 3), 128, np.uint8))
    run_case(predict_cli.main, ["--checkpoint", assets / "tiny.pth", "--images", photos / "x.png",
                                out / "x_depth.png", "--out", out, "--device", "cpu"], tmp_path,
             names=["--out", "x_depth.png", "inputs"])


def test_full_disk_during_predict_keeps_the_previous_file_and_is_one_line(assets, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    previous = out / "a_good_depth.npy"
    np.save(previous, np.ones((2, 2), np.float32))
    monkeypatch.setattr(np, "save", enospc())
    run_case(predict_cli.main, ["--checkpoint", assets / "tiny.pth", "--images", assets / "photos" / "a_good.png",
                                "--out", out, "--device", "cpu"], tmp_path, out_root=out,
             names=["a_good_depth.npy", "No space left on device", "previous file is kept"])
    monkeypatch.undo()
    assert np.array_equal(np.load(previous), np.ones((2, 2), np.float32))


def test_full_disk_during_a_video_keeps_the_previous_video(tmp_path, monkeypatch):
    import wordepth.inference.video as video

    clip = make_clip(tmp_path / "pan.mp4", frames=5)
    out = tmp_path / "out"
    out.mkdir()
    previous = out / "pan_depth.webm"  # WebM: the default depth video's name
    previous.write_bytes(b"an earlier depth video")
    real_open = video.video_writer

    class FillsUp:
        def __init__(self, *args, **kwargs):
            self.writer, self.n = real_open(*args, **kwargs), 0

        def write(self, frame):
            self.n += 1
            if self.n == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.writer.write(frame)

        def release(self):
            self.writer.release()

    monkeypatch.setattr(video, "video_writer", FillsUp)
    run_case(predict_cli.main, ["--checkpoint", demo_checkpoint(), "--video", clip, "--out", out,
                                "--caption", "a bedroom"], tmp_path, out_root=out,
             names=["pan_depth.webm", "No space left on device", "previous file is kept"])
    monkeypatch.undo()
    assert previous.read_bytes() == b"an earlier depth video"


def test_a_symlink_at_an_output_name_is_replaced_not_followed(assets, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = out / "a_good_depth.npy"
    link.symlink_to(victim)
    run_case(predict_cli.main, ["--checkpoint", assets / "tiny.pth", "--images", assets / "photos" / "a_good.png",
                                "--out", out, "--device", "cpu"], tmp_path, code=0, out_root=out, may_change=[link])
    assert victim.read_text() == "precious\n"
    assert not link.is_symlink() and np.load(link).shape == (40, 56)

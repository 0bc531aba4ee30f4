"""Start-up and serving: what a command imports before it works, weights loaded without copies,
torch.hub, the web app's temporary-file cap, browser-playable videos, the app's processing resolution.

The start-up *times* are measured by ``python -m benchmarks.startup`` (docs/performance.md), not here.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from wordepth.app.views import DepthApp, ResultStore
from wordepth.app.uploads import Limits
from wordepth.checkpoints import load_checkpoint, save_safetensors
from wordepth.inference.predictor import Predictor
from wordepth.inference.video import browser_playable, preview_copy, read_frames
from wordepth.models.wordepth import WorDepth, preset_config

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path, _ = save_safetensors(WorDepth(preset_config("tiny")).eval(), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")
    return path


def test_the_package_and_the_app_page_do_not_import_torch():
    # `import wordepth` and everything the app needs to serve its page (the demo's examples, the page itself)
    out = _python(
        "import sys, wordepth\n"
        "from wordepth.cli import app as cli\n"
        "from wordepth import app as webapp\n"
        "from wordepth.demo import examples\n"
        "import tempfile, pathlib\n"
        "text = webapp.demo_text(pathlib.Path(tempfile.mkdtemp()) / 'rooms')\n"
        "app = webapp.DepthApp(lambda: None)\n"
        "blocks = webapp.build_app(app, text)\n"
        "print('torch' in sys.modules, 'timm' in sys.modules, len(text.examples))\n"
        "print(wordepth.Predictor.__name__, 'torch' in sys.modules)\n")
    assert out.splitlines() == ["False False 5", "Predictor True"]  # the lazy names still resolve


def _file_mapped(path: Path, ptr: int) -> bool:
    """Whether address ``ptr`` of this process lies in a memory mapping of the file ``path`` (Linux)."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        if lo <= ptr < hi and len(parts) >= 6 and parts[5].startswith("/") and os.path.exists(parts[5]) \
                and os.path.samefile(parts[5], path):
            return True
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc/self/maps (Linux)")
def test_a_checkpoint_file_becomes_the_weights_without_a_copy(tiny_file, tmp_path):
    pth = tmp_path / "tiny.pth"
    torch.save({"model": load_checkpoint(tiny_file).state_dict()}, pth)
    for path in (tiny_file, pth):
        model = load_checkpoint(path)
        params = list(model.parameters())
        assert all(_file_mapped(path, p.data_ptr()) for p in params), path  # the file's pages are the weights
        assert all(p.requires_grad and p.dtype == torch.float32 for p in params)
    # a state dict handed in (not a file read here) is copied: the caller's tensors stay its own
    state = {k: v.clone() for k, v in model.state_dict().items()}
    copy = load_checkpoint(state)
    assert not {p.data_ptr() for p in copy.parameters()} & {v.data_ptr() for v in state.values()}
    # the float16 demo file loads as float32 weights
    demo = Predictor.from_checkpoint("demo", device="cpu")
    assert {p.dtype for p in demo.model.parameters()} == {torch.float32}


@pytest.mark.parametrize("legacy", [False, True])
def test_a_network_built_without_memory_gets_every_buffer_a_state_dict_lacks(tmp_path, legacy):
    # files are loaded into a network built on the meta device: the index tables no file holds
    # (Swin's relative positions, the decoder's zero-skip indices) must be computed, as at construction
    torch.manual_seed(0)
    built = WorDepth(preset_config("tiny", legacy=legacy)).eval()
    path, _ = save_safetensors(built, tmp_path / "net.safetensors")
    loaded = load_checkpoint(path)
    mine, theirs = dict(built.named_buffers()), dict(loaded.named_buffers())
    assert mine.keys() == theirs.keys() and len(set(mine) - set(built.state_dict())) >= 8
    assert all(not b.is_meta and torch.equal(b, mine[k]) for k, b in theirs.items())
    assert not any(p.is_meta for p in loaded.parameters())
    image, text = torch.rand(1, 3, 64, 96), torch.randn(1, 1024)
    with torch.no_grad():
        assert torch.equal(built(image, text), loaded(image, text))


def test_torch_hub_gives_the_same_predictor_from_a_local_checkout(tiny_file):
    hub = torch.hub.load(str(ROOT), "wordepth", source="local", checkpoint=str(tiny_file), device="cpu")
    api = Predictor.from_checkpoint(tiny_file, device="cpu")
    assert type(hub) is type(api) and hub.max_pixels == api.max_pixels
    a, b = hub.model.state_dict(), api.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rgb = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    feature = torch.randn(1024)
    assert np.array_equal(hub.infer(rgb, feature), api.infer(rgb, feature))
    from wordepth.errors import UserError

    with pytest.raises(UserError, match="needs checkpoint="):
        torch.hub.load(str(ROOT), "wordepth", source="local")


def test_the_app_cache_is_trimmed_oldest_first_and_keeps_the_result_shown(tmp_path):
    cache = tmp_path / "gradio"
    store = ResultStore(cache / "results", keep=8, max_mb=1.0, cache=cache, min_age_s=0.0)
    old = time.time() - 3600
    uploads = []
    for i in range(4):  # 4 x 400 kB of uploads, oldest first
        f = cache / f"upload{i}" / "photo.png"
        f.parent.mkdir(parents=True)
        f.write_bytes(b"\0" * 400_000)
        os.utime(f, (old + i, old + i))
        uploads.append(f)
    shown, _ = store.new("first")
    (shown / "depth.npy").write_bytes(b"\0" * 300_000)
    os.utime(shown / "depth.npy", (old - 100, old - 100))  # older than every upload, but its page shows it
    store.new("second")  # trims to 1 MB
    total = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    assert total <= 2**20
    assert (shown / "depth.npy").is_file()  # the result shown is kept
    assert [f.is_file() for f in uploads] == [False, False, True, True] or \
        [f.is_file() for f in uploads] == [False, False, False, True]  # oldest removed first
    assert not uploads[0].parent.exists()  # and their emptied folders
    # files younger than min_age_s (an upload in use) are never removed
    young = ResultStore(cache / "results2", max_mb=0.001, cache=cache, min_age_s=3600)
    young.new("x")
    assert uploads[-1].is_file()
    assert Limits().cache_mb > 0
    with pytest.raises(Exception, match="cache_mb must be positive"):
        Limits(cache_mb=0)


def _mp4v_clip(path: Path, n: int = 6) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (96, 64))
    for i in range(n):
        frame = np.zeros((64, 96, 3), np.uint8)
        frame[:, 10 * i:10 * i + 20] = 255
        writer.write(frame)
    writer.release()
    return path


def test_an_mp4v_upload_is_previewed_as_a_webm_and_processed_from_the_upload(tmp_path):
    clip = _mp4v_clip(tmp_path / "walk.mp4")
    assert not browser_playable(clip)
    preview = preview_copy(clip, tmp_path / "walk_preview.webm", max_frames=4)
    assert browser_playable(preview) and preview.read_bytes()[:4] == b"\x1a\x45\xdf\xa3"
    frames, _, _ = read_frames(preview)
    assert len(list(frames)) == 4
    demo = Predictor.from_checkpoint("demo", device="cpu")
    app = DepthApp(demo, out_dir=tmp_path / "out")
    shown, note = app.video_preview(clip)
    assert shown is not None and browser_playable(shown) and "WebM copy" in note
    assert app.video_preview(shown) == (None, "")  # a playable upload is shown as it is
    assert app._originals[str(shown)] == str(clip)  # Depth video reads the upload, not the preview
    r = app.video(str(shown), "a bedroom with a sofa and a bed")
    assert r["frames"] == 6  # the upload's 6 frames (the preview holds at most max_video_frames)


def test_predict_video_writes_a_webm_by_default(tmp_path):
    from wordepth.inference.video import predict_video

    clip = _mp4v_clip(tmp_path / "walk.mp4", n=3)
    demo = Predictor.from_checkpoint("demo", device="cpu")
    r = predict_video(demo, clip, tmp_path / "pred", caption="a bedroom with a sofa and a bed", progress=False)
    assert r.video == tmp_path / "pred" / "walk_depth.webm" and browser_playable(r.video) and r.frames == 3
    r = predict_video(demo, clip, tmp_path / "pred", caption="a bedroom with a sofa and a bed", progress=False,
                      video_out=tmp_path / "pred" / "player.mp4")
    assert r.frames == 3 and not browser_playable(r.video)  # .mp4 asks for mp4v: players, not browsers


def test_the_app_processes_at_max_pixels_and_answers_at_the_photo_size(tiny_file, tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    calls = []

    class Spy(Predictor):
        def encode(self, captions):  # no CLIP weights here: any feature does
            return torch.zeros(len(captions), 1024)

        def _forward_sizes(self, nets):
            calls.append([n.shape[:2] for n in nets])

        def _network_inputs(self, rgbs):
            nets = super()._network_inputs(rgbs)
            self._forward_sizes(nets)
            return nets

    model = load_checkpoint(tiny_file)
    default = DepthApp(Spy(model, device="cpu"), out_dir=tmp_path / "a")
    assert default.predictor.max_pixels == 16 * 24 * 32  # the model's training area, as wordepth-predict
    app = DepthApp(Spy(model, device="cpu"), out_dir=tmp_path / "b", max_pixels=48 * 64)
    r = app.depth(rgb, "a room", cloud=False)
    assert calls[-1] == [(48, 64)] and r["depth"].shape == (120, 160)  # network at 48x64, depth at the photo's size
    app = DepthApp(Spy(model, device="cpu"), out_dir=tmp_path / "c", max_pixels=0)
    app.depth(rgb, "a room", cloud=False)
    assert calls[-1] == [(120, 160)]  # 0: no limit


@pytest.mark.slow
def test_the_predict_start_up_benchmark_runs_its_commands_on_a_saved_preset(tmp_path):
    from benchmarks.startup import bench_predict, default_checkpoint

    ckpt = default_checkpoint(tmp_path, "tiny")
    written = ckpt.stat().st_mtime_ns
    assert default_checkpoint(tmp_path, "tiny") == ckpt and ckpt.stat().st_mtime_ns == written  # written once
    torch.manual_seed(0)
    seeded = WorDepth(preset_config("tiny")).state_dict()
    loaded = Predictor.from_checkpoint(ckpt, device="cpu").model.state_dict()
    assert all(torch.equal(seeded[k], loaded[k]) for k in seeded)
    r = bench_predict(1, tmp_path, str(ckpt))
    assert len(r["one_runs"]) == len(r["two_runs"]) == 1 and r["two_photos_s"] > 0
    phases = r["phases_s"]  # each phase timed from the process's start
    assert list(phases)[:2] == ["interpreter", "import torch"] and all(v >= 0 for v in phases.values())
    assert phases["import torch"] > 0.05 and phases["first photo"] > 0
    assert len(list((tmp_path / "out_1_0").rglob("*.png"))) < len(list((tmp_path / "out_2_0").rglob("*.png")))

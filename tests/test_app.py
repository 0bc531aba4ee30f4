"""The web app and its toy demo model: the views on arrays, the command's messages, and the app in a real
browser (headless Chromium driven by Playwright, the app served by `wordepth-app --demo` on 127.0.0.1).

The browser test needs the ``demo`` extra (gradio, playwright) and a Chromium executable (Debian's
``chromium``; ``$WORDEPTH_CHROMIUM`` names another); it is skipped, with the reason, without them.
Its screenshots go to ``$WORDEPTH_SCREENSHOTS`` (``docs/images`` to refresh the README's) or to a
temporary folder.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.hostile_images import png_bomb
from wordepth import app as webapp
from wordepth.demo import examples, toy
from wordepth.inference.predictor import DemoPredictor, Predictor, is_demo_model
from wordepth.cli import app as cli_app

ROOT = Path(__file__).resolve().parents[1]
TIME_LIMIT = 240.0  # seconds for the whole browser test, server start included
CHROMIUM = os.environ.get("WORDEPTH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DOLLHOUSE, HALL = toy.DEMO_CAPTIONS[0], toy.DEMO_CAPTIONS[-1]


@pytest.fixture(scope="module")
def demo() -> DemoPredictor:
    return DemoPredictor.load(device="cpu", progress=False)


@pytest.fixture(scope="module")
def room(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A held-out room with the demo's objects, 192 x 288, as a file and as an RGB array."""
    path, objects = toy.example_images(tmp_path_factory.mktemp("rooms"), n=1)[0]
    assert set(objects) == set(examples.DEMO_OBJECTS)
    return path, np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])


# ---------------------------------------------------------------------- the demo model


def test_demo_model_is_shipped_small_and_reads_the_scale_from_the_caption(demo, room):
    assert toy.demo_model_file(train=False) == toy.DEMO_MODEL_FILE
    assert toy.DEMO_MODEL_FILE.stat().st_size < 5 * 2**20
    facts = json.loads(toy.DEMO_MODEL_FILE.with_suffix(".json").read_text())["demo"]
    assert facts["held_out_abs_rel"] < 0.25  # the experiment's 0.186 (README), on layouts it never saw
    assert all(0.85 < r < 1.15 for r in facts["held_out_scale_ratio"].values())
    _, rgb = room
    depth = {c: demo.infer(rgb, c) for c in toy.DEMO_CAPTIONS}
    assert all(d.shape == rgb.shape[:2] and d.dtype == np.float32 for d in depth.values())
    medians = [float(np.median(d)) for d in depth.values()]  # the same picture at x0.5, x1, x2
    assert medians[0] < medians[1] < medians[2]
    assert 2.5 < medians[2] / medians[0] < 6.0  # 4 if the scale were read perfectly
    assert is_demo_model(toy.DEMO_MODEL_FILE) and isinstance(Predictor.from_checkpoint("demo"), DemoPredictor)


def test_demo_training_is_deterministic(tmp_path):
    a = toy.train_demo_model(tmp_path / "a.safetensors", toy.QUICK, progress=False)
    b = toy.train_demo_model(tmp_path / "b.safetensors", toy.QUICK, progress=False)
    from safetensors.torch import load_file

    sa, sb = load_file(str(a)), load_file(str(b))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(v.dtype == torch.float16 for v in sa.values() if v.is_floating_point())
    assert is_demo_model(a) and not is_demo_model(tmp_path / "missing.safetensors")


def test_demo_model_file_falls_back_to_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(toy, "DEMO_MODEL_FILE", tmp_path / "not_shipped" / "demo_scale_rooms.safetensors")
    with pytest.raises(FileNotFoundError, match="neither shipped"):
        toy.demo_model_file(tmp_path / "cache", train=False)
    cached = tmp_path / "cache" / "demo_scale_rooms.safetensors"
    cached.parent.mkdir()
    cached.write_bytes(b"")
    monkeypatch.setenv("WORDEPTH_CACHE", str(tmp_path / "cache"))
    assert toy.demo_model_file(train=False) == cached


def test_captions_are_encoded_once(demo):
    feats = demo.encode([HALL, f"  {HALL} ", DOLLHOUSE])  # whitespace does not make another caption
    assert torch.equal(feats[0], feats[1]) and not torch.equal(feats[0], feats[2])
    assert torch.equal(demo.encode([HALL])[0], feats[0]) and HALL in demo._features_of


def test_example_rooms_are_deterministic_whatever_the_cache_holds(tmp_path):
    first = toy.example_images(tmp_path / "a", n=3)
    (tmp_path / "b").mkdir()
    shutil.copy(first[0][0], tmp_path / "b" / first[0][0].name)  # a cache holding the first room only
    second = toy.example_images(tmp_path / "b", n=3)
    assert [(p.name, o) for p, o in first] == [(p.name, o) for p, o in second]
    for (p, _), (q, _) in zip(first, second):
        assert np.array_equal(cv2.imread(str(p)), cv2.imread(str(q)))
    assert cv2.imread(str(first[0][0])).shape == (192, 288, 3)


# ---------------------------------------------------------------------- the views, without a browser


def test_depth_view_writes_png16_point_clouds_and_says_how_long(demo, room, tmp_path):
    path, rgb = room
    r = webapp.DepthApp(demo, out_dir=tmp_path).depth(str(path), DOLLHOUSE)
    assert r["color"].shape == rgb.shape and r["color"].dtype == np.uint8
    png16, color, ply, npy, zipped = r["files"]
    raw = cv2.imread(str(png16), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == rgb.shape[:2]
    assert np.abs(raw - r["depth"].astype(np.float64) * 1000).max() <= 0.5 + 1e-3  # millimetres
    bar = cv2.imread(str(color))
    assert bar.shape[0] >= webapp.views.MIN_BAR_HEIGHT and bar.shape[1] > 2.5 * rgb.shape[1]  # drawn large enough
    assert f"element vertex {rgb.shape[0] * rgb.shape[1]}".encode() in ply.read_bytes()[:300]
    assert np.array_equal(np.load(npy), r["depth"])
    import zipfile

    names = zipfile.ZipFile(zipped).namelist()
    assert {png16.name, color.name, ply.name, npy.name} <= set(names)
    assert all(n.startswith("a-dollhouse-with-a-sofa") for n in names)  # download names carry the caption
    glb = r["glb"].read_bytes()
    assert glb[:4] == b"glTF" and int.from_bytes(glb[8:12], "little") == len(glb)
    assert "inference" in r["info"] and "focal length 172.8 px" in r["info"]  # the rooms' camera: 0.6 x 288
    assert "metres" in r["colorbar"] and "linear-gradient" in r["colorbar"] and "0 to 10 m" in r["colorbar"]


def test_fixed_scale_shows_the_difference_the_automatic_one_hides(demo, room, tmp_path):
    _, rgb = room
    app = webapp.DepthApp(demo, out_dir=tmp_path)
    fixed = [app.depth(rgb, c, "fixed", cloud=False)["color"].astype(int) for c in (DOLLHOUSE, HALL)]
    auto = [app.depth(rgb, c, "auto", cloud=False)["color"].astype(int) for c in (DOLLHOUSE, HALL)]
    assert np.abs(fixed[0] - fixed[1]).mean() > 3 * np.abs(auto[0] - auto[1]).mean()
    r = app.depth(rgb, HALL, "range", 1, 3, cloud=False)
    assert "1 to 3 m" in r["colorbar"] and "<span>1</span>" in r["colorbar"]
    with pytest.raises(webapp.AppError, match="0 ≤ from < to"):
        app.depth(rgb, HALL, "range", 5, 2)


def test_compare_and_prior_views(demo, room, tmp_path):
    _, rgb = room
    app = webapp.DepthApp(demo, out_dir=tmp_path)
    c = app.compare(rgb, DOLLHOUSE, HALL)
    assert c["a"].shape == c["b"].shape == c["ratio"].shape == rgb.shape
    ratio = float(np.median(c["depth_b"] / c["depth_a"]))
    assert 2.5 < ratio < 6.0 and f"B / A = <b>{ratio:.2f}</b>" in c["info"]
    assert np.abs(c["a"].astype(int) - c["b"]).mean() > 20  # one colour scale: the maps look different
    same = app.compare(rgb, HALL, HALL)
    assert "1.00 everywhere" in same["ratio_colorbar"] and "1.00 everywhere" in same["info"]
    p = app.prior(HALL, k=3, seed=1)
    assert p["samples"].shape == (3, 64, 96) and p["grid"].ndim == 3
    assert np.array_equal(app.prior(HALL, k=3, seed=1)["samples"], p["samples"])
    assert np.array_equal(np.load(p["files"][1]), p["samples"])
    assert np.median(p["samples"]) > np.median(app.prior(DOLLHOUSE, k=3, seed=1)["samples"])


def test_results_on_disk_are_bounded_and_removed(demo, room, tmp_path):
    _, rgb = room
    app = webapp.DepthApp(demo, limits=webapp.Limits(keep_results=3))
    root = app.out_dir
    assert root.name.startswith("wordepth-app-")
    names = set()
    for i in range(6):
        names |= {f.name for f in app.depth(rgb, f"{DOLLHOUSE} {i}", cloud=False)["files"]}
    assert len([d for d in root.iterdir() if d.is_dir()]) == 3 and len(names) == 6 * 5  # no name twice
    app.store.cleanup()
    assert not root.exists()


def test_a_caption_with_html_is_shown_as_text(demo, room, tmp_path):
    r = webapp.DepthApp(demo, out_dir=tmp_path).depth(room[1], '<img src=x onerror="alert(1)"> a dollhouse',
                                                      cloud=False)
    assert "<img" not in r["info"] and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in r["info"]


@pytest.mark.parametrize("call, message", [
    (lambda a, rgb: a.depth(None, DOLLHOUSE), "Upload a photo"),
    (lambda a, rgb: a.depth(rgb, "   "), "Type a caption first"),
    (lambda a, rgb: a.compare(rgb, DOLLHOUSE, ""), "Type caption B first"),
    (lambda a, rgb: a.compare(rgb, "", HALL), "Type caption A first"),
    (lambda a, rgb: a.depth(np.zeros(5), DOLLHOUSE), "not an image"),
    (lambda a, rgb: a.depth(__file__, DOLLHOUSE), "not an image"),  # an upload that is no picture
    (lambda a, rgb: a.caption(rgb), "no captioner"),
    (lambda a, rgb: a.prior(HALL, 4, 99999999999999999999), "seed must be a whole number from 0 to 2147483647"),
    (lambda a, rgb: a.prior(HALL, 4, -1), "seed must be a whole number"),
    (lambda a, rgb: a.prior(HALL, 4, 1.5), "seed must be a whole number"),
    (lambda a, rgb: a.prior(HALL, 99, 0), "samples"),
    (lambda a, rgb: a.video(__file__, HALL), "not a video"),
    (lambda a, rgb: a.depth(rgb, DOLLHOUSE, cmap="rainbow-unicorn"), "Unknown colour map"),
])
def test_views_answer_mistakes_with_a_message(demo, room, tmp_path, call, message):
    with pytest.raises(webapp.AppError, match=message):
        call(webapp.DepthApp(demo, out_dir=tmp_path), room[1])


def test_video_view_writes_a_webm_to_play_in_the_page(demo, tmp_path):
    clip = _clip(tmp_path / "rooms.avi")
    r = webapp.DepthApp(demo, out_dir=tmp_path / "out", limits=webapp.Limits(max_video_frames=4)).video(clip, HALL)
    assert r["video"].suffix == ".webm" and r["video"].read_bytes()[:4] == b"\x1a\x45\xdf\xa3"  # Matroska/WebM
    assert r["frames"] == 4 and "the first 4" in r["info"]
    cap = cv2.VideoCapture(str(r["video"]))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape[1] > 2 * 96  # the frame, then its depth with a colour bar


def test_batch_view_zips_every_photo_and_lists_the_unreadable(demo, room, tmp_path):
    path, _ = room
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    r = webapp.DepthApp(demo, out_dir=tmp_path / "out").batch([str(path), str(bad), str(path)], HALL)
    import zipfile

    assert len(r["gallery"]) == 2 and len(zipfile.ZipFile(r["zip"]).namelist()) == 6
    assert "notes.png" in r["info"] and "not an image" in r["info"]


def test_page_handlers_show_mistakes_in_the_status_line(demo, room, tmp_path):
    pytest.importorskip("gradio")
    from wordepth.app.layout import handler

    def fails(*_):
        raise webapp.AppError("Type a caption <first>.")

    out = handler(fails, 3, "estimate_depth")({"path": "x"}, "")
    assert out[:3] == (None, None, None) and "wd-error" in out[3] and "&lt;first&gt;" in out[3]

    def ok(photo, caption):
        return (photo, caption), "a note"

    assert handler(ok, 2, "estimate_depth")({"path": "p.png", "meta": {}}, "c") == ("p.png", "c", webapp.status_html(
        "a note", "note"))


def test_page_names_its_api_and_hides_what_cannot_work(demo, tmp_path):
    pytest.importorskip("gradio")
    text = webapp.demo_text(tmp_path / "examples")
    blocks = webapp.build_app(webapp.DepthApp(demo, out_dir=tmp_path / "out"), text)
    config = blocks.get_config_file()
    names = {d.get("api_name") for d in config["dependencies"] if d.get("api_visibility", "public") == "public"}
    assert {"estimate_depth", "compare_captions", "prior_from_caption", "depth_video", "depth_batch",
            "check_photo"} <= names
    assert not any(str(n).startswith("wrapped") or str(n).startswith("lambda") for n in names if n)
    props = {c.get("props", {}).get("elem_id"): c.get("props", {}) for c in config["components"]}
    assert props["auto_caption"]["visible"] is False  # the toy model has no captioner
    assert "no captioner" in props["caption"]["info"]
    assert all(props[i]["buttons"] in ([], None) or "share" not in props[i]["buttons"]
               for i in ("photo", "depth_image", "depth_a", "ratio", "prior_grid"))
    assert props["prior_seed"]["maximum"] == webapp.views.MAX_SEED and props["prior_seed"]["precision"] == 0
    tabs = [c["props"]["label"] for c in config["components"] if c.get("type") == "tabitem"]
    assert tabs == ["Depth", "Compare", "Text only", "Video"]


def _clip(path: Path, n: int = 6) -> Path:
    """A short clip of the demo's first example room panning sideways (MJPG in AVI)."""
    room = cv2.imread(str(toy.example_images(path.parent / "rooms", n=1)[0][0]))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (room.shape[1], room.shape[0]))
    for i in range(n):
        writer.write(np.roll(room, 4 * i, axis=1))
    writer.release()
    return path


def test_command_messages(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_app.main(["--checkpoint", str(tmp_path / "missing.pth")])
    assert str(exc.value.code).startswith("error: checkpoint not found") and "--demo" in str(exc.value.code)
    with pytest.raises(SystemExit) as exc:
        cli_app.main(["--demo", "--max_upload_mb", "0"])
    assert str(exc.value.code) == "error: max_upload_mb must be positive, got 0.0"
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the extra were not installed
    with pytest.raises(SystemExit) as exc:
        cli_app.main(["--demo"])
    assert str(exc.value.code) == f"error: {webapp.INSTALL_HINT}"
    with pytest.raises(SystemExit):
        cli_app.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: 127.0.0.1)" in help_text and "(default: 7860)" in help_text and "(default: 25.0)" in help_text


# ---------------------------------------------------------------------- in a browser


def _missing_for_browser() -> str | None:
    for module, extra in (("gradio", "gradio"), ("playwright", "playwright")):
        if importlib.util.find_spec(module) is None:
            return f"{extra} is not installed (pip install -e .[demo])"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set WORDEPTH_CHROMIUM)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deadline:
    """The time left of the browser test, for every wait in it."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def ms(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the browser test took longer than {TIME_LIMIT:.0f} s")
        return 1000 * left


def _wait_until_served(url: str, server: subprocess.Popen, log: Path, deadline: Deadline) -> float:
    t0 = time.monotonic()
    while True:
        if server.poll() is not None:
            pytest.fail(f"wordepth-app exited with status {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return time.monotonic() - t0
        except OSError:
            deadline.ms()
            time.sleep(0.5)


def _signature(page, selector: str) -> dict:
    """The shown image's natural size and its pixels shrunk to 16 x 16 RGB, read in the page."""
    return page.locator(selector).evaluate("""img => {
        const c = document.createElement('canvas'); c.width = 16; c.height = 16;
        const g = c.getContext('2d'); g.drawImage(img, 0, 0, 16, 16);
        const px = Array.from(g.getImageData(0, 0, 16, 16).data).filter((_, i) => i % 4 != 3);
        return {width: img.naturalWidth, height: img.naturalHeight, pixels: px};
    }""")


def _vm_hwm(pid: int) -> int:
    """The peak resident memory of a process, in bytes (VmHWM of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _run_and_wait(page, button: str, image: str, info: str, deadline: Deadline, expect: str = " s (") -> float:
    """Press ``button``; wait for a new ``info`` line holding ``expect`` and the new image in ``image``."""
    page.locator(info).evaluate("e => e.setAttribute('data-before', e.innerText)")
    t0 = time.monotonic()
    page.locator(button).click(timeout=deadline.ms())
    page.wait_for_function("([s, x]) => { const e = document.querySelector(s); return e && e.innerText.includes(x) "
                           "&& e.innerText !== e.getAttribute('data-before'); }", arg=[info, expect],
                           timeout=deadline.ms())
    page.wait_for_function("s => { const i = document.querySelector(s + ' img'); return i && i.complete "
                           "&& i.naturalWidth > 0; }", arg=image, timeout=deadline.ms())
    return time.monotonic() - t0


def _status(page, selector: str, text: str, deadline: Deadline) -> str:
    """Wait until the status line ``selector`` shows ``text``; its text."""
    page.wait_for_function("([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
                           arg=[selector, text], timeout=deadline.ms())
    content = page.locator(selector).inner_text()
    assert "Traceback" not in page.content()
    return content


def _median(info: str) -> float:
    return float(re.search(r"median ([0-9.]+) m", info).group(1))


def test_app_in_a_browser(demo, room, tmp_path):
    missing = _missing_for_browser()
    if missing:
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("WORDEPTH_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    deadline = Deadline(TIME_LIMIT)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    log = tmp_path / "app.log"
    scratch = tmp_path / "tmp"  # the server's temporary folder: empty again after SIGTERM
    scratch.mkdir()
    env = {**os.environ, "WORDEPTH_CACHE": str(tmp_path / "cache"), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(scratch)}
    env.pop("GRADIO_TEMP_DIR", None)
    timings, memory = {}, {}
    path, rgb = room
    expected = {c: float(np.median(demo.infer(rgb, c))) for c in (DOLLHOUSE, HALL)}
    bomb = png_bomb(tmp_path / "bomb.png", 12000, 12000)
    oversized = tmp_path / "big.png"
    oversized.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(26 * 2**20))
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("a shopping list, not a picture")
    clip = tmp_path / "rooms.mp4"  # MPEG-4 part 2 (mp4v), as older wordepth-predict --video wrote: no browser plays it
    frame = rgb[:, :, ::-1]
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 5, (frame.shape[1], frame.shape[0]))
    for i in range(5):
        writer.write(np.ascontiguousarray(np.roll(frame, 6 * i, axis=1)))
    writer.release()
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "wordepth.cli.app", "--demo", "--host", "127.0.0.1",
                                   "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        timings["start"] = _wait_until_served(url, server, log, deadline)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                outside = []  # the app must work offline: nothing but the server is asked for anything
                page.on("request", lambda r: outside.append(r.url)
                        if not r.url.startswith((url, "data:", "blob:")) else None)
                page.goto(url, wait_until="domcontentloaded", timeout=deadline.ms())
                page.locator("#run_depth").wait_for(timeout=deadline.ms())
                assert "toy model" in page.locator("#about").inner_text()  # said plainly
                assert not page.locator("#auto_caption").is_visible()  # cannot work with the toy model
                page.wait_for_function("() => !document.querySelector('#model_status')?.innerText.includes('Loading')",
                                       timeout=deadline.ms())
                timings["model ready"] = time.monotonic() - (deadline.end - TIME_LIMIT)

                # Depth: upload a photo (checked at once), type a caption, press the button
                page.locator("#photo input[type=file]").set_input_files(str(path))
                _status(page, "#depth_status", "Photo 288×192 px ready", deadline)
                page.locator("#caption textarea").fill(DOLLHOUSE)
                timings["depth"] = _run_and_wait(page, "#run_depth", "#depth_image", "#depth_info", deadline)
                sig = _signature(page, "#depth_image img")
                assert sig["width"] / sig["height"] == pytest.approx(rgb.shape[1] / rgb.shape[0], rel=0.01)
                assert np.std(sig["pixels"]) > 10  # a map, not a blank picture
                info = page.locator("#depth_info").inner_text()
                assert DOLLHOUSE in info and _median(info) == pytest.approx(expected[DOLLHOUSE], abs=0.011)
                assert page.locator("#depth_slider img").count() == 2  # the photo/depth slider
                assert "0 to 10 m" in page.locator("#depth_colorbar").inner_text()  # the scale is said
                assert page.locator("button[aria-label*='hare' i]").count() == 0  # no Share buttons

                # two quick clicks with different captions: two results, each under its own caption
                page.locator("#depth_info").evaluate("""e => { window.infos = [];
                    new MutationObserver(() => window.infos.push(e.innerText)).observe(e, {subtree: true,
                    childList: true, characterData: true}); }""")
                page.locator("#caption textarea").fill(HALL)
                page.locator("#run_depth").click(timeout=deadline.ms())
                page.locator("#caption textarea").fill(DOLLHOUSE)
                page.locator("#run_depth").click(timeout=deadline.ms())
                page.locator("#caption textarea").fill(HALL)
                page.locator("#caption textarea").press("Enter")  # Enter runs it too
                while True:  # (caption, median) of each result shown, in order (progress text aside)
                    results = []
                    for t in page.evaluate("window.infos"):
                        m = re.search(r"“(.+?)”: depth .*? median ([0-9.]+) m", t)
                        if m and (not results or results[-1] != (m.group(1), float(m.group(2)))):
                            results.append((m.group(1), float(m.group(2))))
                    if results and results[0][0] == DOLLHOUSE:
                        results = results[1:]  # the first click's result, shown while the next one runs
                    if len(results) >= 3:
                        break
                    deadline.ms()
                    page.wait_for_timeout(250)
                assert [c for c, _ in results] == [HALL, DOLLHOUSE, HALL], results
                for c, median in results:
                    assert median == pytest.approx(expected[c], abs=0.011)
                page.screenshot(path=str(shots / "app_depth.png"), full_page=True)

                # mistakes: said next to the button until the next action; the inputs stay as they were
                page.locator("#caption textarea").fill("")
                page.locator("#run_depth").click(timeout=deadline.ms())
                _status(page, "#depth_status", webapp.NO_CAPTION, deadline)
                page.wait_for_timeout(11_000)  # longer than a pop-up message lasts
                assert webapp.NO_CAPTION in page.locator("#depth_status").inner_text()
                assert page.locator("#photo img").first.is_visible()  # the photo is still there
                assert page.locator("#caption textarea").is_visible()
                page.locator("#photo input[type=file]").set_input_files(str(not_an_image))
                _status(page, "#depth_status", webapp.NOT_AN_IMAGE, deadline)  # on upload, before any click
                page.locator("#caption textarea").fill(DOLLHOUSE)
                page.locator("#run_depth").click(timeout=deadline.ms())
                _status(page, "#depth_status", webapp.NOT_AN_IMAGE, deadline)
                assert page.locator("#caption textarea").input_value() == DOLLHOUSE

                # a decompression bomb and an oversized file: a message; the server lives, its memory bounded
                before = _vm_hwm(server.pid)
                page.locator("#photo input[type=file]").set_input_files(str(bomb))
                _status(page, "#depth_status", "megapixels", deadline)
                page.locator("#run_depth").click(timeout=deadline.ms())
                page.locator("#photo input[type=file]").set_input_files(str(oversized))
                page.get_by_text(re.compile("exceed|too large|maximum", re.I)).first.wait_for(timeout=deadline.ms())
                page.wait_for_timeout(1000)
                assert server.poll() is None
                memory["bomb_and_oversized_growth"] = _vm_hwm(server.pid) - before
                assert memory["bomb_and_oversized_growth"] < 100 * 2**20
                uploads = [p for p in scratch.rglob("big.png")]
                assert uploads == []  # the oversized file was not stored

                # Compare: two captions, one photo (carried over from the Depth tab)
                page.locator("#photo input[type=file]").set_input_files(str(path))
                _status(page, "#depth_status", "ready", deadline)
                page.get_by_role("tab", name="Compare").click(timeout=deadline.ms())
                page.locator("#photo_compare img").first.wait_for(timeout=deadline.ms())  # carried over
                page.locator("#caption_a textarea").fill(DOLLHOUSE)
                page.locator("#caption_b textarea").fill(HALL)
                timings["compare"] = _run_and_wait(page, "#run_compare", "#ratio", "#compare_info", deadline)
                a, b = _signature(page, "#depth_a img"), _signature(page, "#depth_b img")
                assert a["width"] / a["height"] == pytest.approx(rgb.shape[1] / rgb.shape[0], rel=0.01)
                assert np.abs(np.subtract(a["pixels"], b["pixels"])).mean() > 20
                ratio = float(re.search(r"B / A = ([0-9.]+)", page.locator("#compare_info").inner_text()).group(1))
                assert 2.5 < ratio < 6.0  # the hall is about four times as deep as the dollhouse
                assert page.locator("#compare_slider img").count() == 2
                assert page.locator("#ratio").bounding_box()["height"] < 420  # bounded, not the column's width
                page.screenshot(path=str(shots / "app_compare.png"), full_page=True)

                # Text only: K samples; an impossible seed gets its range
                page.get_by_role("tab", name="Text only").click(timeout=deadline.ms())
                page.locator("#caption_prior textarea").fill(HALL)
                timings["prior"] = _run_and_wait(page, "#run_prior", "#prior_grid", "#prior_info", deadline)
                assert "4 samples" in page.locator("#prior_info").inner_text()
                page.screenshot(path=str(shots / "app_prior.png"), full_page=True)
                page.locator("#prior_seed input").fill("99999999999999999999")
                page.locator("#run_prior").click(timeout=deadline.ms())
                _status(page, "#prior_status", "seed must be a whole number from 0 to", deadline)

                # Video: a clip in, the depth video out, playable in the page
                page.get_by_role("tab", name="Video").click(timeout=deadline.ms())
                page.locator("#video_in input[type=file]").set_input_files(str(clip))
                # the upload's preview plays (the app swaps in a WebM copy of the mp4v file)
                page.wait_for_function("() => { const v = document.querySelector('#video_in video'); "
                                       "return v && v.readyState >= 1 && v.videoWidth > 0; }", timeout=deadline.ms())
                page.locator("#caption_video textarea").fill(HALL)
                t0 = time.monotonic()
                page.locator("#run_video").click(timeout=deadline.ms())
                page.wait_for_function("() => { const v = document.querySelector('#video_out video'); "
                                       "return v && v.readyState >= 1 && v.videoWidth > 0; }", timeout=deadline.ms())
                timings["video"] = time.monotonic() - t0
                assert "5 frames" in page.locator("#video_info").inner_text()

                # a phone: every tab label visible
                phone = browser.new_page(viewport={"width": 390, "height": 844})
                phone.goto(url, wait_until="domcontentloaded", timeout=deadline.ms())
                for name in ("Depth", "Compare", "Text only", "Video"):
                    phone.get_by_role("tab", name=name).wait_for(state="visible", timeout=deadline.ms())
                assert outside == []
            finally:
                browser.close()
        memory["server_peak"] = _vm_hwm(server.pid)
        assert server.poll() is None
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=20)
    left = [p for p in scratch.rglob("*")]
    assert left == [], f"left after SIGTERM: {left[:5]}"  # uploads and results removed at exit
    print("app timings (s):", {k: round(v, 2) for k, v in timings.items()},
          "memory (MB):", {k: round(v / 2**20) for k, v in memory.items()}, "screenshots:", shots)
    assert len(list(shots.glob("app_*.png"))) == 3


def test_server_memory_on_a_large_photo(tmp_path):
    """A 6000 x 4000 photo through the HTTP API: the server's peak memory (printed), and a bound on it."""
    missing = _missing_for_browser()
    if missing:
        pytest.skip(missing)
    import uuid

    yy, xx = np.mgrid[0:4000, 0:6000]
    big = np.dstack([(xx * 255 // 6000), (yy * 255 // 4000), np.full_like(xx, 90)]).astype(np.uint8)
    cv2.circle(big, (3000, 2000), 1200, (40, 90, 200), -1)
    photo = tmp_path / "photo_6000x4000.jpg"
    cv2.imwrite(str(photo), big, [cv2.IMWRITE_JPEG_QUALITY, 90])
    del big, xx, yy
    deadline = Deadline(TIME_LIMIT)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "app.log"
    env = {**os.environ, "WORDEPTH_CACHE": str(tmp_path / "cache"), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path)}
    with open(log, "w") as out:
        # --work_mp 2: the photo is shrunk to 2 MP first (the default, 12 MP, keeps a phone photo whole)
        server = subprocess.Popen([sys.executable, "-m", "wordepth.cli.app", "--demo", "--port", str(port),
                                   "--work_mp", "2"], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        _wait_until_served(base + "/", server, log, deadline)
        boundary = uuid.uuid4().hex
        body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{photo.name}"\r\n'
                "Content-Type: image/jpeg\r\n\r\n").encode() + photo.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(base + "/gradio_api/upload", body,
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        uploaded = json.load(urllib.request.urlopen(req, timeout=60))[0]

        def call(name: str, data: list) -> list:
            req = urllib.request.Request(f"{base}/gradio_api/call/{name}", json.dumps({"data": data}).encode(),
                                         {"Content-Type": "application/json"})
            event = json.load(urllib.request.urlopen(req, timeout=60))["event_id"]
            stream = urllib.request.urlopen(f"{base}/gradio_api/call/{name}/{event}", timeout=deadline.ms() / 1000)
            text = stream.read().decode()
            assert "event: complete" in text, text[-500:]
            return json.loads(text.split("event: complete")[1].split("data:", 1)[1].strip())

        file = {"path": uploaded, "meta": {"_type": "gradio.FileData"}}
        assert "6000×4000 photo was shrunk" in json.dumps(call("check_photo", [file]), ensure_ascii=False)
        call("prior_from_caption", [HALL, 1, 0, None, "auto", 0, 10, "turbo"])  # the model is loaded now
        before = _vm_hwm(server.pid)
        t0 = time.monotonic()
        out = call("estimate_depth", [file, DOLLHOUSE, "fixed", 0, 10, "turbo", False])
        seconds = time.monotonic() - t0
        peak = _vm_hwm(server.pid)
        assert "shrunk to 1732×1154 px" in out[-1] and DOLLHOUSE in out[5], out
        print(f"6000x4000 photo: {seconds:.1f} s; server peak memory {before / 2**20:.0f} MB before, "
              f"{peak / 2**20:.0f} MB after (+{(peak - before) / 2**20:.0f} MB)")
        assert peak - before < 400 * 2**20
        assert server.poll() is None
    finally:
        server.terminate()
        server.wait(timeout=30)

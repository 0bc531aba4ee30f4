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

from wordepth import app as webapp
from wordepth import toy
from wordepth.cli import app as cli_app

ROOT = Path(__file__).resolve().parents[1]
TIME_LIMIT = 180.0  # seconds for the whole browser test, server start included
CHROMIUM = os.environ.get("WORDEPTH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DOLLHOUSE, HALL = toy.DEMO_CAPTIONS[0], toy.DEMO_CAPTIONS[-1]


@pytest.fixture(scope="module")
def demo() -> toy.DemoPredictor:
    return toy.DemoPredictor.load(device="cpu", progress=False)


@pytest.fixture(scope="module")
def room(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A held-out room with the demo's objects, 192 x 288, as a file and as an RGB array."""
    path, objects = toy.example_images(tmp_path_factory.mktemp("rooms"), n=1)[0]
    assert set(objects) == set(toy.DEMO_OBJECTS)
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
    assert toy.is_demo_model(toy.DEMO_MODEL_FILE) and isinstance(toy.load_predictor("demo"), toy.DemoPredictor)


def test_demo_training_is_deterministic(tmp_path):
    a = toy.train_demo_model(tmp_path / "a.safetensors", toy.QUICK, progress=False)
    b = toy.train_demo_model(tmp_path / "b.safetensors", toy.QUICK, progress=False)
    from safetensors.torch import load_file

    sa, sb = load_file(str(a)), load_file(str(b))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(v.dtype == torch.float16 for v in sa.values() if v.is_floating_point())
    assert toy.is_demo_model(a) and not toy.is_demo_model(tmp_path / "missing.safetensors")


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
    _, rgb = room
    r = webapp.DepthApp(demo, out_dir=tmp_path).depth(rgb, DOLLHOUSE)
    assert r["color"].shape == rgb.shape and r["color"].dtype == np.uint8
    png16, color, ply = r["files"]
    raw = cv2.imread(str(png16), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == rgb.shape[:2]
    assert np.abs(raw - r["depth"].astype(np.float64) * 1000).max() <= 0.5 + 1e-3  # millimetres
    assert cv2.imread(str(color)).shape[1] > rgb.shape[1]  # the colour map with its bar in metres
    assert f"element vertex {rgb.shape[0] * rgb.shape[1]}".encode() in ply.read_bytes()[:300]
    glb = r["glb"].read_bytes()
    assert glb[:4] == b"glTF" and int.from_bytes(glb[8:12], "little") == len(glb)
    assert "inference" in r["info"] and "focal length 172.8 px" in r["info"]  # the rooms' camera: 0.6 x 288
    assert "metres" in r["colorbar"] and "linear-gradient" in r["colorbar"]


def test_compare_and_prior_views(demo, room, tmp_path):
    _, rgb = room
    app = webapp.DepthApp(demo, out_dir=tmp_path)
    c = app.compare(rgb, DOLLHOUSE, HALL)
    assert c["a"].shape == c["b"].shape == c["ratio"].shape == rgb.shape
    ratio = float(np.median(c["depth_b"] / c["depth_a"]))
    assert 2.5 < ratio < 6.0 and f"B / A = **{ratio:.2f}**" in c["info"]
    assert np.abs(c["a"].astype(int) - c["b"]).mean() > 20  # one colour scale: the maps look different
    p = app.prior(HALL, k=3, seed=1)
    assert p["samples"].shape == (3, 64, 96) and p["grid"].ndim == 3
    assert np.array_equal(app.prior(HALL, k=3, seed=1)["samples"], p["samples"])
    assert np.median(p["samples"]) > np.median(app.prior(DOLLHOUSE, k=3, seed=1)["samples"])


@pytest.mark.parametrize("call, message", [
    (lambda a, rgb: a.depth(None, DOLLHOUSE), "Upload a photo"),
    (lambda a, rgb: a.depth(rgb, "   "), "Type a caption"),
    (lambda a, rgb: a.compare(rgb, DOLLHOUSE, ""), "Type a caption"),
    (lambda a, rgb: a.depth(np.zeros(5), DOLLHOUSE), "not an image"),
    (lambda a, rgb: a.depth(__file__, DOLLHOUSE), "not an image"),  # an upload that is no picture
    (lambda a, rgb: a.caption(rgb), "no captioner"),
])
def test_views_answer_mistakes_with_a_message(demo, room, tmp_path, call, message):
    with pytest.raises(webapp.AppError, match=message):
        call(webapp.DepthApp(demo, out_dir=tmp_path), room[1])


def test_command_messages(tmp_path, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        cli_app.main(["--checkpoint", str(tmp_path / "missing.pth")])
    assert str(exc.value.code).startswith("error: checkpoint not found") and "--demo" in str(exc.value.code)
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the extra were not installed
    with pytest.raises(SystemExit) as exc:
        cli_app.main(["--demo"])
    assert str(exc.value.code) == f"error: {webapp.INSTALL_HINT}"


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


def _run_and_wait(page, button: str, image: str, info: str, deadline: Deadline) -> float:
    """Press ``button``; wait for the new image in ``image`` and the timing line in ``info``."""
    page.locator(info).evaluate("e => e.setAttribute('data-before', e.innerText)")
    t0 = time.monotonic()
    page.locator(button).click(timeout=deadline.ms())
    page.wait_for_function("s => { const e = document.querySelector(s); return e && e.innerText.includes(' s (') "
                           "&& e.innerText !== e.getAttribute('data-before'); }", arg=info, timeout=deadline.ms())
    page.locator(f"{image} img").first.wait_for(state="visible", timeout=deadline.ms())
    page.wait_for_function("s => { const i = document.querySelector(s + ' img'); return i && i.complete "
                           "&& i.naturalWidth > 0; }", arg=image, timeout=deadline.ms())
    return time.monotonic() - t0


def _expect_message(page, text: str, deadline: Deadline) -> None:
    page.get_by_text(text).first.wait_for(state="visible", timeout=deadline.ms())
    assert "Traceback" not in page.content()
    page.keyboard.press("Escape")
    for close in page.locator(".toast-close").all():
        close.click()


def test_app_in_a_browser(room, tmp_path):
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
    env = {**os.environ, "WORDEPTH_CACHE": str(tmp_path / "cache"), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    timings = {}
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "wordepth.cli.app", "--demo", "--host", "127.0.0.1",
                                   "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        timings["start"] = _wait_until_served(url, server, log, deadline)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                outside = []  # the app must work offline: nothing but the server is asked for anything
                page.on("request", lambda r: outside.append(r.url)
                        if not r.url.startswith((url, "data:", "blob:")) else None)
                page.goto(url, wait_until="domcontentloaded", timeout=deadline.ms())
                page.locator("#run_depth").wait_for(timeout=deadline.ms())
                assert "toy model" in page.locator("#about").inner_text()  # said plainly

                # Depth: upload a photo, type a caption, press the button, wait for the depth map
                path, rgb = room
                page.locator("#photo input[type=file]").set_input_files(str(path))
                page.locator("#caption textarea").fill(DOLLHOUSE)
                timings["depth"] = _run_and_wait(page, "#run_depth", "#depth_image", "#depth_info", deadline)
                sig = _signature(page, "#depth_image img")
                assert sig["width"] / sig["height"] == pytest.approx(rgb.shape[1] / rgb.shape[0], rel=0.01)
                assert np.std(sig["pixels"]) > 10  # a map, not a blank picture
                assert "inference" in page.locator("#depth_info").inner_text()
                page.locator("#point_cloud canvas").first.wait_for(timeout=deadline.ms())
                page.wait_for_timeout(1500)  # let the 3D view draw
                page.screenshot(path=str(shots / "app_depth.png"), full_page=True)

                # Compare two captions: "a dollhouse ..." and "a large hall ..." give different maps
                page.get_by_role("tab", name="Compare two captions").click(timeout=deadline.ms())
                page.locator("#photo_compare input[type=file]").set_input_files(str(path))
                page.locator("#caption_a textarea").fill(DOLLHOUSE)
                page.locator("#caption_b textarea").fill(HALL)
                timings["compare"] = _run_and_wait(page, "#run_compare", "#ratio", "#compare_info", deadline)
                a, b = _signature(page, "#depth_a img"), _signature(page, "#depth_b img")
                assert a["width"] / a["height"] == pytest.approx(rgb.shape[1] / rgb.shape[0], rel=0.01)
                assert np.abs(np.subtract(a["pixels"], b["pixels"])).mean() > 20
                ratio = float(re.search(r"B / A = ([0-9.]+)", page.locator("#compare_info").inner_text()).group(1))
                assert 2.5 < ratio < 6.0  # the hall is about four times as deep as the dollhouse
                page.screenshot(path=str(shots / "app_compare.png"), full_page=True)

                # Depth from the caption alone: K samples
                page.get_by_role("tab", name="Depth from the caption alone").click(timeout=deadline.ms())
                page.locator("#caption_prior textarea").fill(HALL)
                timings["prior"] = _run_and_wait(page, "#run_prior", "#prior_grid", "#prior_info", deadline)
                assert "4 samples" in page.locator("#prior_info").inner_text()
                page.screenshot(path=str(shots / "app_prior.png"), full_page=True)

                # mistakes get a message, not a traceback
                page.get_by_role("tab", name="Depth", exact=True).click(timeout=deadline.ms())
                page.locator("#caption textarea").fill("")
                page.locator("#run_depth").click(timeout=deadline.ms())
                _expect_message(page, webapp.NO_CAPTION, deadline)
                not_an_image = tmp_path / "notes.png"
                not_an_image.write_text("a shopping list, not a picture")
                page.locator("#photo input[type=file]").set_input_files(str(not_an_image))
                page.locator("#caption textarea").fill(DOLLHOUSE)
                page.locator("#run_depth").click(timeout=deadline.ms())
                _expect_message(page, webapp.NOT_AN_IMAGE, deadline)
                assert outside == []
            finally:
                browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=20)
    print("app timings (s):", {k: round(v, 2) for k, v in timings.items()}, "screenshots:", shots)
    assert len(list(shots.glob("app_*.png"))) == 3

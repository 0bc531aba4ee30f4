"""docs/demo.md's processing-resolution table: ``python -m benchmarks.processing_resolution`` (issue 32).

On the demo's quick settings (a demo folder made in seconds): one row per pixel budget, each through
``Predictor`` with that ``max_pixels``; a smaller budget runs the network on fewer pixels, every row's
depth has the photo's size and is scored at that size, and the default row on the demo's own photos
is the demo's evaluation (``wordepth-eval``'s ``metrics.json``), number for number.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from benchmarks import processing_resolution as pr
from wordepth.data.generated.synthetic import synthetic_paths


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo folder as `sh run_demo.sh` writes it, at the demo's quick settings (48 x 64 rooms, 2 held out)."""
    from wordepth.cli import demo as demo_cli

    out = tmp_path_factory.mktemp("resolution") / "demo_output"
    demo_cli.main(["--out", str(out), *pr.QUICK_DEMO])
    return out


def test_settings_are_fractions_of_the_training_area_then_the_full_size():
    rows = pr.settings(area=12288, photo_pixels=4 * 12288)
    assert [r.label for r in rows] == ["0.25x", "0.5x", "1x (default)", "2x", "full size"]
    assert [r.max_pixels for r in rows] == [3072, 6144, 12288, 24576, None]
    # photos of the training area: 2x would repeat the full size (the predictor never enlarges), and the
    # default row is the full size
    rows = pr.settings(area=12288, photo_pixels=12288)
    assert [(r.label, r.max_pixels) for r in rows] == [("0.25x", 3072), ("0.5x", 6144),
                                                       ("1x (default) = full size", 12288)]


def test_one_row_per_setting_fewer_pixels_for_a_smaller_budget_and_depth_at_the_photos_size(demo):
    result = pr.run(demo, zoom=2, runs=1)
    h, w = result["photo_hw"]
    assert (h, w) == (96, 128)  # the demo's 48 x 64 rooms, twice as large
    area = result["training_area"]
    assert area == 48 * 64  # the quick demo's training size
    expected = pr.settings(area, h * w)
    assert [r["setting"] for r in result["rows"]] == [s.label for s in expected]
    assert [r["max_pixels"] for r in result["rows"]] == [s.max_pixels for s in expected]
    pixels = []
    for row in result["rows"]:
        assert row["output_hw"] == [(h, w)], row  # resized back to the photo's size
        assert len(row["network_hw"]) == 1, row  # every photo has one size, so one network input
        nh, nw = row["network_hw"][0]
        assert nh * nw <= (row["max_pixels"] or h * w)
        assert abs(nw / nh - w / h) < 0.1  # the aspect is kept
        pixels.append(nh * nw)
        assert row["count"] == 2 and row["seconds_per_image"] > 0
    assert pixels == sorted(pixels) and len(set(pixels)) == len(pixels)  # each budget a different input
    assert result["rows"][-1]["network_hw"] == [(h, w)]  # full size: the photo itself
    assert len({round(r["abs_rel"], 12) for r in result["rows"]}) == len(result["rows"])  # the depth changes
    table = pr.markdown(result["rows"]).splitlines()
    assert len(table) == 2 + len(result["rows"]) and table[3].startswith("| 0.5x | 1536 | ")


def test_the_default_row_on_the_demos_own_photos_is_the_demos_evaluation(demo):
    """Predictor at the default budget = eval.py's loop on the same files: the table's numbers are the
    demo's protocol, and the zoom-1 photos are the demo's own."""
    result = pr.run(demo, zoom=1, runs=1)
    default = result["rows"][-1]
    assert default["setting"] == "1x (default) = full size" and default["max_pixels"] == 48 * 64
    evaluated = json.loads((demo / "metrics.json").read_text())
    for metric in ("silog", "abs_rel", "log10", "rms", "sq_rel", "log_rms", "d1", "d2", "d3"):
        assert default[metric] == pytest.approx(evaluated[metric], rel=1e-6, abs=1e-9), metric
    assert result["rows"][0]["abs_rel"] != default["abs_rel"]


def test_the_larger_photos_are_the_demos_held_out_rooms(demo, tmp_path):
    """Rendered at twice the size, the rooms keep their geometry: their depth, shrunk, is the demo's."""
    large = pr.demo_photos(demo, 2, tmp_path)
    own = pr.read_held_out(synthetic_paths(demo / "data", "nyu"))
    assert large.hw == (2 * own.hw[0], 2 * own.hw[1]) and len(large.images) == len(own.images)
    for big, small, fb, fs in zip(large.depths, own.depths, large.features, own.features):
        shrunk = cv2.resize(big[0, 0].numpy(), own.hw[::-1], interpolation=cv2.INTER_AREA)
        rel = np.abs(shrunk - small[0, 0].numpy()) / small[0, 0].numpy()
        assert np.median(rel) < 0.01 and rel.mean() < 0.05
        assert np.array_equal(fb.numpy(), fs.numpy())  # the same caption features
    assert not any(p.parent.is_relative_to(demo) for p in large.images)  # nothing written into the demo folder


def test_the_command_prints_the_table_and_writes_its_json(demo, tmp_path, capsys):
    out = tmp_path / "table.json"
    assert pr.main(["--demo", str(demo), "--quick", "--scales", "0.5,1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    saved = json.loads(out.read_text())
    assert [r["setting"] for r in saved["rows"]] == ["0.5x", "1x (default)", "full size"] and saved["runs"] == 1
    assert printed[1:] == pr.markdown(saved["rows"]).splitlines()
    assert "2 held-out rooms of 96x128" in printed[0]


def test_the_docs_table_is_what_the_command_prints():
    """docs/demo.md's table is the command's output, pasted: its header, its rows (the default settings for
    photos of 4 training areas) and its digits, rebuilt by the command's own writer from the table's numbers."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "demo.md").read_text(encoding="utf-8")
    header = pr.markdown([]).splitlines()
    lines = text.splitlines()
    at = lines.index(header[0])
    table = lines[at:at + 2 + 5]
    rows = []
    for line in table[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append({"setting": cells[0], "max_pixels": None if cells[1] == "0 (none)" else int(cells[1]),
                     "network_hw": [tuple(int(v) for v in cells[2].split("×"))],
                     "seconds_per_image": float(cells[3]), **dict(zip(pr.METRICS, map(float, cells[4:])))})
    assert "\n".join(table) + "\n" == pr.markdown(rows)
    assert [(r["setting"], r["max_pixels"]) for r in rows] == [(s.label, s.max_pixels)
                                                              for s in pr.settings(96 * 128, 192 * 256)]
    assert "python -m benchmarks.processing_resolution --demo demo_output" in text

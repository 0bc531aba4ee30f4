"""The scale-ambiguity experiment: the data is truly ambiguous, and the pipeline reports every variant."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from experiments.scale_ambiguity import run
from wordepth.data.generated import scale_rooms as data


@pytest.fixture(scope="module")
def split():
    return data.make_split(4, seed=0, height=32, width=48)


def test_same_image_at_every_scale_depth_scaled_exactly(split):
    assert len(split) == 4 * len(data.SCALES)
    for layout in range(4):
        idx = np.flatnonzero(split.layout == layout)
        assert sorted(split.scale[idx].tolist()) == sorted(data.SCALES)
        ref = idx[split.scale[idx] == 1.0][0]
        for i in idx:
            assert np.array_equal(split.images[i], split.images[ref])  # the image cannot tell the scale
            # scales are powers of two, so the ratio is exact in floating point
            assert np.array_equal(split.depth[i], split.depth[ref] * split.scale[i])
            assert np.array_equal(split.depth[i] / split.depth[ref], np.full_like(split.depth[i], split.scale[i]))
    # and the scene itself is not trivial: depth varies within an image, images differ between layouts
    assert (split.depth[0].max() / split.depth[0].min()) > 1.5
    assert not np.array_equal(split.images[0], split.images[len(data.SCALES)])


def test_captions_name_the_scale_and_only_the_scale_differs(split):
    for layout in range(4):
        idx = np.flatnonzero(split.layout == layout)
        caps = {float(split.scale[i]): split.captions[i] for i in idx}
        rests = {caps[s][len(data.SCALES[s]):] for s in data.SCALES}
        assert all(caps[s].startswith(data.SCALES[s]) for s in data.SCALES)
        assert len(rests) == 1 and rests.pop().startswith(" with a ")  # same objects at every scale
    assert data.caption_for(0.5, ("bed", "table")) == "a dollhouse with a bed and a table"


def test_held_out_layouts_differ_and_the_split_is_seeded(split):
    other = data.make_split(4, seed=1, height=32, width=48)
    n = len(data.SCALES)
    for i in range(0, len(other), n):
        assert not any(np.array_equal(other.images[i], split.images[j]) for j in range(0, len(split), n))
    again = data.make_split(4, seed=0, height=32, width=48)
    assert np.array_equal(again.images, split.images) and again.captions == split.captions  # seeded


def test_quick_run_writes_table_json_and_picture(tmp_path, capsys):
    results = run.main(["--out", str(tmp_path), "--quick", "--seed", "3"])
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "results.json").read_text())
    names = [v.name for v in run.VARIANTS]
    assert set(names) == {"image_only", "wordepth", "wordepth_legacy", "legacy_p0", "legacy_p0.5", "legacy_p1"}
    assert list(saved["variants"]) == names and saved["settings"]["seed"] == 3
    for name, v in zip(names, run.VARIANTS):
        entry = saved["variants"][name]
        assert entry["alter_prob"] == v.alter_prob and entry["legacy"] == v.legacy
        m = entry["image_branch"]
        for key in ("abs_rel", "log10", "rms", "d1", "d2", "d3", "abs_rel_median_aligned"):
            assert np.isfinite(m[key])
        assert set(m["abs_rel_by_scale"]) == set(data.SCALES.values())
        assert v.label in printed and v.label in saved["table"]
        assert ("text_branch" in entry) == (v.text == "caption")
    assert saved["variants"]["image_only"]["text_branch_steps"] == 0
    assert saved["variants"]["legacy_p1"]["text_branch_steps"] == saved["settings"]["steps"]
    assert saved["abs_rel_vs_image_only"]["image_only"] == pytest.approx(1.0)
    assert saved["table"] in printed and "| Abs Rel ↓ |" in saved["table"]
    picture = cv2.imread(str(tmp_path / "scale_ambiguity.png"))
    assert picture is not None and picture.shape[0] > 3 * 32 and picture.shape[1] > 7 * 32
    assert results["table"] == saved["table"]

"""Text feature files (original layout, CUDA-tagged), the packed store and its script."""
from __future__ import annotations

import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
import torch.serialization

from wordepth.cli import pack_text
from wordepth.data.text_features import (
    FeatureWidthError,
    TextFeatureStore,
    feature_path,
    load_feature_file,
    make_cuda_tagged_file,
    normalize_key,
    pack_features,
    packed_paths,
    save_feature_file,
)

KEYS = [
    "/kitchen_0028b/rgb_00045.jpg",
    "/kitchen_0028b/rgb_00046.jpg",
    "/bedroom_0001/rgb_00003.jpg",
    "/living_room_0010/rgb_00100.jpg",
    "/office_0002/rgb_00007.jpg",
]


def unit(seed, dim=1024):
    v = torch.randn(1, dim, generator=torch.Generator().manual_seed(seed))
    return (v / v.norm()).half()


@pytest.fixture()
def feat_root(tmp_path):
    root = tmp_path / "text_feat"
    for i, key in enumerate(KEYS):
        make_cuda_tagged_file(feature_path(root, "nyu", "train", key), unit(i))
    return root


def test_feature_path_layout(tmp_path):
    assert normalize_key("/kitchen_0028b/rgb_00045.jpg") == "kitchen_0028b/rgb_00045"
    assert normalize_key("2011_09_26/d/image_02/data/0000000069.png") == "2011_09_26/d/image_02/data/0000000069"
    assert feature_path(tmp_path, "nyu", "train", "/kitchen/rgb_1.jpg") == tmp_path / "nyu/train/kitchen/rgb_1.pt"
    assert feature_path(tmp_path, "kitti", "test", "a/b.png") == tmp_path / "kitti/test/a/b.pt"


def test_cuda_tagged_file_loads_on_cpu(tmp_path):
    before = list(torch.serialization._package_registry)
    t = unit(3)
    path = tmp_path / "f.pt"
    make_cuda_tagged_file(path, t)
    assert torch.serialization._package_registry == before  # tagger removed again
    with zipfile.ZipFile(path) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"cuda:0" in pkl and b"cpu" not in pkl
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    loaded = load_feature_file(path, expected_dim=1024)
    assert loaded.shape == (1024,) and loaded.dtype == torch.float32
    assert torch.equal(loaded, t.float()[0])
    # an ordinary save afterwards is tagged cpu again
    torch.save(t, tmp_path / "g.pt")
    with zipfile.ZipFile(tmp_path / "g.pt") as z:
        assert b"cuda" not in z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))


def test_missing_file_error_names_file_and_command(tmp_path):
    path = tmp_path / "nyu" / "train" / "nope" / "rgb_1.pt"
    with pytest.raises(FileNotFoundError) as info:
        load_feature_file(path)
    msg = str(info.value)
    assert str(path) in msg and "wordepth-text extract" in msg and "wordepth-download" in msg


@pytest.mark.parametrize(
    "obj, expect",
    [
        (torch.zeros(2, 1024, dtype=torch.float16), r"\(2, 1024\), expected \(1, 1024\)"),
        (torch.zeros(1, 512, dtype=torch.float16), r"holds 512-d text features, but the model takes 1024-d ones"),
        (torch.zeros(1024, dtype=torch.float16), r"\(1024,\), expected \(1, 1024\)"),
        ({"feat": torch.zeros(1, 1024)}, r"holds a dict, expected a tensor of shape \(1, 1024\)"),
    ],
)
def test_malformed_file_raises_value_error(tmp_path, obj, expect):
    path = tmp_path / "bad.pt"
    torch.save(obj, path)
    with pytest.raises(ValueError, match=expect) as info:
        load_feature_file(path, expected_dim=1024)
    assert str(path) in str(info.value)


def test_corrupt_file_raises_value_error(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_feature_file(path)


def test_save_feature_file_matches_original_format(tmp_path):
    path = tmp_path / "deep" / "x.pt"
    save_feature_file(path, torch.rand(1024))
    t = torch.load(path, map_location="cpu", weights_only=True)
    assert t.shape == (1, 1024) and t.dtype == torch.float16


def test_packed_store_equals_per_file_for_every_key(feat_root):
    per_file = TextFeatureStore(feat_root, "nyu", "train", expected_dim=1024)
    assert not per_file.packed and per_file.dim == 1024
    assert TextFeatureStore(feat_root, "nyu", "train").dim is None  # no width asked for: any
    expected = {k: per_file.get(k) for k in KEYS}

    npy = pack_features(feat_root, "nyu", "train")
    npy_path, json_path = packed_paths(feat_root, "nyu", "train")
    assert npy == npy_path and npy.name == "train.packed.npy" and json_path.is_file()
    meta = json.loads(json_path.read_text())
    assert meta["dim"] == 1024 and sorted(meta["keys"]) == sorted(normalize_key(k) for k in KEYS)
    array = np.load(npy_path, mmap_mode="r")
    assert array.dtype == np.float16 and array.shape == (len(KEYS), 1024)

    store = TextFeatureStore(feat_root, "nyu", "train")
    assert store.packed
    for key in KEYS:
        assert torch.equal(store.get(key), expected[key])
        assert torch.equal(store.get(key.lstrip("/")), expected[key])  # test-split style entry
    batch = store.get_many(KEYS[:3])
    assert batch.shape == (3, 1024) and torch.equal(batch[1], expected[KEYS[1]])

    # a key missing from the packed store falls back to its file
    extra = "/new_0001/rgb_00001.jpg"
    make_cuda_tagged_file(feature_path(feat_root, "nyu", "train", extra), unit(99))
    assert torch.equal(store.get(extra), unit(99).float()[0])


def test_pack_selected_entries_in_split_order(feat_root):
    pack_features(feat_root, "nyu", "train", entries=[KEYS[3], KEYS[0], KEYS[3]])
    meta = json.loads(packed_paths(feat_root, "nyu", "train")[1].read_text())
    assert meta["keys"] == [normalize_key(KEYS[3]), normalize_key(KEYS[0])]
    with pytest.raises(FileNotFoundError, match="missing"):
        pack_features(feat_root, "nyu", "train", entries=["/missing/rgb_1.jpg"])


def test_packed_store_rejects_wrong_dim(feat_root):
    pack_features(feat_root, "nyu", "train")
    with pytest.raises(FeatureWidthError, match="holds 1024-d text features, but the model takes 512-d ones"):
        TextFeatureStore(feat_root, "nyu", "train", expected_dim=512).get(KEYS[0])


class _StoreDataset(torch.utils.data.Dataset):
    def __init__(self, store):
        self.store = store

    def __len__(self):
        return len(KEYS)

    def __getitem__(self, i):
        return self.store.get(KEYS[i])


@pytest.mark.parametrize("packed", [False, True])
def test_store_in_dataloader_with_two_workers(feat_root, packed):
    if packed:
        pack_features(feat_root, "nyu", "train")
    store = TextFeatureStore(feat_root, "nyu", "train")
    expected = torch.stack([store.get(k) for k in KEYS])  # opens the memory map in this process
    assert store.packed is packed
    clone = pickle.loads(pickle.dumps(store))
    assert clone._array is None and torch.equal(clone.get(KEYS[2]), expected[2])
    loader = torch.utils.data.DataLoader(_StoreDataset(store), batch_size=2, num_workers=2)
    got = torch.cat(list(loader))
    assert torch.equal(got, expected)


def test_pack_script(feat_root, tmp_path):
    split = tmp_path / "split.txt"
    split.write_text("".join(f"{k} {k.replace('rgb', 'sync_depth')} 518.8579\n" for k in KEYS[:2]))
    args = ["--text_feat_dir", str(feat_root), "--dataset", "nyu", "--split", "train", "--no_progress"]
    assert pack_text.main(args + ["--filenames_file", str(split)]) == 0
    meta = json.loads(packed_paths(feat_root, "nyu", "train")[1].read_text())
    assert meta["keys"] == [normalize_key(k) for k in KEYS[:2]]
    assert pack_text.main(args) == 0
    assert len(json.loads(packed_paths(feat_root, "nyu", "train")[1].read_text())["keys"]) == len(KEYS)
    with pytest.raises(SystemExit, match="error: text feature folder not found"):
        pack_text.main(["--text_feat_dir", str(tmp_path / "none"), "--dataset", "kitti", "--split", "test"])

"""The demo pipeline learns: loss falls and the trained tiny model beats predicting the mean depth."""
import pytest
import torch

from wordepth import load_checkpoint
from wordepth.cli import demo
from wordepth.data import NYUDataset, collate
from wordepth.data.generated.synthetic import synthetic_paths
from wordepth.models.wordepth import WorDepth


@pytest.mark.slow
def test_demo_trains_and_beats_the_mean_depth_baseline(tmp_path):
    out = demo.main(["--out", str(tmp_path), "--steps", "120", "--n_train", "32", "--n_test", "8",
                     "--height", "64", "--width", "96", "--no_tqdm"])
    assert out["metrics"]["abs_rel"] < out["baseline"]["abs_rel"]
    assert out["metrics"]["rms"] < out["baseline"]["rms"]
    for name in ("metrics.json", "baseline_metrics.json", "prior_depth.png", "vis/worst_abs_rel.png"):
        assert (tmp_path / name).is_file(), name

    # the training loss on a fixed training batch is lower than at initialisation (same seed)
    paths = synthetic_paths(tmp_path / "data", "nyu")
    ds = NYUDataset(paths["train_split"], paths["data_path"], paths["gt_path"], paths["text_feat_dir"],
                    mode="eval", text_split="train")
    batch = collate([ds[i] for i in range(8)])
    trained = load_checkpoint(tmp_path / "run" / "last.pth")
    torch.manual_seed(0)
    init = WorDepth(trained.cfg).eval()
    with torch.no_grad():
        after = trained.training_loss(batch["image"], batch["text_feature"], batch["depth"], "image")["silog"]
        before = init.training_loss(batch["image"], batch["text_feature"], batch["depth"], "image")["silog"]
    assert after < 0.7 * before

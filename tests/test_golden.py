"""The network against the original release's outputs (../shared/reference/golden_outputs.pt).

Checkpoints are written by the reference's make_reference_checkpoint.py in the original layout
(DataParallel prefix, numpy entry) and loaded through the public API.
"""
import subprocess
import sys

import pytest
import torch
from timm.models.swin_transformer import SwinTransformerBlock

from wordepth.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow
RTOL = 1e-4


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs() / b.abs().clamp_min(1e-6)).max().item()


@pytest.fixture(scope="module")
def golden(reference):
    return torch.load(reference / "golden_outputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def make_ckpt(reference, tmp_path_factory):
    made = {}

    def make(size: str):
        if size not in made:
            out = tmp_path_factory.mktemp("ckpt") / f"ref_{size}.pth"
            subprocess.run([sys.executable, str(reference / "make_reference_checkpoint.py"), str(out),
                            "--size", size], check=True, capture_output=True)
            made[size] = out
        return made[size]

    return make


@pytest.fixture(scope="module", params=[False, True], ids=["current", "legacy"])
def nyu_model(request, make_ckpt):
    model = load_checkpoint(make_ckpt("480x640"), legacy=request.param)
    model.backbone.set_drop_path(0.0)  # the golden training losses have stochastic depth off
    return model


def test_nyu_eval_and_prior_outputs(nyu_model, golden):
    tag = "legacy" if nyu_model.cfg.legacy else "nolegacy"
    assert not nyu_model.training
    assert nyu_model.backbone.absolute_pos_embed.shape[2:] == (120, 160)  # grid from the checkpoint
    with torch.no_grad():
        depth = nyu_model(golden["nyu_image"], golden["nyu_text"])
        prior = nyu_model.prior_depth(golden["nyu_text"], (192, 256), image=golden["nyu_image"],
                                      eps=golden["nyu_eps"])
    assert depth.shape == (2, 1, 192, 256)
    assert rel_err(depth, golden[f"nyu_{tag}_depth"]) < RTOL
    assert rel_err(prior, golden[f"nyu_{tag}_prior_depth"]) < RTOL


@pytest.mark.parametrize("branch", ["image", "text"])
def test_nyu_training_losses(nyu_model, golden, branch):
    tag = "legacy" if nyu_model.cfg.legacy else "nolegacy"
    nyu_model.train()
    try:
        with torch.no_grad():
            out = nyu_model.training_loss(golden["nyu_image"], golden["nyu_text"], golden["nyu_depth_gt"],
                                          branch, eps=golden["nyu_eps"] if branch == "text" else None)
    finally:
        nyu_model.eval()
    ref = golden[f"nyu_{tag}_train_{branch}_branch_loss"]
    assert rel_err(out["loss"].reshape(1), ref) < RTOL


def test_kitti_eval_output(make_ckpt, golden):
    model = load_checkpoint(make_ckpt("352x1216"), max_depth=80, prior_mean=2.54)
    assert model.backbone.absolute_pos_embed.shape[2:] == (88, 304)
    with torch.no_grad():
        depth = model(golden["kitti_image"], golden["kitti_text"])
    assert rel_err(depth, golden["kitti_nolegacy_depth"]) < RTOL


def test_unmodified_timm_swin_does_not_agree(make_ckpt, golden):
    """timm's own block (cyclic shift before padding) gives different numbers: the override matters."""
    model = load_checkpoint(make_ckpt("480x640"))
    with torch.no_grad():
        ours = model(golden["nyu_image"], golden["nyu_text"])
        for stage in model.backbone.layers:
            for block in stage.blocks:
                block.__class__ = SwinTransformerBlock  # timm's own _attn: roll, then pad
        timm_out = model(golden["nyu_image"], golden["nyu_text"])
    assert rel_err(ours, golden["nyu_nolegacy_depth"]) < RTOL
    assert rel_err(timm_out, golden["nyu_nolegacy_depth"]) > 1e-2

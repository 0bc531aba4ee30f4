"""What you read is what runs: ``predict``, ``forward`` and ``training_loss`` go through the stage
methods of ``WorDepth`` (encode_image, encode_text, sample, decode, to_depth) in every setting, so an
edit of any stage (here: an override in a subclass) changes the default output, with the fast paths
on, exactly as with them off."""
import pytest
import torch

from wordepth.models.wordepth import WorDepth, preset_config

STAGES = ("encode_image", "encode_text", "sample", "decode", "to_depth")


class EditedStage(WorDepth):
    """A researcher's edit of one stage: ``edited`` names it; every stage call is recorded."""

    edited = ""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def encode_image(self, image):
        self.calls.append("encode_image")
        feats = super().encode_image(image)
        if self.edited == "encode_image":
            feats = dict(feats, x=feats["x"] * 1.5 + 0.1, x2=feats["x2"] * 0.5, metric=feats["metric"] + 0.3)
        return feats

    def encode_text(self, text):
        self.calls.append("encode_text")
        mean, std, logvar = super().encode_text(text)
        return (mean + 0.5, std, logvar) if self.edited == "encode_text" else (mean, std, logvar)

    def sample(self, branch, x, mean, std, logvar, eps=None, generator=None):
        self.calls.append("sample")
        z, kl = super().sample(branch, x, mean, std, logvar, eps=eps, generator=generator)
        return (z * 2.0 + 0.5, kl) if self.edited == "sample" else (z, kl)

    def decode(self, z, x, x3, x2):
        self.calls.append("decode")
        latents = super().decode(z, x, x3, x2)
        return [t * 1.1 for t in latents] if self.edited == "decode" else latents

    def to_depth(self, latents, metric, branch):
        self.calls.append("to_depth")
        depth = super().to_depth(latents, metric, branch)
        return depth * 2.0 if self.edited == "to_depth" else depth


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(2, 3, 64, 96, generator=g), torch.randn(2, 1024, generator=g)
    gt = torch.rand(2, 1, 64, 96, generator=g) * 5 + 0.5
    return image, text, gt, torch.randn(2, 32, 4, 6, generator=g)


@pytest.fixture(scope="module", params=[False, True], ids=["current", "legacy"])
def models(request):
    """The unmodified network and a copy with the same weights whose ``edited`` stage a test sets."""
    torch.manual_seed(0)
    cfg = preset_config("tiny", drop_path_rate=0.0, legacy=request.param)
    plain, edited = EditedStage(cfg), EditedStage(cfg)
    edited.load_state_dict(plain.state_dict())
    return request.param, plain, edited


def _outputs(model, inputs, branch):
    image, text, gt, eps = inputs
    eps = eps if branch == "text" else None
    model.eval()
    with torch.no_grad():
        depth = model.predict(image, text, branch, eps=eps)[0]
        evaluated = model(image, text) if branch == "image" else None
    model.train()
    with torch.no_grad():
        loss = model.training_loss(image, text, gt, branch, eps=eps)["loss"]
    return depth, evaluated, loss


@pytest.mark.parametrize("branch", ["image", "text"])
@pytest.mark.parametrize("stage", STAGES)
def test_an_edited_stage_changes_the_default_output(models, inputs, stage, branch):
    legacy, plain, edited = models
    edited.edited = stage
    reference = _outputs(plain, inputs, branch)
    expected_calls = list(STAGES)
    if branch == "text" and not legacy:  # the one stage skipped, in plain sight in predict: its result is unused
        expected_calls.remove("encode_image")
    results = {}
    try:
        for fast in (True, False):
            edited.fast_paths = fast
            edited.calls.clear()
            results[fast] = _outputs(edited, inputs, branch)
            n_runs = 3 if branch == "image" else 2  # predict, forward (image branch only), training_loss
            assert edited.calls == expected_calls * n_runs, (fast, edited.calls)
    finally:
        edited.fast_paths, edited.edited = True, ""
    for a, b in zip(results[True], results[False]):  # the fast paths compute the edited method too
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if stage == "encode_image" and branch == "text" and not legacy:
        return  # not called: nothing of it could change the output
    depth, evaluated, loss = results[True]
    assert not torch.allclose(depth, reference[0], rtol=1e-4), "prediction unchanged by the edit"
    assert not torch.allclose(loss, reference[2], rtol=1e-6, atol=0), "loss unchanged by the edit"
    if evaluated is not None:
        assert not torch.allclose(evaluated, reference[1], rtol=1e-4)

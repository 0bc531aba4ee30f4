"""WorDepth: monocular depth with a variational language prior (Zeng et al., CVPR 2024).

Forward stages, named after the paper:
  encode_image  Swin backbone -> stage maps x2..x5, metric (scale, shift) and the stride-16 feature
  encode_text   text-VAE: CLIP caption feature -> mean, std of the depth latent
  sample        text branch: eps ~ N(0, 1); image branch: eps predicted by the conditional sampler
  decode        z = mean + std * eps, refined by the U-Net decoder into depth
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from wordepth.losses import kl_image, kl_text, silog_loss
from wordepth.models.decoder import OutConv, Refine, Up, depth_feature, metric_head, upsample
from wordepth.models.swin import SwinBackbone, SwinConfig
from wordepth.models.text_vae import ConditionalSampler, TextVAE

BRANCHES = ("text", "image")
INPUT_MULTIPLE = 32  # the network's input sides: images are padded to a multiple of this (the deepest stride)
LATENT_STRIDES = (4, 8, 16)  # strides of the decoded latents z2, z3, z4 (order of the original's sum)


@contextlib.contextmanager
def no_random_init():
    """torch's default layer initialisers as no-ops (the tensors keep whatever memory held): for
    networks whose every weight is loaded next (a strict ``load_state_dict``)."""
    names = ("kaiming_uniform_", "uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "xavier_normal_")
    saved = {name: getattr(nn.init, name) for name in names}
    try:
        for name in names:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


def _round4(x: float) -> int:
    return max(4, int(round(x / 4)) * 4)


@dataclass(frozen=True)
class WorDepthConfig:
    """Everything that defines the network. Defaults: the original (Swin-L, NYU)."""

    backbone: SwinConfig = field(default_factory=SwinConfig)
    text_dim: int = 1024
    latent_dim: int = 128
    max_depth: float = 10.0
    prior_mean: float = 1.54
    legacy: bool = False  # the paper's model: decoder skip connections kept
    alter_prob: float = 0.5  # p: probability of the text branch at a training step
    weight_kld: float = 1e-3
    variance_focus: float = 0.85

    @property
    def decoder_channels(self) -> tuple[int, int, int]:
        """Widths of up_4, up_3, up_2 (512, 256, 64 for Swin-L), derived from the backbone."""
        c4 = self.backbone.channels[-1]
        return _round4(c4 / 3), _round4(c4 / 6), _round4(c4 / 24)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WorDepthConfig":
        d = dict(d)
        bb = dict(d.pop("backbone", {}))
        for k in ("depths", "num_heads", "ape_grid"):
            if k in bb:
                bb[k] = tuple(bb[k])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(backbone=SwinConfig(**bb), **{k: v for k, v in d.items() if k in known})

    def replace(self, **kwargs) -> "WorDepthConfig":
        """A copy with fields changed; backbone fields (e.g. ``drop_path_rate``) are routed to it."""
        backbone_fields = {f.name for f in dataclasses.fields(SwinConfig)}
        bb = {k: kwargs.pop(k) for k in list(kwargs) if k in backbone_fields}
        if bb:
            kwargs["backbone"] = dataclasses.replace(kwargs.get("backbone", self.backbone), **bb)
        return dataclasses.replace(self, **kwargs)


PRESETS = {
    # The original network: Swin-L, window 12, 128-d latent.
    "swin_large": SwinConfig(),
    # A small network with the same structure for CPU tests, the demo and the toy experiments.
    "tiny": SwinConfig(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=8,
                       drop_path_rate=0.1, ape_grid=(24, 32)),
}


def preset_config(name: str, **kwargs) -> WorDepthConfig:
    """A :class:`WorDepthConfig` for a named backbone preset ('swin_large' or 'tiny')."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    backbone = PRESETS[name]
    if "ape_grid" in kwargs:
        backbone = dataclasses.replace(backbone, ape_grid=tuple(kwargs.pop("ape_grid")))
    if "drop_path_rate" in kwargs:
        backbone = dataclasses.replace(backbone, drop_path_rate=kwargs.pop("drop_path_rate"))
    if name == "tiny":
        kwargs.setdefault("latent_dim", 32)
    return WorDepthConfig(backbone=backbone, **kwargs)


class WorDepth(nn.Module):
    """The WorDepth network. ``model(image, text)`` returns metric depth (B, 1, H, W).

    Any input size works: the image is padded (replicate) to a multiple of 32 and the prediction
    cropped back; for multiples of 32 this is exactly the original computation.

    The current model (not ``legacy``) decodes from all-zero maps in place of the image features
    (x, x3, x2). With ``skip_zero_work`` (default) the convolutions drop the weight slices that
    would multiply those zeros and the unused stage-1/2 LayerNorms are not computed: the same
    result up to float rounding, with less work. Set it False to compute everything as the
    original code does (benchmarks, tests).

    ``exact_shortcuts`` (default, both models) removes further work that cannot change the result
    beyond float rounding: the Swin blocks' ``qkv`` / ``proj`` skip the zero-padded tokens
    (:class:`~wordepth.models.swin.OriginalOrderSwinBlock`), the last refinement computes only
    the depth feature (its new image feature is never read), and the output convolution is applied
    before the full-resolution up-sampling (:meth:`~wordepth.models.decoder.OutConv.forward_sum`).
    """

    skip_zero_work: bool = True
    _exact_shortcuts: bool = True

    @property
    def exact_shortcuts(self) -> bool:
        """Whether the exact shortcuts of the class doc are taken (setting it reaches the Swin blocks)."""
        return self._exact_shortcuts

    @exact_shortcuts.setter
    def exact_shortcuts(self, on: bool) -> None:
        self._exact_shortcuts = bool(on)
        for stage in self.backbone.layers:
            for block in stage.blocks:
                block.skip_padded_tokens = bool(on)

    def __init__(self, cfg: WorDepthConfig = WorDepthConfig(), init_weights: bool = True):
        """``init_weights=False`` leaves the weights uninitialised: for weights that are loaded next
        (a checkpoint), it saves the seconds Swin-L's random initialisation takes on a CPU."""
        super().__init__()
        self.cfg = cfg
        c1, c2, c3, c4 = cfg.backbone.channels
        d4, d3, d2 = cfg.decoder_channels
        L = cfg.latent_dim
        with contextlib.nullcontext() if init_weights else no_random_init():
            self.backbone = SwinBackbone(cfg.backbone, init_weights=init_weights)
            self.up_4 = Up(c4 + c3, d4)
            self.up_3 = Up(d4 + c2, d3)
            self.up_2 = Up(d3 + c1, d2)
            self.ref_4 = Refine(d4, L)
            self.ref_3 = Refine(d3, L)
            self.ref_2 = Refine(d2, L)
            self.outc = OutConv(L, cfg.prior_mean)
            self.mlayer = metric_head(c4)
            self.text_encoder = TextVAE(cfg.text_dim, L)
            self.eps_layer = ConditionalSampler(d4, L)

    # ---------------------------------------------------------------- stages
    @staticmethod
    def latent_grid(size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the latent (and of ``eps``) for an input of ``size``: the stride-16 grid of the
        input padded to a multiple of 32."""
        H, W = size
        return 2 * -(-H // INPUT_MULTIPLE), 2 * -(-W // INPUT_MULTIPLE)

    def _skips_zero(self) -> bool:
        """Whether decoding skips the work on the current model's all-zero maps."""
        return self.skip_zero_work and not self.cfg.legacy

    def encode_image(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W), H and W multiples of 32 -> backbone maps, metric (B, 2), feature x (B, d4, H/16, W/16).

        In the current model x2 and x3 are zero maps unless ``skip_zero_work`` is off (see class doc).
        """
        # the current model decodes from zeros in place of x2, x3: their LayerNorms are not computed
        unused = (0, 1) if self._skips_zero() else ()
        x2, x3, x4, x5 = self.backbone(image, unused_stages=unused)  # strides 4, 8, 16, 32
        metric = self.mlayer(x5)  # (B, 2)
        x = self.up_4(x5, x4)  # (B, d4, H/16, W/16)
        return {"x": x, "x2": x2, "x3": x3, "metric": metric}

    def _text_branch_grids(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Zero maps with the shapes of x, x3, x2 for an image padded to x32, no backbone run.

        The current model's text branch decodes from zeros and ignores the metric head, so a
        training step on that branch (half of them at p = 0.5) skips the Swin forward entirely.
        """
        B, _, H, W = image.shape
        c1, c2, _, _ = self.cfg.backbone.channels
        zero = image.new_zeros(())
        return {"x": zero.expand(B, self.cfg.decoder_channels[0], H // 16, W // 16),
                "x3": zero.expand(B, c2, H // 8, W // 8), "x2": zero.expand(B, c1, H // 4, W // 4),
                "metric": None}

    def encode_text(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, text_dim) CLIP feature -> mean, std, logvar (B, latent_dim)."""
        return self.text_encoder(text)

    def sample(self, branch: str, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
               logvar: torch.Tensor, eps: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw the latent z (B, L, h, w) on the stride-16 grid of ``x`` and its KL term.

        Text branch: eps ~ N(0, 1) (or the given ``eps``), the text-VAE is trained through z.
        Image branch: the conditional sampler predicts eps from image features; mean and std are
        detached so the text-VAE gets no gradient from it.
        """
        B, _, h, w = x.shape
        if branch == "text":
            if eps is None:
                eps = torch.randn(B, self.cfg.latent_dim, h, w, device=x.device, dtype=x.dtype,
                                  generator=generator)
            elif eps.shape != (B, self.cfg.latent_dim, h, w):
                raise ValueError(f"eps must have shape {(B, self.cfg.latent_dim, h, w)}, got {tuple(eps.shape)}")
            kl = kl_text(mean, logvar)
        elif branch == "image":
            mean, std = mean.detach(), std.detach()
            eps = self.eps_layer(x, mean, std)
            kl = kl_image(eps)
        else:
            raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
        z = mean[:, :, None, None] + std[:, :, None, None] * eps  # (B, L, h, w)
        return z, kl

    def decode(self, z: torch.Tensor, x: torch.Tensor, x3: torch.Tensor, x2: torch.Tensor) -> list[torch.Tensor]:
        """Refine the latent; returns it at strides 4, 8, 16: [z2, z3, z4], each (B, L, H/s, W/s).

        The paper's depth feature d (B, L, H, W) is the sum of their up-samplings to full
        resolution, ``depth_feature(latents, LATENT_STRIDES)``; :meth:`to_depth` takes the list.
        """
        zero = self._skips_zero()  # x, x3, x2 are read for their shapes only
        if not self.cfg.legacy and not zero:  # the current release drops the decoder's image skip connections
            x, x3, x2 = torch.zeros_like(x), torch.zeros_like(x3), torch.zeros_like(x2)
        x, z4 = self.ref_4.forward_zero_feat(z) if zero else self.ref_4(x, z)
        x = self.up_3.forward_zero_skip(x, x3.shape[2:]) if zero else self.up_3(x, x3)
        x, z3 = self.ref_3(x, upsample(z4, 2))
        x = self.up_2.forward_zero_skip(x, x2.shape[2:]) if zero else self.up_2(x, x2)
        if self.exact_shortcuts:  # the last refinement's new image feature is never read
            z2 = self.ref_2.forward_depth(x, upsample(z3, 2))
        else:
            _, z2 = self.ref_2(x, upsample(z3, 2))
        return [z2, z3, z4]

    def to_depth(self, latents: list[torch.Tensor], metric: torch.Tensor, branch: str) -> torch.Tensor:
        """Output layer on the up-sampled sum of the latents (:meth:`decode`); the image branch rescales
        with the metric head: sigmoid(a) * (depth + exp(b))."""
        if self.exact_shortcuts:
            depth = self.outc.forward_sum(latents, LATENT_STRIDES)
        else:
            depth = self.outc(depth_feature(latents, LATENT_STRIDES))
        if branch == "image":
            scale = torch.sigmoid(metric[:, 0]).view(-1, 1, 1, 1)
            shift = torch.exp(metric[:, 1]).view(-1, 1, 1, 1)
            depth = scale * (depth + shift)
        return depth

    # ---------------------------------------------------------------- entry points
    def predict(self, image: torch.Tensor, text: torch.Tensor, branch: str = "image",
                eps: torch.Tensor | None = None, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Depth (B, 1, H, W) and the branch's KL term for any input size.

        ``eps`` (text branch) has the shape of the stride-16 grid of the image padded to x32.
        """
        H, W = image.shape[-2:]
        pad_h, pad_w = (-H) % INPUT_MULTIPLE, (-W) % INPUT_MULTIPLE
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
        if branch == "text" and self._skips_zero():
            feats = self._text_branch_grids(image)  # the current text branch never reads the image
        else:
            feats = self.encode_image(image)
        mean, std, logvar = self.encode_text(text)
        z, kl = self.sample(branch, feats["x"], mean, std, logvar, eps=eps, generator=generator)
        latents = self.decode(z, feats["x"], feats["x3"], feats["x2"])
        depth = self.to_depth(latents, feats["metric"], branch)
        return depth[..., :H, :W], kl

    def forward(self, image: torch.Tensor, text: torch.Tensor, depth_gt: torch.Tensor | None = None,
                branch: str = "image"):
        """Metric depth (B, 1, H, W) from the image branch, as evaluated.

        With ``depth_gt`` (training, also through DDP): the :meth:`training_loss` dict of ``branch``.
        """
        if depth_gt is not None:
            return self.training_loss(image, text, depth_gt, branch)
        return self.predict(image, text, branch="image")[0]

    def choose_branch(self, generator: torch.Generator | None = None) -> str:
        """The text branch with probability p (``alter_prob``), else the image branch."""
        u = torch.rand((), generator=generator).item()
        return "text" if u < self.cfg.alter_prob else "image"

    def training_loss(self, image: torch.Tensor, text: torch.Tensor, depth_gt: torch.Tensor,
                      branch: str, eps: torch.Tensor | None = None,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """SILog + weight_kld * KL for one branch. Returns loss, silog, kl and depth."""
        depth, kl = self.predict(image, text, branch=branch, eps=eps, generator=generator)
        silog = silog_loss(depth, depth_gt, self.cfg.max_depth, self.cfg.variance_focus)
        return {"loss": silog + self.cfg.weight_kld * kl, "silog": silog, "kl": kl, "depth": depth}

    @torch.no_grad()
    def prior_depth(self, text: torch.Tensor, size: tuple[int, int], image: torch.Tensor | None = None,
                    eps: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Depth sampled from the caption alone (text branch), (B, 1, H, W).

        The current model's text branch never looks at the image; the legacy model's decoder
        still takes image skip connections, so it needs ``image``.
        """
        if image is None:
            if self.cfg.legacy:
                raise ValueError("the legacy model's text branch uses image features: pass image=")
            image = torch.zeros(text.shape[0], 3, *size, device=text.device)
        return self.predict(image, text, branch="text", eps=eps, generator=generator)[0]

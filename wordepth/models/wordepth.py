"""WorDepth: monocular depth with a variational language prior (Zeng et al., CVPR 2024).

Forward stages, named after the paper:
  encode_image  Swin backbone -> stage maps x2..x5, metric (scale, shift) and the stride-16 feature
  encode_text   text-VAE: CLIP caption feature -> mean, std of the depth latent
  sample        text branch: eps ~ N(0, 1); image branch: eps predicted by the conditional sampler
  decode        z = mean + std * eps, refined by the U-Net decoder into latents at strides 4, 8, 16
  to_depth      the output layer on their up-sampled sum -> metric depth (image branch: rescaled by the metric head)

``predict`` runs them in this order for every setting; ``forward`` and ``training_loss`` call ``predict``.
Exact speed-ups are ``if self.fast_path:`` branches inside the modules they speed up (kernels in
``fast_paths.py``), switched together by ``WorDepth.fast_paths``.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from wordepth.errors import UserError
from wordepth.losses import VARIANCE_FOCUS, kl_image, kl_text, silog_loss
from wordepth.models.decoder import OutConv, Refine, Up, apply_metric, metric_head
from wordepth.models.ops import upsample
from wordepth.models.swin import SwinBackbone, SwinConfig
from wordepth.models.text_vae import ConditionalSampler, TextVAE

BRANCHES = ("text", "image")
INPUT_MULTIPLE = 32  # the network's input sides: images are padded to a multiple of this (the deepest stride)
LATENT_STRIDES = (4, 8, 16)  # strides of the decoded latents z2, z3, z4 (the order of the original's sum)


def _round4(x: float) -> int:
    return max(4, int(round(x / 4)) * 4)


@dataclass(frozen=True)
class WorDepthConfig:
    """Everything that defines the network. Defaults: the original (Swin-L, NYU)."""

    backbone: SwinConfig = field(default_factory=SwinConfig)
    text_dim: int = 1024  # width of the caption features: the one home of this size (data, predictor read it)
    clip_model: str = "RN50"  # the open_clip text encoder the features come from (text_dim is its width)
    latent_dim: int = 128
    max_depth: float = 10.0
    prior_mean: float = 1.54
    legacy: bool = False  # the paper's model: decoder skip connections kept
    alter_prob: float = 0.5  # p: probability of the text branch at a training step
    weight_kld: float = 1e-3
    variance_focus: float = VARIANCE_FOCUS

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
        raise UserError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    backbone = PRESETS[name]
    if "ape_grid" in kwargs:
        backbone = dataclasses.replace(backbone, ape_grid=tuple(kwargs.pop("ape_grid")))
    if "drop_path_rate" in kwargs:
        backbone = dataclasses.replace(backbone, drop_path_rate=kwargs.pop("drop_path_rate"))
    if name == "tiny":
        kwargs.setdefault("latent_dim", 32)
    return WorDepthConfig(backbone=backbone, **kwargs)


@contextlib.contextmanager
def no_random_init() -> Iterator[None]:
    """torch's layer initialisers as no-ops (tensors keep whatever memory held), for networks whose
    every weight is loaded next (a strict ``load_state_dict``)."""
    names = ("kaiming_uniform_", "uniform_", "normal_", "trunc_normal_", "xavier_uniform_", "xavier_normal_")
    saved = {name: getattr(nn.init, name) for name in names}
    try:
        for name in names:
            setattr(nn.init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(nn.init, name, fn)


class WorDepth(nn.Module):
    """The WorDepth network. ``model(image, text)`` returns metric depth (B, 1, H, W).

    Any input size works: the image is padded (replicate) to a multiple of 32 and the prediction
    cropped back; for multiples of 32 this is exactly the original computation.

    ``fast_paths`` (default on) computes the same numbers, up to float rounding, with less work:
    the Swin blocks attend on the real tokens only, the decoder's blocks skip the weight slices that
    meet zero maps, the output convolution runs before the up-sampling. Each is an ``if`` inside its
    module (``swin.py``, ``decoder.py``); off, every module computes as the original.
    """

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
            self.up_3 = Up(d4 + c2, d3, c_skip=c2)  # c_skip: its skip map may be given as zeros (None)
            self.up_2 = Up(d3 + c1, d2, c_skip=c1)
            self.ref_4 = Refine(d4, L)
            self.ref_3 = Refine(d3, L)
            self.ref_2 = Refine(d2, L)
            self.outc = OutConv(L, cfg.prior_mean)
            self.mlayer = metric_head(c4)
            self.text_encoder = TextVAE(cfg.text_dim, L)
            self.eps_layer = ConditionalSampler(d4, L)
        self.fast_paths = True

    def init_non_persistent_buffers(self) -> None:
        """Compute the buffers no state dict holds (index tables), on the parameters' device.

        For a network built on the meta device whose weights were then loaded with ``assign=True``
        (:func:`wordepth.checkpoints.load_checkpoint`): such buffers are still meta tensors. The
        outermost module with an ``init_non_persistent_buffers`` method (timm's convention) computes
        those of its part of the network.
        """
        device = next(self.parameters()).device
        for module in self.modules():
            for name, buf in module._buffers.items():
                if buf is not None and buf.is_meta:
                    module._buffers[name] = torch.empty_like(buf, device=device)
        done: list[str] = []
        for name, module in self.named_modules():
            if name and hasattr(module, "init_non_persistent_buffers") and not any(
                    name.startswith(prefix + ".") for prefix in done):
                module.init_non_persistent_buffers()
                done.append(name)

    @property
    def fast_paths(self) -> bool:
        """Whether the modules take their exact fast paths (each module's ``fast_path``)."""
        return self._fast_paths

    @fast_paths.setter
    def fast_paths(self, on: bool) -> None:
        self._fast_paths = bool(on)
        for module in self.modules():
            if hasattr(module, "fast_path"):
                module.fast_path = bool(on)

    # ---------------------------------------------------------------- stages
    @staticmethod
    def latent_grid(size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the latent (and of ``eps``) for an input of ``size``: the stride-16 grid of the
        input padded to a multiple of 32."""
        H, W = size
        return 2 * -(-H // INPUT_MULTIPLE), 2 * -(-W // INPUT_MULTIPLE)

    def encode_image(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, 3, H, W), H and W multiples of 32 -> backbone maps, metric (B, 2), feature x (B, d4, H/16, W/16)."""
        x2, x3, x4, x5 = self.backbone(image)  # strides 4, 8, 16, 32
        metric = self.mlayer(x5)  # (B, 2)
        x = self.up_4(x5, x4)  # (B, d4, H/16, W/16)
        return {"x": x, "x2": x2, "x3": x3, "metric": metric}

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

    def decode(self, z: torch.Tensor, x: torch.Tensor | None, x3: torch.Tensor | None,
               x2: torch.Tensor | None) -> list[torch.Tensor]:
        """Refine the latent z (B, L, H/16, W/16) with the image features x (B, d4, H/16, W/16),
        x3 (B, c2, H/8, W/8), x2 (B, c1, H/4, W/4); returns it at strides 4, 8, 16: [z2, z3, z4],
        each (B, L, H/s, W/s). The paper's depth feature d (B, L, H, W) is the sum of their
        up-samplings to full resolution; :meth:`to_depth` takes the list.

        ``None`` for a feature map stands for zeros of its shape: the blocks then skip the work on it.
        """
        if not self.cfg.legacy:  # the current release drops the decoder's image skip connections: zeros
            x = x3 = x2 = None
        x, z4 = self.ref_4(x, z)  # (B, d4, H/16, W/16), (B, L, H/16, W/16)
        x = self.up_3(x, x3)  # (B, d3, H/8, W/8)
        x, z3 = self.ref_3(x, upsample(z4, 2))  # z3: (B, L, H/8, W/8)
        x = self.up_2(x, x2)  # (B, d2, H/4, W/4)
        _, z2 = self.ref_2(x, upsample(z3, 2), need_feat=False)  # z2: (B, L, H/4, W/4); the feature is unused
        return [z2, z3, z4]

    def to_depth(self, latents: list[torch.Tensor], metric: torch.Tensor | None, branch: str) -> torch.Tensor:
        """Output layer on the up-sampled sum of the latents (:meth:`decode`) -> depth (B, 1, H, W); the
        image branch rescales with the metric head: sigmoid(a) * (depth + exp(b)). In float32 also
        under autocast."""
        depth = self.outc(latents, LATENT_STRIDES)  # exp(conv(Σ upsample(z, s)) + prior_mean)
        return apply_metric(depth, metric) if branch == "image" else depth

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
        if branch == "text" and not self.cfg.legacy:
            # the current model's text branch reads neither the image features (decode drops them)
            # nor the metric head: the Swin forward is skipped, the image gives the grid size only
            feats = {"x": image.new_zeros(()).expand(image.shape[0], self.cfg.decoder_channels[0],
                                                      image.shape[-2] // 16, image.shape[-1] // 16),
                     "x2": None, "x3": None, "metric": None}
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
                raise UserError("the legacy model's text branch uses image features: pass image= (the photo whose "
                                "layout the caption's samples should follow)")
            image = torch.zeros(text.shape[0], 3, *size, device=text.device)
        return self.predict(image, text, branch="text", eps=eps, generator=generator)[0]

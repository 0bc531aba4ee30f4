"""The toy model of the scale-ambiguity rooms: a 2 M-parameter WorDepth that reads the scale from a caption.

The rooms (:mod:`wordepth.data.generated.scale_rooms`) show every layout at three scales with identical
images; only the caption ("a dollhouse / a bedroom / a large hall with a sofa and a bed") says
which. This module holds what a model of them needs, shared by the experiment
(``experiments/scale_ambiguity``) and the web app's offline demo (``wordepth-app --demo``):

- :class:`ToySettings`, :func:`toy_config`: the budget, data sizes and the tiny preset shrunk further;
- :func:`caption_features`: CLIP RN50 text features with *random* weights (seed 0): the captions
  only need to differ, and no weights are downloaded;
- :func:`make_splits`, :func:`split_tensors`, :func:`train_toy`: data and the training loop;
- the demo model: the experiment's "WorDepth, current (p = 0.5)" at seed 0, shipped as
  ``wordepth/assets/demo_scale_rooms.safetensors`` (float16, 4 MB) and retrained into the cache
  by :func:`demo_model_file` when it is missing; :class:`DemoPredictor` runs it like any
  :class:`~wordepth.inference.predictor.Predictor`.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import torch

from wordepth.checkpoints import load_network, read_sidecar, save_safetensors
from wordepth.data.generated.scale_rooms import (FOCAL_PER_WIDTH, SCALES, ScaleAmbiguitySplit, caption_for, make_split,
                                       render_layout)
from wordepth.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wordepth.data.facts import NYU
from wordepth.engine import LoopSettings, Records, Trainer
from wordepth.models.wordepth import WorDepth, WorDepthConfig, preset_config
from wordepth.inference.predictor import Predictor, _as_rgb
from wordepth.text.clip_features import encode_captions, load_text_encoder

__all__ = ["DEMO_CAPTIONS", "DEMO_MODEL_FILE", "QUICK", "DemoPredictor", "ToySettings", "cache_dir",
           "caption_features", "demo_model_file", "example_images", "is_demo_model", "load_predictor", "make_splits",
           "random_text_encoder", "split_tensors", "toy_config", "train_demo_model", "train_toy"]

log = logging.getLogger(__name__)

MAX_DEPTH = NYU.max_depth  # the output range (NYU's)
CLIP_SEED = 0  # the random-weight CLIP text encoder is the same for every run

DEMO_MODEL_FILE = Path(__file__).resolve().parents[1] / "assets" / "demo_scale_rooms.safetensors"
# the demo's example scene: one layout of the held-out rooms, at each scale
DEMO_OBJECTS = ("sofa", "bed")
DEMO_CAPTIONS = tuple(caption_for(s, DEMO_OBJECTS) for s in SCALES)


@dataclass(frozen=True)
class ToySettings:
    """The shared budget and data sizes."""

    seed: int = 0
    steps: int = 600
    batch_size: int = 8
    lr: float = 1e-3
    end_lr: float = 1e-4
    height: int = 64
    width: int = 96
    n_train: int = 64  # layouts; each appears at every scale
    n_test: int = 16
    embed_dim: int = 16  # the tiny preset shrunk further: embed 16, one block per stage, window 4
    depths: tuple[int, ...] = (1, 1, 1, 1)
    window_size: int = 4
    latent_dim: int = 16
    prior_mean: float = 1.0  # log of a typical depth (e^1 = 2.7 m)


QUICK = ToySettings(steps=3, batch_size=2, height=32, width=32, n_train=2, n_test=1)


# ---------------------------------------------------------------- building


def toy_config(s: ToySettings, legacy: bool, alter_prob: float) -> WorDepthConfig:
    """The tiny preset, shrunk (embedding width, depth, window), with the legacy flag and p."""
    cfg = preset_config("tiny", legacy=legacy, alter_prob=alter_prob, max_depth=MAX_DEPTH,
                        prior_mean=s.prior_mean, ape_grid=(s.height // 4, s.width // 4), drop_path_rate=0.0,
                        latent_dim=s.latent_dim)
    heads = tuple(max(1, s.embed_dim * 2**i // 32) for i in range(len(s.depths)))
    backbone = dataclasses.replace(cfg.backbone, embed_dim=s.embed_dim, depths=tuple(s.depths),
                                   num_heads=heads, window_size=s.window_size)
    return cfg.replace(backbone=backbone)


@lru_cache(maxsize=2)
def random_text_encoder(device: str = "cpu"):
    """CLIP RN50 with random weights drawn on the CPU from seed ``CLIP_SEED``, then moved to ``device``.

    Returns the model and its tokenizer; the global RNG is left as it was.
    """
    with torch.random.fork_rng():
        torch.manual_seed(CLIP_SEED)
        model, tokenizer = load_text_encoder("RN50", pretrained=None)
    return model.to(device), tokenizer


def caption_features(captions: list[str]) -> dict[str, torch.Tensor]:
    """CLIP RN50 text features (random weights, fixed seed) of each distinct caption, plus '' (constant)."""
    unique = sorted(set(captions) | {""})
    model, tokenizer = random_text_encoder("cpu")
    feats = encode_captions(model, tokenizer, unique)  # (N, 1024)
    return dict(zip(unique, feats))


def make_splits(s: ToySettings) -> tuple[ScaleAmbiguitySplit, ScaleAmbiguitySplit]:
    """The training layouts and the held-out test layouts of seed ``s.seed``."""
    train = make_split(s.n_train, seed=1000 * s.seed + 1, height=s.height, width=s.width)
    test = make_split(s.n_test, seed=1000 * s.seed + 2, height=s.height, width=s.width)
    return train, test


def split_tensors(split: ScaleAmbiguitySplit, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The whole split as tensors: image (N, 3, H, W) normalised, depth (N, 1, H, W), text (N, 1024)."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    image = torch.from_numpy(split.images).permute(0, 3, 1, 2).float() / 255.0
    return {
        "image": (image - mean) / std,
        "depth": torch.from_numpy(split.depth)[:, None],
        "text": torch.stack([feats[c] for c in split.captions]),
        "constant": feats[""].expand(len(split), -1),
        "scale": torch.from_numpy(split.scale),
    }


# ---------------------------------------------------------------- training


def toy_batches(data: dict[str, torch.Tensor], s: ToySettings, text_key: str = "text") -> Iterator[dict]:
    """``s.steps`` random batches of ``data`` with random horizontal flips, from the generator of ``s.seed``."""
    rng = np.random.default_rng(s.seed)
    n = data["image"].shape[0]
    for _ in range(s.steps):
        idx = torch.from_numpy(rng.choice(n, size=min(s.batch_size, n), replace=False))
        flip = torch.from_numpy(rng.random(len(idx)) < 0.5).view(-1, 1, 1, 1)
        yield {"image": torch.where(flip, data["image"][idx].flip(-1), data["image"][idx]),
               "depth": torch.where(flip, data["depth"][idx].flip(-1), data["depth"][idx]),
               "text_feature": data[text_key][idx]}


class _SilogHistory(Records):
    """The training SILog of every step (the toy logs each step, on the CPU)."""

    def __init__(self) -> None:
        self.silog: list[float] = []

    def log_step(self, trainer: Trainer, stats: dict) -> None:
        self.silog.append(stats["silog"].item())


def train_toy(cfg: WorDepthConfig, data: dict[str, torch.Tensor], s: ToySettings, text_key: str = "text",
              progress: bool = False) -> tuple[WorDepth, dict]:
    """Train through the project's training loop (:class:`wordepth.engine.Trainer`): Adam with the
    polynomial decay, gradient clipping 1.0 and the branch alternation, on in-memory batches.

    Every model sees the same batches and flips (one generator); the branch is drawn from its own
    generator and the text branch's eps from a third, so p changes nothing else.

    Args:
        cfg: the network (:func:`toy_config`).
        data: :func:`split_tensors` of the training split.
        s: the budget and seed.
        text_key: ``text`` (the captions' features) or ``constant`` (one vector for every sample).
        progress: a tqdm bar over the steps.
    """
    torch.manual_seed(s.seed)
    model = WorDepth(cfg).train()
    history = _SilogHistory()
    settings = LoopSettings(total_steps=s.steps, lr=s.lr, end_lr=s.end_lr, log_freq=1, max_no_depth_steps=s.steps + 1,
                            progress=progress, progress_desc="training the demo model")
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=s.lr), toy_batches(data, s, text_key), settings,
                      branch_gen=torch.Generator().manual_seed(s.seed + 1),
                      noise_gen=torch.Generator().manual_seed(s.seed + 2), records=history)
    t0 = time.time()
    trainer.train()
    tail = history.silog[-max(1, len(history.silog) // 10):]
    return model.eval(), {"train_seconds": time.time() - t0, "text_branch_steps": trainer.branch_counts["text"],
                          "final_train_silog": float(np.mean(tail))}


# ---------------------------------------------------------------- the demo model


def cache_dir() -> Path:
    """``$WORDEPTH_CACHE``, else ``$XDG_CACHE_HOME/wordepth``, else ``~/.cache/wordepth``."""
    if os.environ.get("WORDEPTH_CACHE"):
        return Path(os.environ["WORDEPTH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wordepth"


def _check_caption_feature() -> tuple[str, list[float]]:
    """A caption and the first values of its random-CLIP feature: stored with the model, compared on load."""
    feat = caption_features([DEMO_CAPTIONS[0]])[DEMO_CAPTIONS[0]]
    return DEMO_CAPTIONS[0], [round(float(v), 6) for v in feat[:8]]


def train_demo_model(path: str | os.PathLike, s: ToySettings = ToySettings(), progress: bool = True,
                     threads: int | None = 1) -> Path:
    """Train the demo model (the experiment's current-release WorDepth, p = 0.5) and save it.

    Writes ``path`` (``.safetensors``, weights in float16: 4 MB) and ``path.json`` (the network
    config, the settings, the held-out scale ratios and a check of the text encoder). Deterministic:
    the same settings give the same weights. ``threads``: torch CPU threads while training (1 is
    the fastest for this tiny network; None leaves the setting alone).
    """
    path = Path(path)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        train_split, test_split = make_splits(s)
        feats = caption_features(train_split.captions + test_split.captions)
        data = split_tensors(train_split, feats)
        cfg = toy_config(s, legacy=False, alter_prob=WorDepthConfig.alter_prob)  # the current release's p
        model, train_log = train_toy(cfg, data, s, progress=progress)
        test = split_tensors(test_split, feats)
        with torch.no_grad():
            pred = torch.cat([model(test["image"][i:i + 32], test["text"][i:i + 32])
                              for i in range(0, len(test_split), 32)])
    finally:
        torch.set_num_threads(old_threads)
    ratio = pred.flatten(1).median(1).values / test["depth"].flatten(1).median(1).values  # (N,)
    abs_rel = ((pred - test["depth"]).abs() / test["depth"]).flatten(1).mean(1)  # (N,)
    caption, values = _check_caption_feature()
    _, sidecar = save_safetensors(model.half(), path)  # float16 halves the file; float32 on loading
    meta = json.loads(sidecar.read_text())
    meta["demo"] = {
        "what": "toy WorDepth trained on synthetic scale-ambiguity rooms (wordepth.demo.toy); not a model of real scenes",
        "settings": dataclasses.asdict(s),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in train_log.items()},
        "held_out_abs_rel": round(float(abs_rel.mean()), 4),
        "held_out_scale_ratio": {words: round(float(ratio[test["scale"] == scale].median()), 3)
                                 for scale, words in SCALES.items()},
        "text_encoder": {"model": "RN50", "weights": f"random, torch seed {CLIP_SEED}",
                         "check_caption": caption, "check_feature_head": values},
    }
    sidecar.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def demo_model_file(cache: str | os.PathLike | None = None, train: bool = True, progress: bool = True) -> Path:
    """The demo model: the shipped file, else the cached one, else trained into the cache (about a minute)."""
    if DEMO_MODEL_FILE.is_file():
        return DEMO_MODEL_FILE
    cached = Path(cache or cache_dir()) / DEMO_MODEL_FILE.name
    if cached.is_file():
        return cached
    if not train:
        raise FileNotFoundError(f"the demo model is neither shipped ({DEMO_MODEL_FILE}) nor cached ({cached})")
    log.info("training the demo model once into %s (about a minute on two CPU cores)", cached)
    return train_demo_model(cached, progress=progress)


def is_demo_model(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a demo model (a ``.safetensors`` file whose JSON beside it says so)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        return "demo" in (read_sidecar(path, strict=False) or {})
    except OSError:
        return False


def load_predictor(checkpoint: str | os.PathLike, variant: str | None = None,
                   device: str | torch.device | None = None, **kwargs) -> Predictor:
    """:meth:`Predictor.from_checkpoint` (which gives a :class:`DemoPredictor` for ``"demo"`` or a demo
    model's file); kept for callers of this name."""
    return Predictor.from_checkpoint(checkpoint, variant=variant, device=device, **kwargs)


class DemoPredictor(Predictor):
    """The demo model as a :class:`Predictor`: random-weight CLIP captions, inputs at the training size.

    Images are resized (aspect kept) to about the training size (64 x 96 pixels) before the
    network and the depth is resized back, since the toy network knows objects only at that size.
    The rooms' camera has a focal length of ``focal_per_width`` (0.6) times the image width.
    """

    focal_per_width = FOCAL_PER_WIDTH

    def __init__(self, model: torch.nn.Module, device: str | torch.device | None = None, **kwargs):
        super().__init__(model, device=device, **kwargs)
        self.work_hw = tuple(4 * g for g in model.cfg.backbone.ape_grid)  # (64, 96)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device | None = None,
             progress: bool = True) -> "DemoPredictor":
        """The demo model (:func:`demo_model_file` when ``path`` is None), checked against its text encoder."""
        path = Path(path) if path is not None else demo_model_file(progress=progress)
        model, info = load_network(path)
        predictor = cls(model, device=device)
        predictor.checkpoint_info = info
        check = info["meta"].get("demo", {}).get("text_encoder")
        if check:
            feat = predictor.encode([check["check_caption"]])[0, :8]
            if not torch.allclose(feat, torch.tensor(check["check_feature_head"]), atol=1e-4):
                log.warning("the random-weight text encoder differs from the one %s was trained with (another "
                            "torch or open_clip version?): captions will not set the scale; retrain it with "
                            "wordepth.demo.toy.train_demo_model", path)
        return predictor

    def text_encoder(self):
        """CLIP RN50 with the random weights the demo model was trained with."""
        return random_text_encoder(str(self.device))

    def caption(self, images):
        """The demo model has no captioner: the rooms' scale cannot be seen, so a caption must name it."""
        raise NotImplementedError("the toy model has no captioner: no caption model can see these rooms' scale "
                                  "(that is the point of the demo); type a caption such as "
                                  f"'{DEMO_CAPTIONS[0]}'")

    def _to_work_size(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        f = float(np.sqrt(self.work_hw[0] * self.work_hw[1] / (h * w)))
        size = (max(8, round(w * f)), max(8, round(h * f)))  # (w, h) for OpenCV
        return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)

    def infer(self, image: Any, caption=None, return_tensor: bool = False):
        """As :meth:`Predictor.infer`, run at about the training size; depth at the input's size."""
        batch = isinstance(image, (list, tuple))
        rgbs = [_as_rgb(im) for im in (image if batch else [image])]
        small = super().infer([self._to_work_size(rgb) for rgb in rgbs], caption)
        out = [cv2.resize(d, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
               for d, rgb in zip(small, rgbs)]
        out = [torch.from_numpy(d) for d in out] if return_tensor else out
        return out if batch else out[0]


def example_images(out_dir: str | os.PathLike, n: int = 3, zoom: int = 3, seed: int = 2
                   ) -> list[tuple[Path, tuple[str, str]]]:
    """Render ``n`` held-out rooms (layouts the demo model never saw) at ``zoom`` times the training size.

    The first holds the demo's objects (:data:`DEMO_OBJECTS`), so that :data:`DEMO_CAPTIONS` fit it.
    Deterministic; files that exist are kept. Returns each PNG's path and the two objects in it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = ToySettings()
    rng = np.random.default_rng(seed)
    paths = []
    for _ in range(200):
        if len(paths) == n:
            break
        before = rng.bit_generator.state
        _, _, names = render_layout(rng, 8, 12, supersample=1)  # cheap: only the layout's objects matter here
        if not paths and set(names) != set(DEMO_OBJECTS):
            continue
        path = out_dir / f"room_{len(paths)}_{names[0]}_{names[1]}.png"
        if not path.is_file():
            after = rng.bit_generator.state
            rng.bit_generator.state = before  # the same layout (drawn first), at full size
            image, _, _ = render_layout(rng, s.height * zoom, s.width * zoom)
            rng.bit_generator.state = after  # the next layouts do not depend on what was cached
            if not cv2.imwrite(str(path), image[:, :, ::-1]):
                raise OSError(f"could not write {path}")
        paths.append((path, names))
    return paths

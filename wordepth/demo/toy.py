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
  by :func:`demo_model_file` when it is missing; :class:`wordepth.inference.predictor.DemoPredictor`
  runs it like any :class:`~wordepth.inference.predictor.Predictor` (``Predictor.from_checkpoint("demo")``).
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
from typing import Iterator

import numpy as np
import torch

from wordepth.checkpoints import save_safetensors
from wordepth.data.generated.scale_rooms import SCALES, ScaleAmbiguitySplit, make_split
from wordepth.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from wordepth.data.facts import NYU
from wordepth.demo.examples import DEMO_CAPTIONS, TRAIN_HW, cache_dir, example_images
from wordepth.engine import LoopSettings, Records, Trainer
from wordepth.models.wordepth import WorDepth, WorDepthConfig, preset_config
from wordepth.text.clip_features import encode_captions, load_text_encoder

__all__ = ["DEMO_CAPTIONS", "DEMO_MODEL_FILE", "QUICK", "ToySettings", "cache_dir", "caption_features",
           "demo_model_file", "example_images", "make_splits", "random_text_encoder", "split_tensors", "toy_config",
           "train_demo_model", "train_toy"]

log = logging.getLogger(__name__)

MAX_DEPTH = NYU.max_depth  # the output range (NYU's)
CLIP_SEED = 0  # the random-weight CLIP text encoder is the same for every run

DEMO_MODEL_FILE = Path(__file__).resolve().parents[1] / "assets" / "demo_scale_rooms.safetensors"


@dataclass(frozen=True)
class ToySettings:
    """The shared budget and data sizes."""

    seed: int = 0
    steps: int = 600
    batch_size: int = 8
    lr: float = 1e-3
    end_lr: float = 1e-4
    height: int = TRAIN_HW[0]
    width: int = TRAIN_HW[1]
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
        self.silog.append(stats["terms"]["silog"].item())


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

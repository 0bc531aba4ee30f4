"""Caption ablations: which caption feature each evaluation image is given (``--captions`` / ``--caption_ablation``).

WorDepth's claim is that the caption supplies the scale the image cannot. These modes replace the stored
caption feature of every test image, in one place (:class:`CaptionSwap`, keyed by the image's split
entry), so that the loader, the network and the metrics are exactly those of a plain evaluation:

- ``dataset``: the stored features (today's evaluation; nothing is replaced);
- ``none``: the mean caption feature of the model's training set, as ``wordepth-predict`` uses without one;
- ``shuffled``: another test image's feature, a fixed-seed permutation in which no image keeps its own;
- ``other-scene``: the feature of an image of another scene (NYU: the scene name in the path; KITTI: the
  drive), drawn with the seed;
- ``template:TEXT``: one sentence per image, ``{caption}`` standing for the image's own caption;
- ``file:PATH``: sentences from a file (image path -> sentence).

The last two are encoded by the network's CLIP text encoder (:func:`encode_sentences`); the others reuse
stored features and need no CLIP weights. docs/evaluation.md, "Caption ablations", has the details.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from wordepth.data.text_features import normalize_key
from wordepth.errors import UserError
from wordepth.metrics import HIGHER_BETTER, METRIC_NAMES
from wordepth.outputs import write_array

log = logging.getLogger(__name__)

FIXED_MODES = ("dataset", "none", "shuffled", "other-scene")
PREFIX_MODES = ("template:", "file:")
MODES_HELP = "dataset, none, shuffled, other-scene, template:TEXT or file:PATH"
BOOTSTRAP_DRAWS = 2000


class CaptionModeError(UserError):
    """A ``--captions`` / ``--caption_ablation`` value or caption file that cannot be used."""


@dataclass(frozen=True)
class CaptionMode:
    """One caption source: ``kind`` (dataset, none, shuffled, other-scene, template, file) and its argument."""

    kind: str
    arg: str | None = None

    @property
    def name(self) -> str:
        """As written on the command line (the key of the ablation table and the JSON)."""
        return f"{self.kind}:{self.arg}" if self.arg is not None else self.kind

    @property
    def needs_clip(self) -> bool:
        return self.kind in ("template", "file")


def parse_caption_mode(text: str, flag: str = "--captions") -> CaptionMode:
    """``"shuffled"`` -> CaptionMode("shuffled"); ``"template:a toy {caption}"`` -> ("template", "a toy {caption}").

    Raises:
        CaptionModeError: an unknown mode, a template without text, ``file:`` without a path.
    """
    text = text.strip()
    if text in FIXED_MODES:
        return CaptionMode(text)
    for prefix in PREFIX_MODES:
        if text.startswith(prefix):
            kind, arg = prefix[:-1], text[len(prefix):]
            if not arg.strip():
                what = "a sentence, e.g. template:'a miniature model of {caption}'" if kind == "template" else \
                    "a caption file, e.g. file:captions.json"
                raise CaptionModeError(f"{flag} {text!r}: {kind}: needs {what}")
            if kind == "template":
                try:
                    arg.format(caption="")
                except (KeyError, IndexError, ValueError) as err:
                    raise CaptionModeError(f"{flag} {text!r}: a template may only use {{caption}} (write {{{{ and }}}} "
                                           f"for literal braces): {err!r}") from None
            return CaptionMode(kind, arg)
    raise CaptionModeError(f"{flag} {text!r} is not a caption mode: use one of {MODES_HELP}")


def parse_ablation(text: str) -> list[CaptionMode]:
    """The modes of ``--caption_ablation`` (comma-separated; a template's own commas are kept), ``dataset`` first.

    ``dataset`` is the reference of every change, so it is added when not named; a repeated mode is an error.
    """
    pieces: list[str] = []
    for piece in text.split(","):
        starts = piece.strip() in FIXED_MODES or piece.strip().startswith(PREFIX_MODES)
        if pieces and not starts and pieces[-1].startswith(PREFIX_MODES):
            pieces[-1] += "," + piece  # "template:a toy, small {caption}"
        else:
            pieces.append(piece.strip())
    modes = [parse_caption_mode(p, "--caption_ablation") for p in pieces]
    names = [m.name for m in modes]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CaptionModeError(f"--caption_ablation names {repeated[0]!r} twice")
    if "dataset" not in names:
        modes.insert(0, CaptionMode("dataset"))
    else:
        modes.sort(key=lambda m: m.kind != "dataset")
    return modes


# --------------------------------------------------------------------------- who gets whose caption
def derangement(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` without a fixed point, uniform over those, a function of ``seed`` only.

    Raises:
        CaptionModeError: ``n < 2`` (no such permutation exists).
    """
    if n < 2:
        raise CaptionModeError(f"--captions shuffled needs at least two test images (the split has {n}): "
                               "no image can take another's caption")
    rng = random.Random(f"wordepth-shuffled-{seed}")
    order = list(range(n))
    while True:  # rejection: about e (2.7) draws on average
        rng.shuffle(order)
        if all(i != j for i, j in enumerate(order)):
            return list(order)


_DRIVE = re.compile(r"\d{4}_\d{2}_\d{2}_drive_\d+")


def scene_of(rgb: str, dataset: str) -> str:
    """The scene of a split entry: KITTI's drive (``2011_09_26_drive_0002``), NYU's scene type (the first folder
    without its number: ``kitchen_0028b`` -> ``kitchen``), another dataset's first folder."""
    key = normalize_key(rgb)
    if dataset == "kitti":
        found = _DRIVE.search(key)
        if found:
            return found.group(0)
    first = key.split("/")[0] if "/" in key else ""
    return re.sub(r"_\d+[a-z]?$", "", first) if dataset == "nyu" else first


def other_scene_assignment(paths: Sequence[str], dataset: str, seed: int) -> list[int]:
    """For each image, the index of an image of another scene, drawn uniformly with ``seed``.

    Raises:
        CaptionModeError: the split has fewer than two scenes.
    """
    scenes = [scene_of(p, dataset) for p in paths]
    if len(set(scenes)) < 2:
        raise CaptionModeError(f"--captions other-scene needs images of at least two scenes; the split's "
                               f"{len(paths)} image(s) are all of {scenes[0] if scenes else 'no'} scene "
                               f"({'the drive' if dataset == 'kitti' else 'the first folder of the path'})")
    return assign_other_scene(scenes, seed)


def assign_other_scene(scenes: Sequence[str], seed: int) -> list[int]:
    """For each item, the index of an item of another scene (``scenes[i]``: the scene of item ``i``), drawn
    uniformly with ``seed``: the draws of ``--captions other-scene``.

    Raises:
        CaptionModeError: fewer than two scenes.
    """
    if len(set(scenes)) < 2:
        raise CaptionModeError(f"--captions other-scene needs at least two scenes; the {len(scenes)} test "
                               f"sample(s) are all of scene {scenes[0] if scenes else 'none'!r}")
    rng = random.Random(f"wordepth-other-scene-{seed}")
    return [rng.choice([j for j, s in enumerate(scenes) if s != scene]) for scene in scenes]


# --------------------------------------------------------------------------- sentences
def read_caption_file(path: str | os.PathLike, paths: Sequence[str]) -> dict[str, str]:
    """Split entry -> sentence from a user's file: a JSON object ``{"image path": "sentence"}`` or lines
    ``<image path> <sentence>`` (tab or spaces between; blank lines and ``#`` comments ignored).

    Raises:
        CaptionModeError: the file is unreadable, misses an image of the split, names one not in it, or
            gives an empty sentence.
    """
    path = Path(path)
    if not path.is_file():
        raise CaptionModeError(f"--captions file:{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CaptionModeError(f"caption file {path} is not UTF-8 text") from None
    pairs: list[tuple[str, str, str]] = []  # key, sentence, where
    if path.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            raise CaptionModeError(f"caption file {path}: not JSON ({err.msg}, line {err.lineno})") from None
        if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
            raise CaptionModeError(f"caption file {path}: expected a JSON object of image path -> sentence")
        pairs = [(k, v, f"{path}, {k!r}") for k, v in obj.items()]
    else:
        for no, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = line.strip().split(None, 1)
            pairs.append((fields[0], fields[1] if len(fields) > 1 else "", f"{path}, line {no}"))
    wanted = {normalize_key(p): p for p in paths}
    out: dict[str, str] = {}
    for key, sentence, where in pairs:
        k = normalize_key(key)
        if k not in wanted:
            raise CaptionModeError(f"{where}: {key} is not an image of the evaluation split")
        if not sentence.strip():
            raise CaptionModeError(f"{where}: the sentence of {key} is empty")
        out[wanted[k]] = sentence.strip()
    missing = [p for k, p in wanted.items() if p not in out]
    if missing:
        raise CaptionModeError(f"caption file {path} has no sentence for {len(missing)} of the {len(wanted)} test "
                               f"images (first: {missing[0]}): give one per image of the split")
    return out


def dataset_captions(text_dir: str | os.PathLike | None, dataset: str, paths: Sequence[str]) -> dict[str, str]:
    """The images' own captions, ``<text_dir>/<dataset>/test/<image>.txt`` (``wordepth-text caption``'s layout)."""
    from wordepth.text.captioning import caption_path, read_caption

    if not text_dir:
        raise CaptionModeError("--captions template: with {caption} needs the images' captions: give --text_dir DIR "
                               f"(DIR/{dataset}/test/<image>.txt, as wordepth-text caption writes them)")
    out = {}
    for p in paths:
        file = caption_path(text_dir, dataset, "test", p)
        if not file.is_file():
            raise CaptionModeError(f"no caption for {p}: {file} does not exist (--text_dir {text_dir})")
        out[p] = read_caption(file)
    return out


def fill_template(mode: CaptionMode, captions: Sequence[str], names: Sequence[str]) -> list[str]:
    """The sentences of ``template:TEXT``: TEXT with ``{caption}`` replaced by each item's own caption.

    Raises:
        CaptionModeError: a sentence is empty (``names[i]`` names the item in the message).
    """
    sentences = [mode.arg.format(caption=c).strip() for c in captions]
    empty = [n for n, s in zip(names, sentences) if not s]
    if empty:
        raise CaptionModeError(f"--captions {mode.name!r} gives an empty sentence for {empty[0]} (its caption "
                               "is empty)")
    return sentences


def encode_sentences(sentences: Sequence[str], clip_model: str, weights: str | None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, D) float32 CLIP text features of sentences, as stored features are (L2-normalised, float16 precision).

    The one place the ablations call the text pipeline (:mod:`wordepth.text.clip_features`); ``weights``: a local
    weights file of ``clip_model`` (else open_clip's pretrained tag, cached or downloaded).
    """
    from wordepth.text.clip_features import encode_captions, load_text_encoder

    model, tokenizer = load_text_encoder(clip_model, weights_path=weights, device=device)
    return encode_captions(model, tokenizer, list(sentences)).half().float()  # (N, D), as stored (fp16)


# --------------------------------------------------------------------------- the features of a mode
@dataclass(frozen=True)
class CaptionSettings:
    """What the modes need besides the dataset: the network's text encoder and the seed."""

    dataset: str
    seed: int = 0
    text_dim: int | None = None  # the network's feature width
    clip_model: str = "RN50"
    clip_weights: str | None = None
    text_dir: str | None = None  # the images' own captions ({caption} in a template)
    mean_features: str | None = None  # a wordepth-text mean file instead of the shipped one
    device: str = "cpu"


def caption_features(mode: CaptionMode, eval_set, settings: CaptionSettings) -> dict[str, torch.Tensor] | None:
    """Split entry -> (D,) caption feature for every image of ``eval_set`` (a SplitDataset in eval mode);
    None for ``dataset`` (the stored features, untouched).

    Raises:
        CaptionModeError: no permutation (one image), one scene, a bad caption file or template, a mean feature
            of another width.
    """
    if mode.kind == "dataset":
        return None
    paths = [e.rgb for e in eval_set.entries]
    if mode.kind == "none":
        from wordepth.inference.predictor import mean_caption_feature

        feature = mean_caption_feature(settings.dataset, "train", settings.mean_features)
        if settings.text_dim is not None and feature.numel() != settings.text_dim:
            raise CaptionModeError(f"--captions none: the mean caption feature of {settings.dataset} is "
                                   f"{feature.numel()}-d but the network takes {settings.text_dim}-d features: make "
                                   "the mean of its training features (wordepth-text mean) and pass --mean_features")
        return {p: feature for p in paths}
    if mode.kind in ("shuffled", "other-scene"):
        order = (derangement(len(paths), settings.seed) if mode.kind == "shuffled"
                 else other_scene_assignment(paths, settings.dataset, settings.seed))
        stored = [eval_set.text_features.get(p) for p in paths]
        return {p: stored[j] for p, j in zip(paths, order)}
    if mode.kind == "file":
        by_path = read_caption_file(mode.arg, paths)
        sentences = [by_path[p] for p in paths]
    else:  # template
        own = dataset_captions(settings.text_dir, settings.dataset, paths) if "{caption}" in mode.arg else {}
        sentences = fill_template(mode, [own.get(p, "") for p in paths], paths)
    feats = encode_sentences(sentences, settings.clip_model, settings.clip_weights, settings.device)
    if settings.text_dim is not None and feats.shape[1] != settings.text_dim:
        raise CaptionModeError(f"--captions {mode.name}: {settings.clip_model} gives {feats.shape[1]}-d features "
                               f"but the network takes {settings.text_dim}-d ones")
    log.info("--captions %s: %d sentence(s) encoded with %s, e.g. %r", mode.name, len(sentences),
             settings.clip_model, sentences[0] if sentences else "")
    return {p: f for p, f in zip(paths, feats)}


def tensor_caption_features(mode: CaptionMode, stored: torch.Tensor, *, seed: int,
                            scenes: Sequence[str] | None = None, mean: torch.Tensor | None = None,
                            captions: Sequence[str] | None = None,
                            encode: Callable[[list[str]], torch.Tensor] | None = None) -> torch.Tensor:
    """(N, D) caption features of N in-memory test samples under ``mode``: :func:`caption_features` for an
    evaluation that holds its samples as tensors (``experiments/scale_ambiguity``), with the same draws.

    Args:
        stored: (N, D) the samples' own caption features (``dataset``).
        seed: the permutation's / the draws' seed (``shuffled``, ``other-scene``).
        scenes: the scene of each sample (``other-scene``).
        mean: (D,) the mean caption feature of the model's training set (``none``).
        captions: each sample's own caption, and ``encode``, sentences -> (N, D) features with the model's text
            pipeline (``template:``).

    Raises:
        CaptionModeError: a mode the caller gave nothing for (``file:``: the samples have no image paths),
            fewer than two samples or scenes, an empty sentence.
    """
    n = stored.shape[0]
    if mode.kind == "dataset":
        return stored
    if mode.kind == "shuffled":
        return stored[derangement(n, seed)]
    needs = {"none": ("the mean training feature", mean), "other-scene": ("the samples' scenes", scenes),
             "template": ("the captions and a text encoder", encode if captions is not None else None)}
    what, value = needs.get(mode.kind, ("image paths", None))
    if value is None:
        raise CaptionModeError(f"--captions {mode.name}: not available for this evaluation (it needs {what})")
    if mode.kind == "none":
        if mean.numel() != stored.shape[1]:
            raise CaptionModeError(f"--captions none: the mean caption feature is {mean.numel()}-d but the "
                                   f"samples' features are {stored.shape[1]}-d")
        return mean.to(stored.dtype).flatten().expand(n, -1)
    if mode.kind == "other-scene":
        return stored[assign_other_scene(scenes, seed)]
    feats = encode(fill_template(mode, captions, [f"test sample {i}" for i in range(n)]))
    return feats.to(stored.dtype)


class CaptionSwap(Dataset):
    """An evaluation dataset whose samples carry ``features[sample['path']]`` as their ``text_feature``.

    The only place a caption mode changes the data; everything else (``skipped``, ``split_file``, ...) is the
    wrapped dataset's.
    """

    def __init__(self, base, features: Mapping[str, torch.Tensor]):
        self.base = base
        self.features = dict(features)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        sample = dict(self.base[index])
        sample["text_feature"] = self.features[sample["path"]].to(sample["text_feature"].dtype).clone()
        return sample

    def __getattr__(self, name: str):
        if name in ("base", "features") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)


class Samples(Dataset):
    """Samples read once and kept in memory (the ablation's images, read once for all modes)."""

    def __init__(self, base, samples: list[dict]):
        self.base = base
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]

    def __getattr__(self, name: str):
        if name in ("base", "samples") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)


# --------------------------------------------------------------------------- the table
def paired_bootstrap(rows: Sequence[Mapping], reference: Sequence[Mapping], seed: int,
                     draws: int = BOOTSTRAP_DRAWS) -> dict[str, dict]:
    """Change of each metric's mean from ``reference`` with a paired bootstrap 95% interval over images.

    Rows are per-image metrics (``{'path', <metric>: float}``), paired by path. The draws are a function of
    ``seed`` and the images (in path order: the same resampled images for every mode and metric, whatever the
    order of the rows). An image whose metrics are not all finite in either row (no valid pixel) is left out,
    as the metrics' means leave it out.

    Returns:
        ``{metric: {"change": mean(rows) - mean(reference), "ci95": [low, high]}}``.
    """
    def finite(r: Mapping) -> bool:
        return all(math.isfinite(r[m]) for m in METRIC_NAMES)

    ref = {r["path"]: r for r in reference}
    paired = sorted(((r, ref[r["path"]]) for r in rows if r["path"] in ref and finite(r) and finite(ref[r["path"]])),
                    key=lambda ab: ab[0]["path"])
    if not paired:
        return {m: {"change": math.nan, "ci95": [math.nan, math.nan]} for m in METRIC_NAMES}
    diff = torch.tensor([[a[m] - b[m] for m in METRIC_NAMES] for a, b in paired], dtype=torch.float64)  # (N, 9)
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randint(len(paired), (draws, len(paired)), generator=gen)  # (draws, N)
    means = diff[idx].mean(dim=1)  # (draws, 9)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64), dim=0)  # (9,), (9,)
    change = diff.mean(dim=0)
    return {m: {"change": float(change[k]), "ci95": [float(low[k]), float(high[k])]}
            for k, m in enumerate(METRIC_NAMES)}


def ablation_results(rows_of: Mapping[str, Sequence[Mapping]], seed: int,
                     metrics_of: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, dict]:
    """The ablation's entry of each mode, as ``--caption_ablation`` reports it.

    Args:
        rows_of: mode -> per-image rows (``path``, the nine metrics, ``median_depth``, ``median_ratio``), with
            ``dataset`` among the modes.
        seed: the bootstrap's seed (:func:`paired_bootstrap`).
        metrics_of: mode -> the nine metrics and ``count`` as the evaluation computed them (default: the means
            over the rows whose metrics are all finite, and their number).

    Returns:
        ``{mode: {<metric>, "count", "median_ratio", "median_depth", "change"}}``: the medians over images of
        each image's median pred/gt ratio and predicted depth, and the change from ``dataset``.
    """
    out: dict[str, dict] = {}
    for name, rows in rows_of.items():
        med = torch.tensor([[r["median_depth"], r["median_ratio"]] for r in rows], dtype=torch.float64)  # (N, 2)
        med = torch.nanquantile(med, 0.5, dim=0).tolist() if len(med) else [math.nan, math.nan]  # over images
        if metrics_of is not None:
            metrics = metrics_of[name]
        else:
            values = torch.tensor([[r[m] for m in METRIC_NAMES] for r in rows], dtype=torch.float64)  # (N, 9)
            values = values[~values.isnan().any(dim=1)]
            metrics = {**dict(zip(METRIC_NAMES, values.mean(dim=0).tolist())), "count": len(values)}
        out[name] = {**{m: metrics[m] for m in METRIC_NAMES}, "count": int(metrics["count"]),
                     "median_ratio": med[1], "median_depth": med[0],
                     "change": paired_bootstrap(rows, rows_of["dataset"], seed)}
    return out


def ablation_table(results: Mapping[str, Mapping]) -> str:
    """Two tables: the nine metrics and the median pred/gt ratio per mode, then the change from ``dataset``
    with its 95% interval (``+0.0123 [+0.0040, +0.0201]``; a ``*`` marks a change whose interval excludes 0)."""
    width = max(len("mode"), *(len(n) for n in results))
    head = f"{'mode':<{width}} " + " ".join(f"{m:>8}" for m in METRIC_NAMES) + f" {'pred/gt':>8} {'images':>6}"
    lines = [head]
    for name, r in results.items():
        lines.append(f"{name:<{width}} " + " ".join(f"{r[m]:8.4f}" for m in METRIC_NAMES)
                     + f" {r['median_ratio']:8.4f} {r['count']:6d}")
    lines += ["", "change from dataset, paired bootstrap 95% interval over images (* the interval excludes 0; "
              f"higher is better for {', '.join(sorted(HIGHER_BETTER))}, lower for the others):"]
    for name, r in results.items():
        if name == "dataset":
            continue
        cells = []
        for m in METRIC_NAMES:
            c = r["change"][m]
            lo, hi = c["ci95"]
            star = "*" if lo > 0 or hi < 0 else " "
            cells.append(f"{m} {c['change']:+.4f} [{lo:+.4f}, {hi:+.4f}]{star}")
        lines.append(f"{name}:")
        lines += [f"  {cell}" for cell in cells]
    return "\n".join(lines)


def scale_plot_path(metrics_json: str | os.PathLike) -> Path:
    """Where ``--caption_ablation`` draws its scale-sensitivity plot: beside ``--metrics_json`` (``m.json`` ->
    ``m.scale.png``)."""
    path = Path(metrics_json)
    return path.with_name(path.stem + ".scale.png")


def write_scale_plot(path: str | os.PathLike, results: Mapping[str, Mapping], true_median: float) -> None:
    """A bar per mode: the median predicted depth (median over images of each image's median), with the median
    true depth as a line. Templates such as ``a toy {caption}`` / ``a huge {caption}`` show how far scale words
    move the prediction."""
    import cv2
    import numpy as np

    names = list(results)
    values = [float(results[n]["median_depth"]) for n in names]
    top = max([v for v in values if math.isfinite(v)] + [true_median if math.isfinite(true_median) else 0.0, 1e-6])
    top *= 1.15
    bar, gap, left, bottom, height = 70, 30, 70, 215, 360
    width = left + len(names) * (bar + gap) + gap
    img = np.full((height + bottom + 40, max(width, 480), 3), 255, np.uint8)
    y0 = 40 + height  # the zero line

    def y(v: float) -> int:
        return int(round(y0 - v / top * height))

    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, "median predicted depth (m) per caption mode", (10, 25), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.line(img, (left, y0), (img.shape[1] - 10, y0), (0, 0, 0), 1)
    for k in range(5):
        v = top * k / 4
        cv2.putText(img, f"{v:.2f}", (5, y(v) + 4), font, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
    for k, (name, v) in enumerate(zip(names, values)):
        x = left + gap + k * (bar + gap)
        if math.isfinite(v):
            colour = (200, 120, 40) if name == "dataset" else (60, 160, 60) if name.startswith("template:") else \
                (90, 90, 200)
            cv2.rectangle(img, (x, y(v)), (x + bar, y0), colour, -1)
            cv2.putText(img, f"{v:.2f}", (x + 5, y(v) - 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        label = name if len(name) <= 28 else name[:27] + "~"
        label_img = np.full((20, 200, 3), 255, np.uint8)  # the name, written along the bar (rotated)
        cv2.putText(label_img, label.encode("ascii", "replace").decode(), (2, 15), font, 0.42, (0, 0, 0), 1,
                    cv2.LINE_AA)
        rotated = cv2.rotate(label_img, cv2.ROTATE_90_COUNTERCLOCKWISE)  # (200, 20)
        img[y0 + 5:y0 + 205, x + bar // 2 - 10:x + bar // 2 + 10] = np.minimum(
            img[y0 + 5:y0 + 205, x + bar // 2 - 10:x + bar // 2 + 10], rotated)
    if math.isfinite(true_median):
        cv2.line(img, (left, y(true_median)), (img.shape[1] - 10, y(true_median)), (0, 0, 220), 1)
        cv2.putText(img, f"true {true_median:.2f}", (img.shape[1] - 90, y(true_median) - 5), font, 0.4,
                    (0, 0, 220), 1, cv2.LINE_AA)
    write_array(path, img[:, :, ::-1], what=f"the scale plot {path}")  # drawn in OpenCV's BGR

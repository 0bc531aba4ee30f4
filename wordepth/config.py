"""Rules that read a parsed training/evaluation configuration (an ``argparse.Namespace``).

The options themselves are defined in :mod:`wordepth.cli.options`. Here: which network settings
win (flag, else checkpoint, else the dataset's default), the evaluation crop and KITTI protocol,
and the record of the protocol that goes next to the numbers.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging

from wordepth.data.facts import DATASETS, NYU
from wordepth.models.wordepth import PRESETS
from wordepth.variants import get_variant

log = logging.getLogger("wordepth")

DEFAULT_PRESET = "swin_large"


def model_overrides(args: argparse.Namespace, stored: dict | None = None, source: str = "the checkpoint") -> dict:
    """legacy / max_depth / prior_mean for the network: the command line if given, else the
    checkpoint's own config (``stored``), else the dataset's defaults (the original configs' values).

    A flag that contradicts what a checkpoint of this project records (``stored``; the original
    release's checkpoints record nothing) is an error unless ``--force_config`` is given.

    Raises:
        ValueError: a contradiction, naming both values and ``source`` (the checkpoint file).
    """
    if stored is not None:
        check_flags_against_checkpoint(args, stored, source)
    facts = DATASETS.get(args.dataset, NYU)
    defaults = {"legacy": False, "max_depth": facts.max_depth, "prior_mean": facts.prior_mean}
    out = {}
    for key, default in defaults.items():
        given = getattr(args, key, None)
        out[key] = given if given is not None else (stored or {}).get(key, default)
    return out


def preset_of(backbone) -> str:
    """The preset name of a backbone config (a ``SwinConfig`` or its dict), e.g. ``tiny``; else a description."""
    bb = backbone if isinstance(backbone, dict) else dataclasses.asdict(backbone)

    def shape(cfg: dict) -> tuple:
        return tuple(tuple(v) if isinstance(v, (list, tuple)) else v
                     for v in (cfg.get(k) for k in ("embed_dim", "depths", "num_heads", "window_size")))

    for name, preset in PRESETS.items():
        if shape(bb) == shape(dataclasses.asdict(preset)):
            return name
    return f"custom Swin (embed_dim {bb.get('embed_dim')}, depths {tuple(bb.get('depths') or ())})"


def check_flags_against_checkpoint(args: argparse.Namespace, stored: dict, source: str) -> None:
    """--legacy / --max_depth / --prior_mean / --preset against a checkpoint's recorded model config.

    Raises:
        ValueError: a given flag differs from the record (``--force_config`` lets the three
            settings through; the network size of a checkpoint can never change).
    """
    variant = getattr(args, "variant", None)
    via = f" (from --variant {variant})" if variant else ""
    conflicts = []
    for key in ("legacy", "max_depth", "prior_mean"):
        given, recorded = getattr(args, key, None), stored.get(key)
        if given is None or recorded is None:
            continue
        if key == "legacy":
            if bool(given) != bool(recorded):
                conflicts.append(f"--legacy{via} but {source} records legacy={bool(recorded)} (the current model)")
        elif abs(float(given) - float(recorded)) > 1e-6 * max(1.0, abs(float(recorded))):
            conflicts.append(f"--{key} {float(given):g}{via} but {source} records {key}={float(recorded):g}")
    preset = getattr(args, "preset", None)
    if preset is not None and isinstance(stored.get("backbone"), dict):
        recorded = preset_of(stored["backbone"])
        if recorded != preset:
            raise ValueError(f"--preset {preset} but {source} holds a {recorded} network: a checkpoint's network "
                             "size cannot change; leave --preset out")
    if conflicts and getattr(args, "force_config", False):
        log.warning("--force_config: %s; the flag's value is used", "; ".join(conflicts))
    elif conflicts:
        raise ValueError("; ".join(conflicts) + ": leave the flag out to use the checkpoint's setting, or add "
                         "--force_config to override it")


def eval_crop(args: argparse.Namespace) -> str | None:
    """The original's crop choice: Garg wins over Eigen when both are set."""
    return "garg" if args.garg_crop else "eigen" if args.eigen_crop else None


def kitti_full_frame(args: argparse.Namespace) -> bool:
    """KITTI evaluation pastes KB-cropped predictions into the full-size ground truth (BTS protocol).

    Otherwise (the original's online evaluation, the paper's numbers) the ground truth is KB-cropped
    like the image and the crop fractions apply to the 352x1216 map.
    """
    return args.dataset == "kitti" and args.do_kb_crop and args.full_frame_eval


def eval_protocol(args: argparse.Namespace) -> dict:
    """How the numbers were computed, as recorded next to them (``--metrics_json``, run metrics)."""
    protocol = {"dataset": args.dataset, "crop": eval_crop(args), "min_depth_eval": args.min_depth_eval,
                "max_depth_eval": args.max_depth_eval, "kb_crop": args.dataset == "kitti" and args.do_kb_crop}
    if protocol["kb_crop"]:
        protocol["kitti_ground_truth"] = "full_frame" if kitti_full_frame(args) else "kb_cropped (original)"
    return protocol


def apply_variant(args: argparse.Namespace) -> None:
    """Fill in what ``--variant`` says and the dataset's defaults, in place; explicit flags win.

    ``--variant`` sets the dataset, ``legacy``, ``max_depth``, ``prior_mean`` (as if given as
    flags, so they take precedence over a checkpoint's record) and the evaluation crop when no crop
    flag is given. Without a dataset the default is NYU; without ``--max_depth_eval`` the dataset's
    maximum depth.

    Raises:
        ValueError: the variant's dataset contradicts ``--dataset``.
    """
    if getattr(args, "variant", None) is not None:
        variant = get_variant(args.variant)
        if args.dataset is not None and args.dataset != variant.dataset.name:
            raise ValueError(f"--variant {variant.name} is a {variant.dataset.name} model, "
                             f"but --dataset {args.dataset} was given")
        args.dataset = variant.dataset.name
        for key, value in variant.model_fields.items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
        if not (args.garg_crop or args.eigen_crop):
            setattr(args, f"{variant.dataset.eval_crop}_crop", True)
    if args.dataset is None:
        args.dataset = "nyu"
    if args.max_depth_eval is None:
        facts = DATASETS.get(args.dataset)
        args.max_depth_eval = facts.max_depth if facts is not None else DATASETS["kitti"].max_depth

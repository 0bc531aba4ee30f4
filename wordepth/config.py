"""Rules that read a parsed training/evaluation configuration (an ``argparse.Namespace``).

The options themselves are defined in :mod:`wordepth.cli.options`. Here: which network settings
win (flag, else checkpoint, else the dataset's default), the evaluation crop and KITTI protocol,
and the record of the protocol that goes next to the numbers.
"""
from __future__ import annotations

import argparse


def model_overrides(args: argparse.Namespace, stored: dict | None = None) -> dict:
    """legacy / max_depth / prior_mean for the network: the command line if given, else the
    checkpoint's own config (``stored``), else the dataset's defaults (the original configs' values)."""
    from wordepth.datasets import DATASETS, NYU

    facts = DATASETS.get(args.dataset, NYU)
    defaults = {"legacy": False, "max_depth": facts.max_depth, "prior_mean": facts.prior_mean}
    out = {}
    for key, default in defaults.items():
        given = getattr(args, key, None)
        out[key] = given if given is not None else (stored or {}).get(key, default)
    return out


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

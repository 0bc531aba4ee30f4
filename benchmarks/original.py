"""The headline comparison: the original WorDepth network itself against this project.

The original is imported from a checkout given by path (``--original PATH``, a folder holding
``src/networks/wordepth.py`` and ``src/networks/swin_transformer.py``) the way the reference data
was made: ``src/networks`` is imported as a package (it uses relative imports such as
``from .swin_transformer import SwinTransformer``) and its ``.cuda()`` calls are no-ops. Both
networks get the same weights (this project's, in the original's state-dict layout) and are timed
interleaved in one process; the report gives the ratio to the original, the largest relative
difference of the outputs, and the timm yardstick as a second column. The fast CPU paths (bf16
autocast, ONNX Runtime) are timed in the same rounds.
"""
from __future__ import annotations

import contextlib
import importlib
import statistics
import sys
import tempfile
import types
import zlib
from pathlib import Path

import torch
import torch.nn as nn

from benchmarks.common import Settings, interleaved, rel_diff, yardstick
from benchmarks.fast_paths import fast_path_functions
from wordepth.checkpoints import load_checkpoint, project_to_original
from wordepth.checkpoints.layouts import strip_prefix
from wordepth.models.wordepth import WorDepth, preset_config
from wordepth.runtime import compile_for_inference, cpu_native_bf16

ORIGINAL_FILES = ("src/networks/wordepth.py", "src/networks/swin_transformer.py")
# targets of issue "performance, round two" (ratios to the original's fp32 time)
ORIGINAL_TARGETS = {"eval_fp32": 0.75, "train_fp32": 0.8, "fast_cpu": 0.4, "fast_cpu_abs_rel_change": 0.005}


@contextlib.contextmanager
def cuda_calls_as_noops():
    """``Tensor.cuda()`` and ``Module.cuda()`` return their object unchanged (the original calls them)."""
    saved = torch.Tensor.cuda, nn.Module.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    nn.Module.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda = saved


def import_original(root: str | Path) -> type:
    """The ``WorDepth`` class of an original checkout at ``root`` (its ``src/networks`` as a package).

    Raises:
        SystemExit: ``root`` lacks the original's network files.
    """
    root = Path(root)
    missing = [f for f in ORIGINAL_FILES if not (root / f).is_file()]
    if missing:
        raise SystemExit(f"--original {root}: not a checkout of the original WorDepth repository "
                         f"(missing {', '.join(missing)})")
    networks = (root / "src" / "networks").resolve()
    name = f"_wordepth_original_{zlib.crc32(str(networks).encode()):08x}"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [str(networks)]
        sys.modules[name] = package
    return importlib.import_module(f"{name}.wordepth").WorDepth


def build_pair(s: Settings, original_root: str | Path, checkpoint: str | Path | None = None
               ) -> tuple[WorDepth, nn.Module]:
    """This project's network and the original's, with the same weights, in eval mode.

    Weights: ``checkpoint`` (an original-release file, loaded as the current NYU model), else this
    project's seeded random initialisation; the original receives them in its own layout.
    """
    if checkpoint is not None:
        ours = load_checkpoint(checkpoint, variant="nyu")
    else:
        torch.manual_seed(0)
        ours = WorDepth(preset_config(s.preset))
    cfg = ours.cfg
    original_cls = import_original(original_root)
    with cuda_calls_as_noops():
        # alter_prob 0: the original draws its branch with random.random() even in eval; 0 = image branch
        original = original_cls(pretrained=None, max_depth=cfg.max_depth, prior_mean=cfg.prior_mean,
                                img_size=tuple(4 * g for g in cfg.backbone.ape_grid), alter_prob=0.0)
    original.load_state_dict(strip_prefix(project_to_original(ours)), strict=True)
    return ours.eval(), original.eval()


def bench_original(s: Settings, runs: int, original_root: str | Path | None,
                   checkpoint: str | Path | None = None, fast_paths: bool = True, force_bf16: bool = False,
                   compile: bool = False) -> dict:
    """Eval forward and training step of the original and this project, interleaved, same weights.

    The eval rows: the original (float32), this project in float32 and on its fast CPU paths
    (:func:`benchmarks.fast_paths.fast_path_functions`: bf16 where native, ONNX Runtime float32
    and int8), and the timm yardstick; ratios to the original and to the yardstick. ``compile``
    adds this project under ``wordepth.runtime.compile_for_inference`` (exact fp32; compiled in
    the warm-up round, about 2 minutes for Swin-L at 480x640 on 2 cores).
    """
    if original_root is None:
        return {"skipped": "no --original PATH given (a checkout of the original WorDepth repository)"}
    ours, original = build_pair(s, original_root, checkpoint)
    H, W = s.eval_hw
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(1, 3, H, W, generator=g), torch.randn(1, 1024, generator=g) * 0.05
    yard = yardstick(s, s.eval_hw).eval()
    outputs: dict[str, torch.Tensor] = {}

    def run(name, fn, *args):
        def call():
            outputs[name] = fn(*args)
        return call

    with tempfile.TemporaryDirectory(prefix="wordepth_onnx_") as tmp, cuda_calls_as_noops(), torch.no_grad():
        if fast_paths:
            paths, notes = fast_path_functions(ours, Path(tmp), bf16=force_bf16 or cpu_native_bf16(),
                                               example=(image, text))
        else:
            paths, notes = {"fp32": lambda i, t: ours(i, t)}, {}
        if compile:
            compiled = compile_for_inference(ours)
            paths = {"fp32": paths["fp32"], "fp32_compiled": lambda i, t: compiled(i, t),
                     **{k: v for k, v in paths.items() if k != "fp32"}}
        fns = {"original": run("original", original, image, text)}
        fns.update({f"project_{name}": run(f"project_{name}", fn, image, text) for name, fn in paths.items()})
        fns["yardstick"] = lambda: yard(image)
        rows = interleaved(fns, runs, reference="original")
    for name, row in rows.items():
        row["ratio_to_original"] = row.pop("ratio")
        row["ratio_cpu_to_original"] = row.pop("ratio_cpu")
        row["ratio_to_yardstick"] = _median_ratio(row["wall_runs"], rows["yardstick"]["wall_runs"])
        if name in outputs:
            row["max_rel_diff_to_original"] = rel_diff(outputs[name], outputs["original"])
            row["max_rel_diff_to_project_fp32"] = rel_diff(outputs[name], outputs["project_fp32"])
    eval_sec = {"size": [H, W], "batch": 1, "rows": rows, "notes": notes}

    train = bench_original_train(s, runs, ours, original)
    return {"original": str(original_root), "weights": str(checkpoint) if checkpoint else "seeded random init",
            "eval": eval_sec, "train": train, "targets": ORIGINAL_TARGETS}


def bench_original_train(s: Settings, runs: int, ours: WorDepth, original: nn.Module) -> dict:
    """Training step (forward + backward, image branch) of both networks and the yardstick."""
    H, W = s.train_hw
    g = torch.Generator().manual_seed(1)
    image, text = torch.randn(1, 3, H, W, generator=g), torch.randn(1, 1024, generator=g) * 0.05
    gt = torch.rand(1, 1, H, W, generator=g) * 8 + 0.5
    yard = yardstick(s, s.train_hw).train()
    ours.train()
    original.train()

    def original_step():
        original.zero_grad(set_to_none=True)
        original(image, text, gt)[1].backward()  # (depth, loss); alter_prob 0: the image branch

    def project_step():
        ours.zero_grad(set_to_none=True)
        ours.training_loss(image, text, gt, "image")["loss"].backward()

    def yard_step():
        yard.zero_grad(set_to_none=True)
        sum(f.mean() for f in yard(image)).backward()

    try:
        with cuda_calls_as_noops():
            rows = interleaved({"original": original_step, "project_fp32": project_step, "yardstick": yard_step},
                               runs, reference="original")
    finally:
        ours.eval()
        original.eval()
    for row in rows.values():
        row["ratio_to_original"] = row.pop("ratio")
        row["ratio_cpu_to_original"] = row.pop("ratio_cpu")
        row["ratio_to_yardstick"] = _median_ratio(row["wall_runs"], rows["yardstick"]["wall_runs"])
    return {"size": [H, W], "batch": 1, "branch": "image", "rows": rows}


def _median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))

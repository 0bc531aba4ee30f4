"""The fast CPU inference paths and what they cost in accuracy.

Paths: bf16 autocast (``Predictor(precision="bf16")``), the ONNX graph run by ONNX Runtime in
float32 (``wordepth-export``), and that graph with int8 dynamic quantization of its matrix
products (``wordepth-export --int8``). For each: the largest relative depth deviation from this
project's float32 output on the golden inputs (``../shared/reference/golden_outputs.pt``, else
the synthetic images), and the change of the 9 metrics on a synthetic NYU evaluation set. Their
speed against the original is timed in the ``original`` section.

bf16 runs only where the CPU computes in bfloat16 natively (AVX512-BF16 or AMX flags): elsewhere
PyTorch emulates it, 70x (matrix products) to 370x (convolutions) slower than float32 (measured
on an AVX2 EPYC), and the row is skipped with that note unless ``--force-bf16``.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.common import Settings
from wordepth.checkpoints import load_checkpoint
from wordepth.data import NYUDataset, collate
from wordepth.data.generated.synthetic import make_synthetic_dataset
from wordepth.data.facts import NYU
from wordepth.evaluation import evaluate
from wordepth.metrics import METRIC_NAMES
from wordepth.models.wordepth import WorDepth, preset_config
from wordepth.runtime import autocast, cpu_native_bf16

REFERENCE_DIR = Path(os.environ.get("WORDEPTH_REFERENCE_DIR", Path(__file__).resolve().parents[1].parent
                                    / "shared" / "reference"))


class _Callable(torch.nn.Module):
    """An ``(image, text) -> depth`` function as a module, for ``wordepth.evaluation.evaluate``."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.fn(image, text)


def fast_path_functions(model: WorDepth, tmp: Path, bf16: bool, example: tuple[torch.Tensor, torch.Tensor]
                        ) -> tuple[dict[str, Callable], dict[str, str]]:
    """``name -> (image, text) -> depth`` for fp32 and each fast path available here, and notes on the others."""
    cpu = torch.device("cpu")
    fns: dict[str, Callable] = {"fp32": lambda image, text: model(image, text)}
    notes = {}
    if bf16:
        def run_bf16(image, text):
            with autocast(cpu, "bf16"):
                return model(image, text).float()
        fns["bf16"] = run_bf16
    else:
        notes["bf16"] = ("skipped: this CPU has no native bfloat16 (no avx512_bf16 / amx_bf16 flag); PyTorch "
                         "emulates it 70-370x slower than float32 (--force-bf16 runs it anyway)")
    try:
        from wordepth.inference.export import OnnxDepthModel, export_onnx, quantize_int8
    except ImportError as err:
        notes["onnx"] = notes["onnx_int8"] = f"skipped: onnx / onnxruntime not installed ({err.name})"
        return fns, notes
    path = export_onnx(model, tmp / "wordepth.onnx", example=example)
    threads = torch.get_num_threads()
    for name, graph in (("onnx", path), ("onnx_int8", quantize_int8(path, tmp / "wordepth_int8.onnx"))):
        runner = OnnxDepthModel(graph, threads=threads)
        fns[name] = lambda image, text, r=runner: torch.from_numpy(r(image.numpy(), text.numpy()))
    return fns, notes


def golden_inputs(s: Settings) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The golden inputs of the reference data (Swin-L runs), else random ones of the run's size."""
    golden = REFERENCE_DIR / "golden_outputs.pt"
    if s.preset == "swin_large" and golden.is_file():
        g = torch.load(golden, map_location="cpu", weights_only=True)
        return g["nyu_image"].float(), g["nyu_text"].float(), str(golden)
    gen = torch.Generator().manual_seed(0)
    H, W = s.image_hw
    return torch.randn(2, 3, H, W, generator=gen), torch.randn(2, 1024, generator=gen) * 0.05, "random inputs"


def bench_fast_paths(s: Settings, checkpoint: str | Path | None = None, force_bf16: bool = False,
                     n_images: int | None = None) -> dict:
    """Deviation from float32 on the golden inputs and metric changes on synthetic NYU, per fast path."""
    if checkpoint is not None:
        model = load_checkpoint(checkpoint, variant="nyu")
    else:
        torch.manual_seed(0)
        model = WorDepth(preset_config(s.preset)).eval()
    image, text, source = golden_inputs(s)
    H, W = s.image_hw
    with tempfile.TemporaryDirectory(prefix="wordepth_fast_") as tmp, torch.no_grad():
        tmp = Path(tmp)
        fns, notes = fast_path_functions(model, tmp, bf16=force_bf16 or cpu_native_bf16(),
                                         example=(torch.zeros(1, 3, -(-H // 32) * 32, -(-W // 32) * 32),
                                                  torch.zeros(1, 1024)))
        outputs = {name: fn(image, text) for name, fn in fns.items()}
        ref = outputs["fp32"]
        deviation = {name: ((out - ref).abs() / ref.abs()).max().item() for name, out in outputs.items()
                     if name != "fp32"}
        median_deviation = {name: ((out - ref).abs() / ref.abs()).median().item() for name, out in outputs.items()
                            if name != "fp32"}

        paths = make_synthetic_dataset(tmp / "data", "nyu", n_train=0, n_test=n_images or s.n_images,
                                       height=H, width=W)
        ds = NYUDataset(paths["test_split"], paths["data_path_eval"], paths["gt_path_eval"], paths["text_feat_dir"],
                        mode="eval", input_height=H, input_width=W)
        loader = DataLoader(ds, batch_size=1, collate_fn=collate)
        metrics = {}
        for name, fn in fns.items():
            with contextlib.redirect_stderr(open(os.devnull, "w")):
                res = evaluate(_Callable(fn), loader, dataset="nyu", min_depth=NYU.min_depth_eval,
                               max_depth=NYU.max_depth, crop=NYU.eval_crop, kb_crop=False,
                               device=torch.device("cpu"), progress=False)
            metrics[name] = res.metrics
    change = {name: {k: (m[k] - metrics["fp32"][k]) / abs(metrics["fp32"][k]) for k in METRIC_NAMES}
              for name, m in metrics.items() if name != "fp32"}
    return {"weights": str(checkpoint) if checkpoint else "seeded random init", "golden_inputs": source,
            "golden_shape": list(image.shape), "max_rel_deviation_from_fp32": deviation,
            "median_rel_deviation_from_fp32": median_deviation, "synthetic_nyu": {"images": len(ds), "size": [H, W]},
            "metrics": metrics, "metric_rel_change": change, "notes": notes}

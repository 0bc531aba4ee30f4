"""``sh scripts/gpu_checks.sh`` (``python -m wordepth.cli.gpu_checks``): the GPU claims of docs/training.md,
checked on one CUDA card in a few minutes, one line each: ``holds``, ``does not hold`` or ``skipped``, with
the figure behind it.

The CPU test suite checks each claim with what a CPU can show (synchronisations counted by a
dispatch mode, gloo processes, CPU autocast); this program checks what only a GPU shows. Tiny preset,
synthetic data, nothing downloaded. The claims, in the order they run:

1. ``--deterministic``: two 20-step training runs give bit-identical weights and optimizer state
   (first, before anything else starts cuBLAS: ``CUBLAS_WORKSPACE_CONFIG`` is set at start-up).
2. The training forward and backward of both branches, and the inference forward, make no host-device
   synchronisation (``torch.cuda.set_sync_debug_mode("error")``), current and legacy model.
3. Under bf16 autocast the depth head (metric head, log-depth -> depth) runs in float32 and equals its
   float32 result to 1e-6 (relative).
4. fp16: a run whose gradients are NaN on every step stops after ``--max_nonfinite_steps`` (default 20).
5. DDP without ``find_unused_parameters``: skipped on one card (tests/test_ddp.py, 2 gloo processes).
6. ``--compile``: one TorchDynamo graph per branch and input size, none per step.

Exit status: 0 every claim holds (skipped lines aside), 1 at least one does not hold,
:data:`NO_CUDA_EXIT` (77, the usual "skipped" status of test harnesses) without a CUDA device:
nothing is checked, one ``error:`` line says why.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

NO_CUDA_EXIT = 77
STEPS = 20  # per deterministic run
H, W = 64, 96  # the tiny runs' input size (multiples of 32)


@dataclass
class Claim:
    """One checked claim: ``holds`` is None when it was skipped."""

    name: str
    holds: bool | None
    figure: str

    def line(self) -> str:
        verdict = "skipped" if self.holds is None else "holds" if self.holds else "does not hold"
        return f"{verdict}: {self.name}: {self.figure}"


def _tiny(legacy: bool = False, device: str | torch.device = "cuda"):
    from wordepth.models.wordepth import WorDepth, preset_config

    torch.manual_seed(0)
    return WorDepth(preset_config("tiny", drop_path_rate=0.0, legacy=legacy)).to(device).train()


def _batch(device, h: int = H, w: int = W, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {"image": torch.randn(2, 3, h, w, generator=g), "depth": 1 + 4 * torch.rand(2, 1, h, w, generator=g),
             "text_feature": torch.randn(2, 1024, generator=g)}
    return {k: v.to(device) for k, v in batch.items()}


# --------------------------------------------------------------------------- the claims
def check_deterministic(work: Path, device: str = "cuda") -> Claim:
    """Two ``--deterministic`` runs of :data:`STEPS` steps through ``wordepth-train``: every tensor of the
    model and optimizer state of their ``last.pth`` equal, bit for bit."""
    from wordepth.checkpoints import load_training_state
    from wordepth.cli import train as train_cli
    from wordepth.data.generated.synthetic import make_synthetic_dataset

    name = f"--deterministic: two {STEPS}-step runs give bit-identical weights"
    data = make_synthetic_dataset(work / "data", "nyu", n_train=8, n_test=2, height=H, width=W, seed=0)
    states = []
    for run in ("a", "b"):
        train_cli.main([
            "--preset", "tiny", "--dataset", "nyu", "--data_path", str(data["data_path"]), "--gt_path",
            str(data["gt_path"]), "--filenames_file", str(data["train_split"]), "--text_feat_dir",
            str(data["text_feat_dir"]), "--data_path_eval", str(data["data_path_eval"]), "--gt_path_eval",
            str(data["gt_path_eval"]), "--filenames_file_eval", str(data["test_split"]), "--input_height", str(H),
            "--input_width", str(W), "--batch_size", "2", "--max_steps", str(STEPS), "--num_epochs", "100",
            "--num_threads", "0", "--log_directory", str(work / "runs"), "--model_name", run, "--no_tqdm",
            "--learning_rate", "1e-3", "--max_depth", "10", "--max_depth_eval", "10", "--seed", "5",
            "--drop_path_rate", "0.1", "--device", device, "--deterministic"])
        states.append(load_training_state(work / "runs" / run / "last.pth"))
    a, b = ({**_tensors(s["model"], "model"), **_tensors(s["optimizer"], "optimizer")} for s in states)
    if a.keys() != b.keys():
        return Claim(name, False, "the two checkpoints hold different tensors")
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    if not differ:
        return Claim(name, True, f"{len(a)} model and optimizer tensors, 0 differ")
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in differ)
    return Claim(name, False, f"{len(differ)} of {len(a)} tensors differ (first {differ[0]}), "
                              f"largest difference {worst:.3g}")


def _tensors(obj, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor of a nested state, by path."""
    if torch.is_tensor(obj):
        return {prefix: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, item in items for k, v in _tensors(item, f"{prefix}/{key}").items()}


def check_no_host_sync(device: str = "cuda") -> Claim:
    """Forward + backward of both branches and the inference forward under ``set_sync_debug_mode("error")``,
    after one warm-up pass (CUDA's lazy start-up may synchronise once)."""
    name = "the forward and backward make no host-device synchronisation"
    batch = _batch(device)
    passes = 0
    for legacy in (False, True):
        model = _tiny(legacy, device)

        def run():
            for branch in ("image", "text"):
                model.zero_grad(set_to_none=True)
                model(batch["image"], batch["text_feature"], depth_gt=batch["depth"], branch=branch)["loss"].backward()
            with torch.no_grad():
                model.eval()(batch["image"], batch["text_feature"])
            model.train()

        run()  # warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            run()
        except RuntimeError as err:
            where = "legacy" if legacy else "current"
            return Claim(name, False, f"{where} model: {str(err).splitlines()[0][:200]}")
        finally:
            torch.cuda.set_sync_debug_mode("default")
        passes += 3
    return Claim(name, True, f"{passes} passes (current and legacy; image and text training, inference), 0 syncs")


def check_bf16_depth_head(device: str = "cuda") -> Claim:
    """The metric head and the output layer under bf16 autocast against float32, on the same inputs."""
    name = "bf16 autocast: the depth head runs in float32"
    model = _tiny(False, device).eval()
    batch = _batch(device)
    with torch.no_grad():
        x5 = model.backbone(batch["image"])[-1]  # stride 32: the metric head's input
        feats = model.encode_image(batch["image"])
        mean, std, logvar = model.encode_text(batch["text_feature"])
        z, _ = model.sample("image", feats["x"], mean, std, logvar)
        latents = model.decode(z, feats["x"], feats["x3"], feats["x2"])

        def head():
            return model.to_depth(latents, model.mlayer(x5), "image")

        reference = head()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            got = head()
            whole = model(batch["image"], batch["text_feature"])
    rel = ((got.double() - reference.double()).abs() / reference.double().abs()).max().item()
    holds = got.dtype == whole.dtype == torch.float32 and rel <= 1e-6
    return Claim(name, holds, f"depth head output {str(got.dtype).removeprefix('torch.')}, network output "
                              f"{str(whole.dtype).removeprefix('torch.')}, largest relative difference to float32 "
                              f"{rel:.2g} (at most 1e-6)")


def check_fp16_nan_stops(device: str = "cuda") -> Claim:
    """The training loop with fp16 autocast and its GradScaler, every gradient NaN from the second step."""
    from wordepth.engine import LoopSettings, Trainer, TrainingStopped
    from wordepth.runtime import Runtime

    settings = LoopSettings(total_steps=200, lr=1e-4, end_lr=1e-5, amp="fp16")
    name = f"fp16: a run with NaN gradients on every step stops (--max_nonfinite_steps {settings.max_nonfinite_steps})"
    model = _tiny(False, device)
    batches = [_batch(device, seed=i) for i in range(4)]
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=1e-4), batches * 50, settings,
                      rt=Runtime(torch.device(device)))
    real_step = trainer.train_step

    def step(batch):
        if trainer.global_step == 1:
            for p in model.parameters():
                p.register_hook(lambda g: g * float("nan"))
        return real_step(batch)

    trainer.train_step = step
    try:
        trainer.train()
    except TrainingStopped as stop:
        within = trainer.global_step <= settings.max_nonfinite_steps + 1
        return Claim(name, within, f"stopped after step {trainer.global_step - 1}: {str(stop)[:300]}")
    return Claim(name, False, f"ran all {trainer.global_step} steps; GradScaler's scale "
                              f"{trainer.scaler.get_scale():.3g}")


def check_ddp() -> Claim:
    return Claim("DDP without find_unused_parameters, the trajectory of one process", None,
                 "needs 2 GPUs; tests/test_ddp.py checks it with 2 gloo processes")


def check_compile_graphs(device: str = "cuda", backend: str = "aot_eager") -> Claim:
    """``--compile``'s path (:func:`wordepth.runtime.distribute`, the loop's step): 2 input sizes x 2
    branches x 2 steps, TorchDynamo graphs counted per step."""
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    from wordepth.engine import LoopSettings, Trainer
    from wordepth.runtime import Runtime, distribute

    name = "--compile: one graph per branch and input size, none per step"
    torch._dynamo.reset()
    counters.clear()
    model = _tiny(False, device)
    rt = Runtime(torch.device(device))
    graphs = CompileCounterWithBackend(backend)
    net, grads = distribute(model, rt, compile=True, compile_backend=graphs)
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=1e-4), [],
                      LoopSettings(total_steps=100, lr=1e-4, end_lr=1e-5), rt=rt, net=net, branch_grads=grads)
    first = later = 0
    sizes = [(64, 64), (64, 96)]
    try:
        for h, w in sizes:
            for branch in ("image", "text"):
                trainer.model.choose_branch = lambda gen, b=branch: b
                for step in range(2):
                    before = graphs.frame_count
                    trainer.train_step(_batch(device, h, w, seed=step))
                    if step == 0:
                        first += graphs.frame_count - before
                    else:
                        later += graphs.frame_count - before
    finally:
        torch._dynamo.reset()
    breaks = sum(counters["graph_break"].values())
    holds = first == 2 * len(sizes) and later == 0 and breaks == 0
    return Claim(name, holds, f"{first} graphs at the first steps of 2 sizes x 2 branches (4 expected), {later} "
                              f"at later steps, {breaks} graph breaks (backend {backend})")


# --------------------------------------------------------------------------- the program
def run_checks(work: Path, device: str = "cuda", backend: str = "aot_eager",
               report: Callable[[str], None] = print) -> list[Claim]:
    """Every claim, in order; a check that fails with an error does not hold, its error the figure."""
    checks: list[tuple[str, Callable[[], Claim]]] = [
        ("--deterministic: two runs give bit-identical weights", lambda: check_deterministic(work, device)),
        ("the forward and backward make no host-device synchronisation", lambda: check_no_host_sync(device)),
        ("bf16 autocast: the depth head runs in float32", lambda: check_bf16_depth_head(device)),
        ("fp16: a run with NaN gradients on every step stops", lambda: check_fp16_nan_stops(device)),
        ("DDP", check_ddp),
        ("--compile: one graph per branch and input size", lambda: check_compile_graphs(device, backend)),
    ]
    claims = []
    logging.disable(logging.INFO)  # the training runs' progress lines; warnings still show
    try:
        for name, check in checks:
            claims.append(_run_one(name, check, report))
    finally:
        logging.disable(logging.NOTSET)
    return claims


def _run_one(name: str, check: Callable[[], Claim], report: Callable[[str], None]) -> Claim:
    start = time.perf_counter()
    try:
        claim = check()
    except (Exception, SystemExit) as err:  # noqa: BLE001 - a check's own failure is its figure
        text = str(err).splitlines()[0][:200] if str(err) else ""
        claim = Claim(name, False, f"{type(err).__name__}: {text}")
    report(f"{claim.line()} [{time.perf_counter() - start:.0f} s]")
    return claim


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu_checks.sh", description="Check the GPU claims on one CUDA card (a few minutes): one line per "
        f"claim. Exit status 0: all hold; 1: one does not; {NO_CUDA_EXIT}: no CUDA device.")
    parser.add_argument("--compile_backend", default="aot_eager", choices=["eager", "aot_eager", "inductor"],
                        help="TorchDynamo backend of the compile check (default aot_eager: graphs are counted the "
                             "same, without Inductor's code generation; 'inductor' is what training uses, slower)")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(f"error: the GPU checks need a CUDA device; torch {torch.__version__} ({built}) sees none: nothing "
              f"checked (exit status {NO_CUDA_EXIT})", file=sys.stderr)
        raise SystemExit(NO_CUDA_EXIT)
    from wordepth.reproducibility import set_cublas_workspace

    set_cublas_workspace()  # before anything starts cuBLAS: the deterministic runs need it
    print(f"GPU checks on {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="wordepth-gpu-checks-") as work:
        claims = run_checks(Path(work), backend=args.compile_backend,
                            report=lambda line: print(line, flush=True))
    failed = [c for c in claims if c.holds is False]
    print(f"{len(claims) - len(failed)} of {len(claims)} claims hold or were skipped", flush=True)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()

"""Speed and memory of WorDepth on this machine, each figure against a yardstick in the same run.

Every timing runs its yardstick and its candidates in one process, interleaved (the order is
reversed every other round), and reports medians of ``--runs`` rounds after a warm-up, as wall
time and as process CPU time, plus the median of the per-round ratios to the yardstick. Memory is
measured in a fresh subprocess per configuration.

Sections (``--only`` picks some):
  eval    forward, no grad, 1x3x480x640; yardstick: timm ``swin_large_patch4_window12_384``
          (``features_only``, random weights) at the same size.
  train   forward + backward of the image branch, 1x3x256x320; yardstick: the timm Swin's
          forward + backward.
  memory  peak RSS growth of one training step at 480x640 batch 4, with and without gradient
          checkpointing of the Swin blocks (plus the bytes autograd keeps for backward).
  data    one NYU training sample (decode, rotate, crop, augment, normalise; one thread);
          yardstick: decoding its JPEG and depth PNG with PIL.
  text    a batch's text features from the packed store vs. per-sample ``torch.load``.
  gpu     images/s and peak memory at batch 4: fp32, bf16 autocast, bf16 autocast + compile
          (skipped with a note without CUDA).
  profile torch.profiler of one evaluation forward: time per Swin stage / model stage and the
          top operators.
  original  the headline: the original network itself (``--original PATH``, a checkout of the
          original repository) and this project, interleaved on the same weights: eval forward
          (fp32 and the fast CPU paths) and training step; ratio to the original, output
          difference, the yardstick as a second column.
  fastpaths bf16 / ONNX Runtime / ONNX int8: deviation from fp32 on the golden inputs and the
          change of the 9 metrics on a synthetic NYU evaluation set.
  predict the ``wordepth-predict`` command end to end on one 480x640 photo and on 20.
  rate    work counted by ``torch.utils.flop_counter`` (GFLOP) over time for the evaluation forward
          (480x640) and the image-branch training step (256x320), against a 4096x4096 sgemm in the
          same process: how close the model runs to the machine's matrix-multiply rate.

Model variants: ``original_like`` (explicit softmax attention and convolutions on the current
model's zero maps, as the original code computes), ``before`` (fused attention), ``after``
(fused attention, the fast paths: ``WorDepth.fast_paths``), ``after_channels_last``.

    python -m benchmarks.benchmark --out bench.json          # Swin-L, full sizes: tens of minutes on 2 cores
    python -m benchmarks.benchmark --quick --out bench.json  # tiny preset, tiny sizes: seconds
    python -m benchmarks.benchmark --only original --original ../WorDepth --checkpoint ref.pth --runs 5
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import FULL, QUICK, TARGETS, machine_info
from benchmarks.data_loading import bench_data, bench_text
from benchmarks.memory import bench_memory
from benchmarks.fast_paths import bench_fast_paths
from benchmarks.model_speed import bench_eval, bench_gpu, bench_profile, bench_rate, bench_train
from benchmarks.original import bench_original
from benchmarks.predict_e2e import bench_predict

log = logging.getLogger("benchmark")

# memory first: its subprocesses then start from a small parent
SECTIONS = ("memory", "eval", "train", "rate", "original", "fastpaths", "predict", "data", "text", "gpu", "profile")


def print_report(res: dict) -> None:
    """Prints one block per section of ``res`` (what :func:`main` returns and ``--out`` writes)."""
    m = res["machine"]
    print(f"\nWorDepth benchmark ({res['preset']}{', quick' if res['quick'] else ''}) on {m['cpu']}, "
          f"{m['cores']} cores, {m['torch_threads']} threads, torch {m['torch']}")
    for key, title in (("eval", "eval forward"), ("train", "train step (image branch)")):
        if key in res:
            sec = res[key]
            print(f"\n{title} {sec['size'][0]}x{sec['size'][1]} batch {sec['batch']}: "
                  f"target <= {sec['target_ratio']}x yardstick")
            print(f"  {'':28s}{'wall s':>9s}{'cpu s':>9s}{'ratio':>8s}{'ratio cpu':>11s}")
            for name, row in sec["rows"].items():
                print(f"  {name:28s}{row['wall_s']:9.3f}{row['cpu_s']:9.3f}"
                      f"{row['ratio']:8.2f}{row['ratio_cpu']:11.2f}")
            if key == "eval":
                print(f"  max relative difference after vs before: {sec['max_rel_diff_after_vs_before']:.2e}")
    if "rate" in res:
        sec = res["rate"]
        print(f"\ncounted work over time, against the sgemm rate ({sec['sgemm_gflops']:.1f} GFLOP/s) on {m['cpu']}:")
        for name, row in sec["rows"].items():
            size = sec["eval_size"] if name == "eval_forward" else sec["train_size"]
            print(f"  {name:14s}{size[0]}x{size[1]}: {row['gflop']:8.1f} GFLOP (original {row['gflop_original']:.1f})"
                  f"  {row['s']:8.3f} s  {row['gflops']:7.1f} GFLOP/s  {row['ratio_to_sgemm']:5.2f}x sgemm")
    if "original" in res:
        print_original(res["original"])
    if "fastpaths" in res:
        print_fast_paths(res["fastpaths"])
    if "predict" in res:
        sec = res["predict"]
        print(f"\nwordepth-predict end to end, {sec['size'][0]}x{sec['size'][1]} photos, {sec['threads']} threads:")
        print(f"  imports alone {sec['import_s']:.2f} s; one photo {sec['one_photo_s']:.2f} s "
              f"(network forward {sec['forward_s']:.2f} s, the rest {sec['not_network_one_s']:.2f} s); "
              f"{sec['n_many']} photos {sec['many_photos_s']:.2f} s ({sec['per_extra_photo_s']:.2f} s per extra photo, "
              f"not the network {sec['not_network_many_s']:.2f} s)")
    print_rows(res, "memory",
               lambda sec: f"memory, training step {sec['size'][0]}x{sec['size'][1]} batch {sec['batch']}: "
                           f"target checkpointed <= {sec['target_ratio']}x original",
               lambda row: f"{'' if row['measured'] else '~'}peak RSS growth {row['peak_rss_growth_mb']:7.0f} MB "
                           f"({row['ratio_to_original_like']:.2f}x), saved for backward "
                           f"{row['saved_activations_mb']:8.0f} MB ({row['saved_ratio_to_original_like']:.2f}x)")
    print_rows(res, "data", lambda sec: f"NYU training sample {sec['image_size'][0]}x{sec['image_size'][1]}, one "
                                        f"thread: target <= {sec['target_ratio']}x PIL decode",
               lambda row: f"{row['per_sample_ms']:9.1f} ms/sample{row['ratio']:8.2f}x")
    if "text" in res:
        sec = res["text"]
        print(f"\ntext features, batch {sec['batch']}: per-file {sec['per_batch_ms']['per_file_torch_load']:.2f} "
              f"ms, packed {sec['per_batch_ms']['packed_store']:.3f} ms: {sec['speedup']:.0f}x "
              f"(target >= {sec['target_speedup']:.0f}x)")
    if "gpu" in res:
        sec = res["gpu"]
        if "skipped" in sec:
            print(f"\ngpu: skipped ({sec['skipped']})")
        else:
            print(f"\ngpu {sec['device']} {sec['size'][0]}x{sec['size'][1]} batch {sec['batch']}:")
            for name, row in sec["rows"].items():
                mfu = f"  MFU {row['mfu']:.1%}" if row.get("mfu") is not None else "  MFU n/a (card not in the peak table)"
                print(f"  {name:28s}{row['images_per_s']:9.2f} images/s  peak {row['peak_memory_mb'] or 0:8.0f} MB  "
                      f"{row['tflops_per_s']:7.1f} TFLOP/s{mfu}")
    if "profile" in res:
        sec = res["profile"]
        print(f"\nprofile (after, eval {sec['size'][0]}x{sec['size'][1]}): {sec['total_cpu_s']:.2f} s CPU")
        for name, t in sec["ranges_cpu_s"].items():
            print(f"  {name:28s}{t:9.3f} s  {t / sec['total_cpu_s']:6.1%}")
        print(sec["table"])


def print_rows(res: dict, key: str, title: Callable[[dict], str], row_text: Callable[[dict], str]) -> None:
    """Section ``key`` of ``res``, if there: ``title(section)``, then per entry of its ``rows`` the name and
    ``row_text(row)``."""
    if key not in res:
        return
    sec = res[key]
    print(f"\n{title(sec)}")
    for name, row in sec["rows"].items():
        print(f"  {name:28s}{row_text(row)}")


def print_original(sec: dict) -> None:
    """The headline table: the original network against this project (and the yardstick)."""
    if "skipped" in sec:
        print(f"\noriginal: skipped ({sec['skipped']})")
        return
    t = sec["targets"]
    print(f"\noriginal network ({sec['original']}) vs this project, weights: {sec['weights']}")
    for key, title, target in (("eval", "eval forward", f"fp32 <= {t['eval_fp32']}x, fast CPU <= {t['fast_cpu']}x"),
                               ("train", "train step (image branch)", f"<= {t['train_fp32']}x")):
        part = sec[key]
        print(f"  {title} {part['size'][0]}x{part['size'][1]} batch {part['batch']}: target {target} original")
        print(f"    {'':22s}{'wall s':>9s}{'cpu s':>9s}{'x original':>12s}{'x yardstick':>13s}{'max rel diff':>14s}")
        for name, row in part["rows"].items():
            diff = row.get("max_rel_diff_to_original")
            print(f"    {name:22s}{row['wall_s']:9.3f}{row['cpu_s']:9.3f}{row['ratio_to_original']:12.3f}"
                  f"{row['ratio_to_yardstick']:13.3f}{'' if diff is None else f'{diff:14.2e}'}")
        for name, note in part.get("notes", {}).items():
            print(f"    {name}: {note}")


def print_fast_paths(sec: dict) -> None:
    print(f"\nfast CPU paths vs fp32 (weights: {sec['weights']}; golden inputs: {sec['golden_inputs']}, "
          f"synthetic NYU: {sec['synthetic_nyu']['images']} images {sec['synthetic_nyu']['size'][0]}x"
          f"{sec['synthetic_nyu']['size'][1]})")
    for name, dev in sec["max_rel_deviation_from_fp32"].items():
        change = sec["metric_rel_change"][name]
        print(f"  {name:10s} max rel deviation {dev:.2e} (median {sec['median_rel_deviation_from_fp32'][name]:.2e}); "
              f"AbsRel {change['abs_rel']:+.3%}, RMSE {change['rms']:+.3%}, d1 {change['d1']:+.3%}")
    for name, note in sec["notes"].items():
        print(f"  {name}: {note}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny preset and tiny sizes (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds per measurement (median; >= 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the model timings (default: 2; 1 with --quick, where tiny "
                             "operators on a shared machine suffer from thread synchronisation)")
    parser.add_argument("--memory-batch", type=int, default=None, help="batch of the memory section (default 4)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--original", default=None, metavar="PATH",
                        help="a checkout of the original WorDepth repository (src/networks/...): the "
                             "original section times it against this project")
    parser.add_argument("--checkpoint", default=None,
                        help="an original-release checkpoint for the original, fastpaths and predict sections "
                             "(default: seeded random weights); e.g. ../shared/reference/make_reference_checkpoint.py")
    parser.add_argument("--force-bf16", action="store_true",
                        help="time bf16 autocast even on a CPU without native bfloat16 (very slow there)")
    parser.add_argument("--compile", action="store_true",
                        help="original section: also time this project under torch.compile with frozen weights "
                             "(eval.py --compile; about 2 minutes of compiling for Swin-L)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sections = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    if args.runs < 3:
        raise SystemExit("--runs must be at least 3 (medians of >= 3 runs)")
    if args.threads is None:
        args.threads = 1 if args.quick else 2
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else FULL
    res: dict = {"preset": s.preset, "quick": args.quick, "runs": args.runs, "machine": machine_info(),
                 "targets": TARGETS}
    with tempfile.TemporaryDirectory(prefix="wordepth_bench_") as tmp:
        for name in sections:
            log.info("benchmark: %s", name)
            t0 = time.perf_counter()
            if name == "eval":
                res["eval"] = bench_eval(s, args.runs)
            elif name == "train":
                res["train"] = bench_train(s, args.runs)
            elif name == "rate":
                res["rate"] = bench_rate(s, args.runs, sgemm_n=512 if args.quick else 4096)
            elif name == "memory":
                res["memory"] = bench_memory(s, args.quick, args.threads, args.memory_batch)
            elif name == "data":
                res["data"] = bench_data(s, args.runs, Path(tmp))
            elif name == "text":
                res["text"] = bench_text(s, args.runs, Path(tmp))
            elif name == "gpu":
                res["gpu"] = bench_gpu(s, args.runs)
            elif name == "profile":
                res["profile"] = bench_profile(s)
            elif name == "original":
                res["original"] = bench_original(s, args.runs, args.original, args.checkpoint,
                                                 force_bf16=args.force_bf16, compile=args.compile)
            elif name == "fastpaths":
                res["fastpaths"] = bench_fast_paths(s, args.checkpoint, force_bf16=args.force_bf16)
            elif name == "predict":
                # quick: the mechanics only (one round, 3 photos, the mean caption feature instead of CLIP)
                res["predict"] = bench_predict(s, 1 if args.quick else args.runs, Path(tmp), args.checkpoint,
                                               threads=args.threads, n_many=3 if args.quick else 20,
                                               caption=not args.quick)
            res.setdefault("section_seconds", {})[name] = time.perf_counter() - t0
            log.info("benchmark: %s took %.1f s", name, res["section_seconds"][name])
            gc.collect()
    res["machine"]["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print_report(res)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
        log.info("wrote %s", args.out)
    return res


if __name__ == "__main__":
    main()

"""``wordepth-demo`` (behind ``sh run_demo.sh``): synthetic data -> train (tiny preset) -> evaluate -> pictures.

Runs on a CPU without internet in a few minutes. Writes into OUT:
  data/                  the generated NYU-format dataset (images, depth PNGs, splits, captions, features)
  run/                   the training run (config.json, train.log, TensorBoard summary, last.pth)
  metrics.json           evaluation of the trained model (same keys as eval.py --metrics_json)
  baseline_metrics.json  a constant prediction (the mean training depth), for comparison
  vis/                   input / ground truth / prediction / abs-rel error per test image, worst-N summary
  prior_depth.png        depth maps sampled from a test caption alone (text branch)
  metrics.md             the two rows above as a Markdown table (docs/inference.md's demo table is this file)

(``python scripts/demo.py ...`` is the same.)
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from wordepth.cli import eval as eval_cli
from wordepth.cli import train as train_cli
from wordepth.compare import markdown_table
from wordepth.data.generated.synthetic import make_synthetic_dataset, synthetic_paths
from wordepth.demo.pipeline import mean_depth_baseline, prior_picture
from wordepth.outputs import write_text

# The labels of OUT/metrics.md's rows (docs/inference.md's demo table is that file, pasted).
TABLE_LABELS = ("WorDepth-tiny", "mean-depth")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="wordepth-demo", description=__doc__.splitlines()[0].strip("`"))
    p.add_argument("--out", default="./demo_output")
    p.add_argument("--steps", type=int, default=600, help="training steps")
    p.add_argument("--n_train", type=int, default=96)
    p.add_argument("--n_test", type=int, default=16)
    p.add_argument("--height", type=int, default=96)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--no_tqdm", action="store_true")
    p.add_argument("--reuse", action="store_true", help="skip data generation/training if OUT already has them")
    return p.parse_args(argv)


def train_argv(a: argparse.Namespace, paths: dict, out: Path) -> list[str]:
    """The ``wordepth-train`` options of the demo run (``wordepth-eval`` takes them too)."""
    return [
        "--model_name", "run", "--log_directory", str(out), "--preset", "tiny", "--dataset", "nyu",
        "--data_path", str(paths["data_path"]), "--gt_path", str(paths["gt_path"]),
        "--filenames_file", str(paths["train_split"]), "--text_feat_dir", str(paths["text_feat_dir"]),
        "--data_path_eval", str(paths["data_path_eval"]), "--gt_path_eval", str(paths["gt_path_eval"]),
        "--filenames_file_eval", str(paths["test_split"]),
        "--input_height", str(a.height), "--input_width", str(a.width), "--batch_size", str(a.batch_size),
        "--num_epochs", "1000", "--max_steps", str(a.steps), "--learning_rate", "1e-3",
        "--end_learning_rate", "1e-4", "--log_freq", "50", "--save_freq", "100000", "--num_threads", "0",
        "--seed", str(a.seed), "--drop_path_rate", "0.0",
    ] + (["--device", a.device] if a.device else []) + (["--no_tqdm"] if a.no_tqdm else [])


def main(argv=None) -> dict:
    """Run the demo; returns ``{"metrics": ..., "baseline": ...}``."""
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ckpt = out / "run" / "last.pth"
    reuse = a.reuse and ckpt.is_file()
    paths = synthetic_paths(out / "data", "nyu") if reuse else make_synthetic_dataset(
        out / "data", "nyu", n_train=a.n_train, n_test=a.n_test, height=a.height, width=a.width, seed=a.seed)
    targs = train_argv(a, paths, out)
    if not reuse:
        train_cli.main(targs + ["--overwrite"])  # the demo's own folder: a new demo replaces the last one
    metrics = eval_cli.main(targs + ["--checkpoint_path", str(ckpt), "--metrics_json", str(out / "metrics.json"),
                                     "--save_vis", str(out / "vis")])
    baseline = mean_depth_baseline(paths, out)
    prior_picture(ckpt, paths, out, (a.height, a.width))
    write_text(out / "metrics.md", markdown_table([metrics, baseline], TABLE_LABELS))
    print(f"\nWorDepth (tiny, {a.steps} steps): abs_rel {metrics['abs_rel']:.4f}  rms {metrics['rms']:.4f}  "
          f"d1 {metrics['d1']:.4f}")
    print(f"mean-depth baseline:        abs_rel {baseline['abs_rel']:.4f}  rms {baseline['rms']:.4f}  "
          f"d1 {baseline['d1']:.4f}")
    print(f"outputs in {out}: metrics.json, metrics.md, vis/, prior_depth.png, run/")
    return {"metrics": metrics, "baseline": baseline}


def console() -> None:
    """The ``wordepth-demo`` command: `main` without its result (a console command's return is its exit status)."""
    main()


if __name__ == "__main__":
    main()

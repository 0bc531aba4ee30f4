"""The demo behind ``sh run_demo.sh``: synthetic data -> train (tiny preset) -> evaluate -> pictures.

Runs on a CPU without internet in a few minutes. Writes into OUT:
  data/                  the generated NYU-format dataset (images, depth PNGs, splits, captions, features)
  run/                   the training run (config.json, train.log, TensorBoard summary, last.pth)
  metrics.json           evaluation of the trained model (same keys as eval.py --metrics_json)
  baseline_metrics.json  a constant prediction (the mean training depth), for comparison
  vis/                   input / ground truth / prediction / abs-rel error per test image, worst-N summary
  prior_depth.png        depth maps sampled from a test caption alone (text branch)
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    return [
        "--model_name", "run", "--log_directory", str(out), "--preset", "tiny", "--dataset", "nyu",
        "--data_path", str(paths["data_path"]), "--gt_path", str(paths["gt_path"]),
        "--filenames_file", str(paths["train_split"]), "--text_feat_dir", str(paths["text_feat_dir"]),
        "--data_path_eval", str(paths["data_path_eval"]), "--gt_path_eval", str(paths["gt_path_eval"]),
        "--filenames_file_eval", str(paths["test_split"]),
        "--input_height", str(a.height), "--input_width", str(a.width), "--batch_size", str(a.batch_size),
        "--num_epochs", "1000", "--max_steps", str(a.steps), "--learning_rate", "1e-3",
        "--end_learning_rate", "1e-4", "--max_depth", "10", "--min_depth_eval", "1e-3", "--max_depth_eval", "10",
        "--alter_prob", "0.5", "--log_freq", "50", "--save_freq", "100000", "--num_threads", "0",
        "--seed", str(a.seed), "--drop_path_rate", "0.0",
    ] + (["--device", a.device] if a.device else []) + (["--no_tqdm"] if a.no_tqdm else [])


def mean_depth_baseline(paths: dict, out: Path) -> dict:
    """Metrics of predicting the mean training depth everywhere (what a model must beat)."""
    from wordepth.data import NYUDataset
    from wordepth.metrics import MetricAccumulator, per_image_metrics

    train = NYUDataset(paths["train_split"], paths["data_path"], paths["gt_path"], paths["text_feat_dir"],
                       mode="eval", text_split="train")
    depths = [train[i]["depth"] for i in range(len(train))]
    mean = float(torch.cat([d[d > 0] for d in depths]).mean())
    test = NYUDataset(paths["test_split"], paths["data_path_eval"], paths["gt_path_eval"], paths["text_feat_dir"],
                      mode="eval")
    acc = MetricAccumulator()
    for i in range(len(test)):
        gt = test[i]["depth"][None]
        acc.update(per_image_metrics(torch.full_like(gt, mean), gt, min_depth=1e-3, max_depth=10, crop=None,
                                     dataset="nyu"))
    result = {**acc.as_dict(), "mean_depth": mean}
    (out / "baseline_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def prior_picture(ckpt: Path, paths: dict, out: Path, size: tuple[int, int], k: int = 4) -> Path:
    """K depth maps sampled from one test caption alone, side by side with the caption."""
    import cv2

    from wordepth import load_checkpoint
    from wordepth.data import read_split
    from wordepth.data.text_features import TextFeatureStore
    from wordepth.visualize import colorize, make_grid, save_png

    model = load_checkpoint(ckpt)
    entry = read_split(paths["test_split"])[0]
    text = TextFeatureStore(paths["text_feat_dir"], "nyu", "test").get(entry.rgb)[None]
    caption = (Path(paths["text_dir"]) / "nyu" / "test" / Path(entry.rgb.strip("/")).with_suffix(".txt")).read_text()
    g = torch.Generator().manual_seed(0)
    maps = [model.prior_depth(text, size, generator=g)[0, 0].numpy() for _ in range(k)]
    vmax = max(float(np.max(m)) for m in maps)
    grid = make_grid([colorize(m, 0, vmax) for m in maps], ncols=k, labels=[f"sample {i + 1}" for i in range(k)])
    banner = np.full((24, grid.shape[1], 3), 255, np.uint8)
    cv2.putText(banner, caption.strip()[:80], (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    path = out / "prior_depth.png"
    save_png(path, np.concatenate([banner, grid], axis=0))
    return path


def _paths(out: Path) -> dict:
    """The dataset paths of an existing demo folder (as make_synthetic_dataset returns them)."""
    root = out / "data"
    nyu = root / "nyu"
    return {"root": root, "data_path": nyu / "sync", "gt_path": nyu / "sync",
            "data_path_eval": nyu / "official_splits" / "test", "gt_path_eval": nyu / "official_splits" / "test",
            "train_split": nyu / "nyudepthv2_train_files_with_gt.txt",
            "test_split": nyu / "nyudepthv2_test_files_with_gt.txt", "text_dir": root / "text",
            "text_feat_dir": root / "text_feat"}


def main(argv=None) -> dict:
    a = parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from wordepth.data.synthetic import make_synthetic_dataset

    ckpt = out / "run" / "last.pth"
    reuse = a.reuse and ckpt.is_file()
    paths = make_synthetic_dataset(out / "data", "nyu", n_train=0 if reuse else a.n_train, n_test=a.n_test,
                                   height=a.height, width=a.width, seed=a.seed) if not reuse else _paths(out)
    import eval as eval_entry
    import train as train_entry

    targs = train_argv(a, paths, out)
    if not reuse:
        train_entry.main(targs)
    metrics = eval_entry.main(targs + ["--checkpoint_path", str(ckpt), "--metrics_json", str(out / "metrics.json"),
                                       "--save_vis", str(out / "vis")])
    baseline = mean_depth_baseline(paths, out)
    prior_picture(ckpt, paths, out, (a.height, a.width))
    print(f"\nWorDepth (tiny, {a.steps} steps): abs_rel {metrics['abs_rel']:.4f}  rms {metrics['rms']:.4f}  "
          f"d1 {metrics['d1']:.4f}")
    print(f"mean-depth baseline:        abs_rel {baseline['abs_rel']:.4f}  rms {baseline['rms']:.4f}  "
          f"d1 {baseline['d1']:.4f}")
    print(f"outputs in {out}: metrics.json, vis/, prior_depth.png, run/")
    return {"metrics": metrics, "baseline": baseline}


if __name__ == "__main__":
    main()

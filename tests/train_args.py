"""The training options of the tiny-preset runs on synthetic NYU data that several test files start."""
from __future__ import annotations


def train_argv(data: dict, run_dir, name: str = "run", **over) -> list[str]:
    """``wordepth-train`` arguments: tiny preset, 64x96 inputs, batch 2, 6 steps; ``over`` replaces or adds
    options (True: a bare flag, False/None: left out)."""
    opts = {
        "model_name": name, "log_directory": str(run_dir), "preset": "tiny", "dataset": "nyu",
        "data_path": data["data_path"], "gt_path": data["gt_path"], "filenames_file": data["train_split"],
        "text_feat_dir": data["text_feat_dir"], "data_path_eval": data["data_path_eval"],
        "gt_path_eval": data["gt_path_eval"], "filenames_file_eval": data["test_split"],
        "input_height": 64, "input_width": 96, "batch_size": 2, "num_epochs": 100, "max_steps": 6,
        "learning_rate": 1e-3, "end_learning_rate": 1e-4, "max_depth": 10, "max_depth_eval": 10,
        "alter_prob": 0.5, "log_freq": 2, "save_freq": 1000, "num_threads": 0, "seed": 0,
    }
    opts.update(over)
    out = []
    for k, v in opts.items():
        if v is True:
            out.append(f"--{k}")
        elif v is not False and v is not None:
            out += [f"--{k}", str(v)]
    return out + ["--no_tqdm"]

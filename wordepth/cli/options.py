"""The options of ``wordepth-train`` / ``wordepth-eval`` (``train.py`` / ``eval.py``).

Accepts the original release's config files unchanged: ``python train.py configs/x.txt`` or
``@configs/x.txt``, one ``--flag value`` per line, blank lines and ``#`` comments ignored. An unknown
option is an error naming the closest known one (`wordepth.cli.unknown_options`; only the original's
launch options are tolerated, in a config file). Later command-line flags
override the file (``python eval.py configs/x.txt --checkpoint_path m.pth``).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

import torch

from wordepth.cli import common
from wordepth.cli.unknown_options import check_unknown
from wordepth.config import DataConfig, EvalConfig, ModelOptions, OptimConfig, RunConfig, RunSettings, apply_variant
from wordepth.caption_ablation import MODES_HELP, parse_ablation, parse_caption_mode
from wordepth.data.holdout import HoldoutError, parse_val_split
from wordepth.data.registry import HOW_TO_REGISTER, find_facts
from wordepth.errors import UserError
from wordepth.metrics import METRIC_NAMES
from wordepth.models.wordepth import WorDepthConfig
from wordepth.outputs import output_problem

log = logging.getLogger(__name__)


def _split_line(line: str) -> list[str]:
    line = line.strip()
    if not line or line.startswith("#"):
        return []
    return line.split()


def _run_args(p: argparse.ArgumentParser) -> None:
    """The run: mode, names, folders, checkpoint, logging and saving (original flags)."""
    g = p.add_argument_group("run (original flags)")
    g.add_argument("--mode", default=RunSettings.mode, help="train or test (kept for original configs)")
    g.add_argument("--model_name", default=RunSettings.model_name,
                   help="run name: the run folder is log_directory/model_name")
    g.add_argument("--pretrain", default=None,
                   help="Swin ImageNet weights: swin_large_patch4_window12_384_22k.pth or timm:<name>")
    g.add_argument("--log_directory", default=RunSettings.log_directory, help="where run folders are written")
    g.add_argument("--checkpoint_path", default=RunSettings.checkpoint_path,
                   help="checkpoint to resume from / evaluate")
    g.add_argument("--retrain", action="store_true", help="with --checkpoint_path: weights only, restart at step 0")
    g.add_argument("--overwrite", action="store_true",
                   help="start a new run in a run folder that holds another run's checkpoints, replacing them "
                        "(without it such a run is refused; resuming with --checkpoint_path RUN/last.pth is allowed)")
    g.add_argument("--force_config", action="store_true",
                   help="let --legacy / --max_depth / --prior_mean override what a checkpoint of this project "
                        "records (without it a contradiction is an error)")
    g.add_argument("--log_freq", type=int, default=RunSettings.log_freq,
                   help="steps between training log lines / scalars")
    g.add_argument("--save_freq", type=int, default=RunSettings.save_freq,
                   help="steps between rolling last-checkpoint saves")
    g.add_argument("--eval_only", action="store_true", help="evaluate --checkpoint_path and exit")


def _data_args(p: argparse.ArgumentParser) -> None:
    """The data: dataset, paths, sizes, augmentation (original flags)."""
    g = p.add_argument_group("data (original flags)")
    g.add_argument("--dataset", default=None,
                   help=f"a registered dataset: {', '.join(common.dataset_names())}, or yours (docs/data.md, 'Your own "
                        "dataset'); default: the --variant's, else nyu")
    g.add_argument("--data_path", default=None, help="training image root")
    g.add_argument("--gt_path", default=None, help="training depth root")
    g.add_argument("--filenames_file", default=None, help="training split file")
    g.add_argument("--input_height", type=int, default=DataConfig.input_height, help="training crop height")
    g.add_argument("--input_width", type=int, default=DataConfig.input_width, help="training crop width")
    g.add_argument("--max_depth", type=float, default=None,
                   help="maximum depth (loss validity); default: the checkpoint's, else 10 NYU / 80 KITTI")
    g.add_argument("--prior_mean", type=float, default=None,
                   help="log-depth prior of the output layer; default: the checkpoint's, else 1.54 NYU / 2.54 KITTI")
    g.add_argument("--do_random_rotate", action="store_true", help="random rotation (NYU)")
    g.add_argument("--degree", type=float, default=DataConfig.degree, help="maximum rotation in degrees")
    g.add_argument("--do_kb_crop", action="store_true", help="KITTI benchmark crop (352x1216)")
    g.add_argument("--use_right", action="store_true", help="(accepted; the original does not use it)")
    g.add_argument("--num_threads", type=int, default=DataConfig.num_threads, help="DataLoader worker processes")
    g.add_argument("--text_feat_dir", default=DataConfig.text_feat_dir,
                   help="text feature root: <dir>/<dataset>/<train|test>/<image path>.pt (or packed store)")


def _optimisation_args(p: argparse.ArgumentParser) -> None:
    """Optimisation: batch, epochs, learning rate, losses, model settings (original flags)."""
    g = p.add_argument_group("optimisation (original flags; defaults = the original configs)")
    g.add_argument("--batch_size", type=int, default=OptimConfig.batch_size, help="batch size per process")
    g.add_argument("--num_epochs", type=int, default=OptimConfig.num_epochs)
    g.add_argument("--learning_rate", type=float, default=OptimConfig.learning_rate,
                   help="initial learning rate (the original's default; the configs set the paper's 3e-5)")
    g.add_argument("--end_learning_rate", type=float, default=OptimConfig.end_learning_rate,
                   help="end of the polynomial decay; -1 (the original's default): constant learning rate")
    g.add_argument("--weight_decay", type=float, default=OptimConfig.weight_decay,
                   help="Adam's weight decay (the original's default)")
    g.add_argument("--adam_eps", type=float, default=None,
                   help="read from the original configs (1e-3) but, as in the original, not applied: Adam uses "
                        "torch's default eps 1e-8 unless --use_adam_eps is given")
    g.add_argument("--use_adam_eps", action="store_true",
                   help="apply --adam_eps to Adam (the original never did; off reproduces its training)")
    g.add_argument("--variance_focus", type=float, default=ModelOptions.variance_focus,
                   help="lambda of the SILog loss (an extension: the original parses it but always uses 0.85)")
    g.add_argument("--weight_kld", type=float, default=ModelOptions.weight_kld, help="weight of the KL terms")
    g.add_argument("--alter_prob", type=float, default=ModelOptions.alter_prob,
                   help="p: probability of the text branch per step")
    common.add_variant_arg(g, help="a released model by name: sets --dataset, --legacy, --max_depth, --prior_mean "
                                   "and the evaluation crop (explicit flags win); this project's checkpoints record it")
    g.add_argument("--legacy", "--lagacy", dest="legacy", action="store_true", default=None,
                   help="the paper's model: decoder skip connections (original spelling --lagacy accepted); "
                        "default: the checkpoint's setting, else off")
    g.add_argument("--clip_model", default=None,
                   help=f"the open_clip text encoder the caption features come from, e.g. ViT-B-32; a new network "
                        f"is built for their width (default: the checkpoint's, else {WorDepthConfig.clip_model})")
    g.add_argument("--text_dim", type=int, default=None,
                   help="the width of the caption features (default: the checkpoint's, else --clip_model's, "
                        f"{WorDepthConfig.text_dim} for {WorDepthConfig.clip_model})")


def _evaluation_args(p: argparse.ArgumentParser) -> None:
    """Online and final evaluation (original flags)."""
    g = p.add_argument_group("evaluation (original flags)")
    g.add_argument("--do_online_eval", action="store_true", help="evaluate every eval_freq steps")
    g.add_argument("--eval_before_train", action="store_true")
    g.add_argument("--data_path_eval", default=None)
    g.add_argument("--gt_path_eval", default=None)
    g.add_argument("--filenames_file_eval", default=None)
    g.add_argument("--min_depth_eval", type=float, default=EvalConfig.min_depth_eval)
    g.add_argument("--max_depth_eval", type=float, default=None, help="default: the dataset's maximum depth (10 / 80)")
    g.add_argument("--eigen_crop", action="store_true")
    g.add_argument("--garg_crop", action="store_true")
    g.add_argument("--eval_freq", type=int, default=EvalConfig.eval_freq,
                   help="online evaluation after update eval_freq*k + 1, named step eval_freq*k (as the original)")
    g.add_argument("--eval_summary_directory", default=EvalConfig.eval_summary_directory,
                   help="TensorBoard folder for eval (default: run folder)")


def _project_args(p: argparse.ArgumentParser) -> None:
    """This project's options: presets, devices, precision, reliability, reproducibility."""
    g = p.add_argument_group("this project")
    g.add_argument("--preset", default=None, choices=["swin_large", "tiny"],
                   help="network size of a new run (default swin_large; a checkpoint's is recorded in it)")
    g.add_argument("--drop_path_rate", type=float, default=None, help="stochastic depth (default: preset's, 0.2)")
    g.add_argument("--seed", type=int, default=RunSettings.seed,
                   help="seed of weights init, augmentation and branch choice")
    g.add_argument("--device", default=None, help="cuda, cpu, cuda:1 ... (default: cuda if available)")
    g.add_argument("--dist_timeout", type=float, default=RunSettings.dist_timeout, metavar="MINUTES",
                   help="several processes: how long one waits for the others in a collective before the run "
                        "ends, naming a rank that died (default %(default)g; docs/training.md)")
    g.add_argument("--amp", default=RunSettings.amp, choices=["none", "bf16", "fp16"], help="autocast precision")
    g.add_argument("--grad_checkpoint", action="store_true", help="recompute Swin blocks in backward (memory)")
    g.add_argument("--compile", action="store_true", help="torch.compile the network (evaluation: with frozen weights, "
                                                                "about 0.88x the time on a CPU after ~2 min compiling)")
    g.add_argument("--no_fused_attn", action="store_true",
                   help="Swin window attention as timm's explicit softmax over the padded windows (comparison, "
                        "debugging); default: padded tokens skipped, fused SDPA except when training on a CPU")
    g.add_argument("--max_steps", type=int, default=None,
                   help="stop after this many steps (default: all epochs); it also sets the length of the "
                        "learning-rate schedule")
    g.add_argument("--deterministic", action="store_true",
                   help="bit-identical reruns and resumes on one machine: deterministic algorithms, cuBLAS "
                        "workspace, cuDNN deterministic, TF32 off (docs/reproducing.md); default: torch's defaults")
    g.add_argument("--val_split", default=None,
                   help="hold out part of the training split by scene (a fraction, e.g. 0.05, or a split file) "
                        "and choose a checkpoint on it (with --do_online_eval); the original's rule, best per "
                        "metric on the test split, is kept too")
    g.add_argument("--select_metric", default=EvalConfig.select_metric,
                   choices=METRIC_NAMES,
                   help="with --val_split: the validation metric that chooses the checkpoint")
    g.add_argument("--eval_batch_size", type=int, default=EvalConfig.eval_batch_size,
                   help="evaluation batch size (same numbers as 1)")
    g.add_argument("--full_frame_eval", action="store_true",
                   help="KITTI with --do_kb_crop: paste predictions into the full-size ground truth and crop the "
                        "full frame (BTS/NeWCRFs eval_with_pngs) instead of the original's KB-cropped ground truth")
    g.add_argument("--final_eval", action="store_true",
                   help="with --do_online_eval, also evaluate after the last step (the original does not)")
    g.add_argument("--metrics_json", default=None, help="write the evaluation metrics as JSON")
    g.add_argument("--per_image_csv", default=None, help="write per-image metrics as CSV")
    g.add_argument("--save_vis", default=None, help="write input/gt/prediction/error-map PNGs to this folder")
    g.add_argument("--nonfinite", default=EvalConfig.nonfinite, choices=["clamp", "error"],
                   help="NaN/inf predicted depth in evaluation: clamp as the original does (inf to max, NaN to "
                        "min; warned and counted in the metrics JSON) or stop with an error")
    g.add_argument("--captions", default=EvalConfig.captions, metavar="MODE",
                   help=f"evaluation only: the caption feature of each image: {MODES_HELP} (docs/evaluation.md, "
                        "'Caption ablations'); dataset is the stored features, the paper's evaluation")
    g.add_argument("--caption_ablation", default=None, metavar="MODE,MODE,...",
                   help="evaluate under several --captions modes in one run (network and images loaded once) and "
                        "print the change from dataset with paired bootstrap 95%% intervals (draws from --seed)")
    g.add_argument("--text_dir", default=None,
                   help="the images' own captions (DIR/<dataset>/test/<image>.txt) for {caption} in "
                        "--captions template:TEXT")
    g.add_argument("--clip_weights", default=None,
                   help="a local weights file of the network's CLIP text encoder, for --captions template:/file: "
                        "(default: open_clip's pretrained weights, cached or downloaded)")
    g.add_argument("--mean_features", default=None,
                   help="--captions none: a wordepth-text mean file instead of the shipped mean caption features")
    g.add_argument("--max_nonfinite_steps", type=int, default=RunSettings.max_nonfinite_steps,
                   help="stop after this many consecutive steps with a non-finite loss or gradient")
    g.add_argument("--max_no_depth_steps", type=int, default=RunSettings.max_no_depth_steps,
                   help="stop after this many consecutive training batches without a valid depth pixel")
    g.add_argument("--skip_bad_samples", action="store_true",
                   help="skip unreadable samples (counted in the log) instead of stopping")
    g.add_argument("--check_data", action="store_true", help="scan the splits for problems, report and exit")
    g.add_argument("--no_tqdm", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The train/eval parser: the original's flags and this project's, in five groups."""
    p = argparse.ArgumentParser(
        description="WorDepth: train or evaluate (original config files accepted: pass CONFIG.txt or @CONFIG.txt).",
        fromfile_prefix_chars="@", allow_abbrev=False,  # --learning 5 is an error, not --learning_rate 5
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.convert_arg_line_to_args = _split_line
    _run_args(p)
    _data_args(p)
    _optimisation_args(p)
    _evaluation_args(p)
    _project_args(p)
    return p


def _expand_config_files(argv: Sequence[str]) -> list[str]:
    """``CONFIG.txt`` as a bare positional becomes ``@CONFIG.txt`` (the original's calling style)."""
    out = []
    prev_is_flag_expecting_value = False
    for arg in argv:
        if (not arg.startswith(("-", "@")) and not prev_is_flag_expecting_value and os.path.isfile(arg)):
            out.append("@" + arg)
        else:
            out.append(arg)
        prev_is_flag_expecting_value = arg.startswith("--") and "=" not in arg
    return out


def parse_args(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None
               ) -> argparse.Namespace:
    """Parse command line + config files; an unknown option is an error (`wordepth.cli.unknown_options`)."""
    parser = parser or build_parser()
    argv = [os.fspath(a) for a in (sys.argv[1:] if argv is None else argv)]  # Path objects from Python callers
    for prev, a in zip([""] + argv, argv):
        flag_value = prev.startswith("--") and "=" not in prev  # e.g. --filenames_file_eval missing.txt
        if not a.startswith(("-", "@")) and not flag_value and not os.path.exists(a) and a.endswith(".txt"):
            parser.error(f"config file not found: {a}")
    expanded = _expand_config_files(argv)
    args, unknown = parser.parse_known_args(expanded)
    args.unknown_flags = check_unknown(parser, expanded, unknown)  # a typo is an error naming the closest option
    try:
        vars(args).update(apply_variant(vars(args)))
    except UserError as err:
        parser.error(str(err))
    return args


def run_config(args: argparse.Namespace) -> RunConfig:
    """The typed configuration of parsed options: what the library takes (built once, here at the edge)."""
    return RunConfig.from_options(vars(args), source="the command line")


def validate_args(args: argparse.Namespace, training: bool) -> None:
    """Clear start-up errors for impossible settings (raises SystemExit with one line)."""
    problems = []
    if find_facts(args.dataset) is None:
        problems.append(f"--dataset {args.dataset!r} is not a registered dataset: use one of "
                        f"{', '.join(common.dataset_names())}; {HOW_TO_REGISTER}")
    if args.text_dim is not None and args.text_dim < 1:
        problems.append(f"--text_dim must be at least 1, got {args.text_dim}")
    if not 0.0 <= args.alter_prob <= 1.0:
        problems.append(f"--alter_prob must be in [0, 1], got {args.alter_prob}")
    if training and args.learning_rate <= 0:
        problems.append(f"--learning_rate must be positive, got {args.learning_rate}")
    if args.end_learning_rate != -1 and args.end_learning_rate < 0:
        problems.append(f"--end_learning_rate must be >= 0 (or -1), got {args.end_learning_rate}")
    if args.min_depth_eval >= args.max_depth_eval:
        problems.append(f"eval depth range inverted: --min_depth_eval {args.min_depth_eval} >= "
                        f"--max_depth_eval {args.max_depth_eval}")
    if args.device is not None:
        try:
            torch.device(args.device)
        except RuntimeError:
            problems.append(f"--device {args.device!r} is not a device: use cpu, cuda or cuda:N")
    if args.batch_size < 1 or args.eval_batch_size < 1:
        problems.append("batch sizes must be >= 1")
    if args.use_adam_eps and args.adam_eps is None:
        problems.append("--use_adam_eps needs --adam_eps")
    if args.max_depth is not None and args.max_depth <= 0:
        problems.append(f"--max_depth must be positive, got {args.max_depth}")
    for flag in ("input_height", "input_width", "log_freq", "save_freq", "eval_freq", "max_nonfinite_steps",
                 "max_no_depth_steps"):
        if getattr(args, flag) < 1:
            problems.append(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if training and args.num_epochs < 1:
        problems.append(f"--num_epochs must be at least 1, got {args.num_epochs}")
    if training and args.max_steps is not None and args.max_steps < 1:
        problems.append(f"--max_steps must be at least 1, got {args.max_steps} (leave it out to train every epoch)")
    if not args.dist_timeout > 0:
        problems.append(f"--dist_timeout must be a positive number of minutes, got {args.dist_timeout}")
    if args.num_threads < 0:
        problems.append(f"--num_threads must be >= 0, got {args.num_threads}")
    if training and getattr(args, "val_split", None) is not None:
        try:
            parse_val_split(args.val_split)
        except HoldoutError as err:
            problems.append(str(err))
        if not args.do_online_eval:
            problems.append("--val_split chooses a checkpoint at the online evaluations: add --do_online_eval")
    problems += caption_problems(args, training and not args.eval_only)
    if args.eval_only or not training:
        for flag, folder in (("metrics_json", False), ("per_image_csv", False), ("save_vis", True)):
            if getattr(args, flag):
                problem = output_problem(getattr(args, flag), f"--{flag}", folder)
                if problem:
                    problems.append(problem)
    if training:
        for flag in ("data_path", "gt_path", "filenames_file"):
            if not getattr(args, flag):
                problems.append(f"--{flag} is required for training")
    if args.do_online_eval or args.eval_only or not training:
        for flag in ("data_path_eval", "gt_path_eval", "filenames_file_eval"):
            if not getattr(args, flag):
                problems.append(f"--{flag} is required for evaluation")
    if problems:
        raise SystemExit("error: " + "\n       ".join(problems))


def caption_problems(args: argparse.Namespace, training: bool = False) -> list[str]:
    """What is wrong with ``--captions`` / ``--caption_ablation`` (an unknown mode, a template without text, both
    given, outputs that have no meaning for an ablation, either given to a training run)."""
    problems = []
    if training and (args.captions != "dataset" or args.caption_ablation is not None):
        return ["--captions / --caption_ablation change the captions of an evaluation (wordepth-eval); training "
                "and its online evaluations use the dataset's"]
    try:
        parse_caption_mode(args.captions)
        if args.caption_ablation is not None:
            parse_ablation(args.caption_ablation)
    except UserError as err:
        return [str(err)]
    if args.caption_ablation is not None:
        if args.captions != "dataset":
            problems.append("give --captions MODE or --caption_ablation MODE,MODE,..., not both")
        for flag in ("per_image_csv", "save_vis"):
            if getattr(args, flag):
                problems.append(f"--{flag} is written for one caption mode: use --captions MODE with it, not "
                                "--caption_ablation")
    return problems

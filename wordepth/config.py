"""The typed run configuration of ``wordepth-train`` / ``wordepth-eval``, and the rules that read it.

The command line (:mod:`wordepth.cli.options`, the original's ``configs/arguments_*.txt`` files
included) is parsed at the edge and turned once into a frozen :class:`RunConfig`. The library takes
that, or plain values; it never sees the ``argparse.Namespace``.

:class:`RunConfig` has five sections, each a frozen dataclass whose field names are the options'
names (``--learning_rate`` is ``config.optim.learning_rate``) and whose defaults are the options'
defaults (the parser reads them from here):

* ``run`` (:class:`RunSettings`): names, folders, checkpoint, seed, device, precision, logging.
* ``model`` (:class:`ModelOptions`): what the command line asks of the network; ``None`` = not given.
  The network itself (:class:`~wordepth.models.wordepth.WorDepthConfig`) is resolved from these by
  one rule, :func:`model_overrides`: the flag, else the checkpoint's record, else the dataset's default.
* ``data`` (:class:`DataConfig`): dataset, paths, input size, augmentation, loader.
* ``optim`` (:class:`OptimConfig`): batch, epochs, Adam, the learning-rate schedule.
* ``eval`` (:class:`EvalConfig`): online/final evaluation, the protocol, outputs, checkpoint selection.

A training run writes its configuration to ``config.json`` in the run folder (:class:`RunRecord`: the
:class:`RunConfig`, the network that was built and the step counts); resuming and evaluating read it
back with :func:`read_run_record`, which validates every key and type.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import types
import typing
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wordepth.data.facts import KITTI, MIN_DEPTH_EVAL, NYU, ROTATION_DEGREE
from wordepth.data.registry import find_facts
from wordepth.errors import UserError
from wordepth.models.wordepth import PRESETS, WorDepthConfig
from wordepth.outputs import write_json
from wordepth.runtime import DIST_TIMEOUT_MINUTES
from wordepth.variants import get_variant

log = logging.getLogger("wordepth")

__all__ = ["CONFIG_FILE", "ConfigError", "DataConfig", "EvalConfig", "EvalScoring", "ModelOptions", "OptimConfig",
           "RunConfig", "RunRecord", "RunSettings", "apply_variant", "check_flags_against_checkpoint",
           "model_overrides", "preset_of", "read_run_record", "saved_run_record"]

DEFAULT_PRESET = "swin_large"
CONFIG_FILE = "config.json"  # a run's RunRecord, next to its checkpoints
RECORD_FORMAT = "wordepth-run"
RECORD_VERSION = 1


class ConfigError(UserError):
    """A stored run configuration that cannot be read (unknown or missing key, wrong type): one line."""


# --------------------------------------------------------------------------- the five sections
@dataclass(frozen=True)
class RunSettings:
    """The run: names, folders, checkpoint, seed, device, precision, logging and saving."""

    mode: str = "train"  # kept for the original configs
    model_name: str = "wordepth"
    log_directory: str = "./models"
    pretrain: str | None = None
    checkpoint_path: str = ""
    retrain: bool = False
    overwrite: bool = False
    force_config: bool = False
    eval_only: bool = False
    check_data: bool = False
    log_freq: int = 100
    save_freq: int = 5000
    seed: int = 0
    device: str | None = None
    dist_timeout: float = DIST_TIMEOUT_MINUTES  # minutes a collective waits for the other processes
    amp: str = "none"
    grad_checkpoint: bool = False
    compile: bool = False
    deterministic: bool = False
    max_nonfinite_steps: int = 20
    max_no_depth_steps: int = 20
    no_tqdm: bool = False
    unknown_flags: tuple[str, ...] = ()  # options of the original this project ignores (warned about)

    @property
    def run_dir(self) -> Path:
        """``log_directory/model_name``."""
        return Path(self.log_directory) / self.model_name


@dataclass(frozen=True)
class ModelOptions:
    """What the command line asks of the network; ``None``: not given (the checkpoint's, else the default)."""

    preset: str | None = None
    variant: str | None = None
    legacy: bool | None = None
    max_depth: float | None = None
    prior_mean: float | None = None
    alter_prob: float = WorDepthConfig.alter_prob
    weight_kld: float = WorDepthConfig.weight_kld
    variance_focus: float = WorDepthConfig.variance_focus
    drop_path_rate: float | None = None
    no_fused_attn: bool = False
    clip_model: str | None = None  # the CLIP text encoder of the features (WorDepthConfig.clip_model)
    text_dim: int | None = None  # their width (WorDepthConfig.text_dim); default: the CLIP model's


@dataclass(frozen=True)
class DataConfig:
    """The training data: dataset, roots, split, input size, augmentation and the loader."""

    dataset: str = "nyu"
    data_path: str | None = None
    gt_path: str | None = None
    filenames_file: str | None = None
    input_height: int = NYU.train_hw[0]
    input_width: int = NYU.train_hw[1]
    do_random_rotate: bool = False
    degree: float = ROTATION_DEGREE
    do_kb_crop: bool = False
    use_right: bool = False  # accepted; the original does not use it
    num_threads: int = 1
    text_feat_dir: str = "./text_feat"
    skip_bad_samples: bool = False


@dataclass(frozen=True)
class OptimConfig:
    """Batch, epochs and Adam with the original's learning-rate schedule (defaults: the original's)."""

    batch_size: int = 4
    num_epochs: int = 50
    max_steps: int | None = None
    learning_rate: float = 1e-4
    end_learning_rate: float = -1  # -1: a constant rate
    weight_decay: float = 1e-2
    adam_eps: float | None = None  # read from the original configs but, as there, not applied
    use_adam_eps: bool = False

    @property
    def end_lr(self) -> float:
        """The end of the polynomial decay (``--end_learning_rate -1``: the initial rate, i.e. constant)."""
        return self.learning_rate if self.end_learning_rate == -1 else self.end_learning_rate


@dataclass(frozen=True)
class EvalConfig:
    """Online and final evaluation: the split, the protocol, outputs, checkpoint selection."""

    do_online_eval: bool = False
    eval_before_train: bool = False
    final_eval: bool = False
    eval_freq: int = 500
    data_path_eval: str | None = None
    gt_path_eval: str | None = None
    filenames_file_eval: str | None = None
    min_depth_eval: float = MIN_DEPTH_EVAL
    max_depth_eval: float | None = None  # None: the dataset's maximum depth
    eigen_crop: bool = False
    garg_crop: bool = False
    full_frame_eval: bool = False
    eval_batch_size: int = 1
    nonfinite: str = "clamp"
    eval_summary_directory: str = ""
    metrics_json: str | None = None
    per_image_csv: str | None = None
    save_vis: str | None = None
    val_split: str | None = None  # a fraction or a split file of held-out scenes (wordepth.data.holdout)
    select_metric: str = "abs_rel"
    captions: str = "dataset"  # the caption source of evaluation (wordepth.caption_ablation)
    caption_ablation: str | None = None  # several caption modes in one run, compared with 'dataset'
    text_dir: str | None = None  # the images' own captions, for {caption} in --captions template:TEXT
    clip_weights: str | None = None  # a local CLIP weights file for --captions template:/file:
    mean_features: str | None = None  # a wordepth-text mean file for --captions none

    @property
    def crop(self) -> str | None:
        """The original's crop choice: Garg wins over Eigen when both are set."""
        return "garg" if self.garg_crop else "eigen" if self.eigen_crop else None


@dataclass(frozen=True)
class EvalScoring:
    """How depth is scored (:func:`wordepth.evaluation.evaluate`'s protocol arguments)."""

    dataset: str
    min_depth: float
    max_depth: float
    crop: str | None
    kb_crop: bool  # KITTI's benchmark crop was applied to the input
    full_frame: bool  # KITTI: predictions pasted into the full-size ground truth (BTS protocol)

    def record(self) -> dict:
        """How the numbers were computed, as recorded next to them (``--metrics_json``, run metrics)."""
        out = {"dataset": self.dataset, "crop": self.crop, "min_depth_eval": self.min_depth,
               "max_depth_eval": self.max_depth, "kb_crop": self.kb_crop}
        if self.kb_crop:
            out["kitti_ground_truth"] = "full_frame" if self.full_frame else "kb_cropped (original)"
        return out


SECTIONS: dict[str, type] = {"run": RunSettings, "model": ModelOptions, "data": DataConfig, "optim": OptimConfig,
                             "eval": EvalConfig}


def _section_of() -> dict[str, str]:
    """Option name -> its section (each option is in exactly one)."""
    return {f.name: sec for sec, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class RunConfig:
    """A training or evaluation run's settings, built once from the command line.

    Field names are the options' names: :meth:`options` and :meth:`from_options` convert between
    the flat mapping (``{"learning_rate": 3e-5, ...}``) and the sections.
    """

    run: RunSettings = field(default_factory=RunSettings)
    model: ModelOptions = field(default_factory=ModelOptions)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, strict: bool = True, source: str = "the options"
                     ) -> RunConfig:
        """From option names and values (the parsed command line; an older run's stored options).

        Args:
            strict: an unknown name is an error (else ignored); missing names take their defaults.

        Raises:
            ConfigError: an unknown name (``strict``) or a value of the wrong type, naming ``source``.
        """
        where = _section_of()
        unknown = sorted(k for k in options if k not in where)
        if strict and unknown:
            raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}: not a setting of wordepth.config")
        parts: dict[str, dict] = {sec: {} for sec in SECTIONS}
        for key, value in options.items():
            if key in where:
                parts[where[key]][key] = value
        return cls(**{sec: _typed(SECTIONS[sec], parts[sec], source, sec, require_all=False) for sec in SECTIONS})

    def options(self) -> dict[str, Any]:
        """The flat mapping option name -> value (provenance records, comparing two runs' settings)."""
        return {k: v for sec in SECTIONS for k, v in dataclasses.asdict(getattr(self, sec)).items()}

    def with_options(self, **changes: Any) -> RunConfig:
        """A copy with options changed by name, e.g. ``cfg.with_options(filenames_file="split_train.txt")``."""
        where = _section_of()
        unknown = sorted(k for k in changes if k not in where)
        if unknown:
            raise TypeError(f"no such option(s): {', '.join(unknown)}")
        by_section: dict[str, dict] = {}
        for key, value in changes.items():
            by_section.setdefault(where[key], {})[key] = value
        return dataclasses.replace(self, **{sec: dataclasses.replace(getattr(self, sec), **kw)
                                            for sec, kw in by_section.items()})

    @property
    def protocol(self) -> EvalScoring:
        """The evaluation protocol of these settings."""
        data, ev = self.data, self.eval
        max_depth = ev.max_depth_eval
        if max_depth is None:
            max_depth = (find_facts(data.dataset) or KITTI).max_depth
        kb_crop = data.dataset == "kitti" and data.do_kb_crop
        return EvalScoring(dataset=data.dataset, min_depth=ev.min_depth_eval, max_depth=max_depth, crop=ev.crop,
                            kb_crop=kb_crop, full_frame=kb_crop and ev.full_frame_eval)

    def to_dict(self) -> dict:
        """The five sections as plain data (JSON)."""
        return {sec: _plain(dataclasses.asdict(getattr(self, sec))) for sec in SECTIONS}

    @classmethod
    def from_dict(cls, d: Mapping, source: str = "the configuration") -> RunConfig:
        """From :meth:`to_dict`: every section and key present, no other, each value of its type.

        Raises:
            ConfigError: naming ``source`` and the first key that is unknown, missing or of the wrong type.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source}: a run configuration is a JSON object, not {type(d).__name__}")
        missing = [sec for sec in SECTIONS if sec not in d]
        if missing:
            raise ConfigError(f"{source}: missing section(s) {', '.join(missing)} (expected {', '.join(SECTIONS)})")
        return cls(**{sec: _typed(SECTIONS[sec], d[sec], source, sec, require_all=True) for sec in SECTIONS})


# --------------------------------------------------------------------------- checked types
def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _type_name(hint: Any) -> str:
    return " or ".join("null" if a is type(None) else getattr(a, "__name__", str(a))
                       for a in (typing.get_args(hint) if _is_union(hint) else (hint,)))


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(ok, value as ``hint``): bool is not an int, an int is a float, a JSON list is a tuple."""
    if _is_union(hint):
        for arg in typing.get_args(hint):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if typing.get_origin(hint) is tuple:
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        if not isinstance(value, (list, tuple)):
            return False, value
        items = [_coerce(v, item) for v in value]
        return all(ok for ok, _ in items), tuple(v for _, v in items)
    raise TypeError(f"unsupported configuration type {hint!r}")


def _typed(cls: type, values: Any, source: str, section: str, require_all: bool) -> Any:
    """``cls(**values)`` with every value checked against its field's type (one-line errors)."""
    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: section {section!r} must be a JSON object, not {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{source}: unknown key {section}.{unknown[0]}"
                          f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}; "
                          f"the keys of {section!r} are {', '.join(names)}")
    missing = [n for n in names if n not in values]
    if require_all and missing:
        raise ConfigError(f"{source}: missing key {section}.{missing[0]}"
                          f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: "
                          "written by another version of wordepth? Start a new run, or add the key")
    out = {}
    for name, value in values.items():
        ok, out[name] = _coerce(value, hints[name])
        if not ok:
            raise ConfigError(f"{source}: {section}.{name} must be {_type_name(hints[name])}, got {value!r}")
    return cls(**out)


# --------------------------------------------------------------------------- what a run records
@dataclass(frozen=True)
class RunRecord:
    """A training run's ``config.json``: its :class:`RunConfig` and what was resolved from it.

    Attributes:
        config: the settings the run was started (or last resumed) with.
        network: the network that was built (flags, else the checkpoint's record, else the defaults).
        run_id: one id per run, the same across its resumes (checkpoints record it too).
        world_size, steps_per_epoch, total_steps: the process count and the step counts.
        git_commit: the code's commit. provenance: versions, hardware, determinism (informational).
    """

    config: RunConfig
    network: WorDepthConfig
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    world_size: int = 1
    steps_per_epoch: int = 0
    total_steps: int = 0
    git_commit: str = "unknown"
    provenance: dict = field(default_factory=dict, compare=False)

    @property
    def preset(self) -> str:
        return preset_of(self.network.backbone)

    def to_dict(self) -> dict:
        return {"format": RECORD_FORMAT, "version": RECORD_VERSION, **self.config.to_dict(),
                "resolved": {"network": _plain(self.network.to_dict()), "preset": self.preset, "run_id": self.run_id,
                             "world_size": self.world_size, "steps_per_epoch": self.steps_per_epoch,
                             "total_steps": self.total_steps, "git_commit": self.git_commit},
                "provenance": self.provenance}

    @classmethod
    def from_dict(cls, d: Mapping, source: str = CONFIG_FILE) -> RunRecord:
        """From :meth:`to_dict`, or from the flat options an earlier version of this project stored.

        Raises:
            ConfigError: one line naming ``source`` and what is wrong.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source}: not a run configuration (a JSON object is expected)")
        if "format" not in d:
            return _record_from_flat(d, source)
        if d.get("format") != RECORD_FORMAT or d.get("version") != RECORD_VERSION:
            raise ConfigError(f"{source}: format {d.get('format')!r} version {d.get('version')!r} is not a run "
                              f"configuration this version reads ({RECORD_FORMAT!r} version {RECORD_VERSION})")
        extra = sorted(set(d) - {"format", "version", "resolved", "provenance", *SECTIONS})
        if extra:
            raise ConfigError(f"{source}: unknown key {extra[0]}; a run configuration holds "
                              f"{', '.join(SECTIONS)}, resolved and provenance")
        config = RunConfig.from_dict({sec: d.get(sec) for sec in SECTIONS if sec in d}, source)
        resolved = d.get("resolved")
        if not isinstance(resolved, Mapping):
            raise ConfigError(f"{source}: missing section resolved (the network and step counts)")
        return _record(config, resolved, d.get("provenance"), source)

    def write(self, run_dir: Path) -> Path:
        """``run_dir/config.json`` (atomic; a planted link is replaced, not followed)."""
        path = Path(run_dir) / CONFIG_FILE
        write_json(path, self.to_dict(), what=str(path))
        return path


_RESOLVED_TYPES = {"run_id": str, "world_size": int, "steps_per_epoch": int, "total_steps": int, "git_commit": str}


def _record(config: RunConfig, resolved: Mapping, provenance: Any, source: str) -> RunRecord:
    unknown = sorted(set(resolved) - {"network", "preset", *_RESOLVED_TYPES})
    if unknown:
        raise ConfigError(f"{source}: unknown key resolved.{unknown[0]}")
    missing = [k for k in ("network", *_RESOLVED_TYPES) if k not in resolved]
    if missing:
        raise ConfigError(f"{source}: missing key resolved.{missing[0]}")
    values = {}
    for key, hint in _RESOLVED_TYPES.items():
        ok, values[key] = _coerce(resolved[key], hint)
        if not ok:
            raise ConfigError(f"{source}: resolved.{key} must be {hint.__name__}, got {resolved[key]!r}")
    return RunRecord(config=config, network=_network(resolved["network"], source), provenance=dict(provenance or {}),
                     **values)


def _network(d: Any, source: str) -> WorDepthConfig:
    from wordepth.checkpoints.identify import config_problem  # the one validator of recorded network configs

    try:
        cfg = WorDepthConfig.from_dict(d)
    except (TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"{source}: the recorded network is not a WorDepth configuration ({err})") from None
    problem = config_problem(cfg)
    if problem:
        raise ConfigError(f"{source}: the recorded network: {problem}")
    return cfg


def _record_from_flat(d: Mapping, source: str) -> RunRecord:
    """The ``config.json`` of an earlier version: the options flat, with ``model_config`` and the step counts."""
    if "model_config" not in d:
        raise ConfigError(f"{source}: neither a run configuration of this version (no 'format') nor one of an "
                          "earlier version (no 'model_config'): start a new run, or pass the settings as flags")
    config = RunConfig.from_options({k: v for k, v in d.items() if k in _section_of()}, strict=False, source=source)
    resolved = {"network": d["model_config"], "run_id": str(d.get("run_id", "")),
                "world_size": d.get("world_size", 1), "steps_per_epoch": d.get("steps_per_epoch", 0),
                "total_steps": d.get("total_steps", 0), "git_commit": str(d.get("git_commit", "unknown"))}
    return _record(config, resolved, d.get("provenance"), source)


def read_run_record(path: str | Path) -> RunRecord:
    """A run's ``config.json`` (this version's, or an earlier version's flat options).

    Raises:
        ConfigError: unreadable, not JSON, or not a run configuration; one line naming the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the run configuration: {err.strerror or err}") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise ConfigError(f"{path}: not valid JSON ({err}): restore it, or delete it to start a new run") from None
    return RunRecord.from_dict(data, source=str(path))


def saved_run_record(checkpoint_path: str | Path, stored: Mapping | None = None) -> RunRecord | None:
    """The run configuration of a checkpoint: ``config.json`` next to it, else the copy it holds.

    ``config.json`` is used when it belongs to the checkpoint's run (the same ``run_id``; the
    original-layout best-per-metric checkpoints record none and are always next to their run's). A
    checkpoint of an earlier version holds its options flat (``config['args']``).

    Args:
        stored: the checkpoint's ``config`` entry (None for a file that records none).

    Raises:
        ConfigError: a ``config.json`` or a stored record that cannot be read.
    """
    stored = stored if isinstance(stored, Mapping) else {}
    own = stored.get("record")
    own_id = own.get("resolved", {}).get("run_id") if isinstance(own, Mapping) else None
    path = Path(checkpoint_path).parent / CONFIG_FILE
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            log.warning("%s cannot be read (%s): not used", path, err)
            data = None
        if isinstance(data, Mapping) and (data.get("format") == RECORD_FORMAT or "model_config" in data):
            record = RunRecord.from_dict(data, source=str(path))
            if own_id is None or record.run_id == own_id:
                return record
            log.info("%s belongs to another run than %s: the checkpoint's own record is used", path,
                     checkpoint_path)
        elif data is not None:  # e.g. another tool's config.json beside a downloaded checkpoint
            log.info("%s is not a wordepth run configuration: not used", path)
    if isinstance(own, Mapping):
        return RunRecord.from_dict(own, source=f"{checkpoint_path} (its run configuration)")
    if isinstance(stored.get("args"), Mapping) and isinstance(stored.get("model"), Mapping):
        return RunRecord.from_dict({**stored["args"], "model_config": stored["model"]},
                                   source=f"{checkpoint_path} (its stored options)")
    return None


# --------------------------------------------------------------------------- the network's settings
def model_overrides(model: ModelOptions, dataset: str, stored: Mapping | None = None,
                    source: str = "the checkpoint", force: bool = False) -> dict:
    """legacy / max_depth / prior_mean for the network: the flag if given, else the checkpoint's record
    (``stored``, a network config as a dict), else the dataset's defaults (the original configs' values).

    The one home of this rule. A flag that contradicts what ``stored`` records is an error unless ``force``
    (``--force_config``).

    Raises:
        UserError: a contradiction, naming both values and ``source`` (the checkpoint file).
    """
    if stored is not None:
        check_flags_against_checkpoint(model, stored, source, force)
    facts = find_facts(dataset) or NYU
    defaults = {"legacy": False, "max_depth": facts.max_depth, "prior_mean": facts.prior_mean}
    out = {}
    for key, default in defaults.items():
        given = getattr(model, key)
        out[key] = given if given is not None else (stored or {}).get(key, default)
    return {**out, **text_settings(model, stored)}


def text_settings(model: ModelOptions, stored: Mapping | None = None) -> dict:
    """``clip_model`` and ``text_dim`` of the network: the flags, else the checkpoint's record, else RN50's.

    ``--clip_model`` alone takes its width from open_clip's model config (``ViT-B-32``: 512).

    Raises:
        UserError: a width open_clip does not know for ``--clip_model`` without ``--text_dim``, or one that
            contradicts open_clip's.
    """
    from wordepth.text.clip_features import clip_text_width

    stored = stored or {}
    default = WorDepthConfig
    clip = model.clip_model or stored.get("clip_model") or default.clip_model
    if model.text_dim is not None:
        width = clip_text_width(clip) if model.clip_model is not None else None
        if width is not None and width != model.text_dim:
            raise UserError(f"--text_dim {model.text_dim} but CLIP {clip} gives {width}-d features: leave "
                            "--text_dim out, or name the CLIP model of the features with --clip_model")
        return {"clip_model": clip, "text_dim": model.text_dim}
    if model.clip_model is None and stored.get("text_dim") is not None:
        return {"clip_model": clip, "text_dim": stored["text_dim"]}
    width = default.text_dim if clip == default.clip_model else clip_text_width(clip)
    if width is None:
        raise UserError(f"--clip_model {clip}: open_clip has no model of that name, so the width of its features is "
                        "unknown: give it with --text_dim")
    return {"clip_model": clip, "text_dim": width}


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


def check_flags_against_checkpoint(model: ModelOptions, stored: Mapping, source: str, force: bool = False) -> None:
    """--legacy / --max_depth / --prior_mean / --preset against a checkpoint's recorded network config.

    Raises:
        UserError: a given flag differs from the record (``force`` lets the three settings through;
            the network size of a checkpoint can never change).
    """
    via = f" (from --variant {model.variant})" if model.variant else ""
    conflicts = []
    for key in ("legacy", "max_depth", "prior_mean"):
        given, recorded = getattr(model, key), stored.get(key)
        if given is None or recorded is None:
            continue
        if key == "legacy":
            if bool(given) != bool(recorded):
                conflicts.append(f"--legacy{via} but {source} records legacy={bool(recorded)} (the current model)")
        elif abs(float(given) - float(recorded)) > 1e-6 * max(1.0, abs(float(recorded))):
            conflicts.append(f"--{key} {float(given):g}{via} but {source} records {key}={float(recorded):g}")
    for key, flag in (("text_dim", model.text_dim), ("clip_model", model.clip_model)):
        recorded = stored.get(key, getattr(WorDepthConfig, key))  # files before clip_model: RN50's
        if flag is not None and flag != recorded:
            raise UserError(f"--{key} {flag} but {source} was trained on {stored.get('text_dim')}-d "
                            f"{stored.get('clip_model', WorDepthConfig.clip_model)} text features: a checkpoint's text "
                            f"encoder cannot change; leave --{key} out")
    if model.preset is not None and isinstance(stored.get("backbone"), Mapping):
        recorded = preset_of(dict(stored["backbone"]))
        if recorded != model.preset:
            raise UserError(f"--preset {model.preset} but {source} holds a {recorded} network: a checkpoint's "
                            "network size cannot change; leave --preset out")
    if conflicts and force:
        log.warning("--force_config: %s; the flag's value is used", "; ".join(conflicts))
    elif conflicts:
        raise UserError("; ".join(conflicts) + ": leave the flag out to use the checkpoint's setting, or add "
                        "--force_config to override it")


def apply_variant(options: Mapping[str, Any]) -> dict[str, Any]:
    """What ``--variant`` and the dataset's defaults fill in: the changed options (explicit flags win).

    ``--variant`` sets the dataset, ``legacy``, ``max_depth``, ``prior_mean`` (as if given as flags,
    so they take precedence over a checkpoint's record) and the evaluation crop when no crop flag is
    given. Without a dataset the default is NYU; without ``--max_depth_eval`` the dataset's maximum depth.

    Raises:
        UserError: the variant's dataset contradicts ``--dataset``.
    """
    o = dict(options)
    if o.get("variant") is not None:
        variant = get_variant(o["variant"])
        if o.get("dataset") is not None and o["dataset"] != variant.dataset.name:
            raise UserError(f"--variant {variant.name} is a {variant.dataset.name} model, "
                            f"but --dataset {o['dataset']} was given")
        o["dataset"] = variant.dataset.name
        for key, value in variant.model_fields.items():
            if o.get(key) is None:
                o[key] = value
        if not (o.get("garg_crop") or o.get("eigen_crop")):
            o[f"{variant.dataset.eval_crop}_crop"] = True
    if o.get("dataset") is None:
        o["dataset"] = "nyu"
    if o.get("max_depth_eval") is None:
        o["max_depth_eval"] = (find_facts(o["dataset"]) or KITTI).max_depth
    return {k: v for k, v in o.items() if k not in options or options[k] is not v}

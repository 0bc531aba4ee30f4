"""The datasets training, evaluation and the data checker take by name (``--dataset NAME``), as
torchvision names its dataset classes.

A dataset is a :class:`~wordepth.data.splits.SplitDataset` subclass that declares its
:class:`~wordepth.data.facts.DatasetFacts` (name, maximum depth, prior mean, camera, depth units,
sizes, augmentation) and, where its files need it, its reader; :func:`register_dataset` makes it
known by ``facts.name``. NYU and KITTI are registered here. A dataset of your own is one file:

* in ``wordepth/data/datasets/`` (every module there is imported the first time a name is looked
  up), or
* any module or ``.py`` file named in the environment variable ``WORDEPTH_DATASETS``
  (``os.pathsep``-separated), or
* a module your own code imports before it trains (``register_dataset`` is a class decorator).

docs/data.md, "Your own dataset", has a complete example.
"""
from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from wordepth.data.facts import ZEROSHOT_DATASETS, DatasetFacts
from wordepth.data.kitti import KITTIDataset
from wordepth.data.nyu import NYUDataset
from wordepth.data.splits import SplitDataset
from wordepth.errors import UserError

__all__ = ["DATASETS_ENV", "UnknownDatasetError", "build_dataset", "dataset_class", "dataset_facts", "dataset_names",
           "find_facts", "import_datasets", "register_dataset", "registered", "unregister_dataset", "unregistered_note"]

log = logging.getLogger(__name__)

DATASETS_ENV = "WORDEPTH_DATASETS"  # extra dataset modules / .py files, os.pathsep-separated
HOW_TO_REGISTER = ("a dataset of your own is one file that declares its facts and registers its class "
                   "(docs/data.md, 'Your own dataset')")

_REGISTRY: dict[str, type[SplitDataset]] = {}
_discovered = False


class UnknownDatasetError(UserError):
    """A dataset name that no registered dataset has."""


def register_dataset(cls: type[SplitDataset]) -> type[SplitDataset]:
    """Registers a dataset class under ``cls.facts.name`` (usable as a class decorator).

    Registering the same class again (a module imported or run twice) replaces it.

    Raises:
        TypeError: not a :class:`SplitDataset` subclass with :class:`DatasetFacts`.
        UserError: another class already has the name.
    """
    if not (isinstance(cls, type) and issubclass(cls, SplitDataset)):
        raise TypeError(f"register_dataset takes a SplitDataset subclass, not {cls!r}")
    facts = getattr(cls, "facts", None)
    if not isinstance(facts, DatasetFacts):
        raise TypeError(f"{cls.__name__}.facts must be a DatasetFacts (its name, maximum depth, prior mean, ...)")
    name = facts.name
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise UserError(f"dataset name {name!r} ({cls.__name__}.facts.name): use letters, digits, '_' or '-' "
                        "(it names the text feature folder and --dataset)")
    known = _REGISTRY.get(name)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise UserError(f"two datasets are called {name!r}: {_where(known)} and {_where(cls)}; rename one "
                        "(DatasetFacts.name)")
    _REGISTRY[name] = cls
    return cls


def unregister_dataset(name: str) -> None:
    """Forgets a registered dataset (tests, notebooks); an unknown name is ignored."""
    _REGISTRY.pop(name, None)


@contextmanager
def registered(cls: type[SplitDataset]) -> Iterator[type[SplitDataset]]:
    """``with registered(MyDataset): ...``: the dataset is known inside the block only."""
    before = _REGISTRY.get(cls.facts.name)
    register_dataset(cls)
    try:
        yield cls
    finally:
        if before is None:
            unregister_dataset(cls.facts.name)
        else:
            _REGISTRY[cls.facts.name] = before


def dataset_names() -> list[str]:
    """The registered names, sorted (``--dataset``'s choices)."""
    _discover()
    return sorted(_REGISTRY)


def dataset_class(name: str) -> type[SplitDataset]:
    """The class registered as ``name``.

    Raises:
        UnknownDatasetError: no such dataset (the message lists the registered ones and how to add one).
    """
    _discover()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownDatasetError(f"unknown dataset {name!r}: registered are {', '.join(sorted(_REGISTRY))}; "
                                  f"{HOW_TO_REGISTER}") from None


def dataset_facts(name: str) -> DatasetFacts:
    """The facts of a registered dataset.

    Raises:
        UnknownDatasetError: no such dataset.
    """
    return dataset_class(name).facts


def find_facts(name: str | None) -> DatasetFacts | None:
    """The facts of a registered dataset, or None for None or an unknown name."""
    _discover()
    cls = _REGISTRY.get(name) if name is not None else None
    return cls.facts if cls is not None else None


def unregistered_note(name: str) -> str | None:
    """For the text pipeline: None when training or evaluation can read features under ``name`` (a registered
    dataset or a zero-shot set), else one line saying that they cannot, and how to register it.

    Raises:
        UserError: ``name`` is not a plain folder name (it names ``<text_feat_dir>/<name>/``).
    """
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise UserError(f"--dataset {name!r} must be a plain folder name (it names <text_feat_dir>/<dataset>/)")
    if find_facts(name) is not None or name in ZEROSHOT_DATASETS:
        return None
    return (f"{name!r} is not a registered dataset: its captions and features serve wordepth-predict and "
            f"wordepth-text mean, but training and evaluation read only {', '.join(dataset_names())}; to train "
            f"on it, {HOW_TO_REGISTER}")


def build_dataset(dataset: str, mode: str, **kwargs: Any) -> SplitDataset:
    """Builds the dataset registered as ``dataset``.

    Args:
        dataset: a registered name (``nyu``, ``kitti``, yours).
        mode: ``train`` or ``eval``.
        **kwargs: the dataset class's arguments, by name: ``split_file``, ``data_path``, ``gt_path`` and
            ``text_feat_dir``, then any of ``input_height``, ``input_width``, ``do_random_rotate``,
            ``degree``, ``feature_dim``, ``seed``, ``do_kb_crop``, ... (:class:`SplitDataset`,
            :class:`KITTIDataset`).

    Raises:
        UnknownDatasetError: unknown dataset name.
    """
    return dataset_class(dataset)(mode=mode, **kwargs)


# --------------------------------------------------------------------------- finding dataset files
def _where(cls: type) -> str:
    module = sys.modules.get(cls.__module__)
    return f"{cls.__qualname__} ({getattr(module, '__file__', None) or cls.__module__})"


def _discover() -> None:
    """Imports the dataset modules once: ``wordepth/data/datasets/*.py`` and ``$WORDEPTH_DATASETS``."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    from wordepth.data import datasets as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    import_datasets(*filter(None, (item.strip() for item in os.environ.get(DATASETS_ENV, "").split(os.pathsep))))


def import_datasets(*modules: str) -> None:
    """Imports dataset modules by name (``mine``, ``mypackage.mine``), each registering its datasets
    (what ``$WORDEPTH_DATASETS`` names). A module outside the package is found on ``sys.path``, e.g. a
    folder given in ``PYTHONPATH``; files are not loaded by path.

    Raises:
        UserError: a file path instead of a module name, or a module that cannot be found.
    """
    for name in map(str, modules):
        if name.endswith(".py") or "/" in name or os.sep in name:
            folder, module = os.path.split(name.removesuffix(".py"))
            raise UserError(f"{DATASETS_ENV} (or import_datasets) takes module names, not files: {name!r}; put "
                            f"its folder on PYTHONPATH and name the module, e.g. PYTHONPATH={folder or '.'} "
                            f"{DATASETS_ENV}={module}")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            raise UserError(f"cannot import dataset module {name!r} ({err}; {DATASETS_ENV} or import_datasets): "
                            "give a module name on sys.path (e.g. its folder in PYTHONPATH)") from None


register_dataset(NYUDataset)
register_dataset(KITTIDataset)

"""Training on a dataset with a few bad files (``--skip_bad_samples``).

:class:`SkipBadSamples` wraps a training dataset: a sample that cannot be loaded is logged,
counted and replaced by the next one that can. To list every problem before training instead:
``--check_data`` (:mod:`wordepth.data.check`).
"""
from __future__ import annotations

import logging
from multiprocessing.sharedctypes import RawArray

import cv2
import torch.utils.data

__all__ = ["SkipBadSamples"]

log = logging.getLogger(__name__)

_LOAD_ERRORS = (OSError, ValueError, EOFError, cv2.error)  # FileNotFoundError is an OSError
_COUNT_SLOTS = 64  # one counter per process (main + workers), so no lock is needed


class SkipBadSamples(torch.utils.data.Dataset):
    """A dataset whose unreadable samples are replaced by the next readable one.

    A sample whose loading raises (a missing or corrupt file, a bad feature, ...) is logged with
    its path and the error, counted, and sample ``index + 1`` (then ``+ 2``, ...) is returned
    instead. After ``max_attempts`` failures in a row the last error is raised.

    The count lives in shared memory, one slot per process, so :attr:`skipped` in the main
    process includes the skips made in DataLoader workers (fork, spawn or forkserver).

    Args:
        dataset: the dataset to wrap (``set_epoch`` and other attributes are forwarded).
        max_attempts: consecutive samples to try before giving up (default: min(len, 100)).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, max_attempts: int | None = None):
        self.dataset = dataset
        self.max_attempts = max_attempts
        self._counts = RawArray("q", _COUNT_SLOTS)
        self.skipped_samples: list[tuple[int, str, str]] = []  # in this process only

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def skipped(self) -> int:
        """Samples skipped so far, in this process and its DataLoader workers."""
        return int(sum(self._counts))

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getattr__(self, name: str):
        if name in ("dataset", "_counts", "__setstate__"):  # not forwarded (unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def _name(self, index: int) -> str:
        entries = getattr(self.dataset, "entries", None)
        try:
            return str(entries[index].rgb)
        except (TypeError, IndexError, AttributeError):
            return f"index {index}"

    def __getitem__(self, index: int):
        n = len(self.dataset)
        attempts = min(n, 100) if self.max_attempts is None else max(1, min(self.max_attempts, n))
        for k in range(attempts):
            i = (index + k) % n
            try:
                return self.dataset[i]
            except _LOAD_ERRORS as err:
                last = err
                detail = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                worker = torch.utils.data.get_worker_info()
                self._counts[0 if worker is None else 1 + worker.id % (_COUNT_SLOTS - 1)] += 1
                self.skipped_samples.append((i, self._name(i), detail))
                log.warning("skipping sample %d (%s): %s [%d skipped so far]", i, self._name(i), detail,
                            self.skipped)
        raise RuntimeError(f"{attempts} consecutive samples from index {index} ({self._name(index)}) could not be "
                           f"loaded; the last error: {type(last).__name__}: {last}. Run with --check_data to "
                           "list every problem.") from last

"""Counting the calls that would make the host wait for a CUDA device, on any device (a CPU test).

    from tests.sync_counter import count_syncs
    with count_syncs() as syncs:
        model(image, text)
    assert not syncs, syncs          # Counter: call name -> times called

On CUDA these calls copy a result to the host or data from Python to the device, each a blocking
round trip: ``.item()``, ``bool`` / ``int`` / ``float`` / ``index`` of a tensor, ``.tolist()``,
``.numpy()``, ``.cpu()``, output-size-dependent ops (``nonzero``, boolean-mask indexing,
``masked_select``, ``unique``...), comparisons that return a Python bool (``equal``, ``allclose``),
printing a tensor, and ``torch.tensor`` / ``torch.as_tensor`` of Python data. They are recorded by a
``TorchFunctionMode`` (which sees every torch function and tensor method called from Python), so
a CPU run counts what a CUDA run would wait for. Autograd's backward runs in C++ and is not seen.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["SYNCING_CALLS", "count_syncs"]

# Names of torch functions / tensor methods that wait for the device (by ``__name__``).
SYNCING_CALLS = frozenset({
    "item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "__complex__",
    "__repr__", "__format__", "is_nonzero", "equal", "allclose", "nonzero", "nonzero_static_", "argwhere",
    "masked_select", "unique", "unique_consecutive", "bincount", "histc",
})
_FROM_PYTHON = frozenset({"tensor", "as_tensor"})  # a host-to-device copy when the data is Python's


def _is_bool_mask(index: object) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _sync_name(func, args: tuple, kwargs: dict) -> str | None:
    name = getattr(func, "__name__", "")
    if name in SYNCING_CALLS:
        return name
    if name in _FROM_PYTHON and args and not isinstance(args[0], torch.Tensor):
        return f"{name}(python data)"
    if name == "__getitem__" and len(args) > 1 and _is_bool_mask(args[1]):
        return "__getitem__(bool mask)"  # a nonzero
    if name == "repeat_interleave" and "output_size" not in kwargs:
        return name  # the output size is read from the repeats
    return None


class _Recorder(TorchFunctionMode):
    def __init__(self, counts: Counter):
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _sync_name(func, args, kwargs)
        if name is not None:
            self.counts[name] += 1
        return func(*args, **kwargs)


@contextlib.contextmanager
def count_syncs() -> Iterator[Counter]:
    """Counts, by call name, the calls inside the block that would synchronise a CUDA device.

    Yields:
        A ``collections.Counter`` filled while the block runs (empty: no synchronisation).
    """
    counts: Counter = Counter()
    with _Recorder(counts):
        yield counts

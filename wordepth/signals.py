"""Stopping a training cleanly on SIGTERM / SIGINT.

The handler only records the signal; the training loop reads it at the end of the step, agrees on it
across the processes (with the step's other flags, :meth:`wordepth.engine.Trainer.train_step`), saves
and stops. The previous handlers come back when the block ends.
"""
from __future__ import annotations

import logging
import signal
from types import FrameType

log = logging.getLogger("wordepth")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):
    """Raised by the loop after it saved, when a stop signal was received on any process."""


class StopSignals:
    """``with StopSignals() as stop:`` installs the handlers; ``stop.received`` is the signal number or None."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.received or signal.SIGTERM).name

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        log.warning("received %s: saving a last checkpoint at the end of this step", signal.Signals(signum).name)
        self.received = signum

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: the signals stay with their owner
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

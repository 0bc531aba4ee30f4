"""A training's run folder (``log_directory/model_name``): one run at a time, no run overwrites another.

:func:`claim_run_folder` is what :class:`wordepth.engine.Trainer` calls before it writes anything
there: it creates the folder, takes its lock (``.lock``, holding the PID and host of the run) and
refuses a new run into a folder that already holds another run's checkpoints, unless that run is
being resumed (``--checkpoint_path RUN/last.pth``) or ``--overwrite`` is given. A lock left by a
process that no longer exists on this host is taken over with a warning.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import time
import uuid
from pathlib import Path

__all__ = ["LOCK_NAME", "RunFolderError", "RunLock", "claim_run_folder", "previous_run_files"]

LOCK_NAME = ".lock"
_UNWRITTEN_LOCK_GRACE_S = 30.0  # an empty lock younger than this belongs to a run that is starting


class RunFolderError(ValueError):
    """A run folder this run may not use; the message says what to do instead."""


def previous_run_files(run_dir: Path) -> list[Path]:
    """The checkpoints a run leaves in its folder: ``last.pth`` and ``model-<step>-best_*``."""
    if not run_dir.is_dir():
        return []
    found = [run_dir / "last.pth"] if (run_dir / "last.pth").exists() else []
    return found + sorted(run_dir.glob("model-*-best_*"))


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux ``/proc``), to tell a reused PID from the original."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # after "pid (name) ": state is fields[0], starttime fields[19]
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, start: str | None) -> bool:
    """Whether ``pid`` is a running (not zombie) process of this host, and the same one when ``start`` is known."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
        if state[state.rfind(")") + 2:].startswith("Z"):
            return False
    except OSError:
        pass
    now = _process_start(pid)
    return start is None or now is None or now == start


class RunLock:
    """``run_dir/.lock``, created with ``O_EXCL``: held by one process at a time.

    Attributes:
        taken_over: a warning to log when a stale lock was taken over (else None).
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.held = False
        self.taken_over: str | None = None
        self._token = uuid.uuid4().hex  # tells this lock from another taken by the same process

    def _owner(self) -> tuple[dict | None, str]:
        """The lock's contents (None if unreadable) and its raw text."""
        try:
            raw = self.path.read_text()
        except OSError:
            return None, ""
        try:
            owner = json.loads(raw)
            return (owner if isinstance(owner, dict) and "pid" in owner else None), raw
        except ValueError:
            return None, raw

    def _stale_reason(self, owner: dict | None, raw: str) -> str | None:
        """Why the existing lock is stale, or None if its owner may still be running."""
        if owner is None:
            try:
                age = time.time() - self.path.stat().st_mtime
            except OSError:
                return "it is gone"
            return f"it is unreadable and {age:.0f} s old" if age > _UNWRITTEN_LOCK_GRACE_S else None
        pid, host = int(owner.get("pid", -1)), str(owner.get("host", ""))
        if host != socket.gethostname():
            return None  # cannot tell: another machine (a shared file system)
        if pid == os.getpid():
            return "it was left by this process"
        if not _alive(pid, owner.get("start")):
            return f"process {pid} is no longer running"
        return None

    def _remove_stale(self, raw: str) -> None:
        """Move the stale lock aside, making sure it is still the one that was judged stale."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if aside.read_text() != raw:  # another process took it over in between: give it back
                os.replace(aside, self.path)
                return
        except OSError:
            pass
        aside.unlink(missing_ok=True)

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            RunFolderError: another live run holds it.
        """
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner, raw = self._owner()
                why = self._stale_reason(owner, raw)
                if why is None:
                    who = (f"PID {owner.get('pid')} on {owner.get('host')}, started {owner.get('since', '?')}"
                           if owner else "a run that is starting")
                    raise RunFolderError(
                        f"{self.run_dir} is in use by another training ({who}; lock {self.path}): wait for it to "
                        "finish or choose another --model_name; if no such run is active, delete the lock") from None
                self._remove_stale(raw)
                self.taken_over = f"took over the stale lock {self.path} ({why})"
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S"), "token": self._token}, f)
            self.held = True
            atexit.register(self.release)  # also when the run is never started or ends by sys.exit
            return
        raise RunFolderError(f"could not take the lock {self.path}: other processes keep taking it")

    def release(self) -> None:
        """Remove the lock if this process holds it (idempotent)."""
        if not self.held:
            return
        self.held = False
        owner, _ = self._owner()
        if owner is not None and owner.get("token") == self._token:
            self.path.unlink(missing_ok=True)


def claim_run_folder(run_dir: Path, checkpoint_path: str | None, retrain: bool, overwrite: bool,
                     log_directory: str) -> RunLock:
    """Create ``run_dir``, lock it, and check that this run may write there.

    A folder holding another run's checkpoints is refused, except when that run is resumed from its
    own ``last.pth`` (``--checkpoint_path RUN/last.pth`` without ``--retrain``) or with ``overwrite``.

    Returns:
        The held lock; release it when the run ends.

    Raises:
        RunFolderError: the folder cannot be created, is in use, or holds another run.
    """
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"cannot create the run folder {run_dir} (--log_directory {log_directory}): "
                             f"{err.strerror or err}") from None
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunFolderError(f"the run folder {run_dir} (--log_directory {log_directory}) is not writable")
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        existing = previous_run_files(run_dir)
        last = run_dir / "last.pth"
        resuming = (bool(checkpoint_path) and not retrain and last.exists()
                    and Path(checkpoint_path).resolve() == last.resolve())
        if existing and not overwrite and not resuming:
            more = f" and {len(existing) - 3} more" if len(existing) > 3 else ""
            names = ", ".join(p.name for p in existing[:3]) + more
            raise RunFolderError(
                f"{run_dir} already holds a run ({names}): resume it with --checkpoint_path {last}, "
                "or start a new run with another --model_name (or --overwrite to replace it)")
    except BaseException:
        lock.release()
        raise
    return lock

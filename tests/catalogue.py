"""The five checks of a bad-input catalogue case, for any entry point.

One call runs a command on a bad input and asserts what a user sees::

    from tests.catalogue import run_case

    def test_video_out_equal_to_the_input_is_refused(tmp_path):
        clip = make_clip(tmp_path / "c.mp4")
        run_case(predict_cli.main, ["--checkpoint", CK, "--video", clip, "--video_out", clip,
                                    "--out", tmp_path / "out"],
                 tmp_path, names=["--video_out", "c.mp4"])

:func:`run_case` checks

1. the exit status (``code``, default 1: a user error);
2. exactly one ``error:`` line on stderr, naming every string of ``names`` (the file or the flag);
3. no ``Traceback`` on stderr;
4. every file that existed before under ``tmp_path`` (and under ``watch``) is unchanged: the same
   bytes (SHA-256), a symbolic link the same target; ``may_change`` lists the paths allowed to change
   (outputs a successful case writes);
5. nothing is created outside ``out_root`` (default: nothing is created at all when the case fails,
   anything under ``out_root`` when one is given), and no temporary ``.part`` file is left anywhere.

``entry`` is either a console ``main(argv)`` (run in this process: fast, and ``monkeypatch`` can
simulate a full disk) or a module name (``"wordepth.cli.export"``, run as ``python -m`` in a fresh
process). The :class:`Outcome` is returned for further assertions.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Outcome", "run_case", "snapshot", "run_entry"]


@dataclass
class Outcome:
    """What a run showed: exit status, stdout, stderr."""

    code: int
    out: str
    err: str

    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]


def snapshot(*roots: Path) -> dict[str, str]:
    """path -> ``sha256:<hex>`` of every file, ``link:<target>`` of every symbolic link, ``dir`` of folders."""
    seen: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        if root.is_symlink() or root.is_file():
            entries = [root]
        elif root.is_dir():
            entries = [root, *root.rglob("*")]
        else:
            continue
        for p in entries:
            if p.is_symlink():
                seen[str(p)] = f"link:{os.readlink(p)}"
            elif p.is_file():
                try:
                    seen[str(p)] = "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
                except OSError:
                    seen[str(p)] = "unreadable"
            elif p.is_dir():
                seen[str(p)] = "dir"
    return seen


def run_entry(entry: Callable[[list[str]], object] | str, argv: Sequence[object],
              env: dict[str, str] | None = None, timeout: float = 600) -> Outcome:
    """Run ``entry`` on ``argv`` as a user would and capture what it prints.

    A callable is a console ``main(argv)``: ``SystemExit`` gives the status (a string: printed to
    stderr, status 1, as the interpreter does), any other exception is printed as a traceback with
    status 1. A string is a module run with ``python -m`` in a new process.
    """
    argv = [str(a) for a in argv]
    if isinstance(entry, str):
        proc = subprocess.run([sys.executable, "-m", entry, *argv], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})
        return Outcome(proc.returncode, proc.stdout, proc.stderr)
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)  # log lines (warnings, INFO) go where a user would see them
    root = logging.getLogger()
    root.addHandler(handler)
    code = 0
    old_env = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                result = entry(argv)
                code = result if isinstance(result, int) else 0
            except SystemExit as exc:
                if exc.code is None:
                    code = 0
                elif isinstance(exc.code, int):
                    code = exc.code
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except Exception:  # a bug: what the interpreter would print
                traceback.print_exc(file=sys.stderr)
                code = 1
    finally:
        root.removeHandler(handler)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Outcome(code, out.getvalue(), err.getvalue())


def run_case(entry: Callable[[list[str]], object] | str, argv: Sequence[object], tmp_path: Path, *,
             names: Iterable[str] = (), code: int = 1, out_root: Path | None = None,
             may_change: Iterable[Path] = (), watch: Iterable[Path] = (), env: dict[str, str] | None = None,
             timeout: float = 600) -> Outcome:
    """Run a catalogue case and assert the five checks (module docstring).

    Args:
        entry: a console ``main(argv)`` or a module name for ``python -m``.
        argv: the command line (paths may be Path objects).
        tmp_path: the case's folder; every file in it is hashed before and after.
        names: strings the ``error:`` line must contain (a file name, a flag). With ``code=0`` no
            ``error:`` line is expected and ``names`` must be empty.
        code: the expected exit status.
        out_root: where the command may create files; None: nowhere.
        may_change: files allowed to change or disappear (a successful case's outputs).
        watch: more files or folders (outside ``tmp_path``) that must stay unchanged.
        env: environment variables for the run.

    Returns:
        the :class:`Outcome`, for further checks.
    """
    tmp_path = Path(tmp_path)
    names = list(names)
    roots = [tmp_path, *map(Path, watch)]
    before = snapshot(*roots)
    outcome = run_entry(entry, argv, env=env, timeout=timeout)
    after = snapshot(*roots)
    report = f"exit {outcome.code}\nstderr:\n{outcome.err}"

    assert outcome.code == code, f"expected exit status {code}; {report}"
    assert "Traceback" not in outcome.err, report
    lines = outcome.error_lines()
    if code == 0:
        assert not lines and not names, report
    else:
        assert len(lines) == 1, f"expected one error: line; {report}"
        for name in names:
            assert str(name) in lines[0], f"the error line does not name {name!r}: {lines[0]}"

    allowed = {str(Path(p)) for p in may_change}
    changed = [p for p, h in before.items() if p not in allowed and after.get(p) != h]
    assert not changed, f"files that existed before were changed or removed: {changed}; {report}"
    new = [p for p in after if p not in before]
    outside = [p for p in new if out_root is None or not _under(Path(p), Path(out_root))]
    assert not outside, f"created outside {out_root or 'nothing expected'}: {outside}; {report}"
    partial = [p for p in after if ".part" in Path(p).name and after[p] != "dir"]
    assert not partial, f"temporary files left behind: {partial}"
    return outcome


def _under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return path == root

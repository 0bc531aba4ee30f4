"""One policy for user errors: which mistakes a user can fix, and how every command reports them.

A command's ``main`` runs its work inside :func:`user_errors`: a user error (:data:`USER_ERRORS`: a
:class:`UserError`, a missing file, a permission) becomes one line, ``error: <message>``, and exit status 1
(argparse's own usage errors exit with 2); anything else, a plain ``ValueError`` included, is a bug and
keeps its traceback. Set ``WORDEPTH_DEBUG=1`` to see the traceback of a user error too.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


class UserError(ValueError):
    """A mistake the user can fix (a file, a flag, a value), reported as one ``error:`` line.

    Library errors that a user can fix (checkpoints, split files, outputs, downloads, missing weights)
    derive from it, so that callers catch one class. It is a ``ValueError`` for callers of the Python
    API (``except ValueError`` still catches a bad argument); a plain ``ValueError`` is a bug.
    """


# What ends a command with one line. A plain ValueError is not in: it is a bug and keeps its traceback.
# Where numpy, torch or the standard library report a bad value of the user's (a malformed number in a
# split file, an unreadable config), the code that reads the input catches it and raises a UserError
# naming the file, the line or the option.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def error_message(err: BaseException) -> str:
    """The message of a user error as printed after ``error:``.

    DataLoader workers re-raise with the worker's traceback in the message: the original message
    (its last line) is kept. A leading ``TypeName: `` is dropped.
    """
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    if lines and "DataLoader worker" in lines[0]:
        # "Caught E in DataLoader worker process N.", "Original Traceback ...", the indented frames, then
        # the worker's exception as printed: "package.module.E: message" (possibly several lines)
        indented = [i for i, line in enumerate(lines) if line[:1].isspace()]
        tail = lines[indented[-1] + 1:] if indented else lines[-1:]
        msg = "\n  ".join(tail or lines[-1:])
        msg = _QUALIFIED_TYPE.sub("", msg, count=1)
    else:
        msg = "\n  ".join(lines) or type(err).__name__
    for name in (type(err).__name__, "ValueError", "FileNotFoundError", "UserError"):
        if msg.startswith(name + ": "):
            msg = msg.split(": ", 1)[1]
            break
    return msg


# "ValueError: ", "wordepth.zeroshot.data.ZeroShotSampleError: ": the type a worker's traceback names
_QUALIFIED_TYPE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Warning)\w*: ")


@contextmanager
def user_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Turn :data:`USER_ERRORS` (and ``extra``) raised inside into ``SystemExit("error: ...")``.

    ``SystemExit`` with a string prints it to stderr and exits with status 1.
    """
    if os.environ.get("WORDEPTH_DEBUG"):
        yield
        return
    try:
        yield
    except (*USER_ERRORS, *extra) as err:
        raise SystemExit(f"error: {error_message(err)}") from None


def run_command(fn: Callable[..., T], *args, extra: tuple[type[BaseException], ...] = ()) -> T:
    """``fn(*args)`` inside :func:`user_errors`: the one wrapper of every command's work."""
    with user_errors(*extra):
        return fn(*args)

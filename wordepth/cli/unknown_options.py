"""Options a command does not know: an error naming the closest known one, so a typo never changes a number.

``eval.py ... --lerning_rate 5`` used to print a warning among the progress lines and evaluate with
the defaults. Now every unknown option, on the command line or in a config file, is refused with
one line (exit status 2, argparse's for usage errors) naming the closest known option.

The one exception, :data:`ORIGINAL_ONLY_OPTIONS`: launch options of the original code line
(NeWCRFs / the authors' earlier WorDepth configs) that this project replaces by ``torchrun``. They
change nothing here, so inside a config file they are accepted with one warning; on the command
line they are refused like any other (docs/fidelity.md lists them).

Prefix abbreviations are off in every command (``allow_abbrev=False``): ``--learning 5`` is an error,
not ``--learning_rate 5``; an option added later can then never change what an old command meant.
"""
from __future__ import annotations

import argparse
import difflib
import logging
from collections.abc import Sequence

log = logging.getLogger("wordepth")

__all__ = ["ORIGINAL_ONLY_OPTIONS", "check_unknown", "closest_option"]

ORIGINAL_ONLY_OPTIONS = ("--dist_url", "--dist_backend", "--multiprocessing_distributed", "--world_size", "--rank",
                         "--gpu")


def closest_option(parser: argparse.ArgumentParser, flag: str) -> str | None:
    """The known option nearest to ``flag`` in spelling, or None when none is near."""
    known = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    match = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
    return match[0] if match else None


def _config_files(argv: Sequence[str]) -> list[str]:
    return [a[1:] for a in argv if a.startswith("@")]


def _file_with(flag: str, files: Sequence[str]) -> str | None:
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                if any(line.split() and line.split()[0].split("=")[0] == flag for line in f):
                    return path
        except OSError:
            continue
    return None


def check_unknown(parser: argparse.ArgumentParser, argv: Sequence[str], unknown: Sequence[str]) -> tuple[str, ...]:
    """Refuse the unknown options ``parse_known_args`` left over, except :data:`ORIGINAL_ONLY_OPTIONS`
    read from a config file (warned about once); returns those tolerated.

    Args:
        argv: the arguments as parsed (config files as ``@FILE``).
        unknown: what ``parse_known_args`` did not recognise.

    Raises:
        SystemExit: (2) one ``error:`` line naming the option, where it was given and the closest known one.
    """
    files = _config_files(argv)
    on_command_line = {a.split("=")[0] for a in argv if a.startswith("-")}
    flags = [u for u in unknown if u.startswith("-")]
    tolerated = []
    for raw in flags:
        flag = raw.split("=")[0]
        source = _file_with(flag, files) if flag not in on_command_line else None
        if flag in ORIGINAL_ONLY_OPTIONS and source is not None:
            tolerated.append(flag)
            continue
        where = f" in the config file {source}" if source else (" in a config file" if flag not in on_command_line
                                                                 else "")
        near = closest_option(parser, flag)
        hint = f"did you mean {near}?" if near else "see --help for the options"
        if flag in ORIGINAL_ONLY_OPTIONS:
            hint = "the original's launch option is accepted in a config file only; torchrun replaces it here"
        parser.exit(2, f"error: unknown option {flag}{where}: {hint} (an option this program does "
                       "not know would change nothing, so it is refused)\n")
    stray = [u for u in unknown if not u.startswith("-")]
    if stray and not flags:
        parser.exit(2, f"error: unrecognised arguments: {' '.join(stray)}: options start with --; "
                       "a config file must exist (see --help)\n")
    if tolerated:
        log.warning("ignoring the original's launch options (torchrun replaces them): %s", " ".join(tolerated))
    return tuple(tolerated)


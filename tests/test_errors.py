"""The one policy for errors (`wordepth.errors`): a user's mistake is one ``error:`` line, a bug keeps its traceback.

A plain ``ValueError`` is a bug: numpy, torch and the standard library raise it for values they were
handed, and code that reads a user's input turns it into a :class:`~wordepth.errors.UserError` that
names the file or the option. The catalogue of user errors is tests/test_bad_inputs*.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.catalogue import run_case
from wordepth.cli import compare as compare_cli
from wordepth.errors import USER_ERRORS, UserError, user_errors

ROOT = Path(__file__).resolve().parents[1]

# wordepth-compare with its reader replaced by one that has a bug raising ValueError
_BUGGY_COMPARE = """
import sys
from wordepth.cli import compare

def load_metrics(path):
    raise ValueError("a bug in the reader: int() of " + repr(path))

compare.load_metrics = load_metrics
sys.exit(compare.main(sys.argv[1:]))
"""


def test_a_plain_value_error_is_not_a_user_error():
    assert ValueError not in USER_ERRORS and UserError in USER_ERRORS
    with pytest.raises(ValueError, match="a bug"), user_errors():
        raise ValueError("a bug")
    with pytest.raises(SystemExit) as stop, user_errors():
        raise UserError("--flag 3: use 1 or 2")
    assert stop.value.code == "error: --flag 3: use 1 or 2"
    assert issubclass(UserError, ValueError)  # `except ValueError` of API callers still catches a bad argument


def test_a_value_error_raised_by_a_bug_inside_a_command_shows_its_traceback(tmp_path):
    metrics = tmp_path / "m.json"
    metrics.write_text('{"abs_rel": 0.1}')
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("WORDEPTH_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", _BUGGY_COMPARE, str(metrics)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr, proc.stderr
    assert "ValueError: a bug in the reader" in proc.stderr and "load_metrics" in proc.stderr
    assert not [line for line in proc.stderr.splitlines() if line.startswith("error:")], proc.stderr


def test_the_same_command_reports_a_users_bad_file_in_one_line(tmp_path):
    # json.loads raises ValueError (JSONDecodeError); the reader turns it into a UserError naming the file
    bad = tmp_path / "not_json.json"
    bad.write_text('{"abs_rel": 0.1')
    run_case(compare_cli.main, [bad], tmp_path, names=["not_json.json", "is not JSON"])
    text = tmp_path / "text.json"
    text.write_text('{"abs_rel": "small"}')
    run_case(compare_cli.main, [text], tmp_path, names=["text.json", "abs_rel is not a number"])

"""The console commands of pyproject.toml: each resolves, runs with ``python -m`` and answers --help."""
import importlib
import importlib.metadata
import runpy
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

from wordepth.cli import text

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]


def test_the_commands_are_declared():
    assert {"wordepth-train", "wordepth-eval", "wordepth-predict", "wordepth-text", "wordepth-demo"} <= set(COMMANDS)
    assert all(target.startswith("wordepth.cli.") for target in COMMANDS.values())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_entry_point_is_callable_and_module_answers_help(name, monkeypatch, capsys):
    module, attr = COMMANDS[name].split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with warnings.catch_warnings(), pytest.raises(SystemExit) as exc:
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
        runpy.run_module(module, run_name="__main__")  # what `python -m <module> --help` runs
    assert exc.value.code in (0, None)
    assert capsys.readouterr().out.startswith(f"usage: {name} ")


@pytest.mark.parametrize("sub", sorted(text.SUBCOMMANDS))
def test_text_subcommands_answer_help(sub, capsys):
    with pytest.raises(SystemExit) as exc:
        text.main([sub, "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: wordepth-text {sub} ")


def test_installed_commands_match_pyproject():
    try:
        dist = importlib.metadata.distribution("wordepth")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("wordepth is not installed (pip install -r requirements.txt)")
    installed = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    assert installed == COMMANDS, "console commands changed: run `pip install -e .`"


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts").glob("*.py")))
def test_scripts_are_thin_callers_of_a_command(script):
    source = (ROOT / "scripts" / script).read_text(encoding="utf-8")
    assert "sys.path" not in source
    first, *rest = [line for line in source.splitlines() if line.strip()]
    assert first.startswith("from wordepth.cli.") and first.endswith(" import main")
    assert rest == ['if __name__ == "__main__":', "    main()"]
    assert callable(importlib.import_module(first.split()[1]).main)


def test_each_command_has_its_script_named_after_it_and_a_row_in_the_cli_table():
    """scripts/<command without 'wordepth-'>.py (train.py / eval.py at the top), and the table of
    wordepth/cli/__init__.py lists every command of pyproject.toml."""
    import wordepth.cli

    scripts = {p.stem for p in (ROOT / "scripts").glob("*.py")}
    for name, target in COMMANDS.items():
        short = name.removeprefix("wordepth-").replace("-", "_")
        module = target.split(":")[0]
        if short in ("train", "eval"):
            assert (ROOT / f"{short}.py").is_file()
        else:
            assert short in scripts, f"scripts/{short}.py missing for {name}"
            source = (ROOT / "scripts" / f"{short}.py").read_text(encoding="utf-8")
            assert f"from {module} import main" in source
        assert f"``{name}``" in wordepth.cli.__doc__, f"{name} missing from the table in wordepth/cli/__init__.py"
    assert len(scripts) == len(COMMANDS) - 2  # one script per command, no strays


def test_a_script_runs_without_path_edits():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), "--help"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT / "scripts")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: wordepth-compare ")


def test_text_dispatches_to_the_subcommand(tmp_path):
    with pytest.raises(SystemExit, match="^error: caption folder not found"):
        text.main(["extract", "--text_dir", str(tmp_path), "--dataset", "mine", "--split", "test"])

"""Tests for ``wordepth-download`` (wordepth-download) against a local git repository."""
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from wordepth.cli import download

pytestmark = pytest.mark.skipif(shutil.which('git') is None, reason="git is not installed")

FILES = {
    'data_splits/x.txt': b'nyu/test/a.jpg nyu/test/a.png 518.8579\n',
    'text/nyu/test/a.txt': b'a kitchen with a table and chairs\n',
    'text_feat/nyu/test/a.pt': bytes(range(256)) * 4,
}


@pytest.fixture(scope='module')
def script():
    return download


def _make_repo(path: Path, files: dict[str, bytes]) -> str:
    path.mkdir()
    for rel, content in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(content)
    (path / 'README.md').write_text('original\n')

    def git(*args: str) -> None:
        subprocess.run(['git', *args], cwd=path, check=True, capture_output=True)

    git('init', '-q')
    git('add', '.')
    git('-c', 'user.email=t@t', '-c', 'user.name=t', 'commit', '-q', '-m', 'data')
    return 'file://' + str(path)


@pytest.fixture
def repo_url(tmp_path: Path) -> str:
    return _make_repo(tmp_path / 'upstream', FILES)


def test_fetches_all_folders_with_identical_content(script, repo_url, tmp_path, capsys):
    out = tmp_path / 'project'
    script.main(['--repo_url', repo_url, '--out', str(out)])
    for rel, content in FILES.items():
        assert (out / rel).read_bytes() == content, rel
    assert not (out / 'README.md').exists()  # only the three folders
    assert not (out / '.git').exists()
    assert '3 files copied, 0 skipped' in capsys.readouterr().out


def test_second_run_skips_and_overwrite_replaces(script, repo_url, tmp_path, capsys):
    out = tmp_path / 'project'
    script.main(['--repo_url', repo_url, '--out', str(out)])
    local = out / 'text/nyu/test/a.txt'
    local.write_text('edited locally\n')
    capsys.readouterr()

    script.main(['--repo_url', repo_url, '--out', str(out)])
    assert '0 files copied, 3 skipped' in capsys.readouterr().out
    assert local.read_text() == 'edited locally\n'

    script.main(['--repo_url', repo_url, '--out', str(out), '--overwrite'])
    assert '3 files copied, 0 skipped' in capsys.readouterr().out
    assert local.read_bytes() == FILES['text/nyu/test/a.txt']


def test_what_text_copies_only_text(script, repo_url, tmp_path):
    out = tmp_path / 'project'
    script.main(['--repo_url', repo_url, '--out', str(out), '--what', 'text'])
    assert (out / 'text/nyu/test/a.txt').read_bytes() == FILES['text/nyu/test/a.txt']
    assert not (out / 'data_splits').exists()
    assert not (out / 'text_feat').exists()


def test_folder_missing_upstream_is_a_warning(script, tmp_path, caplog, capsys):
    url = _make_repo(tmp_path / 'upstream', {'data_splits/x.txt': b'x\n'})
    out = tmp_path / 'project'
    with caplog.at_level(logging.WARNING):
        script.main(['--repo_url', url, '--out', str(out), '--what', 'splits', 'text_feat'])
    assert (out / 'data_splits/x.txt').read_bytes() == b'x\n'
    assert any('text_feat/' in r.getMessage() for r in caplog.records)
    assert '1 files copied' in capsys.readouterr().out


def test_unreachable_repo_exits_with_message_and_writes_nothing(script, tmp_path):
    out = tmp_path / 'project'
    url = 'file://' + str(tmp_path / 'does-not-exist')
    with pytest.raises(SystemExit) as excinfo:
        script.main(['--repo_url', url, '--out', str(out)])
    message = str(excinfo.value.code)
    assert message.startswith(f'error: could not fetch {url}: ')
    assert 'fatal:' in message and '--repo_url' in message and '\n' not in message
    assert not out.exists()


def test_unknown_ref_exits_with_message(script, repo_url, tmp_path):
    with pytest.raises(SystemExit) as excinfo:
        script.main(['--repo_url', repo_url, '--out', str(tmp_path / 'p'), '--ref', 'no-such-branch'])
    assert str(excinfo.value.code).startswith('error: could not fetch')


def test_missing_git_binary(script, tmp_path, monkeypatch):
    monkeypatch.setenv('PATH', str(tmp_path / 'empty'))
    with pytest.raises(SystemExit) as excinfo:
        script.main(['--repo_url', 'file:///nowhere', '--out', str(tmp_path / 'p')])
    assert 'git was not found' in str(excinfo.value.code)


def test_ref_selects_a_branch(script, repo_url, tmp_path):
    upstream = tmp_path / 'upstream'

    def git(*args: str) -> None:
        subprocess.run(['git', *args], cwd=upstream, check=True, capture_output=True)

    git('checkout', '-q', '-b', 'release')
    (upstream / 'data_splits/x.txt').write_text('release split\n')
    git('-c', 'user.email=t@t', '-c', 'user.name=t', 'commit', '-q', '-am', 'release')
    git('checkout', '-q', '-')
    out = tmp_path / 'project'
    script.main(['--repo_url', repo_url, '--out', str(out), '--what', 'splits', '--ref', 'release'])
    assert (out / 'data_splits/x.txt').read_text() == 'release split\n'

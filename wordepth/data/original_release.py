"""Fetch the original WorDepth release's split files, captions and CLIP text features.

The original repository keeps ``data_splits/``, ``text/`` (one caption per image) and
``text_feat/`` (one CLIP feature per image) in git. `fetch_original_data` makes a shallow,
blob-filtered, sparse clone of just those folders into a temporary directory and copies them
into this project's layout. The command is ``wordepth-download`` (`wordepth.cli.download`).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from wordepth.errors import UserError
from wordepth.outputs import OutputError, contained, write_atomic

logger = logging.getLogger(__name__)

DEFAULT_REPO_URL = "https://github.com/Adonis-galaxy/WorDepth.git"
# what to fetch -> folder name, both upstream and in this project.
FOLDERS = {"splits": "data_splits", "text": "text", "text_feat": "text_feat"}


class DownloadError(UserError, RuntimeError):
    """git is missing or could not fetch; the message is one line."""


_NO_GIT = "git was not found on PATH; install git to fetch the original data."


def _git(args: list[str], what: str, hint: str = "") -> subprocess.CompletedProcess:
    """Run git without a shell or prompts; raise DownloadError with git's cause on failure."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")  # a missing GitHub repo must not ask for a password
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, env=env, check=False)
    except FileNotFoundError:
        raise DownloadError(_NO_GIT) from None
    if result.stderr.strip():
        logger.debug("git %s: %s", args[0], result.stderr.strip())
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        # git ends some failures with advice ("...and the repository exists."); the cause is the
        # first "fatal:"/"error:" line.
        causes = [line for line in lines if line.startswith(("fatal:", "error:"))]
        reason = (causes or lines or [f"git exited with status {result.returncode}"])[0]
        raise DownloadError(f"{what}: {reason.rstrip('.')}.{hint}")
    return result


def sparse_clone(repo_url: str, ref: str, folders: list[str], dest: Path) -> None:
    """Shallow, blob-filtered clone of ``repo_url`` at ``ref`` (``HEAD``: the default branch) with only ``folders``."""
    if shutil.which("git") is None:
        raise DownloadError(_NO_GIT)
    clone = ["clone", "--depth", "1", "--filter=blob:none", "--sparse", "--quiet"]
    if ref != "HEAD":
        clone += ["--branch", ref]
    hint = " Check your internet connection, or pass --repo_url to a local clone (file://...)."
    _git([*clone, repo_url, str(dest)], f"could not fetch {repo_url}", hint)
    _git(["-C", str(dest), "sparse-checkout", "set", *folders],
         f"could not check out {', '.join(folders)} from {repo_url}")


def copy_tree_files(src_root: Path, folders: list[str], out: Path,
                    overwrite: bool) -> tuple[int, int, list[str]]:
    """Copy the files of ``src_root/<folder>`` to ``out/<folder>``.

    Returns:
        ``(copied, skipped, missing_folders)``.
    """
    files: list[Path] = []
    missing: list[str] = []
    for folder in folders:
        root = src_root / folder
        if not root.is_dir():
            missing.append(folder)
            continue
        files.extend(sorted(p for p in root.rglob("*") if p.is_file()))
    copied = skipped = 0
    for path in tqdm(files, desc="copying", unit="file"):
        target = contained(out, path.relative_to(src_root), what="file of the repository")
        if path.is_symlink() or not path.resolve().is_relative_to(src_root.resolve()):
            # a link in the repository could point anywhere on this machine
            logger.warning("skipping %s: a symbolic link in the repository", path.relative_to(src_root))
            continue
        if target.exists() or target.is_symlink():
            if not overwrite:
                skipped += 1
                continue
            if target.is_dir():
                raise OutputError(f"cannot copy {path.relative_to(src_root)}: {target} is a folder")
        write_atomic(target, lambda tmp, src=path: shutil.copyfile(src, tmp))
        copied += 1
    return copied, skipped, missing


def fetch_original_data(out: str | os.PathLike, what: Sequence[str] = tuple(FOLDERS),
                        repo_url: str = DEFAULT_REPO_URL, ref: str = "HEAD",
                        overwrite: bool = False) -> tuple[int, int]:
    """Copy the folders ``what`` (keys of `FOLDERS`) of the original repository under ``out``.

    Existing files are kept unless ``overwrite``; a folder missing upstream is logged as a warning.

    Returns:
        ``(copied, skipped)`` file counts.

    Raises:
        NotADirectoryError: ``out`` exists and is not a folder.
        DownloadError: git is missing or could not fetch.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    folders = [FOLDERS[name] for name in dict.fromkeys(what)]
    with tempfile.TemporaryDirectory(prefix="wordepth_original_") as tmp:
        clone_dir = Path(tmp) / "repo"
        sparse_clone(repo_url, ref, folders, clone_dir)
        copied, skipped, missing = copy_tree_files(clone_dir, folders, out, overwrite)
    for folder in missing:
        logger.warning("%s/ is not in %s (ref %s); nothing copied for it", folder, repo_url, ref)
    return copied, skipped

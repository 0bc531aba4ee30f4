"""Fetch the original WorDepth release's split files, captions and CLIP text features.

The original repository keeps ``data_splits/``, ``text/`` (one caption per image)
and ``text_feat/`` (one CLIP feature per image) in git. This script makes a
shallow, blob-filtered, sparse clone of just those folders into a temporary
directory and copies them into this project's layout::

    python scripts/download_original_data.py --out .
    python scripts/download_original_data.py --what splits text --out data/
    python scripts/download_original_data.py --repo_url file:///path/to/local/WorDepth

Existing files are kept unless ``--overwrite``. A folder missing upstream is
reported as a warning.
"""
import argparse
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tqdm import tqdm

logger = logging.getLogger(__name__)

DEFAULT_REPO_URL = 'https://github.com/Adonis-galaxy/WorDepth.git'
# --what choice -> folder name, both upstream and in this project.
FOLDERS = {'splits': 'data_splits', 'text': 'text', 'text_feat': 'text_feat'}
NO_GIT = "error: git was not found on PATH; install git to fetch the original data."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Fetch data_splits/, text/ and text_feat/ from the original WorDepth repository.")
    parser.add_argument('--repo_url', default=DEFAULT_REPO_URL,
                        help="git URL of the original repository (a local clone needs file://)")
    parser.add_argument('--ref', default='HEAD',
                        help="branch or tag to fetch (default: the remote's default branch)")
    parser.add_argument('--out', default='.', help="project root to write the folders into")
    parser.add_argument('--what', nargs='+', choices=sorted(FOLDERS), default=list(FOLDERS),
                        help="which folders to fetch (default: all)")
    parser.add_argument('--overwrite', action='store_true', help="replace files that already exist")
    return parser.parse_args(argv)


def _git(args: list[str], what: str, hint: str = '') -> subprocess.CompletedProcess:
    """Run git without a shell or prompts; exit with git's last stderr line on failure."""
    env = dict(os.environ, GIT_TERMINAL_PROMPT='0')  # a missing GitHub repo must not ask for a password
    try:
        result = subprocess.run(['git', *args], capture_output=True, text=True, env=env, check=False)
    except FileNotFoundError:
        raise SystemExit(NO_GIT) from None
    if result.stderr.strip():
        logger.debug("git %s: %s", args[0], result.stderr.strip())
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        # git ends some failures with advice ("...and the repository exists."); the cause is the
        # first "fatal:"/"error:" line.
        causes = [line for line in lines if line.startswith(('fatal:', 'error:'))]
        reason = (causes or lines or [f"git exited with status {result.returncode}"])[0]
        raise SystemExit(f"error: {what}: {reason.rstrip('.')}.{hint}")
    return result


def sparse_clone(repo_url: str, ref: str, folders: list[str], dest: Path) -> None:
    """Shallow, blob-filtered clone of ``repo_url`` at ``ref`` with only ``folders`` checked out."""
    if shutil.which('git') is None:
        raise SystemExit(NO_GIT)
    clone = ['clone', '--depth', '1', '--filter=blob:none', '--sparse', '--quiet']
    if ref != 'HEAD':
        clone += ['--branch', ref]
    hint = " Check your internet connection, or pass --repo_url to a local clone (file://...)."
    _git([*clone, repo_url, str(dest)], f"could not fetch {repo_url}", hint)
    _git(['-C', str(dest), 'sparse-checkout', 'set', *folders],
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
        files.extend(sorted(p for p in root.rglob('*') if p.is_file()))
    copied = skipped = 0
    for path in tqdm(files, desc='copying', unit='file'):
        target = out / path.relative_to(src_root)
        if target.exists() and not overwrite:
            skipped += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        copied += 1
    return copied, skipped, missing


def main(argv: list[str] | None = None) -> None:
    """Fetch the requested folders and copy them under ``--out``."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(levelname)s: %(message)s')
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} exists and is not a folder")
    folders = [FOLDERS[name] for name in dict.fromkeys(args.what)]

    with tempfile.TemporaryDirectory(prefix='wordepth_original_') as tmp:
        clone_dir = Path(tmp) / 'repo'
        sparse_clone(args.repo_url, args.ref, folders, clone_dir)
        copied, skipped, missing = copy_tree_files(clone_dir, folders, out, args.overwrite)

    for folder in missing:
        logger.warning("%s/ is not in %s (ref %s); nothing copied for it", folder, args.repo_url, args.ref)
    print(f"{copied} files copied, {skipped} skipped (already present; --overwrite replaces them) "
          f"into {out.resolve()}")


if __name__ == '__main__':
    main()

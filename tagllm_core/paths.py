"""Where Tag-LLM Studio keeps its files on the user's machine.

* cache (dequantised backbones): ``$TAGLLM_CACHE`` or ``$XDG_CACHE_HOME/tagllm``
  or ``~/.cache/tagllm``;
* user data (user tag library, job database, job logs): ``$TAGLLM_HOME`` or
  ``$XDG_DATA_HOME/tagllm`` or ``~/.local/share/tagllm``;
* package data (bundled tags, example inputs), shipped inside the package:
  ``tagllm_core/data/``, found with ``importlib.resources`` so an installed
  wheel finds it as a checkout does;
* the app's own static files (3Dmol.js): ``assets/`` beside the package, in a
  checkout only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from importlib import resources
from pathlib import Path

__all__ = ["cache_dir", "data_dir", "user_tags_dir", "jobs_db_path", "uploads_dir", "atomic_write",
           "remove_stale_temp_files", "REPO_ROOT", "ASSETS_DIR", "PACKAGE_DATA_DIR", "BUNDLED_TAGS_DIR", "EXAMPLES_DIR"]

# The folder that holds the tagllm_core package: the checkout, or site-packages when installed.
REPO_ROOT = Path(__file__).resolve().parent.parent
# What only the Streamlit app uses (3Dmol.js); absent from an installed wheel.
ASSETS_DIR = REPO_ROOT / "assets"


def _package_data_dir() -> Path:
    root = resources.files(__package__) / "data"
    # Tags are memory-mapped by safetensors and listed with glob, so they must be real files: a regular
    # (unzipped) install gives a Path here; anything else (a zip import) is not supported.
    if not isinstance(root, Path):
        raise RuntimeError(f"tagllm_core's package data is not on the file system ({root!r}); "
                           "install the package unzipped (pip install).")
    return root


PACKAGE_DATA_DIR = _package_data_dir()
BUNDLED_TAGS_DIR = PACKAGE_DATA_DIR / "tags"  # <backbone-slug>/<Name>.tag.safetensors, read-only
EXAMPLES_DIR = PACKAGE_DATA_DIR / "examples"  # example input files (CLI, app, README)


def cache_dir() -> Path:
    if os.environ.get("TAGLLM_CACHE"):
        return Path(os.environ["TAGLLM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "tagllm"


def data_dir() -> Path:
    if os.environ.get("TAGLLM_HOME"):
        return Path(os.environ["TAGLLM_HOME"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "tagllm"


def user_tags_dir() -> Path:
    return data_dir() / "tags"


def jobs_db_path() -> Path:
    return data_dir() / "jobs.sqlite"


def uploads_dir() -> Path:
    """Files the app saved for its training jobs, one folder per job; deleted with the job."""
    return data_dir() / "uploads"


def atomic_write(path: Path, write, replace: bool = True) -> None:
    """Call ``write(tmp_path)``, then rename onto ``path`` (same folder, so the rename is atomic):
    readers see the old file or the whole new one, and a crash leaves no half-written file (at most a
    hidden ``.<name>.….tmp`` beside it).

    ``replace=False`` claims the name in the same atomic step (a hard link, which fails when the name
    exists): ``FileExistsError`` if ``path`` exists, and of two writers racing for one name exactly one
    wins, where a check before the write would let both pass and the later rename silently win."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # Locked until the temporary name is gone; the kernel drops the lock when this process dies, so
    # remove_stale_temp_files tells a live writer's file from a dead one's.
    _try_lock(fd)
    fh = None
    try:
        try:
            write(tmp)
            fh = open(tmp, "rb")
            _try_lock(fh.fileno())  # ``write`` may have made a new file under the name (safetensors does)
            os.fsync(fh.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                _link_exclusive(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        Path(tmp).unlink(missing_ok=True)  # the link's other name
    finally:
        if fh is not None:
            fh.close()
        os.close(fd)


def _try_lock(fd: int) -> None:
    # Not blocking: if this process holds the lock through its other descriptor, that is enough. A file
    # system without locks still gets atomic writes (cleanup then goes by age alone).
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


STALE_TEMP_AGE_S = 60.0  # a temporary file this old, and unlocked, belongs to a writer that died
UNLOCKABLE_TEMP_AGE_S = 24 * 3600.0  # where the file system has no locks, only age tells


def remove_stale_temp_files(folder: Path, min_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Delete the ``.<name>.….tmp`` files that ``atomic_write`` left in ``folder`` when its process died
    mid-write; returns them. Never one a live writer is using: a writer holds an exclusive ``flock`` on its
    file until the temporary name is gone (taken again on the file ``write`` may have put under the name),
    so a file whose lock can be taken here has no live writer. ``min_age_s`` covers the instants between a
    file's creation and its lock (a file being written is recent: each write updates its time); where the
    file system refuses locks, only files a day old are removed."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        try:
            age = now - tmp.stat().st_mtime
            if age < min_age_s:
                continue
            fd = os.open(tmp, os.O_RDONLY)
        except OSError:  # gone meanwhile (the writer renamed it), or not ours to open
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer holds it
            except OSError:
                if age < UNLOCKABLE_TEMP_AGE_S:
                    continue
            # Still the file we locked (the name was not renamed away and reused between open and lock)?
            if os.stat(tmp).st_ino != os.fstat(fd).st_ino:
                continue
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


def _link_exclusive(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: claim the name by an exclusive create, then fill it
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.replace(tmp, path)

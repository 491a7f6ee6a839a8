"""Where Tag-LLM Studio keeps its files on the user's machine.

* cache (dequantised backbones): ``$TAGLLM_CACHE`` or ``$XDG_CACHE_HOME/tagllm``
  or ``~/.cache/tagllm``;
* user data (user tag library, job database, job logs): ``$TAGLLM_HOME`` or
  ``$XDG_DATA_HOME/tagllm`` or ``~/.local/share/tagllm``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["cache_dir", "data_dir", "user_tags_dir", "jobs_db_path", "uploads_dir", "atomic_write", "REPO_ROOT",
           "ASSETS_DIR"]

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"


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
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            _link_exclusive(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    Path(tmp).unlink(missing_ok=True)  # the link's other name


def _link_exclusive(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: claim the name by an exclusive create, then fill it
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.replace(tmp, path)

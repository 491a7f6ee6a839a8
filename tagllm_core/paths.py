"""Where Tag-LLM Studio keeps its files on the user's machine.

* cache (dequantised backbones): ``$TAGLLM_CACHE`` or ``$XDG_CACHE_HOME/tagllm``
  or ``~/.cache/tagllm``;
* user data (user tag library, job database, job logs): ``$TAGLLM_HOME`` or
  ``$XDG_DATA_HOME/tagllm`` or ``~/.local/share/tagllm``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "data_dir", "user_tags_dir", "jobs_db_path", "REPO_ROOT", "ASSETS_DIR"]

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

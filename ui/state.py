"""Cached loaders shared by every page and every browser session.

* The backbone is loaded once per server process (``st.cache_resource``; the
  engine's ``get_backbone`` is memoised too). It is shared between sessions:
  ``Backbone.lock`` serialises forward passes, and ``Predictor`` takes it.
* The tag library and the job store are cheap and read their folders from the
  environment (``TAGLLM_HOME``) each time, so they are built per call: a tag
  trained by a background job shows up on the next rerun.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import streamlit as st

from tagllm_core import paths
from tagllm_core.backbone import Backbone, get_backbone
from tagllm_core.exceptions import TagLLMError
from tagllm_core.jobs import JobStore
from tagllm_core.tags import TagLibrary

EXAMPLES_DIR = paths.EXAMPLES_DIR


def backbone_spec() -> Optional[str]:
    """What ``TAGLLM_BACKBONE`` asks for (``None``: the bundled default)."""
    return os.environ.get("TAGLLM_BACKBONE") or None


@st.cache_resource(show_spinner="Loading the language model… (the very first start takes about a minute)")
def _load_backbone(spec: Optional[str]) -> Backbone:
    return get_backbone(spec)


def backbone() -> Backbone:
    """The shared backbone; on failure shows the reason and stops the page."""
    try:
        return _load_backbone(backbone_spec())
    except TagLLMError as err:
        st.error(f"The language model could not be loaded: {err}")
        st.stop()
        raise  # unreachable; st.stop raises


def library(bb: Backbone) -> TagLibrary:
    """Bundled and user tags for ``bb`` (user folder from ``TAGLLM_HOME``)."""
    return TagLibrary(bb.fingerprint)


@st.cache_resource(show_spinner=False)
def _job_store(db_path: str) -> JobStore:
    return JobStore(Path(db_path))


def job_store() -> JobStore:
    """The job database in the user data folder (one store object per database file)."""
    return _job_store(str(paths.jobs_db_path()))


def examples(*suffixes: str) -> list[Path]:
    """Example input files shipped with the package (``tagllm_core/data/examples``) with one of ``suffixes``."""
    if not EXAMPLES_DIR.is_dir():
        return []
    return sorted(p for p in EXAMPLES_DIR.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))


def flash(message: str, kind: str = "success") -> None:
    """Remember a message to show once after the next rerun (see ``show_flash``)."""
    st.session_state.setdefault("_flash", []).append((kind, message))


def show_flash() -> None:
    for kind, message in st.session_state.pop("_flash", []):
        getattr(st, kind)(message)

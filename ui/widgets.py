"""Small composite widgets the pages share."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import streamlit as st

from . import state


def file_or_example(key: str, label: str, types: Sequence[str], example_suffixes: Sequence[str],
                    help: Optional[str] = None) -> tuple[Optional[bytes], Optional[str], Optional[Path]]:
    """An upload box with a bundled-example alternative.

    Returns ``(data, file name, example path)``; the path is set only for a bundled example
    (which the job can read in place), and everything is ``None`` when nothing is chosen.
    """
    source = st.radio(label, ["Upload a file", "Bundled example"], horizontal=True, key=f"{key}_source", help=help)
    if source == "Upload a file":
        up = st.file_uploader(f"{label} file", type=list(types), key=f"{key}_upload", label_visibility="collapsed")
        if up is None:
            return None, None, None
        return up.getvalue(), up.name, None
    names = [p.name for p in state.examples(*example_suffixes)]
    if not names:
        st.caption("No bundled example of this kind.")
        return None, None, None
    name = st.selectbox("Example file", names, key=f"{key}_example")
    path = state.EXAMPLES_DIR / name
    return path.read_bytes(), name, path

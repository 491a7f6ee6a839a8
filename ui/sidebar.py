"""The sidebar every page shares: the backbone in use, the tag counts and running jobs."""

from __future__ import annotations

import streamlit as st

from tagllm_core import paths
from tagllm_core.backbone import Backbone

from . import state


def render(bb: Backbone) -> None:
    info = bb.info()
    lib = state.library(bb)
    tags = lib.list()
    counts = {(k, s): 0 for k in ("function", "domain") for s in ("bundled", "user")}
    for t in tags:
        counts[(t.card.kind, t.source)] = counts.get((t.card.kind, t.source), 0) + 1
    with st.sidebar:
        st.markdown("#### Backbone")
        st.markdown(f"**{info['name']}**  \n{info['parameters'] / 1e6:.0f} M parameters · "
                    f"{info['architecture']}")
        st.caption(f"device **{info['device']}** · dtype **{info['dtype']}** · "
                   f"fingerprint `{info['fingerprint'][:8]}`")
        st.markdown("#### Tags")
        st.markdown(
            f"Function tags: **{counts[('function', 'bundled')] + counts[('function', 'user')]}** "
            f"({counts[('function', 'bundled')]} bundled, {counts[('function', 'user')]} yours)  \n"
            f"Domain tags: **{counts[('domain', 'bundled')] + counts[('domain', 'user')]}** "
            f"({counts[('domain', 'bundled')]} bundled, {counts[('domain', 'user')]} yours)"
        )
        problems = lib.problems()
        if problems:
            st.warning(f"{len(problems)} tag file(s) could not be read; see the Tag library page.")
        try:
            active = state.job_store().list(limit=20, states=("queued", "running"))
        except Exception as err:  # a locked or damaged job database must not take the page down
            st.caption(f"Job database unavailable: {err}")
            active = []
        if active:
            st.info(f"{len(active)} training job(s) active: " + ", ".join(f"<{j.name}>" for j in active))
        st.caption(f"Your tags and jobs live in `{paths.data_dir()}`.")

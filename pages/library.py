"""Tag library: bundled and user tags, export / import / delete, and what the tags look like."""

import streamlit as st

from tagllm_core.exceptions import TagLLMError
from ui import cards, library_ops, state

st.title("Tag library")
bb = state.backbone()
lib = state.library(bb)
state.show_flash()

problems = lib.problems()
if problems:
    with st.expander(f"⚠️ {len(problems)} tag file(s) in the library folders could not be read"):
        for p in problems:
            st.markdown(f"- {p}")

with st.expander("Import a tag file", icon="📥"):
    st.caption("Tag files (`.tag.safetensors`) are checked before they are added: the card, the tensors and "
               "the backbone they were trained on. Pickle files are refused, because opening them can run code.")
    uploaded = st.file_uploader("Tag file", key="lib_import_file")
    overwrite = st.checkbox("Replace a user tag of the same name", key="lib_import_overwrite")
    if st.button("Import", key="lib_import_button", disabled=uploaded is None, type="primary"):
        try:
            info = library_ops.import_tag_bytes(lib, uploaded.getvalue(), uploaded.name, overwrite)
            st.success(f"Imported <{info.name}> ({info.card.kind} tag) into your library.")
        except TagLLMError as err:
            st.error(f"Import refused: {err}")

show = st.radio("Show", ["All tags", "Function tags", "Domain tags"], horizontal=True, key="lib_filter")
kind = {"Function tags": "function", "Domain tags": "domain"}.get(show)
tags = lib.list(kind)
if not tags:
    st.info("No tags here yet. Train one on the Train page or import a tag file.")

for info in tags:
    card = info.card
    with st.container(border=True):
        head, actions = st.columns([4, 1])
        head.markdown(f"### <{info.name}>")
        head.caption(f"{card.kind} tag · {info.source} · "
                     + (card.task or cards.KIND_LABEL.get(card.input_kind, card.input_kind or ""))
                     + f" · created {cards.created_text(card)} · {cards.size_text(info.size_bytes)}")
        actions.download_button("⬇️ Export", info.path.read_bytes(), file_name=info.path.name,
                                mime="application/octet-stream", key=f"export::{info.name}", on_click="ignore")
        with st.expander("Card"):
            st.dataframe(cards.card_table(info, bb.fingerprint), hide_index=True, width="stretch")
            if card.kind == "function":
                cards.render_domain(card, info.name)
                cards.render_reference(info, info.name)
        if info.source == "user":
            c1, c2 = st.columns([3, 1])
            confirm = c1.checkbox(f"Delete <{info.name}> permanently", key=f"delete-confirm::{info.name}")
            if c2.button("Delete", key=f"delete::{info.name}", disabled=not confirm):
                try:
                    lib.delete(info.name)
                    state.flash(f"Deleted <{info.name}>.")
                except TagLLMError as err:
                    state.flash(str(err), "error")
                st.rerun()
        else:
            st.caption("Bundled with the app; it cannot be deleted.")

st.divider()
st.subheader("Interpretability")
all_tags = {t.name: t for t in lib.list()}
if all_tags:
    st.caption("Each tag is a few vectors in the model's input-embedding space. Which real tokens are they "
               "closest to, and where do they sit among the vocabulary?")
    c1, c2 = st.columns([3, 1])
    chosen = c1.selectbox("Tag", list(all_tags), key="interp_tag",
                          format_func=lambda n: cards.tag_label(all_tags[n]))
    k = c2.number_input("Nearest tokens", min_value=1, max_value=20, value=5, key="interp_k")
    info = all_tags[chosen]
    mtime = info.path.stat().st_mtime
    try:
        st.dataframe(library_ops.neighbours_table(str(info.path), mtime, int(k), state.backbone_spec()),
                     hide_index=True, width="stretch")
        st.plotly_chart(library_ops.pca_figure(str(info.path), mtime, state.backbone_spec()), width="stretch",
                        key="interp_pca")
    except TagLLMError as err:
        st.error(str(err))

"""Predict: pick a function tag (and others with the same inputs), give inputs (paste or CSV), get a table,
a plot and per-row details."""

import streamlit as st

from tagllm_core import multi
from tagllm_core.exceptions import InputError, TagLLMError
from ui import cards, editor, inputs, jobs_panel, predict_jobs, predict_view, results, state

TRAINED = "(as trained)"
# A first visit opens here: the README's example, and a bundled tag that beats its classic baselines
# (alphabetical order would open on <BACE>, which only ties RF on descriptors and the training mean).
OPENING_TAG = "Solubility"

st.title("Predict")
bb = state.backbone()
lib = state.library(bb)
tags = {t.name: t for t in lib.list("function")}
if not tags:
    st.info("There is no function tag for this backbone yet. Train one, or import one in the Tag library.")
    st.page_link("pages/train.py", label="Train a function tag", icon="🏋️")
    st.stop()

# A "use this tag" button elsewhere asks for a tag through this key.
requested = st.session_state.pop("predict_tag_request", None)
if requested in tags:
    st.session_state["predict_tag"] = requested
if st.session_state.get("predict_tag") not in tags:
    # Open on a one-input tag when there is one: one molecule or sequence per line is the common case.
    single = [n for n, t in tags.items() if len(t.card.slots) == 1]
    st.session_state["predict_tag"] = OPENING_TAG if OPENING_TAG in single else (single or list(tags))[0]
name = st.selectbox("Function tag", list(tags), key="predict_tag", format_func=lambda n: cards.tag_label(tags[n]))
info = tags[name]
card = info.card
with st.container(border=True):
    cards.render_summary(info, bb.fingerprint)
slots = [(s.name, s.kind) for s in card.slots]
# Tags reading the same kinds of input can run together: one table, a column per tag.
others = [n for n in tags if n != name and multi.input_kinds(tags[n].card) == multi.input_kinds(card)]
st.session_state["predict_more"] = [n for n in st.session_state.get("predict_more", []) if n in others]
more = st.multiselect("Also predict with (one column per tag)", others, key="predict_more",
                      format_func=lambda n: cards.tag_label(tags[n]),
                      help="Function tags that take the same inputs as this one.") if others else []

with st.expander("Advanced: swap domain tags (zero-shot), batch size"):
    st.caption("Combine the function tag with domain tags it was not trained with (the paper's zero-shot "
               "combination). Results are marked zero-shot.")
    domain_tags = [d for d in lib.list("domain")]
    overrides = {}
    for s in card.slots:
        options = [TRAINED, "none"] + [d.name for d in domain_tags if d.card.input_kind in (s.kind, None)]
        trained_as = f"<{s.domain_tag}>" if s.domain_tag else "no domain tag"
        choice = st.selectbox(
            f"Domain tag for '{s.name}' ({cards.KIND_LABEL.get(s.kind, s.kind)})", options,
            key=f"swap::{name}::{s.name}",
            format_func=lambda o, t=trained_as: f"as trained ({t})" if o == TRAINED
            else ("no domain tag" if o == "none" else f"<{o}>"))
        if choice != TRAINED:
            new = None if choice == "none" else choice
            if new != s.domain_tag:
                overrides[s.name] = new
    if overrides:
        st.warning("Zero-shot: this combination was never trained; treat the predictions as exploratory.")
    batch_size = int(st.number_input("Batch size", min_value=1, max_value=256, value=16, key="predict_batch"))

modes = editor.input_modes(slots, editor.available())
if st.session_state.get("predict_mode") not in modes:  # e.g. Draw chosen, then a tag without a molecule
    st.session_state["predict_mode"] = "Paste"
mode = st.radio("Input", modes, horizontal=True, key="predict_mode")
if editor.drawable_slots(slots) and editor.DRAW not in modes:
    st.caption(editor.UNAVAILABLE)
rows, source, input_error = [], None, None
if mode == "Paste":
    if st.button("Load example inputs", key="predict_examples"):
        for slot, text in inputs.example_texts(slots, state.EXAMPLES_DIR).items():
            st.session_state[f"paste::{slot}"] = text
    texts = {}
    for slot, kind in slots:
        hint = ("one per line, or FASTA records" if kind == "protein" else "one per line")
        texts[slot] = st.text_area(f"{cards.KIND_ICON.get(kind, '')} {slot}: {cards.KIND_LABEL.get(kind, kind)}, "
                                   f"{hint}", key=f"paste::{slot}", height=160,
                                   placeholder="CCO\nc1ccccc1O" if kind == "smiles" else None)
    if any((t or "").strip() for t in texts.values()):
        try:
            rows = inputs.rows_from_paste(slots, texts)
            st.caption(f"{len(rows):,} row(s) ready.")
        except InputError as err:
            input_error = str(err)
            st.error(input_error)
elif mode == editor.DRAW:
    drawn, texts = {}, {}
    for slot, kind in slots:
        label = f"{cards.KIND_ICON.get(kind, '')} {slot}: {cards.KIND_LABEL.get(kind, kind)}"
        if kind == "smiles":
            st.markdown(f"**{label}**: draw it, then press Apply")
            drawn[slot] = editor.draw(key=f"draw::{slot}")
        else:
            texts[slot] = st.text_area(f"{label}, one per line", key=f"paste::{slot}", height=120)
    try:
        rows = editor.rows_from_drawing(slots, drawn, texts)
        st.caption("Drawn: " + ", ".join(f"`{s}`" for s in drawn.values()) + f"; {len(rows):,} row(s) ready.")
    except InputError as err:
        input_error = str(err)
        if any(drawn.values()):
            st.error(input_error)
        else:  # an empty canvas is the starting state, not a mistake: a hint until Predict is pressed
            st.caption(input_error)
else:
    uploaded = st.file_uploader("CSV or TSV file (UTF-8, optionally gzipped)", key="predict_upload",
                                type=["csv", "tsv", "txt", "gz"])
    examples = [p.name for p in state.examples(".csv")]
    example = st.selectbox("…or use an example file", ["(none)"] + examples, key="predict_example_file",
                           disabled=uploaded is not None)
    data, fname = None, None
    if uploaded is not None:
        data, fname = uploaded.getvalue(), uploaded.name
    elif example != "(none)":
        data, fname = (state.EXAMPLES_DIR / example).read_bytes(), example
    if data is not None:
        try:
            source = inputs.read_uploaded_table(data, fname)
        except InputError as err:
            input_error = str(err)
            st.error(input_error)
    if source is not None:
        st.caption(f"`{fname}`: {len(source):,} rows; columns {', '.join(map(str, source.columns))}")
        st.dataframe(source.head(5), hide_index=True, width="stretch")
        columns = {}
        pick = st.columns(len(slots))
        for col, (slot, kind) in zip(pick, slots):
            columns[slot] = col.selectbox(
                f"Column for '{slot}' ({cards.KIND_LABEL.get(kind, kind)})", list(source.columns),
                index=inputs.guess_column(list(source.columns), slot, kind, source), key=f"col::{name}::{slot}")
        try:
            rows = inputs.rows_from_table(source, columns)
        except InputError as err:
            input_error = str(err)
            st.error(input_error)

if rows and not input_error:
    input_error = inputs.predict_rows_problem(len(rows))
    if input_error:
        st.error(input_error)

if st.button("Predict", type="primary", key="predict_button"):
    if input_error:
        st.error(input_error)
    elif not rows:
        st.error("Nothing to predict yet: paste at least one entry per input, or choose a CSV file.")
    elif more and overrides:
        st.error("Domain swaps (zero-shot) apply to one tag: clear them, or the extra tags.")
    elif predict_jobs.runs_as_job(len(rows)):
        try:
            job = predict_jobs.start(state.job_store(), [name, *more], rows, [s for s, _ in slots], overrides,
                                     batch_size, upload=(data, fname, columns) if mode == "Upload a CSV" else None)
            st.success(f"{len(rows):,} rows run as background job #{job.id}: follow it under Background "
                       f"predictions below. Its table stays there to download after you leave the page.")
        except TagLLMError as err:
            st.error(str(err))
    else:
        bar = st.progress(0.0, text=f"Preparing {len(rows):,} rows…")

        def on_progress(ev):
            bar.progress(ev.fraction, text=results.progress_text(ev))

        table = source if mode != "Paste" else None
        try:
            if more:
                st.session_state["prediction_many"] = results.run_many(
                    bb, lib, [name, *more], rows, batch_size=batch_size, progress=on_progress, source=table)
            else:
                st.session_state["prediction"] = results.run_prediction(
                    bb, lib, name, rows, overrides, batch_size=batch_size, progress=on_progress, source=table)
                st.session_state["prediction_many"] = None
        except TagLLMError as err:
            st.error(str(err))
        bar.empty()

many = st.session_state.get("prediction_many")
if many is not None:
    if many.tags != [name, *more]:
        st.info(f"Showing the last results, made with {', '.join(f'<{t}>' for t in many.tags)}. "
                f"Press Predict to use the tags chosen now.")
    predict_view.render_many(many)
run = st.session_state.get("prediction")
if run is not None:
    if run.tag != name and many is None:
        st.info(f"Showing the last results, made with <{run.tag}>. Press Predict to use <{name}>.")
    result_card = tags[run.tag].card if run.tag in tags else card
    predict_view.render(run, result_card)

if predict_jobs.any_jobs(state.job_store()):
    st.subheader("Background predictions")
    st.caption(f"Inputs of more than {predict_jobs.job_threshold():,} rows are predicted by a background job.")
    jobs_panel.panel(kinds=(predict_jobs.KIND,), key="predict_job_select")

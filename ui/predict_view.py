"""Rendering a finished prediction: summary, table, download, histogram and the row detail view; for several
tags, the combined table first and one tag's view as the detail. A click on a row of either table opens
that row's detail; the tables shorten long inputs and show missing numbers as blank cells."""

from __future__ import annotations

import streamlit as st

from tagllm_core.multi import column_label
from tagllm_core.prediction import output_labels
from tagllm_core.property_columns import ALERT_COLUMNS, DESCRIPTOR_COLUMNS, PROTEIN_COLUMNS
from tagllm_core.reference import reference_problem
from tagllm_core.tags import TagCard

from . import charts, detail, measured
from .cards import format_number
from .results import (
    TRUNCATE_AT,
    MultiRun,
    PredictionRun,
    display_frame,
    download_frame,
    format_seconds,
    has_property_columns,
    many_download_frame,
    newly_selected,
    with_properties,
)

LABEL_PERCENTILE_HELP = "Share of the tag's training labels at or below the prediction (%); regression tags only."
_MANY_HELP = {"label_percentile": LABEL_PERCENTILE_HELP,
              "reference_percentile": "Percentile against the tag's fixed drug-like reference set (%); the detail "
                                      "view of one tag names the set."}


def reference_help(card: TagCard) -> str:
    """What the reference percentile of ``card``'s predictions compares with, or why it is blank."""
    entry = card.reference_set or {}
    if entry:
        what = ("the predicted class's probability against the reference molecules' probabilities of that class"
                if card.task == "classification" else "the prediction against the reference molecules' predictions")
        skipped = f"; {entry['n_skipped']:,} of the set could not be predicted" if entry.get("n_skipped") else ""
        return (f"Percentile against a fixed drug-like reference set ({entry.get('name', 'unnamed')}, "
                f"{entry.get('n', 0):,} molecules): the share of them at or below, comparing {what} (%). Blank "
                f"for zero-shot swaps{skipped}.")
    return "Blank: " + (reference_problem(card) or
                        "this tag stores no reference distribution (an older tag); add one with "
                        f"`python -m tagllm_core tags add-reference {card.name}`.")


_PROPERTY_HELP = {
    "Lipinski violations": "Rule-of-five limits exceeded (MW > 500, cLogP > 5, H-bond donors > 5, acceptors > 10); "
                           "more than one suggests poor oral absorption.",
    "alerts": "PAINS and Brenk structural alerts matched: a reason to look closer, not a verdict.",
    "PAINS alerts": "Pan-assay interference substructures (Baell & Holloway 2010).",
    "Brenk alerts": "Reactive, toxic or metabolically unstable groups (Brenk et al. 2008).",
    "pI": "Isoelectric point (Bjellqvist pK values, searched over pH 0–14).",
    "GRAVY": "Grand average of hydropathy (Kyte–Doolittle); above 0 is hydrophobic.",
    "instability index": "Guruprasad et al. 1990; above 40 suggests the protein is unstable in vitro.",
    "aromaticity": "Fraction of F, W and Y residues.",
    "non-standard residues": "X, U or O residues, left out of the ProtParam numbers.",
}
_INTEGER_PROPERTIES = {"H-bond donors", "H-bond acceptors", "rotatable bonds", "heavy atoms", "Lipinski violations",
                       "alerts", "length (residues)", "non-standard residues"}


def _property_config(columns) -> dict:
    """Formats of the optional property columns (a tag with two such inputs prefixes them)."""
    cfg = {}
    known = set(DESCRIPTOR_COLUMNS.values()) | set(ALERT_COLUMNS) | set(PROTEIN_COLUMNS.values())
    for col in columns:
        name = str(col).rsplit(": ", 1)[-1]
        if name not in known:
            continue
        if name.endswith("alerts") and name != "alerts":
            cfg[col] = st.column_config.TextColumn(col, width="medium", help=_PROPERTY_HELP[name])
        else:
            cfg[col] = st.column_config.NumberColumn(col, format="%d" if name in _INTEGER_PROPERTIES else "%.2f",
                                                     help=_PROPERTY_HELP.get(name))
    return cfg


@st.cache_data(max_entries=8, show_spinner="Computing the property columns…")
def _with_properties(frame, slots: list):
    return with_properties(frame, slots)


def _properties_choice(slots: list, key: str) -> tuple[bool, bool]:
    """Checkboxes for the optional columns: (property columns, every descriptor in the CSV)."""
    if not has_property_columns(slots):
        return False, False
    kinds = {kind for _, kind in slots}
    molecule_help = ("MW, cLogP, TPSA, H-bond donors/acceptors, rotatable bonds, QED, heavy atoms, Lipinski "
                     "violations and PAINS/Brenk alerts of the molecule the model read")
    protein_help = ("length, MW, pI, GRAVY, instability index, aromaticity and non-standard residues of the "
                    "protein (ProtParam)")
    if kinds >= {"smiles", "protein"}:
        label, help_, full_label = ("Add property columns (descriptors, alerts, ProtParam)",
                                    f"{molecule_help}; {protein_help}",
                                    "…and all descriptors and residue fractions in the download")
    elif "protein" in kinds:
        label, help_, full_label = ("Add protein property columns (ProtParam)", protein_help,
                                    "…and the residue composition in the download (20 fractions)")
    else:
        label, help_, full_label = ("Add descriptor and structural-alert columns", molecule_help,
                                    "…and all RDKit 2D descriptors in the download (about 210 columns)")
    left, right = st.columns(2)
    props = left.checkbox(label, key=key, help=f"{help_}, in the table and the download.")
    full = props and right.checkbox(full_label, key=f"{key}_full")
    return props, full


def _table(frame, slots: list, props: bool, key: str, column_config: dict):
    """The on-screen table: a click on a row opens it in the row detail (``detail_row``)."""
    shown = display_frame(_with_properties(frame, slots) if props else frame, slots)
    event = st.dataframe(shown, hide_index=True, width="stretch", height=min(400, 38 + 35 * len(frame)),
                         column_config={**column_config, **_property_config(shown.columns)},
                         placeholder="",  # an error row's missing numbers are blank, not "None"
                         key=key, on_select="rerun", selection_mode="single-row")
    rows = list(event.selection.rows) if event is not None else []
    row = newly_selected(rows, st.session_state.get(f"{key}_opened"))
    st.session_state[f"{key}_opened"] = int(rows[0]) if rows else None
    if row is not None and row <= len(frame):
        st.session_state["detail_row"] = row
    st.caption(f"Click a row to open its details below. Inputs longer than {TRUNCATE_AT} characters are "
               f"shortened here; the download and the row details have them in full.")


def _column_config(run: PredictionRun, card: TagCard) -> dict:
    cfg = {
        "row": st.column_config.NumberColumn("row", width="small"),
        "status": st.column_config.TextColumn("status", width="small"),
        "zero_shot": st.column_config.CheckboxColumn("zero-shot", width="small"),
        "error": st.column_config.TextColumn("error", width="large"),
        "warnings": st.column_config.TextColumn("warnings", width="medium"),
        "flags": st.column_config.TextColumn(
            "flags", width="medium", help="Why a prediction deserves caution: an inorganic or metal-containing "
                                          "input, a protein far outside the training lengths, a prediction "
                                          "outside the training labels' range."),
        "standardised": st.column_config.TextColumn("standardised", help="The SMILES the model read."),
        "changes": st.column_config.TextColumn("changes", help="What standardisation changed in the input."),
        "similarity": st.column_config.NumberColumn(
            "similarity", format="%.2f", help="Similarity to the nearest training input: Tanimoto of Morgan "
                                              "fingerprints for molecules, 3-mer Jaccard for proteins."),
        "domain": st.column_config.TextColumn(
            "domain", width="small", help="Applicability domain. in: as similar to the training data as the "
                                          "threshold found on validation; out: less; unknown: an older tag."),
        "label_percentile": st.column_config.NumberColumn("percentile (training labels)", format="%.1f",
                                                          help=LABEL_PERCENTILE_HELP),
        "reference_percentile": st.column_config.NumberColumn("percentile (reference set)", format="%.1f",
                                                              help=reference_help(card)),
    }
    if run.task == "regression":
        for col in ("prediction", "lower", "upper"):
            cfg[col] = st.column_config.NumberColumn(col, format="%.3f")
    # the header says what is predicted, in which units; the data (and the CSV) keep "prediction"
    label = column_label(card)
    cfg["prediction"] = (st.column_config.NumberColumn(label, format="%.3f") if run.task == "regression"
                         else st.column_config.TextColumn(label))
    for c in run.classes:
        cfg[f"p({c})"] = st.column_config.NumberColumn(f"p({c})", format="%.3f")
    return cfg


def render(run: PredictionRun, card: TagCard) -> None:
    st.subheader(f"Results · <{run.tag}>")
    if run.zero_shot:
        swapped = ", ".join(f"{slot} → {f'<{tag}>' if tag else 'no domain tag'}"
                            for slot, tag in run.overrides.items())
        st.warning(f"**Zero-shot combination** ({swapped}): <{run.tag}> was not trained with these domain tags. "
                   f"The numbers are exploratory; every row is marked zero_shot in the table and the download.")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Rows", f"{run.n_rows:,}")
    c2.metric("Predicted", f"{run.n_ok:,}")
    c3.metric("Errors", f"{run.n_rows - run.n_ok:,}")
    c4.metric("Time", format_seconds(run.seconds))
    errors = run.errors
    if len(errors):
        st.error(f"{len(errors):,} row(s) could not be predicted; they are marked ❌ with the reason in the "
                 f"table. All other rows were predicted.")
        with st.expander("Show the error messages" if len(errors) <= 50 else "Show the first 50 error messages"):
            for msg in errors["error"].head(50):
                st.markdown(f"- {msg}")
    props, full = _properties_choice(run.slots, "predict_properties")
    _table(run.frame, run.slots, props, "predict_table", _column_config(run, card))
    # The CSV is built only when the button is pressed (a callable), not on every rerun of a 10k-row result.
    st.download_button("⬇️ Download all rows (CSV)",
                       lambda: download_frame(run, props, full).to_csv(index=False).encode("utf-8"),
                       file_name=f"{run.tag}_predictions.csv", mime="text/csv", key="predict_download",
                       on_click="ignore")
    ok = run.frame[run.frame["error"] == ""]
    if len(ok):
        if run.task == "regression":
            fig = charts.prediction_histogram(ok["prediction"].astype(float).tolist(), card.label_sample or [],
                                              label=(card.labels or ["prediction"])[0], zero_shot=run.zero_shot)
        else:
            fig = charts.class_bars(ok["prediction"].tolist(), card.label_sample or [], run.classes)
        st.plotly_chart(fig, width="stretch", key="predict_hist")
        if not card.label_sample:
            st.caption("This tag stores no training labels, so there is nothing to compare with.")
    measured.render(run, card)
    _row_detail(run, card)


def render_many(run: MultiRun) -> PredictionRun:
    """The combined table of several tags and its CSV; returns the tag run chosen for the detail view
    (also kept as ``st.session_state["prediction"]``)."""
    st.subheader("Results · " + ", ".join(f"<{t}>" for t in run.tags))
    errors = run.errors
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Rows", f"{run.n_rows:,}")
    c2.metric("Tags", f"{len(run.tags)}")
    c3.metric("Rows with errors", f"{len(errors):,}")
    c4.metric("Time", format_seconds(run.seconds))
    if len(errors):
        st.error(f"{len(errors):,} row(s) have an error for at least one tag; the reason is in the error column. "
                 f"All other rows were predicted by every tag.")
    numbers = {c: st.column_config.NumberColumn(c, format="%.1f" if c.endswith("_percentile") else "%.3f",
                                                help=_MANY_HELP.get(c.rsplit(" ", 1)[-1]))
               for c in run.frame.columns if c != "row" and run.frame[c].dtype.kind == "f"}
    props, full = _properties_choice(run.slots, "predict_many_properties")
    _table(run.frame, run.slots, props, "predict_many_table",
           {**numbers, "row": st.column_config.NumberColumn("row", width="small"),
            "status": st.column_config.TextColumn("status", width="small"),
            "error": st.column_config.TextColumn("error", width="large")})
    st.download_button("⬇️ Download the table (CSV)",
                       lambda: many_download_frame(run, props, full).to_csv(index=False).encode("utf-8"),
                       file_name="predictions_" + "_".join(run.tags) + ".csv", mime="text/csv",
                       key="predict_many_download", on_click="ignore")
    if st.session_state.get("predict_detail_tag") not in run.tags:
        st.session_state["predict_detail_tag"] = run.tags[0]
    chosen = st.selectbox("Details for one tag", run.tags, key="predict_detail_tag", format_func=lambda t: f"<{t}>")
    st.session_state["prediction"] = run.details[chosen]
    return run.details[chosen]


def _known(value) -> bool:
    return value is not None and value == value  # NaN: blank


def _row_detail(run: PredictionRun, card: TagCard) -> None:
    st.subheader("Row details")
    n = run.n_rows
    if st.session_state.get("detail_row", 1) > n:
        st.session_state["detail_row"] = 1
    row = st.number_input(f"Row (1 – {n:,})", min_value=1, max_value=n, step=1, key="detail_row")
    rec = run.frame.iloc[int(row) - 1]
    ident = " · ".join(str(rec[c]) for c in ("name", "id") if c in rec and str(rec[c]))
    if ident:
        st.markdown(f"**{ident}**")
    if rec["error"]:
        st.error(rec["error"])
    else:
        cols = st.columns(4)
        pred = rec["prediction"]
        cols[0].metric("Prediction" + (" (zero-shot)" if rec.get("zero_shot") else ""),
                       format_number(float(pred)) if run.task == "regression" else str(pred))
        if "lower" in rec and rec["lower"] == rec["lower"] and rec["lower"] is not None:
            cols[1].metric("Interval", f"{format_number(float(rec['lower']))} – {format_number(float(rec['upper']))}")
        if _known(rec.get("label_percentile")):
            cols[2].metric("Percentile in training labels", f"{rec['label_percentile']:.0f}",
                           help=LABEL_PERCENTILE_HELP)
        ref = rec.get("reference_percentile")
        cols[3].metric("Percentile in reference set", f"{ref:.0f}" if _known(ref) else "–", help=reference_help(card))
        for c in run.classes:
            st.caption(f"p({c}) = {format_number(rec[f'p({c})'])}")
        for label in output_labels(card) or []:  # a regression tag with several outputs: the first is above
            value, low, high = (rec.get(f"{k}({label})") for k in ("prediction", "lower", "upper"))
            interval = f" ({format_number(low)} – {format_number(high)})" if _known(low) and _known(high) else ""
            st.caption(f"{label} = {format_number(value)}{interval}")
    for flag in filter(None, str(rec.get("flags", "")).split("; ")):
        st.warning(f"🚩 {flag}")
    if rec.get("domain"):
        sims = ", ".join(f"{c} {rec[c]:.2f}" for c in rec.index if str(c).startswith("similarity") and rec[c] == rec[c])
        st.caption(f"Applicability domain: **{rec['domain']}**" + (f" ({sims} to the nearest training input)"
                                                                   if sims else ""))
    if rec["warnings"]:
        st.caption(f"⚠️ {rec['warnings']}")
    smiles_slots = [slot for slot, kind in run.slots if kind == "smiles"]
    for slot, kind in run.slots:
        st.markdown(f"**{slot}**")
        value = rec[slot]
        if isinstance(value, str) and len(value) > TRUNCATE_AT:  # shortened in the table: here in full
            with st.expander(f"Full input as entered ({len(value):,} characters)"):
                st.code(value, language=None, wrap_lines=True)
        # One SMILES input: depict the molecule the model read, and say what was changed to get it.
        if kind == "smiles" and len(smiles_slots) == 1 and rec.get("changes"):
            st.caption(f"Standardised from `{value}`: {rec['changes']}")
            value = rec["standardised"] or value
        detail.show_input(kind, value, key=f"detail-{int(row)}-{slot}")

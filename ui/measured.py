"""The Predict page's "Compare with measured values": a prediction of an uploaded table scored against one
of its columns (metrics, parity plot), and beside classic models fitted on a training file the user
uploads (``tagllm_core.evaluation``, the same functions as ``tagllm evaluate``)."""

from __future__ import annotations

from typing import Optional

import streamlit as st

from tagllm_core.evaluation import Evaluation, classic_baselines, measured_columns, score_predictions
from tagllm_core.exceptions import InputError
from tagllm_core.prediction import output_labels
from tagllm_core.tags import TagCard
from ui import cards, charts, inputs
from ui.results import PredictionRun

NONE = "(none)"
BASELINES_KEY = "measured_baselines"

REGRESSION_TILES = [("rmse", "RMSE"), ("mae", "MAE"), ("r2", "R²"), ("spearman", "Spearman"),
                    ("interval_coverage", "in interval")]
CLASSIFICATION_TILES = [("auroc", "AUROC"), ("auprc", "AUPRC"), ("accuracy", "accuracy"), ("log_loss", "log loss")]


def options(run: PredictionRun, card: TagCard) -> list[str]:
    """Columns of the uploaded table that can hold measured values (none for pasted or drawn inputs)."""
    if run.source is None or len(run.source) != len(run.frame) or run.zero_shot:
        return []
    return measured_columns(card, run.source, [s for s, _ in run.slots])


def tile_text(name: str, value) -> str:
    if value is None or value != value:
        return "–"
    return f"{value:.0%}" if name == "interval_coverage" else f"{value:.3f}"


def counts_text(ev: Evaluation) -> str:
    """``Scored on 98 rows; 2 without a measured value; 1 not predicted.``"""
    parts = [f"Scored on {len(ev.first.rows):,} row(s)"]
    if ev.rows_unlabelled:
        parts.append(f"{ev.rows_unlabelled:,} without a measured value")
    if ev.rows_failed:
        parts.append(f"{ev.rows_failed:,} not predicted")
    return "; ".join(parts) + "."


def _score(run: PredictionRun, card: TagCard, found: list[str]) -> Optional[Evaluation]:
    """The evaluation against the measured column(s) the user picks among ``found`` (``options``)."""
    outputs = output_labels(card)
    names = {str(x).strip().lower() for x in card.labels or []}
    if outputs:
        st.caption("This tag predicts " + ", ".join(outputs) + ": pick one measured column per output, in this "
                   "order (the first alone is scored against the first output).")
        default = [c for c in found if c.strip().lower() in names][:len(outputs)]
        chosen = st.multiselect("Columns of measured values", found, default=default, max_selections=len(outputs),
                                key="measured_columns")
    else:
        pick = st.selectbox("Column of measured values", [NONE, *found], key="measured_column",
                            index=1 if found[0].strip().lower() in names else 0)
        chosen = [] if pick == NONE else [pick]
    if not chosen:
        return None
    try:
        return score_predictions(card, run.frame, run.source, chosen)
    except InputError as err:
        st.error(str(err))
        return None


def _show_scores(ev: Evaluation, task: str) -> None:
    tiles = REGRESSION_TILES if task == "regression" else CLASSIFICATION_TILES
    shown = [(key, label) for key, label in tiles if key in ev.first.metrics]
    for col, (key, label) in zip(st.columns(max(len(shown), 1)), shown):
        col.metric(label, tile_text(key, ev.first.metrics.get(key)))
    st.caption(counts_text(ev) + (" 'in interval': the share of measured values inside the tag's interval."
                                  if "interval_coverage" in ev.first.metrics else ""))
    pred = ev.first.pred if task == "regression" else ev.first.pred[:, -1]
    st.plotly_chart(charts.parity_figure(ev.first.true.tolist(), pred.tolist(), task, rows="measured",
                                         true_label=f"measured ({ev.first.column})"),
                    width="stretch", key="measured_parity")


def _baselines(run: PredictionRun, card: TagCard, ev: Evaluation) -> None:
    st.markdown("**Against classic models** fitted on your training rows and scored on these rows")
    upload = st.file_uploader("Training file (CSV or TSV with the same kind of inputs and measured values)",
                              type=["csv", "tsv", "txt", "gz"], key="measured_train")
    if upload is None:
        st.caption("The tag's card compares it with these models on its validation rows; this compares them on "
                   "your rows: the training mean, ridge and a random forest on descriptors of the inputs.")
        return
    try:
        train = inputs.read_uploaded_table(upload.getvalue(), upload.name)
    except InputError as err:
        st.error(str(err))
        return
    cols = list(train.columns)
    picks = st.columns(len(run.slots) + 1)
    columns = {slot: pick.selectbox(f"Training column for '{slot}'", cols, key=f"measured_train::{slot}",
                                    index=inputs.guess_column(cols, slot, kind, train))
               for pick, (slot, kind) in zip(picks, run.slots)}
    label_index = cols.index(ev.first.column) if ev.first.column in cols else 0
    label = picks[-1].selectbox("Training column of measured values", cols, index=label_index,
                                key="measured_train_label")
    request = (id(run), ev.first.column, upload.file_id, tuple(columns.items()), label)
    if st.button("Fit the classic models", key="measured_fit"):
        rows = run.frame[[s for s, _ in run.slots]].to_dict("records")
        with st.spinner("Computing descriptors and fitting…"):
            try:
                classic_baselines(card, ev, rows, train, columns, label)
            except InputError as err:
                st.error(str(err))
                return
            st.session_state[BASELINES_KEY] = (request, ev.baselines, ev.compared)
    kept = st.session_state.get(BASELINES_KEY)
    if not kept or kept[0] != request:  # fitted for another prediction, column or training file
        return
    _, ev.baselines, ev.compared = kept
    frame = cards.baselines_frame(card.name, run.task, ev.compared, ev.baselines)
    st.dataframe(frame, hide_index=True, width="stretch")
    n_train = next(iter(ev.baselines.values()))["train_rows"]
    st.caption(f"Fitted on {n_train:,} training row(s). The last column is the tag's metric minus the model's "
               f"on the same rows, with a 95% paired bootstrap interval: 'no clear difference' when the interval "
               f"spans zero. Descriptors: RDKit 2D for SMILES, composition and ProtParam for proteins.")


def render(run: PredictionRun, card: TagCard) -> None:
    """The section under a finished prediction; nothing when the input had no column of measured values."""
    found = options(run, card)
    if not found:
        return
    with st.expander("📏 Compare with measured values", expanded=False):
        st.caption("Your file has columns that may hold measured values. Score the predictions against one: "
                   "rows the tag could not predict and rows without a value are counted, not scored.")
        ev = _score(run, card, found)
        if ev is None:
            return
        _show_scores(ev, run.task)
        _baselines(run, card, ev)

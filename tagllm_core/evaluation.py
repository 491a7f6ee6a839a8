"""A function tag scored against measured values, and beside classic models fitted on a training file:
what ``tagllm evaluate`` prints and what the Predict page shows under "Compare with measured values".

The card's own comparison was made on the validation rows at training time; this one is made on rows
the user holds out, which is the honest test of a tag. Rows whose prediction failed, or which have no
usable measured value, are counted and left out; nothing else is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from .baselines import mean_baseline, rf_descriptors, ridge_outputs
from .data import require_columns
from .descriptors import row_features
from .exceptions import InputError
from .heads import ridge_targets
from .metrics import classification_metrics, paired_difference, regression_metrics
from .prediction import output_labels, trained_max_length
from .standardize import clean_for_model
from .tags import TagCard
from .train_eval import evaluate

__all__ = ["LabelScore", "Evaluation", "score_predictions", "classic_baselines", "measured_columns",
           "MIN_TRAIN_ROWS"]

MIN_TRAIN_ROWS = 10  # fewer rows cannot fit a forest or choose a ridge penalty worth comparing with


@dataclass
class LabelScore:
    """One measured column against one of the tag's outputs, on the rows where both exist."""

    column: str  # the measured column
    output: str  # the tag's output it is scored against ("" for a tag with one output)
    metrics: dict
    rows: np.ndarray  # (M,) positions in the evaluated table
    true: np.ndarray  # (M,) measured values, or class indices
    pred: np.ndarray  # (M,) predictions, or (M, C) class probabilities


@dataclass
class Evaluation:
    """A tag's predictions of a table scored against the table's measured columns."""

    tag: str
    task: str
    scores: list[LabelScore]  # one per measured column; the first is the headline
    rows_failed: int  # rows the tag could not predict
    rows_unlabelled: int  # predicted rows without a usable value in the first measured column
    baselines: dict[str, dict] = field(default_factory=dict)  # classic_baselines: name -> metrics, versus_tag
    compared: dict = field(default_factory=dict)  # the tag's metrics on the rows the baselines were scored on

    @property
    def first(self) -> LabelScore:
        return self.scores[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON for the CLI: the first column's metrics at the top level (as the card's ``valid``),
        ``by_label`` for several, the row counts, and ``baselines`` when they were fitted."""
        out: dict[str, Any] = dict(self.first.metrics)
        if len(self.scores) > 1:
            out["by_label"] = {s.output: s.metrics for s in self.scores}
        out["rows_failed"] = self.rows_failed
        out["rows_unlabelled"] = self.rows_unlabelled
        if self.baselines:
            out["baselines"] = self.baselines
            if self.compared.get("n") != self.first.metrics.get("n"):
                out["tag_on_compared_rows"] = self.compared
        return out


def _class_index(classes: Sequence[str]):
    """value -> class index or None. A measured 1.0 matches a class "1" (a column with a blank cell is
    read as floats, while the training file's integers became "1")."""
    lookup = {str(c).strip(): i for i, c in enumerate(classes)}

    def index(value) -> Optional[int]:
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return None
        text = str(value).strip()
        if text in lookup:
            return lookup[text]
        try:
            number = float(text)
        except ValueError:
            return None
        return lookup.get(str(int(number))) if number.is_integer() else None

    return index


def _measured_classes(card: TagCard, values: pd.Series) -> np.ndarray:
    """(N,) class indices of a measured column, -1 where the value names no class of the tag."""
    index = _class_index([str(c) for c in card.classes])
    return np.array([(-1 if (i := index(v)) is None else i) for v in values], dtype=np.int64)


def score_predictions(card: TagCard, frame: pd.DataFrame, measured: pd.DataFrame,
                      columns: Sequence[str]) -> Evaluation:
    """Score a results table (``prediction.results_frame``: one row per input, ``error`` "" where
    predicted) against ``measured[columns]``, row by row (the two frames have the same length and order).

    Regression: the i-th column against the tag's i-th output, with interval coverage where the tag
    has intervals. Classification: one column of class names. Raises ``InputError`` for a column the
    table lacks, more columns than the tag has outputs, or no row with both a prediction and a value."""
    columns = list(columns)
    if not columns:
        raise InputError("Choose the column of measured values.")
    require_columns(measured, columns, "evaluation")
    if len(frame) != len(measured):
        raise ValueError(f"{len(frame)} result rows for {len(measured)} measured rows")
    outputs = output_labels(card) or []
    if card.task == "classification" and len(columns) > 1:
        raise InputError(f"<{card.name}> is a classifier: give one column of measured classes.")
    if len(columns) > max(len(outputs), 1):
        raise InputError(f"<{card.name}> predicts {max(len(outputs), 1)} label(s); got {len(columns)} measured "
                         f"columns.")
    ok = (frame["error"].fillna("") == "").to_numpy()
    scores = []
    for i, column in enumerate(columns):
        if card.task == "classification":
            y = _measured_classes(card, measured[column])
            keep = ok & (y >= 0)
            probs = frame[[f"p({c})" for c in card.classes]].to_numpy(float)[keep]
            scores.append(LabelScore(column, "", classification_metrics(y[keep], probs) if keep.any() else {},
                                     np.flatnonzero(keep), y[keep], probs))
            continue
        suffix = f"({outputs[i]})" if i and outputs else ""
        y_all = pd.to_numeric(measured[column], errors="coerce").to_numpy(float)
        keep = ok & np.isfinite(y_all)
        pred = frame[f"prediction{suffix}"].to_numpy(float)[keep]
        metrics = regression_metrics(y_all[keep], pred) if keep.any() else {}
        if keep.any() and f"lower{suffix}" in frame:
            low, high = frame[f"lower{suffix}"].to_numpy(float)[keep], frame[f"upper{suffix}"].to_numpy(float)[keep]
            metrics["interval_coverage"] = float(((y_all[keep] >= low) & (y_all[keep] <= high)).mean())
        scores.append(LabelScore(column, outputs[i] if outputs else "", metrics, np.flatnonzero(keep),
                                 y_all[keep], pred))
    if not len(scores[0].rows):
        raise InputError(f"No row has both a prediction and a measured value in '{columns[0]}'"
                         + (f" (the tag's classes: {', '.join(map(str, card.classes))})."
                            if card.task == "classification" else "."))
    return Evaluation(card.name, str(card.task), scores, int((~ok).sum()), int(ok.sum() - len(scores[0].rows)))


def measured_columns(card: TagCard, table: pd.DataFrame, inputs: Sequence[str] = ()) -> list[str]:
    """Columns of ``table`` that can hold measured values for ``card``: numbers in at least half the rows
    (regression) or the tag's class names in at least half (classification); ``inputs`` are skipped.
    A column named like one of the tag's labels comes first."""
    found = []
    for c in table.columns:
        if c in inputs or not len(table):
            continue
        if card.task == "classification":
            share = float((_measured_classes(card, table[c]) >= 0).mean())
        else:
            share = float(np.isfinite(pd.to_numeric(table[c], errors="coerce").to_numpy(float)).mean())
        if share >= 0.5:
            found.append(str(c))
    names = {str(x).strip().lower() for x in card.labels or []}
    return sorted(found, key=lambda c: c.strip().lower() not in names)


def _clean_rows(card: TagCard, rows: Sequence[dict]) -> tuple[list[dict], np.ndarray]:
    """The rows as the model reads them (SMILES standardised, proteins cropped as in training) and the (M,)
    positions of those that clean."""
    crop = trained_max_length(card)
    out, keep = [], []
    for i, row in enumerate(rows):
        cleaned = {}
        for slot in card.slots:
            c, _, _ = clean_for_model(slot.kind, row.get(slot.name), crop.get(slot.kind))
            if not c.ok:
                break
            cleaned[slot.name] = c.value
        else:
            out.append(cleaned)
            keep.append(i)
    return out, np.asarray(keep, dtype=np.int64)


def classic_baselines(card: TagCard, evaluation: Evaluation, inputs: Sequence[dict], train: pd.DataFrame,
                      columns: Optional[dict] = None, label: Optional[str] = None, seed: int = 0) -> dict[str, dict]:
    """Fit the card's classic baselines on ``train`` and score them on the evaluated rows, beside the tag.

    ``inputs``: the evaluated table's raw rows ([{slot: value}], same order as the table); ``columns``:
    slot -> column of ``train`` (default: the slot's name); ``label``: the measured column of ``train``
    (default: the first evaluated column). Fitted: the training mean (or class frequencies), ridge on
    the inputs' descriptors (penalty by leave-one-out, as the warm start) and a 300-tree random forest
    on them. Each entry holds the baseline's metrics on the rows of ``evaluation.first`` and
    ``versus_tag``: the tag's primary metric minus the baseline's, with a paired bootstrap interval. A
    regression tag with several outputs is compared on its first. Training rows that do not clean or
    lack a label are skipped (``train_rows`` says how many were used). The result is also stored as
    ``evaluation.baselines``, and the tag's metrics on the compared rows as ``evaluation.compared`` (an
    evaluated row whose inputs yield no descriptors is left out of the comparison)."""
    first = evaluation.first
    columns = {s.name: (columns or {}).get(s.name, s.name) for s in card.slots}
    label = label or first.column
    require_columns(train, [*columns.values(), label], "baseline training")
    raw = [{slot: train[col].iat[i] for slot, col in columns.items()} for i in range(len(train))]
    train_rows, kept = _clean_rows(card, raw)
    regression = card.task == "regression"
    if regression:
        y_all = pd.to_numeric(train[label], errors="coerce").to_numpy(float)[kept]
        labelled = np.isfinite(y_all)
    else:
        y_all = _measured_classes(card, train[label])[kept]
        labelled = y_all >= 0
    train_rows = [r for r, keep in zip(train_rows, labelled) if keep]
    y_train = y_all[labelled]
    if len(train_rows) < MIN_TRAIN_ROWS:
        raise InputError(f"The training file has {len(train_rows)} usable row(s) (inputs that parse and a "
                         f"measured '{label}'); the baselines need at least {MIN_TRAIN_ROWS}.")
    if regression and np.ptp(y_train) == 0:
        raise InputError(f"Every training value of '{label}' is the same: there is nothing to fit.")
    if not regression and len(np.unique(y_train)) < 2:
        raise InputError(f"The training file holds one class of '{label}' only.")

    eval_rows, ok = _clean_rows(card, [inputs[int(i)] for i in first.rows])
    y_eval, tag_pred = first.true[ok], first.pred[ok]
    kinds = {s.name: s.kind for s in card.slots}
    n_classes = len(card.classes or [])
    y_tr2, y_ev2 = (y_train[:, None], y_eval[:, None]) if regression else (y_train, y_eval)
    found: dict[str, tuple[dict, np.ndarray]] = {"mean": mean_baseline(str(card.task), y_tr2, y_ev2, n_classes)}
    x_tr, x_ev = row_features(kinds, train_rows), row_features(kinds, eval_rows)
    rf = rf_descriptors(str(card.task), x_tr, y_tr2, x_ev, y_ev2, n_classes, seed)
    if rf is not None:
        n_out = 1 if regression else n_classes
        scaler, targets = ridge_targets(str(card.task), y_tr2, n_out)
        out, pred = evaluate(str(card.task), ridge_outputs(str(card.task), n_out, x_tr, targets, x_ev), y_ev2, scaler)
        found["ridge_descriptors"] = (out, pred[:, 0] if regression else pred)
        found["rf_descriptors"] = rf
    result: dict[str, dict] = {}
    for name, (metrics, pred) in found.items():
        result[name] = dict(metrics, train_rows=len(train_rows))
        versus = paired_difference(str(card.task), y_eval, tag_pred, pred, seed=seed)
        if versus is not None:
            result[name]["versus_tag"] = versus.to_dict()
    evaluation.baselines = result
    evaluation.compared = (first.metrics if len(ok) == len(first.rows) else
                           regression_metrics(y_eval, tag_pred) if regression else
                           classification_metrics(y_eval, tag_pred))
    return result

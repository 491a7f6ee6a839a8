"""Running a prediction (one tag, or several into one table) for the Predict page, and shaping its results
for display and download: long inputs shortened on screen only, the optional descriptor and alert columns,
and which row a click on the table opens."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import pandas as pd

from tagllm_core.backbone import Backbone
from tagllm_core.multi import ID_COLUMNS, combined_frame, predict_each
from tagllm_core.prediction import Predictor, output_labels, results_frame
from tagllm_core.progress import ProgressEvent
from tagllm_core.property_columns import property_columns, protein_columns
from tagllm_core.tags import Tag, TagLibrary


class _ResultTable:
    """What the page asks of any result table: its ``frame`` has one row per input row and an
    ``error`` column ("" where the row was predicted)."""

    @property
    def n_rows(self) -> int:
        return len(self.frame)

    @property
    def errors(self) -> pd.DataFrame:
        return self.frame[self.frame["error"] != ""]


@dataclass
class PredictionRun(_ResultTable):
    """What the Predict page keeps in session state between reruns."""

    tag: str
    task: str
    slots: list[tuple[str, str]]  # [(slot, kind)]
    frame: pd.DataFrame  # one row per input row: row, status, prediction, …, flags, error, label_percentile,
    #                      reference_percentile, inputs, warnings, standardised, changes
    zero_shot: bool
    overrides: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    source: Optional[pd.DataFrame] = None  # the uploaded table, for the download
    seconds: float = 0.0

    @property
    def n_ok(self) -> int:
        return int((self.frame["error"] == "").sum())


def run_prediction(bb: Backbone, library: TagLibrary, tag_name: str, rows: list, overrides: dict,
                   batch_size: int = 16, progress: Optional[Callable[[ProgressEvent], None]] = None,
                   source: Optional[pd.DataFrame] = None) -> PredictionRun:
    """Predict ``rows`` ([{slot: raw value}]) with ``tag_name``. Raises ``TagLLMError`` for unusable setups
    (missing domain tag, wrong backbone); bad rows end up in the ``error`` column."""
    t0 = time.perf_counter()
    tag = library.get(tag_name)
    predictor = Predictor(bb, tag, library, domain_overrides=overrides or None)
    results = predictor.predict(rows, batch_size=batch_size, progress=progress)
    return single_run(tag, results, predictor.zero_shot, overrides, source, time.perf_counter() - t0)


def single_run(tag: Tag, results: list, zero_shot: bool = False, overrides: Optional[dict] = None,
               source: Optional[pd.DataFrame] = None, seconds: float = 0.0) -> PredictionRun:
    """One tag's ``PredictionRow``s as the page shows them: ``results_frame`` (the CLI's columns, percentiles
    among the training labels and against the reference set included) and a status column."""
    card = tag.card
    classes = list(card.classes) if card.task == "classification" else []
    frame = results_frame(results, classes or None, output_labels(card))
    frame.insert(1, "status", [_status(e, f, w) for e, f, w in zip(frame["error"], frame["flags"], frame["warnings"])])
    return PredictionRun(tag=tag.name, task=card.task or "regression", slots=[(s.name, s.kind) for s in card.slots],
                         frame=frame, zero_shot=zero_shot, overrides=dict(overrides or {}),
                         classes=classes, source=source, seconds=seconds)


@dataclass
class MultiRun(_ResultTable):
    """Several tags over the same rows (``tagllm_core.multi``): the combined table, and each tag's own
    run for the detail view."""

    tags: list[str]  # tag names, the first one's slots name the inputs
    slots: list[tuple[str, str]]  # [(slot, kind)] of the first tag
    frame: pd.DataFrame  # row, status, name/id, a column (and interval) per tag, flags, error, inputs, …
    details: dict[str, PredictionRun]  # tag name -> PredictionRun
    source: Optional[pd.DataFrame] = None
    seconds: float = 0.0



def run_many(bb: Backbone, library: TagLibrary, tag_names: list, rows: list, batch_size: int = 16,
             progress: Optional[Callable[[ProgressEvent], None]] = None,
             source: Optional[pd.DataFrame] = None) -> MultiRun:
    """Predict ``rows`` with every tag in ``tag_names`` (same inputs; ``InputError`` otherwise)."""
    t0 = time.perf_counter()
    runs = predict_each(bb, tag_names, rows, library, batch_size=batch_size, progress=progress)
    frame = combined_frame(rows, runs)
    frame.insert(1, "status", [_status(e, f, w) for e, f, w in zip(frame["error"], frame["flags"], frame["warnings"])])
    seconds = time.perf_counter() - t0
    first = runs[0].tag.card
    return MultiRun(tags=[r.tag.name for r in runs], slots=[(s.name, s.kind) for s in first.slots], frame=frame,
                    details={r.tag.name: single_run(r.tag, r.results, source=source, seconds=seconds) for r in runs},
                    source=source, seconds=seconds)


def _status(error: str, flags: str, warnings: str) -> str:
    """A flag (inorganic input, far from the training data) outranks a warning (an input was cropped)."""
    if error:
        return "❌ error"
    if flags:
        return "🚩 flagged"
    return "⚠️ ok" if warnings else "✅ ok"


def download_frame(run: PredictionRun, properties: bool = False, full: bool = False) -> pd.DataFrame:
    """Every row for the CSV download: the uploaded columns (if any) followed by the results, inputs in full;
    ``properties``/``full`` as in ``with_properties``."""
    res = run.frame.drop(columns=["status"])
    return _with_source(with_properties(res, run.slots, full) if properties else res, run.slots, run.source)


def many_download_frame(run: MultiRun, properties: bool = False, full: bool = False) -> pd.DataFrame:
    """The combined table for the CSV download, after the uploaded columns (if any)."""
    res = run.frame.drop(columns=["status"])
    return _with_source(with_properties(res, run.slots, full) if properties else res, run.slots, run.source)


def has_property_columns(slots: list) -> bool:
    """Whether a table has SMILES or protein inputs, hence property columns to offer."""
    return any(kind in ("smiles", "protein") for _, kind in slots)


def with_properties(frame: pd.DataFrame, slots: list, full: bool = False) -> pd.DataFrame:
    """``frame`` with each input's property columns right after the ``error`` column: for a SMILES
    (``property_columns``) MW, cLogP, TPSA, …, Lipinski violations, PAINS and Brenk alerts (``full``:
    every RDKit 2D descriptor too), computed on the molecule the model read (standardised); for a protein
    (``protein_columns``) length, MW, pI, GRAVY, instability index, aromaticity (``full``: the residue
    composition too). Blank where the input could not be read. With two inputs of properties, each
    block's names start with its slot."""
    inputs = [(slot, kind) for slot, kind in slots if kind in ("smiles", "protein") and slot in frame.columns]
    if not inputs:
        return frame
    blocks = [(property_columns if kind == "smiles" else protein_columns)(
        frame[slot].tolist(), full, prefix=f"{slot}: " if len(inputs) > 1 else "") for slot, kind in inputs]
    cols = list(frame.columns)
    at = cols.index("error") + 1 if "error" in cols else len(cols)
    left, right = frame.iloc[:, :at].reset_index(drop=True), frame.iloc[:, at:].reset_index(drop=True)
    out = pd.concat([left, *blocks, right], axis=1)
    out.index = frame.index
    return out


TRUNCATE_AT = 60  # characters of an input shown in the on-screen table


def shorten(value, limit: int = TRUNCATE_AT):
    """``value`` cut to ``limit`` characters, the last one an ellipsis, when it is a longer string."""
    if isinstance(value, str) and len(value) > limit:
        return value[: limit - 1] + "…"
    return value


def display_frame(frame: pd.DataFrame, slots: list, limit: int = TRUNCATE_AT) -> pd.DataFrame:
    """The table as shown on screen: every input column (and ``standardised``) with long values shortened
    to ``limit`` characters; the download and the row detail keep the full text. Missing numbers stay
    missing (the table shows them blank), never the text "None"."""
    cols = [c for c in [*(s for s, _ in slots), "standardised"] if c in frame.columns]
    if not cols:
        return frame
    out = frame.copy()
    for c in cols:
        out[c] = out[c].map(lambda v: shorten(v, limit))
    return out


def newly_selected(selected_rows: Sequence[int], last: Optional[int]) -> Optional[int]:
    """The 1-based row that a click on the table opens in the row detail, or ``None`` to leave the detail
    alone. ``selected_rows``: the table's selection (0-based positions in the frame, sorting in the
    browser notwithstanding); ``last``: the position already opened on an earlier rerun, which must not
    undo a row chosen since in the detail's own box."""
    if not selected_rows:
        return None
    position = int(selected_rows[0])
    return None if position == last else position + 1


def _with_source(res: pd.DataFrame, slots: list, source: Optional[pd.DataFrame]) -> pd.DataFrame:
    if source is None or len(source) != len(res):
        return res
    # the uploaded table already holds the inputs and the id or name column the rows carried
    extra = res.drop(columns=["row", *[s for s, _ in slots], *[c for c in ID_COLUMNS if c in res.columns]])
    left = source.reset_index(drop=True)
    extra = extra.rename(columns={c: f"{c}_pred" if c in left.columns else c for c in extra.columns})
    return pd.concat([left, extra], axis=1)


def progress_text(ev: ProgressEvent) -> str:
    text = f"Predicted {ev.step:,} of {ev.total_steps:,} valid rows"
    if ev.throughput:
        text += f" · {ev.throughput:.1f} rows/s"
    if ev.eta_s is not None and ev.step < ev.total_steps:
        text += f" · about {format_seconds(ev.eta_s)} left"
    return text


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "–"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"

"""Many function tags over the same inputs in one run: one table, a column per tag (issue 10 item 4).

``predict_many(backbone, tags, rows)`` runs one ``Predictor`` per tag over the same rows and merges
the results by row, the way ADMET-AI shows a property table. Tags must read the same kinds of input
(all single-SMILES tags, say); their slots are matched by kind, so a tag whose slot is called ``drug``
reads the ``smiles`` column of another. What every tag says alike (an invalid SMILES, a salt stripped,
an inorganic input) is reported once; what only one tag says is prefixed with that tag.

Columns: ``row``, any ``name``/``id`` the rows carry, then per tag its prediction under
``column_label(card)`` ("Solubility (log10 mol/L)"), its interval (`` lower``/`` upper``) and class
probabilities (`` p(class)``) and its applicability domain (`` similarity``, `` domain``: each tag has its
own training inputs), then ``flags`` and ``error``, then per tag its percentiles (`` label_percentile``,
`` reference_percentile``: among its training labels and against its reference set, blank where unknown),
then the inputs, ``warnings``, ``standardised`` and ``changes``. A row a tag could not predict has empty
cells, not ``None``, in the CSV.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from .backbone import Backbone
from .exceptions import InputError
from .prediction import PredictionRow, Predictor, domain_columns, label_columns, output_labels, percentile_columns
from .progress import ProgressCallback, ProgressEvent
from .tags import Tag, TagCard, TagLibrary

if TYPE_CHECKING:  # pandas loads lazily, where a table is built
    import pandas as pd

__all__ = ["ID_COLUMNS", "TagResults", "ManyPredictor", "column_label", "input_kinds", "same_inputs_problem",
           "predict_each",
           "combined_frame", "predict_many", "predict_many_table"]

# Row keys that name a row rather than feed a tag: kept in their own columns, next to the row number.
ID_COLUMNS = ("name", "id")
_KIND_WORDS = {"smiles": "a SMILES", "protein": "a protein sequence", "text": "text"}


def column_label(card: TagCard) -> str:
    """The tag's name with the units its template states: "... Output: The aqueous solubility
    (log10 mol/L) is <Solubility>" or "Task: aqueous solubility (log10 mol/L). Input: ..." ->
    "Solubility (log10 mol/L)". Cards have no units field, and the template's wording is what the
    model was trained to complete; without units, the name."""
    template = card.template or ""
    end = template.rfind(f"<{card.name}>")
    phrase = template[:end] if end >= 0 else ""
    task = re.match(r"\s*Task:(.*?)Input:", phrase, re.S)
    # The last units stated win: the output phrase's (older templates name them there), else the task's.
    stated = (f"{task.group(1)} " if task else "") + phrase.rsplit("Output:", 1)[-1]
    units = re.findall(r"\(([^()]+)\)", stated)
    return f"{card.name} ({units[-1].strip()})" if units else card.name


def input_kinds(card: TagCard) -> tuple:
    """The kinds a tag reads, in a fixed order: what two tags must share to be run together."""
    return tuple(sorted(s.kind for s in card.slots))


def _describe(card: TagCard) -> str:
    return " + ".join(_KIND_WORDS.get(s.kind, s.kind) for s in card.slots) or "no input"


def same_inputs_problem(cards: Sequence[TagCard]) -> Optional[str]:
    """Why these tags cannot be predicted together (None when they can)."""
    if not cards:
        return "Choose at least one function tag."
    domain = [c.name for c in cards if c.kind != "function"]
    if domain:
        return f"{', '.join(f'<{n}>' for n in domain)}: domain tags do not predict; choose function tags."
    first = cards[0]
    other = [c for c in cards[1:] if input_kinds(c) != input_kinds(first)]
    if not other:
        return None
    listed = "; ".join(f"<{c.name}> reads {_describe(c)}" for c in other)
    return (f"Tags predicted together must take the same inputs: <{first.name}> reads {_describe(first)}, "
            f"but {listed}. Predict those separately.")


def _slot_mapping(first: TagCard, card: TagCard) -> dict:
    """first tag's slot -> this tag's slot, matched by kind in the order each template names them."""
    free = list(card.slots)
    mapping = {}
    for s in first.slots:
        match = next(o for o in free if o.kind == s.kind)
        free.remove(match)
        mapping[s.name] = match.name
    return mapping


@dataclass
class TagResults:
    """One tag's results over the rows (``Predictor.predict``'s, in row order), its column label, and
    how to word its messages in the first tag's slot names."""

    tag: Tag
    label: str
    results: list[PredictionRow]  # in row order
    renames: dict[str, str]  # this tag's slot -> the first tag's slot

    @cached_property
    def similarity_slots(self) -> list[str]:
        """The inputs compared with the training data, the same for every row (once, not per row)."""
        return list(dict.fromkeys(s for r in self.results for s in r.similarity))

    def said(self, text: str) -> str:
        """Messages name the slot they concern ("row 2, drug: invalid SMILES"); in the first tag's names,
        the same input problem reads the same for every tag and is reported once."""
        moved = {mine: first for mine, first in self.renames.items() if mine != first}
        if not moved:
            return text
        pattern = rf"(^|, )({'|'.join(map(re.escape, moved))}): "  # one pass: swapped names stay swapped
        return re.sub(pattern, lambda m: f"{m.group(1)}{moved[m.group(2)]}: ", text)


def _tag_progress(progress: Optional[ProgressCallback], i: int, n: int, name: str) -> Optional[ProgressCallback]:
    """One bar over all tags: tag i's events become steps i*total..(i+1)*total of n*total."""
    if progress is None:
        return None

    def forward(ev: ProgressEvent) -> None:
        progress(ProgressEvent(ev.stage, i * ev.total_steps + ev.step, n * ev.total_steps,
                               throughput=ev.throughput, message=f"<{name}> ({i + 1} of {n})"))

    return forward


def _merged(texts_per_tag: Sequence[Sequence[str]], runs: Sequence[TagResults]) -> str:
    """Messages said by every tag appear once; the others are prefixed with the tag that said them."""
    out: list[str] = []
    for run, texts in zip(runs, texts_per_tag):
        for t in texts:
            common = all(t in other for other in texts_per_tag)
            item = t if common else f"<{run.tag.name}>: {t}"
            if item not in out:
                out.append(item)
    return "; ".join(out)


def _error(runs: Sequence[TagResults], i: int) -> str:
    errors = [run.said(e) if (e := run.results[i].error) else None for run in runs]
    said = [e for e in errors if e]
    if not said:
        return ""
    if len(said) == len(runs) and len(set(said)) == 1:
        return said[0]  # an input error: the same for every tag
    return "; ".join(f"<{run.tag.name}>: {e}" for run, e in zip(runs, errors) if e)


def _tag_columns(run: TagResults, r: PredictionRow) -> dict:
    card, label = run.tag.card, run.label
    rec = {label: r.prediction}
    if card.interval:
        rec[f"{label} lower"], rec[f"{label} upper"] = r.lower, r.upper
    for key, value in label_columns(r, output_labels(card) or [], bool(card.interval)).items():
        rec[f"{label} {key}"] = value  # "<Tox> prediction(LD50)": every label of a multi-output tag
    if card.task == "classification":
        probs: Sequence[Optional[float]] = r.outputs or [None] * len(card.classes)
        for c, p in zip(card.classes, probs):
            rec[f"{label} p({c})"] = p
    # applicability domain: each tag has its own training inputs, so its own similarity and domain
    for key, value in domain_columns(r, run.similarity_slots).items():
        if key.startswith("similarity("):  # one per input of a tag with several, in the first tag's names
            slot = key[len("similarity("):-1]
            key = f"similarity({run.renames.get(slot, slot)})"
        rec[f"{label} {key}"] = value
    return rec


def combined_frame(rows: Sequence[dict], runs: Sequence[TagResults]) -> "pd.DataFrame":
    """The one table of ``predict_many`` from each tag's results (see the module docstring)."""
    import pandas as pd

    slots = [s.name for s in runs[0].tag.card.slots]
    records = []
    for i, row in enumerate(rows):
        # the row's number in its file (a chunk's rows do not start at 1)
        rec: dict[str, Any] = {"row": runs[0].results[i].row}
        rec.update({k: row[k] for k in ID_COLUMNS if k in row and k not in slots})
        for run in runs:
            rec.update(_tag_columns(run, run.results[i]))
        rec["flags"] = _merged([[run.said(f) for f in run.results[i].flags] for run in runs], runs)
        rec["error"] = _error(runs, i)
        for run in runs:  # after the error: what a screener reads first comes first (issue 10 item 7)
            rec.update({f"{run.label} {k}": v for k, v in percentile_columns(run.results[i]).items()})
        rec.update({k: v for k, v in row.items() if k not in rec})
        rec["warnings"] = _merged([[run.said(w) for w in run.results[i].warnings] for run in runs], runs)
        std = runs[0].results[i].standardised  # standardisation does not depend on the tag
        rec["standardised"] = (next(iter(std.values())) if len(std) == 1
                               else "; ".join(f"{k}: {v}" for k, v in std.items()))
        rec["changes"] = _merged([[run.said(c) for c in run.results[i].changes] for run in runs], runs)
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _resolve(tags: Sequence[Union[Tag, str]], library: Optional[TagLibrary]) -> list[Tag]:
    """Tags, or names looked up in ``library``; a tag named twice once; refused unless the inputs match."""
    chosen: list[Tag] = []
    for t in tags:
        if isinstance(t, str):
            if library is None:
                raise InputError("Predicting tags by name needs the tag library.")
            t = library.get(t)
        if all(c.name != t.name for c in chosen):
            chosen.append(t)
    problem = same_inputs_problem([t.card for t in chosen])
    if problem:
        raise InputError(problem)
    return chosen


class ManyPredictor:
    """The predictors of several tags over the same inputs, built and checked once: a file predicted in
    chunks (``streaming``) reuses them for every chunk. Raises ``InputError`` when the tags do not take the
    same inputs (``TagLLMError`` for a tag made with another backbone) before any row is predicted."""

    def __init__(self, backbone: Backbone, tags: Sequence[Union[Tag, str]], library: Optional[TagLibrary] = None):
        self.tags = _resolve(tags, library)
        self.predictors = [Predictor(backbone, tag, library) for tag in self.tags]  # all checked before the long part

    @property
    def slots(self) -> list[str]:
        """The first tag's slots: the keys of the rows."""
        return [s.name for s in self.tags[0].card.slots]

    def predict(self, rows: Sequence[dict], batch_size: int = 16, progress: Optional[ProgressCallback] = None,
                first_row: int = 1) -> list[TagResults]:
        """Every tag's results over ``rows``; ``first_row`` as in ``Predictor.predict``. Never raises for a bad row."""
        first = self.tags[0].card
        runs: list[TagResults] = []
        for i, (tag, predictor) in enumerate(zip(self.tags, self.predictors)):
            mapping = _slot_mapping(first, tag.card)
            ids = [k for k in ID_COLUMNS if k not in mapping and k not in mapping.values()]
            tag_rows = [{**{k: r[k] for k in ids if k in r}, **{mapping[s]: r[s] for s in mapping if s in r}}
                        for r in rows]  # names and ids ride along, so each tag's own results keep them
            results = predictor.predict(tag_rows, batch_size=batch_size, first_row=first_row,
                                        progress=_tag_progress(progress, i, len(self.tags), tag.name))
            runs.append(TagResults(tag, column_label(tag.card), results, {v: k for k, v in mapping.items()}))
        return runs


def predict_each(backbone: Backbone, tags: Sequence[Union[Tag, str]], rows: Sequence[dict],
                 library: Optional[TagLibrary] = None, batch_size: int = 16,
                 progress: Optional[ProgressCallback] = None) -> list[TagResults]:
    """Every tag's results over ``rows`` ([{slot: raw value}], keyed by the first tag's slots); raises as
    ``ManyPredictor`` does, never for a bad row."""
    return ManyPredictor(backbone, tags, library).predict(rows, batch_size, progress)


def predict_many(backbone: Backbone, tags: Sequence[Union[Tag, str]], rows: Sequence[dict],
                 library: Optional[TagLibrary] = None, batch_size: int = 16,
                 progress: Optional[ProgressCallback] = None) -> "pd.DataFrame":
    """One table, one row per input row, a column per tag: ``combined_frame`` of ``predict_each``.
    ``name``/``id`` keys of the rows are kept in their own columns."""
    return combined_frame(rows, predict_each(backbone, tags, rows, library, batch_size, progress))


def predict_many_table(backbone: Backbone, tags: Sequence[Union[Tag, str]], df: "pd.DataFrame",
                       columns: Optional[dict] = None, library: Optional[TagLibrary] = None, batch_size: int = 16,
                       progress: Optional[ProgressCallback] = None) -> "pd.DataFrame":
    """``predict_many`` over a table, like ``prediction.predict_table``: every column of ``df``, then the
    tags' columns. ``columns``: the first tag's slot -> column name (default: the slot's own name)."""
    from .data import require_columns
    from .prediction import _side_by_side

    chosen = _resolve(tags, library)  # a wrong choice of tags is refused before the columns are checked
    slots = [s.name for s in chosen[0].card.slots]
    columns = {s: (columns or {}).get(s, s) for s in slots}
    require_columns(df, list(columns.values()))
    rows = [{slot: df[col].iat[i] for slot, col in columns.items()} for i in range(len(df))]
    out = predict_many(backbone, chosen, rows, library, batch_size=batch_size, progress=progress)
    return _side_by_side(df.reset_index(drop=True), out.drop(columns=["row", *slots]))

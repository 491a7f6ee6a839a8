"""Batched prediction with a function tag, row by row errors, and intervals.

``Predictor(backbone, tag).predict(rows)`` cleans every row (``domains``),
sorts the valid ones by token length so batches carry little padding, runs
them under ``torch.inference_mode`` while holding the backbone's lock (the app
shares one backbone between browser sessions), and returns one
``PredictionRow`` per input row, in input order: a prediction or an error.
SMILES are standardised first (``standardize``: salts stripped, charges neutralised), and each row
says what was changed and carries flags for inputs or predictions far from the tag's training data,
among them its similarity to the training inputs and whether that is inside the tag's applicability
domain (``applicability``), and its percentile among the training labels and against the tag's reference
set (``reference``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from .applicability import ReferenceSet, fingerprints, outside_message
from .backbone import Backbone
from .descriptors import row_feature_names, row_features
from .domains import CleanInput, clean, spelled_entries
from .exceptions import TagLLMError, TemplateError
from .heads import HeadConfig, LabelScaler, build_head
from .model import TaggedModel
from .prefix_cache import (
    SharedPrefix,
    common_prefix_length,
    features_with_prefix,
    grouped_batches,
    row_groups,
    shared_prefix,
)
from .progress import ProgressCallback, ProgressEvent
from .reference import ReferenceDistribution, percentile, sorted_finite
from .standardize import clean_standardised_smiles, length_flag, prediction_range_flag
from .tags import Tag, TagCard, TagLibrary, normalize_tag_name
from .templates import Template

if TYPE_CHECKING:  # pandas loads lazily, where a table is built
    import pandas as pd

__all__ = ["PredictionRow", "Predictor", "predict", "rows_from_columns", "domain_columns", "percentile_columns",
           "trained_max_length",
           "output_labels", "label_columns", "results_frame", "predict_table"]


@dataclass
class PredictionRow:
    """One row's result. ``row`` is 1-based, as a person counts data rows.

    ``prediction``: first regression output (original units), or the predicted
    class label. ``outputs``: every regression output, or class probabilities.
    ``standardised``: slot -> the SMILES the model read; ``changes``: what standardisation did
    ("salt stripped: Na+"); ``flags``: why the prediction deserves caution (an inorganic input, a
    protein far longer than any in training, a prediction outside the training labels' range).
    ``similarity``: slot -> largest similarity to the tag's training inputs (Tanimoto for SMILES, 3-mer
    Jaccard for proteins; ``None`` when the tag stores none); ``domain``: "in", "out" (some input below
    its threshold), "unknown" (an older tag without the data), or "" for a row that failed.
    """

    row: int
    inputs: dict[str, str]
    prediction: Optional[object] = None
    outputs: Optional[list[float]] = None
    lower: Optional[float] = None
    upper: Optional[float] = None
    error: Optional[str] = None
    warnings: list[str] = field(default_factory=list)
    zero_shot: bool = False
    standardised: dict[str, Optional[str]] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    similarity: dict[str, Optional[float]] = field(default_factory=dict)
    domain: str = ""
    # Per-output bounds (``lower``/``upper`` are the first output's); ``interval_calibrated``: False for a
    # zero-shot row (the half-width was calibrated with the trained domain tags), None without an interval.
    lowers: Optional[list[Optional[float]]] = None
    uppers: Optional[list[Optional[float]]] = None
    interval_calibrated: Optional[bool] = None
    # Percentile (0-100) of the prediction among the tag's training labels (regression) and against the tag's
    # reference set (``reference``; classification: the predicted class's probability); None where unknown.
    label_percentile: Optional[float] = None
    reference_percentile: Optional[float] = None

    @property
    def ok(self) -> bool:
        return self.error is None


def rows_from_columns(columns: dict) -> list[dict]:
    """{slot: [values...]} -> [{slot: value}, ...]; all columns must have one length."""
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise TagLLMError(f"Input columns have different lengths: { {k: len(v) for k, v in columns.items()} }.")
    n = lengths.pop() if lengths else 0
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]


class Predictor:
    """Predicts with one function tag.

    ``domain_overrides``: slot -> domain tag name (or ``None`` for no tag) to
    use instead of the ones the function tag was trained with. Results are
    then flagged ``zero_shot``. Override tags come from ``library``. ``standardize``: standardise
    SMILES before predicting (off: the model reads the canonical SMILES as given, salts and all).
    ``unknown_checks`` names the flags this tag cannot give (an older card lacks what they compare with).
    """

    def __init__(self, backbone: Backbone, tag: Tag, library: Optional[TagLibrary] = None,
                 domain_overrides: Optional[dict] = None, max_length: Optional[dict] = None,
                 standardize: bool = True):
        card = tag.card
        if card.kind != "function":
            raise TemplateError(f"<{tag.name}> is a domain tag; predictions need a function tag.")
        card.fingerprint.require_match(backbone.fingerprint, f"Tag <{tag.name}>")
        # check_card requires these of every function tag, and training always writes them
        assert card.template is not None and card.head is not None and card.readout is not None
        self.backbone, self.tag, self.card = backbone, tag, card
        # Crop inputs as the tag's training data was cropped, unless told otherwise.
        self.max_length = {**trained_max_length(card), **(max_length or {})}
        template = Template.parse(card.template)
        vectors = {tag.name: tag.vectors}
        vectors.update(tag.domain_vectors)
        trained = {s.name: s.domain_tag for s in card.slots}
        requested = {k: (normalize_tag_name(v) if v else None) for k, v in (domain_overrides or {}).items()}
        overrides = {k: v for k, v in requested.items() if v != trained.get(k)}
        if overrides:
            template = template.with_domain_tags(overrides)
            for name in {v for v in overrides.values() if v}:
                if library is None:
                    raise TemplateError("Swapping a domain tag needs the tag library.")
                dom = library.get(name)
                if dom.kind != "domain":
                    raise TemplateError(f"<{name}> is a function tag, not a domain tag.")
                vectors[dom.name] = dom.vectors
        self.zero_shot = bool(overrides)
        self.slot_kinds = {s.name: s.kind for s in card.slots}
        used = {template.function_tag} | {s.domain_tag for s in template.slots if s.domain_tag}
        missing = used - set(vectors)
        if missing:
            raise TemplateError(f"Tag <{tag.name}> lacks vectors for {sorted(missing)}.")
        head = build_head(HeadConfig(**card.head), tag.head_state)
        self.model = TaggedModel(backbone, template, self.slot_kinds, {n: vectors[n] for n in used},
                                 head=head, readout=card.readout,
                                 layers=tuple(card.layers) if card.layers is not None else None)
        self.descriptors = card.features == "descriptors"
        self.spellings = card.spellings  # SMILES spellings averaged per molecule besides the canonical one
        if self.descriptors:
            names = row_feature_names(self.slot_kinds)
            if names != list(card.descriptor_names):
                raise TemplateError(
                    f"Tag <{tag.name}> reads {len(card.descriptor_names)} descriptors that this installation "
                    f"computes differently ({len(names)} now; another RDKit version?). Retrain the tag here.")
        self.model.eval()
        self.scaler = LabelScaler(**card.label_scaling) if card.label_scaling else None
        self.standardize = standardize
        self._domain_checks(card)
        config = backbone.model.config
        self.max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self._prefix: Optional[SharedPrefix] = None
        self._prefix_key: Optional[tuple] = None
        # ``sharding`` sets this under torchrun: it runs only this process's share of the batches and
        # returns every batch's outputs, gathered from all processes (``_batch_outputs``).
        self.batch_runner: Optional[Callable] = None

    def _domain_checks(self, card) -> None:
        """What the card offers to compare inputs and predictions with; older cards lack some."""
        self.input_lengths = (card.training or {}).get("input_lengths") or {}
        labels = [float(v) for v in card.label_sample or [] if v is not None and np.isfinite(v)]
        # the range's ends are all the flag needs: kept instead of up to 2,000 labels per row
        self.label_range = [min(labels), max(labels)] if card.task == "regression" and labels else []
        self.label_sorted = sorted_finite(labels) if card.task == "regression" else None
        # None for older tags and tags that cannot have one (a protein input): a blank percentile, not an error
        self.reference = ReferenceDistribution.from_tag(self.tag)
        self.unknown_checks = [f"protein length range of '{s}' (the tag predates recording it)"
                               for s, k in self.slot_kinds.items() if k == "protein" and s not in self.input_lengths]
        if card.task == "regression" and not self.label_range:
            self.unknown_checks.append("prediction range (the tag stores no training labels)")
        # slot -> (kind, stored training fingerprints, threshold); the reference is indexed once here
        stored = card.applicability or {}
        self.references = {s: (k, ReferenceSet(self.tag.reference_fingerprints[s].numpy()), stored[s]["threshold"])
                           for s, k in self.slot_kinds.items()
                           if s in stored and s in self.tag.reference_fingerprints}
        self.similarity_slots = [s for s, k in self.slot_kinds.items() if k in ("smiles", "protein")]
        if self.similarity_slots and not self.references:
            self.unknown_checks.append("applicability domain (the tag predates storing its training fingerprints)")

    @property
    def slots(self) -> list[str]:
        return list(self.slot_kinds)

    def _clean(self, res: PredictionRow, slot: str, kind: str, raw) -> CleanInput:
        """Clean one input; SMILES are standardised, proteins checked against the training lengths.
        Changes and flags go onto ``res``, prefixed with the slot when the tag reads several inputs."""
        prefix = f"{slot}: " if len(self.slot_kinds) > 1 else ""
        limit = self.max_length.get(kind)
        if kind == "smiles" and self.standardize:
            c, std = clean_standardised_smiles(raw, limit)  # as training cleans it
            if std is not None:
                res.changes.extend(prefix + m for m in std.changes)
                res.flags.extend(prefix + m for m in std.flags)
        else:
            c = clean(kind, raw, limit)
        if c.ok and kind == "smiles":
            res.standardised[slot] = c.value
        if c.ok and kind == "protein":
            assert c.length is not None  # clean_protein always records the length
            flag = length_flag(c.length, self.input_lengths.get(slot))
            if flag:
                res.flags.append(prefix + flag)
        return c

    def predict(self, rows: Sequence[dict], batch_size: int = 16, progress: Optional[ProgressCallback] = None,
                max_batch_tokens: int = 8192, first_row: int = 1) -> list[PredictionRow]:
        """rows: [{slot: raw text}]. Never raises for a bad row; see ``PredictionRow.error``.
        ``first_row``: the number of ``rows[0]`` in its file, so a file predicted in chunks keeps its row numbers."""
        # every row names every compared input, so a table of failed rows still has its similarity columns
        results = [PredictionRow(row=first_row + i, inputs=dict(r), similarity=dict.fromkeys(self.similarity_slots))
                   for i, r in enumerate(rows)]
        pending: list[int] = []  # indices of rows that passed cleaning
        cleaned_rows: list[dict] = []
        plans: list = []
        for i, (res, row) in enumerate(zip(results, rows)):
            cleaned = {}
            for slot, kind in self.slot_kinds.items():
                if slot not in row:
                    res.error = f"row {res.row}: no value for input '{slot}'"
                    break
                c = self._clean(res, slot, kind, row[slot])
                res.warnings.extend(f"{slot}: {w}" for w in c.warnings)
                if not c.ok:
                    res.error = f"row {res.row}, {slot}: {c.error}"
                    break
                cleaned[slot] = c.value
            if res.error is None:
                plan = self.model.plan(cleaned)
                if self.max_positions and len(plan) > self.max_positions:
                    res.error = (f"row {res.row}: {len(plan)} tokens with the template, more than the backbone's "
                                 f"context of {self.max_positions}; shorten the input")
                    continue
                pending.append(i)
                cleaned_rows.append(cleaned)
                plans.append(plan)
        self._applicability([results[i] for i in pending], cleaned_rows)
        extra = (torch.tensor(row_features(self.slot_kinds, cleaned_rows), dtype=torch.float32)
                 if self.descriptors else None)
        # A tag that reads several spellings of each molecule runs them all and averages the head's outputs
        # (``domains.spelled_rows``, the same spellings as in its validation); ``owner[e]``: entry e's row.
        entries, owner = cleaned_rows, np.arange(len(cleaned_rows))
        if self.spellings:
            entries, plans, owner = self._spelled(cleaned_rows, plans)
            extra = extra[torch.from_numpy(owner)] if extra is not None else None
        # With two or more inputs, rows that share the first one (one protein against many drugs)
        # share its states: each group's common prefix runs once.
        groups = row_groups(self.model.template, entries)
        need = np.bincount(owner, minlength=len(cleaned_rows))
        total: dict[int, np.ndarray] = {}
        got = np.zeros(len(cleaned_rows), dtype=np.int64)
        done, t0 = 0, time.perf_counter()
        for idx, outs in self._batch_outputs(plans, groups, extra, batch_size, max_batch_tokens):
            for e, out in zip(idx, outs):
                j = int(owner[e])
                total[j] = total[j] + out.astype(np.float64) if j in total else out.astype(np.float64)
                got[j] += 1
                if got[j] == need[j]:
                    self._fill(results[pending[j]], (total.pop(j) / need[j]).astype(out.dtype))
                    done += 1
            if progress:
                rate = done / max(time.perf_counter() - t0, 1e-9)
                progress(ProgressEvent("predict", done, len(pending), throughput=rate,
                                       eta_s=(len(pending) - done) / rate if rate else None))
        return results

    def _spelled(self, rows: list[dict], plans: list) -> tuple[list[dict], list, np.ndarray]:
        """(entries, their plans, (M,) row of each): every row followed by its spellings; a spelling too long
        for the backbone's context is left out (the row keeps its canonical entry)."""
        every, rows_of = spelled_entries(rows, self.slot_kinds, self.spellings)
        entries, entry_plans, owner = [], [], []
        for k, (entry, j) in enumerate(zip(every, rows_of)):
            first = k == 0 or rows_of[k - 1] != j  # the row itself, already planned and checked
            plan = plans[j] if first else self.model.plan(entry)
            if not first and self.max_positions and len(plan) > self.max_positions:
                continue
            entries.append(entry)
            entry_plans.append(plan)
            owner.append(j)
        return entries, entry_plans, np.asarray(owner, dtype=np.int64)

    def _batch_outputs(self, plans, groups, extra, batch_size: int,
                       max_batch_tokens: int) -> Iterator[tuple[list[int], np.ndarray]]:
        """(indices into ``plans``, their (len(indices), K) head outputs) per batch, in batch order.
        Every batch is a thunk until run, so ``batch_runner`` can run a share of them: a row's output
        depends on its batch mates to float rounding, so processes split batches, not rows."""
        def batches():
            for idx, prefix in grouped_batches(self.model, plans, groups, batch_size, max_batch_tokens,
                                               prefix_fn=self._shared_prefix):
                ex = extra[idx] if extra is not None else None
                yield idx, (lambda idx=idx, prefix=prefix, ex=ex: self._run([plans[j] for j in idx], prefix, ex))

        if self.batch_runner is not None:
            return self.batch_runner(batches())
        return ((idx, run()) for idx, run in batches())

    def _applicability(self, results: list, cleaned_rows: list) -> None:
        """Each row's similarity to the training inputs, per slot, and its domain; a flag for each
        input below its threshold. Tags without the data: similarity ``None``, domain "unknown"."""
        multi = len(self.slot_kinds) > 1
        for res in results:
            res.domain = "unknown" if not self.references else "in"
        for slot, (kind, reference, threshold) in self.references.items():
            sims = reference.max_similarity(fingerprints(kind, [c[slot] for c in cleaned_rows]))
            for res, sim in zip(results, sims.tolist()):
                res.similarity[slot] = sim
                if sim < threshold:
                    res.domain = "out"
                    res.flags.append((f"{slot}: " if multi else "") + outside_message(kind, sim, threshold))

    def _shared_prefix(self, plans) -> Optional[SharedPrefix]:
        """The prefix every row shares, computed once: the template's opening (kept across calls),
        or longer when all rows share more (one protein screened against many molecules)."""
        first = plans[0]
        n_static = min(first.input_positions) if first.input_positions else 0
        n = common_prefix_length(plans) if len(plans) > 1 else n_static
        if n < 2:
            return None
        key = (tuple(first.ids[:n]), tuple(t for t in first.tags if t[1] < n))
        with self.backbone.lock, torch.inference_mode():
            if self._prefix_key != key:
                self._prefix = shared_prefix(self.model, first, n)
                self._prefix_key = key
            return self._prefix

    def _run(self, plans, prefix: Optional[SharedPrefix] = None, extra: Optional[torch.Tensor] = None) -> np.ndarray:
        head = self.model.head
        assert head is not None  # __init__ always builds one
        with self.backbone.lock, torch.inference_mode():
            out = head(features_with_prefix(self.model, plans, prefix), extra)
        return out.float().cpu().numpy()

    def _fill(self, res: PredictionRow, out: np.ndarray) -> None:
        if self.card.task == "classification":
            probs = np.exp(out - out.max())
            probs = probs / probs.sum()
            classes = self.card.classes or list(range(len(probs)))
            res.outputs = [float(p) for p in probs]
            res.prediction = classes[int(np.argmax(probs))]
            self._percentiles(res, res.outputs, int(np.argmax(probs)))
        else:
            values = self.scaler.inverse(out[None, :])[0] if self.scaler else out
            if not np.all(np.isfinite(values)):
                res.error = f"row {res.row}: the model produced a non-finite value"
                return
            res.outputs = [float(v) for v in values]
            res.prediction = float(values[0])
            if self.card.interval:
                # an older multi-output card holds the first output's half-width alone: no bounds for the rest
                halves: list[Optional[float]] = [float(h) for h in self.card.interval["halfwidth"]]
                halves += [None] * (len(values) - len(halves))
                res.lowers = [None if h is None else v - h for v, h in zip(res.outputs, halves)]
                res.uppers = [None if h is None else v + h for v, h in zip(res.outputs, halves)]
                res.lower, res.upper = res.lowers[0], res.uppers[0]
                res.interval_calibrated = not self.zero_shot
                if self.zero_shot:  # in the flags too, so tables and pages show it with no column of their own
                    res.flags.append("interval not calibrated: it was set with the trained domain tags, not the swap")
            flag = prediction_range_flag(res.prediction, self.label_range)
            if flag:
                res.flags.append(flag)
            self._percentiles(res, res.outputs, 0)
        res.zero_shot = self.zero_shot

    def _percentiles(self, res: PredictionRow, outputs: list, output: int) -> None:
        """``outputs[output]`` is compared with the reference set (regression: the first output; classification:
        the predicted class's probability). A zero-shot swap makes another model than the one the reference was
        predicted with, so its rows get no reference percentile."""
        value = outputs[output]
        if self.card.task == "regression":
            res.label_percentile = percentile(value, self.label_sorted)
        if self.reference is not None and not self.zero_shot and output < self.reference.predictions.shape[1]:
            res.reference_percentile = percentile(value, self.reference.column(output))


def predict(backbone: Backbone, tag: Tag, rows: Sequence[dict], library: Optional[TagLibrary] = None,
            domain_overrides: Optional[dict] = None, batch_size: int = 16,
            progress: Optional[ProgressCallback] = None) -> list[PredictionRow]:
    """Convenience wrapper: ``Predictor(...).predict(rows)``."""
    return Predictor(backbone, tag, library, domain_overrides).predict(rows, batch_size, progress)


def domain_columns(r: PredictionRow, slots: Sequence[str]) -> dict:
    """A row's applicability-domain cells: ``similarity`` (``similarity(<slot>)`` for each of several
    compared inputs; rounded to 3 decimals, NaN (a blank CSV cell) where unknown or the row failed) and
    ``domain``. ``slots``: the compared inputs of the table, so every row has the same columns."""
    out: dict[str, object] = {}
    for slot in slots:
        value = r.similarity.get(slot)
        out["similarity" if len(slots) == 1 else f"similarity({slot})"] = (
            round(value, 3) if value is not None else math.nan)
    out["domain"] = r.domain
    return out


def percentile_columns(r: PredictionRow) -> dict:
    """A row's percentile cells, NaN (a blank CSV cell) where unknown: ``label_percentile`` (among the training
    labels) and ``reference_percentile`` (against the tag's reference set, ``reference``). Every row of every
    tag has both, so chunks of one file share their columns."""
    return {key: math.nan if value is None else value
            for key, value in (("label_percentile", r.label_percentile),
                               ("reference_percentile", r.reference_percentile))}


def trained_max_length(card: TagCard) -> dict:
    """{kind: length} the tag's training inputs were cropped to (``max_length`` of its config)."""
    return dict((card.training or {}).get("config", {}).get("max_length") or {})


def output_labels(card: TagCard) -> Optional[list[str]]:
    """The label names of a regression tag with several outputs (each gets its own prediction columns in
    ``results_frame``); ``None`` for one label or a classification tag."""
    labels = [str(x) for x in card.labels or []]
    return labels if card.task == "regression" and len(labels) > 1 else None


def results_frame(results: list[PredictionRow], classes: Optional[list] = None,
                  labels: Optional[list[str]] = None, intervals: Optional[bool] = None) -> "pd.DataFrame":
    """Results as a table, in this order: ``row`` (and ``name``/``id``), ``prediction``, ``lower``/``upper``
    (where the tag has intervals), class probabilities (classification) or, for a regression tag with
    several ``labels`` (``output_labels``), ``prediction(<label>)`` (and ``lower(<label>)``/``upper(<label>)``)
    for each, ``prediction`` being the first label's, ``similarity``
    (``similarity(<slot>)`` for each input of a tag with several; blank where unknown) and ``domain``
    (in/out/unknown), ``flags``, ``error``, ``label_percentile`` and ``reference_percentile`` (blank where
    unknown), then the inputs, ``zero_shot``, ``warnings``, ``standardised`` (the SMILES the model read;
    ``slot: SMILES`` pairs for several) and ``changes``. ``intervals``: whether the interval columns are
    there (default: when a row has an interval; a chunk of a stream whose rows all failed still needs them)."""
    import pandas as pd

    if intervals is None:
        intervals = any(x.lower is not None for x in results)

    sim_slots = list(dict.fromkeys(s for r in results for s in r.similarity))
    records = []
    for r in results:
        rec = {"row": r.row, **r.inputs, "prediction": r.prediction}
        if intervals:
            rec["lower"], rec["upper"] = r.lower, r.upper
        rec.update(percentile_columns(r))
        rec.update(domain_columns(r, sim_slots))
        if classes:
            probs: Sequence[Optional[float]] = r.outputs or [None] * len(classes)
            for c, p in zip(classes, probs):
                rec[f"p({c})"] = p
        if labels:
            rec.update(label_columns(r, labels, intervals))
        rec["flags"] = "; ".join(r.flags)
        rec["zero_shot"] = r.zero_shot
        rec["error"] = r.error or ""
        rec["warnings"] = "; ".join(r.warnings)
        std = r.standardised
        rec["standardised"] = (next(iter(std.values())) if len(std) == 1
                               else "; ".join(f"{k}: {v}" for k, v in std.items()))
        rec["changes"] = "; ".join(r.changes)
        records.append(rec)
    return _results_first(pd.DataFrame.from_records(records))


def label_columns(r: PredictionRow, labels: list[str], intervals: bool) -> dict:
    """``prediction(<label>)`` for each of a multi-output regression tag's labels, with ``lower(<label>)``
    and ``upper(<label>)`` when ``intervals``; blank (None) for a failed row, so every row has them."""
    out: dict = {}
    n = len(labels)
    values: Sequence[Optional[float]] = r.outputs if r.outputs and len(r.outputs) == n else [None] * n
    lowers: Sequence[Optional[float]] = r.lowers if r.lowers and len(r.lowers) == n else [None] * n
    uppers: Sequence[Optional[float]] = r.uppers if r.uppers and len(r.uppers) == n else [None] * n
    for label, v, lo, up in zip(labels, values, lowers, uppers):
        out[f"prediction({label})"] = v
        if intervals:
            out[f"lower({label})"], out[f"upper({label})"] = lo, up
    return out


# What a screener reads first (issue 10 item 7): the row, its name or id, the prediction, its interval and
# probabilities, the applicability domain, the caution flags and the error; the percentiles put the number
# in context right after; the inputs and the rest come last.
_LEAD_COLUMNS = ("row", "name", "id", "prediction", "lower", "upper", "similarity", "domain", "flags", "error",
                 "label_percentile", "reference_percentile")


def _results_first(frame: "pd.DataFrame") -> "pd.DataFrame":
    cols = list(frame.columns)
    lead = []
    for c in _LEAD_COLUMNS:
        lead += [c] if c in cols else []
        if c == "upper":  # class probabilities sit where an interval would, as do the labels of several
            lead += [p for p in cols if str(p).startswith(("p(", "prediction(", "lower(", "upper("))]
        if c == "similarity":  # one per input for a tag with several
            lead += [p for p in cols if str(p).startswith("similarity(")]
    return frame[lead + [c for c in cols if c not in lead]]


def predict_table(predictor: Predictor, df: "pd.DataFrame", columns: Optional[dict] = None, batch_size: int = 16,
                  progress: Optional[ProgressCallback] = None) -> "pd.DataFrame":
    """Predict every row of ``df``. ``columns``: slot -> column name (default: the slot's own name).

    The returned frame keeps every input column and appends the prediction columns.
    Missing columns raise ``InputError`` naming the columns that exist.
    """
    from .data import require_columns

    columns = {s: (columns or {}).get(s, s) for s in predictor.slots}
    require_columns(df, list(columns.values()))
    rows = [{slot: df[col].iat[i] for slot, col in columns.items()} for i in range(len(df))]
    results = predictor.predict(rows, batch_size=batch_size, progress=progress)
    out = results_frame(results, predictor.card.classes if predictor.card.task == "classification" else None,
                        output_labels(predictor.card))
    extra = out.drop(columns=["row", *predictor.slots])
    return _side_by_side(df.reset_index(drop=True), extra)


def _side_by_side(left, right):
    import pandas as pd

    right = right.rename(columns={c: f"{c}_pred" if c in left.columns else c for c in right.columns})
    return pd.concat([left, right], axis=1)

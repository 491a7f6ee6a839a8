"""The Train page's forms as plain values: what the widgets hold, turned into a job spec, and the problems
that keep Start disabled.

No widgets here, so these rules are tested without a running app (tests/test_train_form.py);
``pages/train.py`` lays the widgets out, shows each problem where it belongs, and calls these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pandas as pd

from tagllm_core.exceptions import TagLLMError
from tagllm_core.jobs import Job, JobStore
from tagllm_core.tags import TagLibrary

from . import inputs, training
from .training import DataProblem, DomainJobSpec, FunctionJobSpec, SlotChoice

__all__ = [
    "ENTER_NAME", "MIN_CORPUS", "TemplatePreview", "FunctionForm", "check_name", "preview_template",
    "rows_used", "estimate_steps", "function_form_problems", "function_spec", "data_problems",
    "corpus_format", "domain_form_problems", "domain_spec", "start_with_uploads",
]

ENTER_NAME = "Enter a tag name."  # a hint rather than a problem: shown as a caption, not a warning
MIN_CORPUS = 8  # sequences a domain tag needs at the least

# Reference molecules a tag trained from the app predicts for its percentiles: about a minute or two on
# two CPU cores, and a percentile resolution of 0.2 %.
REFERENCE_ROWS = 500


def check_name(raw: Optional[str], library: TagLibrary, store: JobStore) -> tuple[Optional[str], Optional[str]]:
    """(bare name, None) for a usable new tag name, (None, why not) for one refused, (None, None) when empty."""
    if not (raw or "").strip():
        return None, None
    try:
        return training.check_new_tag_name(raw, library, store), None
    except TagLLMError as err:
        return None, str(err)


@dataclass(frozen=True)
class TemplatePreview:
    """The prompt a function-tag job will use, as the form shows it."""

    resolved: Optional[str]  # the full template text; None without inputs, or when the text is refused
    template: Optional[str]  # what the job is given: None for the default template
    problem: Optional[str] = None  # why the user's text is refused


def preview_template(text: Optional[str], slots: list[SlotChoice], name: Optional[str],
                     what: Optional[str]) -> TemplatePreview:
    """The user's template text (blank: the default) resolved for ``slots``, with placeholders for a
    name or wording not entered yet."""
    if not slots:
        return TemplatePreview(None, None)
    try:
        resolved = training.resolve_template(text or "", slots, name or "Tag", what or "property")
    except TagLLMError as err:
        return TemplatePreview(None, None, str(err))
    return TemplatePreview(resolved, resolved if (text or "").strip() else None)


def rows_used(n_table_rows: int, max_rows: int) -> int:
    """Rows training reads: the table's, or ``max_rows`` of them (0 = all)."""
    return min(n_table_rows, int(max_rows) or n_table_rows)


def estimate_steps(n_rows: int, valid_fraction: float, batch_size: int, epochs: int) -> tuple[int, int]:
    """(training rows, optimiser steps) for the form's caption: the last batch of an epoch may be partial."""
    n_train = max(1, int(n_rows * (1 - float(valid_fraction))))
    return n_train, -(-n_train // int(batch_size)) * int(epochs)


@dataclass
class FunctionForm:
    """The function-tag form's values, as the widgets give them."""

    file_name: str
    columns: list[str]
    slots: list[SlotChoice]
    labels: list[str]
    task: str
    name: Optional[str]  # the checked bare name (``check_name``); None when empty or refused
    name_problem: Optional[str]
    what: str
    template: TemplatePreview
    epochs: int
    batch_size: int
    tag_lr: float
    n_tokens: int
    split: str
    valid_fraction: float
    max_rows: int  # 0 = all
    augment: int
    crop: int  # protein crop in residues; 0 = the engine's default
    layers: str
    descriptors: bool
    train_file: Optional[Path] = None  # the bundled example; an upload is saved (and set) when Start is pressed
    reference: bool = False  # predict the MOSES reference sample for percentiles (single-molecule tags)
    spellings: int = 0  # SMILES spellings per molecule read and averaged (training and prediction)
    forest: bool = False  # blend a random forest (on the descriptors, else on the read-out) into the head
    max_length: dict[str, int] = field(init=False)

    def __post_init__(self):
        # The crop applies only when a protein is among the inputs (the widget is disabled otherwise).
        proteins = any(s.kind == "protein" for s in self.slots)
        self.max_length = {"protein": int(self.crop)} if self.crop and proteins else {}


def function_form_problems(form: FunctionForm) -> list[str]:
    """What keeps the function-tag form from starting a job, in the order the form reads, one sentence
    each; the data's own problems (``data_problems``) come on top."""
    problems = []
    if len(form.columns) < 2:
        problems.append(f"`{form.file_name}` has only the column {form.columns}; training needs at least one "
                        f"input column and one label column.")
    if not form.slots:
        problems.append("Choose at least one input column.")
    if not form.labels:
        problems.append("Choose a label column.")
    if form.task == "classification" and len(form.labels) > 1:
        problems.append("A classification tag takes a single label column.")
    if form.name_problem:
        problems.append(form.name_problem)
    elif form.name is None:
        problems.append(ENTER_NAME)
    if form.template.problem:
        problems.append(form.template.problem)
    layers = training.layers_problem(form.layers)
    if layers:
        problems.append(layers)
    return problems


def function_spec(form: FunctionForm) -> FunctionJobSpec:
    """The job the form describes (``training.function_tag_argv`` makes its command line)."""
    return FunctionJobSpec(
        name=form.name or "", train_file=form.train_file, slots=form.slots, labels=form.labels, task=form.task,
        template=form.template.template, what=form.what or "property", epochs=int(form.epochs),
        batch_size=int(form.batch_size), n_tokens=int(form.n_tokens), tag_lr=float(form.tag_lr), split=form.split,
        valid_fraction=float(form.valid_fraction), max_rows=int(form.max_rows) or None, augment=int(form.augment),
        spellings=int(form.spellings),
        max_length=dict(form.max_length), layers=form.layers.strip() or "auto",
        features="descriptors" if form.descriptors else "none", forest=bool(form.forest),
        reference_rows=REFERENCE_ROWS if form.reference and {s.kind for s in form.slots} == {"smiles"} else 0)


def data_problems(df: pd.DataFrame, form: FunctionForm, separate_valid: bool) -> list[DataProblem]:
    """The engine's own checks on the table (labels, inputs, row count) for the form's choices, cached
    per table and settings (``training.check_training_data_cached``)."""
    return training.check_training_data_cached(
        df, tuple((s.column, s.slot, s.kind) for s in form.slots), tuple(form.labels), form.task,
        int(form.max_rows) or None, float(form.valid_fraction), separate_valid, tuple(form.max_length.items()))


def corpus_format(file_name: str) -> str:
    """The corpus format a file's name suggests: fasta, csv, or smiles (one per line)."""
    lower = file_name.lower().removesuffix(".gz")
    if lower.endswith((".fasta", ".fa", ".faa")):
        return "fasta"
    return "csv" if lower.endswith((".csv", ".tsv")) else "smiles"


def domain_form_problems(name: Optional[str], n_sequences: int) -> list[str]:
    """What keeps the domain-tag form from starting a job."""
    problems = [] if name else [ENTER_NAME]
    if n_sequences < MIN_CORPUS:
        problems.append(f"A domain tag needs at least {MIN_CORPUS} usable sequences.")
    return problems


def domain_spec(name: Optional[str], corpus_file: Optional[Path], fmt: str, kind: str, column: Optional[str],
                steps: int, n_tokens: int, max_sequences: int, max_tokens: int, batch_size: int) -> DomainJobSpec:
    """The domain-tag job the form describes; ``max_sequences`` 0 = all."""
    return DomainJobSpec(name=name or "", corpus_file=corpus_file, fmt=fmt, kind=kind, column=column,
                         steps=int(steps), n_tokens=int(n_tokens), max_sequences=int(max_sequences) or None,
                         max_tokens=int(max_tokens), batch_size=int(batch_size))


Upload = tuple[bytes, str, Callable[[Path], None]]  # (content, file name, where the saved path goes)


def start_with_uploads(store: JobStore, kind: str, name: str, argv_builder: Callable[[], list[str]],
                       uploads: list[Upload]) -> Job:
    """Save the uploads (in one folder of their own, deleted with the job), give each path to its setter,
    then record and launch the job built from the filled-in spec. Raises ``TagLLMError``."""
    folder = None
    for data, file_name, setter in uploads:
        path = inputs.save_upload(data, file_name, folder)
        folder = path.parent
        setter(path)
    return training.start_job(store, kind, name, argv_builder())

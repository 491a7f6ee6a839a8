"""Turning the Train page's forms into background jobs (``python -m tagllm_core train-… --job-db …``).

The page never trains: it saves the upload, builds the CLI argv here, and
``start_job`` records and launches the job process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd
import streamlit as st

from tagllm_core.exceptions import TagLLMError, TemplateError
from tagllm_core.jobs import Job, JobStore, launch
from tagllm_core.tags import SlotSpec, TagLibrary, normalize_tag_name
from tagllm_core.templates import Template, default_template
from tagllm_core.training import FunctionTagConfig, forest_problem, parse_layers, prepare_supervised

from .inputs import guess_task

# The engine's defaults, so the form and the CLI train the same way unless the user changes them.
DEFAULT_TAG_LR = FunctionTagConfig.__dataclass_fields__["tag_lr"].default
DEFAULT_AUGMENT = FunctionTagConfig.__dataclass_fields__["augment"].default
DEFAULT_SPELLINGS = FunctionTagConfig.__dataclass_fields__["spellings"].default
DEFAULT_LAYERS = FunctionTagConfig.__dataclass_fields__["layers"].default
DEFAULT_EPOCHS = FunctionTagConfig.__dataclass_fields__["epochs"].default
DEFAULT_FEATURES = FunctionTagConfig.__dataclass_fields__["features"].default
DEFAULT_FOREST = FunctionTagConfig.__dataclass_fields__["forest"].default
DEFAULT_N_TOKENS = FunctionTagConfig.__dataclass_fields__["n_tokens"].default
MIN_ROWS = FunctionTagConfig.__dataclass_fields__["min_rows"].default  # usable training rows the engine needs


@dataclass
class SlotChoice:
    """One input column mapped to a template slot."""

    column: str
    slot: str
    kind: str
    domain_tag: Optional[str] = None


@dataclass
class FunctionJobSpec:
    name: str
    train_file: Path
    slots: list[SlotChoice]
    labels: list[str]
    task: str = "regression"
    template: Optional[str] = None
    what: str = "property"
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 16
    n_tokens: int = DEFAULT_N_TOKENS
    tag_lr: float = DEFAULT_TAG_LR
    split: str = "auto"
    valid_fraction: float = 0.1
    max_rows: Optional[int] = None
    valid_file: Optional[Path] = None
    augment: int = DEFAULT_AUGMENT  # randomised SMILES spellings per molecule
    spellings: int = DEFAULT_SPELLINGS  # spellings read and averaged per molecule, in training and prediction
    max_length: dict[str, int] = field(default_factory=dict)  # kind -> crop length
    layers: str = DEFAULT_LAYERS  # read-out depth: auto | final | layer numbers ("12", "7,15")
    features: str = DEFAULT_FEATURES  # none | descriptors
    forest: Optional[bool] = DEFAULT_FOREST  # a random forest blended into the head; None: wherever it applies
    reference_rows: int = 0  # MOSES reference molecules predicted for percentiles (0: none)
    extra: list[str] = field(default_factory=list)  # more CLI arguments, appended as given


@dataclass
class DomainJobSpec:
    name: str
    corpus_file: Path
    fmt: str  # fasta | smiles | csv
    kind: str
    column: Optional[str] = None
    steps: int = 200
    n_tokens: int = 10
    max_sequences: Optional[int] = None
    max_tokens: int = 128
    batch_size: int = 8


def check_new_tag_name(raw: str, library: TagLibrary, store: JobStore) -> str:
    """The bare tag name, or ``TagLLMError`` if it is invalid, taken, or being trained right now."""
    name = normalize_tag_name(raw)
    if library.exists(name):
        raise TagLLMError(f"A tag named <{name}> already exists; choose another name or delete it in the library.")
    if store.active_name_conflict(name):
        raise TagLLMError(f"A job is already training <{name}>; wait for it or choose another name.")
    return name


def resolve_template(text: str, slots: list, name: str, what: str = "property") -> str:
    """The template the job will use: the user's text with the chosen domain tags and ``<name>``, or the default.

    Raises ``TemplateError`` if the text does not parse or its slots are not the mapped inputs.
    """
    if not text or not text.strip():
        return default_template([(s.slot, s.kind, s.domain_tag) for s in slots], name, what)
    tpl = Template.parse(text)
    have = {s.name for s in tpl.slots}
    want = {s.slot for s in slots}
    if have != want:
        raise TemplateError(f"The template's slots {sorted(have)} must be exactly the mapped inputs {sorted(want)} "
                            f"(write them as {{slot}}, e.g. {{{sorted(want)[0]}}}).")
    tpl = tpl.with_domain_tags({s.slot: s.domain_tag for s in slots}).with_function_tag(name)
    return tpl.text


MIN_VALID_ROWS = 10


def suggest_valid_fraction(n_rows: int) -> float:
    """Hold out 10 %, but at least ``MIN_VALID_ROWS`` rows (up to half the data) on small data sets.

    The validation rows pick the best epoch and calibrate the prediction interval; split-conformal
    needs about ten residuals for a 90 % interval, so tiny hold-outs give no usable interval.
    """
    if n_rows <= 0:
        return 0.1
    return round(min(0.5, max(0.1, MIN_VALID_ROWS / n_rows)), 3)


def layers_problem(text: str) -> Optional[str]:
    """Why ``text`` is not a read-out depth (auto, stack, final, or layer numbers such as 12 or 7,15); None if it is.
    The layer numbers are checked against the backbone when the job starts."""
    try:
        parse_layers(text.strip() or "auto")
    except TagLLMError as err:
        return str(err)
    return None


def _opt(option: str, value) -> str:
    """``--option=VALUE`` as one argument. Never ``--option VALUE``: argparse reads a value that starts
    with ``-`` (a column called ``-logS``) as the next option, and the job dies before it starts."""
    return f"{option}={value}"


def argv_value(argv: list[str], option: str) -> Optional[str]:
    """The last value of ``option`` in a job's argv, written either ``--option=VALUE`` or ``--option VALUE``."""
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(option + "="):
            value = arg[len(option) + 1:]
        elif arg == option and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def function_tag_argv(spec: FunctionJobSpec) -> list[str]:
    argv = ["train-function-tag", _opt("--name", spec.name), _opt("--train", spec.train_file)]
    if spec.valid_file:
        argv.append(_opt("--valid", spec.valid_file))
    for s in spec.slots:
        dom = f"<{s.domain_tag}>" if s.domain_tag else "none"
        argv += [_opt("--input", f"{s.slot}={dom}:{s.kind}"), _opt("--column", f"{s.slot}={s.column}")]
    argv += [_opt("--label", label) for label in spec.labels]
    argv.append(_opt("--task", spec.task))
    if spec.template:
        argv.append(_opt("--template", spec.template))
    if spec.what:
        argv.append(_opt("--what", spec.what))
    argv += [_opt("--epochs", int(spec.epochs)), _opt("--batch-size", int(spec.batch_size)),
             _opt("--n-tokens", int(spec.n_tokens)), _opt("--tag-lr", repr(float(spec.tag_lr))),
             _opt("--split", spec.split)]
    if not spec.valid_file:
        argv.append(_opt("--valid-fraction", f"{float(spec.valid_fraction):.3f}"))
    if spec.max_rows:
        argv.append(_opt("--max-rows", int(spec.max_rows)))
    if any(s.kind == "smiles" for s in spec.slots):
        argv.append(_opt("--augment", int(spec.augment)))
        argv.append(_opt("--spellings", int(spec.spellings)))
    for kind, n in spec.max_length.items():
        argv.append(_opt("--max-length", f"{kind}={int(n)}"))
    argv += [_opt("--layers", spec.layers), _opt("--features", spec.features)]
    # the forest needs a regression and one read-out layer; elsewhere the job says no rather than fail
    if spec.forest is not None:  # None: the engine's default, wherever the forest applies
        applies = forest_applies(spec.task, spec.layers)
        argv.append("--forest" if spec.forest and applies else "--no-forest")
    if spec.reference_rows:
        argv.append(_opt("--reference-rows", int(spec.reference_rows)))
    return argv + list(spec.extra)


def forest_applies(task: str, layers: str) -> bool:
    """Whether a forest can blend into the head these settings give (``FunctionTagConfig.forest``)."""
    return not forest_problem(task, layers)


def domain_tag_argv(spec: DomainJobSpec) -> list[str]:
    argv = ["train-domain-tag", _opt("--name", spec.name), _opt("--corpus", spec.corpus_file),
            _opt("--format", spec.fmt), _opt("--kind", spec.kind), _opt("--steps", int(spec.steps)),
            _opt("--n-tokens", int(spec.n_tokens)), _opt("--max-tokens", int(spec.max_tokens)),
            _opt("--batch-size", int(spec.batch_size))]
    if spec.fmt == "csv" and spec.column:
        argv.append(_opt("--column", spec.column))
    if spec.max_sequences:
        argv.append(_opt("--max-sequences", int(spec.max_sequences)))
    return argv


@dataclass(frozen=True)
class DataProblem:
    """One sentence about the training data; an ``error`` keeps the job from being queued, a ``note`` says
    what training will do to the data (SMILES standardisation) without being a problem."""

    level: str  # "error" | "warning" | "note"
    message: str


CHECK_ROWS = 5000  # inputs are cleaned (RDKit, protein alphabet) on at most this many rows, to keep the form quick
MAX_INVALID_SHARE = 0.5  # at least this share of unusable inputs: surely the wrong column, refuse


def _rows(mask: pd.Series) -> str:
    """'row 4' / 'rows 4, 9, 12…': 1-based data rows of the user's file, as the engine numbers them."""
    rows = [str(i + 1) for i in range(len(mask)) if mask.iat[i]]
    return ("row " if len(rows) == 1 else "rows ") + ", ".join(rows[:5]) + ("…" if len(rows) > 5 else "")


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def rows_needed(valid_fraction: float, separate_valid: bool = False) -> int:
    """Fewest usable rows for which the engine's random split leaves ``MIN_ROWS`` to train and 2 to validate."""
    if separate_valid:
        return MIN_ROWS
    frac, n = max(float(valid_fraction), 0.01), MIN_ROWS
    while n - max(1, round(n * frac)) < MIN_ROWS or round(n * frac) < 2:
        n += 1
    return n


def _label_problems(df: pd.DataFrame, labels: list, task: str) -> list[DataProblem]:
    """Missing labels, text where numbers are needed, a single class: the file-wide checks (cheap)."""
    out = []
    for label in labels:
        values = df[label]
        blank = values.isna() | values.astype(str).str.strip().eq("")
        if blank.any():
            out.append(DataProblem("error", f"{_plural(int(blank.sum()), 'row')} of '{label}' have no label "
                                            f"({_rows(blank)}); fill them in or remove those rows."))
            continue
        if task == "regression":
            nums = pd.to_numeric(values, errors="coerce")
            bad = nums.isna() | nums.abs().eq(float("inf"))
            example = values[bad].iloc[0] if bad.any() else None
            if bad.mean() > 0.5:
                out.append(DataProblem("error", f"The label column '{label}' holds text (e.g. '{example}'), not "
                                                f"numbers: choose classification, or a numeric label column."))
            elif bad.any():
                out.append(DataProblem("error", f"{_plural(int(bad.sum()), 'row')} of '{label}' have a non-numeric "
                                                f"label ({_rows(bad)}, e.g. '{example}'); fix or remove them."))
    if task == "classification" and len(labels) == 1 and not out:
        classes = df[labels[0]].astype(str).str.strip().unique()
        if len(classes) < 2:
            out.append(DataProblem("error", f"The label column '{labels[0]}' holds one class only ('{classes[0]}'); "
                                            f"classification needs at least two."))
        elif len(classes) > 10 and guess_task(df[labels[0]]) == "regression":
            out.append(DataProblem("warning", f"'{labels[0]}' holds {len(classes):,} different numbers and "
                                              f"classification makes each its own class; choose regression for "
                                              f"a measured value."))
    return out


def check_training_data(df: pd.DataFrame, slots: list, labels: list, task: str, max_rows: Optional[int] = None,
                        valid_fraction: float = 0.1, separate_valid: bool = False,
                        max_length: Optional[dict] = None) -> list[DataProblem]:
    """What the engine would say about this training table, before a job is queued: one sentence per problem.

    Labels are checked over the whole file; inputs are cleaned with the engine's own
    ``prepare_supervised`` (RDKit SMILES parsing, the protein alphabet) on at most ``CHECK_ROWS`` rows,
    which gives the share of unusable inputs, repeated inputs and the usable row count.
    Missing columns and an empty choice are the form's own business and give no problem here.
    """
    columns = [s.column for s in slots]
    if not slots or not labels or any(c not in df.columns for c in columns + list(labels)):
        return []
    problems = _label_problems(df, list(labels), task)
    present = pd.Series(True, index=df.index)
    for col in dict.fromkeys(columns):
        blank = df[col].isna() | df[col].astype(str).str.strip().eq("")
        present &= ~blank
        if blank.any():
            k = int(blank.sum())
            problems.append(DataProblem("warning", f"{_plural(k, 'row')} {'has' if k == 1 else 'have'} no value in "
                                                   f"'{col}' and will be skipped ({_rows(blank)})."))
    if any(p.level == "error" for p in problems):
        return problems  # the engine would stop at the labels; the rest would only add noise

    sample = df[present]
    sampled = len(sample) > CHECK_ROWS
    if sampled:
        sample = sample.sample(CHECK_ROWS, random_state=0).sort_index()
    cfg = FunctionTagConfig(name="Check", slots=[SlotSpec(s.slot, s.kind, None) for s in slots], labels=list(labels),
                            task=task, columns={s.slot: s.column for s in slots}, features="none",
                            max_length=dict(max_length or {}))
    try:
        data, _ = prepare_supervised(sample, cfg)
    except TagLLMError as err:
        return problems + [DataProblem("error", str(err))]
    n, k = len(sample), len(data.dropped)
    share = k / n if n else 0.0
    if k:
        row, reason = data.dropped[0]
        where = " sampled" if sampled else ""
        if share >= MAX_INVALID_SHARE:
            problems.append(DataProblem("error", f"{share:.0%} of the{where} rows ({k:,} of {n:,}) have an unusable "
                                                 f"input, e.g. row {row}: {reason}; check that the right column and "
                                                 f"kind are chosen."))
        else:
            problems.append(DataProblem("warning", f"{k:,} of {n:,}{where} rows have an unusable input and will be "
                                                   f"skipped, e.g. row {row}: {reason}."))
    keys = [tuple(r[s.slot] for s in slots) for r in data.inputs]
    repeats = len(keys) - len(set(keys))
    if repeats:
        problems.append(DataProblem("warning", f"{_plural(repeats, 'row')} repeat an input of an earlier row (SMILES "
                                               f"compared in canonical form): repeats weigh more in training and "
                                               f"can sit on both sides of the validation split."))
    # what standardisation will do, as the job's warnings will say it (salts stripped, inorganics kept)
    for sentence in data.standardisation_warnings("training"):
        problems.append(DataProblem("note", f"{sentence} (In the {n:,} sampled rows.)" if sampled else sentence))
    candidates = min(len(df), max_rows) if max_rows else len(df)
    usable = round(candidates * float(present.mean()) * (1 - share)) if sampled or max_rows else len(data.inputs)
    need = rows_needed(valid_fraction, separate_valid)
    if usable < need:
        estimate = "About" if sampled or max_rows else "Only"
        problems.append(DataProblem("error", f"{estimate} {usable:,} usable rows; training needs at least {need:,} "
                                             f"({MIN_ROWS} to train on plus the validation share)."))
    return problems


@st.cache_data(max_entries=32, show_spinner="Checking the training data…")
def check_training_data_cached(df: pd.DataFrame, slots: tuple, labels: tuple, task: str, max_rows: Optional[int],
                               valid_fraction: float, separate_valid: bool, max_length: tuple) -> list[DataProblem]:
    """``check_training_data`` once per table and settings: the form reruns on every click, and cleaning
    thousands of SMILES each time would make it sluggish. ``slots``: ((column, slot, kind), ...)."""
    return check_training_data(df, [SlotChoice(c, s, k) for c, s, k in slots], list(labels), task, max_rows,
                               valid_fraction, separate_valid, dict(max_length))


def start_job(store: JobStore, kind: str, name: str, argv: list[str]) -> Job:
    """Record the job and start its process; raises ``TagLLMError`` if the process cannot start."""
    job = store.create(kind, name, argv)
    try:
        launch(store, job)
    except OSError as err:
        raise TagLLMError(f"Could not start the training process: {err}") from err
    return store.get(job.id)

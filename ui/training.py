"""Turning the Train page's forms into background jobs (``python -m tagllm_core train-… --job-db …``).

The page never trains: it saves the upload, builds the CLI argv here, and
``start_job`` records and launches the job process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tagllm_core.exceptions import TagLLMError, TemplateError
from tagllm_core.jobs import Job, JobStore, launch
from tagllm_core.tags import TagLibrary, normalize_tag_name
from tagllm_core.templates import Template, default_template
from tagllm_core.training import FunctionTagConfig, parse_layers

# The engine's defaults, so the form and the CLI train the same way unless the user changes them.
DEFAULT_TAG_LR = FunctionTagConfig.__dataclass_fields__["tag_lr"].default
DEFAULT_AUGMENT = FunctionTagConfig.__dataclass_fields__["augment"].default
DEFAULT_LAYERS = FunctionTagConfig.__dataclass_fields__["layers"].default
DEFAULT_EPOCHS = FunctionTagConfig.__dataclass_fields__["epochs"].default
DEFAULT_FEATURES = FunctionTagConfig.__dataclass_fields__["features"].default


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
    slots: list  # [SlotChoice]
    labels: list
    task: str = "regression"
    template: Optional[str] = None
    what: str = "property"
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 16
    n_tokens: int = 10
    tag_lr: float = DEFAULT_TAG_LR
    split: str = "auto"
    valid_fraction: float = 0.1
    max_rows: Optional[int] = None
    valid_file: Optional[Path] = None
    augment: int = DEFAULT_AUGMENT  # randomised SMILES spellings per molecule
    max_length: dict = field(default_factory=dict)  # kind -> crop length
    layers: str = DEFAULT_LAYERS  # read-out depth: auto | final | layer numbers ("12", "7,15")
    features: str = DEFAULT_FEATURES  # none | descriptors
    extra: list = field(default_factory=list)


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
    """Why ``text`` is not a read-out depth (auto, final, or layer numbers such as 12 or 7,15); None if it is.
    The layer numbers are checked against the backbone when the job starts."""
    try:
        parse_layers(text.strip() or "auto")
    except TagLLMError as err:
        return str(err)
    return None


def function_tag_argv(spec: FunctionJobSpec) -> list[str]:
    argv = ["train-function-tag", "--name", spec.name, "--train", str(spec.train_file)]
    if spec.valid_file:
        argv += ["--valid", str(spec.valid_file)]
    for s in spec.slots:
        dom = f"<{s.domain_tag}>" if s.domain_tag else "none"
        argv += ["--input", f"{s.slot}={dom}:{s.kind}", "--column", f"{s.slot}={s.column}"]
    for label in spec.labels:
        argv += ["--label", str(label)]
    argv += ["--task", spec.task]
    if spec.template:
        argv += ["--template", spec.template]
    if spec.what:
        argv += ["--what", spec.what]
    argv += ["--epochs", str(int(spec.epochs)), "--batch-size", str(int(spec.batch_size)),
             "--n-tokens", str(int(spec.n_tokens)), "--tag-lr", repr(float(spec.tag_lr)), "--split", spec.split]
    if not spec.valid_file:
        argv += ["--valid-fraction", f"{float(spec.valid_fraction):.3f}"]
    if spec.max_rows:
        argv += ["--max-rows", str(int(spec.max_rows))]
    if any(s.kind == "smiles" for s in spec.slots):
        argv += ["--augment", str(int(spec.augment))]
    for kind, n in spec.max_length.items():
        argv += ["--max-length", f"{kind}={int(n)}"]
    argv += [f"--layers={spec.layers}", f"--features={spec.features}"]
    return argv + list(spec.extra)


def domain_tag_argv(spec: DomainJobSpec) -> list[str]:
    argv = ["train-domain-tag", "--name", spec.name, "--corpus", str(spec.corpus_file), "--format", spec.fmt,
            "--kind", spec.kind, "--steps", str(int(spec.steps)), "--n-tokens", str(int(spec.n_tokens)),
            "--max-tokens", str(int(spec.max_tokens)), "--batch-size", str(int(spec.batch_size))]
    if spec.fmt == "csv" and spec.column:
        argv += ["--column", spec.column]
    if spec.max_sequences:
        argv += ["--max-sequences", str(int(spec.max_sequences))]
    return argv


def start_job(store: JobStore, kind: str, name: str, argv: list[str]) -> Job:
    """Record the job and start its process; raises ``TagLLMError`` if the process cannot start."""
    job = store.create(kind, name, argv)
    try:
        launch(store, job)
    except OSError as err:
        raise TagLLMError(f"Could not start the training process: {err}") from err
    return store.get(job.id)

"""What a function tag's training is asked to do (``FunctionTagConfig``) and what it returns
(``TrainResult``); ``parse_layers`` reads a read-out depth as a person types it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .descriptors import FEATURE_SETS, feature_names
from .domains import MAX_SPELLINGS
from .exceptions import TrainingError
from .tags import SlotSpec, Tag, normalize_tag_name
from .templates import Template, default_template

__all__ = ["CHOSEN_LAYERS", "FunctionTagConfig", "TrainResult", "forest_input", "forest_problem", "parse_layers"]

Layers = Union[str, list[int]]  # "auto" | "stack" | "final" | 1-based layer numbers
CHOSEN_LAYERS = ("auto", "stack")  # the read-out depths chosen in the warm start


@dataclass
class FunctionTagConfig:
    """Settings for stages 2-3. ``slots``: one SlotSpec per input (its CSV column is
    ``columns.get(slot, slot)``); ``labels``: label column(s)."""

    name: str
    slots: list[SlotSpec]  # dicts are accepted and turned into SlotSpecs
    labels: list[str]
    task: str = "regression"
    template: Optional[str] = None
    columns: dict[str, str] = field(default_factory=dict)
    what: str = "property"  # wording of the default template: "The <what> is <Tag>"
    n_tokens: int = 10
    readout: str = "last+mean"
    # Read-out depth: "auto" (chosen by the ridge heads' validation scores), "stack" (the same depth, and
    # the head combines every layer up to it, warm_start.stack_layers), "final" (the last layer's normed
    # state, as in the paper), or 1-based layer numbers such as [12] or [7, 15].
    layers: Layers = "auto"
    # With "auto": keep the shallowest layer within this many standard errors of the best validation
    # score (warm_start.one_se_layer). 0 (the default) keeps the best score: 1 made the bundled
    # <Solubility> 10x faster but 0.09 RMSE worse on ESOL (layer 2), docs/BENCHMARKS.md.
    layer_tolerance: float = 0.0
    # "descriptors": the head also reads RDKit / ProtParam descriptors beside the tag (the default: ESOL
    # and BACE, docs/BENCHMARKS.md); "none": the tag alone, the paper's method.
    features: str = "descriptors"
    # A random forest beside the ridge head, on the descriptors or, without them, on the tag's read-out
    # (``forest_input``), the two blended with weights fitted on the training rows' out-of-sample predictions
    # (``forest``). None (the default): wherever it applies (``forest_problem``). Valid RMSE with
    # descriptors ESOL 0.818 -> 0.740, BACE 0.652 -> 0.552; pure tag ESOL 1.062 -> 1.036, BACE 0.653 -> 0.596
    # (docs/BENCHMARKS.md).
    forest: Optional[bool] = None
    select_rows: int = 2000  # training rows (at most) in the layer choice and the probe; the ridge head reads all
    epochs: int = 4  # tag training rarely beats the warm start after epoch 2 (docs/BENCHMARKS.md)
    batch_size: int = 16
    tag_lr: float = 3e-4
    head_lr: float = 1e-4
    anchor_decay: float = 1e-2  # L2 pull of the tag towards its initial value
    augment: int = 0  # randomised SMILES per training molecule; each epoch draws one spelling per molecule
    # SMILES spellings per molecule that the tag reads besides the canonical one: the ridge warm start fits
    # every training molecule's spellings as rows, and validation and prediction average the head's outputs
    # over the molecule's spellings (``domains.spelled_rows``). Pure tag, 3: ESOL 1.06 -> 0.99 RMSE, BACE no
    # gain; with descriptors worse on ESOL; prediction costs 1 + spellings passes (docs/BENCHMARKS.md).
    spellings: int = 0
    ridge_warm_start: bool = True
    split: str = "auto"  # "auto" (scaffold for a SMILES slot, else random), "random", "scaffold"
    valid_fraction: float = 0.1
    patience: int = 3
    seed: int = 0
    interval_level: float = 0.9
    max_rows: Optional[int] = None
    cache_budget_gb: float = 4.0
    # kind -> crop inputs to this length (prediction crops alike)
    max_length: dict[str, int] = field(default_factory=dict)
    baselines: bool = True  # fit classic baselines on the same rows for the card (``baselines``)
    # Molecules of the shipped MOSES reference sample that the finished tag predicts, so each later
    # prediction shows its percentile among drug-like molecules (``reference``). 0: none (the library
    # default: it costs that many predictions, ~80 s for 500 on 2 CPU cores); the CLI and the app ask.
    reference_rows: int = 0
    description: str = ""
    min_rows: int = 10

    def __post_init__(self):
        self.name = normalize_tag_name(self.name)
        self.slots = [s if isinstance(s, SlotSpec) else SlotSpec(**s) for s in self.slots]
        if not self.slots:
            raise TrainingError("Map at least one input column to a slot.")
        if not self.labels:
            raise TrainingError("Choose at least one label column.")
        if self.task not in ("regression", "classification"):
            raise TrainingError(f"Unknown task {self.task!r}; use regression or classification.")
        if self.features not in FEATURE_SETS:
            raise TrainingError(f"Unknown feature set {self.features!r}; use one of {FEATURE_SETS}.")
        self.layers = parse_layers(self.layers)
        if not (isinstance(self.layer_tolerance, (int, float)) and 0 <= self.layer_tolerance <= 10):
            raise TrainingError(f"Layer tolerance {self.layer_tolerance!r}: use a number of standard errors, 0-10.")
        if not (isinstance(self.spellings, int) and not isinstance(self.spellings, bool)
                and 0 <= self.spellings <= MAX_SPELLINGS):
            raise TrainingError(f"Spellings {self.spellings!r}: use a whole number from 0 to {MAX_SPELLINGS}.")
        if self.spellings and not any(s.kind == "smiles" for s in self.slots):
            raise TrainingError("Spellings need a SMILES input: proteins and text have one spelling.")
        if self.forest not in (None, True, False):
            raise TrainingError(f"Forest {self.forest!r}: use true, false or leave it out (wherever it applies).")
        problem = self._forest_problem()
        if self.forest and problem:
            raise TrainingError(f"The random forest blend cannot be used here: {problem}.")
        if not (isinstance(self.reference_rows, int) and 0 <= self.reference_rows <= 100_000):
            raise TrainingError(f"Reference rows {self.reference_rows!r}: use a whole number, 0 for none.")

    @property
    def blends_forest(self) -> bool:
        """Whether the head blends in a forest: as asked, or (``forest=None``) wherever it applies."""
        if self.forest is not None:
            return self.forest
        return not self._forest_problem()

    @property
    def forest_input(self) -> str:
        """What the forest reads, if the head blends one in (``forest_input``)."""
        return forest_input(self.features, [s.kind for s in self.slots])

    def _forest_problem(self) -> str:
        return forest_problem(self.task, self.layers, self.ridge_warm_start)

    def template_text(self) -> str:
        if self.template:
            return Template.parse(self.template).with_function_tag(self.name).text
        return default_template([(s.name, s.kind, s.domain_tag) for s in self.slots], self.name, self.what)


def forest_problem(task: str, layers: Any, ridge_warm_start: bool = True) -> str:
    """Why a forest cannot blend into the head these settings give ("" when it can)."""
    if task != "regression":
        return "it is fitted for regression"
    if not ridge_warm_start:
        return "its weights come from the ridge warm start"
    if isinstance(layers, str) and layers.strip().lower() == "stack":
        return "it is not combined with layers='stack'"
    return ""


def forest_input(features: str, kinds: Sequence[str]) -> str:
    """What a forest beside the head reads (``forest.FOREST_INPUTS``): the descriptors when the head reads
    any, else the tag's read-out features (the pure tag, or inputs without descriptors such as text)."""
    return "descriptors" if features == "descriptors" and any(feature_names(k) for k in kinds) else "readout"


def parse_layers(value: Any) -> Layers:
    """"auto" | "stack" | "final" | [int, ...] from what a person typed ("auto", "final", "12", "7,15")."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in (*CHOSEN_LAYERS, "final"):
            return text
        try:
            value = [int(x) for x in text.replace(" ", ",").split(",") if x]
        except ValueError:
            raise TrainingError(
                f"Read-out layers {value!r}: use auto, stack, final or layer numbers such as 12 or 7,15.") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in value):
        raise TrainingError(f"Read-out layers {value!r}: use auto, stack, final or layer numbers (1 or more).")
    return list(value)


@dataclass
class TrainResult:
    """A trained function tag and its validation: ``valid_true``/``valid_pred`` per validation row
    (the first output's value, or the last class's probability)."""

    tag: Tag
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    valid_true: list[float]
    valid_pred: list[float]
    dropped: list[tuple[int, str]]  # (1-based file row, reason)
    path: Optional[Path] = None
    warnings: list[str] = field(default_factory=list)  # sentences for the user, also in card.training["warnings"]

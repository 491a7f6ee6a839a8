"""Training tags: stage 1 (domain tags) and stages 2-3 (function tags + head).

Stage 1 learns a domain tag by next-token prediction on in-domain text placed
after the tag (loss on the domain tokens only). Stages 2 and 3 learn a
function tag and its head on labelled data with the domain tags frozen:
stage 2 with one input slot, stage 3 with two or more across domains. The
loop is the same; only the template differs.

Function-tag training runs on cached prefixes (``prefix_cache``): the frozen
part of each prompt is computed once, and each step runs only the function
tag's ``p`` tokens with gradients. Gradients equal those of the full pass.

Defaults come from the ablations in docs/BENCHMARKS.md: the head is
warm-started by ridge regression on the initial features (so training starts
at the linear probe, not at noise, ``warm_start``), the read-out depth is
chosen on validation in that warm start and the layers above it never run
(``stack``), the read-out sees the input as well as the tag (``last+mean``),
the best validation epoch is kept, and the tag is pulled towards its initial
value by weight decay. The head may also read classic descriptors of the
inputs (``descriptors``).

Nothing is written to the tag library until training has finished: a job
that dies or is cancelled leaves no tag behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import torch

from .backbone import Backbone
from .baselines import mean_baseline, rf_descriptors
from .data import Split, random_split, require_columns, scaffold_split, stratified_split
from .applicability import build_applicability, validation_errors
from .descriptors import FEATURE_SETS, row_feature_names, row_features
from .domains import KINDS, clean, randomized_smiles
from .exceptions import JobCancelled, TrainingError
from .heads import HeadConfig, LabelScaler, TaskHead
from .metrics import (PRIMARY_METRIC, STOPPING_METRICS, classification_metrics, conformal_halfwidth,
                      regression_metrics)
from .model import TaggedModel
from .prefix_cache import PrefixCache, row_groups, suffix_features
from .warm_start import choose_layer, fit_head, layer_slice
from .progress import ProgressCallback, ProgressEvent
from .standardize import length_ranges
from .tags import SlotSpec, Tag, TagCard, TagLibrary, init_tag_vectors, normalize_tag_name
from .templates import PromptEncoder, Template, default_template

__all__ = [
    "parse_layers",
    "FunctionTagConfig",
    "DomainTagConfig",
    "PreparedData",
    "TrainResult",
    "DomainTrainResult",
    "prepare_supervised",
    "train_function_tag",
    "train_domain_tag",
    "domain_perplexity",
]


@dataclass
class FunctionTagConfig:
    """Settings for stages 2-3. ``slots``: one SlotSpec per input (its CSV column is
    ``columns.get(slot, slot)``); ``labels``: label column(s)."""

    name: str
    slots: list
    labels: list
    task: str = "regression"
    template: Optional[str] = None
    columns: dict = field(default_factory=dict)
    what: str = "property"  # wording of the default template: "The <what> is <Tag>"
    n_tokens: int = 10
    readout: str = "last+mean"
    # Read-out depth: "auto" (chosen by the ridge heads' validation scores), "final" (the last layer's
    # normed state, as in the paper), or 1-based layer numbers such as [12] or [7, 15].
    layers: object = "auto"
    # With "auto": keep the shallowest layer within this many standard errors of the best validation
    # score (warm_start.one_se_layer). 0 (the default) keeps the best score: 1 made the bundled
    # <Solubility> 10x faster but 0.09 RMSE worse on ESOL (layer 2), docs/BENCHMARKS.md.
    layer_tolerance: float = 0.0
    # "descriptors": the head also reads RDKit / ProtParam descriptors beside the tag (the default: ESOL
    # and BACE, docs/BENCHMARKS.md); "none": the tag alone, the paper's method.
    features: str = "descriptors"
    select_rows: int = 2000  # training rows (at most) in the read-out layer choice and the warm start
    epochs: int = 4  # tag training rarely beats the warm start after epoch 2 (docs/BENCHMARKS.md)
    batch_size: int = 16
    tag_lr: float = 3e-4
    head_lr: float = 1e-4
    anchor_decay: float = 1e-2  # L2 pull of the tag towards its initial value
    augment: int = 0  # randomised SMILES per training molecule; each epoch draws one spelling per molecule
    ridge_warm_start: bool = True
    split: str = "auto"  # "auto" (scaffold for a SMILES slot, else random), "random", "scaffold"
    valid_fraction: float = 0.1
    patience: int = 3
    seed: int = 0
    interval_level: float = 0.9
    max_rows: Optional[int] = None
    cache_budget_gb: float = 4.0
    max_length: dict = field(default_factory=dict)  # kind -> crop inputs to this length (prediction crops alike)
    baselines: bool = True  # fit classic baselines on the same rows for the card (``baselines``)
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

    def template_text(self) -> str:
        if self.template:
            return Template.parse(self.template).with_function_tag(self.name).text
        return default_template([(s.name, s.kind, s.domain_tag) for s in self.slots], self.name, self.what)


def parse_layers(value) -> object:
    """"auto" | "final" | [int, ...] from what a person typed ("auto", "final", "12", "7,15")."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("auto", "final"):
            return text
        try:
            value = [int(x) for x in text.replace(" ", ",").split(",") if x]
        except ValueError:
            raise TrainingError(
                f"Read-out layers {value!r}: use auto, final or layer numbers such as 12 or 7,15.") from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in value):
        raise TrainingError(f"Read-out layers {value!r}: use auto, final or layer numbers (1 or more).")
    return list(value)


@dataclass
class PreparedData:
    """Cleaned inputs and encoded labels. ``y``: (N, K) floats (regression) or (N,) ints."""

    inputs: list  # [{slot: cleaned value}]
    y: np.ndarray
    source_rows: list  # 1-based rows of the original file
    dropped: list  # [(row, reason)]


@dataclass
class TrainResult:
    tag: Tag
    metrics: dict
    history: list
    valid_true: list
    valid_pred: list
    dropped: list
    path: Optional[Path] = None
    warnings: list = field(default_factory=list)  # sentences for the user, also in card.training["warnings"]


def _file_row(df: pd.DataFrame, i: int) -> int:
    """1-based data row in the user's file for position ``i`` (the index survives sub-sampling)."""
    label = df.index[i]
    return int(label) + 1 if isinstance(label, (int, np.integer)) else i + 1


def _encode_labels(df: pd.DataFrame, cfg: FunctionTagConfig, classes: Optional[list]) -> tuple[np.ndarray, list]:
    if cfg.task == "regression":
        y = df[cfg.labels].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.where(~np.isfinite(y).all(axis=1))[0]
        if len(bad):
            rows = ", ".join(str(_file_row(df, i)) for i in bad[:10])
            raise TrainingError(
                f"{len(bad)} row(s) have a missing or non-numeric label in {cfg.labels} (rows {rows}"
                f"{'…' if len(bad) > 10 else ''}). Remove or fill them."
            )
        return y, []
    if len(cfg.labels) != 1:
        raise TrainingError("Classification takes exactly one label column.")
    col = df[cfg.labels[0]]
    if col.isna().any():
        rows = ", ".join(str(_file_row(df, i)) for i in np.where(col.isna())[0][:10])
        raise TrainingError(f"Rows {rows} have no label.")
    values = col.astype(str).str.strip()
    classes = classes or sorted(values.unique().tolist())
    unknown = set(values) - set(classes)
    if unknown:
        raise TrainingError(f"Validation labels {sorted(unknown)[:5]} never occur in training.")
    return values.map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64), classes


def prepare_supervised(df: pd.DataFrame, cfg: FunctionTagConfig, classes: Optional[list] = None,
                       what: str = "training") -> tuple[PreparedData, list]:
    """Validate columns, clean inputs row by row (bad rows are dropped and reported), encode labels."""
    columns = {s.name: cfg.columns.get(s.name, s.name) for s in cfg.slots}
    require_columns(df, list(columns.values()) + list(cfg.labels), what)
    y_all, classes = _encode_labels(df, cfg, classes)
    inputs, keep, dropped = [], [], []
    for i in range(len(df)):
        row, reason = {}, None
        for slot in cfg.slots:
            c = clean(slot.kind, df[columns[slot.name]].iat[i], cfg.max_length.get(slot.kind))
            if not c.ok:
                reason = f"{slot.name}: {c.error}"
                break
            row[slot.name] = c.value
        if reason:
            dropped.append((_file_row(df, i), reason))
        else:
            inputs.append(row)
            keep.append(i)
    return PreparedData(inputs, y_all[keep], [_file_row(df, i) for i in keep], dropped), classes


def _domain_vectors(library: Optional[TagLibrary], slots: list) -> dict:
    vectors = {}
    for s in slots:
        if s.domain_tag and s.domain_tag not in vectors:
            if library is None:
                raise TrainingError(f"Domain tag <{s.domain_tag}> needs a tag library.")
            dom = library.get(s.domain_tag)
            if dom.kind != "domain":
                raise TrainingError(f"<{dom.name}> is a function tag; slots take domain tags.")
            vectors[dom.name] = dom.vectors
    return vectors


def _split(data: PreparedData, cfg: FunctionTagConfig) -> Split:
    """The validation split; ``Split.warning`` says when a scaffold split fell back to a random one.
    Random splits of classes are stratified, so validation holds every class (AUROC is defined)."""
    n = len(data.inputs)
    smiles_slot = next((s.name for s in cfg.slots if s.kind == "smiles"), None)
    method = cfg.split if cfg.split != "auto" else ("scaffold" if smiles_slot and len(cfg.slots) == 1 else "random")
    if method == "scaffold":
        if not smiles_slot:
            raise TrainingError("A scaffold split needs a SMILES input.")
        return scaffold_split([r[smiles_slot] for r in data.inputs], cfg.valid_fraction, cfg.seed)
    if cfg.task == "classification":
        return Split(*stratified_split(data.y, cfg.valid_fraction, cfg.seed), "stratified")
    return Split(*random_split(n, cfg.valid_fraction, cfg.seed), "random")


def _subset(data: PreparedData, idx: np.ndarray) -> PreparedData:
    return PreparedData([data.inputs[i] for i in idx], data.y[idx], [data.source_rows[i] for i in idx], [])


class _Progress:
    """Progress events for the callback. ``defer_cancel`` (several processes): only the main process
    reports, so only it learns of a cancel; it keeps the flag (``cancelled``) instead of raising, and
    ``_stop_if_cancelled`` raises ``JobCancelled`` on every process at once."""

    def __init__(self, callback: Optional[ProgressCallback], stage: str, total: int, defer_cancel: bool = False):
        self.callback, self.stage, self.total, self.t0 = callback, stage, total, time.perf_counter()
        self.step = 0
        self.warnings: list[str] = []
        self.defer_cancel, self.cancelled = defer_cancel, False

    def _send(self, event: ProgressEvent) -> None:
        if self.cancelled:
            return
        try:
            self.callback(event)
        except JobCancelled:
            if not self.defer_cancel:
                raise
            self.cancelled = True

    def __call__(self, step: int, loss=None, metrics=None, epoch=None, examples: int = 0, message=None):
        self.step = step
        if not self.callback:
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / step * (self.total - step) if step else None
        self._send(ProgressEvent(self.stage, step, self.total, loss, metrics or {}, epoch,
                                 examples / elapsed if elapsed > 0 and examples else None, eta, message))

    def warn(self, message: str) -> None:
        """Keep ``message`` for the card and the result, and send it at once: the job log and the
        CLI show progress messages, so a person sees it while the job runs, not only afterwards."""
        self.warnings.append(message)
        if self.callback:
            self._send(ProgressEvent(self.stage, self.step, self.total, message=f"warning: {message}"))


def _finite_step(loss: float, params: list) -> bool:
    """Whether a training step may be applied: a finite loss and finite gradients. One NaN
    applied by the optimizer would spread to every weight it touches."""
    if not math.isfinite(loss):
        return False
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


def _stopping_metric(task: str, first: dict) -> tuple[str, bool]:
    """The early-stopping metric: the first of ``STOPPING_METRICS`` that the warm start's validation
    ``first`` (``valid_*`` keys) defines; the preferred one when none is (they may all be NaN there)."""
    for name, larger in STOPPING_METRICS[task]:
        value = first.get(f"valid_{name}")
        if value is not None and np.isfinite(value):
            return name, larger
    return PRIMARY_METRIC[task]


def _predict_std(model: TaggedModel, cache: PrefixCache, keys: list, plans: list, batch_size: int,
                 extra: Optional[torch.Tensor] = None) -> np.ndarray:
    """(N, n_outputs) head outputs on cached prefixes, no gradients. ``extra``: (N, E) descriptors."""
    outs = []
    with torch.no_grad():
        for s in range(0, len(plans), batch_size):
            states = cache.get(keys[s:s + batch_size], plans[s:s + batch_size])
            ex = extra[s:s + batch_size] if extra is not None else None
            outs.append(model.head(suffix_features(model, states), ex).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, model.head.config.n_outputs))


def _evaluate(task: str, out: np.ndarray, y: np.ndarray, scaler: Optional[LabelScaler]) -> tuple[dict, np.ndarray]:
    if task == "regression":
        pred = scaler.inverse(out)
        return regression_metrics(y[:, 0], pred[:, 0]), pred
    probs = torch.softmax(torch.from_numpy(out), dim=-1).numpy()
    return classification_metrics(y, probs), probs


def _better(a: float, b: Optional[float], larger: bool) -> bool:
    return b is None or (a > b if larger else a < b)


def _descriptors(cfg: FunctionTagConfig, kinds: dict, rows: list) -> Optional[torch.Tensor]:
    """(N, E) float32 descriptors of ``rows`` (NaN where undefined), or ``None`` without them."""
    if cfg.features != "descriptors":
        return None
    return torch.tensor(row_features(kinds, rows), dtype=torch.float32)


def _sample(n: int, cap: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``cap`` of ``n`` rows, drawn at random."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 7]).choice(n, cap, replace=False))


def train_function_tag(backbone: Backbone, library: Optional[TagLibrary], cfg: FunctionTagConfig,
                       train_df: pd.DataFrame, valid_df: Optional[pd.DataFrame] = None,
                       progress: Optional[ProgressCallback] = None, save: bool = True,
                       checkpoint_dir: Optional[Path] = None, data_name: str = "") -> TrainResult:
    """Stages 2-3: learn ``<cfg.name>`` and its head. Saves to ``library`` at the end if ``save``."""
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if library is not None and save and library.exists(cfg.name):
        raise TrainingError(f"A tag named <{cfg.name}> already exists; choose another name or delete it.")
    if cfg.max_rows and len(train_df) > cfg.max_rows:
        # Keep the original index: row numbers in messages must be the user's file rows.
        train_df = train_df.sample(cfg.max_rows, random_state=cfg.seed).sort_index()
    data, classes = prepare_supervised(train_df, cfg)
    split: Optional[Split] = None  # None: the caller gave the validation rows
    if valid_df is not None:
        valid, _ = prepare_supervised(valid_df, cfg, classes or None, "validation")
        train = data
    else:
        if len(data.inputs) < cfg.min_rows:
            raise TrainingError(f"Only {len(data.inputs)} usable rows; at least {cfg.min_rows} are needed.")
        split = _split(data, cfg)
        train, valid = _subset(data, split.train), _subset(data, split.valid)
    if len(train.inputs) < cfg.min_rows:
        raise TrainingError(f"Only {len(train.inputs)} usable training rows; at least {cfg.min_rows} are needed.")
    if len(valid.inputs) < 2:
        raise TrainingError("The validation set has fewer than 2 usable rows.")
    # A seeded half of a large enough validation set sets the interval's half-width and nothing else:
    # calibrated on the rows that chose the epoch and the read-out layer, it (and its coverage) would
    # be optimistic. From here until the final evaluation, ``valid`` is the other half.
    full_valid, calib = valid, None
    holdout = _calibration_split(len(valid.inputs), cfg.seed) if cfg.task == "regression" else None
    if holdout is not None:
        valid, calib = _subset(full_valid, holdout[0]), _subset(full_valid, holdout[1])
    # Checked before the warm start: a checkpoint of another run is refused at once, not minutes later.
    ckpt = _Checkpoint(checkpoint_dir, _run_identity(backbone, cfg, {"train": train, "valid": full_valid})) \
        if checkpoint_dir else None
    if ckpt:
        ckpt.verify()
    scaler = None
    if cfg.task == "regression":
        scaler = LabelScaler.fit(train.y)
        y_train = torch.tensor(scaler.transform(train.y), dtype=torch.float32)
    else:
        if len(np.unique(train.y)) < 2:
            raise TrainingError("The training labels hold only one class.")
        y_train = torch.tensor(train.y, dtype=torch.long)

    template = Template.parse(cfg.template_text())
    domain_vecs = _domain_vectors(library, cfg.slots)
    gen = torch.Generator().manual_seed(cfg.seed)
    init = init_tag_vectors(backbone.embedding_matrix, cfg.n_tokens, generator=gen)
    vectors = {cfg.name: init, **domain_vecs}
    kinds = {s.name: s.kind for s in cfg.slots}
    n_out = train.y.shape[1] if cfg.task == "regression" else len(classes)
    Y = y_train if cfg.task == "regression" else torch.nn.functional.one_hot(y_train, n_out).float() * 2 - 1
    # With layers="auto" the model first reads every layer: the warm-start pass through the prefix
    # cache gives every layer's features at once, a ridge head per layer scored on validation picks
    # the read-out depth, and the cache then keeps only the states of the layers up to it.
    n_layers = backbone.n_layers
    if cfg.layers == "auto":
        layers = tuple(range(1, n_layers + 1))
    else:
        layers = None if cfg.layers == "final" else tuple(cfg.layers)
    model = TaggedModel(backbone, template, kinds, vectors, trainable=frozenset({cfg.name}),
                        readout=cfg.readout, layers=layers)
    train_plans = [model.plan(r) for r in train.inputs]
    valid_plans = [model.plan(r) for r in valid.inputs]
    extra_train, extra_valid = _descriptors(cfg, kinds, train.inputs), _descriptors(cfg, kinds, valid.inputs)
    n_extra = extra_train.shape[1] if extra_train is not None else 0
    # Under `accelerate launch`, every process holds the model and the cache, takes its share of each
    # batch, and the gradients are summed across processes (_sync_grads); only the main one reports
    # and writes. One process (CPU, one GPU) is the same loop with a world of one.
    accelerator = _accelerator(backbone)
    world, rank = accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process
    steps_per_epoch = math.ceil(len(train_plans) / cfg.batch_size)
    warm_rows = _sample(len(train_plans), cfg.select_rows, cfg.seed)  # rows of the layer choice / warm start
    warm_steps = math.ceil((len(warm_rows) + (len(valid_plans) if cfg.layers == "auto" else 0)) / 16)
    n_cached = len(train_plans) + len(valid_plans)
    prefix_steps = math.ceil(n_cached / 32)
    report = _Progress(progress if main else None, "stage3" if len(cfg.slots) > 1 else "stage2",
                       warm_steps + prefix_steps + steps_per_epoch * cfg.epochs, defer_cancel=world > 1)
    if split and split.warning:
        report.warn(split.warning)
    phase_seconds: dict = {"epochs": []}
    t_phase = time.perf_counter()

    def head_config(feature_dim: int) -> HeadConfig:
        return HeadConfig(cfg.task, n_out, feature_dim + n_extra, n_extra, standardize=True)

    cache = PrefixCache(model, int(cfg.cache_budget_gb * (1 << 30)))
    train_keys = [("t", i) for i in range(len(train_plans))]
    valid_keys = [("v", i) for i in range(len(valid_plans))]
    # spellings[i]: (key, plan) of every SMILES spelling of training row i, the canonical one first.
    spellings = [[(k, p)] for k, p in zip(train_keys, train_plans)]
    extra_inputs = []
    for i, row in enumerate(train.inputs):
        for j, variant in enumerate(_augmented_rows(row, cfg, i)):
            spellings[i].append((("a", i, j), model.plan(variant)))
            extra_inputs.append(variant)
    extra = [kp for sp in spellings for kp in sp[1:]]
    # Rows share their template opening; in stage 3, rows with the same first input (one protein,
    # many drugs) share everything up to the second input: those states are stored once.
    groups = row_groups(template, train.inputs + valid.inputs + extra_inputs)
    cache.share(train_keys + valid_keys + [k for k, _ in extra], train_plans + valid_plans + [p for _, p in extra],
                groups)

    # Warm-start features of the untrained tag (and, to choose the layer, of the validation rows).
    scan_keys = [train_keys[i] for i in warm_rows] + (valid_keys if cfg.layers == "auto" else [])
    scan_plans = [train_plans[i] for i in warm_rows] + (valid_plans if cfg.layers == "auto" else [])
    feats = []
    with torch.no_grad():
        for k, s in enumerate(range(0, len(scan_keys), 16)):
            states = cache.get(scan_keys[s:s + 16], scan_plans[s:s + 16])
            feats.append(suffix_features(model, states).cpu())
            report(k + 1, message="warm start: read-out features of the untrained tag",
                   examples=s + len(states))
    feats = torch.cat(feats)
    layer_choice = None
    if cfg.layers == "auto":
        f_train, f_valid = feats[: len(warm_rows)], feats[len(warm_rows):]
        # the early-stopping metric's fallback order: AUROC is undefined on a fold that lacks a class
        defined = _evaluate(cfg.task, np.zeros((len(valid.y), n_out), np.float32), valid.y, scaler)[0]
        metric_name, larger = _stopping_metric(cfg.task, {f"valid_{k}": v for k, v in defined.items()})

        def loss(out: np.ndarray, rows: np.ndarray) -> float:
            value = _evaluate(cfg.task, out, valid.y[rows], scaler)[0].get(metric_name)
            return math.inf if value is None or not np.isfinite(value) else (-value if larger else value)

        layer_choice = choose_layer(lambda: TaskHead(head_config(model.feature_dim // n_layers)), f_train,
                                    Y[warm_rows], f_valid, loss, n_layers, cfg.readout,
                                    extra_train[warm_rows] if n_extra else None, extra_valid,
                                    tolerance=cfg.layer_tolerance, seed=cfg.seed)
        chosen = layer_choice.layer
        feats = layer_slice(f_train, n_layers, chosen, cfg.readout)
        cache.narrow(chosen - 1, chosen, backbone.hidden_size)
        model.layers = (chosen,)
        del f_train, f_valid
    head_cfg = head_config(model.feature_dim)
    model.head = TaskHead(head_cfg)
    warm = (feats, Y[warm_rows], extra_train[warm_rows] if n_extra else None)
    if cfg.ridge_warm_start:
        fit_head(model.head, *warm)
    else:  # the head starts at zero (the training mean), standardising with the training rows' statistics
        model.head.fit_scaling(warm[0] if warm[2] is None else torch.cat([warm[0], warm[2]], 1))
        with torch.no_grad():
            model.head.linear.weight.zero_()
            model.head.linear.bias.zero_()
    model.head.to(backbone.device)
    del warm
    phase_seconds["warm_start"] = round(time.perf_counter() - t_phase, 1)

    # The frozen part of every prompt, once (rows the warm start ran are already there).
    t_phase = time.perf_counter()
    cached_keys, cached_plans = train_keys + valid_keys, train_plans + valid_plans
    with torch.no_grad():
        for k, s in enumerate(range(0, n_cached, 32)):
            cache.get(cached_keys[s:s + 32], cached_plans[s:s + 32])
            report(warm_steps + k + 1, message="prefix pass: the frozen part of every prompt, once",
                   examples=min(s + 32, n_cached))
    phase_seconds["prefix_pass"] = round(time.perf_counter() - t_phase, 1)
    warm_steps += prefix_steps  # progress steps before the first epoch

    tag_param = model.tag(cfg.name)
    optimizer = torch.optim.Adam([
        {"params": [tag_param], "lr": cfg.tag_lr},
        {"params": model.head.parameters(), "lr": cfg.head_lr},
    ])
    optimizer = accelerator.prepare(optimizer)
    anchor = tag_param.detach().clone()

    def snapshot():
        return tag_param.detach().clone(), model.head.state()

    def validate():
        out = _predict_std(model, cache, valid_keys, valid_plans, 32, extra_valid)
        return _evaluate(cfg.task, out, valid.y, scaler)

    def check_outputs(metrics: dict, when: str) -> None:
        if metrics.get("n_nonfinite"):
            report.warn(f"{when}: {metrics['n_nonfinite']} of {metrics['n']} validation predictions were NaN or "
                        f"infinite; it counts as a bad epoch.")

    start_epoch, history, best, best_state, best_epoch, bad_epochs = 0, [], None, None, 0, 0
    warm_state = None  # the warm start's tag and head (not kept in a checkpoint)
    if ckpt and ckpt.exists():
        start_epoch, history, best, best_epoch, bad_epochs, best_state = ckpt.load(tag_param, model.head, optimizer)
    else:
        metrics0, _ = validate()
        history.append({"epoch": 0, "train_loss": None, **{f"valid_{k}": v for k, v in metrics0.items()}})
        best_state = warm_state = snapshot()
        report(warm_steps, metrics={f"valid_{k}": v for k, v in metrics0.items()}, epoch=0.0,
               message="validation of the warm start")
        check_outputs(metrics0, "The warm start")
    # Chosen from the warm start's validation (also after a resume), so every epoch is judged alike.
    stop_metric, stop_larger = _stopping_metric(cfg.task, history[0])
    if stop_metric != PRIMARY_METRIC[cfg.task][0]:
        present = sorted({classes[int(i)] for i in np.unique(valid.y)}) if classes else []
        report.warn(f"AUROC is undefined on this validation set (it holds only the class(es) {present}), so early "
                    f"stopping uses the {'log-loss' if stop_metric == 'log_loss' else stop_metric} instead. "
                    f"A validation set with every class gives a better choice of epoch.")
    if start_epoch == 0:
        best = history[0].get(f"valid_{stop_metric}")
    stopped = False

    for epoch in range(start_epoch, cfg.epochs):
        t_phase = time.perf_counter()
        # Seeded per epoch, so a resumed run shuffles exactly as an uninterrupted one.
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train_plans))
        pick = np.random.default_rng([cfg.seed, epoch, 1])
        model.train()
        losses = []
        for b, s in enumerate(range(0, len(order), cfg.batch_size)):
            idx = order[s:s + cfg.batch_size]
            chosen = [spellings[i][pick.integers(len(spellings[i]))] for i in idx]
            mine = list(range(rank, len(idx), world))
            if mine:
                states = cache.get([chosen[j][0] for j in mine], [chosen[j][1] for j in mine])
                out = model.head(suffix_features(model, states), extra_train[idx[mine]] if n_extra else None)
                # the batch mean, split into per-process parts that sum to it
                loss = model.head.loss(out, y_train[idx[mine]].to(out.device)) * (len(mine) / len(idx))
            else:
                loss = tag_param.sum() * 0.0
            total = loss
            if main:
                total = total + cfg.anchor_decay * (tag_param - anchor).pow(2).sum() / tag_param.shape[0]
            optimizer.zero_grad()
            accelerator.backward(total)
            batch_loss = _sync_grads(accelerator, [tag_param, *model.head.parameters()], loss)
            # batch_loss and the gradients are summed over processes: every rank stops at the same step.
            if not _finite_step(batch_loss, [tag_param, *model.head.parameters()]):
                stopped = True
                report.warn(f"Training stopped at epoch {epoch + 1}, batch {b + 1}: the loss or its gradient "
                            f"became non-finite (NaN or infinity). The best state on validation so far was kept "
                            f"(epoch {best_epoch}; 0 is the warm start); a lower learning rate may let training "
                            f"go further.")
                break
            optimizer.step()
            losses.append(batch_loss)
            step = warm_steps + epoch * steps_per_epoch + b + 1
            report(step, loss=batch_loss, epoch=epoch + (b + 1) / steps_per_epoch, examples=(b + 1) * cfg.batch_size)
            _stop_if_cancelled(accelerator, report)
        model.eval()
        if stopped:
            break
        metrics, _ = validate()
        check_outputs(metrics, f"Validation after epoch {epoch + 1}")
        phase_seconds["epochs"].append(round(time.perf_counter() - t_phase, 1))
        entry = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), **{f"valid_{k}": v for k, v in metrics.items()}}
        history.append(entry)
        # The main process's score decides for every process (each validates on its own, and its data or
        # its rounding may differ), so all keep the same best state and stop at the same epoch.
        value = _from_main(accelerator, [math.nan if metrics.get(stop_metric) is None else metrics[stop_metric]])[0]
        value = None if math.isnan(value) else value
        if value is not None and _better(value, best, stop_larger):
            best, best_state, best_epoch, bad_epochs = value, snapshot(), epoch + 1, 0
        else:
            bad_epochs += 1
        report(warm_steps + (epoch + 1) * steps_per_epoch, loss=entry["train_loss"],
               metrics={k: v for k, v in entry.items() if k.startswith("valid_")}, epoch=float(epoch + 1))
        _stop_if_cancelled(accelerator, report)
        if ckpt and main:
            ckpt.save(epoch + 1, history, best, best_epoch, bad_epochs, best_state, tag_param, model.head, optimizer)
        if bad_epochs >= cfg.patience:
            break

    calib_keys = [("c", i) for i in range(len(calib.inputs))] if calib is not None else []
    calib_plans = [model.plan(r) for r in calib.inputs] if calib is not None else []
    extra_calib = _descriptors(cfg, kinds, calib.inputs) if calib is not None else None

    def outputs_of(state) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """(selection rows' outputs, calibration rows' outputs or None) of a (tag, head) state."""
        with torch.no_grad():
            tag_param.copy_(state[0])
        model.head.load_state(state[1])
        out = _predict_std(model, cache, valid_keys, valid_plans, 32, extra_valid)
        return out, (_predict_std(model, cache, calib_keys, calib_plans, 32, extra_calib) if calib is not None
                     else None)

    # The warm start as a baseline on every validation row (history[0] holds the selection rows only).
    warm_metrics = None
    if calib is not None and warm_state is not None and best_epoch != 0:
        warm_sel, warm_cal = outputs_of(warm_state)
        warm_metrics = _evaluate(cfg.task, _in_split_order(warm_sel, warm_cal, holdout), full_valid.y, scaler)[0]
    out, out_calib = outputs_of(best_state)
    held_out = None  # (metrics, predictions) of the best state on the calibration rows
    if calib is not None:
        held_out = _evaluate(cfg.task, out_calib, calib.y, scaler)
        # The validation set is whole again: the card's metrics and baselines cover all its rows.
        out, valid = _in_split_order(out, out_calib, holdout), full_valid
        extra_valid = _descriptors(cfg, kinds, valid.inputs)
    metrics, pred = _evaluate(cfg.task, out, valid.y, scaler)
    interval = None
    if cfg.task == "regression":
        resid = calib.y - held_out[1] if calib is not None else valid.y - pred
        interval = _conformal_interval(resid, cfg.interval_level, held_out=calib is not None)
    label_sample = (train.y[:, 0] if cfg.task == "regression" else train.y).tolist()[:2000]
    # The applicability domain: the training inputs' fingerprints (packed) and the similarity below which
    # validation error rose, so prediction can flag inputs unlike anything the tag learned from.
    applicability, references = build_applicability(kinds, train.inputs, valid.inputs,
                                                    validation_errors(cfg.task, valid.y, pred), cfg.task, cfg.seed)
    baselines = {}
    if cfg.baselines and main:
        report(report.total, message="classic baselines on the same rows")
        n_classes = len(classes or [])
        baselines["mean"] = mean_baseline(cfg.task, train.y, valid.y, n_classes)
        if calib is not None and best_epoch == 0:
            warm_metrics = metrics  # the warm start is the kept state
        baselines["warm_start"] = warm_metrics if warm_metrics is not None else {
            k[6:]: v for k, v in history[0].items() if k.startswith("valid_")}
        x_tr = extra_train.numpy() if n_extra else row_features(kinds, train.inputs)
        x_va = extra_valid.numpy() if n_extra else row_features(kinds, valid.inputs)
        rf = rf_descriptors(cfg.task, x_tr, train.y, x_va, valid.y, n_classes, cfg.seed)
        if rf is not None:
            baselines["rf_descriptors"] = rf
    card = TagCard(
        name=cfg.name, kind="function", backbone=backbone.fingerprint.to_dict(), n_tokens=cfg.n_tokens,
        description=cfg.description, template=template.text, slots=cfg.slots, task=cfg.task,
        labels=list(cfg.labels), classes=classes, label_scaling=scaler.to_dict() if scaler else None,
        readout=cfg.readout, layers=list(model.layers) if model.layers else None, features=cfg.features,
        descriptor_names=row_feature_names(kinds) if n_extra else [],
        head=head_cfg.to_dict(), metrics={"valid": metrics, **({"held_out": held_out[0]} if held_out else {}),
                                          **({"baselines": baselines} if baselines else {})},
        interval=interval, label_sample=label_sample, applicability=applicability,
        training={
            "stage": 3 if len(cfg.slots) > 1 else 2, "data": data_name, "rows_train": len(train.inputs),
            "rows_valid": len(valid.inputs), "rows_dropped": len(data.dropped),
            # validation rows that chose the epoch (and layer), and those that set the interval alone; the
            # same rows for a small validation set (interval["calibration"] == "shared")
            "selection_rows": len(valid.inputs) - (len(calib.inputs) if calib is not None else 0),
            "calibration_rows": (len(calib.inputs) if calib is not None else len(valid.inputs))
                                if cfg.task == "regression" else None,
            "split": "given" if valid_df is not None else cfg.split,
            "split_method": "given" if valid_df is not None else split.method,
            "early_stopping_metric": stop_metric, "best_epoch": best_epoch,
            "epochs_run": len(history) - 1, "seconds": round(time.perf_counter() - t_start, 1),
            "phase_seconds": phase_seconds,
            # protein lengths before cropping, so prediction can flag a sequence far outside them
            "input_lengths": length_ranges({slot.name: train_df[cfg.columns.get(slot.name, slot.name)]
                                            for slot in cfg.slots if slot.kind == "protein"}),
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("slots", "name", "description")},
            "history": history,
            "warnings": report.warnings,
            "layer_choice": ({"chosen": layer_choice.layer, "best": layer_choice.best,
                              "tolerance_se": layer_choice.tolerance, "rows": len(warm_rows),
                              f"valid_{metric_name}_by_layer": _layer_metrics(layer_choice.scores, larger)}
                             if layer_choice else None),
        },
    )
    _stop_if_cancelled(accelerator, report)  # a cancel seen in the last reports: nothing is saved
    tag = Tag(card, best_state[0].detach().float().cpu(), {k: v.cpu() for k, v in best_state[1].items()},
              {k: v.float().cpu() for k, v in domain_vecs.items()}, references)
    path = library.save(tag) if (save and library is not None and main) else None
    if ckpt and main:
        ckpt.clear()
    vt = (valid.y[:, 0] if cfg.task == "regression" else valid.y).tolist()
    vp = (pred[:, 0] if cfg.task == "regression" else pred[:, -1]).tolist()
    return TrainResult(tag, metrics, history, vt, vp, data.dropped, path, report.warnings)


def _layer_metrics(scores: dict, larger: bool) -> dict:
    """Layer-choice losses back in metric units: {layer: metric of its ridge head on validation}."""
    return {int(k): (-v if larger else v) if np.isfinite(v) else None for k, v in scores.items()}


def _augmented_rows(row: dict, cfg: FunctionTagConfig, index: int) -> list[dict]:
    """Up to ``cfg.augment`` copies of ``row`` with every SMILES input spelled differently."""
    if not cfg.augment:
        return []
    smiles_slots = [s.name for s in cfg.slots if s.kind == "smiles"]
    variants = {s: randomized_smiles(row[s], cfg.augment, seed=cfg.seed * 1_000_003 + index) for s in smiles_slots}
    rows = []
    for j in range(cfg.augment):
        new = {**row, **{s: v[j] for s, v in variants.items() if j < len(v)}}
        if new != row:
            rows.append(new)
    return rows


def _accelerator(backbone: Backbone, grad_accum: int = 1):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=backbone.device.type == "cpu", gradient_accumulation_steps=grad_accum)
    # The gradient state is process-wide: a run that ended between two optimizer steps would leave it
    # "not syncing", and the next run's optimizer would skip its steps.
    accelerator.sync_gradients = True
    return accelerator


def _sync_grads(accelerator, params: list, loss: torch.Tensor, grads: bool = True) -> float:
    """Sum gradients (and the loss) over processes; each process's loss is its share of the batch
    mean, so the sum is the full-batch gradient. Returns the batch loss. A no-op for one process.
    ``grads=False`` sums the loss alone: with gradient accumulation ``.grad`` is this process's running
    sum over the micro-steps, summed across processes once, at the optimizer step (summing it on every
    micro-step would add the other processes' earlier micro-steps again)."""
    if accelerator.num_processes == 1:
        return float(loss.detach())
    for p in params if grads else []:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        p.grad = accelerator.reduce(p.grad, reduction="sum")
    return float(accelerator.reduce(loss.detach().clone(), reduction="sum"))


CALIBRATION_MIN_ROWS = 40  # validation rows from which half is held out for the interval


def _calibration_split(n: int, seed: int) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(selection, calibration) positions of ``n`` validation rows, sorted, a seeded half each; ``None``
    below ``CALIBRATION_MIN_ROWS`` (halves too small to choose an epoch or to calibrate)."""
    if n < CALIBRATION_MIN_ROWS:
        return None
    order = np.random.default_rng([seed, 11]).permutation(n)
    return np.sort(order[n // 2:]), np.sort(order[: n // 2])


def _in_split_order(selection: np.ndarray, calibration: np.ndarray, holdout: tuple) -> np.ndarray:
    """Rows of the two halves back in the validation set's order."""
    merged = np.empty((len(selection) + len(calibration), *selection.shape[1:]), selection.dtype)
    merged[holdout[0]], merged[holdout[1]] = selection, calibration
    return merged


def _conformal_interval(resid: np.ndarray, level: float, held_out: bool) -> Optional[dict]:
    """The card's interval from (N, K) calibration residuals: a split-conformal half-width per output;
    ``None`` when there are too few rows for the level (an infinite half-width). ``held_out``: the rows
    chose nothing else; otherwise the interval is optimistic, and the card says so."""
    halves = [float(conformal_halfwidth(resid[:, k], level)) for k in range(resid.shape[1])]
    if not all(np.isfinite(halves)):
        return None
    interval = {"level": level, "halfwidth": halves, "crossfit_coverage": _crossfit_coverage(resid[:, 0], level),
                "n_calibration": len(resid), "calibration": "held_out" if held_out else "shared"}
    if not held_out:
        interval["note"] = (f"The interval is optimistic: with fewer than {CALIBRATION_MIN_ROWS} validation rows, "
                            f"the {len(resid)} rows that set it also chose the best epoch (and the read-out "
                            f"layer), so its coverage on new data is likely below {level:.0%}.")
    return interval


def _from_main(accelerator, values: list) -> list:
    """The main process's ``values`` (floats) on every process. Decisions that end a loop (early
    stopping, a cancel) are the main process's, so no process leaves a loop that another stays in,
    waiting forever in its next all-reduce. Returns ``values`` for one process."""
    if accelerator.num_processes == 1:
        return list(values)
    from accelerate.utils import broadcast

    return broadcast(torch.tensor(values, dtype=torch.float64, device=accelerator.device), from_process=0).tolist()


def _stop_if_cancelled(accelerator, report: _Progress) -> None:
    """Raise ``JobCancelled`` on every process when the main one's callback cancelled the job."""
    if accelerator.num_processes > 1 and _from_main(accelerator, [float(report.cancelled)])[0]:
        raise JobCancelled("the job was cancelled")


def _crossfit_coverage(resid: np.ndarray, level: float) -> Optional[float]:
    """Coverage measured honestly: calibrate on one half of the validation residuals, test on the other."""
    if len(resid) < 10:
        return None
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(resid))
    a, b = idx[: len(idx) // 2], idx[len(idx) // 2:]
    halves = [(conformal_halfwidth(resid[c], level), t) for c, t in ((a, b), (b, a))]
    if not all(np.isfinite(h) for h, _ in halves):
        return None
    return float(np.mean([np.mean(np.abs(resid[t]) <= h) for h, t in halves]))


# Settings that do not change the course of training up to a checkpoint: a resumed run may change them.
_RESUMABLE_SETTINGS = ("description", "epochs", "patience", "cache_budget_gb", "baselines")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _run_identity(backbone: Backbone, cfg: FunctionTagConfig, parts: dict) -> dict:
    """SHA-256 fingerprints of what a checkpoint's state depends on: ``data`` (every cleaned row of
    every part of the split, with its label: the file, the split and its seed), ``settings`` (the
    configuration, less ``_RESUMABLE_SETTINGS``) and ``backbone`` (its weights' fingerprint)."""
    fp = backbone.fingerprint
    return {
        "data": _digest({k: [p.inputs, p.y.tolist()] for k, p in parts.items()}),
        "settings": _digest({k: v for k, v in asdict(cfg).items() if k not in _RESUMABLE_SETTINGS}),
        "backbone": _digest([fp.hidden_size, fp.vocab_size, fp.embedding_sha256]),
    }


class _Checkpoint:
    """Per-epoch training state in one safetensors file, the bookkeeping (JSON) in its header (no
    pickle), for resume. One file, replaced atomically: a kill can never pair one epoch's weights with
    another epoch's bookkeeping. ``identity`` (``_run_identity``) is stored with it: a folder left by
    another run is refused, never resumed, since a state of the same shapes would load silently and
    train on from someone else's epoch."""

    FILE = "checkpoint.safetensors"

    def __init__(self, folder: Path, identity: dict):
        self.folder, self.identity = Path(folder), identity

    @property
    def path(self) -> Path:
        return self.folder / self.FILE

    def exists(self) -> bool:
        return self.path.exists()

    def _meta(self) -> dict:
        from safetensors import safe_open

        with safe_open(str(self.path), "pt") as f:
            return json.loads((f.metadata() or {})["checkpoint"])

    def verify(self) -> None:
        """Raise ``TrainingError`` when the folder holds a checkpoint that this run did not write."""
        if not self.exists():
            return
        start_afresh = "Delete the folder, or give this run another checkpoint folder, to start afresh."
        try:
            found = self._meta().get("identity")
        except Exception:  # safetensors and json raise several types for a damaged file
            raise TrainingError(f"The checkpoint in {self.folder} cannot be read. {start_afresh}") from None
        if not isinstance(found, dict):
            raise TrainingError(f"The checkpoint in {self.folder} has no run fingerprint (an older version wrote "
                                f"it), so it cannot be told apart from another run's; it was not resumed. "
                                f"{start_afresh}")
        differ = [what for what in ("data", "settings", "backbone") if found.get(what) != self.identity[what]]
        if differ:
            raise TrainingError(f"The checkpoint in {self.folder} comes from another run (its "
                                f"{' and '.join(differ)} differ from this run's); it was not resumed. {start_afresh}")

    def save(self, epoch, history, best, best_epoch, bad_epochs, best_state, tag_param, head, optimizer):
        from safetensors.torch import save_file

        from .paths import atomic_write

        opt = optimizer.state_dict()
        tensors = {"tag": tag_param.detach().cpu().contiguous(), "best_tag": best_state[0].cpu().contiguous()}
        for k, v in head.state().items():
            tensors[f"head.{k}"] = v.cpu().contiguous()
        for k, v in best_state[1].items():
            tensors[f"best_head.{k}"] = v.cpu().contiguous()
        scalars = {}
        for pid, st in opt["state"].items():
            for name, val in st.items():
                if torch.is_tensor(val) and val.ndim > 0:
                    tensors[f"opt.{pid}.{name}"] = val.cpu().contiguous()
                else:
                    scalars[f"{pid}.{name}"] = float(val)
        meta = {"identity": self.identity, "epoch": epoch, "history": history, "best": best,
                "best_epoch": best_epoch, "bad_epochs": bad_epochs, "opt_scalars": scalars,
                "param_groups": opt["param_groups"]}
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, lambda tmp: save_file(tensors, tmp, metadata={"checkpoint": json.dumps(meta)}))

    def load(self, tag_param, head, optimizer):
        from safetensors.torch import load_file

        meta = self._meta()
        t = load_file(str(self.path))
        with torch.no_grad():
            tag_param.copy_(t["tag"])
        head.load_state({k[5:]: v for k, v in t.items() if k.startswith("head.")})
        state: dict = {}
        for key, val in t.items():
            if key.startswith("opt."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = val
        for key, val in meta["opt_scalars"].items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = torch.tensor(val)
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        best_state = (t["best_tag"], {k[10:]: v for k, v in t.items() if k.startswith("best_head.")})
        return meta["epoch"], meta["history"], meta["best"], meta["best_epoch"], meta["bad_epochs"], best_state

    def clear(self):
        self.path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Stage 1: domain tags


@dataclass
class DomainTagConfig:
    name: str
    input_kind: str  # "smiles" | "protein" | "text"
    n_tokens: int = 10
    steps: int = 200
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    max_tokens: int = 128  # crop each sequence to this many tokens (longer SMILES are dropped, not cropped)
    valid_fraction: float = 0.1
    max_valid: int = 64
    seed: int = 0
    init_text: Optional[str] = None  # initialise from this text's token embeddings
    description: str = ""

    def __post_init__(self):
        self.name = normalize_tag_name(self.name)
        if self.input_kind not in KINDS:
            raise TrainingError(f"Unknown input kind {self.input_kind!r}.")


@dataclass
class DomainTrainResult:
    tag: Tag
    perplexity: dict  # {"trained": .., "no_tag": .., "random_tag": ..}
    history: list
    dropped: int
    path: Optional[Path] = None
    warnings: list = field(default_factory=list)  # sentences for the user, also in card.training["warnings"]


def _lm_batch(backbone: Backbone, encoder: PromptEncoder, ids_list: list, tag: Optional[torch.Tensor]):
    """Batch for next-token loss: [BOS] [tag] content. Returns (embeds, mask, targets (B,T) with -100)."""
    bb = backbone
    p = 0 if tag is None else tag.shape[0]
    prefix = len(encoder.bos)
    T = max(prefix + p + len(ids) for ids in ids_list)
    B = len(ids_list)
    tok = torch.full((B, T), bb.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    targets = torch.full((B, T), -100, dtype=torch.long)
    for b, ids in enumerate(ids_list):
        start = prefix + p
        if encoder.bos:
            tok[b, 0] = encoder.bos[0]
        tok[b, start:start + len(ids)] = torch.tensor(ids)
        mask[b, : start + len(ids)] = 1
        # position t predicts token t+1: the loss covers content tokens 2..n, identical for every
        # variant (trained tag / no tag / random tag), so their perplexities are comparable.
        targets[b, start: start + len(ids) - 1] = torch.tensor(ids[1:])
    embeds = bb.embed_ids(tok)
    if tag is not None:
        start = prefix
        vec = tag.to(bb.dtype).unsqueeze(0).expand(B, -1, -1)
        embeds = torch.cat([embeds[:, :start], vec, embeds[:, start + p:]], dim=1)
    return embeds, mask.to(bb.device), targets.to(bb.device)


def _lm_loss(backbone: Backbone, embeds, mask, targets) -> tuple[torch.Tensor, int]:
    hidden = backbone.base(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
    sel = targets != -100
    logits = backbone.model.get_output_embeddings()(hidden[sel]).float()  # only where there is a target
    return torch.nn.functional.cross_entropy(logits, targets[sel]), int(sel.sum())


def domain_perplexity(backbone: Backbone, encoder: PromptEncoder, ids_list: list, tag: Optional[torch.Tensor],
                      batch_size: int = 8) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, len(ids_list), batch_size):
            loss, n = _lm_loss(backbone, *_lm_batch(backbone, encoder, ids_list[s:s + batch_size], tag))
            total += float(loss) * n
            count += n
    return math.exp(total / max(count, 1))


def train_domain_tag(backbone: Backbone, library: Optional[TagLibrary], cfg: DomainTagConfig, corpus: list,
                     progress: Optional[ProgressCallback] = None, save: bool = True,
                     data_name: str = "") -> DomainTrainResult:
    """Stage 1: learn ``<cfg.name>`` by next-token prediction on ``corpus`` (loss on domain tokens only)."""
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if library is not None and save and library.exists(cfg.name):
        raise TrainingError(f"A tag named <{cfg.name}> already exists; choose another name or delete it.")
    encoder = PromptEncoder(backbone.tokenizer, {cfg.input_kind: cfg.max_tokens})
    seqs, dropped = [], 0
    for text in corpus:
        c = clean(cfg.input_kind, text)
        ids = encoder.content_ids(cfg.input_kind, c.value) if c.ok else []
        # Proteins and text are cropped to max_tokens by the encoder; a cropped SMILES would be
        # another molecule, so an over-long one is dropped like an invalid one.
        if c.ok and len(ids) <= cfg.max_tokens:
            seqs.append(ids)
        else:
            dropped += 1
    seqs = [s for s in seqs if len(s) >= 2]
    if len(seqs) < 8:
        raise TrainingError(f"Only {len(seqs)} usable sequences in the corpus; at least 8 are needed.")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(seqs))
    n_valid = min(cfg.max_valid, max(2, int(len(seqs) * cfg.valid_fraction)))
    valid = [seqs[i] for i in order[:n_valid]]
    train = [seqs[i] for i in order[n_valid:]]
    gen = torch.Generator().manual_seed(cfg.seed)
    from_ids = None
    if cfg.init_text:
        from_ids = torch.tensor(backbone.tokenizer.encode(cfg.init_text, add_special_tokens=False))
    init = init_tag_vectors(backbone.embedding_matrix, cfg.n_tokens, generator=gen, from_ids=from_ids)
    random_tag = init_tag_vectors(backbone.embedding_matrix, cfg.n_tokens,
                                  generator=torch.Generator().manual_seed(cfg.seed + 1))
    tag = torch.nn.Parameter(init.clone().to(backbone.device))
    accelerator = _accelerator(backbone, cfg.grad_accum)
    world, rank = accelerator.num_processes, accelerator.process_index
    main = accelerator.is_main_process
    optimizer = accelerator.prepare(torch.optim.Adam([tag], lr=cfg.lr))
    report = _Progress(progress if main else None, "stage1", cfg.steps, defer_cancel=world > 1)
    # Length bucketing: batches of similar length waste little on padding.
    by_len = sorted(range(len(train)), key=lambda i: len(train[i]))
    buckets = [by_len[s:s + cfg.batch_size] for s in range(0, len(by_len), cfg.batch_size)]
    history, step, tokens = [], 0, 0
    eval_every = max(1, cfg.steps // 5)
    stopped = False
    while step < cfg.steps and not stopped:
        for bi in rng.permutation(len(buckets)):
            rows = buckets[bi]
            mine = rows[rank::world]  # this process's share of the batch
            n_batch = sum(len(train[i]) - 1 for i in rows)  # predicted tokens in the whole batch
            with accelerator.accumulate(tag):
                if mine:
                    embeds, mask, targets = _lm_batch(backbone, encoder, [train[i] for i in mine], tag)
                    loss, n = _lm_loss(backbone, embeds, mask, targets)
                    loss = loss * (n / n_batch)  # token mean over the whole batch, in per-process parts
                else:
                    loss = tag.sum() * 0.0
                accelerator.backward(loss)
                # Gradients are summed across processes only when the optimizer steps (the end of an
                # accumulation); the loss on every micro-step.
                synced = accelerator.sync_gradients
                loss = torch.tensor(_sync_grads(accelerator, [tag], loss, grads=synced))
                # Checked before the step, so the tag stays the last finite one (the loss and the synced
                # gradients are summed over processes, so every rank stops at the same step).
                if not _finite_step(float(loss), [tag] if synced else []):
                    stopped = True
                    report.warn(f"Training stopped at step {step + 1} of {cfg.steps}: the loss or its gradient "
                                f"became non-finite (NaN or infinity). The tag after step {step}, the last "
                                f"finite one, was kept; a lower learning rate may let training go further.")
                    break
                optimizer.step()
                optimizer.zero_grad()
            step += 1
            tokens += n_batch
            metrics = {}
            if step % eval_every == 0 or step == cfg.steps:
                metrics = {"valid_perplexity": domain_perplexity(backbone, encoder, valid, tag.detach())}
                history.append({"step": step, "train_loss": loss.item(), **metrics})
            report(step, loss=loss.item(), metrics=metrics, examples=tokens, message="tokens/s")
            _stop_if_cancelled(accelerator, report)
            if step >= cfg.steps:
                break
    if not torch.isfinite(tag).all():  # a finite loss can still step into overflow; never save such a tag
        raise TrainingError("The domain tag became non-finite (NaN or infinity) during training; "
                            "try a lower learning rate.")
    ppl = {
        "trained": domain_perplexity(backbone, encoder, valid, tag.detach()),
        "no_tag": domain_perplexity(backbone, encoder, valid, None),
        "random_tag": domain_perplexity(backbone, encoder, valid, random_tag.to(backbone.device)),
        "n_valid_sequences": len(valid),
    }
    card = TagCard(
        name=cfg.name, kind="domain", backbone=backbone.fingerprint.to_dict(), n_tokens=cfg.n_tokens,
        description=cfg.description, input_kind=cfg.input_kind, metrics={"valid_perplexity": ppl},
        training={"stage": 1, "data": data_name, "sequences_train": len(train), "sequences_dropped": dropped,
                  "steps": cfg.steps, "steps_run": step, "tokens_seen": tokens,
                  "seconds": round(time.perf_counter() - t_start, 1), "config": asdict(cfg), "history": history,
                  "warnings": report.warnings},
    )
    result_tag = Tag(card, tag.detach().float().cpu())
    path = library.save(result_tag) if (save and library is not None and main) else None
    return DomainTrainResult(result_tag, ppl, history, dropped, path, report.warnings)

"""Data for function-tag training: rows → cleaned inputs and labels, the validation split and its
calibration half, standardised targets, and the model's inputs (row plans, augmented spellings,
descriptors, and the prefix cache that shares what rows have in common).

SMILES are cleaned exactly as prediction cleans them (``standardize.clean_for_model``: the
largest organic fragment, neutralised), so a hydrochloride in the training file is learnt as the
parent amine that prediction will read; inorganic and metal-containing inputs are kept as entered, as
prediction keeps (and flags) them. What standardisation did is counted in the training warnings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

from .backbone import Backbone
from .data import Split, random_split, require_columns, scaffold_split, stratified_split
from .descriptors import row_feature_names, row_features
from .domains import randomized_smiles, spelled_entries
from .exceptions import TrainingError
from .heads import LabelScaler, ridge_targets
from .model import TaggedModel
from .prefix_cache import PrefixCache, row_groups
from .standardize import clean_for_model, training_summary
from .tags import SlotSpec, TagLibrary, init_tag_vectors
from .templates import RowPlan, Template
from .train_config import CHOSEN_LAYERS, FunctionTagConfig

__all__ = ["PreparedData", "prepare_supervised", "split_validation", "CALIBRATION_MIN_ROWS", "calibration_split",
           "SplitRows", "prepare_rows", "Targets", "encode_targets", "domain_vectors", "augmented_rows",
           "row_descriptors", "ModelInputs", "prepare_inputs", "share_prefixes"]


@dataclass
class PreparedData:
    """Cleaned inputs and encoded labels. ``y``: (N, K) floats (regression) or (N,) ints."""

    inputs: list[dict[str, str]]  # [{slot: cleaned value}]
    y: np.ndarray
    source_rows: list[int]  # 1-based rows of the original file
    dropped: list[tuple[int, str]]  # [(row, reason)]
    # [(row, sentences)] of the SMILES standardisation changed, and of those it flagged (inorganic, metal)
    standardised: list[tuple[int, list[str]]] = field(default_factory=list)
    flagged: list[tuple[int, list[str]]] = field(default_factory=list)

    def standardisation_warnings(self, what: str = "training") -> list[str]:
        return training_summary(self.standardised, self.flagged, what)


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
    """Validate columns, clean inputs row by row (bad rows are dropped and reported; SMILES standardised
    as prediction standardises them), encode labels."""
    columns = {s.name: cfg.columns.get(s.name, s.name) for s in cfg.slots}
    require_columns(df, list(columns.values()) + list(cfg.labels), what)
    y_all, classes = _encode_labels(df, cfg, classes)
    inputs, keep, dropped = [], [], []
    standardised: list[tuple[int, list[str]]] = []
    flagged: list[tuple[int, list[str]]] = []
    for i in range(len(df)):
        row: dict[str, Any] = {}
        reason = None
        changes, flags = [], []  # one entry per SMILES of the row that standardisation changed / flagged
        for slot in cfg.slots:
            c, slot_changes, slot_flags = clean_for_model(slot.kind, df[columns[slot.name]].iat[i],
                                                          cfg.max_length.get(slot.kind))
            if not c.ok:
                reason = f"{slot.name}: {c.error}"
                break
            row[slot.name] = c.value
            changes += [(_file_row(df, i), slot_changes)] if slot_changes else []
            flags += [(_file_row(df, i), slot_flags)] if slot_flags else []
        if reason:
            dropped.append((_file_row(df, i), reason))
            continue
        inputs.append(row)
        keep.append(i)
        standardised += changes
        flagged += flags
    return PreparedData(inputs, y_all[keep], [_file_row(df, i) for i in keep], dropped, standardised,
                        flagged), classes


def split_validation(data: PreparedData, cfg: FunctionTagConfig) -> Split:
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


CALIBRATION_MIN_ROWS = 40  # validation rows from which half is held out from every choice (and sets the interval)


def calibration_split(n: int, seed: int, classes: Optional[np.ndarray] = None
                      ) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(selection, calibration) positions of ``n`` validation rows, sorted, a seeded half each; ``None``
    below ``CALIBRATION_MIN_ROWS`` (halves too small to choose an epoch or to calibrate).

    ``classes``: the (n,) class indices of a classification's rows. Each class is then halved on its
    own, so both halves keep every class of the validation set and AUROC stays defined on each (an odd
    member goes to the selection half); ``None`` when a class has a single row, which one half would lack.
    """
    if n < CALIBRATION_MIN_ROWS:
        return None
    rng = np.random.default_rng([seed, 11])
    if classes is None:
        order = rng.permutation(n)
        return np.sort(order[n // 2:]), np.sort(order[: n // 2])
    classes = np.asarray(classes)
    members = [rng.permutation(np.flatnonzero(classes == c)) for c in np.unique(classes)]
    if min(len(m) for m in members) < 2:
        return None
    calib = np.concatenate([m[: len(m) // 2] for m in members])
    return np.setdiff1d(np.arange(n), calib), np.sort(calib)


@dataclass
class SplitRows:
    """The rows of one training run. ``valid``: the validation rows that choose the epoch and the
    read-out layer; ``calib`` (with ``holdout``, the two halves' positions in ``full_valid``): the
    seeded half that no choice reads: it sets a regression's interval and gives every task an honest
    held-out score; ``None`` with too few rows."""

    frame: pd.DataFrame  # the training table as used (after ``max_rows``), for the input lengths
    data: PreparedData  # every cleaned training-file row (its ``dropped`` are the file's)
    train: PreparedData
    valid: PreparedData
    full_valid: PreparedData
    calib: Optional[PreparedData]
    holdout: Optional[tuple[np.ndarray, np.ndarray]]
    split: Optional[Split]  # None: the caller gave the validation rows
    classes: list[str]
    warnings: list[str] = field(default_factory=list)  # what standardisation did to the SMILES, for the card


def prepare_rows(cfg: FunctionTagConfig, train_df: pd.DataFrame, valid_df: Optional[pd.DataFrame]) -> SplitRows:
    """Clean the rows, split off validation (unless given) and, from validation, the calibration half."""
    if cfg.max_rows and len(train_df) > cfg.max_rows:
        # Keep the original index: row numbers in messages must be the user's file rows.
        train_df = train_df.sample(cfg.max_rows, random_state=cfg.seed).sort_index()
    data, classes = prepare_supervised(train_df, cfg)
    warnings = data.standardisation_warnings("training")
    split: Optional[Split] = None
    if valid_df is not None:
        valid, _ = prepare_supervised(valid_df, cfg, classes or None, "validation")
        warnings += valid.standardisation_warnings("validation")
        train = data
    else:
        if len(data.inputs) < cfg.min_rows:
            raise TrainingError(f"Only {len(data.inputs)} usable rows; at least {cfg.min_rows} are needed.")
        split = split_validation(data, cfg)
        train, valid = _subset(data, split.train), _subset(data, split.valid)
    if len(train.inputs) < cfg.min_rows:
        raise TrainingError(f"Only {len(train.inputs)} usable training rows; at least {cfg.min_rows} are needed.")
    if len(valid.inputs) < 2:
        raise TrainingError("The validation set has fewer than 2 usable rows.")
    # A seeded half of a large enough validation set sets the interval's half-width and nothing else
    # (``calibrate``); for a classification it only scores the kept state, on rows that chose nothing.
    # Until the final evaluation, ``valid`` is the other half.
    full_valid, calib = valid, None
    holdout = calibration_split(len(valid.inputs), cfg.seed, valid.y if cfg.task == "classification" else None)
    if holdout is not None:
        valid, calib = _subset(full_valid, holdout[0]), _subset(full_valid, holdout[1])
    return SplitRows(train_df, data, train, valid, full_valid, calib, holdout, split, classes, warnings)


@dataclass
class Targets:
    """Training targets. ``y``: (N, K) standardised floats (regression) or (N,) class indices;
    ``ridge``: (N, K) float targets of the ridge warm start (classes as ±1 one-hot columns)."""

    scaler: Optional[LabelScaler]  # None for classification
    y: torch.Tensor
    ridge: torch.Tensor
    n_outputs: int


def encode_targets(cfg: FunctionTagConfig, train: PreparedData, classes: list[str]) -> Targets:
    if cfg.task == "regression":
        scaler, y = ridge_targets(cfg.task, train.y)
        return Targets(scaler, y, y, train.y.shape[1])
    if len(np.unique(train.y)) < 2:
        raise TrainingError("The training labels hold only one class.")
    _, ridge = ridge_targets(cfg.task, train.y, len(classes))
    return Targets(None, torch.tensor(train.y, dtype=torch.long), ridge, len(classes))


def domain_vectors(library: Optional[TagLibrary], slots: list[SlotSpec]) -> dict[str, torch.Tensor]:
    """{name: (p, d) vectors} of the slots' domain tags, from ``library``."""
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


def augmented_rows(row: dict[str, str], cfg: FunctionTagConfig, index: int) -> list[dict[str, str]]:
    """Up to ``cfg.augment`` (or ``cfg.spellings``, the larger) copies of ``row`` with every SMILES input
    spelled differently."""
    n = max(cfg.augment, cfg.spellings)
    if not n:
        return []
    smiles_slots = [s.name for s in cfg.slots if s.kind == "smiles"]
    variants = {s: randomized_smiles(row[s], n, seed=cfg.seed * 1_000_003 + index) for s in smiles_slots}
    rows = []
    for j in range(n):
        new = {**row, **{s: v[j] for s, v in variants.items() if j < len(v)}}
        if new != row:
            rows.append(new)
    return rows


def row_descriptors(cfg: FunctionTagConfig, kinds: dict[str, str],
                    rows: list[dict[str, str]]) -> Optional[torch.Tensor]:
    """(N, E) float32 descriptors of ``rows`` (NaN where undefined), or ``None`` without them."""
    if cfg.features != "descriptors":
        return None
    return torch.tensor(row_features(kinds, rows), dtype=torch.float32)


LABEL_COPY_R = 0.999  # |Pearson r| between a descriptor and the label above which the label is a descriptor


def label_copy_warnings(kinds: dict[str, str], extra: Optional[torch.Tensor], y: torch.Tensor,
                        labels: list[str]) -> list[str]:
    """Sentences for the descriptors that are (nearly) a regression label up to scale on the training
    rows (RDKit's 2D descriptors include QED, MolLogP, TPSA, HeavyAtomCount…): a descriptor-augmented head
    then reads the label off its inputs, and its scores say nothing about the tag. ``extra``: (N, E)
    descriptors (NaN where undefined) or ``None``; ``y``: (N, K) regression targets."""
    if extra is None or y.ndim != 2:
        return []
    X, Y = extra.double().numpy(), y.double().numpy()
    names = row_feature_names(kinds)
    out = []
    for k, label in enumerate(labels[: Y.shape[1]]):
        copies = []
        for j, name in enumerate(names):
            ok = np.isfinite(X[:, j]) & np.isfinite(Y[:, k])
            if ok.sum() < 3 or np.ptp(X[ok, j]) == 0 or np.ptp(Y[ok, k]) == 0:
                continue
            r = float(np.corrcoef(X[ok, j], Y[ok, k])[0, 1])
            if abs(r) >= LABEL_COPY_R:
                copies.append(f"{name} (r = {r:+.4f})")
        if copies:
            out.append(f"The label '{label}' is, up to scale, the descriptor {', '.join(copies[:3])} on the training "
                       f"rows: a head that reads the descriptors reads the answer off its inputs, so its scores say "
                       f"little about the tag. To measure the tag itself, train without descriptors "
                       f"(--features none; in the Train form, untick the descriptors).")
    return out


Key = tuple[Any, ...]  # a row's key in the prefix cache: ("t", i) training, ("v", i) validation, ("a", i, j) augmented


@dataclass
class ModelInputs:
    """The model and what it reads. ``spellings[i]``: (key, plan) of every SMILES spelling of training
    row i, the canonical one first. ``extra_*``: (N, E) descriptors, ``None`` when the head reads none;
    ``extra_valid`` covers the selection rows, ``extra_all_valid`` every validation row; ``calib_*``:
    the calibration half's rows (empty without one).

    With ``cfg.spellings`` the validation and calibration lists hold every spelling of each row, row by
    row, the canonical one first (``domains.spelled_rows``); ``valid_groups``/``calib_groups`` map each
    entry to its row (``arange`` without spellings), and predictions average the entries of a row
    (``train_eval.predict_std``). ``extra_valid`` follows the entries."""

    model: TaggedModel
    template: Template
    kinds: dict[str, str]
    domain_vectors: dict[str, torch.Tensor]
    cache: PrefixCache
    train_keys: list[Key]
    train_plans: list[RowPlan]
    valid_keys: list[Key]
    valid_plans: list[RowPlan]
    spellings: list[list[tuple[Key, RowPlan]]]
    augmented: list[dict[str, str]]  # the augmented spellings' rows, in ``spellings`` order
    extra_train: Optional[torch.Tensor]
    extra_valid: Optional[torch.Tensor]
    extra_all_valid: Optional[torch.Tensor]
    calib_keys: list[Key]
    calib_plans: list[RowPlan]
    valid_groups: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    calib_groups: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    valid_rows: list[dict[str, str]] = field(default_factory=list)  # the spelled validation entries, for sharing

    @property
    def n_extra(self) -> int:
        return self.extra_train.shape[1] if self.extra_train is not None else 0


def prepare_inputs(backbone: Backbone, library: Optional[TagLibrary], cfg: FunctionTagConfig,
                   rows: SplitRows) -> ModelInputs:
    """Build the model with the untrained tag and plan every row (and its augmented spellings)."""
    template = Template.parse(cfg.template_text())
    domain_vecs = domain_vectors(library, cfg.slots)
    gen = torch.Generator().manual_seed(cfg.seed)
    init = init_tag_vectors(backbone.embedding_matrix, cfg.n_tokens, generator=gen)
    vectors = {cfg.name: init, **domain_vecs}
    kinds = {s.name: s.kind for s in cfg.slots}
    # With layers="auto" (or "stack") the model first reads every layer: the warm-start pass through the prefix
    # cache gives every layer's features at once, a ridge head per layer scored on validation picks
    # the read-out depth, and the cache then keeps only the states of the layers up to it.
    layers: Optional[tuple[int, ...]]
    if cfg.layers in CHOSEN_LAYERS:
        layers = tuple(range(1, backbone.n_layers + 1))
    else:
        layers = None if isinstance(cfg.layers, str) else tuple(cfg.layers)  # a string here is "final"
    model = TaggedModel(backbone, template, kinds, vectors, trainable=frozenset({cfg.name}),
                        readout=cfg.readout, layers=layers)
    train, valid = rows.train, rows.valid
    train_plans = [model.plan(r) for r in train.inputs]
    # validation rows, each followed by its spellings when the tag reads several (``cfg.spellings``)
    valid_rows, valid_groups = spelled(valid.inputs, kinds, cfg.spellings)
    valid_plans = [model.plan(r) for r in valid_rows]
    extra_train = row_descriptors(cfg, kinds, train.inputs)
    # every validation row's descriptors once; the selection half is a slice of them
    extra_all_valid = row_descriptors(cfg, kinds, rows.full_valid.inputs)
    extra_valid = extra_all_valid
    if extra_all_valid is not None and rows.holdout is not None:
        extra_valid = extra_all_valid[torch.from_numpy(rows.holdout[0])]
    if extra_valid is not None:
        extra_valid = extra_valid[torch.from_numpy(valid_groups)]

    train_keys: list[Key] = [("t", i) for i in range(len(train_plans))]
    valid_keys: list[Key] = [("v", i) for i in range(len(valid_plans))]
    calib_rows, calib_groups = spelled(rows.calib.inputs if rows.calib is not None else [], kinds, cfg.spellings)
    calib_plans = [model.plan(r) for r in calib_rows]
    calib_keys: list[Key] = [("c", i) for i in range(len(calib_plans))]
    spellings: list[list[tuple[Key, RowPlan]]] = [[(k, p)] for k, p in zip(train_keys, train_plans)]
    augmented = []
    for i, row in enumerate(train.inputs):
        for j, variant in enumerate(augmented_rows(row, cfg, i)):
            spellings[i].append((("a", i, j), model.plan(variant)))
            augmented.append(variant)
    cache = PrefixCache(model, int(cfg.cache_budget_gb * (1 << 30)))  # empty until ``share_prefixes``
    return ModelInputs(model, template, kinds, domain_vecs, cache, train_keys, train_plans, valid_keys, valid_plans,
                       spellings, augmented, extra_train, extra_valid, extra_all_valid, calib_keys, calib_plans,
                       valid_groups, calib_groups, valid_rows)


def spelled(inputs: list[dict[str, str]], kinds: dict[str, str], n: int) -> tuple[list[dict[str, str]], np.ndarray]:
    """(every row followed by its up to ``n`` spellings, the (M,) row index of each entry)."""
    entries, owner = spelled_entries(inputs, kinds, n)
    return entries, np.asarray(owner, dtype=np.int64)


def share_prefixes(inputs: ModelInputs, rows: SplitRows) -> None:
    """Declare the prefixes that rows share, so the cache stores each once (their states are computed here)."""
    extra = [kp for sp in inputs.spellings for kp in sp[1:]]
    # Rows share their template opening; in stage 3, rows with the same first input (one protein,
    # many drugs) share everything up to the second input: those states are stored once.
    groups = row_groups(inputs.template, rows.train.inputs + inputs.valid_rows + inputs.augmented)
    inputs.cache.share(inputs.train_keys + inputs.valid_keys + [k for k, _ in extra],
                       inputs.train_plans + inputs.valid_plans + [p for _, p in extra], groups)

"""The warm-start phase of function-tag training: the untrained tag's read-out features of a sample
of training rows, the read-out layer choice on validation (``layers="auto"``), and the head fitted
by ridge on them (``warm_start``), so training starts at the linear probe. The same pass gives the
linear-probe baseline of the card: ridge on the mean-pooled input states of the best layer.

The layer is chosen on a sample of at most ``select_rows`` training rows, because that pass keeps every
layer's features; the head at the chosen layer is then fitted on every training row. Those rows'
prefixes are what the prefix pass computes next anyway, so reading them here costs little more: on
10,000 MOSES molecules the ridge on all rows took QED from a valid RMSE of 0.0708 (2,000 rows) to
0.0648, and the build from 19 to 23 minutes (docs/BENCHMARKS.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch

from . import warm_start as warm_start_lib
from .baselines import mean_pooled, ridge_outputs
from .forest import blend_weights, fit_forest, max_features, min_leaf
from .heads import HeadConfig, TaskHead
from .prefix_cache import suffix_features
from .train_config import CHOSEN_LAYERS, FunctionTagConfig
from .train_eval import evaluate, stopping_metric
from .train_prepare import ModelInputs, PreparedData, Targets
from .train_progress import StageProgress
from .warm_start import (
    LayerChoice,
    LayerStack,
    choose_layer,
    fit_head,
    layer_slice,
    layers_slice,
    stack_layers,
    stacked_head_state,
)

__all__ = ["WARM_BATCH", "WarmStart", "ForestBlend", "warm_rows", "warm_start_steps", "warm_start"]

WARM_BATCH = 16  # rows per batch of the feature pass


def warm_rows(n: int, cap: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``cap`` of ``n`` training rows, drawn at random: the rows of the layer
    choice and the warm start."""
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 7]).choice(n, cap, replace=False))


def warm_start_steps(cfg: FunctionTagConfig, n_rows: int, n_valid: int, n_train: int = 0) -> int:
    """Progress steps of the feature passes: ``n_rows`` sampled training rows, and the ``n_valid``
    validation rows (both halves) to choose the layer and score the probe; then, for the ridge head,
    the other ``n_train - n_rows`` training rows at the chosen layer."""
    rest = math.ceil(max(n_train - n_rows, 0) / WARM_BATCH) if cfg.ridge_warm_start else 0
    return math.ceil((n_rows + (n_valid if cfg.layers in CHOSEN_LAYERS else 0)) / WARM_BATCH) + rest


@dataclass
class WarmStart:
    """What the warm start settled: the head's shape, and the layer choice (``None`` unless
    ``layers="auto"`` or ``"stack"``) with the validation metric that scored it (``larger``: higher is
    better); with ``"stack"``, the layers the head combines and their weights."""

    head_config: HeadConfig
    rows: int  # training rows of the layer choice (and of the probe)
    layer_choice: Optional[LayerChoice] = None
    metric: Optional[str] = None
    larger: bool = False
    probe: Optional[ProbeBaseline] = None
    ridge_rows: int = 0  # training rows the head's ridge fit read (all of them)
    stack: Optional[LayerStack] = None
    forest: Optional[ForestBlend] = None


@dataclass
class ForestBlend:
    """The random forest beside the ridge head (``FunctionTagConfig.forest``): what it reads, its size, and
    the blend's weights per output fitted on the training rows' out-of-sample predictions, with the RMSE
    (standardised labels) of the head's leave-one-out, the forest's out-of-bag and the blend's predictions
    there."""

    trees: int
    nodes: int
    depth: int
    min_leaf: int
    weights: list[list[float]]  # [head, forest] per output
    head_loo_rmse: float
    forest_oob_rmse: float
    blend_rmse: float
    reads: str = "descriptors"  # forest.FOREST_INPUTS: the descriptors, or the tag's read-out features


@dataclass
class ProbeBaseline:
    """The linear probe on the same backbone: ridge on the mean-pooled input states of ``layer`` (the
    best on the selection rows), and its (N_sel + N_calib, K) outputs on the selection rows then the
    calibration rows, in the head's (standardised) space."""

    layer: int
    outputs: np.ndarray


def warm_start(cfg: FunctionTagConfig, inputs: ModelInputs, targets: Targets, valid: PreparedData,
               rows: np.ndarray, report: StageProgress) -> WarmStart:
    """Read the untrained tag's features of training ``rows`` (and, to choose the layer, of the
    validation rows), choose the read-out layer, narrow the model and its cache to it, and give the
    model its head, fitted by ridge (or at zero without ``cfg.ridge_warm_start``)."""
    model, cache, n_extra = inputs.model, inputs.cache, inputs.n_extra
    backbone = model.backbone
    auto = cfg.layers in CHOSEN_LAYERS

    def head_config(feature_dim: int) -> HeadConfig:
        return HeadConfig(cfg.task, targets.n_outputs, feature_dim + n_extra, n_extra, standardize=True)

    # The calibration rows are read too (only for the probe baseline, scored on every validation row like
    # the other baselines); their states stay cached for the final evaluation. With spellings every
    # training row's entries are its spellings (``entries``), and ``groups`` maps each to its row.
    train_keys, train_plans, groups = entries(inputs, rows, cfg.spellings)
    scan_keys = train_keys + (inputs.valid_keys + inputs.calib_keys if auto else [])
    scan_plans = train_plans + (inputs.valid_plans + inputs.calib_plans if auto else [])
    feats = _features(model, cache, scan_keys, scan_plans, report, 0,
                      "warm start: read-out features of the untrained tag")
    n_scanned = math.ceil(len(scan_keys) / WARM_BATCH)
    spelled = cfg.spellings > 0
    extra_rows = inputs.extra_train[groups] if inputs.extra_train is not None and n_extra else None
    choice: Optional[LayerChoice] = None
    metric: Optional[str] = None
    larger = False
    probe: Optional[ProbeBaseline] = None
    stack: Optional[LayerStack] = None
    if auto:
        n_layers = backbone.n_layers
        n_sel = len(inputs.valid_plans)
        n_tr = len(train_keys)
        f_train, f_valid, f_calib = feats[:n_tr], feats[n_tr:n_tr + n_sel], feats[n_tr + n_sel:]
        # the early-stopping metric's fallback order: AUROC is undefined on a fold that lacks a class
        defined = evaluate(cfg.task, np.zeros((len(valid.y), targets.n_outputs), np.float32), valid.y,
                           targets.scaler)[0]
        metric, larger = stopping_metric(cfg.task, {f"valid_{k}": v for k, v in defined.items()})

        def loss(out: np.ndarray, idx: np.ndarray) -> float:
            value = evaluate(cfg.task, out, valid.y[idx], targets.scaler)[0].get(metric)
            return math.inf if value is None or not np.isfinite(value) else (-value if larger else value)

        choice = choose_layer(lambda: TaskHead(head_config(model.feature_dim // n_layers)), f_train,
                              targets.ridge[groups], f_valid, loss, n_layers, cfg.readout, extra_rows,
                              inputs.extra_valid, tolerance=cfg.layer_tolerance, seed=cfg.seed,
                              loo=cfg.layers == "stack", train_groups=groups if spelled else None,
                              valid_groups=inputs.valid_groups if spelled else None)
        if cfg.baselines and cfg.readout == "last+mean":
            # the probe reads the canonical SMILES alone: each row's first entry (every layer's features are
            # large: copied only when there are spellings to leave out)
            canon = (lambda f, g: f[first_entries(g)]) if spelled else (lambda f, g: f)  # noqa: E731
            p_valid = canon(f_valid, inputs.valid_groups)
            probe = _probe(cfg, targets, rows, canon(f_train, groups),
                           torch.cat([p_valid, canon(f_calib, inputs.calib_groups)]), len(p_valid), n_layers, loss)
        if cfg.layers == "stack":  # weights from the layer choice's rows (every row up to select_rows)
            stack = stack_layers(choice.loo, targets.ridge[groups], choice.layer)
        kept = stack.layers if stack else (choice.layer,)
        feats = layers_slice(f_train, n_layers, kept, cfg.readout)
        cache.narrow([layer - 1 for layer in kept], max(kept), backbone.hidden_size)
        model.layers = kept
        del f_train, f_valid, f_calib  # every layer's features: free them before the ridge fit
    result = WarmStart(head_config(model.feature_dim), len(rows), choice, metric, larger, probe, stack=stack)
    model.head = TaskHead(result.head_config)
    if cfg.ridge_warm_start:
        feats, groups = _every_row(inputs, rows, feats, groups, cfg.spellings, report, n_scanned)
        extra = inputs.extra_train[groups] if inputs.extra_train is not None and extra_rows is not None else None
        fit_groups = groups if spelled else None
        if stack is None and cfg.blends_forest:
            result.forest = _blend_forest(model, feats, targets.ridge[groups], extra, cfg.forest_input, cfg.seed,
                                          fit_groups)
            result.head_config = model.head.config
        elif stack is None:
            fit_head(model.head, feats, targets.ridge[groups], extra, fit_groups)
        else:  # each kept layer's ridge head on every training row, combined with the stack's weights
            k, heads = len(stack.layers), []
            for j in range(k):
                heads.append(TaskHead(head_config(model.feature_dim // k)))
                fit_head(heads[-1], layer_slice(feats, k, j + 1, cfg.readout), targets.ridge[groups], extra,
                         fit_groups)
            model.head.load_state({**model.head.state(), **stacked_head_state(heads, stack.weights, cfg.readout)})
        result.ridge_rows = len(np.unique(groups))
    else:  # the head starts at zero (the training mean), standardising with the training rows' statistics
        model.head.fit_scaling(feats if extra_rows is None else torch.cat([feats, extra_rows], 1))
        with torch.no_grad():
            model.head.linear.weight.zero_()
            model.head.linear.bias.zero_()
    model.head.to(backbone.device)
    return result


def _blend_forest(model, feats: torch.Tensor, y: torch.Tensor, extra: Optional[torch.Tensor], reads: str,
                  seed: int, groups: Optional[np.ndarray] = None) -> ForestBlend:
    """Fit the ridge head (keeping its leave-one-out predictions) and a forest for the (N, K) standardised
    labels ``y`` on the (N, E) descriptors ``extra`` or the (N, F) read-out features ``feats`` (``reads``),
    and give the model a head that blends the two.

    With SMILES spellings, ``groups`` gives each entry's molecule: the head's out-of-sample predictions
    are then out of fold by molecule (``fit_head_loo``) and averaged over each molecule's spellings, as
    every prediction is. The forest is grown on each molecule's first entry (its canonical SMILES) alone,
    because a bootstrap that draws one spelling of a molecule would leave its twins out of bag and make
    the out-of-bag predictions, and so the blend's weights, flatter the forest. At prediction the forest
    reads every spelling like the linear part, and the head's outputs are averaged."""
    loo = warm_start_lib.fit_head_loo(model.head, feats, y, extra, groups)
    x = feats if reads == "readout" else extra
    assert x is not None  # a forest on descriptors comes with them (``FunctionTagConfig.forest_input``)
    if groups is not None:  # one row per molecule, in the order of ``np.unique(groups)``
        _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
        loo = warm_start_lib.group_mean(loo, inverse)
        x, y = x[torch.from_numpy(first)], y[torch.from_numpy(first)]
    fit = fit_forest(x.float().numpy(), y.numpy(), seed, features=max_features(reads))
    weights = blend_weights(loo, fit.oob, y.numpy())
    config = replace(model.head.config, forest_trees=fit.n_trees, forest_nodes=fit.n_nodes, forest_depth=fit.depth,
                     forest_input=reads)
    head = TaskHead(config)
    head.load_state({**model.head.state(), **fit.state, "blend": torch.tensor(weights, dtype=torch.float32)})
    model.head = head
    target = y.numpy().astype(np.float64)
    ok = np.isfinite(fit.oob).all(1)
    rmse = lambda p: float(np.sqrt(np.mean((p[ok] - target[ok]) ** 2)))  # noqa: E731
    return ForestBlend(fit.n_trees, fit.n_nodes, fit.depth, min_leaf(len(target)),
                       [[round(float(w), 4) for w in row] for row in weights.T], rmse(loo), rmse(fit.oob),
                       rmse(weights[0] * loo + weights[1] * fit.oob), reads)


def _features(model, cache, keys: list, plans: list, report: StageProgress, step: int, message: str) -> torch.Tensor:
    """(N, F) read-out features (no gradients) of the rows ``keys``/``plans``, in batches of
    ``WARM_BATCH``, reporting progress from step ``step + 1`` on."""
    batches = []
    with torch.no_grad():
        for k, s in enumerate(range(0, len(keys), WARM_BATCH)):
            states = cache.get(keys[s:s + WARM_BATCH], plans[s:s + WARM_BATCH])
            batches.append(suffix_features(model, states).cpu())
            report(step + k + 1, message=message, examples=s + len(states))
    return torch.cat(batches)


def entries(inputs: ModelInputs, rows: np.ndarray, spellings: int) -> tuple[list, list, np.ndarray]:
    """(keys, plans, (M,) training row of each) of the training ``rows``' entries: each row alone, or with
    ``spellings`` it followed by up to that many of its spellings (``ModelInputs.spellings``)."""
    keys, plans, groups = [], [], []
    for i in rows:
        for key, plan in inputs.spellings[i][:1 + spellings]:
            keys.append(key)
            plans.append(plan)
            groups.append(int(i))
    return keys, plans, np.asarray(groups, dtype=np.int64)


def first_entries(groups: np.ndarray) -> torch.Tensor:
    """Indices of each group's first entry (the canonical spelling) in row-major ``groups``."""
    keep = np.ones(len(groups), dtype=bool)
    keep[1:] = groups[1:] != groups[:-1]
    return torch.from_numpy(np.flatnonzero(keep))


def _every_row(inputs: ModelInputs, rows: np.ndarray, feats: torch.Tensor, groups: np.ndarray, spellings: int,
               report: StageProgress, step: int) -> tuple[torch.Tensor, np.ndarray]:
    """(features, (M,) training row of each) of every training row's entries at the chosen layer:
    ``feats`` (those of the sample ``rows``, in ``groups``) completed by a pass over the other rows."""
    n = len(inputs.train_plans)
    rest = np.setdiff1d(np.arange(n), rows)
    if not len(rest):  # the sample is every row (``warm_rows``: sorted, without repeats)
        return feats, groups
    keys, plans, rest_groups = entries(inputs, rest, spellings)
    more = _features(inputs.model, inputs.cache, keys, plans, report, step,
                     "warm start: features of the other training rows for the ridge head")
    return torch.cat([feats, more]), np.concatenate([groups, rest_groups])


def _probe(cfg: FunctionTagConfig, targets: Targets, rows: np.ndarray, f_train: torch.Tensor, f_valid: torch.Tensor,
           n_sel: int, n_layers: int, loss) -> ProbeBaseline:
    """The probe's layer, chosen on the first ``n_sel`` of the (N, 2 * L * W) validation features as
    the tag's own layer is (same rows, same loss), and its outputs on all of them."""
    m_train, m_valid = mean_pooled(f_train, n_layers), mean_pooled(f_valid, n_layers)
    width = m_train.shape[1] // n_layers
    # warm_start.choose_layer by its module: the tag's own choice (``choose_layer`` here) stays one call
    choice = warm_start_lib.choose_layer(
        lambda: TaskHead(HeadConfig(cfg.task, targets.n_outputs, width, 0, standardize=True)),
        m_train, targets.ridge[rows], m_valid[:n_sel], loss, n_layers, "last")
    at = lambda x: layer_slice(x, n_layers, choice.layer, "last").numpy()  # noqa: E731
    return ProbeBaseline(choice.layer, ridge_outputs(cfg.task, targets.n_outputs, at(m_train), targets.ridge[rows],
                                                     at(m_valid)))

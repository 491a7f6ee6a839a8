"""The ridge warm start of a function tag's head, and the choice of its read-out layer.

Before the tag is trained, its head is fitted in closed form (ridge
regression) on the features of the untrained tag, so training starts from the
linear probe and not from noise. The same fit chooses the read-out depth: one
pass through the whole stack gives every layer's features at once
(``stack.run_stack`` with all layers), a ridge head is fitted on each layer's
training features and scored on the validation rows. The deeper layers then
never run again.

Which layer is kept: the shallowest one whose validation score is within
``tolerance`` standard errors of the best score (Breiman's one-standard-error
rule; 0, the library default, keeps the best score). On a hundred validation
rows neighbouring layers differ by noise, and the shallower layer costs fewer
blocks per prediction; ``bench/layer_rule.py`` measures what the rule does on
held-out rows (docs/BENCHMARKS.md: no worse for linear probes on ESOL, but
0.09 RMSE worse for the bundled ``<Solubility>`` tag, hence not the default). The standard
error is that of the score difference between the layer
and the best one, from a paired bootstrap over the validation rows, so it
works for any metric (RMSE, AUROC).

``layers="stack"`` keeps more than one layer: the ridge heads of every layer up to the chosen depth
are combined with non-negative weights that sum to one, fitted by least squares to the heads'
leave-one-out predictions of the training rows (stacked regression: Wolpert 1992, Breiman 1996).
The validation rows play no part in the weights. Layers of zero weight are dropped, and the combined
head is one linear head over the kept layers' features side by side, so prediction runs it like any
multi-layer read-out (``stacked_head_state``). docs/BENCHMARKS.md: on the pure tag it takes BACE from
0.653 to 0.618 RMSE and ties on ESOL, GB1 and DAVIS; with descriptors it loses on ESOL, hence an option.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .heads import TaskHead

__all__ = ["LayerChoice", "LayerStack", "RIDGE_ALPHAS", "fit_ridge", "ridge_loo", "ridge_grouped", "group_mean",
           "fit_head", "fit_head_loo", "layer_slice",
           "layers_slice", "bootstrap_scores", "one_se_layer", "choose_layer", "stack_layers", "stacked_head_state"]


RIDGE_ALPHAS = tuple(np.logspace(-1, 5, 13))


def fit_ridge(features, targets, alphas: Sequence[float] = RIDGE_ALPHAS) -> tuple[dict, float]:
    """Ridge on (N, F) features for (N, K) or (N,) targets (tensors or arrays), with the penalty among
    ``alphas`` of least efficient leave-one-out error (sklearn's ``RidgeCV``). Returns the head state
    ``{"weight": (K, F), "bias": (K,)}`` (float32) and the penalty (``ridge_loo`` also gives the
    leave-one-out predictions).

    The bias is not penalised (``RidgeCV`` centres features and targets). Its own solution at the
    chosen penalty is the head: solving the system again, as this once did, doubled the cost of the
    warm start's ridge fits (docs/BENCHMARKS.md: about half of a GPU warm start in a profile)."""
    state, alpha, _ = _ridge(features, targets, alphas, loo=False)
    return state, alpha


def ridge_loo(features, targets, alphas: Sequence[float] = RIDGE_ALPHAS) -> tuple[dict, float, np.ndarray]:
    """``fit_ridge``, plus the (N, K) leave-one-out predictions at the chosen penalty: what each row's
    fit predicts for it without that row (exact for ridge, from one factorisation)."""
    state, alpha, loo = _ridge(features, targets, alphas, loo=True)
    assert loo is not None
    return state, alpha, loo


def _ridge(features, targets, alphas: Sequence[float], loo: bool) -> tuple[dict, float, Optional[np.ndarray]]:
    from sklearn.linear_model import RidgeCV

    x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    y = targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
    y = y.reshape(len(y), -1)
    alphas = list(alphas)
    # With a scoring, RidgeCV keeps each row's leave-one-out prediction per penalty (not its squared
    # error), and the mean squared error it then chooses by is the same one as without.
    model = (RidgeCV(alphas=alphas, store_cv_results=True, scoring="neg_mean_squared_error") if loo
             else RidgeCV(alphas=alphas)).fit(x, y)
    weight = np.asarray(model.coef_, dtype=np.float32).reshape(y.shape[1], x.shape[1])
    bias = np.asarray(model.intercept_, dtype=np.float32).reshape(y.shape[1])
    state = {"weight": torch.from_numpy(weight.copy()), "bias": torch.from_numpy(bias.copy())}
    out = model.cv_results_[:, :, alphas.index(model.alpha_)] if loo else None
    return state, float(model.alpha_), out


GROUP_FOLDS = 5


def ridge_grouped(features, targets, groups: np.ndarray, alphas: Sequence[float] = RIDGE_ALPHAS,
                  folds: int = GROUP_FOLDS) -> tuple[dict, float, np.ndarray]:
    """``ridge_loo`` for rows that come in groups (a molecule's spellings): the penalty by ``folds``-fold
    cross-validation that keeps each group in one fold, since leaving out one spelling while its twins
    stay in would reward fitting the molecule. Returns the head state on every row, the penalty, and the
    (N, K) out-of-fold predictions at that penalty. (N, F) features, (N, K) or (N,) targets, (N,) groups.

    Each fold's fit is one eigendecomposition of the smaller of Xᵀ X and X Xᵀ, which gives every penalty at
    once (the bias is not penalised: features and targets are centred)."""
    from sklearn.model_selection import GroupKFold

    x = (features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)).astype(
        np.float64)
    y = (targets.detach().cpu().numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)).astype(
        np.float64).reshape(len(x), -1)
    alphas = list(alphas)
    n_folds = min(folds, len(np.unique(groups)))
    oof = np.zeros((len(alphas),) + y.shape)
    for a_idx, b_idx in GroupKFold(n_folds).split(x, y, groups):
        predict, _ = _ridge_path(x[a_idx], y[a_idx])
        for i, alpha in enumerate(alphas):
            oof[i, b_idx] = predict(x[b_idx], alpha)
    best = int(np.argmin(((oof - y) ** 2).mean(axis=(1, 2))))
    _, coef = _ridge_path(x, y)
    weight, bias = coef(alphas[best])
    state = {"weight": torch.from_numpy(weight.T.astype(np.float32).copy()),
             "bias": torch.from_numpy(bias.astype(np.float32).copy())}
    return state, float(alphas[best]), oof[best]


def _ridge_path(x: np.ndarray, y: np.ndarray):
    """(predict(x_new, alpha) -> (M, K), coef(alpha) -> ((F, K) weight, (K,) bias)) of ridge on centred
    (N, F) ``x`` and (N, K) ``y``, from one eigendecomposition (the primal one when F <= N, else the dual)."""
    mu, ym = x.mean(0), y.mean(0)
    xc, yc = x - mu, y - ym
    if x.shape[1] <= x.shape[0]:
        s2, v = np.linalg.eigh(xc.T @ xc)
        basis, proj = v, v.T @ (xc.T @ yc)  # weight = V diag(1/(s2+a)) Vᵀ Xᵀ y
    else:
        s2, u = np.linalg.eigh(xc @ xc.T)
        basis, proj = xc.T @ u, u.T @ yc  # weight = Xᵀ U diag(1/(s2+a)) Uᵀ y
    s2 = np.clip(s2, 0, None)[:, None]

    def coef(alpha: float) -> tuple[np.ndarray, np.ndarray]:
        weight = basis @ (proj / (s2 + alpha))
        return weight, ym - mu @ weight

    def predict(x_new: np.ndarray, alpha: float) -> np.ndarray:
        weight, bias = coef(alpha)
        return x_new @ weight + bias

    return predict, coef


def group_mean(out: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(G, K) means of the (N, K) rows ``out`` by their (N,) group index (0..G-1, every group present)."""
    if len(groups) == len(out) and np.array_equal(groups, np.arange(len(groups))):
        return out  # one entry per group, in order: nothing to average
    n = int(groups.max()) + 1
    total = np.zeros((n, out.shape[1]), dtype=np.float64)
    np.add.at(total, groups, out)
    return (total / np.bincount(groups, minlength=n)[:, None]).astype(out.dtype)


def fit_head(head: TaskHead, features: torch.Tensor, targets: torch.Tensor,
             extra: Optional[torch.Tensor] = None, groups: Optional[np.ndarray] = None) -> float:
    """Fit ``head`` by ridge on (N, F) features [+ (N, E) descriptors] for (N, K) targets: its
    standardisation first (if it standardises), then the weights. ``groups``: (N,) group of each row
    (a molecule's spellings), for the penalty's cross-validation (``ridge_grouped``); ``None``: one
    row per molecule, leave-one-out. Returns the penalty used."""
    return _fit_head(head, features, targets, extra, loo=False, groups=groups)[0]


def fit_head_loo(head: TaskHead, features: torch.Tensor, targets: torch.Tensor,
                 extra: Optional[torch.Tensor] = None, groups: Optional[np.ndarray] = None) -> np.ndarray:
    """``fit_head``, returning the fit's (N, K) leave-one-out predictions (out of fold by group with
    ``groups``)."""
    out = _fit_head(head, features, targets, extra, loo=True, groups=groups)[1]
    assert out is not None
    return out


def _fit_head(head: TaskHead, features: torch.Tensor, targets: torch.Tensor, extra: Optional[torch.Tensor],
              loo: bool, groups: Optional[np.ndarray] = None) -> tuple[float, Optional[np.ndarray]]:
    """``fit_head``, and with ``loo`` the fit's (N, K) leave-one-out predictions (``ridge_loo``; out of
    fold with ``groups``)."""
    x = features.float() if extra is None else torch.cat([features.float(), extra.float()], dim=-1)
    if head.config.standardize:
        head.fit_scaling(x)
    with torch.no_grad():
        z = head.inputs(features, extra).cpu()
    if groups is not None and len(np.unique(groups)) < len(groups):
        state, alpha, oof = ridge_grouped(z, targets, groups)
        out = oof if loo else None
    else:
        state, alpha, out = ridge_loo(z, targets) if loo else (*fit_ridge(z, targets), None)
    head.load_state({**head.state(), **state})
    return alpha, out


def layer_slice(features: torch.Tensor, n_layers: int, layer: int, readout: str) -> torch.Tensor:
    """(N, F_one) features of one layer (1-based) out of (N, F_all) features read at layers 1..n_layers.

    A read-out over several layers puts their states side by side, so ``last+mean`` features are
    ``[last_1 .. last_n ; mean_1 .. mean_n]``."""
    return layers_slice(features, n_layers, (layer,), readout)


def layers_slice(features: torch.Tensor, n_layers: int, layers: Sequence[int], readout: str) -> torch.Tensor:
    """(N, F_k) features of the 1-based ``layers`` out of (N, F_all) features read at layers 1..n_layers,
    laid out as a read-out over those layers reads them: ``[last_l1 .. last_lk ; mean_l1 .. mean_lk]``."""
    parts = _parts(readout)
    width = features.shape[1] // (parts * n_layers)
    blocks = features.reshape(features.shape[0], parts, n_layers, width)
    return blocks[:, :, [layer - 1 for layer in layers]].reshape(features.shape[0], parts * len(layers) * width)


def _parts(readout: str) -> int:
    return 2 if readout == "last+mean" else 1


def bootstrap_scores(score: Callable[[np.ndarray, np.ndarray], float], outputs: dict, n_rows: int,
                     n_boot: int = 200, seed: int = 0) -> dict:
    """layer -> (n_boot,) scores of that layer's (N, K) validation outputs on bootstrap resamples of
    the N rows; every layer sees the same resamples (paired). ``score(out, rows)``: a loss of the
    outputs of ``rows``; non-finite replicates (e.g. AUROC on a one-class resample) become NaN."""
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, n_rows, n_rows) for _ in range(n_boot)]
    reps = {}
    for layer, out in outputs.items():
        values = np.array([score(out[rows], rows) for rows in draws], dtype=float)
        reps[layer] = np.where(np.isfinite(values), values, np.nan)
    return reps


def one_se_layer(scores: dict, replicates: dict, tolerance: float = 1.0) -> int:
    """The shallowest layer whose score is within ``tolerance`` standard errors of the best one.

    ``scores``: layer -> loss on all validation rows (lower is better); ``replicates``: layer ->
    (B,) paired bootstrap losses (``bootstrap_scores``). The standard error is the spread of the
    paired difference to the best layer."""
    best = min(scores, key=lambda k: (scores[k], k))
    if tolerance <= 0:
        return best
    for layer in sorted(scores):
        diff = replicates[layer] - replicates[best]
        diff = diff[np.isfinite(diff)]
        se = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
        if scores[layer] - scores[best] <= tolerance * se:
            return layer
    return best


@dataclass
class LayerChoice:
    """The chosen read-out layer, the best-scoring one, and each candidate's validation score
    (lower is better); with ``choose_layer(loo=True)``, each candidate head's leave-one-out predictions
    of the training rows, for ``stack_layers``."""

    layer: int
    scores: dict[int, float]  # layer -> score
    best: int = 0
    tolerance: float = 0.0
    loo: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> (N_train, K)


def choose_layer(head_factory: Callable[[], TaskHead], train_features: torch.Tensor, targets: torch.Tensor,
                 valid_features: torch.Tensor, score: Callable[[np.ndarray, np.ndarray], float], n_layers: int,
                 readout: str,
                 train_extra: Optional[torch.Tensor] = None, valid_extra: Optional[torch.Tensor] = None,
                 candidates: Optional[list] = None, tolerance: float = 0.0, seed: int = 0,
                 loo: bool = False, train_groups: Optional[np.ndarray] = None,
                 valid_groups: Optional[np.ndarray] = None) -> LayerChoice:
    """Fit a ridge head on each candidate layer's training features, score it on the validation
    rows, and keep the shallowest layer within ``tolerance`` standard errors of the best
    (``one_se_layer``). ``score(out, rows)``: (len(rows), K) head outputs of validation ``rows`` ->
    a loss. ``loo``: also keep each head's leave-one-out predictions (the same fits). With spellings,
    ``train_groups`` / ``valid_groups`` give each training / validation entry's molecule: the penalty is
    cross-validated by molecule (``fit_head``) and a validation row's output is its entries' mean."""
    scores, outputs, loo_by_layer = {}, {}, {}
    n_valid = valid_features.shape[0] if valid_groups is None else int(valid_groups.max()) + 1
    every = np.arange(n_valid)
    for layer in candidates or range(1, n_layers + 1):
        head = head_factory()
        _, held_out = _fit_head(head, layer_slice(train_features, n_layers, layer, readout), targets, train_extra,
                                loo, train_groups)
        if held_out is not None:
            loo_by_layer[layer] = held_out
        with torch.no_grad():
            outputs[layer] = head(layer_slice(valid_features, n_layers, layer, readout), valid_extra).numpy()
        if valid_groups is not None:
            outputs[layer] = group_mean(outputs[layer], valid_groups)
        scores[layer] = float(score(outputs[layer], every))
    best = min(scores, key=lambda k: (scores[k], k))
    chosen = best
    if tolerance > 0:
        chosen = one_se_layer(scores, bootstrap_scores(score, outputs, len(every), seed=seed), tolerance)
    return LayerChoice(chosen, scores, best, tolerance, loo_by_layer)


@dataclass
class LayerStack:
    """The layers a stacked head reads (ascending) and the weight of each one's ridge head (summing to 1)."""

    layers: tuple[int, ...]
    weights: tuple[float, ...]


def stack_layers(loo: dict[int, np.ndarray], targets: torch.Tensor, depth: int,
                 min_weight: float = 1e-3) -> LayerStack:
    """Weights of the ridge heads of layers 1..``depth``: non-negative least squares of the (N, K)
    ``targets`` on the heads' (N, K) leave-one-out predictions ``loo[layer]`` (``choose_layer(loo=True)``
    fitted those heads), then normalised to sum to one. A layer below ``min_weight`` of the total is
    dropped."""
    from scipy.optimize import nnls

    y = targets.detach().cpu().double().numpy().reshape(len(targets), -1)
    held_out = np.stack([loo[layer].reshape(-1) for layer in range(1, depth + 1)], 1)
    weights, _ = nnls(held_out, y.reshape(-1))
    if not np.isfinite(weights).all() or weights.sum() <= 0:  # nothing predicts: the deepest layer alone
        weights = np.eye(depth)[depth - 1]
    weights = weights / weights.sum()
    kept = [i for i, w in enumerate(weights) if w >= min_weight]
    total = float(weights[kept].sum())
    return LayerStack(tuple(i + 1 for i in kept), tuple(float(weights[i]) / total for i in kept))


def stacked_head_state(heads: Sequence[TaskHead], weights: Sequence[float], readout: str) -> dict:
    """The state of one head over k layers' features side by side (``layers_slice`` layout, descriptors
    last) that outputs ``sum_l weights[l] * heads[l](features of layer l)``: each head's weights scaled by
    its layer's weight and placed in that layer's columns; their descriptor weights and biases summed.
    Exact, because standardisation and clipping act on each column alone. The heads must share their
    descriptors' statistics (fitted on the same rows)."""
    parts = _parts(readout)
    n_extra = heads[0].config.n_extra
    width = (heads[0].config.in_dim - n_extra) // parts

    def columns(vectors: list, extra) -> torch.Tensor:
        blocks = [v[..., p * width:(p + 1) * width] for p in range(parts) for v in vectors]
        return torch.cat(blocks + ([extra] if n_extra else []), dim=-1)

    weight = [w * h.linear.weight.detach() for h, w in zip(heads, weights)]
    extra_w = sum(w[:, parts * width:] for w in weight) if n_extra else None
    state = {"weight": columns(weight, extra_w),
             "bias": sum(w * h.linear.bias.detach() for h, w in zip(heads, weights))}
    if heads[0].config.standardize:
        state["x_mean"] = columns([h.x_mean for h in heads], heads[0].x_mean[parts * width:])
        state["x_std"] = columns([h.x_std for h in heads], heads[0].x_std[parts * width:])
    return state

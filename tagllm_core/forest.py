"""A random forest beside a head, kept as float32 tensors and run in torch, and its blend with the ridge
head (``FunctionTagConfig.forest``).

The head stays the paper's linear read-out of the tag; beside it, a forest (scikit-learn's
``RandomForestRegressor``, fitted once at the warm start) gives a second prediction from the head's
descriptor columns or, for a tag without descriptors (the pure tag), from the tag's read-out features
themselves (``FOREST_INPUTS``), and
the two are averaged with non-negative weights that sum to one, fitted by least squares to the training
labels on the head's leave-one-out and the forest's out-of-bag predictions (stacked regression, as
``warm_start.stack_layers``). The validation rows play no part in the weights. A forest catches what a
linear head on descriptors cannot (thresholds, interactions); docs/BENCHMARKS.md measures the blend.

A tag file holds only float32 tensors (``tag_schema``), so the trees are stored as flat node arrays:
child indices and feature numbers are exact in float32 (nodes are capped far below 2**24), and each
threshold is rounded down to the largest float32 at or below scikit-learn's float64 threshold, which
keeps every decision exactly as scikit-learn makes it on float32 inputs (x <= t64 iff x <= floor32(t64)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

__all__ = ["FOREST_TREES", "FOREST_KEYS", "FOREST_INPUTS", "ForestFit", "fit_forest", "forest_outputs",
           "blend_weights", "min_leaf", "max_features"]

FOREST_TREES = 100
MIN_LEAF = 3  # rows per leaf: 100 trees of leaves of 3 score as 300 fully grown ones (BENCHMARKS) at 1/10 the size
LEAF_ROWS = 2000  # larger training sets get larger leaves, so a forest stays near 250,000 nodes (6 MB)
MAX_NODES = 1 << 23  # float32 holds every integer up to 2**24
# what a forest reads: the head's descriptor columns, or the read-out features (a tag without descriptors)
FOREST_INPUTS = ("descriptors", "readout")
# Columns tried per split. Descriptors: all (scikit-learn's regression default, as measured). Read-out
# features (about 1,152 hidden-state columns): a third, the classic regression forest's share, which fits in
# a third of the time and scored as well offline (docs/BENCHMARKS.md).
READOUT_MAX_FEATURES = 1 / 3
# the head's state entries of a forest: flat node arrays, tree roots, the fill of missing descriptors
FOREST_KEYS = ("forest_left", "forest_right", "forest_feature", "forest_threshold", "forest_value", "forest_roots",
               "forest_fill")


def min_leaf(n_rows: int) -> int:
    return max(MIN_LEAF, -(-n_rows // LEAF_ROWS))


@dataclass
class ForestFit:
    """``state``: the forest as float32 tensors (``FOREST_KEYS``); ``depth``: the deepest leaf's depth
    (the traversal's step count); ``oob``: (N, K) out-of-bag predictions of the training rows."""

    state: dict[str, torch.Tensor]
    depth: int
    oob: np.ndarray

    @property
    def n_trees(self) -> int:
        return len(self.state["forest_roots"])

    @property
    def n_nodes(self) -> int:
        return len(self.state["forest_left"])


def _fill(x: np.ndarray) -> np.ndarray:
    """(E,) per-column medians of the finite values (0 where a column has none)."""
    med = np.nanmedian(np.where(np.isfinite(x), x, np.nan), axis=0) if len(x) else np.zeros(x.shape[1])
    return np.where(np.isfinite(med), med, 0.0).astype(np.float32)


def max_features(reads: str) -> float:
    """The share of columns a split tries for a forest reading ``reads`` (``FOREST_INPUTS``)."""
    return READOUT_MAX_FEATURES if reads == "readout" else 1.0


def fit_forest(x, y, seed: int = 0, n_trees: int = FOREST_TREES, features: float = 1.0) -> ForestFit:
    """A regression forest on (N, E) columns ``x`` (NaN filled with the column medians) for (N, K)
    targets ``y``, each split trying a share ``features`` of the columns."""
    import warnings

    from sklearn.ensemble import RandomForestRegressor

    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float64).reshape(len(x), -1)
    fill = _fill(x)
    x = np.where(np.isfinite(x), x, fill)
    model = RandomForestRegressor(n_estimators=n_trees, min_samples_leaf=min_leaf(len(x)), oob_score=True,
                                  max_features=features, n_jobs=-1, random_state=seed)
    with warnings.catch_warnings():  # a row in every bootstrap has no out-of-bag prediction: handled below
        warnings.simplefilter("ignore", UserWarning)
        model.fit(x, y if y.shape[1] > 1 else y[:, 0])
    oob = np.asarray(model.oob_prediction_, dtype=np.float64).reshape(len(x), -1)
    left, right, feature, threshold, value, roots = [], [], [], [], [], []
    offset, depth = 0, 0
    for est in model.estimators_:
        t = est.tree_
        inner = t.children_left >= 0
        roots.append(offset)
        left.append(np.where(inner, t.children_left + offset, -1))
        right.append(np.where(inner, t.children_right + offset, -1))
        feature.append(np.where(inner, t.feature, -1))
        t64 = t.threshold
        t32 = t64.astype(np.float32)
        t32 = np.where(t32.astype(np.float64) > t64, np.nextafter(t32, np.float32(-np.inf)), t32)
        threshold.append(np.where(inner, t32, 0.0))
        value.append(t.value.reshape(t.node_count, -1))
        offset += t.node_count
        depth = max(depth, int(t.max_depth))
    if offset > MAX_NODES:
        raise ValueError(f"a forest of {offset:,} nodes is too large to store")
    as32 = lambda parts: torch.from_numpy(np.concatenate(parts).astype(np.float32))  # noqa: E731
    state = {"forest_left": as32(left), "forest_right": as32(right), "forest_feature": as32(feature),
             "forest_threshold": as32(threshold), "forest_value": as32(value),
             "forest_roots": torch.tensor(roots, dtype=torch.float32), "forest_fill": torch.from_numpy(fill)}
    return ForestFit(state, depth, oob)


def forest_outputs(state: dict[str, torch.Tensor], depth: int, x: torch.Tensor) -> torch.Tensor:
    """(B, K) mean of the trees' leaf values for (B, E) columns ``x`` (NaN filled as in training).
    Every row walks every tree at once, one level per step, for at most ``depth`` steps."""
    fill = state["forest_fill"]
    x = torch.where(torch.isnan(x), fill.to(x.device), x.float())
    left, right = state["forest_left"].long(), state["forest_right"].long()
    feature, threshold = state["forest_feature"].long(), state["forest_threshold"]
    node = state["forest_roots"].long().expand(len(x), -1)  # (B, T)
    for _ in range(depth):
        child = left[node]
        leaf = child < 0
        if bool(leaf.all()):
            break
        go_left = torch.gather(x, 1, feature[node].clamp(min=0)) <= threshold[node]
        node = torch.where(leaf, node, torch.where(go_left, child, right[node]))
    return state["forest_value"][node].mean(dim=1)


def blend_weights(head_loo: np.ndarray, forest_oob: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(2, K) non-negative weights summing to one per output, [head ; forest], of least squared error of
    the (N, K) targets ``y`` on the head's leave-one-out and the forest's out-of-bag (N, K) predictions.
    Rows the forest never left out (NaN) are skipped; all-zero weights fall back to the head alone."""
    from scipy.optimize import nnls

    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    head_loo = np.asarray(head_loo, dtype=np.float64).reshape(y.shape)
    forest_oob = np.asarray(forest_oob, dtype=np.float64).reshape(y.shape)
    out = np.zeros((2, y.shape[1]))
    for k in range(y.shape[1]):
        ok = np.isfinite(forest_oob[:, k]) & np.isfinite(head_loo[:, k])
        w: Optional[np.ndarray] = None
        if ok.sum() >= 2:
            w = nnls(np.stack([head_loo[ok, k], forest_oob[ok, k]], 1), y[ok, k])[0]
        out[:, k] = w / w.sum() if w is not None and w.sum() > 0 else (1.0, 0.0)
    return out

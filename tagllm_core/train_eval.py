"""Scoring a function tag during training: head outputs on cached rows, their metrics, and the
metric that early stopping (and the read-out layer choice) follows."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from .heads import LabelScaler
from .metrics import PRIMARY_METRIC, STOPPING_METRICS, classification_metrics, regression_metrics
from .model import TaggedModel
from .prefix_cache import PrefixCache, suffix_features
from .templates import RowPlan
from .warm_start import group_mean

__all__ = ["predict_std", "evaluate", "stopping_metric"]


def predict_std(model: TaggedModel, cache: PrefixCache, keys: list, plans: list[RowPlan], batch_size: int,
                extra: Optional[torch.Tensor] = None, groups: Optional[np.ndarray] = None) -> np.ndarray:
    """(N, n_outputs) head outputs on cached prefixes, no gradients. ``extra``: (N, E) descriptors.
    ``groups``: (N,) row index of each entry (a row's spellings, ``ModelInputs.valid_groups``): the
    outputs of a row's entries are averaged, giving (rows, n_outputs)."""
    head = model.head
    assert head is not None  # training gives the model its head before anything is predicted
    outs = []
    with torch.no_grad():
        for s in range(0, len(plans), batch_size):
            states = cache.get(keys[s:s + batch_size], plans[s:s + batch_size])
            ex = extra[s:s + batch_size] if extra is not None else None
            outs.append(head(suffix_features(model, states), ex).float().cpu().numpy())
    out = np.concatenate(outs) if outs else np.zeros((0, head.config.n_outputs), np.float32)
    return out if groups is None else group_mean(out, groups)


def evaluate(task: str, out: np.ndarray, y: np.ndarray, scaler: Optional[LabelScaler],
             labels: Optional[Sequence[str]] = None) -> tuple[dict[str, Any], np.ndarray]:
    """(metrics, predictions) of (N, K) head outputs against labels ``y``: predictions in label units
    (regression) or class probabilities (classification).

    Regression with K > 1 labels: the top-level metrics are the first label's (as for one label), and
    ``by_label`` holds every label's (keyed by ``labels``, else "output 1", ...); ``mean_scaled_rmse``
    averages the labels' RMSEs over their training standard deviations, so that early stopping and the
    layer choice weigh every label alike instead of following the first one."""
    if task == "regression":
        assert scaler is not None  # regression targets are always standardised
        pred = scaler.inverse(out)
        metrics = regression_metrics(y[:, 0], pred[:, 0])
        k = pred.shape[1]
        if k > 1:
            names = list(labels) if labels is not None and len(labels) == k else [f"output {i + 1}" for i in range(k)]
            by_label = {name: regression_metrics(y[:, i], pred[:, i]) for i, name in enumerate(names)}
            metrics["by_label"] = by_label
            scaled = [m["rmse"] / sd for m, sd in zip(by_label.values(), scaler.std)]
            metrics["mean_scaled_rmse"] = float(np.mean(scaled))
        return metrics, pred
    probs = torch.softmax(torch.from_numpy(out), dim=-1).numpy()
    return classification_metrics(y, probs), probs


def stopping_metric(task: str, first: dict[str, Any]) -> tuple[str, bool]:
    """The early-stopping metric: the first of ``STOPPING_METRICS`` that the warm start's validation
    ``first`` (``valid_*`` keys) defines; the preferred one when none is (they may all be NaN there)."""
    for name, larger in STOPPING_METRICS[task]:
        value = first.get(f"valid_{name}")
        if value is not None and np.isfinite(value):
            return name, larger
    return PRIMARY_METRIC[task]

"""Classic baselines fitted beside every function tag, on the same rows.

A tag's card reports its validation metrics next to those of simple models
trained on the same training rows and scored on the same validation rows, so
a scientist can see at a glance whether the tag earns its keep:

* ``mean``: predict the training mean (regression) or the commonest class;
* ``warm_start``: the tag's own ridge head before any tag training (epoch 0);
* ``probe``: the linear probe on the same backbone, ridge on the mean-pooled
  input states of the layer that scores best on validation (``mean_pooled``);
* ``rf_descriptors`` / ``ridge_descriptors``: a random forest and ridge on the
  inputs' descriptors (``descriptors``: RDKit 2D for SMILES,
  composition/ProtParam for proteins).

Random forests use scikit-learn with fixed seeds; missing descriptors are
filled with the training median.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .metrics import classification_metrics, regression_metrics

__all__ = ["rf_descriptors", "mean_baseline", "ridge_outputs", "mean_pooled"]


def _impute(train: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    median = np.nanmedian(np.where(np.isfinite(train), train, np.nan), axis=0)
    median = np.where(np.isfinite(median), median, 0.0)
    fill = lambda x: np.clip(np.where(np.isfinite(x), x, median), -1e9, 1e9)  # noqa: E731
    return fill(train), fill(valid)


def mean_baseline(task: str, y_train: np.ndarray, y_valid: np.ndarray, n_classes: int = 0
                  ) -> tuple[dict, np.ndarray]:
    """(metrics, predictions) of the constant prediction: the training mean, (N,), or the training
    class frequencies, (N, C)."""
    if task == "regression":
        pred = np.full(len(y_valid), y_train[:, 0].mean())
        return regression_metrics(y_valid[:, 0], pred), pred
    freq = np.bincount(y_train, minlength=n_classes) / len(y_train)
    probs = np.tile(freq, (len(y_valid), 1))
    return classification_metrics(y_valid, probs), probs


def rf_descriptors(task: str, x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray,
                   n_classes: int = 0, seed: int = 0) -> Optional[tuple[dict, np.ndarray]]:
    """(validation metrics, predictions) of a 300-tree random forest on (N, E) descriptors: (N,)
    predictions, or (N, C) class probabilities; ``None`` without descriptors."""
    if x_train.shape[1] == 0:
        return None
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    xt, xv = _impute(x_train, x_valid)
    if task == "regression":
        model = RandomForestRegressor(n_estimators=300, n_jobs=-1, random_state=seed).fit(xt, y_train[:, 0])
        pred = model.predict(xv)
        return regression_metrics(y_valid[:, 0], pred), pred
    model = RandomForestClassifier(n_estimators=300, n_jobs=-1, random_state=seed).fit(xt, y_train)
    probs = np.zeros((len(xv), n_classes))
    probs[:, model.classes_] = model.predict_proba(xv)
    return classification_metrics(y_valid, probs), probs


def ridge_outputs(task: str, n_outputs: int, x_train, targets: torch.Tensor, x_eval) -> np.ndarray:
    """(M, K) outputs of a ridge head fitted like the warm start (standardised inputs, penalty by
    leave-one-out) on (N, F) ``x_train`` for (N, K) ``targets``, evaluated on (M, F) ``x_eval``; missing
    values are filled with the training median. Outputs are in the head's space (standardised
    labels, or class scores)."""
    from .heads import HeadConfig, TaskHead
    from .warm_start import fit_head

    xt, xe = _impute(np.asarray(x_train, dtype=np.float64), np.asarray(x_eval, dtype=np.float64))
    head = TaskHead(HeadConfig(task, n_outputs, xt.shape[1], 0, standardize=True))
    fit_head(head, torch.tensor(xt, dtype=torch.float32), targets)
    with torch.no_grad():
        return head(torch.tensor(xe, dtype=torch.float32)).numpy()


def mean_pooled(features: torch.Tensor, n_layers: int) -> torch.Tensor:
    """(N, L * W) mean-pooled input states of every layer out of (N, 2 * L * W) ``last+mean``
    read-out features ``[last_1 .. last_L ; mean_1 .. mean_L]``. The inputs precede the tag, so under
    causal attention their states are exactly those of the prompt without it: the probe's features."""
    return features.reshape(features.shape[0], 2, -1)[:, 1]

"""Classic baselines fitted beside every function tag, on the same rows.

A tag's card reports its validation metrics next to those of simple models
trained on the same training rows and scored on the same validation rows, so
a scientist can see at a glance whether the tag earns its keep:

* ``mean``: predict the training mean (regression) or the commonest class;
* ``warm_start``: the tag's own ridge head before any tag training (epoch 0);
* ``rf_descriptors``: a random forest on the inputs' descriptors
  (``descriptors``: RDKit 2D for SMILES, composition/ProtParam for proteins).

Random forests use scikit-learn with fixed seeds; missing descriptors are
filled with the training median.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .metrics import classification_metrics, regression_metrics

__all__ = ["rf_descriptors", "mean_baseline"]


def _impute(train: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    median = np.nanmedian(np.where(np.isfinite(train), train, np.nan), axis=0)
    median = np.where(np.isfinite(median), median, 0.0)
    fill = lambda x: np.clip(np.where(np.isfinite(x), x, median), -1e9, 1e9)  # noqa: E731
    return fill(train), fill(valid)


def mean_baseline(task: str, y_train: np.ndarray, y_valid: np.ndarray, n_classes: int = 0) -> dict:
    """Metrics of the constant prediction (training mean, or the class frequencies)."""
    if task == "regression":
        return regression_metrics(y_valid[:, 0], np.full(len(y_valid), y_train[:, 0].mean()))
    freq = np.bincount(y_train, minlength=n_classes) / len(y_train)
    return classification_metrics(y_valid, np.tile(freq, (len(y_valid), 1)))


def rf_descriptors(task: str, x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray,
                   n_classes: int = 0, seed: int = 0) -> Optional[dict]:
    """Validation metrics of a 300-tree random forest on (N, E) descriptors; ``None`` without descriptors."""
    if x_train.shape[1] == 0:
        return None
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    xt, xv = _impute(x_train, x_valid)
    if task == "regression":
        model = RandomForestRegressor(n_estimators=300, n_jobs=-1, random_state=seed).fit(xt, y_train[:, 0])
        return regression_metrics(y_valid[:, 0], model.predict(xv))
    model = RandomForestClassifier(n_estimators=300, n_jobs=-1, random_state=seed).fit(xt, y_train)
    probs = np.zeros((len(xv), n_classes))
    probs[:, model.classes_] = model.predict_proba(xv)
    return classification_metrics(y_valid, probs)

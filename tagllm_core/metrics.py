"""Evaluation metrics, from scipy and scikit-learn rather than hand-written maths.

Regression: RMSE, MAE, Pearson r, Spearman rho, R², concordance index (the
DAVIS/KIBA metric). Classification: AUROC, AUPRC, log-loss, accuracy. Each
function returns a plain ``dict[str, float]`` (JSON-ready); a metric that is
undefined for the data (e.g. AUROC with one class present) is left out, not
faked. Predictions that hold NaN or infinity (a diverged model) leave every
metric undefined: the dict then holds only ``n`` and ``n_nonfinite``.

``paired_difference`` compares two models scored on the same rows: the difference of their primary
metric with a paired bootstrap interval, so a card can say whether a tag beats a baseline or the
validation rows cannot tell them apart.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from scipy import stats
from sklearn import metrics as skm

__all__ = ["regression_metrics", "classification_metrics", "concordance_index", "conformal_halfwidth",
           "PRIMARY_METRIC", "STOPPING_METRICS", "PairedDifference", "paired_difference"]

# metric used for early stopping, and whether larger is better
PRIMARY_METRIC = {"regression": ("rmse", False), "classification": ("auroc", True)}
# In order of preference: AUROC is undefined on a validation set that lacks a class, the log-loss
# is not (and still ranks probabilities, unlike accuracy, which is the last resort).
# A regression tag with several labels stops on every label alike: ``mean_scaled_rmse`` (each label's RMSE
# over its training standard deviation, averaged) is defined for those alone (``train_eval.evaluate``).
STOPPING_METRICS = {"regression": [("mean_scaled_rmse", False), ("rmse", False)],
                    "classification": [("auroc", True), ("log_loss", False), ("accuracy", True)]}


def _nonfinite(pred: np.ndarray) -> int:
    """Rows of ``pred`` holding NaN or infinity (sklearn would raise on them)."""
    pred = pred.reshape(len(pred), -1)
    return int((~np.isfinite(pred)).any(axis=1).sum())


def concordance_index(y_true: np.ndarray, y_pred: np.ndarray, max_pairs: int = 2_000_000, seed: int = 0) -> float:
    """Harrell's C: the fraction of comparable pairs (different true values) ranked in the right order,
    ties in the prediction counting one half. Exact up to ``max_pairs`` pairs, sampled beyond."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    n = len(y_true)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i, j = rng.integers(0, n, max_pairs), rng.integers(0, n, max_pairs)
    dt, dp = y_true[i] - y_true[j], y_pred[i] - y_pred[j]
    comparable = dt != 0
    if not comparable.any():
        return float("nan")
    concordant = (np.sign(dt) == np.sign(dp)) & (dp != 0)
    ties = dp == 0
    return float((concordant[comparable].sum() + 0.5 * ties[comparable].sum()) / comparable.sum())


def regression_metrics(y_true, y_pred) -> dict:
    y_true = np.asarray(y_true, float).ravel()
    y_pred = np.asarray(y_pred, float).ravel()
    bad = _nonfinite(y_pred)
    if bad:
        return {"n": int(len(y_true)), "n_nonfinite": bad}
    out = {
        "rmse": float(np.sqrt(skm.mean_squared_error(y_true, y_pred))),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "n": int(len(y_true)),
    }
    # np.ptp, not np.std: the std of identical floats can round to ~1e-17 instead of 0, and a constant
    # head (a collapsed layer, the mean baseline) would then reach scipy's ConstantInputWarning and a NaN.
    if len(y_true) > 2 and np.ptp(y_true) > 0 and np.ptp(y_pred) > 0:
        out["pearson"] = float(stats.pearsonr(y_true, y_pred)[0])
        out["spearman"] = float(stats.spearmanr(y_true, y_pred)[0])
        out["r2"] = float(skm.r2_score(y_true, y_pred))
        out["ci"] = concordance_index(y_true, y_pred)
    return out


def classification_metrics(y_true, probs) -> dict:
    """y_true: (N,) class indices; probs: (N, K) class probabilities."""
    y_true = np.asarray(y_true).astype(int).ravel()
    probs = np.asarray(probs, float)
    bad = _nonfinite(probs)
    if bad:
        return {"n": int(len(y_true)), "n_nonfinite": bad}
    out = {"accuracy": float(skm.accuracy_score(y_true, probs.argmax(1))), "n": int(len(y_true))}
    # Defined whatever classes the rows hold, because every class is named.
    # Renormalised in float64: float32 softmax rows miss 1 by ~1e-7, which sklearn warns about.
    p = np.clip(probs, 1e-15, 1.0)
    out["log_loss"] = float(skm.log_loss(y_true, p / p.sum(1, keepdims=True), labels=list(range(probs.shape[1]))))
    if len(np.unique(y_true)) == 2 and probs.shape[1] == 2:
        out["auroc"] = float(skm.roc_auc_score(y_true, probs[:, 1]))
        out["auprc"] = float(skm.average_precision_score(y_true, probs[:, 1]))
    elif len(np.unique(y_true)) == probs.shape[1] > 2:
        out["auroc"] = float(skm.roc_auc_score(y_true, probs, multi_class="ovr"))
    return out


def conformal_halfwidth(residuals: np.ndarray, level: float = 0.9) -> float:
    """Split-conformal half-width: the ceil((n+1)·level)/n empirical quantile of |residual|.

    With exchangeable data, [prediction ± halfwidth] covers a new label with
    probability at least ``level``.
    """
    r = np.sort(np.abs(np.asarray(residuals, float).ravel()))
    n = len(r)
    if n == 0:
        return float("nan")
    k = int(np.ceil((n + 1) * level))
    return float(r[min(k, n) - 1]) if k <= n else float("inf")


@dataclass(frozen=True)
class PairedDifference:
    """A model's primary metric minus another's on the same rows (``difference``), with a paired
    bootstrap interval [``low``, ``high``] at ``level``. ``larger_is_better`` says which sign favours the
    first model: for RMSE a negative difference, for AUROC a positive one."""

    metric: str
    difference: float
    low: float
    high: float
    larger_is_better: bool
    level: float
    n_boot: int

    @property
    def verdict(self) -> str:
        """"better" or "worse" (the first model against the second) when the interval excludes zero,
        else "tie": the rows cannot tell the two apart."""
        if self.low <= 0 <= self.high:
            return "tie"
        return "better" if (self.low > 0) == self.larger_is_better else "worse"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PairedDifference":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def paired_difference(task: str, y_true, pred_a, pred_b, n_boot: int = 2000, level: float = 0.95,
                      seed: int = 0) -> Optional[PairedDifference]:
    """Model A's primary metric (``PRIMARY_METRIC``: RMSE of the first output, or AUROC) minus model B's,
    both scored on the same rows, with a percentile interval from ``n_boot`` bootstrap resamples of the
    rows. Resampling rows, not models, keeps the pairing: a hard row is hard for both in every resample,
    so the interval is much narrower than the two metrics' own intervals would suggest.

    ``y_true``: (N,) or (N, K) labels (regression; the first column is scored) or (N,) class indices;
    ``pred_a``, ``pred_b``: (N,) / (N, K) predictions in label units, or (N, C) class probabilities.
    ``None`` when the metric is undefined on these rows (non-finite predictions, fewer than 3 rows, one
    class only) or on over half of the resamples."""
    metric, larger = PRIMARY_METRIC[task]
    y = np.asarray(y_true)
    a, b = np.asarray(pred_a, float), np.asarray(pred_b, float)
    n = len(y)
    if n < 3 or len(a) != n or len(b) != n or _nonfinite(a) or _nonfinite(b):
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    if task == "regression":
        y0 = y.reshape(n, -1)[:, 0].astype(float)
        se_a = (a.reshape(n, -1)[:, 0] - y0) ** 2
        se_b = (b.reshape(n, -1)[:, 0] - y0) ** 2
        point = float(np.sqrt(se_a.mean()) - np.sqrt(se_b.mean()))
        diffs = np.sqrt(se_a[idx].mean(1)) - np.sqrt(se_b[idx].mean(1))
    else:
        labels = y.astype(int).ravel()

        def auroc(rows: np.ndarray, probs: np.ndarray) -> float:
            t = labels[rows]
            classes = np.unique(t)
            if probs.shape[1] == 2 and len(classes) == 2:
                return float(skm.roc_auc_score(t, probs[rows, 1]))
            if probs.shape[1] > 2 and len(classes) == probs.shape[1]:
                return float(skm.roc_auc_score(t, probs[rows], multi_class="ovr"))
            return float("nan")

        every = np.arange(n)
        point = auroc(every, a) - auroc(every, b)
        if not np.isfinite(point):
            return None
        diffs = np.array([auroc(r, a) - auroc(r, b) for r in idx])
        diffs = diffs[np.isfinite(diffs)]
        if len(diffs) < n_boot / 2:
            return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return PairedDifference(metric, point, float(low), float(high), larger, level, n_boot)

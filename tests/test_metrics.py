"""Metrics in tagllm_core.metrics: undefined metrics are left out, never raised or faked."""

from __future__ import annotations

import math
import warnings

import numpy as np

from tagllm_core.metrics import classification_metrics, regression_metrics


def test_non_finite_predictions_leave_the_metrics_out_instead_of_raising():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    assert regression_metrics(y, np.array([1.0, np.nan, 3.0, np.inf])) == {"n": 4, "n_nonfinite": 2}
    probs = np.array([[0.2, 0.8], [np.nan, np.nan], [0.6, 0.4]])
    assert classification_metrics(np.array([1, 0, 0]), probs) == {"n": 3, "n_nonfinite": 1}


def test_log_loss_is_defined_when_validation_lacks_a_class():
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6]])
    m = classification_metrics(np.array([0, 0, 0]), probs)
    assert "auroc" not in m  # undefined with one class, left out
    expected = -np.mean(np.log([0.9, 0.7, 0.4]))
    assert math.isclose(m["log_loss"], expected, rel_tol=1e-9)
    assert m["accuracy"] == 2 / 3


def test_constant_predictions_leave_correlations_out_without_a_warning():
    """np.std of 76 copies of 0.1 is ~1e-17, not 0; the correlations must still be left out, and
    scipy must not be reached (it warns ConstantInputWarning and returns NaN)."""
    y = np.linspace(0.0, 3.0, 76)
    constant = np.full(76, 0.1)
    assert np.std(constant) > 0  # the rounding this guards against
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = regression_metrics(y, constant)
        assert set(out) == {"rmse", "mae", "n"}
        assert set(regression_metrics(np.full(76, 2.2), y)) == {"rmse", "mae", "n"}

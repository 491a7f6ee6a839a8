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


# --- paired comparison of two models on the same rows -------------------------------------------------

from tagllm_core.metrics import PairedDifference, paired_difference  # noqa: E402


def test_paired_difference_matches_a_plain_bootstrap_loop():
    rng = np.random.default_rng(1)
    y = rng.normal(size=60)
    a, b = y + rng.normal(scale=0.5, size=60), y + rng.normal(scale=0.7, size=60)
    d = paired_difference("regression", y, a, b, n_boot=500, seed=3)
    rmse = lambda t, p: np.sqrt(np.mean((t - p) ** 2))  # noqa: E731
    assert math.isclose(d.difference, rmse(y, a) - rmse(y, b), rel_tol=1e-12)
    idx = np.random.default_rng(3).integers(0, 60, size=(500, 60))
    diffs = [rmse(y[r], a[r]) - rmse(y[r], b[r]) for r in idx]
    assert np.allclose([d.low, d.high], np.percentile(diffs, [2.5, 97.5]), rtol=1e-12)
    assert d.metric == "rmse" and not d.larger_is_better and d.n_boot == 500 and d.level == 0.95


def test_pairing_separates_models_whose_own_intervals_overlap():
    """Both models miss the hard rows by a lot; A is a little closer on every row. Unpaired, the two
    RMSEs are far inside each other's spread; paired, A is better on every resample."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=80)
    shared = rng.normal(scale=1.0, size=80)
    a, b = y + 0.95 * shared, y + shared
    d = paired_difference("regression", y, a, b)
    assert d.verdict == "better" and d.high < 0
    assert paired_difference("regression", y, b, a).verdict == "worse"
    # the models' own bootstrap RMSE intervals overlap widely
    idx = np.random.default_rng(5).integers(0, 80, size=(1000, 80))
    own = [np.percentile(np.sqrt(((p - y)[idx] ** 2).mean(1)), [2.5, 97.5]) for p in (a, b)]
    assert own[0][1] > own[1][0] + 0.1


def test_identical_models_tie_and_noise_alone_ties():
    rng = np.random.default_rng(2)
    y = rng.normal(size=40)
    a = y + rng.normal(scale=0.5, size=40)
    same = paired_difference("regression", y, a, a)
    assert (same.difference, same.low, same.high, same.verdict) == (0.0, 0.0, 0.0, "tie")
    b = y + rng.normal(scale=0.5, size=40)  # equally good, different errors
    assert paired_difference("regression", y, a, b).verdict == "tie"


def test_paired_difference_reads_the_first_regression_output():
    y = np.column_stack([np.arange(10.0), np.zeros(10)])
    a = np.column_stack([np.arange(10.0), np.full(10, 100.0)])  # perfect on label 1, awful on label 2
    b = np.column_stack([np.arange(10.0) + 1, np.zeros(10)])
    d = paired_difference("regression", y, a, b)
    assert d.difference == -1.0 and d.verdict == "better"


def test_paired_auroc_difference_for_classification():
    rng = np.random.default_rng(4)
    y = np.tile([0, 1], 50)
    good = np.column_stack([1 - y * 0.8 - 0.1, y * 0.8 + 0.1])
    noise = rng.uniform(size=100)
    random = np.column_stack([1 - noise, noise])
    d = paired_difference("classification", y, good, random, n_boot=300)
    assert d.metric == "auroc" and d.larger_is_better and d.verdict == "better" and d.low > 0
    assert math.isclose(d.difference, 1.0 - classification_metrics(y, random)["auroc"], rel_tol=1e-12)
    assert paired_difference("classification", y, random, good, n_boot=300).verdict == "worse"
    y3 = np.tile([0, 1, 2], 20)
    p3 = np.eye(3)[y3] * 0.7 + 0.1
    flat = np.full((60, 3), 1 / 3)
    d3 = paired_difference("classification", y3, p3, flat, n_boot=200)
    assert d3.verdict == "better" and math.isclose(d3.difference, 0.5, rel_tol=1e-12)


def test_paired_difference_is_none_where_the_metric_is_undefined():
    y = np.array([0, 0, 0, 0])
    p = np.full((4, 2), 0.5)
    assert paired_difference("classification", y, p, p) is None  # one class: no AUROC
    yr = np.arange(5.0)
    assert paired_difference("regression", yr, yr, np.array([0, np.nan, 1, 2, 3.0])) is None
    assert paired_difference("regression", yr[:2], yr[:2], yr[:2]) is None  # too few rows
    assert paired_difference("regression", yr, yr, yr[:4]) is None  # not the same rows


def test_paired_difference_round_trips_through_a_dict():
    d = paired_difference("regression", np.arange(6.0), np.arange(6.0) + 0.5, np.arange(6.0) + 1.0, n_boot=50)
    assert PairedDifference.from_dict(d.to_dict()) == d
    assert PairedDifference.from_dict({**d.to_dict(), "extra": 1}) == d

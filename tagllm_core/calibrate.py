"""The final evaluation of a function tag and its interval: the kept state on every validation
row, and split-conformal half-widths from the residuals of the calibration half.

A seeded half of a large enough validation set (``train_prepare.calibration_split``) sets the
half-width and nothing else; calibrated on the rows that chose the epoch and the read-out layer, the
interval (and its coverage) would be optimistic, and below ``CALIBRATION_MIN_ROWS`` rows the card
says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from .metrics import conformal_halfwidth
from .train_config import FunctionTagConfig
from .train_eval import evaluate, predict_std
from .train_fit import VALID_BATCH, FitResult, State
from .train_prepare import CALIBRATION_MIN_ROWS, ModelInputs, SplitRows, Targets

__all__ = ["in_split_order", "conformal_interval", "crossfit_coverage", "FinalEvaluation", "final_evaluation"]


def in_split_order(selection: np.ndarray, calibration: np.ndarray,
                   holdout: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Rows of the two halves back in the validation set's order."""
    merged = np.empty((len(selection) + len(calibration), *selection.shape[1:]), selection.dtype)
    merged[holdout[0]], merged[holdout[1]] = selection, calibration
    return merged


def conformal_interval(resid: np.ndarray, level: float, held_out: bool) -> Optional[dict[str, Any]]:
    """The card's interval from (N, K) calibration residuals: a split-conformal half-width per output;
    ``None`` when there are too few rows for the level (an infinite half-width). ``held_out``: the rows
    chose nothing else; otherwise the interval is optimistic, and the card says so."""
    halves = [float(conformal_halfwidth(resid[:, k], level)) for k in range(resid.shape[1])]
    if not all(np.isfinite(halves)):
        return None
    interval: dict[str, Any] = {
        "level": level, "halfwidth": halves, "crossfit_coverage": crossfit_coverage(resid[:, 0], level),
        "n_calibration": len(resid), "calibration": "held_out" if held_out else "shared"}
    if not held_out:
        interval["note"] = (f"The interval is optimistic: with fewer than {CALIBRATION_MIN_ROWS} validation rows, "
                            f"the {len(resid)} rows that set it also chose the best epoch (and the read-out "
                            f"layer), so its coverage on new data is likely below {level:.0%}.")
    return interval


def crossfit_coverage(resid: np.ndarray, level: float) -> Optional[float]:
    """Coverage measured honestly: calibrate on one half of the validation residuals, test on the other."""
    if len(resid) < 10:
        return None
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(resid))
    a, b = idx[: len(idx) // 2], idx[len(idx) // 2:]
    halves = [(conformal_halfwidth(resid[c], level), t) for c, t in ((a, b), (b, a))]
    if not all(np.isfinite(h) for h, _ in halves):
        return None
    return float(np.mean([np.mean(np.abs(resid[t]) <= h) for h, t in halves]))


@dataclass
class FinalEvaluation:
    """The kept state on every validation row: ``metrics`` and ``pred`` ((N, K) predictions in label
    units, or (N, C) class probabilities); ``held_out``: (metrics, predictions) on the calibration
    half alone, or ``None`` without one; ``interval``: the card's (regression), ``None`` otherwise or
    when too few rows set it; ``warm_metrics`` and ``warm_pred``: the warm start's metrics and
    predictions on every validation row, when a calibration half was held out and training moved on
    from the warm start (``None`` else)."""

    metrics: dict[str, Any]
    pred: np.ndarray
    held_out: Optional[tuple[dict[str, Any], np.ndarray]]
    interval: Optional[dict[str, Any]]
    warm_metrics: Optional[dict[str, Any]]
    warm_pred: Optional[np.ndarray] = None


def final_evaluation(cfg: FunctionTagConfig, rows: SplitRows, inputs: ModelInputs, targets: Targets,
                     fitted: FitResult) -> FinalEvaluation:
    """Load the best state into the model and evaluate it on every validation row (the selection
    half and the calibration half merged back in order); the interval from the calibration half's
    residuals, or from all validation rows (then marked optimistic) without one."""
    model, cache, calib, holdout = inputs.model, inputs.cache, rows.calib, rows.holdout
    tag_param = model.tag(cfg.name)
    calib_keys, calib_plans = inputs.calib_keys, inputs.calib_plans
    extra_calib = None
    if calib is not None and holdout is not None and inputs.extra_all_valid is not None:
        extra_calib = inputs.extra_all_valid[torch.from_numpy(holdout[1])][torch.from_numpy(inputs.calib_groups)]

    def outputs_of(state: State) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """(selection rows' outputs, calibration rows' outputs or None) of a (tag, head) state."""
        with torch.no_grad():
            tag_param.copy_(state[0])
        assert model.head is not None
        model.head.load_state(state[1])
        out = predict_std(model, cache, inputs.valid_keys, inputs.valid_plans, VALID_BATCH, inputs.extra_valid,
                          inputs.valid_groups)
        return out, (predict_std(model, cache, calib_keys, calib_plans, VALID_BATCH, extra_calib, inputs.calib_groups)
                     if calib is not None else None)

    # The warm start as a baseline on every validation row (history[0] holds the selection rows only).
    warm_metrics = warm_pred = None
    if holdout is not None and fitted.warm_state is not None and fitted.best_epoch != 0:
        warm_sel, warm_cal = outputs_of(fitted.warm_state)
        assert warm_cal is not None
        warm_metrics, warm_pred = evaluate(cfg.task, in_split_order(warm_sel, warm_cal, holdout), rows.full_valid.y,
                                           targets.scaler, cfg.labels)
    out, out_calib = outputs_of(fitted.best_state)
    held_out = None
    if calib is not None and holdout is not None and out_calib is not None:
        held_out = evaluate(cfg.task, out_calib, calib.y, targets.scaler, cfg.labels)
        # The validation set is whole again: the card's metrics and baselines cover all its rows.
        out = in_split_order(out, out_calib, holdout)
    valid = rows.full_valid
    metrics, pred = evaluate(cfg.task, out, valid.y, targets.scaler, cfg.labels)
    interval = None
    if cfg.task == "regression":
        resid = calib.y - held_out[1] if calib is not None and held_out is not None else valid.y - pred
        interval = conformal_interval(resid, cfg.interval_level, held_out=calib is not None)
    return FinalEvaluation(metrics, pred, held_out, interval, warm_metrics, warm_pred)

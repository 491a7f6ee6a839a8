"""The card of a trained function tag: its validation metrics, the classic baselines on the same
rows, the applicability domain, the history and how training ran → ``TagCard``."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Optional

import numpy as np
import torch

from .applicability import build_applicability, validation_errors
from .backbone import Backbone
from .baselines import mean_baseline, rf_descriptors, ridge_outputs
from .calibrate import FinalEvaluation, in_split_order
from .descriptors import row_feature_names, row_features
from .metrics import paired_difference
from .standardize import length_ranges
from .tags import TagCard
from .train_config import FunctionTagConfig
from .train_eval import evaluate
from .train_fit import FitResult, TrainingRun
from .train_prepare import ModelInputs, SplitRows, Targets
from .train_warm_start import WarmStart

__all__ = ["baselines", "function_card"]


def _layer_metrics(scores: dict[int, float], larger: bool) -> dict[int, Optional[float]]:
    """Layer-choice losses back in metric units: {layer: metric of its ridge head on validation}."""
    return {int(k): (-v if larger else v) if np.isfinite(v) else None for k, v in scores.items()}


def baselines(cfg: FunctionTagConfig, rows: SplitRows, inputs: ModelInputs, targets: Targets, warm: WarmStart,
              fitted: FitResult, final: FinalEvaluation) -> dict[str, Any]:
    """The models the tag is compared with on every validation row (``baselines``): the training
    mean, the tag's own warm start, the linear probe on the same backbone (``layers="auto"``), and
    ridge and a random forest on descriptors (when they can be computed).

    Each baseline whose predictions are at hand also carries ``versus_tag``: the tag's primary metric
    minus the baseline's on the same rows, with a paired bootstrap 95% interval
    (``metrics.PairedDifference``), so the card can say whether the validation rows tell them apart."""
    train, valid = rows.train, rows.full_valid
    n_classes = len(rows.classes or [])
    out: dict[str, Any] = {}

    def add(key: str, metrics: dict, pred: Optional[np.ndarray]) -> None:
        out[key] = dict(metrics)
        if pred is not None:
            versus = paired_difference(cfg.task, valid.y, final.pred, pred, seed=cfg.seed)
            if versus is not None:
                out[key]["versus_tag"] = versus.to_dict()

    add("mean", *mean_baseline(cfg.task, train.y, valid.y, n_classes))
    if final.warm_metrics is not None:
        add("warm_start", final.warm_metrics, final.warm_pred)
    elif rows.calib is not None and fitted.best_epoch == 0:
        add("warm_start", final.metrics, final.pred)  # the warm start is the kept state
    else:  # no calibration half: history[0] scored every validation row, its predictions were not kept
        add("warm_start", {k[6:]: v for k, v in fitted.history[0].items() if k.startswith("valid_")},
            final.pred if fitted.best_epoch == 0 else None)
    if inputs.n_extra and inputs.extra_train is not None and inputs.extra_all_valid is not None:
        x_tr, x_va = inputs.extra_train.numpy(), inputs.extra_all_valid.numpy()
    else:
        x_tr, x_va = row_features(inputs.kinds, train.inputs), row_features(inputs.kinds, valid.inputs)
    rf = rf_descriptors(cfg.task, x_tr, train.y, x_va, valid.y, n_classes, cfg.seed)
    if rf is not None:
        add("rf_descriptors", *rf)
        add("ridge_descriptors", *evaluate(cfg.task, ridge_outputs(cfg.task, targets.n_outputs, x_tr, targets.ridge,
                                                                   x_va), valid.y, targets.scaler, cfg.labels))
    if warm.probe is not None:
        n_sel = len(rows.valid.inputs)
        sel, cal = warm.probe.outputs[:n_sel], warm.probe.outputs[n_sel:]
        both = in_split_order(sel, cal, rows.holdout) if rows.holdout is not None else sel
        metrics, pred = evaluate(cfg.task, both, valid.y, targets.scaler, cfg.labels)
        add("probe", {**metrics, "layer": warm.probe.layer}, pred)
        if warm.rows < warm.ridge_rows:  # the probe read the layer choice's sample, the head every row
            out["probe"]["rows"] = warm.rows
    return out


def function_card(backbone: Backbone, cfg: FunctionTagConfig, rows: SplitRows, inputs: ModelInputs,
                  targets: Targets, warm: WarmStart, fitted: FitResult, final: FinalEvaluation, run: TrainingRun,
                  data_name: str, t_start: float) -> tuple[TagCard, dict[str, torch.Tensor]]:
    """(card, applicability tensors) of the tag whose kept state the model holds."""
    model, kinds, n_extra = inputs.model, inputs.kinds, inputs.n_extra
    train, valid, calib, scaler = rows.train, rows.full_valid, rows.calib, targets.scaler
    label_sample = (train.y[:, 0] if cfg.task == "regression" else train.y).tolist()[:2000]
    # The applicability domain: the training inputs' fingerprints (packed) and the similarity below which
    # validation error rose, so prediction can flag inputs unlike anything the tag learned from.
    applicability, references = build_applicability(kinds, train.inputs, valid.inputs,
                                                    validation_errors(cfg.task, valid.y, final.pred), cfg.task,
                                                    cfg.seed)
    compared = {}
    if cfg.baselines and run.main:
        run.report(run.report.total, message="classic baselines on the same rows")
        compared = baselines(cfg, rows, inputs, targets, warm, fitted, final)
    choice = warm.layer_choice
    card = TagCard(
        name=cfg.name, kind="function", backbone=backbone.fingerprint.to_dict(), n_tokens=cfg.n_tokens,
        description=cfg.description, template=inputs.template.text, slots=cfg.slots, task=cfg.task,
        labels=list(cfg.labels), classes=rows.classes, label_scaling=scaler.to_dict() if scaler else None,
        readout=cfg.readout, layers=list(model.layers) if model.layers else None,
        # the features the head reads: inputs without descriptors (text) leave a "descriptors" tag without any
        features=cfg.features if n_extra else "none",
        spellings=cfg.spellings, descriptor_names=row_feature_names(kinds) if n_extra else [],
        head=warm.head_config.to_dict(),
        metrics={"valid": final.metrics, **({"held_out": final.held_out[0]} if final.held_out else {}),
                 **({"baselines": compared} if compared else {})},
        interval=final.interval, label_sample=label_sample, applicability=applicability,
        training={
            "stage": 3 if len(cfg.slots) > 1 else 2, "data": data_name, "rows_train": len(train.inputs),
            "rows_valid": len(valid.inputs), "rows_dropped": len(rows.data.dropped),
            # validation rows that chose the epoch (and layer), and those held out from every choice (they
            # set a regression's interval); for a small regression validation set the same rows
            # (interval["calibration"] == "shared"), for a small classification one none
            "selection_rows": len(valid.inputs) - (len(calib.inputs) if calib is not None else 0),
            "calibration_rows": (len(calib.inputs) if calib is not None
                                 else len(valid.inputs) if cfg.task == "regression" else None),
            "split": "given" if rows.split is None else cfg.split,
            "split_method": "given" if rows.split is None else rows.split.method,
            "early_stopping_metric": fitted.stop_metric, "best_epoch": fitted.best_epoch,
            "epochs_run": len(fitted.history) - 1, "seconds": round(time.perf_counter() - t_start, 1),
            "phase_seconds": run.phase_seconds,
            # protein lengths before cropping, so prediction can flag a sequence far outside them
            "input_lengths": length_ranges({slot.name: rows.frame[cfg.columns.get(slot.name, slot.name)]
                                            for slot in cfg.slots if slot.kind == "protein"}),
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("slots", "name", "description")},
            "history": fitted.history,
            "warnings": run.report.warnings,
            # forest=True: the forest's size and its blend with the ridge head (weights per output)
            **({"forest": asdict(warm.forest)} if warm.forest else {}),
            "layer_choice": ({"chosen": choice.layer, "best": choice.best, "tolerance_se": choice.tolerance,
                              "rows": warm.rows, "ridge_rows": warm.ridge_rows,
                              f"valid_{warm.metric}_by_layer": _layer_metrics(choice.scores, warm.larger),
                              # layers="stack": each kept layer's weight in the head
                              **({"stack_weights": {layer: round(w, 4) for layer, w in
                                                    zip(warm.stack.layers, warm.stack.weights)}}
                                 if warm.stack else {})}
                             if choice else None),
        },
    )
    return card, references

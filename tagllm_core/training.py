"""Training tags: stage 1 (domain tags) and stages 2-3 (function tags + head).

Stage 1 learns a domain tag by next-token prediction on in-domain text placed
after the tag (loss on the domain tokens only; ``domain_training``). Stages 2
and 3 learn a function tag and its head on labelled data with the domain tags
frozen: stage 2 with one input slot, stage 3 with two or more across domains.
The loop is the same; only the template differs.

``train_function_tag`` runs the phases in order, each in its own module:
``train_prepare`` (rows → cleaned inputs, the split and its calibration half,
targets, the model and its row plans), ``train_warm_start`` (read-out layer
choice and ridge head), ``train_fit`` (prefix pass, epochs, early stopping,
checkpoints in ``train_checkpoint``), ``calibrate`` (the kept state on every
validation row, the conformal interval) and ``train_card`` (baselines and the
``TagCard``). ``distributed`` holds the multi-process plumbing of both stages.

Function-tag training runs on cached prefixes (``prefix_cache``): the frozen
part of each prompt is computed once, and each step runs only the function
tag's ``p`` tokens with gradients. Gradients equal those of the full pass.

Defaults come from the ablations in docs/BENCHMARKS.md: the head is
warm-started by ridge regression on the initial features (so training starts
at the linear probe, not at noise, ``warm_start``), the read-out depth is
chosen on validation in that warm start and the layers above it never run
(``stack``), the read-out sees the input as well as the tag (``last+mean``),
the best validation epoch is kept, and the tag is pulled towards its initial
value by weight decay. The head may also read classic descriptors of the
inputs (``descriptors``).

Nothing is written to the tag library until training has finished: a job
that dies or is cancelled leaves no tag behind.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import pandas as pd
import torch

from .backbone import Backbone
from .calibrate import final_evaluation
from .distributed import make_accelerator, stop_if_cancelled
from .domain_training import DomainTagConfig, DomainTrainResult, domain_perplexity, train_domain_tag
from .exceptions import TrainingError
from .progress import ProgressCallback
from .reference import attach_reference, reference_problem
from .tags import Tag, TagLibrary
from .train_card import function_card
from .train_checkpoint import Checkpoint, run_identity
from .train_config import FunctionTagConfig, TrainResult, forest_problem, parse_layers
from .train_fit import TrainingRun, fit, prefix_pass, schedule
from .train_prepare import (
    PreparedData,
    encode_targets,
    label_copy_warnings,
    prepare_inputs,
    prepare_rows,
    prepare_supervised,
    share_prefixes,
)
from .train_progress import StageProgress
from .train_warm_start import warm_rows, warm_start

__all__ = [
    "parse_layers",
    "forest_problem",
    "FunctionTagConfig",
    "DomainTagConfig",
    "PreparedData",
    "TrainResult",
    "DomainTrainResult",
    "TrainingError",
    "prepare_supervised",
    "train_function_tag",
    "train_domain_tag",
    "domain_perplexity",
]


def train_function_tag(backbone: Backbone, library: Optional[TagLibrary], cfg: FunctionTagConfig,
                       train_df: pd.DataFrame, valid_df: Optional[pd.DataFrame] = None,
                       progress: Optional[ProgressCallback] = None, save: bool = True,
                       checkpoint_dir: Optional[Path] = None, data_name: str = "") -> TrainResult:
    """Stages 2-3: learn ``<cfg.name>`` and its head. Saves to ``library`` at the end if ``save``."""
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if library is not None and save and library.exists(cfg.name):
        raise TrainingError(f"A tag named <{cfg.name}> already exists; choose another name or delete it.")
    rows = prepare_rows(cfg, train_df, valid_df)
    # Checked before the warm start: a checkpoint of another run is refused at once, not minutes later.
    ckpt = Checkpoint(checkpoint_dir, run_identity(backbone, cfg, {"train": rows.train, "valid": rows.full_valid})) \
        if checkpoint_dir else None
    if ckpt:
        ckpt.verify()
    targets = encode_targets(cfg, rows.train, rows.classes)
    inputs = prepare_inputs(backbone, library, cfg, rows)
    # Under `accelerate launch`, every process holds the model and the cache, takes its share of each
    # batch, and the gradients are summed across processes (distributed.sync_grads); only the main one
    # reports and writes. One process (CPU, one GPU) is the same loop with a world of one.
    accelerator = make_accelerator(backbone)
    warm_idx = warm_rows(len(inputs.train_plans), cfg.select_rows, cfg.seed)  # rows of the layer choice / warm start
    spelled = (sum(len(inputs.spellings[i][:1 + cfg.spellings]) for i in warm_idx),
               sum(len(sp[:1 + cfg.spellings]) for sp in inputs.spellings)) if cfg.spellings else None
    steps = schedule(cfg, len(inputs.train_plans), len(inputs.valid_plans), len(warm_idx), len(inputs.calib_keys),
                     spelled)
    report = StageProgress(progress if accelerator.is_main_process else None,
                           "stage3" if len(cfg.slots) > 1 else "stage2", steps.total,
                           defer_cancel=accelerator.num_processes > 1)
    run = TrainingRun(accelerator, report, steps, ckpt)
    if rows.split and rows.split.warning:
        report.warn(rows.split.warning)
    for warning in rows.warnings:  # what standardisation did to the training SMILES
        report.warn(warning)
    if cfg.task == "regression":
        for warning in label_copy_warnings(inputs.kinds, inputs.extra_train, targets.y, list(cfg.labels)):
            report.warn(warning)

    t_phase = time.perf_counter()
    share_prefixes(inputs, rows)
    warm = warm_start(cfg, inputs, targets, rows.valid, warm_idx, report)
    run.phase_seconds["warm_start"] = round(time.perf_counter() - t_phase, 1)
    t_phase = time.perf_counter()
    prefix_pass(inputs, run)
    run.phase_seconds["prefix_pass"] = round(time.perf_counter() - t_phase, 1)

    fitted = fit(cfg, inputs, targets, rows.valid, rows.classes, run)
    final = final_evaluation(cfg, rows, inputs, targets, fitted)
    card, references = function_card(backbone, cfg, rows, inputs, targets, warm, fitted, final, run, data_name,
                                     t_start)
    stop_if_cancelled(accelerator, report)  # a cancel seen in the last reports: nothing is saved
    best_tag, best_head = fitted.best_state
    tag = Tag(card, best_tag.detach().float().cpu(), {k: v.cpu() for k, v in best_head.items()},
              {k: v.float().cpu() for k, v in inputs.domain_vectors.items()}, references)
    if cfg.reference_rows and reference_problem(card) is None:
        if run.main:  # one process predicts the reference set; the others wait at the cancel check
            t_phase = time.perf_counter()
            report(report.total, message=f"reference percentiles: the tag on {cfg.reference_rows:,} MOSES molecules")
            attach_reference(tag, backbone, rows=cfg.reference_rows)
            card.training["phase_seconds"]["reference"] = round(time.perf_counter() - t_phase, 1)
            card.training["seconds"] = round(time.perf_counter() - t_start, 1)
        # every process: the cancel flag is broadcast from the main one (a collective call)
        stop_if_cancelled(accelerator, report)
    path = library.save(tag) if (save and library is not None and run.main) else None
    if ckpt and run.main:
        ckpt.clear()
    valid_y, pred = rows.full_valid.y, final.pred
    vt = (valid_y[:, 0] if cfg.task == "regression" else valid_y).tolist()
    vp = (pred[:, 0] if cfg.task == "regression" else pred[:, -1]).tolist()
    return TrainResult(tag, final.metrics, fitted.history, vt, vp, rows.data.dropped, path, report.warnings)

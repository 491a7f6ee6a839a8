"""The fitting phase of function-tag training: the prefix pass, then the epoch loop over cached
prefixes with early stopping on validation, the best state kept, a guard against non-finite steps,
and a checkpoint after every epoch.

Each step runs only the function tag's tokens with gradients (``prefix_cache``). Under several
processes each takes an interleaved share of every batch and the gradients are summed
(``distributed``); the main process's validation score decides for all.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from .distributed import from_main, stop_if_cancelled, sync_grads
from .metrics import PRIMARY_METRIC
from .prefix_cache import suffix_features
from .train_checkpoint import Checkpoint
from .train_config import FunctionTagConfig

# The loop validates through these module-level names (tests replace them to fake a NaN prediction,
# or a worse score on one process).
from .train_eval import evaluate as _evaluate, predict_std as _predict_std, stopping_metric
from .train_prepare import ModelInputs, PreparedData, Targets
from .train_progress import StageProgress
from .train_warm_start import warm_start_steps

__all__ = ["PREFIX_BATCH", "VALID_BATCH", "Schedule", "schedule", "TrainingRun", "FitResult", "LossWatch",
           "finite_step", "prefix_pass", "fit"]

PREFIX_BATCH = 32  # rows per batch of the prefix pass
VALID_BATCH = 32  # rows per batch of validation
# A batch loss this many times the run's typical one (and at least 5: five times worse than predicting
# the mean of standardised labels) is a divergence, not a hard batch. Batch losses of the ESOL default run
# stay below 0.8; on GB1 at layer 1 one Adam step of the default tag rate took the loss from 0.41 to
# 58,000 (docs/BENCHMARKS.md, "A guard against a diverging tag").
SPIKE_FACTOR = 20.0
SPIKE_FLOOR = 0.25
# Learning-rate halvings before training gives up and keeps the best state: ten allow a 1,000-fold
# smaller rate, and GB1 at layer 1 needs about 250-fold.
MAX_BACKOFFS = 10

State = tuple[torch.Tensor, dict[str, torch.Tensor]]  # (tag vectors, head state)


@dataclass
class Schedule:
    """Progress steps of a function tag's training: the warm start's feature batches, the prefix
    pass's batches, then ``per_epoch`` training batches an epoch."""

    warm: int
    prefix: int
    per_epoch: int
    epochs: int

    @property
    def before_epochs(self) -> int:
        return self.warm + self.prefix

    @property
    def total(self) -> int:
        return self.before_epochs + self.per_epoch * self.epochs


def schedule(cfg: FunctionTagConfig, n_train: int, n_valid: int, n_warm_rows: int, n_calib: int = 0,
             warm_entries: Optional[tuple[int, int]] = None) -> Schedule:
    """The run's progress steps. ``warm_entries``: (sampled, all) training entries the warm start reads
    when rows come with their spellings (``cfg.spellings``); the row counts otherwise."""
    n_warm, n_all = warm_entries or (n_warm_rows, n_train)
    return Schedule(warm_start_steps(cfg, n_warm, n_valid + n_calib, n_all),
                    math.ceil((n_train + n_valid) / PREFIX_BATCH),
                    math.ceil(n_train / cfg.batch_size), cfg.epochs)


@dataclass
class TrainingRun:
    """The plumbing of one run: its processes, its progress reports, its checkpoint (``None``: none
    kept) and the seconds each phase took (for the card)."""

    accelerator: Any
    report: StageProgress
    schedule: Schedule
    checkpoint: Optional[Checkpoint] = None
    phase_seconds: dict[str, Any] = field(default_factory=lambda: {"epochs": []})

    @property
    def main(self) -> bool:
        return bool(self.accelerator.is_main_process)


@dataclass
class FitResult:
    """The course of training: ``history`` (epoch 0 is the warm start), the best state on validation
    and its epoch, the warm start's state (``None`` after a resume: a checkpoint does not keep it),
    and the early-stopping metric."""

    history: list[dict[str, Any]]
    best_state: State
    best_epoch: int
    warm_state: Optional[State]
    stop_metric: str


class LossWatch:
    """The typical batch loss of a run (the median of the last ``window`` accepted ones, the first of
    them taken at the warm start) and whether a new one has jumped far above it."""

    def __init__(self, factor: float = SPIKE_FACTOR, floor: float = SPIKE_FLOOR, window: int = 50):
        self.factor, self.floor = factor, floor
        self.recent: deque[float] = deque(maxlen=window)

    def typical(self) -> float:
        return float(np.median(self.recent)) if self.recent else math.nan

    def spiked(self, loss: float) -> bool:
        # Judged from the second batch on (the first is the warm start's own loss, the reference), with a
        # floor under the typical loss: after a near-perfect fit (loss ~1e-6) an ordinary batch is no spike.
        return bool(self.recent) and loss > self.factor * max(self.typical(), self.floor)

    def add(self, loss: float) -> None:
        self.recent.append(loss)


def finite_step(loss: float, params: list[torch.Tensor]) -> bool:
    """Whether a training step may be applied: a finite loss and finite gradients. One NaN
    applied by the optimizer would spread to every weight it touches."""
    if not math.isfinite(loss):
        return False
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


def _better(a: float, b: Optional[float], larger: bool) -> bool:
    return b is None or (a > b if larger else a < b)


def prefix_pass(inputs: ModelInputs, run: TrainingRun) -> None:
    """The frozen part of every training and validation prompt, once (rows the warm start ran are
    already in the cache)."""
    cached_keys, cached_plans = inputs.train_keys + inputs.valid_keys, inputs.train_plans + inputs.valid_plans
    n_cached = len(cached_plans)
    with torch.no_grad():
        for k, s in enumerate(range(0, n_cached, PREFIX_BATCH)):
            inputs.cache.get(cached_keys[s:s + PREFIX_BATCH], cached_plans[s:s + PREFIX_BATCH])
            run.report(run.schedule.warm + k + 1, message="prefix pass: the frozen part of every prompt, once",
                       examples=min(s + PREFIX_BATCH, n_cached))


def fit(cfg: FunctionTagConfig, inputs: ModelInputs, targets: Targets, valid: PreparedData, classes: list[str],
        run: TrainingRun) -> FitResult:
    """Train the tag and head from the warm start (or resume from ``run.checkpoint``), epoch by epoch,
    until ``cfg.epochs``, ``cfg.patience`` epochs without a better validation score, or a non-finite
    step. ``valid``: the rows that choose the epoch. The model is left at its last state."""
    model, cache, accelerator, report, ckpt = inputs.model, inputs.cache, run.accelerator, run.report, run.checkpoint
    steps = run.schedule
    world, rank, main = accelerator.num_processes, accelerator.process_index, run.main
    n_extra, extra_train, y_train, spellings = inputs.n_extra, inputs.extra_train, targets.y, inputs.spellings
    head = model.head
    assert head is not None  # the warm start's
    tag_param = model.tag(cfg.name)
    optimizer = torch.optim.Adam([
        {"params": [tag_param], "lr": cfg.tag_lr},
        {"params": head.parameters(), "lr": cfg.head_lr},
    ])
    optimizer = accelerator.prepare(optimizer)
    anchor = tag_param.detach().clone()

    def snapshot() -> State:
        return tag_param.detach().clone(), head.state()

    def back_off(state: State) -> None:
        """Return to ``state`` with half the learning rates and fresh moments. Adam's first steps move
        every tag element by about the learning rate whatever the curvature; where the read-out varies
        little across rows (a shallow layer) such a step leaves the manifold the head was fitted on. Repeated
        jumps halve the rate again, so this is a backtracking search for a rate the run can take."""
        with torch.no_grad():
            tag_param.copy_(state[0])
        head.load_state(state[1])
        getattr(optimizer, "optimizer", optimizer).state.clear()
        for group in optimizer.param_groups:
            group["lr"] /= 2

    def validate() -> tuple[dict[str, Any], np.ndarray]:
        out = _predict_std(model, cache, inputs.valid_keys, inputs.valid_plans, VALID_BATCH, inputs.extra_valid,
                           inputs.valid_groups)
        return _evaluate(cfg.task, out, valid.y, targets.scaler, cfg.labels)

    def check_outputs(metrics: dict[str, Any], when: str) -> None:
        if metrics.get("n_nonfinite"):
            report.warn(f"{when}: {metrics['n_nonfinite']} of {metrics['n']} validation predictions were NaN or "
                        f"infinite; it counts as a bad epoch.")

    history: list[dict[str, Any]] = []
    start_epoch, best, best_epoch, bad_epochs = 0, None, 0, 0
    best_state: Optional[State] = None
    warm_state: Optional[State] = None  # the warm start's tag and head (not kept in a checkpoint)
    if ckpt and ckpt.exists():
        start_epoch, history, best, best_epoch, bad_epochs, best_state = ckpt.load(tag_param, head, optimizer)
    else:
        metrics0, _ = validate()
        history.append({"epoch": 0, "train_loss": None, **{f"valid_{k}": v for k, v in metrics0.items()}})
        best_state = warm_state = snapshot()
        report(steps.before_epochs, metrics={f"valid_{k}": v for k, v in metrics0.items()}, epoch=0.0,
               message="validation of the warm start")
        check_outputs(metrics0, "The warm start")
    # Chosen from the warm start's validation (also after a resume), so every epoch is judged alike.
    stop_metric, stop_larger = stopping_metric(cfg.task, history[0])
    if cfg.task == "classification" and stop_metric != PRIMARY_METRIC[cfg.task][0]:
        present = sorted({classes[int(i)] for i in np.unique(valid.y)}) if classes else []
        report.warn(f"AUROC is undefined on this validation set (it holds only the class(es) {present}), so early "
                    f"stopping uses the {'log-loss' if stop_metric == 'log_loss' else stop_metric} instead. "
                    f"A validation set with every class gives a better choice of epoch.")
    if start_epoch == 0:
        best = history[0].get(f"valid_{stop_metric}")
    stopped = False
    watch, backoffs = LossWatch(), 0

    for epoch in range(start_epoch, cfg.epochs):
        t_phase = time.perf_counter()
        # Seeded per epoch, so a resumed run shuffles exactly as an uninterrupted one.
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(inputs.train_plans))
        pick = np.random.default_rng([cfg.seed, epoch, 1])
        model.train()
        losses = []
        for b, s in enumerate(range(0, len(order), cfg.batch_size)):
            idx = order[s:s + cfg.batch_size]
            chosen = [spellings[i][pick.integers(len(spellings[i]))] for i in idx]
            mine = list(range(rank, len(idx), world))
            if mine:
                states = cache.get([chosen[j][0] for j in mine], [chosen[j][1] for j in mine])
                rows_extra = extra_train[idx[mine]] if extra_train is not None and n_extra else None
                out = head(suffix_features(model, states), rows_extra)
                # the batch mean, split into per-process parts that sum to it
                loss = head.loss(out, y_train[idx[mine]].to(out.device)) * (len(mine) / len(idx))
            else:
                loss = tag_param.sum() * 0.0
            total = loss
            if main:
                total = total + cfg.anchor_decay * (tag_param - anchor).pow(2).sum() / tag_param.shape[0]
            optimizer.zero_grad()
            accelerator.backward(total)
            batch_loss = sync_grads(accelerator, [tag_param, *head.parameters()], loss)
            # batch_loss and the gradients are summed over processes: every rank stops at the same step.
            if not finite_step(batch_loss, [tag_param, *head.parameters()]):
                stopped = True
                report.warn(f"Training stopped at epoch {epoch + 1}, batch {b + 1}: the loss or its gradient "
                            f"became non-finite (NaN or infinity). The best state on validation so far was kept "
                            f"(epoch {best_epoch}; 0 is the warm start); a lower learning rate may let training "
                            f"go further.")
                break
            if watch.spiked(batch_loss):
                backoffs += 1
                jump = (f"The training loss jumped at epoch {epoch + 1}, batch {b + 1}: {batch_loss:.3g} against a "
                        f"typical {watch.typical():.3g}.")
                if backoffs > MAX_BACKOFFS:
                    stopped = True
                    report.warn(f"{jump} After {MAX_BACKOFFS} halvings of the learning rates training stopped; the "
                                f"best state on validation (epoch {best_epoch}; 0 is the warm start) was kept.")
                    break
                assert best_state is not None
                back_off(best_state)
                report.warn(f"{jump} Training went back to the best state on validation (epoch {best_epoch}; 0 is "
                            f"the warm start) and halved its learning rates (tag: "
                            f"{optimizer.param_groups[0]['lr']:.2g}).")
                continue
            optimizer.step()
            watch.add(batch_loss)
            losses.append(batch_loss)
            step = steps.before_epochs + epoch * steps.per_epoch + b + 1
            report(step, loss=batch_loss, epoch=epoch + (b + 1) / steps.per_epoch, examples=(b + 1) * cfg.batch_size)
            stop_if_cancelled(accelerator, report)
        model.eval()
        if stopped:
            break
        metrics, _ = validate()
        check_outputs(metrics, f"Validation after epoch {epoch + 1}")
        run.phase_seconds["epochs"].append(round(time.perf_counter() - t_phase, 1))
        # no loss when the epoch's only batches were rejected as jumps
        entry = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else None,
                 **{f"valid_{k}": v for k, v in metrics.items()}}
        history.append(entry)
        # The main process's score decides for every process (each validates on its own, and its data or
        # its rounding may differ), so all keep the same best state and stop at the same epoch.
        value: Optional[float] = from_main(
            accelerator, [math.nan if metrics.get(stop_metric) is None else metrics[stop_metric]])[0]
        value = None if value is None or math.isnan(value) else value
        if value is not None and _better(value, best, stop_larger):
            best, best_state, best_epoch, bad_epochs = value, snapshot(), epoch + 1, 0
        else:
            bad_epochs += 1
        report(steps.before_epochs + (epoch + 1) * steps.per_epoch, loss=entry["train_loss"],
               metrics={k: v for k, v in entry.items() if k.startswith("valid_")}, epoch=float(epoch + 1))
        stop_if_cancelled(accelerator, report)
        if ckpt and main:
            ckpt.save(epoch + 1, history, best, best_epoch, bad_epochs, best_state, tag_param, head, optimizer)
        if bad_epochs >= cfg.patience:
            break
    assert best_state is not None  # the warm start's, or a checkpoint's
    return FitResult(history, best_state, best_epoch, warm_state, stop_metric)

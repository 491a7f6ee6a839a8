"""The baselines on a function tag's card: the linear probe read from the warm-start pass, and ridge
on descriptors, scored on the same validation rows as the tag."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tagllm_core.baselines import mean_pooled, ridge_outputs
from tagllm_core.metrics import PairedDifference
from tagllm_core.tags import SlotSpec
from tagllm_core.training import FunctionTagConfig, train_function_tag

from conftest import make_tiny_backbone  # noqa: E402

SMILES = ["CCO", "CCCO", "CCCCO", "c1ccccc1", "c1ccccc1O", "CC(=O)O", "CCN", "CCCN", "CCCCN", "CC(C)O",
          "OCCO", "CCOC", "CCCl", "CCBr", "c1ccncc1", "C1CCCCC1"]


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    smi = [SMILES[i % len(SMILES)] for i in range(n)]
    return pd.DataFrame({"smiles": smi, "y": [str(len(s) + 0.3 * rng.normal()) for s in smi]})


def _train(seed: int, valid_rows: int, task: str = "regression"):
    train, valid = _frame(48, 0), _frame(valid_rows, 1)
    if task == "classification":
        train, valid = (d.assign(y=[str(int(float(v) > 5)) for v in d.y]) for d in (train, valid))
    cfg = FunctionTagConfig(name="T", slots=[SlotSpec("smiles", "smiles", None)], labels=["y"], epochs=1,
                            task=task, seed=seed)
    return train_function_tag(make_tiny_backbone("llama"), None, cfg, train, valid, save=False)


def test_mean_pooled_takes_the_mean_half_of_every_layer():
    # [last_1 last_2 ; mean_1 mean_2] with width 3: the mean blocks, side by side
    feats = torch.arange(2 * 12, dtype=torch.float32).reshape(2, 12)
    assert mean_pooled(feats, 2).tolist() == [[6, 7, 8, 9, 10, 11], [18, 19, 20, 21, 22, 23]]


def test_ridge_outputs_recover_a_linear_rule_and_fill_missing_values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = torch.tensor(x @ np.array([1.0, -2.0, 0.5, 0.0, 0.0]), dtype=torch.float32)[:, None]
    x_eval = x[:20].copy()
    x_eval[0, 3] = np.nan  # an unused column, missing: filled with the median, the prediction stands
    out = ridge_outputs("regression", 1, x, y, x_eval)
    assert out.shape == (20, 1)
    assert np.allclose(out[:, 0], y[:20, 0].numpy(), atol=0.05)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_card_carries_the_probe_and_descriptor_baselines_on_every_validation_row(task):
    res = _train(0, 44, task)  # 44 validation rows: split into selection and calibration halves for regression
    base = res.tag.card.metrics["baselines"]
    assert {"mean", "warm_start", "probe", "rf_descriptors", "ridge_descriptors"} <= set(base)
    n_layers = make_tiny_backbone("llama").n_layers
    assert 1 <= base["probe"]["layer"] <= n_layers
    for key in ("probe", "ridge_descriptors", "rf_descriptors"):
        assert base[key]["n"] == 44
    if task == "regression":
        assert res.tag.card.training["calibration_rows"] > 0
        assert np.isfinite(base["probe"]["rmse"]) and base["probe"]["rmse"] < base["mean"]["rmse"]
    # every baseline says how the tag compares on the same rows: the metric's difference, inside its
    # paired bootstrap interval
    metric = "rmse" if task == "regression" else "auroc"
    tag_metric = res.tag.card.metrics["valid"][metric]
    for key in ("mean", "warm_start", "probe", "rf_descriptors", "ridge_descriptors"):
        versus = PairedDifference.from_dict(base[key]["versus_tag"])
        assert versus.metric == metric and versus.larger_is_better == (task == "classification")
        assert versus.difference == pytest.approx(tag_metric - base[key][metric], abs=1e-9)
        assert versus.low <= versus.difference <= versus.high
    if res.tag.card.training["best_epoch"] == 0:  # the kept state is the warm start: nothing between them
        assert base["warm_start"]["versus_tag"]["difference"] == 0.0


def test_probe_reads_no_tag():
    # The tag follows the input, so under causal attention the mean-pooled input states do not
    # depend on it: another seed (another initial tag) changes the warm start, never the probe.
    a, b = _train(0, 30), _train(1, 30)
    pa, pb = a.tag.card.metrics["baselines"]["probe"], b.tag.card.metrics["baselines"]["probe"]
    assert pa["layer"] == pb["layer"]
    assert pa["rmse"] == pytest.approx(pb["rmse"], rel=1e-5)
    wa, wb = (r.tag.card.metrics["baselines"]["warm_start"]["rmse"] for r in (a, b))
    assert wa != pytest.approx(wb, rel=1e-5)


def test_no_probe_without_the_layer_choice():
    train, valid = _frame(48, 0), _frame(20, 1)
    cfg = FunctionTagConfig(name="T", slots=[SlotSpec("smiles", "smiles", None)], labels=["y"], epochs=1,
                            layers="final")
    res = train_function_tag(make_tiny_backbone("llama"), None, cfg, train, valid, save=False)
    assert "probe" not in res.tag.card.metrics["baselines"]


def test_training_attaches_the_reference_distribution_when_asked():
    train, valid = _frame(48, 0), _frame(20, 1)
    slots = [SlotSpec("smiles", "smiles", None)]
    cfg = FunctionTagConfig(name="T", slots=slots, labels=["y"], epochs=1, reference_rows=12)
    res = train_function_tag(make_tiny_backbone("llama"), None, cfg, train, valid, save=False)
    assert tuple(res.tag.reference_predictions.shape) == (12, 1)
    assert torch.isfinite(res.tag.reference_predictions).all()
    assert res.tag.card.reference_set["n"] == 12
    assert res.tag.card.training["phase_seconds"]["reference"] >= 0
    none = train_function_tag(make_tiny_backbone("llama"), None, FunctionTagConfig(
        name="T", slots=slots, labels=["y"], epochs=1), train, valid, save=False)
    assert none.tag.reference_predictions is None and "reference" not in none.tag.card.training["phase_seconds"]


@pytest.mark.parametrize("rows", [-1, 1.5, "500"])
def test_reference_rows_must_be_a_whole_number(rows):
    with pytest.raises(Exception, match="Reference rows"):
        FunctionTagConfig(name="T", slots=[SlotSpec("smiles", "smiles", None)], labels=["y"], reference_rows=rows)


def test_a_trained_tag_is_compared_with_its_own_warm_start_on_every_validation_row():
    """When training moves on from the warm start, the warm start's predictions on both validation
    halves are kept for the paired comparison (they were once scored and dropped)."""
    for seed in (2, 3, 4, 5):  # seeds whose runs keep a trained epoch on these rows
        res = _train(seed, 44)
        if res.tag.card.training["best_epoch"] != 0:
            break
    else:
        pytest.fail("no seed kept a trained epoch: the comparison with the warm start went untested")
    warm = res.tag.card.metrics["baselines"]["warm_start"]
    versus = PairedDifference.from_dict(warm["versus_tag"])
    assert warm["n"] == 44
    assert versus.difference == pytest.approx(res.tag.card.metrics["valid"]["rmse"] - warm["rmse"], abs=1e-9)
    assert versus.difference != 0.0

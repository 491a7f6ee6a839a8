"""Scoring a tag against measured values and beside classic baselines fitted on a training file
(``tagllm_core.evaluation``): results tables are built by hand, so these tests need no backbone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rdkit import Chem

from tagllm_core.evaluation import MIN_TRAIN_ROWS, classic_baselines, measured_columns, score_predictions
from tagllm_core.exceptions import InputError
from tagllm_core.metrics import PairedDifference, regression_metrics
from tagllm_core.tags import SlotSpec, TagCard


def card(task: str = "regression", labels=("logS",), classes=()) -> TagCard:
    return TagCard(name="T", kind="function", backbone={}, n_tokens=1, task=task,
                   labels=list(labels) if task == "regression" else [], classes=list(classes),
                   slots=[SlotSpec("smiles", "smiles")])


def results(pred, errors=None, lower=None, upper=None) -> pd.DataFrame:
    frame = pd.DataFrame({"row": np.arange(1, len(pred) + 1), "prediction": pred})
    if lower is not None:
        frame["lower"], frame["upper"] = lower, upper
    frame["error"] = errors or [""] * len(pred)
    return frame


def molecules(n: int) -> list[str]:
    out = []
    for k in range(1, n + 1):
        out.append(["C" * k, "C" * k + "O", "c1ccccc1" + "C" * k, "C" * k + "N", "OC" + "C" * k + "C(=O)O"][k % 5])
    return out


def heavy(smiles) -> np.ndarray:
    return np.array([Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in smiles], dtype=float)


def test_regression_scores_only_predicted_labelled_rows_and_counts_the_rest():
    pred = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    measured = pd.DataFrame({"logS": [1.5, "n/a", 2.0, 4.5, None, 5.0]})
    frame = results(pred, ["", "", "", "bad SMILES", "", ""], lower=[0, 1, 2, 3, 4, 5.5], upper=[2, 3, 4, 5, 6, 7])
    ev = score_predictions(card(), frame, measured, ["logS"])
    assert list(ev.first.rows) == [0, 2, 5]
    assert ev.rows_failed == 1 and ev.rows_unlabelled == 2
    expected = regression_metrics([1.5, 2.0, 5.0], [1.0, 3.0, 6.0])
    assert ev.first.metrics["rmse"] == pytest.approx(expected["rmse"])
    assert ev.first.metrics["interval_coverage"] == pytest.approx(2 / 3)  # 5.0 is below [5.5, 7]
    d = ev.to_dict()
    assert d["n"] == 3 and d["rows_failed"] == 1 and d["rows_unlabelled"] == 2 and "baselines" not in d


def test_interval_coverage_counts_the_bounds_inclusive():
    frame = results([0.0, 0.0, 0.0], lower=[-1, -1, -1], upper=[1, 1, 1])
    ev = score_predictions(card(), frame, pd.DataFrame({"y": [1.0, -1.0, 1.01]}), ["y"])
    assert ev.first.metrics["interval_coverage"] == pytest.approx(2 / 3)


def test_several_outputs_are_scored_column_by_column():
    c = card(labels=("logS", "logP"))
    frame = results([1.0, 2.0, 3.0])
    frame["prediction(logS)"] = [1.0, 2.0, 3.0]
    frame["prediction(logP)"] = [0.0, 0.0, 1.0]
    measured = pd.DataFrame({"s": [1.0, 2.5, 3.0], "p": [0.0, 1.0, 1.0]})
    ev = score_predictions(c, frame, measured, ["s", "p"])
    assert ev.to_dict()["by_label"]["logP"]["rmse"] == pytest.approx(np.sqrt(1 / 3))
    assert ev.to_dict()["rmse"] == pytest.approx(np.sqrt(0.25 / 3))
    with pytest.raises(InputError, match="predicts 2 label"):
        score_predictions(c, frame, measured.assign(q=1.0), ["s", "p", "q"])


def test_classification_matches_classes_written_as_numbers():
    c = card("classification", classes=["0", "1"])
    frame = results([None] * 5)
    frame["p(0)"] = [0.9, 0.2, 0.6, 0.3, 0.5]
    frame["p(1)"] = 1 - frame["p(0)"]
    # a blank cell makes pandas read the column as floats: 1.0 must still mean class "1"
    measured = pd.DataFrame({"active": [0.0, 1.0, np.nan, 1.0, 2.0]})
    ev = score_predictions(c, frame, measured, ["active"])
    assert list(ev.first.rows) == [0, 1, 3] and ev.rows_unlabelled == 2
    assert list(ev.first.true) == [0, 1, 1] and ev.first.metrics["auroc"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="one column"):
        score_predictions(c, frame, measured.assign(b=0), ["active", "b"])


def test_clear_errors_for_missing_columns_and_nothing_to_score():
    with pytest.raises(InputError, match="no column"):
        score_predictions(card(), results([1.0]), pd.DataFrame({"y": [1.0]}), ["logS"])
    with pytest.raises(InputError, match="No row has both"):
        score_predictions(card(), results([1.0, 2.0], ["x", ""]), pd.DataFrame({"y": [1.0, "?"]}), ["y"])
    with pytest.raises(InputError, match="Choose the column"):
        score_predictions(card(), results([1.0]), pd.DataFrame({"y": [1.0]}), [])


def test_measured_columns_offers_numbers_and_puts_the_label_name_first():
    table = pd.DataFrame({"smiles": ["CCO", "CC", "C"], "weight": [46.0, 30.0, 16.0], "name": ["a", "b", "c"],
                          "LogS ": [0.1, None, -1.0]})
    assert measured_columns(card(), table, inputs=["smiles"]) == ["LogS ", "weight"]
    c = card("classification", classes=["no", "yes"])
    assert measured_columns(c, pd.DataFrame({"s": ["C", "CC"], "tox": ["yes", "no"], "n": [1, 2]})) == ["tox"]


def _evaluated(n_eval: int = 30, noise: float = 0.3, seed: int = 0):
    rng = np.random.default_rng(seed)
    smiles = molecules(n_eval)
    y = heavy(smiles)
    pred = y + rng.normal(0, noise, n_eval)
    frame = results(pred.tolist())
    ev = score_predictions(card(), frame, pd.DataFrame({"logS": y}), ["logS"])
    return ev, [{"smiles": s} for s in smiles], y, pred


def test_baselines_are_fitted_on_the_training_file_and_paired_with_the_tag():
    ev, rows, y, pred = _evaluated()
    train_smiles = molecules(60)[::-1] + ["not a molecule"]
    train = pd.DataFrame({"mol": train_smiles, "heavy": list(heavy(train_smiles[:-1])) + [3.0]})
    found = classic_baselines(card(), ev, rows, train, {"smiles": "mol"}, "heavy")
    assert ev.baselines is found and set(found) == {"mean", "ridge_descriptors", "rf_descriptors"}
    assert all(b["train_rows"] == 60 for b in found.values())  # the unparsable training row is skipped
    train_mean = heavy(train_smiles[:-1]).mean()
    assert found["mean"]["rmse"] == pytest.approx(float(np.sqrt(np.mean((y - train_mean) ** 2))))
    tag_rmse = ev.first.metrics["rmse"]
    for name, metrics in found.items():
        d = PairedDifference.from_dict(metrics["versus_tag"])
        assert d.difference == pytest.approx(tag_rmse - metrics["rmse"]), name
        assert d.low <= d.difference <= d.high
    # the tag here is the truth plus small noise: far better than the training mean
    assert PairedDifference.from_dict(found["mean"]["versus_tag"]).verdict == "better"
    # heavy-atom count is a descriptor: the ridge on descriptors predicts it almost exactly
    assert found["ridge_descriptors"]["rmse"] < 0.1
    assert PairedDifference.from_dict(found["ridge_descriptors"]["versus_tag"]).verdict == "worse"
    assert "baselines" in ev.to_dict() and "tag_on_compared_rows" not in ev.to_dict()
    assert ev.compared == ev.first.metrics


def test_baselines_default_to_the_evaluated_columns_and_refuse_too_few_rows():
    ev, rows, _, _ = _evaluated()
    few = molecules(MIN_TRAIN_ROWS - 1)
    with pytest.raises(InputError, match=f"at least {MIN_TRAIN_ROWS}"):
        classic_baselines(card(), ev, rows, pd.DataFrame({"smiles": few, "logS": heavy(few)}))
    with pytest.raises(InputError, match="no column"):
        classic_baselines(card(), ev, rows, pd.DataFrame({"smiles": few, "y": heavy(few)}))
    same = molecules(20)
    with pytest.raises(InputError, match="the same"):
        classic_baselines(card(), ev, rows, pd.DataFrame({"smiles": same, "logS": 1.0}))


def test_classification_baselines():
    c = card("classification", classes=["small", "large"])
    smiles = molecules(40)
    size = np.where(heavy(smiles) > 20, "large", "small")
    probs = np.where(size == "large", 0.8, 0.3)
    frame = results([None] * 40)
    frame["p(small)"], frame["p(large)"] = 1 - probs, probs
    ev = score_predictions(c, frame, pd.DataFrame({"size": size}), ["size"])
    train = molecules(60)[5:]
    found = classic_baselines(c, ev, [{"smiles": s} for s in smiles],
                              pd.DataFrame({"smiles": train, "size": np.where(heavy(train) > 20, "large", "small")}))
    assert set(found) == {"mean", "ridge_descriptors", "rf_descriptors"}
    assert found["mean"]["auroc"] == pytest.approx(0.5)
    d = PairedDifference.from_dict(found["mean"]["versus_tag"])
    assert d.metric == "auroc" and d.difference == pytest.approx(ev.first.metrics["auroc"] - 0.5)


def test_rows_the_baselines_cannot_read_are_compared_without_them():
    ev, rows, y, pred = _evaluated()
    rows[3] = {"smiles": "C1CC"}  # an input the descriptors cannot read (unclosed ring): out of the comparison
    found = classic_baselines(card(), ev, rows, pd.DataFrame({"smiles": molecules(40), "logS": heavy(molecules(40))}))
    keep = [i for i in range(len(y)) if i != 3]
    assert found["mean"]["n"] == len(keep) == ev.compared["n"]
    assert ev.compared["rmse"] == pytest.approx(regression_metrics(y[keep], pred[keep])["rmse"])
    assert ev.to_dict()["tag_on_compared_rows"] == ev.compared
    d = PairedDifference.from_dict(found["mean"]["versus_tag"])
    assert d.difference == pytest.approx(ev.compared["rmse"] - found["mean"]["rmse"])


def test_proteins_are_cropped_for_the_baselines_as_the_tag_was_trained():
    from tagllm_core.evaluation import _clean_rows

    c = TagCard(name="P", kind="function", backbone={}, n_tokens=1, task="regression", labels=["y"],
                slots=[SlotSpec("sequence", "protein")], training={"config": {"max_length": {"protein": 6}}})
    rows, kept = _clean_rows(c, [{"sequence": "ACDEFGHIKL"}, {"sequence": "AC1"}, {"sequence": "MKV"}])
    assert [r["sequence"] for r in rows] == ["ACDEFG", "MKV"] and list(kept) == [0, 2]

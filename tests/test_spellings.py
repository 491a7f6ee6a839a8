"""A tag that reads several SMILES spellings of each molecule (``FunctionTagConfig.spellings``).

* ``domains.spelled_rows``: the row first, then respelled copies of its SMILES inputs only, the same
  ones on every call (seeded by the SMILES), each the same molecule.
* ``warm_start.ridge_grouped``: the penalty chosen by folds that keep a molecule's spellings together,
  equal to a brute-force grouped cross-validation, in the primal (F <= N) and the dual (F > N) form.
* Training: the ridge warm start fits every training spelling as a row, and the forest beside it one row
  per molecule (its canonical SMILES); validation averages a row's
  spellings; the card records the setting; the saved tag predicts what training validated, each row's
  prediction being the mean of its spellings' predictions; the linear probe still reads the canonical
  SMILES alone; a bad row among good ones changes nothing for the others.
* Settings that cannot work are refused.
Tiny Llama (2 layers), 4 tag tokens, 100 molecules, as in tests/test_readout_depth.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from rdkit import Chem

from tagllm_core import train_warm_start
from tagllm_core.domains import MAX_SPELLINGS, spelled_rows
from tagllm_core.exceptions import TagFormatError, TrainingError
from tagllm_core.prediction import Predictor
from tagllm_core.tag_schema import check_card
from tagllm_core.tags import SlotSpec
from tagllm_core.training import FunctionTagConfig, train_function_tag
from tagllm_core.warm_start import group_mean, ridge_grouped

from test_readout_depth import VALID_FRACTION, predict_values, valid_rows  # noqa: E402
from test_training import small_frame, smiles_cfg  # noqa: E402


@pytest.fixture(scope="module")
def frame():
    return small_frame(20)  # 100 molecules, labels = heavy atoms


def test_spelled_rows_respell_the_smiles_inputs_alike_every_time():
    row = {"drug": "CC(=O)Oc1ccccc1C(=O)O", "target": "MKTAYIAK"}
    kinds = {"drug": "smiles", "target": "protein"}
    rows = spelled_rows(row, kinds, 3)
    assert rows[0] is row and len(rows) == 4
    assert spelled_rows(row, kinds, 3) == rows  # seeded by the SMILES: the same spellings every time
    canonical = Chem.MolToSmiles(Chem.MolFromSmiles(row["drug"]))
    for r in rows[1:]:
        assert r["drug"] != row["drug"] and r["target"] == row["target"]
        assert Chem.MolToSmiles(Chem.MolFromSmiles(r["drug"])) == canonical
    assert len({r["drug"] for r in rows}) == 4
    assert spelled_rows(row, kinds, 0) == [row]
    assert spelled_rows({"s": "C"}, {"s": "smiles"}, 3) == [{"s": "C"}]  # methane has one spelling
    assert spelled_rows({"p": "MKT"}, {"p": "protein"}, 3) == [{"p": "MKT"}]


def _grouped_brute_force(x, y, groups, alphas):
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold

    errors = []
    for alpha in alphas:
        sq = 0.0
        for a, b in GroupKFold(5).split(x, y, groups):
            sq += ((Ridge(alpha=alpha).fit(x[a], y[a]).predict(x[b]) - y[b]) ** 2).sum()
        errors.append(sq)
    best = alphas[int(np.argmin(errors))]
    return best, Ridge(alpha=best).fit(x, y)


@pytest.mark.parametrize("n_features", [6, 120])  # primal (F <= N) and dual (F > N) solutions
def test_ridge_grouped_equals_a_brute_force_grouped_cross_validation(n_features):
    rng = np.random.default_rng(0)
    n_mol, copies = 20, 3
    base = rng.normal(size=(n_mol, n_features))
    x = np.repeat(base, copies, axis=0) + 0.05 * rng.normal(size=(n_mol * copies, n_features))
    y = np.repeat(base[:, :3] @ np.array([1.0, -1.0, 0.5]), copies) + 0.3 * rng.normal(size=n_mol * copies)
    groups = np.repeat(np.arange(n_mol), copies)
    alphas = [0.01, 0.1, 1.0, 10.0, 100.0]
    state, alpha, oof = ridge_grouped(x, y, groups, alphas)
    best, model = _grouped_brute_force(x, y, groups, alphas)
    assert alpha == best
    np.testing.assert_allclose(state["weight"].numpy()[0], model.coef_, rtol=1e-4, atol=1e-5)
    assert state["bias"].item() == pytest.approx(model.intercept_, abs=1e-4)
    assert oof.shape == (len(y), 1)


def test_group_mean_averages_each_rows_entries():
    out = np.array([[1.0], [3.0], [10.0], [4.0], [6.0]], dtype=np.float32)
    np.testing.assert_allclose(group_mean(out, np.array([0, 0, 1, 2, 2])), [[2.0], [10.0], [5.0]])
    same = np.arange(3.0)[:, None]
    assert group_mean(same, np.arange(3)) is same
    # one entry per group, not in group order: reordered, not returned as it came
    np.testing.assert_allclose(group_mean(same, np.array([1, 0, 2])), [[1.0], [0.0], [2.0]])


@pytest.fixture(scope="module")
def spelled_run(tiny_backbones, frame):
    llama = tiny_backbones["llama"]
    return train_function_tag(llama, None, smiles_cfg("Spelled", spellings=2, valid_fraction=VALID_FRACTION), frame,
                              save=False)


def test_spellings_train_and_prediction_reproduces_validation(llama, library_factory, frame, spelled_run):
    res = spelled_run
    assert res.tag.card.spellings == 2 and res.tag.card.training["config"]["spellings"] == 2
    # by default the pure tag blends in a forest on its read-out, and it too is averaged over the spellings
    assert res.tag.card.head["forest_nodes"] > 0 and res.tag.card.head["forest_input"] == "readout"
    lib = library_factory(llama)
    lib.save(res.tag)
    loaded = lib.get("Spelled")
    assert loaded.card.spellings == 2
    rows = valid_rows(frame)
    values = predict_values(llama, loaded, rows, lib)
    np.testing.assert_allclose(values, res.valid_pred, rtol=1e-4, atol=1e-4)

    # each row's prediction is the mean of the head's outputs on its spellings, run one spelling at a time
    # (a spelling cannot go through ``predict``: cleaning makes it canonical again)
    predictor = Predictor(llama, loaded, lib)
    checked = 0
    for result in predictor.predict(rows):
        value = result.prediction  # spelled from the SMILES the model read (canonical, standardised)
        variants = spelled_rows({"smiles": result.standardised["smiles"]}, {"smiles": "smiles"}, 2)
        outs = np.concatenate([predictor._run([predictor.model.plan(v)]) for v in variants])
        expected = predictor.scaler.inverse(outs.mean(0, keepdims=True))[0, 0]
        assert value == pytest.approx(expected, rel=1e-4, abs=1e-4)
        checked += len(variants) > 1
        if checked == 4:
            break
    assert checked == 4  # four rows with several spellings (ethane has one)

    # a bad row among them changes nothing for the others
    mixed = rows[:3] + [{"smiles": "C1CC"}] + rows[3:6]
    out = Predictor(llama, loaded, lib).predict(mixed, batch_size=2)
    assert [p.ok for p in out] == [True] * 3 + [False] + [True] * 3
    np.testing.assert_allclose([p.prediction for p in out if p.ok], res.valid_pred[:6], rtol=1e-4, atol=1e-4)


def test_the_warm_start_fits_every_training_spelling(llama, frame, monkeypatch):
    seen = []
    real = train_warm_start.fit_head

    def spy(head, features, targets, extra=None, groups=None):
        seen.append((features.shape[0], None if groups is None else groups.copy()))
        return real(head, features, targets, extra, groups)

    monkeypatch.setattr(train_warm_start, "fit_head", spy)
    res = train_function_tag(llama, None, smiles_cfg("Spelled", spellings=2, epochs=0, layers=[2], forest=False,
                                                     valid_fraction=VALID_FRACTION), frame, save=False)
    (n, groups), = seen
    n_train = res.tag.card.training["rows_train"]
    assert groups is not None and len(np.unique(groups)) == n_train and n == len(groups)
    assert n_train < n <= 3 * n_train  # up to two spellings besides each canonical SMILES
    assert np.bincount(groups).max() == 3


def test_a_spelled_tag_grows_its_forest_on_one_row_per_molecule(llama, frame, monkeypatch):
    """The head's out-of-sample predictions leave a molecule's spellings out together and are averaged per
    molecule; the forest grows on each molecule's canonical SMILES alone, so no twin spelling sits in the
    bag of a tree that scores a molecule out of bag; the blend's weights see one row per molecule."""
    from tagllm_core import forest as forest_lib, warm_start as warm_start_lib

    seen: dict = {}
    real_loo, real_fit, real_blend = warm_start_lib.fit_head_loo, train_warm_start.fit_forest, forest_lib.blend_weights

    def loo_spy(head, features, targets, extra=None, groups=None):
        seen["loo"] = (features.shape[0], None if groups is None else groups.copy())
        return real_loo(head, features, targets, extra, groups)

    def fit_spy(x, y, *args, **kw):
        seen["forest"] = (x.copy(), y.copy())
        return real_fit(x, y, *args, **kw)

    def blend_spy(head_loo, forest_oob, y):
        seen["blend"] = (np.asarray(head_loo).shape, np.asarray(forest_oob).shape)
        return real_blend(head_loo, forest_oob, y)

    monkeypatch.setattr(warm_start_lib, "fit_head_loo", loo_spy)
    monkeypatch.setattr(train_warm_start, "fit_forest", fit_spy)
    monkeypatch.setattr(train_warm_start, "blend_weights", blend_spy)
    res = train_function_tag(llama, None, smiles_cfg("Spelled", spellings=2, epochs=0, layers=[2],
                                                     valid_fraction=VALID_FRACTION), frame, save=False)
    n_train = res.tag.card.training["rows_train"]
    n, groups = seen["loo"]
    assert groups is not None and n == len(groups) and n_train < n and len(np.unique(groups)) == n_train
    x, y = seen["forest"]
    assert len(x) == len(y) == n_train  # one row per molecule
    assert len(np.unique(y[:, 0])) > 1 and seen["blend"] == ((n_train, 1), (n_train, 1))
    assert res.tag.card.training["forest"]["reads"] == "readout"


def test_the_probe_reads_the_canonical_smiles_alone(llama, frame, spelled_run):
    plain = train_function_tag(llama, None, smiles_cfg("Spelled", valid_fraction=VALID_FRACTION), frame, save=False)
    a, b = (r.tag.card.metrics["baselines"]["probe"] for r in (plain, spelled_run))
    assert a["layer"] == b["layer"] and a["rmse"] == pytest.approx(b["rmse"], rel=1e-5)


@pytest.mark.parametrize("value", [-1, MAX_SPELLINGS + 1, True, 1.5])
def test_spellings_out_of_range_are_refused(value):
    with pytest.raises(TrainingError, match="Spellings"):
        smiles_cfg(spellings=value)


def test_spellings_need_a_smiles_input():
    with pytest.raises(TrainingError, match="SMILES input"):
        FunctionTagConfig(name="P", slots=[SlotSpec("seq", "protein", None)], labels=["y"], spellings=2)


def test_a_card_with_too_many_spellings_is_refused(spelled_run):
    data = dataclasses.asdict(spelled_run.tag.card)
    data["spellings"] = MAX_SPELLINGS + 1
    with pytest.raises(TagFormatError, match="spellings"):
        check_card(data, "test")
    data["spellings"] = 2
    check_card(data, "test")


@pytest.mark.parametrize("repeats", [1, 3])
def test_the_forest_blend_pairs_each_molecule_with_its_own_label(repeats, monkeypatch):
    """Entries come in any order of molecules (the warm start's sample first, then the other rows): the
    head's per-molecule predictions, the forest's rows and the labels must stay paired, also when no
    molecule has a second spelling."""
    from types import SimpleNamespace

    from tagllm_core.heads import HeadConfig, TaskHead

    rng = np.random.default_rng(0)
    n = 60
    order = np.concatenate([rng.permutation(n - 1), [n - 1]])  # unsorted, the largest molecule last
    groups = np.repeat(order, repeats)
    x_mol = rng.normal(size=(n, 5))
    y_mol = x_mol @ np.array([1.0, -2.0, 0.5, 0.0, 1.5]) + 0.05 * rng.normal(size=n)
    feats = torch.tensor(x_mol[groups] + 0.01 * rng.normal(size=(len(groups), 5)), dtype=torch.float32)
    y = torch.tensor(y_mol[groups, None], dtype=torch.float32)
    seen = {}
    real = train_warm_start.blend_weights

    def spy(head_loo, forest_oob, targets):
        seen.update(head=np.asarray(head_loo)[:, 0], forest=np.asarray(forest_oob)[:, 0], y=np.asarray(targets)[:, 0])
        return real(head_loo, forest_oob, targets)

    monkeypatch.setattr(train_warm_start, "blend_weights", spy)
    model = SimpleNamespace(head=TaskHead(HeadConfig("regression", 1, 5, 0, standardize=True)))
    blend = train_warm_start._blend_forest(model, feats, y, None, "readout", 0, groups)
    np.testing.assert_allclose(seen["y"], y_mol[np.sort(order)], rtol=1e-5)  # one label per molecule, in order
    assert np.corrcoef(seen["head"], seen["y"])[0, 1] > 0.95
    ok = np.isfinite(seen["forest"])
    assert np.corrcoef(seen["forest"][ok], seen["y"][ok])[0, 1] > 0.5
    assert blend.reads == "readout" and model.head.config.forest_nodes > 0

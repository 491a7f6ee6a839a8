"""Read-out depth, descriptor features and standardising heads, at the level of training and prediction.

* ``parse_layers`` and ``FunctionTagConfig``: what a person may type.
* ``layers="auto"``: the card records the chosen layer, which minimises the
  recorded validation RMSE of the layer choice; the saved tag predicts what
  training validated, and prediction never runs a block above that layer.
* Explicit layers and ``"final"`` train, round-trip through the library and
  predict what training validated.
* ``features="descriptors"``: the head reads the read-out and the RDKit
  descriptors; a molecule whose descriptors are undefined still gets a finite
  prediction (the head imputes the training mean); a tag whose descriptors
  differ from the installed ones is refused.
* Cards written before any of this (no ``layers``/``features``, heads without
  ``n_extra``/``standardize``) still predict through the final hidden state.
* ``TaskHead`` standardisation: NaN -> mean, clipping at +-``CLIP``, state round trip.

Everything runs on the tiny Llama (2 layers) or a 3-layer variant of it
(``test_stack.make_deep_backbone``), with 4 tag tokens, 0-1 epochs and 100 rows.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

# train_warm_start as training: the phase that calls choose_layer (a test replaces it there)
from tagllm_core import descriptors, prediction, train_warm_start as training
from tagllm_core.data import random_split
from tagllm_core.descriptors import feature_names
from tagllm_core.domains import clean
from tagllm_core.exceptions import TemplateError, TrainingError
from tagllm_core.forest import FOREST_KEYS, forest_outputs
from tagllm_core.heads import CLIP, HeadConfig, TaskHead, build_head
from tagllm_core.model import readout_dim
from tagllm_core.prediction import Predictor
from tagllm_core.tags import SUFFIX
from tagllm_core.training import parse_layers, train_function_tag
from tagllm_core.warm_start import (
    LayerChoice,
    LayerStack,
    bootstrap_scores,
    choose_layer,
    fit_head,
    layer_slice,
    layers_slice,
    one_se_layer,
    ridge_loo,
    stack_layers,
    stacked_head_state,
)

from conftest import count_block_calls, make_function_tag  # noqa: E402
from test_stack import make_deep_backbone  # noqa: E402
from test_training import small_frame, smiles_cfg  # noqa: E402

VALID_FRACTION = 0.2


@pytest.fixture(scope="module")
def frame():
    return small_frame(20)  # 100 molecules, labels = heavy atoms


@pytest.fixture(scope="module")
def deep_llama():
    return make_deep_backbone("llama", 3)


def valid_rows(frame) -> list[dict]:
    """The validation rows of ``smiles_cfg``'s random split, in the order training reports them."""
    _, va_idx = random_split(len(frame), VALID_FRACTION, 0)
    return [{"smiles": s} for s in frame["smiles"].iloc[va_idx]]


def predict_values(bb, tag, rows, library=None, batch_size: int = 7) -> np.ndarray:
    preds = Predictor(bb, tag, library).predict(rows, batch_size=batch_size)
    assert all(p.ok for p in preds), [p.error for p in preds if not p.ok]
    return np.array([p.prediction for p in preds])


# --- parsing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, expected", [
    ("auto", "auto"), (" Auto ", "auto"), ("stack", "stack"), (" Stack", "stack"), ("final", "final"),
    ("FINAL", "final"),
    ("12", [12]), ("7, 15", [7, 15]), ("7,15", [7, 15]), ("7 15", [7, 15]), (3, [3]), ([2, 1], [2, 1]),
    ((4,), [4]),
])
def test_parse_layers_accepts(value, expected):
    assert parse_layers(value) == expected


@pytest.mark.parametrize("value", ["x", "7,x", "1.5", "-1", "0", 0, -2, [], (), [0], [1, 0], "", [1.0], True, [True]])
def test_parse_layers_refuses(value):
    with pytest.raises(TrainingError, match="auto, stack, final"):
        parse_layers(value)


def test_function_tag_config_parses_its_layers_and_features():
    library_default = training.FunctionTagConfig(name="T", slots=[{"name": "smiles", "kind": "smiles"}], labels=["y"])
    assert library_default.layers == "auto" and library_default.features == "descriptors"
    assert library_default.layer_tolerance == 0  # the best-scoring layer (docs/BENCHMARKS.md)
    assert smiles_cfg().features == "none"  # these tests' helper asks for the pure tag
    assert smiles_cfg(layers="7, 15").layers == [7, 15]
    assert smiles_cfg(layers=2).layers == [2]
    with pytest.raises(TrainingError, match="Read-out layers"):
        smiles_cfg(layers="deep")
    with pytest.raises(TrainingError, match="feature set"):
        smiles_cfg(features="fingerprints")


def test_layers_beyond_the_backbone_are_refused(llama, frame):
    from tagllm_core.exceptions import BackboneError

    with pytest.raises(BackboneError, match=r"outside 1\.\.2"):
        train_function_tag(llama, None, smiles_cfg(layers=[3], epochs=0), frame, save=False)


# --- layers="auto" --------------------------------------------------------------------------------------


def test_auto_chooses_the_best_validation_layer_and_prediction_reproduces_it(llama, library_factory, frame):
    lib = library_factory(llama)
    cfg = smiles_cfg("AutoDepth", layers="auto", epochs=1, valid_fraction=VALID_FRACTION)
    res = train_function_tag(llama, lib, cfg, frame)
    card = res.tag.card

    assert isinstance(card.layers, list) and len(card.layers) == 1
    chosen = card.layers[0]
    choice = card.training["layer_choice"]
    scores = choice["valid_rmse_by_layer"]
    assert choice["chosen"] == chosen == choice["best"] and choice["rows"] == card.training["rows_train"]
    assert sorted(scores) == list(range(1, llama.n_layers + 1))  # every layer was scored
    assert all(math.isfinite(v) for v in scores.values())
    assert scores[chosen] == min(scores.values())
    # the warm start's head is the chosen layer's ridge head: epoch 0 validates at its recorded score
    assert res.history[0]["valid_rmse"] == pytest.approx(scores[chosen], rel=1e-3)
    assert card.head["in_dim"] == readout_dim(card.readout, llama.hidden_size)
    assert card.head["standardize"] is True and card.head["n_extra"] == 0

    loaded = lib.get("AutoDepth")
    assert loaded.card.layers == card.layers
    saved = loaded.card.training["layer_choice"]
    assert {int(k): v for k, v in saved["valid_rmse_by_layer"].items()} == pytest.approx(scores)

    rows = valid_rows(frame)
    with count_block_calls(llama) as counts:
        values = predict_values(llama, loaded, rows, lib)
    np.testing.assert_allclose(values, res.valid_pred, rtol=1e-4, atol=1e-4)
    assert all(c > 0 for c in counts[:chosen])
    assert counts[chosen:] == [0] * (llama.n_layers - chosen)


def test_auto_choice_below_the_top_drives_training_and_prediction(deep_llama, library_factory, frame, monkeypatch):
    """Whichever layer the choice returns is the one trained and read: forced to the middle layer of
    three (the most telling slice of the [last_1..3; mean_1..3] features), the warm start validates at
    that layer's recorded score, and prediction reproduces training without running the top block."""
    real = training.choose_layer
    calls = []

    def middle(*args, **kwargs):
        choice = real(*args, **kwargs)
        calls.append(choice)
        return LayerChoice(2, choice.scores)

    monkeypatch.setattr(training, "choose_layer", middle)
    lib = library_factory(deep_llama)
    res = train_function_tag(deep_llama, lib, smiles_cfg("Middle", epochs=1, valid_fraction=VALID_FRACTION), frame)
    assert len(calls) == 1 and sorted(calls[0].scores) == [1, 2, 3]
    card = res.tag.card
    assert card.layers == [2] and card.training["layer_choice"]["chosen"] == 2
    scores = card.training["layer_choice"]["valid_rmse_by_layer"]
    assert res.history[0]["valid_rmse"] == pytest.approx(scores[2], rel=1e-3)
    if scores[2] != scores[3]:  # the top layer's head predicts differently: the middle one was really used
        assert res.history[0]["valid_rmse"] != pytest.approx(scores[3], rel=1e-3)

    with count_block_calls(deep_llama) as counts:
        values = predict_values(deep_llama, lib.get("Middle"), valid_rows(frame), lib)
    np.testing.assert_allclose(values, res.valid_pred, rtol=1e-4, atol=1e-4)
    assert counts[0] > 0 and counts[1] > 0 and counts[2] == 0


# --- the one-standard-error rule ------------------------------------------------------------------------


def _layered(y: np.ndarray, noise: list, seed: int) -> torch.Tensor:
    """(N, L*4) features read at L layers side by side, 4 columns each: layer l holds y plus a noise
    shared by all layers plus its own noise of sd noise[l] (inf: pure noise, no y)."""
    rng = np.random.default_rng(seed)
    shared = 0.5 * rng.standard_normal((len(y), 4))  # the good layers' errors are mostly the same
    blocks = []
    for sd in noise:
        if math.isinf(sd):
            blocks.append(rng.standard_normal((len(y), 4)))
        else:
            blocks.append(y[:, None] + shared + sd * rng.standard_normal((len(y), 4)))
    return torch.tensor(np.hstack(blocks), dtype=torch.float32)


def _choose(tolerance: float):
    rng = np.random.default_rng(0)
    y_train, y_valid = rng.standard_normal(400), rng.standard_normal(120)
    noise = [math.inf, 0.1, 0.1, 0.1]  # layer 1 useless; layers 2-4 equally good up to noise
    f_train, f_valid = _layered(y_train, noise, 1), _layered(y_valid, noise, 2)

    def rmse(out, rows):
        return float(np.sqrt(np.mean((out[:, 0] - y_valid[rows]) ** 2)))

    factory = lambda: TaskHead(HeadConfig("regression", 1, 4, standardize=True))  # noqa: E731
    return choose_layer(factory, f_train, torch.tensor(y_train[:, None], dtype=torch.float32), f_valid, rmse, 4,
                        "last", tolerance=tolerance)


def test_choose_layer_keeps_the_shallowest_layer_within_one_standard_error():
    best = _choose(0.0)
    assert best.layer == best.best == min(best.scores, key=best.scores.get)
    assert best.scores[1] > 1.5 * best.scores[best.best]  # the useless layer scores far worse
    one_se = _choose(1.0)
    assert one_se.scores == best.scores and one_se.best == best.best
    assert one_se.layer == 2  # layers 2-4 differ by noise; layer 1 is far outside one standard error
    assert one_se.tolerance == 1.0


def test_one_se_layer_uses_the_paired_spread():
    scores = {1: 1.10, 2: 1.02, 3: 1.00}
    base = np.linspace(0.9, 1.1, 50)
    replicates = {3: base, 2: base + 0.02 + np.tile([-0.03, 0.03], 25), 1: base + 0.10 + np.tile([-0.01, 0.01], 25)}
    # layer 2: difference 0.02 with a paired sd of ~0.03 -> inside; layer 1: 0.10 with sd ~0.01 -> outside
    assert one_se_layer(scores, replicates, 1.0) == 2
    assert one_se_layer(scores, replicates, 0.5) == 3
    assert one_se_layer(scores, replicates, 0) == 3
    assert one_se_layer(scores, replicates, 10.0) == 1


def test_bootstrap_scores_are_paired_and_nan_for_undefined_metrics():
    out = np.arange(10, dtype=float)[:, None]

    def mean_or_undefined(o, rows):
        return math.inf if len(set(rows.tolist())) < 4 else float(o.mean())

    reps = bootstrap_scores(mean_or_undefined, {1: out, 2: out.copy(), 3: out + 1}, 10, n_boot=50)
    np.testing.assert_array_equal(reps[1], reps[2])  # the same resamples for every layer
    np.testing.assert_allclose(reps[3] - reps[1], 1.0)
    tiny = bootstrap_scores(mean_or_undefined, {1: out[:3]}, 3, n_boot=20)
    assert np.isnan(tiny[1]).all()


def test_layer_tolerance_is_checked():
    with pytest.raises(TrainingError, match="standard errors"):
        smiles_cfg("Tol", layer_tolerance=-1)


# --- layers="stack" ----------------------------------------------------------------------------------------


def test_ridge_loo_gives_each_rows_prediction_without_it():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((40, 12)), rng.standard_normal((40, 2))
    state, alpha, loo = ridge_loo(x, y)
    assert loo.shape == (40, 2)
    for row in (0, 17):
        rest = np.delete(np.arange(40), row)
        refit = Ridge(alpha=alpha).fit(x[rest], y[rest]).predict(x[row:row + 1])[0]
        np.testing.assert_allclose(loo[row], refit, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(state["weight"].numpy(), Ridge(alpha=alpha).fit(x, y).coef_, rtol=1e-4, atol=1e-6)


def test_stack_layers_weights_the_informative_layers_and_drops_the_useless_one():
    rng = np.random.default_rng(0)
    y = rng.standard_normal(300)
    # layer 1: noise; layers 2 and 3: y with errors of their own, so averaging them beats either
    blocks = [rng.standard_normal((300, 4))] + [y[:, None] + 0.8 * rng.standard_normal((300, 4)) for _ in range(2)]
    feats = torch.tensor(np.hstack(blocks), dtype=torch.float32)
    factory = lambda: TaskHead(HeadConfig("regression", 1, 4, standardize=True))  # noqa: E731
    targets = torch.tensor(y[:, None], dtype=torch.float32)

    def rmse(out, rows):
        return float(np.sqrt(np.mean((out[:, 0] - y[rows]) ** 2)))

    # the layer choice's own ridge fits give the leave-one-out predictions the stack weighs
    choice = choose_layer(factory, feats, targets, feats, rmse, 3, "last", loo=True)
    assert sorted(choice.loo) == [1, 2, 3] and choice.loo[2].shape == (300, 1)
    head = factory()
    fit_head(head, layer_slice(feats, 3, 2, "last"), targets)
    with torch.no_grad():
        z = head.inputs(layer_slice(feats, 3, 2, "last"))
    np.testing.assert_allclose(choice.loo[2], ridge_loo(z, targets)[2], rtol=1e-6)
    assert not choose_layer(factory, feats, targets, feats, rmse, 3, "last").loo  # only when asked
    stack = stack_layers(choice.loo, targets, 3)
    assert stack.layers == (2, 3)
    assert sum(stack.weights) == pytest.approx(1.0) and min(stack.weights) > 0.3
    # the depth bounds the pool: with depth 2 only layer 2 can be kept
    assert stack_layers(choice.loo, targets, 2).layers == (2,)


@pytest.mark.parametrize("readout, n_extra", [("last+mean", 0), ("last+mean", 3), ("last", 2)])
def test_stacked_head_outputs_the_weighted_sum_of_the_layer_heads(readout, n_extra):
    rng = np.random.default_rng(1)
    n, width, layers, weights = 60, 5, (1, 3, 4), (0.2, 0.5, 0.3)
    parts = 2 if readout == "last+mean" else 1
    every = torch.tensor(rng.standard_normal((n, parts * 4 * width)) * 3 + 1, dtype=torch.float32)
    extra = torch.tensor(rng.standard_normal((n, n_extra)) * 10, dtype=torch.float32) if n_extra else None
    y = torch.tensor(rng.standard_normal((n, 2)), dtype=torch.float32)
    config = lambda k: HeadConfig("regression", 2, parts * k * width + n_extra, n_extra, standardize=True)  # noqa: E731
    heads = []
    for layer in layers:
        heads.append(TaskHead(config(1)))
        fit_head(heads[-1], layer_slice(every, 4, layer, readout), y, extra)
    combined = TaskHead(config(len(layers)))
    combined.load_state(stacked_head_state(heads, weights, readout))
    with torch.no_grad():
        expected = sum(w * h(layer_slice(every, 4, layer, readout), extra)
                       for h, w, layer in zip(heads, weights, layers))
        got = combined(layers_slice(every, 4, layers, readout), extra)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_stack_trains_round_trips_and_prediction_reproduces_it(deep_llama, library_factory, frame):
    lib = library_factory(deep_llama)
    res = train_function_tag(deep_llama, lib, smiles_cfg("Stacked", layers="stack", epochs=1,
                                                         valid_fraction=VALID_FRACTION), frame)
    card = res.tag.card
    choice = card.training["layer_choice"]
    weights = {int(k): v for k, v in choice["stack_weights"].items()}
    assert card.layers == sorted(weights) and max(card.layers) <= choice["chosen"]
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-3) and min(weights.values()) > 0
    assert card.head["in_dim"] == readout_dim(card.readout, deep_llama.hidden_size, len(card.layers))
    loaded = lib.get("Stacked")
    assert loaded.card.layers == card.layers
    deepest = max(card.layers)
    with count_block_calls(deep_llama) as counts:
        values = predict_values(deep_llama, loaded, valid_rows(frame), lib)
    np.testing.assert_allclose(values, res.valid_pred, rtol=1e-4, atol=1e-4)
    assert counts[deepest:] == [0] * (deep_llama.n_layers - deepest)


@pytest.mark.parametrize("features", ["none", "descriptors"])
def test_a_stack_of_two_layers_warm_starts_at_its_layers_combined_and_predicts_the_same(
        deep_llama, library_factory, frame, monkeypatch, features):
    """Forced to layers 1 and 2 of 3 (a tiny random model may well keep one), the warm start's head is
    the weighted sum of those layers' ridge heads (its epoch 0 scores as such), prediction reproduces
    training and the top block never runs."""
    monkeypatch.setattr(training, "stack_layers", lambda *a, **k: LayerStack((1, 2), (0.25, 0.75)))
    calls = []
    real_choose = training.choose_layer

    def choose(*args, **kwargs):
        calls.append(real_choose(*args, **kwargs))
        return LayerChoice(3, calls[-1].scores)  # the depth bound; the stack keeps 1 and 2 below it

    monkeypatch.setattr(training, "choose_layer", choose)
    lib = library_factory(deep_llama)
    name = f"Two{features.title()}"
    res = train_function_tag(deep_llama, lib, smiles_cfg(name, layers="stack", epochs=1, features=features,
                                                         valid_fraction=VALID_FRACTION), frame)
    card = res.tag.card
    assert card.layers == [1, 2] and card.training["layer_choice"]["stack_weights"] == {1: 0.25, 2: 0.75}
    n_extra = card.head["n_extra"]
    assert (n_extra > 0) == (features == "descriptors")
    assert card.head["in_dim"] == readout_dim(card.readout, deep_llama.hidden_size, 2) + n_extra
    with count_block_calls(deep_llama) as counts:
        values = predict_values(deep_llama, lib.get(name), valid_rows(frame), lib)
    np.testing.assert_allclose(values, res.valid_pred, rtol=1e-4, atol=1e-4)
    assert counts[0] > 0 and counts[1] > 0 and counts[2] == 0


# --- explicit layers and "final" ----------------------------------------------------------------------


@pytest.mark.parametrize("layers, expected", [([1], [1]), ("2,1", [2, 1]), ("final", None)])
def test_explicit_layers_train_round_trip_and_predict_the_same(llama, library_factory, frame, layers, expected):
    lib = library_factory(llama)
    cfg = smiles_cfg("Depth", layers=layers, epochs=1, valid_fraction=VALID_FRACTION)
    res = train_function_tag(llama, lib, cfg, frame)
    card = res.tag.card
    assert card.layers == expected
    assert card.training["layer_choice"] is None
    n_read = len(expected) if expected else 1
    assert card.head["in_dim"] == readout_dim("last+mean", llama.hidden_size, n_read)
    assert res.tag.head_state["weight"].shape == (1, card.head["in_dim"])
    assert math.isfinite(res.metrics["rmse"])
    assert res.path is not None and res.path.name == "Depth" + SUFFIX

    loaded = lib.get("Depth")
    assert loaded.card.layers == expected and loaded.card.features == "none"
    assert loaded.card.head == card.head
    for k, v in res.tag.head_state.items():
        assert torch.equal(loaded.head_state[k], v)

    deepest = max(expected) if expected else llama.n_layers
    with count_block_calls(llama) as counts:
        values = predict_values(llama, loaded, valid_rows(frame), lib)
    np.testing.assert_allclose(values, res.valid_pred, rtol=1e-4, atol=1e-4)
    assert all(c > 0 for c in counts[:deepest]) and counts[deepest:] == [0] * (llama.n_layers - deepest)


# --- descriptor features ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def descriptor_run(tiny_backbones, frame):
    """A descriptor tag trained once for this module (layers auto), with its validation predictions."""
    llama = tiny_backbones["llama"]
    cfg = smiles_cfg("WithDescriptors", features="descriptors", epochs=1, valid_fraction=VALID_FRACTION)
    return train_function_tag(llama, None, cfg, frame, save=False)


def test_descriptors_train_and_prediction_reproduces_validation(llama, library_factory, frame, descriptor_run):
    res = descriptor_run
    card = res.tag.card
    names = feature_names("smiles")
    assert card.features == "descriptors" and card.descriptor_names == names
    feature_dim = readout_dim(card.readout, llama.hidden_size, len(card.layers))
    assert card.head["n_extra"] == len(names) and card.head["standardize"] is True
    assert card.head["in_dim"] == feature_dim + len(names)
    # the default blends a forest on the descriptors into the head (tests/test_forest.py)
    assert set(res.tag.head_state) == {"weight", "bias", "x_mean", "x_std", "blend", *FOREST_KEYS}
    assert res.tag.head_state["x_mean"].shape == (feature_dim + len(names),)
    assert torch.isfinite(res.tag.head_state["x_mean"]).all() and (res.tag.head_state["x_std"] > 0).all()
    assert card.training["config"]["features"] == "descriptors"
    assert math.isfinite(res.metrics["rmse"])

    lib = library_factory(llama)
    lib.save(res.tag)
    loaded = lib.get("WithDescriptors")
    assert loaded.card.descriptor_names == names and loaded.card.features == "descriptors"
    predictor = Predictor(llama, loaded, lib)
    assert predictor.descriptors and predictor.model.head.config.n_extra == len(names)
    rows = valid_rows(frame)
    preds = predictor.predict(rows, batch_size=7)
    assert all(p.ok for p in preds)
    np.testing.assert_allclose([p.prediction for p in preds], res.valid_pred, rtol=1e-4, atol=1e-4)

    # a bad row among them changes nothing for the others (descriptor rows stay aligned with inputs)
    mixed = rows[:3] + [{"smiles": "C1CC"}] + rows[3:6]
    out = predictor.predict(mixed, batch_size=2)
    assert [p.ok for p in out] == [True] * 3 + [False] + [True] * 3
    np.testing.assert_allclose([p.prediction for p in out if p.ok], res.valid_pred[:6], rtol=1e-4, atol=1e-4)
    # nothing valid at all: row errors, no crash
    assert [p.ok for p in predictor.predict([{"smiles": "C1CC"}, {"smiles": ""}])] == [False, False]


def test_undefined_descriptors_still_give_a_finite_prediction(llama, monkeypatch, descriptor_run):
    """RDKit leaves a descriptor undefined (NaN) for an odd molecule: the head reads the training mean."""
    tag = descriptor_run.tag
    predictor = Predictor(llama, tag)
    rows = [{"smiles": "CCCCO"}, {"smiles": "CCCCCCN"}, {"smiles": "c1ccccc1CC"}]
    before = predictor.predict(rows)
    real = descriptors._smiles_row
    monkeypatch.setattr(descriptors, "_smiles_row",
                        lambda s: [math.nan] * len(real(s)) if s == "CCCCCCN" else real(s))
    after = predictor.predict(rows)
    assert all(p.ok and math.isfinite(p.prediction) for p in after)
    assert after[0].prediction == pytest.approx(before[0].prediction, abs=1e-6)
    assert after[2].prediction == pytest.approx(before[2].prediction, abs=1e-6)

    # exactly what the head gives with the training mean in place of every descriptor in its linear part,
    # and the training median in its forest's
    model, n_extra = predictor.model, predictor.model.head.config.n_extra
    head = model.head
    assert head.config.forest_nodes  # the default blends one in
    with torch.no_grad():
        features = model.features([model.plan({"smiles": "CCCCCCN"})])
        linear = head.linear(head.inputs(features, head.x_mean[-n_extra:].unsqueeze(0)))
        trees = forest_outputs(head.forest_state(), head.config.forest_depth, head.forest_fill.unsqueeze(0))
        out = head.blend[0] * linear + head.blend[1] * trees
    expected = predictor.scaler.inverse(out.numpy())[0, 0]
    assert after[1].prediction == pytest.approx(expected, rel=1e-4, abs=1e-4)

    # and a wildly out-of-range value is clipped, not extrapolated
    monkeypatch.setattr(descriptors, "_smiles_row",
                        lambda s: [1e30] * len(real(s)) if s == "CCCCCCN" else real(s))
    huge = predictor.predict(rows)[1]
    assert huge.ok and math.isfinite(huge.prediction)
    x = torch.cat([features, model.head.x_mean[-n_extra:].unsqueeze(0)], 1)
    x[:, -n_extra:] = 1e30
    with torch.no_grad():
        bound = model.head(x[:, :-n_extra], x[:, -n_extra:])  # clipped inputs; the forest's last branches
    assert huge.prediction == pytest.approx(predictor.scaler.inverse(bound.numpy())[0, 0], rel=1e-4, abs=1e-4)


def test_a_descriptor_beyond_float32_range_does_not_break_training(llama):
    names = feature_names("smiles")
    X = descriptors.input_features("smiles", ["C" * 199])  # a valid SMILES within the 200-character limit
    # RDKit's Ipc of this chain is 2.4e55, beyond float32: descriptors are clipped to a float32-safe range
    assert np.isfinite(X).all() and X[0, names.index("rdkit:Ipc")] == pytest.approx(1e12)
    df = small_frame(20)
    df.loc[0, "smiles"], df.loc[0, "y"] = "C" * 199, 199.0
    res = train_function_tag(llama, None, smiles_cfg(features="descriptors", layers=[1], epochs=0,
                                                     valid_fraction=VALID_FRACTION), df, save=False)
    assert math.isfinite(res.metrics["rmse"])
    assert math.isfinite(Predictor(llama, res.tag).predict([{"smiles": "C" * 199}])[0].prediction)


def test_descriptor_names_that_differ_from_the_installed_ones_are_refused(llama, monkeypatch, descriptor_run):
    tag = descriptor_run.tag
    names = tag.card.descriptor_names
    for other in (names[:-1], names[1:] + names[:1], names + ["rdkit:NewThing"]):
        card = dataclasses.replace(tag.card, descriptor_names=list(other))
        with pytest.raises(TemplateError, match="(?i)retrain"):
            Predictor(llama, dataclasses.replace(tag, card=card))
    # or the installation computes other descriptors than the tag was trained with
    monkeypatch.setattr(prediction, "row_feature_names", lambda slot_kinds: names[:-2])
    with pytest.raises(TemplateError, match="(?i)retrain"):
        Predictor(llama, tag)


# --- old cards -------------------------------------------------------------------------------------------


def load_file_metadata(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def _write_legacy_tag(tag, folder):
    """Write ``tag`` as a file from before read-out depth: no layers/features/descriptor_names in its
    card, a head config of task/n_outputs/in_dim only, and a head state of weight/bias only."""
    from tagllm_core.tags import save_tag_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{tag.name}{SUFFIX}"
    save_tag_file(tag, path)
    card = json.loads(tag.card.to_json())
    for key in ("layers", "features", "descriptor_names"):
        card.pop(key)
    card["head"] = {k: card["head"][k] for k in ("task", "n_outputs", "in_dim")}
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={"format": "tagllm-tag", "card": json.dumps(card)})
    return path


@pytest.mark.parametrize("readout", ["last", "last+mean"])
def test_old_card_predicts_through_the_final_hidden_state(llama, library_factory, readout):
    lib = library_factory(llama)
    tag = make_function_tag(llama, name="Legacy", readout=readout)
    assert set(tag.head_state) == {"weight", "bias"}
    path = _write_legacy_tag(tag, lib.bundled_dir)  # a bundled tag of an older release
    raw = json.loads(load_file_metadata(path)["card"])
    assert "layers" not in raw and "features" not in raw and "n_extra" not in raw["head"]

    loaded = lib.get("Legacy")
    assert loaded.card.layers is None and loaded.card.features == "none" and loaded.card.descriptor_names == []
    predictor = Predictor(llama, loaded, lib)
    head = predictor.model.head
    assert head.config.n_extra == 0 and head.config.standardize is False
    assert predictor.model.layers is None and not predictor.descriptors

    rows = [{"smiles": s} for s in ("CCO", "c1ccccc1CCCC", "N", "CC(=O)Oc1ccccc1C(=O)O", "CCCCCCCCCCCCO")]
    with count_block_calls(llama) as counts:
        preds = predictor.predict(rows, batch_size=2)
    assert all(p.ok for p in preds)
    assert all(c > 0 for c in counts)  # the whole stack ran

    # the reference: Hugging Face's final (normed) hidden state, pooled by hand, through the stored head
    model = predictor.model
    plans = [model.plan({"smiles": clean("smiles", r["smiles"]).value}) for r in rows]  # canonical SMILES
    with torch.no_grad():
        batch = model.batch(plans)
        hidden = llama.base(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask).last_hidden_state
        last = hidden[torch.arange(len(plans)), batch.readout_index]
        w = batch.input_mask.unsqueeze(-1).float()
        mean = (hidden * w).sum(1) / w.sum(1)
        features = last if readout == "last" else torch.cat([last, mean], -1)
        z = features @ tag.head_state["weight"].T + tag.head_state["bias"]
    expected = (z[:, 0] * 2.0 + 5.0).numpy()  # conftest's label scaling: mean 5, std 2
    np.testing.assert_allclose([p.prediction for p in preds], expected, rtol=1e-4, atol=1e-4)


# --- TaskHead standardisation ---------------------------------------------------------------------------


def _standard_head(in_dim: int = 4, n_extra: int = 2) -> TaskHead:
    torch.manual_seed(0)
    return TaskHead(HeadConfig("regression", 1, in_dim, n_extra=n_extra, standardize=True))


def test_fit_scaling_is_nan_aware():
    head = _standard_head(4)
    x = torch.tensor([[1.0, 10.0, 3.0, math.nan],
                      [3.0, math.nan, 3.0, math.nan],
                      [5.0, 30.0, 3.0, math.nan]])
    head.fit_scaling(x)
    torch.testing.assert_close(head.x_mean, torch.tensor([3.0, 20.0, 3.0, 0.0]))
    # population std of the observed values; a constant or all-missing column is left unscaled
    torch.testing.assert_close(head.x_std, torch.tensor([math.sqrt(8 / 3), 10.0, 1.0, 1.0]))


def test_standardised_head_maps_non_finite_values_to_the_mean_and_clips():
    head = _standard_head(4)
    head.fit_scaling(torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 4.0, 6.0, 8.0]]))  # mean 1,2,3,4; std 1,2,3,4
    features = torch.tensor([[1.0, 2.0], [3.0, 2.0], [1.0, 1e6], [1.0, -1e6]])
    extra = torch.tensor([[math.nan, math.nan], [3.0 + 3 * 100.0, 4.0 - 4 * 2.5],
                          [math.nan, 4.0], [3.0, math.inf]])
    z = head.inputs(features, extra)
    expected = torch.tensor([[0.0, 0.0, 0.0, 0.0],
                             [2.0, 0.0, CLIP, -2.5],
                             [0.0, CLIP, 0.0, 0.0],
                             [0.0, -CLIP, 0.0, 0.0]])  # inf is undefined, like NaN: the mean
    torch.testing.assert_close(z, expected)
    assert torch.isfinite(head(features, extra)).all()
    torch.testing.assert_close(head(features, extra), head.linear(expected))
    # without the descriptors the width is wrong, and the error says so
    with pytest.raises(TrainingError, match="descriptors missing"):
        head.inputs(features)


def test_plain_head_reads_its_features_as_they_are():
    torch.manual_seed(0)
    head = TaskHead(HeadConfig("regression", 1, 3))
    x = torch.tensor([[1e6, -2.0, 0.5]])
    torch.testing.assert_close(head.inputs(x), x)
    assert set(head.state()) == {"weight", "bias"}


def test_standardised_head_state_round_trip():
    head = _standard_head(4)
    gen = torch.Generator().manual_seed(3)
    head.fit_scaling(torch.randn(20, 4, generator=gen) * 5 + 2)
    state = head.state()
    assert set(state) == {"weight", "bias", "x_mean", "x_std"}
    state["x_mean"].add_(1.0)  # a copy: editing it does not touch the head
    assert not torch.equal(state["x_mean"], head.x_mean)
    state = head.state()

    other = build_head(head.config, state)
    for k in state:
        assert torch.equal(other.state()[k], state[k])
    x = torch.randn(5, 2, generator=gen) * 10
    e = torch.randn(5, 2, generator=gen) * 10
    e[0, 0] = math.nan
    torch.testing.assert_close(other(x, e), head(x, e))


@pytest.mark.parametrize("missing", [("x_mean",), ("x_std",), ("x_mean", "x_std")])
def test_standardised_head_state_without_statistics_is_refused(missing):
    head = _standard_head(4)
    state = {k: v for k, v in head.state().items() if k not in missing}
    with pytest.raises(TrainingError, match="statistics"):
        _standard_head(4).load_state(state)
    with pytest.raises(TrainingError, match="statistics"):
        build_head(head.config, state)
    # a plain head needs none
    plain = TaskHead(HeadConfig("regression", 1, 4))
    plain.load_state({"weight": state["weight"], "bias": state["bias"]})
    assert torch.equal(plain.linear.weight, state["weight"])

"""The random forest a regression head may blend in (``tagllm_core.forest``, ``FunctionTagConfig.forest``):
the stored trees decide exactly as scikit-learn's, the blend weights, the head, the tag file's checks,
and a tag trained with it on the tiny backbone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.ensemble import RandomForestRegressor

from tagllm_core.exceptions import TagFormatError, TrainingError
from tagllm_core.forest import blend_weights, fit_forest, forest_outputs, min_leaf
from tagllm_core.heads import HeadConfig, TaskHead, build_head, forest_shapes
from tagllm_core.tags import SlotSpec, load_tag_file, save_tag_file
from tagllm_core.training import FunctionTagConfig, train_function_tag

from test_readout_depth import VALID_FRACTION, predict_values, valid_rows  # noqa: E402
from test_training import small_frame, smiles_cfg  # noqa: E402


def data(n: int = 300, e: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    # whole numbers and repeated values: many inputs fall exactly on the split points' neighbours
    x = rng.integers(0, 7, size=(n, e)).astype(np.float32)
    x[:, 1] = rng.normal(size=n).astype(np.float32) * 1e3
    y = np.sin(x[:, 0]) + (x[:, 2] > 3) * x[:, 1] / 1e3 + 0.1 * rng.normal(size=n)
    return x, y[:, None]


def sklearn_twin(x, y, seed: int = 0) -> RandomForestRegressor:
    return RandomForestRegressor(n_estimators=100, min_samples_leaf=min_leaf(len(x)), oob_score=True, n_jobs=-1,
                                 random_state=seed).fit(x, y[:, 0])


def test_the_stored_trees_predict_as_scikit_learn():
    x, y = data()
    fit = fit_forest(x, y, seed=3)
    twin = sklearn_twin(x, y, seed=3)
    probe = np.concatenate([x, data(200, seed=1)[0], x + np.float32(0.5)])
    ours = forest_outputs(fit.state, fit.depth, torch.from_numpy(probe))[:, 0].numpy()
    assert np.allclose(ours, twin.predict(probe), atol=1e-5)
    assert np.allclose(fit.oob[:, 0], twin.oob_prediction_)
    assert fit.n_trees == 100 and fit.n_nodes == sum(e.tree_.node_count for e in twin.estimators_)
    assert all(v.dtype == torch.float32 for v in fit.state.values())


def test_thresholds_are_rounded_down_so_ties_go_as_in_scikit_learn():
    # two columns of neighbouring float32 values: scikit-learn splits halfway, in float64, and a float32
    # threshold rounded to nearest would send one of the two values the wrong way
    a = np.float32(1000.0)
    while True:  # the case that matters: the float64 midpoint rounds (half to even) up to b in float32
        b = np.nextafter(a, np.float32(np.inf))
        if np.float32((np.float64(a) + np.float64(b)) / 2) == b:
            break
        a = b
    x = np.array([[a], [b]] * 20, dtype=np.float32)
    y = np.array([[0.0], [1.0]] * 20)
    fit = fit_forest(x, y, n_trees=5)
    out = forest_outputs(fit.state, fit.depth, torch.tensor([[a], [b]]))[:, 0].numpy()
    twin = RandomForestRegressor(n_estimators=5, min_samples_leaf=3, random_state=0).fit(x, y[:, 0])
    assert np.array_equal(out, twin.predict(np.array([[a], [b]], dtype=np.float32)).astype(np.float32))
    assert out[0] < out[1]


def test_missing_descriptors_take_the_training_median():
    x, y = data()
    x[::7, 3] = np.nan
    fit = fit_forest(x, y)
    filled = np.where(np.isnan(x), np.nanmedian(x, 0), x)
    twin = sklearn_twin(filled, y)
    row = x[:5].copy()
    row[:, 3] = np.nan
    got = forest_outputs(fit.state, fit.depth, torch.from_numpy(row))[:, 0].numpy()
    expected = twin.predict(np.where(np.isnan(row), np.nanmedian(x, 0), row))
    assert np.allclose(got, expected, atol=1e-5)


def test_leaves_grow_with_the_training_set():
    assert min_leaf(100) == 3 and min_leaf(6000) == 3 and min_leaf(20_000) == 10


def test_blend_weights():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(200, 1))
    noise = rng.normal(size=(200, 1))
    assert np.allclose(blend_weights(y, noise, y)[:, 0], [1, 0])
    assert np.allclose(blend_weights(noise, y, y)[:, 0], [0, 1])
    # two independent, equally noisy predictions: about half each, summing to one
    w = blend_weights(y + noise, y + rng.normal(size=(200, 1)), y)
    assert w.sum() == pytest.approx(1.0) and 0.3 < w[0, 0] < 0.7
    # rows the forest never left out are skipped; nothing usable: the head alone
    oob = y.copy()
    oob[:50] = np.nan
    assert np.allclose(blend_weights(noise, oob, y)[:, 0], [0, 1])
    assert np.allclose(blend_weights(noise, np.full_like(y, np.nan), y)[:, 0], [1, 0])


def forest_head(x, y, n_features: int = 4) -> TaskHead:
    fit = fit_forest(x, y)
    config = HeadConfig("regression", 1, n_features + x.shape[1], x.shape[1], standardize=True,
                        forest_trees=fit.n_trees, forest_nodes=fit.n_nodes, forest_depth=fit.depth)
    head = TaskHead(config)
    head.load_state({**head.state(), **fit.state, "blend": torch.tensor([[0.25], [0.75]])})
    return head


def test_the_head_blends_its_linear_part_with_the_forest():
    x, y = data()
    head = forest_head(x, y)
    feats = torch.randn(len(x), 4)
    extra = torch.from_numpy(x)
    with torch.no_grad():
        linear = head.linear(head.inputs(feats, extra))
        trees = forest_outputs(head.forest_state(), head.config.forest_depth, extra)
        assert torch.allclose(head(feats, extra), 0.25 * linear + 0.75 * trees)
    copy = build_head(HeadConfig(**head.config.to_dict()), head.state())
    with torch.no_grad():
        assert torch.equal(copy(feats, extra), head(feats, extra))
    assert [n for n, _ in head.named_parameters()] == ["linear.weight", "linear.bias"]  # the forest is fixed
    with pytest.raises(TrainingError, match="lacks"):
        build_head(HeadConfig(**head.config.to_dict()), {k: v for k, v in head.state().items() if k != "blend"})
    with pytest.raises(TrainingError, match="reads its descriptors or read-out"):
        HeadConfig("regression", 1, 8, 0, forest_trees=1, forest_nodes=3, forest_depth=1)
    with pytest.raises(TrainingError, match="reads one of"):
        HeadConfig("regression", 1, 8, 0, forest_input="tokens")


def test_a_forest_on_the_read_out_reads_the_features_as_they_come():
    """The pure tag's forest: it reads the head's read-out features before standardisation, not descriptors."""
    x, y = data()
    fit = fit_forest(x, y, features=1 / 3)
    config = HeadConfig("regression", 1, x.shape[1], 0, standardize=True, forest_trees=fit.n_trees,
                        forest_nodes=fit.n_nodes, forest_depth=fit.depth, forest_input="readout")
    head = TaskHead(config)
    head.fit_scaling(torch.from_numpy(x))
    head.load_state({**head.state(), **fit.state, "blend": torch.tensor([[0.4], [0.6]])})
    feats = torch.from_numpy(x[:30])
    with torch.no_grad():
        linear = head.linear(head.inputs(feats))
        trees = forest_outputs(head.forest_state(), head.config.forest_depth, feats)
        assert torch.allclose(head(feats), 0.4 * linear + 0.6 * trees)
    twin = RandomForestRegressor(n_estimators=100, min_samples_leaf=min_leaf(len(x)), max_features=1 / 3,
                                 random_state=0).fit(x, y[:, 0])
    assert np.allclose(trees[:, 0].numpy(), twin.predict(x[:30]), atol=1e-5)
    assert forest_shapes(config)["forest_fill"] == (x.shape[1],)
    feats.requires_grad_(True)
    head(feats).sum().backward()  # the gradient reaches the features through the linear part only
    assert torch.allclose(feats.grad, (0.4 * head.linear.weight[0] / head.x_std).expand_as(feats), atol=1e-5)


def test_config_refuses_a_forest_where_it_cannot_work():
    slots = [SlotSpec("smiles", "smiles")]
    FunctionTagConfig(name="F", slots=slots, labels=["y"], forest=True)
    FunctionTagConfig(name="F", slots=slots, labels=["y"], forest=True, features="none")
    for kwargs, words in (({"task": "classification"}, "regression"),
                          ({"layers": "stack"}, "stack"),
                          ({"ridge_warm_start": False}, "ridge warm start")):
        with pytest.raises(TrainingError, match="random forest blend cannot be used here"):
            try:
                FunctionTagConfig(name="F", slots=slots, labels=["y"], forest=True, **kwargs)
            except TrainingError as err:
                assert words in str(err)
                raise


@pytest.fixture(scope="module")
def trained(tiny_backbones):
    bb = tiny_backbones["llama"]
    frame = small_frame(20)  # 100 molecules, labels = heavy atoms
    cfg = smiles_cfg("Heavy", features="descriptors", forest=True, valid_fraction=VALID_FRACTION, batch_size=8)
    return bb, frame, train_function_tag(bb, None, cfg, frame, save=False)


def test_a_tag_trained_with_a_forest_predicts_as_it_validated(trained, library_factory):
    bb, frame, res = trained
    card = res.tag.card
    assert card.head["forest_nodes"] > 0 and card.head["forest_trees"] == 100
    blend = card.training["forest"]
    assert sum(blend["weights"][0]) == pytest.approx(1.0, abs=1e-3) and blend["nodes"] == card.head["forest_nodes"]
    lib = library_factory(bb)
    lib.save(res.tag)
    tag = lib.get("Heavy")  # read back from the file: the schema accepts it
    assert torch.equal(tag.head_state["forest_left"], res.tag.head_state["forest_left"])
    rows = valid_rows(frame)
    np.testing.assert_allclose(predict_values(bb, tag, rows, lib), res.valid_pred, rtol=1e-4, atol=1e-4)
    # the blend is what predicts: the forest's share moves every prediction by its weight
    head_only = load_tag_file(lib.find("Heavy").path)
    head_only.head_state["blend"] = torch.tensor([[1.0], [0.0]])
    forest_only = load_tag_file(lib.find("Heavy").path)
    forest_only.head_state["blend"] = torch.tensor([[0.0], [1.0]])
    w_head, w_forest = blend["weights"][0]
    mixed = w_head * predict_values(bb, head_only, rows, lib) + w_forest * predict_values(bb, forest_only, rows, lib)
    np.testing.assert_allclose(mixed, res.valid_pred, rtol=1e-3, atol=1e-3)


def test_a_forest_tag_file_round_trips(trained, tmp_path):
    _, _, res = trained
    path = tmp_path / "Heavy.tag.safetensors"
    save_tag_file(res.tag, path)
    back = load_tag_file(path)
    assert set(back.head_state) == set(res.tag.head_state)
    assert all(torch.equal(back.head_state[k], v) for k, v in res.tag.head_state.items())


def test_a_tampered_forest_is_refused(trained, tmp_path):
    _, _, res = trained
    path = tmp_path / "Heavy.tag.safetensors"
    for key, value, words in (("forest_left", 10 ** 6, "forest_left"), ("forest_feature", 0.5, "forest_feature"),
                              ("blend", -0.5, "negative weight")):
        tag = load_tag_file(_saved(res.tag, tmp_path))
        tag.head_state[key] = tag.head_state[key].clone()
        tag.head_state[key].view(-1)[0] = value
        save_tag_file(tag, path)
        with pytest.raises(TagFormatError, match=words):
            load_tag_file(path)


def _saved(tag, folder):
    path = folder / "original.tag.safetensors"
    if not path.exists():
        save_tag_file(tag, path)
    return path


def test_by_default_the_forest_blends_in_wherever_it_applies():
    slots = [SlotSpec("smiles", "smiles")]
    make = lambda **kw: FunctionTagConfig(name="F", slots=slots, labels=["y"], **kw)  # noqa: E731
    assert make().forest is None and make().blends_forest and make().forest_input == "descriptors"
    assert make(forest=False).blends_forest is False
    for kw in ({"task": "classification"}, {"layers": "stack"}):
        assert make(**kw).blends_forest is False, kw
    assert make(spellings=1).blends_forest  # grown on the canonical SMILES, read on every spelling
    pure = make(features="none")
    assert pure.blends_forest and pure.forest_input == "readout"  # the pure tag's forest reads the tag
    text = FunctionTagConfig(name="F", slots=[SlotSpec("note", "text")], labels=["y"])
    assert text.blends_forest and text.forest_input == "readout"  # text has no descriptors to grow trees on
    both = FunctionTagConfig(name="F", slots=[SlotSpec("note", "text"), SlotSpec("seq", "protein")], labels=["y"])
    assert both.blends_forest and both.forest_input == "descriptors"
    with pytest.raises(TrainingError, match="true, false"):
        make(forest="yes")


def test_a_tag_without_the_forest_has_the_plain_head(tiny_backbones):
    bb = tiny_backbones["llama"]
    cfg = smiles_cfg("Plain", features="descriptors", forest=False, valid_fraction=VALID_FRACTION, epochs=0)
    res = train_function_tag(bb, None, cfg, small_frame(8), save=False)
    assert not res.tag.card.head.get("forest_nodes") and "forest" not in res.tag.card.training
    assert not any(k.startswith("forest") for k in res.tag.head_state)


def test_a_forest_for_several_outputs():
    x, y = data()
    y2 = np.concatenate([y, -2 * y + x[:, :1]], 1)
    fit = fit_forest(x, y2)
    twin = RandomForestRegressor(n_estimators=100, min_samples_leaf=min_leaf(len(x)), random_state=0).fit(x, y2)
    got = forest_outputs(fit.state, fit.depth, torch.from_numpy(x[:40])).numpy()
    assert got.shape == (40, 2) and np.allclose(got, twin.predict(x[:40]), atol=1e-5)
    assert fit.oob.shape == (len(x), 2) and blend_weights(y2, fit.oob, y2).shape == (2, 2)


@pytest.fixture(scope="module")
def trained_pure(tiny_backbones):
    bb = tiny_backbones["llama"]
    cfg = smiles_cfg("PureHeavy", features="none", valid_fraction=VALID_FRACTION, batch_size=8, epochs=1)
    return bb, train_function_tag(bb, None, cfg, small_frame(20), save=False)


def test_a_pure_tag_blends_a_forest_on_its_read_out_by_default(trained_pure, library_factory):
    bb, res = trained_pure
    card = res.tag.card
    assert card.features == "none" and card.head["n_extra"] == 0
    assert card.head["forest_input"] == "readout" and card.training["forest"]["reads"] == "readout"
    # its trees split on the read-out columns: the tag position's and the input mean's states
    assert len(res.tag.head_state["forest_fill"]) == card.head["in_dim"]
    assert int(res.tag.head_state["forest_feature"].max()) < card.head["in_dim"]
    lib = library_factory(bb)
    lib.save(res.tag)
    tag = lib.get("PureHeavy")  # read back from the file: the schema accepts it
    frame = small_frame(20)
    np.testing.assert_allclose(predict_values(bb, tag, valid_rows(frame), lib), res.valid_pred, rtol=1e-3, atol=1e-3)


def test_a_tampered_read_out_forest_is_refused(trained_pure, tmp_path):
    _, res = trained_pure
    path = tmp_path / "PureHeavy.tag.safetensors"
    tag = load_tag_file(_saved(res.tag, tmp_path))
    tag.head_state["forest_feature"] = tag.head_state["forest_feature"].clone()
    tag.head_state["forest_feature"].view(-1)[0] = tag.card.head["in_dim"]  # one column past the read-out
    save_tag_file(tag, path)
    with pytest.raises(TagFormatError, match="forest_feature"):
        load_tag_file(path)
    tag = load_tag_file(_saved(res.tag, tmp_path))
    tag.card.head["forest_input"] = "tokens"
    save_tag_file(tag, path)
    with pytest.raises(TagFormatError, match="forest_input"):
        load_tag_file(path)


def test_a_text_tag_blends_a_forest_on_its_read_out(tiny_backbones, library_factory):
    """Text inputs have no descriptors: with the default settings the forest reads the tag's read-out, and the
    card says the head reads no descriptors (it once said "descriptors", which its own file check refused)."""
    bb = tiny_backbones["llama"]
    frame = small_frame(8)
    cfg = smiles_cfg("NoteHeavy", slots=[SlotSpec("smiles", "text", None)], features="descriptors",
                     valid_fraction=VALID_FRACTION, epochs=0)
    res = train_function_tag(bb, None, cfg, frame, save=False)
    card = res.tag.card
    assert card.head["n_extra"] == 0 and card.head["forest_input"] == "readout" and card.head["forest_nodes"] > 0
    assert card.features == "none" and card.training["config"]["features"] == "descriptors"
    lib = library_factory(bb)
    lib.save(res.tag)
    got = predict_values(bb, lib.get("NoteHeavy"), valid_rows(frame), lib)
    np.testing.assert_allclose(got, res.valid_pred, rtol=1e-3, atol=1e-3)

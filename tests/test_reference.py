"""Reference-set percentiles (issue 10 item 3): the shipped sample, the stored distribution, the
percentile columns, the CLI's ``tags add-reference`` and the schema of the new tensor."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tagllm_core.exceptions import InputError, TagFormatError, TagLLMError
from tagllm_core.prediction import Predictor, results_frame
from tagllm_core.reference import (
    REFERENCE_FILE,
    REFERENCE_VERSION,
    ReferenceDistribution,
    attach_reference,
    load_reference_smiles,
    percentile,
    percentiles,
    reference_problem,
)
from tagllm_core.tags import load_tag_file, save_tag_file

from conftest import make_function_tag
from test_app import tiny_app, tiny_backbone_dir  # noqa: F401 (fixtures, injected by name)
from test_cli import env, folder_backbone, library, run_cli  # noqa: F401 (fixtures, injected by name)

# Nine molecules the predictor reads (one a salt it strips) and one it refuses: a reference set in miniature.
SMALL_SET = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1", "CCN.Cl", "CCCCCCCC", "O=C(O)c1ccccc1",
             "c1ccncc1", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "bad(", "COc1ccccc1"]


@pytest.fixture
def small_set(tmp_path):
    path = tmp_path / "ref.smi"
    path.write_text("smiles\n" + "\n".join(SMALL_SET) + "\n", encoding="utf-8")
    return path


def _single(backbone, **kw):
    return make_function_tag(backbone, slots=(("smiles", "smiles", None),), **kw)


# --------------------------------------------------------------------------- the shipped sample


def test_the_shipped_sample_is_2000_molecules_with_its_licence_and_provenance():
    smiles = load_reference_smiles()
    assert len(smiles) == 2000 and len(set(smiles)) == 2000
    licence = (REFERENCE_FILE.parent / "LICENSE-MOSES.txt").read_text()
    assert "Insilico Medicine" in licence and "Permission is hereby granted" in licence
    digest = hashlib.sha256(REFERENCE_FILE.read_bytes()).hexdigest()
    assert digest in (REFERENCE_FILE.parent / "README.md").read_text()  # the README states the file it describes


@pytest.mark.skipif(importlib.util.find_spec("moses") is None, reason="needs molsets (the MOSES corpus)")
def test_the_draw_script_reproduces_the_shipped_sample():
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "bench"))
    try:
        from make_reference_sample import draw
    finally:
        sys.path.remove(str(REPO / "bench"))
    assert draw(2000, 0) == load_reference_smiles()


# --------------------------------------------------------------------------- percentile


def test_percentile_is_the_share_at_or_below_on_a_known_distribution():
    dist = np.array([1.0, 2.0, 3.0, 4.0])
    assert percentile(2.5, dist) == 50.0
    assert percentile(2.0, dist) == 50.0  # ties count as at or below
    assert percentile(0.0, dist) == 0.0 and percentile(4.0, dist) == 100.0 and percentile(9.0, dist) == 100.0
    assert percentile(1.0, np.arange(3.0)) == 66.7  # one decimal
    for unknown in (None, math.nan, math.inf, "3", True):
        assert percentile(unknown, dist) is None
    assert percentile(1.0, np.array([])) is None
    # the training-label helper the UI used before: unsorted sample, None and NaN ignored
    assert percentiles([2.5, None, 0.0], [4.0, None, 1.0, math.nan, 3.0, 2.0]) == [50.0, None, 0.0]


# --------------------------------------------------------------------------- attach, save, reload, predict


def test_attach_save_reload_and_the_percentile_columns(llama, small_set, tmp_path):
    tag = _single(llama, interval={"level": 0.9, "halfwidth": [1.0]})
    assert reference_problem(tag.card) is None
    events = []
    assert attach_reference(tag, llama, path=small_set, batch_size=4, progress=events.append) is tag
    entry = tag.card.reference_set
    assert entry["n"] == 9 and entry["n_skipped"] == 1 and entry["n_outputs"] == 1  # "bad(" skipped, counted
    assert entry["version"] == REFERENCE_VERSION
    assert entry["sha256"] == hashlib.sha256(small_set.read_bytes()).hexdigest()
    assert events and events[-1].stage == "reference" and events[-1].step == events[-1].total_steps == 9
    # the stored values are the CLI's own predictions of the set, sorted
    alone = Predictor(llama, tag).predict([{"smiles": s} for s in SMALL_SET])
    expected = sorted(r.prediction for r in alone if r.ok)
    np.testing.assert_allclose(tag.reference_predictions[:, 0].numpy(), expected, rtol=1e-5)

    save_tag_file(tag, tmp_path / "t.tag.safetensors")
    back = load_tag_file(tmp_path / "t.tag.safetensors")
    assert back.card.reference_set == entry
    dist = ReferenceDistribution.from_tag(back)
    assert dist.n == 9 and dist.n_skipped == 1
    np.testing.assert_array_equal(dist.column(0), tag.reference_predictions[:, 0].numpy())

    rows = [{"smiles": "CCO"}, {"smiles": "C1CC(C"}, {"smiles": "c1ccccc1N"}]
    res = Predictor(llama, back).predict(rows)
    for r in (res[0], res[2]):
        assert r.reference_percentile == percentile(r.prediction, dist.column(0))
        assert r.label_percentile == percentiles([r.prediction], back.card.label_sample)[0]
    # The share of the set at or below the prediction. CCO is in the set, and its prediction in another
    # batch may differ from the stored one in the last float bits (seen on an AVX-512 CPU), so a value
    # within 1e-5 of it may count either way; any other value must fall on its side.
    p0 = res[0].prediction
    below, tied = sum(v < p0 - 1e-5 for v in expected), sum(abs(v - p0) <= 1e-5 for v in expected)
    assert 100 * below / 9 - 0.05 <= res[0].reference_percentile <= 100 * (below + tied) / 9 + 0.05
    frame = results_frame(res)
    cols = list(frame.columns)
    # after what a screener reads first (prediction, interval, domain, error)
    assert cols[cols.index("error") + 1: cols.index("error") + 3] == ["label_percentile", "reference_percentile"]
    out = tmp_path / "o.csv"
    frame.to_csv(out, index=False)
    csv = pd.read_csv(out, keep_default_na=False)
    assert csv["reference_percentile"][1] == "" and csv["label_percentile"][1] == ""  # the failed row: blank
    assert float(csv["reference_percentile"][0]) == res[0].reference_percentile


def test_an_older_tag_without_a_distribution_loads_and_shows_a_blank_percentile(llama, tmp_path):
    tag = _single(llama)
    save_tag_file(tag, tmp_path / "old.tag.safetensors")
    with safe_open(str(tmp_path / "old.tag.safetensors"), framework="pt") as f:
        assert "reference.predictions" not in f.keys()
        assert "reference_set" in json.loads(f.metadata()["card"])  # written empty by this version…
    back = load_tag_file(tmp_path / "old.tag.safetensors")
    assert back.reference_predictions is None and ReferenceDistribution.from_tag(back) is None
    frame = results_frame(Predictor(llama, back).predict([{"smiles": "CCO"}]))
    assert math.isnan(frame["reference_percentile"][0])
    assert frame["label_percentile"][0] == frame["label_percentile"][0]  # its training labels still give one
    # …and a card written before the field existed has none at all
    _rewrite(tmp_path / "old.tag.safetensors", card=lambda c: c.pop("reference_set"))
    assert load_tag_file(tmp_path / "old.tag.safetensors").card.reference_set == {}


def test_a_two_input_tag_gets_no_reference_and_a_blank_column(llama):
    tag = make_function_tag(llama, slots=(("sequence", "protein", None), ("smiles", "smiles", None)))
    problem = reference_problem(tag.card)
    assert "protein" in problem and "2,000 passes per protein" in problem
    with pytest.raises(InputError, match="protein"):
        attach_reference(tag, llama)
    res = Predictor(llama, tag).predict([{"sequence": "MKTAYIAKQR", "smiles": "CCO"}])
    assert res[0].ok and res[0].reference_percentile is None
    assert math.isnan(results_frame(res)["reference_percentile"][0])


def test_classification_compares_the_predicted_class_probability_and_zero_shot_is_blank(llama, small_set):
    tag = make_function_tag(llama, task="classification", n_outputs=2, classes=["no", "yes"])
    attach_reference(tag, llama, path=small_set)
    assert tuple(tag.reference_predictions.shape) == (9, 2)
    dist = ReferenceDistribution.from_tag(tag)
    row = Predictor(llama, tag).predict([{"smiles": "CCO"}])[0]
    k = ["no", "yes"].index(row.prediction)
    assert row.reference_percentile == percentile(row.outputs[k], dist.column(k))
    assert row.label_percentile is None  # training labels of a classification tag are classes
    # a swapped domain tag is another model than the one the reference set was predicted with
    swapped = Predictor(llama, tag, domain_overrides={"smiles": None}).predict([{"smiles": "CCO"}])[0]
    assert swapped.zero_shot and swapped.reference_percentile is None


def test_multi_table_has_each_tags_percentiles(llama, small_set):
    from tagllm_core.multi import predict_many

    with_ref = attach_reference(_single(llama, name="A"), llama, path=small_set)
    frame = predict_many(llama, [with_ref, _single(llama, name="B", seed=2)], [{"smiles": "CCO"}])
    cols = list(frame.columns)
    # after the error column, each tag's pair in the tags' order
    assert cols[cols.index("error") + 1: cols.index("error") + 5] == [
        "A label_percentile", "A reference_percentile", "B label_percentile", "B reference_percentile"]
    assert 0 <= frame["A reference_percentile"][0] <= 100 and math.isnan(frame["B reference_percentile"][0])


# --------------------------------------------------------------------------- CLI


def test_cli_add_reference_stores_the_distribution_in_a_user_tag(env, capsys, library, folder_backbone):  # noqa: F811
    library.save(_single(folder_backbone, name="LogP"))
    code, out, err = run_cli(capsys, "tags", "add-reference", "LogP", "--rows", "6", "--quiet")
    assert code == 0, err
    assert "6 reference molecules" in out
    tag = library.get("LogP")
    assert tag.card.reference_set["n"] + tag.card.reference_set["n_skipped"] == 6
    assert tag.reference_predictions.shape[0] == tag.card.reference_set["n"]
    assert tag.card.reference_set["sha256"] == hashlib.sha256(REFERENCE_FILE.read_bytes()).hexdigest()


def test_cli_add_reference_refuses_a_bundled_tag_and_a_protein_tag(env, capsys, library, folder_backbone,  # noqa: F811
                                                                  tmp_path, monkeypatch):
    import tagllm_core.tags as tags_module

    bundled = tmp_path / "bundled"
    monkeypatch.setattr(tags_module, "BUNDLED_TAGS_DIR", bundled)
    save_tag_file(_single(folder_backbone, name="Shipped"),
                  bundled / folder_backbone.fingerprint.slug / "Shipped.tag.safetensors")
    before = (bundled / folder_backbone.fingerprint.slug / "Shipped.tag.safetensors").read_bytes()
    code, out, err = run_cli(capsys, "tags", "add-reference", "Shipped", "--rows", "3", "--quiet")
    assert code == 2 and "bundled with the app and read-only" in err
    assert (bundled / folder_backbone.fingerprint.slug / "Shipped.tag.safetensors").read_bytes() == before

    library.save(make_function_tag(folder_backbone, name="Aff",
                                   slots=(("sequence", "protein", None), ("smiles", "smiles", None))))
    code, out, err = run_cli(capsys, "tags", "add-reference", "Aff", "--quiet")
    assert code == 2 and "protein" in err


# --------------------------------------------------------------------------- schema


def _rewrite(path, tensors=None, card=None):
    """Rewrite a tag file with its tensors and card changed in place by the callables given."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        data = {k: f.get_tensor(k) for k in f.keys()}
    c = json.loads(meta["card"])
    if tensors:
        tensors(data)
    if card:
        card(c)
    save_file(data, str(path), metadata={**meta, "card": json.dumps(c)})


@pytest.fixture
def with_reference(llama, tmp_path):
    tag = _single(llama)
    tag.card.reference_set = {"name": "toy", "version": 1, "n": 4, "n_outputs": 1, "n_skipped": 0, "sha256": "ab"}
    tag.reference_predictions = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    path = tmp_path / "ref.tag.safetensors"
    save_tag_file(tag, path)
    assert ReferenceDistribution.from_tag(load_tag_file(path)).n == 4
    return path


@pytest.mark.parametrize("tensors,card,message", [
    (lambda d: d.__setitem__("reference.predictions", torch.zeros(3, 1)), None, r"has shape \(3, 1\)"),
    (lambda d: d.__setitem__("reference.predictions", torch.zeros(4, 2)), None, r"has shape \(4, 2\)"),
    (lambda d: d.__setitem__("reference.predictions", torch.zeros(4)), None, r"has shape \(4,\)"),
    (lambda d: d.__setitem__("reference.predictions", torch.zeros(4, 1, dtype=torch.float64)), None, "dtype F64"),
    (lambda d: d["reference.predictions"].__setitem__((2, 0), math.nan), None, "NaN or infinity"),
    (lambda d: d["reference.predictions"].__setitem__((0, 0), -math.inf), None, "NaN or infinity"),
    (lambda d: d.pop("reference.predictions"), None, "'reference.predictions' is missing"),
    (None, lambda c: c.pop("reference_set"), "has no entry in the card's reference_set"),
    (None, lambda c: c["reference_set"].__setitem__("n_outputs", 2), "reference_set.n_outputs"),
    (None, lambda c: c["reference_set"].__setitem__("n", 0), "reference_set.n"),
    (None, lambda c: c["reference_set"].__setitem__("n", 10 ** 9), "reference_set.n"),
    (None, lambda c: c["reference_set"].__setitem__("version", "1"), "reference_set.version"),
    (None, lambda c: c["reference_set"].__setitem__("name", 7), "reference_set.name"),
    (None, lambda c: c["reference_set"].__setitem__("sha256", "XYZ"), "reference_set.sha256"),
    (None, lambda c: c.__setitem__("reference_set", [1, 2]), "'reference_set' must be a JSON object"),
])
def test_the_schema_refuses_a_bad_reference_distribution(with_reference, tensors, card, message):
    _rewrite(with_reference, tensors, card)
    with pytest.raises(TagFormatError, match=message):
        load_tag_file(with_reference)


def test_save_refuses_a_non_finite_distribution(llama, tmp_path):
    tag = _single(llama)
    tag.card.reference_set = {"name": "toy", "version": 1, "n": 2, "n_outputs": 1}
    tag.reference_predictions = torch.tensor([[1.0], [math.nan]])
    with pytest.raises(TagFormatError, match="reference.predictions"):
        save_tag_file(tag, tmp_path / "x.tag.safetensors")


def test_a_domain_tag_may_not_declare_a_reference_set(llama, tmp_path):
    from conftest import make_domain_tag

    tag = make_domain_tag(llama)
    path = tmp_path / "d.tag.safetensors"
    save_tag_file(tag, path)
    _rewrite(path, card=lambda c: c.__setitem__("reference_set", {"name": "toy", "version": 1, "n": 1,
                                                                    "n_outputs": 1}))
    with pytest.raises(TagFormatError, match="reference_set"):
        load_tag_file(path)


# --------------------------------------------------------------------------- UI helpers


def test_reference_histogram_and_card_line(llama, small_set):
    from ui import cards, charts

    tag = attach_reference(_single(llama), llama, path=small_set)
    assert "9 molecules predicted, 1 could not be predicted" in cards.reference_line(tag.card)
    assert "add-reference" in cards.reference_line(_single(llama).card)
    fig = charts.reference_histogram(tag.reference_predictions.numpy(), "y", "toy", tag.card.label_sample)
    assert [t.name for t in fig.data] == ["training labels", "reference molecules (predicted)"]
    fig = charts.reference_histogram(np.array([[0.2, 0.8], [0.6, 0.4]]), "y", "toy", classes=["no", "yes"])
    assert [t.name for t in fig.data] == ["p(no)", "p(yes)"]


def test_an_unusable_reference_file_is_a_clear_error(llama, tmp_path):
    with pytest.raises(TagLLMError, match="missing"):
        attach_reference(_single(llama), llama, path=tmp_path / "nope.smi")
    bad = tmp_path / "bad.smi"
    bad.write_text("smiles\nbad(\nxx\n")
    with pytest.raises(InputError, match="none of the 2 reference molecules"):
        attach_reference(_single(llama), llama, path=bad)


# --------------------------------------------------------------------------- the app


def test_app_shows_the_reference_percentile_and_the_library_its_histogram(tiny_app, small_set):  # noqa: F811
    from test_app import new_app, texts

    bb, lib = tiny_app
    lib.save(attach_reference(lib.get("Solubility"), bb, path=small_set), overwrite=True)
    at = new_app("pages/library.py")
    assert "Reference set" in texts(at.markdown) and "9 molecules predicted" in texts(at.markdown)
    assert any("over the reference set" in chart.proto.spec for chart in at.get("plotly_chart"))

    at = new_app("pages/predict.py")
    at.text_area(key="paste::smiles").input("CCO\nc1ccccc1O").run()
    at.button(key="predict_button").click().run()
    assert not at.exception
    frame = at.session_state["prediction"].frame
    assert frame["reference_percentile"].between(0, 100).all() and frame["label_percentile"].notna().all()
    assert "Percentile in reference set" in [m.label for m in at.metric]

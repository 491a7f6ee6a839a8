"""Batched prediction on tiny backbones: row errors, determinism, batch independence,
classification, intervals, zero-shot domain swaps, refusals and progress."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tagllm_core.exceptions import BackboneMismatchError, TagLLMError, TemplateError
from tagllm_core.prediction import PredictionRow, Predictor, predict, rows_from_columns

from conftest import make_domain_tag, make_function_tag  # noqa: E402

SMILES = ["CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "O", "CCN(CC)CC", "C1CCCCC1", "OC(=O)CCC(=O)O",
          "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "N#N", "CCCCCCCCCCCCCCCC", "c1ccc2ccccc2c1", "CS(C)=O"]
PROTEINS = ["MKTAYIAKQR", "GSHMLEDPV", "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHF", "AC", "WWWWYYYY"]


def _values(results):
    return [r.prediction for r in results]


# --- row errors -------------------------------------------------------------------------------


def test_bad_row_in_the_middle(backbone):
    tag = make_function_tag(backbone)
    rows = [{"smiles": "CCO"}, {"smiles": "c1ccccc1"}, {"smiles": "C1CC"}, {"smiles": "OCC"}, {"smiles": "CN"}]
    res = Predictor(backbone, tag).predict(rows, batch_size=2)
    assert [r.row for r in res] == [1, 2, 3, 4, 5]
    assert [r.ok for r in res] == [True, True, False, True, True]
    bad = res[2]
    assert bad.error.startswith("row 3") and "C1CC" in bad.error and "smiles" in bad.error
    assert bad.prediction is None and bad.outputs is None
    assert bad.inputs == {"smiles": "C1CC"}
    for r in res[:2] + res[3:]:
        assert isinstance(r.prediction, float) and math.isfinite(r.prediction)
        assert r.outputs == [r.prediction]
    # OCC is canonicalised to CCO, so rows 1 and 4 are the same molecule
    assert res[0].prediction == pytest.approx(res[3].prediction, abs=1e-6)
    assert res[0].prediction != pytest.approx(res[1].prediction, abs=1e-6)


def test_many_kinds_of_bad_rows(llama):
    tag = make_function_tag(llama)
    rows = [{"smiles": "CCO"}, {"smiles": ""}, {"smiles": float("nan")}, {"smiles": "C(C)(C)(C)(C)C"},
            {"other": "CCO"}, {"smiles": "CCO ethanol"}]
    res = Predictor(llama, tag).predict(rows)
    assert [r.ok for r in res] == [True, False, False, False, False, True]
    assert "row 2" in res[1].error and "empty" in res[1].error
    assert "row 3" in res[2].error
    assert "row 4" in res[3].error and "valence" in res[3].error.lower()
    assert res[4].error == "row 5: no value for input 'smiles'"
    assert res[5].prediction == pytest.approx(res[0].prediction, abs=1e-6)


def test_missing_slot_key_is_a_per_row_error(backbone):
    tag = make_function_tag(backbone, slots=(("sequence", "protein", "Protein"), ("smiles", "smiles", "SMILES")))
    rows = [{"sequence": "MKTAY", "smiles": "CCO"}, {"sequence": "MKTAY"}, {"smiles": "CCO"},
            {"sequence": "MKTAY", "smiles": "CCO", "extra": "ignored"}]
    res = Predictor(backbone, tag).predict(rows)
    assert [r.ok for r in res] == [True, False, False, True]
    assert "row 2" in res[1].error and "'smiles'" in res[1].error
    assert "row 3" in res[2].error and "'sequence'" in res[2].error
    assert res[0].prediction == pytest.approx(res[3].prediction, abs=1e-6)


def test_all_rows_bad_or_no_rows(llama):
    p = Predictor(llama, make_function_tag(llama))
    assert p.predict([]) == []
    res = p.predict([{"smiles": "xx"}, {"smiles": "yy"}])
    assert [r.ok for r in res] == [False, False]


# --- determinism and batch independence ---------------------------------------------------------------


def test_deterministic(backbone):
    tag = make_function_tag(backbone)
    rows = [{"smiles": s} for s in SMILES]
    a = Predictor(backbone, tag).predict(rows, batch_size=4)
    b = Predictor(backbone, tag).predict(rows, batch_size=4)
    assert _values(a) == _values(b)
    assert len(set(_values(a))) == len(rows)  # distinct molecules, distinct predictions


@pytest.mark.parametrize("readout", ["last", "last+mean", "mean"])
def test_single_row_equals_row_inside_a_batch_of_32(backbone, readout):
    tag = make_function_tag(backbone, readout=readout)
    rows = [{"smiles": s} for s in SMILES + ["C" * k + "O" for k in range(1, 21)]]
    assert len(rows) == 32
    pred = Predictor(backbone, tag)
    batched = pred.predict(rows, batch_size=32)
    assert all(r.ok for r in batched)
    for i in (0, 7, 13, 31):
        alone = pred.predict([rows[i]])[0]
        assert alone.prediction == pytest.approx(batched[i].prediction, abs=1e-5)
    small = pred.predict(rows, batch_size=3, max_batch_tokens=10_000)
    np.testing.assert_allclose(_values(small), _values(batched), atol=1e-5)


def test_output_order_is_input_order_despite_length_sorting(llama):
    tag = make_function_tag(llama)
    rows = [{"smiles": s} for s in SMILES]
    pred = Predictor(llama, tag)
    together = pred.predict(rows, batch_size=5)
    one_by_one = [pred.predict([r])[0].prediction for r in rows]
    np.testing.assert_allclose(_values(together), one_by_one, atol=1e-5)
    assert [r.inputs for r in together] == rows


def test_protein_and_smiles_pair(backbone):
    tag = make_function_tag(backbone, "Affinity",
                            slots=(("sequence", "protein", "Protein"), ("smiles", "smiles", "SMILES")))
    rows = [{"sequence": p, "smiles": s} for p, s in zip(PROTEINS, SMILES)]
    res = Predictor(backbone, tag).predict(rows, batch_size=8)
    assert all(r.ok for r in res)
    alone = Predictor(backbone, tag).predict(rows[2:3])[0]
    assert alone.prediction == pytest.approx(res[2].prediction, abs=1e-5)


def test_many_proteins_each_against_many_drugs_equal_rows_predicted_alone(backbone, monkeypatch):
    """Rows are grouped by protein and each protein's states are computed once per group."""
    from tagllm_core import prediction

    tag = make_function_tag(backbone, "Affinity",
                            slots=(("sequence", "protein", "Protein"), ("smiles", "smiles", "SMILES")))
    rows = [{"sequence": p, "smiles": s} for p in PROTEINS[:3] for s in SMILES[:4]]
    rows.insert(5, {"sequence": PROTEINS[1], "smiles": "not a smiles"})
    lengths = []
    original = prediction.shared_prefix
    monkeypatch.setattr(prediction, "shared_prefix", lambda m, plan, n: lengths.append(n) or original(m, plan, n))
    res = Predictor(backbone, tag).predict(rows, batch_size=3)
    assert [r.ok for r in res].count(False) == 1 and not res[5].ok
    # one shared prefix per protein, each covering that protein's residues
    assert len(lengths) == 3 and all(n > len(p) for n, p in zip(lengths, PROTEINS))
    for i in (0, 6, 12):
        alone = Predictor(backbone, tag).predict(rows[i:i + 1])[0]
        assert alone.prediction == pytest.approx(res[i].prediction, abs=1e-5)


def test_huge_protein_row_is_cropped_with_warning(backbone):
    tag = make_function_tag(backbone, "Stab", slots=(("seq", "protein", "Protein"),), readout="last+mean")
    res = Predictor(backbone, tag).predict([{"seq": "MKTAYIAKQR" * 10_000}, {"seq": "mktay"}])
    assert res[0].ok and math.isfinite(res[0].prediction)
    assert any("cropped" in w and w.startswith("seq:") for w in res[0].warnings)
    assert res[1].ok and res[1].warnings == []


def test_rare_residue_warning_is_passed_on(llama):
    tag = make_function_tag(llama, "Stab", slots=(("seq", "protein", "Protein"),))
    res = Predictor(llama, tag).predict([{"seq": "MKXTAY"}])[0]
    assert res.ok and res.warnings == ["seq: 1 × X (unknown residue)"]


def test_bf16_backbone_predicts_close_to_fp32():
    from conftest import make_tiny_backbone

    fp32 = make_tiny_backbone("llama", seed=0)
    bf16 = make_tiny_backbone("llama", seed=0, dtype="bf16")
    assert bf16.fingerprint.matches(fp32.fingerprint)
    tag = make_function_tag(fp32)
    rows = [{"smiles": s} for s in SMILES[:6]]
    a = np.array(_values(Predictor(fp32, tag).predict(rows)))
    b = np.array(_values(Predictor(bf16, tag).predict(rows)))
    assert np.all(np.isfinite(b))
    np.testing.assert_allclose(b, a, atol=0.1 * np.ptp(a) + 0.05)


# --- regression scaling, intervals and classification ---------------------------------------------------


def test_regression_predictions_are_in_label_units(llama):
    a = make_function_tag(llama, label_scaling={"mean": [0.0], "std": [1.0]})
    b = make_function_tag(llama, label_scaling={"mean": [100.0], "std": [10.0]})
    rows = [{"smiles": s} for s in SMILES[:4]]
    za = np.array(_values(Predictor(llama, a).predict(rows)))
    zb = np.array(_values(Predictor(llama, b).predict(rows)))
    np.testing.assert_allclose(zb, za * 10 + 100, rtol=1e-6, atol=1e-4)


def test_multi_output_regression(llama):
    tag = make_function_tag(llama, n_outputs=3, label_scaling={"mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0]})
    r = Predictor(llama, tag).predict([{"smiles": "CCO"}])[0]
    assert len(r.outputs) == 3 and r.prediction == r.outputs[0]


def test_interval_card_gives_lower_and_upper(backbone):
    tag = make_function_tag(backbone, interval={"level": 0.9, "halfwidth": [0.75]})
    res = Predictor(backbone, tag).predict([{"smiles": "CCO"}, {"smiles": "bad("}])
    r = res[0]
    assert r.lower == pytest.approx(r.prediction - 0.75) and r.upper == pytest.approx(r.prediction + 0.75)
    assert res[1].lower is None and res[1].upper is None
    plain = Predictor(backbone, make_function_tag(backbone)).predict([{"smiles": "CCO"}])[0]
    assert plain.lower is None and plain.upper is None


@pytest.mark.parametrize("classes", [["inactive", "active"], ["low", "mid", "high"], []])
def test_classification(backbone, classes):
    n = len(classes) or 4
    tag = make_function_tag(backbone, "Tox", task="classification", n_outputs=n, classes=classes)
    res = Predictor(backbone, tag).predict([{"smiles": s} for s in SMILES[:6]])
    labels = set()
    for r in res:
        assert r.ok and len(r.outputs) == n
        assert sum(r.outputs) == pytest.approx(1.0, abs=1e-6)
        assert all(0.0 <= p <= 1.0 for p in r.outputs)
        expected = classes[int(np.argmax(r.outputs))] if classes else int(np.argmax(r.outputs))
        assert r.prediction == expected
        assert r.lower is None and r.upper is None
        labels.add(r.prediction)
    # probabilities follow the head: a softmax of its logits
    pred = Predictor(backbone, tag)
    with torch.inference_mode():
        logits = pred.model([pred.model.plan({"smiles": "CCO"})])[0]
    np.testing.assert_allclose(res[0].outputs, torch.softmax(logits, 0).numpy(), atol=1e-6)


def test_classification_with_huge_logits_stays_finite(llama):
    tag = make_function_tag(llama, "Tox", task="classification", n_outputs=2, classes=["a", "b"])
    tag.head_state["weight"] = tag.head_state["weight"] * 1e4
    r = Predictor(llama, tag).predict([{"smiles": "CCO"}])[0]
    assert r.ok and all(math.isfinite(p) for p in r.outputs) and sum(r.outputs) == pytest.approx(1.0)


def test_non_finite_output_is_a_row_error(llama):
    tag = make_function_tag(llama)
    tag.head_state["bias"] = torch.tensor([float("inf")])
    r = Predictor(llama, tag).predict([{"smiles": "CCO"}])[0]
    assert not r.ok and "row 1" in r.error and "non-finite" in r.error


# --- zero-shot domain swaps ----------------------------------------------------------------------


def test_multi_output_intervals_are_per_output(backbone):
    tag = make_function_tag(backbone, n_outputs=2, label_scaling={"mean": [1.0, 2.0], "std": [1.0, 1.0]},
                            interval={"level": 0.9, "halfwidth": [0.5, 2.0]})
    r = Predictor(backbone, tag).predict([{"smiles": "CCO"}])[0]
    assert r.interval_calibrated is True
    assert r.lowers == pytest.approx([r.outputs[0] - 0.5, r.outputs[1] - 2.0])
    assert r.uppers == pytest.approx([r.outputs[0] + 0.5, r.outputs[1] + 2.0])
    assert (r.lower, r.upper) == (r.lowers[0], r.uppers[0])


def test_zero_shot_intervals_are_marked_uncalibrated(backbone):
    """The half-width was calibrated with the trained domain tags; after a swap it is a guess."""
    tag = make_function_tag(backbone, interval={"level": 0.9, "halfwidth": [0.75]})
    normal = Predictor(backbone, tag).predict([{"smiles": "CCO"}])[0]
    assert normal.interval_calibrated is True
    swapped = Predictor(backbone, tag, domain_overrides={"smiles": None}).predict([{"smiles": "CCO"}])[0]
    assert swapped.zero_shot and swapped.lower is not None and swapped.interval_calibrated is False
    assert any("not calibrated" in f for f in swapped.flags) and not any("not calibrated" in f for f in normal.flags)
    plain = Predictor(backbone, make_function_tag(backbone)).predict([{"smiles": "CCO"}])[0]
    assert plain.interval_calibrated is None  # no interval at all


def test_zero_shot_domain_swap_via_library(backbone, library_factory):
    lib = library_factory(backbone)
    lib.save(make_domain_tag(backbone, "SMILES2", "smiles", n_tokens=4, seed=42))
    tag = make_function_tag(backbone)
    rows = [{"smiles": s} for s in SMILES[:3]]
    normal = Predictor(backbone, tag).predict(rows)
    assert not any(r.zero_shot for r in normal)
    swapped_pred = Predictor(backbone, tag, library=lib, domain_overrides={"smiles": "SMILES2"})
    assert swapped_pred.zero_shot
    assert swapped_pred.model.template.slots[0].domain_tag == "SMILES2"
    swapped = swapped_pred.predict(rows)
    assert all(r.ok and r.zero_shot for r in swapped)
    assert all(abs(a.prediction - b.prediction) > 1e-6 for a, b in zip(normal, swapped))
    # removing the domain tag altogether is also a zero-shot variant, and needs no library
    bare = Predictor(backbone, tag, domain_overrides={"smiles": None}).predict(rows)
    assert all(r.zero_shot for r in bare)
    assert all(abs(a.prediction - b.prediction) > 1e-6 for a, b in zip(normal, bare))
    # "overriding" with the tag it was trained with is no swap at all
    same = Predictor(backbone, tag, domain_overrides={"smiles": "SMILES"})
    assert not same.zero_shot
    assert _values(same.predict(rows)) == _values(normal)


def test_domain_swap_without_library_is_refused(llama):
    with pytest.raises(TemplateError, match="library"):
        Predictor(llama, make_function_tag(llama), domain_overrides={"smiles": "SMILES2"})


def test_domain_swap_to_unknown_slot_is_refused(llama, library_factory):
    with pytest.raises(TemplateError, match="nope"):
        Predictor(llama, make_function_tag(llama), library=library_factory(llama), domain_overrides={"nope": "X"})


def test_domain_swap_to_a_function_tag_is_refused(llama, library_factory):
    lib = library_factory(llama)
    lib.save(make_function_tag(llama, "Other"))
    with pytest.raises(TemplateError, match="function tag"):
        Predictor(llama, make_function_tag(llama), library=lib, domain_overrides={"smiles": "Other"})


def test_domain_swap_accepts_bracketed_names(llama, library_factory):
    lib = library_factory(llama)
    lib.save(make_domain_tag(llama, "SMILES2", "smiles", seed=42))
    tag = make_function_tag(llama)
    rows = [{"smiles": "CCO"}]
    plain = Predictor(llama, tag, library=lib, domain_overrides={"smiles": "SMILES2"}).predict(rows)
    bracketed = Predictor(llama, tag, library=lib, domain_overrides={"smiles": "<SMILES2>"}).predict(rows)
    assert _values(bracketed) == _values(plain)
    same = Predictor(llama, tag, library=lib, domain_overrides={"smiles": "<SMILES>"})
    assert not same.zero_shot


# --- refusals -----------------------------------------------------------------------------------


def test_domain_tag_is_not_a_function_tag(backbone):
    with pytest.raises(TemplateError, match="domain tag"):
        Predictor(backbone, make_domain_tag(backbone, "SMILES"))


def test_refuses_a_tag_from_another_backbone(llama, gpt2):
    tag = make_function_tag(llama)
    with pytest.raises(BackboneMismatchError) as err:
        Predictor(gpt2, tag)
    assert "tiny-llama" in str(err.value) and "tiny-gpt2" in str(err.value)
    assert "<Func>" in str(err.value)


def test_tag_without_its_domain_snapshot_is_refused(llama):
    tag = make_function_tag(llama)
    tag.domain_vectors = {}
    with pytest.raises(TemplateError, match="SMILES"):
        Predictor(llama, tag)


# --- progress ----------------------------------------------------------------------------------


def test_progress_callback_steps_increase(backbone):
    tag = make_function_tag(backbone)
    rows = [{"smiles": s} for s in SMILES] + [{"smiles": "broken("}]
    events = []
    res = Predictor(backbone, tag).predict(rows, batch_size=5, progress=events.append)
    n_ok = sum(r.ok for r in res)
    assert n_ok == len(SMILES)
    assert len(events) == math.ceil(n_ok / 5)
    steps = [e.step for e in events]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert steps[-1] == n_ok
    assert all(e.total_steps == n_ok and e.stage == "predict" for e in events)
    assert all(e.throughput and e.throughput > 0 for e in events)
    assert events[-1].fraction == 1.0 and events[-1].eta_s == pytest.approx(0.0)


def test_progress_not_called_without_valid_rows(llama):
    events = []
    Predictor(llama, make_function_tag(llama)).predict([{"smiles": "(("}], progress=events.append)
    assert events == []


# --- helpers -------------------------------------------------------------------------------------


def test_predict_wrapper_and_rows_from_columns(llama):
    tag = make_function_tag(llama)
    rows = rows_from_columns({"smiles": ["CCO", "C1CC", "c1ccccc1"]})
    assert rows == [{"smiles": "CCO"}, {"smiles": "C1CC"}, {"smiles": "c1ccccc1"}]
    res = predict(llama, tag, rows)
    assert [type(r) for r in res] == [PredictionRow] * 3 and [r.ok for r in res] == [True, False, True]
    assert rows_from_columns({}) == []
    with pytest.raises(TagLLMError, match="different lengths"):
        rows_from_columns({"a": [1, 2], "b": [1]})


def test_row_longer_than_the_backbone_context_does_not_sink_the_batch():
    from tagllm_core.backbone import wrap_model

    from conftest import make_char_tokenizer, make_tiny_model

    short_ctx = wrap_model(make_tiny_model("gpt2", n_positions=1024), make_char_tokenizer(add_bos=False),
                           "tiny-gpt2-1024", device="cpu")
    tag = make_function_tag(short_ctx, "Stab", slots=(("seq", "protein", "Protein"),))
    res = Predictor(short_ctx, tag).predict([{"seq": "MK" * 50}, {"seq": "MKTAYIAKQR" * 100}])
    assert res[0].ok and math.isfinite(res[0].prediction)
    # the long row is either cropped to fit (with a warning) or reported as its own error
    assert (res[1].ok and res[1].warnings) or (not res[1].ok and "row 2" in res[1].error)


# --- standardisation, domain flags (issue 10) ----------------------------------------------------------

METAL_FLAG = "contains a metal (Pt): outside the organic chemistry the tag was trained on"


def test_smiles_are_standardised_before_prediction_and_each_change_is_reported(llama):
    tag = make_function_tag(llama, label_scaling={"mean": [0.0], "std": [1.0]})
    tag.card.label_sample = []  # no label range: only the input flags here
    rows = [{"smiles": s} for s in ["O", "[Na+].[Cl-]", "N.N.Cl[Pt]Cl", "CCO.c1ccccc1", "CCCC(=O)[O-]",
                                    "CCN.Cl", "CCO"]]
    res = Predictor(llama, tag).predict(rows)
    assert all(r.ok for r in res)
    water, nacl, cisplatin, mixture, carboxylate, hcl, ethanol = res
    assert water.flags == ["inorganic: no carbon atom, outside the organic chemistry the tag was trained on"]
    assert nacl.flags[0].startswith("inorganic: no carbon atom") and any("(Na)" in f for f in nacl.flags)
    assert METAL_FLAG in cisplatin.flags
    assert mixture.changes == ["kept the largest fragment of 2 (mixture); dropped CCO"]
    assert mixture.standardised == {"smiles": "c1ccccc1"}
    assert carboxylate.changes == ["neutralised (net charge -1 → 0)"]
    assert carboxylate.standardised == {"smiles": "CCCC(=O)O"}
    assert hcl.changes == ["salt stripped: HCl"] and hcl.flags == []
    assert ethanol.changes == [] and ethanol.flags == [] and ethanol.standardised == {"smiles": "CCO"}
    assert carboxylate.inputs == {"smiles": "CCCC(=O)[O-]"}  # the input is kept as given
    # the model reads the standardised molecule
    direct = Predictor(llama, tag).predict([{"smiles": "c1ccccc1"}, {"smiles": "CCCC(=O)O"}, {"smiles": "CCN"}])
    assert mixture.prediction == pytest.approx(direct[0].prediction, abs=1e-6)
    assert carboxylate.prediction == pytest.approx(direct[1].prediction, abs=1e-6)
    assert hcl.prediction == pytest.approx(direct[2].prediction, abs=1e-6)


def test_standardisation_can_be_turned_off(llama):
    tag = make_function_tag(llama)
    r = Predictor(llama, tag, standardize=False).predict([{"smiles": "CCO.c1ccccc1"}])[0]
    assert r.ok and r.changes == [] and r.standardised == {"smiles": "CCO.c1ccccc1"}


def _protein_tag(backbone, input_lengths=None, label_sample=()):
    tag = make_function_tag(backbone, "Aff", slots=(("sequence", "protein", "Protein"), ("smiles", "smiles", None)))
    tag.card.label_sample = list(label_sample)
    if input_lengths is not None:
        tag.card.training["input_lengths"] = input_lengths
    return tag


def test_peptide_with_digits_is_a_row_error_and_other_rows_predict(llama):
    tag = _protein_tag(llama)
    rows = [{"sequence": "MKTAYIAKQR", "smiles": "CCO"}, {"sequence": "ACDEFG123HIK", "smiles": "CCO"},
            {"sequence": "ACDEFGHIK", "smiles": "CCO"}]
    res = Predictor(llama, tag).predict(rows)
    assert [r.ok for r in res] == [True, False, True]
    assert res[1].error.startswith("row 2, sequence:") and "123" in res[1].error and "digits" in res[1].error
    assert res[1].prediction is None


def test_a_1555_residue_protein_is_flagged_when_the_tag_recorded_training_lengths(llama):
    long = ("MKTAYIAKQRQISFVKSHFSRQ" * 71)[:1555]
    rows = [{"sequence": long, "smiles": "CCO"}, {"sequence": "MKTAYIAKQR" * 40, "smiles": "CCO"}]
    tag = _protein_tag(llama, {"sequence": {"min": 250, "max": 900}})
    res = Predictor(llama, tag, max_length={"protein": 2000}).predict(rows)
    assert res[0].ok and res[0].flags == [
        "sequence: length 1,555 residues is far outside the training range 250–900"]
    assert res[1].ok and res[1].flags == []
    # an older tag without recorded lengths: unknown, so no flag and no error
    old = Predictor(llama, _protein_tag(llama), max_length={"protein": 2000})
    assert old.predict(rows[:1])[0].flags == [] and "protein length" in " ".join(old.unknown_checks)


def test_training_records_protein_lengths_and_prediction_flags_far_longer_ones(llama):
    import pandas as pd

    from tagllm_core.tags import SlotSpec
    from tagllm_core.training import FunctionTagConfig, train_function_tag

    prots = ["MKTAY", "GSHGSHGS", "WWVKRQWWV", "PEPTIDEPEPTIDE"]
    smiles = ["CCO", "CCN", "CCCO", "CC(C)O"]
    rows = [(p, s) for p in prots for s in smiles]
    df = pd.DataFrame({"sequence": [p for p, _ in rows], "smiles": [s for _, s in rows],
                       "y": [len(p) + len(s) for p, s in rows]})
    cfg = FunctionTagConfig(name="Lens", labels=["y"], epochs=1, split="random", valid_fraction=0.25, n_tokens=2,
                            slots=[SlotSpec("sequence", "protein", None), SlotSpec("smiles", "smiles", None)])
    tag = train_function_tag(llama, None, cfg, df, save=False).tag
    assert tag.card.training["input_lengths"] == {"sequence": {"min": 5, "max": 14}}
    res = Predictor(llama, tag).predict([{"sequence": "MKTAY" * 12, "smiles": "CCO"},
                                         {"sequence": "MKTAYW", "smiles": "CCO"}])
    assert any("length 60 residues" in f for f in res[0].flags)
    assert not any("length" in f for f in res[1].flags)


def test_predictions_outside_the_training_label_range_are_flagged(llama):
    tag = make_function_tag(llama, label_scaling={"mean": [0.0], "std": [1.0]})
    rows = [{"smiles": s} for s in ["CCO", "c1ccccc1"]]
    values = [r.prediction for r in Predictor(llama, tag).predict(rows)]
    lo, hi = min(values), max(values)
    d = hi - lo
    tag.card.label_sample = [lo - d, lo - d / 2, lo]  # range d: the lower prediction at its top, the higher d above
    res = Predictor(llama, tag).predict(rows)
    high = max(res, key=lambda r: r.prediction)
    low = min(res, key=lambda r: r.prediction)
    assert any(f.startswith(f"prediction {high.prediction:.3g} is outside the training labels' range")
               for f in high.flags)
    assert not any(f.startswith("prediction") for f in low.flags)


def test_results_frame_and_predict_table_carry_standardised_changes_and_flags(llama):
    import pandas as pd

    from tagllm_core.prediction import predict_table, results_frame

    tag = make_function_tag(llama)
    tag.card.label_sample = []
    p = Predictor(llama, tag)
    res = p.predict([{"smiles": "CCN.Cl"}, {"smiles": "O"}, {"smiles": "bad("}])
    frame = results_frame(res)
    assert frame["standardised"].tolist() == ["CCN", "O", ""]
    assert frame["changes"].tolist() == ["salt stripped: HCl", "", ""]
    assert frame["flags"].tolist()[1].startswith("inorganic: no carbon atom")
    assert frame["flags"].tolist()[0] == "" and frame["flags"].tolist()[2] == ""
    cols = list(frame.columns)
    assert cols.index("flags") < cols.index("error")
    out = predict_table(p, pd.DataFrame({"smiles": ["CCN.Cl", "O"]}))
    assert {"standardised", "changes", "flags"} <= set(out.columns)


def test_over_long_smiles_is_a_row_error_not_a_cropped_molecule(llama):
    tag = make_function_tag(llama)
    long = "C" * 199 + "O"  # fits the default limit of 200 characters
    too_long = "C" * 230 + "O"
    res = Predictor(llama, tag).predict([{"smiles": "CCO"}, {"smiles": too_long}, {"smiles": long}])
    assert res[0].ok and res[2].ok
    assert not res[1].ok and "longer than the limit of 200" in res[1].error
    assert not any("cropped" in w for r in res for w in r.warnings)
    # a tag trained with a shorter limit refuses longer molecules at prediction too
    res = Predictor(llama, tag, max_length={"smiles": 10}).predict([{"smiles": "CCCCCCCCCCCCO"}, {"smiles": "CCO"}])
    assert not res[0].ok and "longer than the limit of 10" in res[0].error and res[1].ok


# --- applicability domain (tests/test_domain.py has the rest) --------------------------------------


def test_a_trained_two_input_tag_knows_both_domains(llama):
    import pandas as pd

    from tagllm_core.tags import SlotSpec
    from tagllm_core.training import FunctionTagConfig, train_function_tag

    prots = ["MKTAYIAKQR", "GSHGSHGSWV", "WWVKRQWWVA", "PEPTIDEPEPTIDE"]
    smiles = ["CCO", "CCN", "c1ccccc1O", "CC(C)O"]
    rows = [(p, s) for p in prots for s in smiles]
    df = pd.DataFrame({"sequence": [p for p, _ in rows], "smiles": [s for _, s in rows],
                       "y": [len(p) + len(s) for p, s in rows]})
    cfg = FunctionTagConfig(name="Pairs", labels=["y"], epochs=1, split="random", valid_fraction=0.25, n_tokens=2,
                            slots=[SlotSpec("sequence", "protein", None), SlotSpec("smiles", "smiles", None)])
    tag = train_function_tag(llama, None, cfg, df, save=False).tag
    domain = tag.card.applicability
    assert set(domain) == {"sequence", "smiles"}
    assert domain["sequence"]["kind"] == "protein" and domain["sequence"]["n_reference"] <= 4
    assert tuple(tag.reference_fingerprints["sequence"].shape) == (domain["sequence"]["n_reference"], 1000)
    assert tuple(tag.reference_fingerprints["smiles"].shape) == (domain["smiles"]["n_reference"], 256)
    res = Predictor(llama, tag).predict([{"sequence": p, "smiles": s} for p, s in rows])
    from tagllm_core import applicability as ad

    for slot, kind, column in (("sequence", "protein", 0), ("smiles", "smiles", 1)):
        stored = {bytes(r) for r in tag.reference_fingerprints[slot].numpy()}
        for r, row in zip(res, rows):
            seen = bytes(ad.fingerprints(kind, [row[column]])[0]) in stored
            assert (r.similarity[slot] == pytest.approx(1.0)) == seen
    assert {r.domain for r in res} <= {"in", "out"}


def test_similarity_does_not_depend_on_the_batch(llama):
    from tagllm_core import applicability as ad

    tag = make_function_tag(llama)
    tag.reference_fingerprints["smiles"] = torch.from_numpy(ad.fingerprints("smiles", SMILES[:6]))
    tag.card.applicability["smiles"] = {"kind": "smiles", "n_reference": 6, "threshold": 0.3,
                                        "curve": {"edges": [0.3, 1.0], "error": [0.2], "count": [3]}}
    p = Predictor(llama, tag)
    rows = [{"smiles": s} for s in SMILES]
    together = [r.similarity["smiles"] for r in p.predict(rows, batch_size=5)]
    alone = [p.predict([row])[0].similarity["smiles"] for row in rows]
    assert together == alone
    assert together[:6] == pytest.approx([1.0] * 6)


def test_classification_frame_puts_similarity_and_domain_after_the_probabilities(llama):
    from tagllm_core import applicability as ad
    from tagllm_core.prediction import results_frame

    tag = make_function_tag(llama, task="classification", n_outputs=2, classes=["no", "yes"])
    tag.reference_fingerprints["smiles"] = torch.from_numpy(ad.fingerprints("smiles", ["CCO"]))
    tag.card.applicability["smiles"] = {"kind": "smiles", "n_reference": 1, "threshold": 0.5,
                                        "curve": {"edges": [0.5, 1.0], "error": [0.0], "count": [2]}}
    frame = results_frame(Predictor(llama, tag).predict([{"smiles": "CCO"}, {"smiles": "c1ccccc1"}]), ["no", "yes"])
    cols = list(frame.columns)
    assert cols[cols.index("p(yes)") + 1: cols.index("p(yes)") + 7] == ["similarity", "domain", "flags", "error",
                                                                      "label_percentile", "reference_percentile"]
    assert frame["domain"].tolist() == ["in", "out"]

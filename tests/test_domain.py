"""The applicability domain: packed training fingerprints in the tag file, the validation-derived
threshold, and the per-row similarity, flag and ``domain`` column at prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tagllm_core import applicability as ad
from tagllm_core.exceptions import TagFormatError
from tagllm_core.prediction import Predictor, predict_table, results_frame
from tagllm_core.tags import load_tag_file, save_tag_file

from conftest import make_function_tag  # noqa: E402
from test_cli import env, folder_backbone, library  # noqa: E402,F401 (fixtures; model_dir is in conftest)
from test_training import small_frame, smiles_cfg  # noqa: E402

AROMATICS = ["c1ccccc1O", "c1ccccc1N", "Cc1ccccc1", "c1ccc2ccccc2c1", "Oc1ccc(Cl)cc1", "c1ccncc1",
             "Nc1ccc(O)cc1", "COc1ccccc1", "c1ccc(-c2ccccc2)cc1", "O=C(O)c1ccccc1"]
PROTEIN = ("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGE"
           "GLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPDL"
           "DAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWSTPSELGHAGLNGDILVWNPVLEDAFELSSMGIRVDADTLKHQLALTGD"
           "EDRLELEWHQALLRGEMPQTIGGGIGQSRLTMLLLQLPHIGQVQAGVWPAACRESVERYVLPFLA")


def _with_domain(tag, slot_values: dict, thresholds: dict):
    """Give a test tag the applicability data training would store: reference fingerprints of
    ``slot_values`` ({slot: training inputs}) and a threshold per slot."""
    kinds = {s.name: s.kind for s in tag.card.slots}
    for slot, values in slot_values.items():
        packed = ad.fingerprints(kinds[slot], values)
        tag.reference_fingerprints[slot] = torch.from_numpy(packed)
        tag.card.applicability[slot] = {
            "kind": kinds[slot], "method": ad.METHODS[kinds[slot]], "n_reference": len(packed),
            "n_training": len(values), "threshold": thresholds[slot],
            "curve": {"edges": [0.0, 1.0], "error": [0.5], "count": [10]},
            "error_metric": "absolute error", "overall_error": 0.5, "ratio": ad.ERROR_RATIO}
    return tag


# --- fingerprints and similarity ------------------------------------------------------------------


def test_morgan_fingerprints_are_packed_and_round_trip():
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    packed = ad.fingerprints("smiles", ["CC(=O)Oc1ccccc1C(=O)O", "CCO"])
    assert packed.dtype == np.uint8 and packed.shape == (2, ad.FP_BITS // 8) == (2, 256)
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    expected = np.array(list(gen.GetFingerprint(Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O"))), dtype=np.uint8)
    assert np.array_equal(np.unpackbits(packed[0]), expected)
    assert np.array_equal(np.packbits(np.unpackbits(packed, axis=1), axis=1), packed)


def test_protein_kmers_are_packed_presence_bits():
    packed = ad.fingerprints("protein", ["ACDA", "ACDX"])
    assert packed.dtype == np.uint8 and packed.shape == (2, 8000 // 8)
    bits = np.flatnonzero(np.unpackbits(packed[0]))
    assert sorted(bits.tolist()) == sorted({ad.kmer_index("ACD"), ad.kmer_index("CDA")})
    # a k-mer holding a residue outside the 20 standard ones is not counted
    assert np.flatnonzero(np.unpackbits(packed[1])).tolist() == [ad.kmer_index("ACD")]


def test_identical_molecule_has_similarity_one_and_unrelated_ones_are_low():
    ref = ad.fingerprints("smiles", AROMATICS)
    sims = ad.max_similarity(ad.fingerprints("smiles", ["c1ccccc1O", "CCCCCCCCCCCCCCCCCCCC", "N.N.Cl[Pt]Cl"]), ref)
    assert sims[0] == pytest.approx(1.0)
    assert sims[1] < 0.2 and sims[2] < 0.2


def test_similarity_matches_rdkit_tanimoto():
    from rdkit import Chem, DataStructs
    from rdkit.Chem import rdFingerprintGenerator

    queries = ["CCOc1ccccc1", "CC(=O)Nc1ccc(O)cc1", "C1CCCCC1"]
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    fps = [gen.GetFingerprint(Chem.MolFromSmiles(s)) for s in AROMATICS]
    expected = [max(DataStructs.BulkTanimotoSimilarity(gen.GetFingerprint(Chem.MolFromSmiles(q)), fps))
                for q in queries]
    got = ad.max_similarity(ad.fingerprints("smiles", queries), ad.fingerprints("smiles", AROMATICS))
    assert got == pytest.approx(expected, abs=1e-9)


def test_chunked_similarity_equals_one_pass():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (300, 256), dtype=np.uint8) & rng.integers(0, 256, (300, 256), dtype=np.uint8)
    q = ref[:7] ^ np.uint8(1)
    full = ad.max_similarity(q, ref)
    small = ad.ReferenceSet(ref, chunk_rows=16).max_similarity(q)
    assert small == pytest.approx(full)


def test_protein_similarity_to_itself_is_one():
    ref = ad.fingerprints("protein", [PROTEIN, "GSHMLEDPVAAW"])
    sims = ad.max_similarity(ad.fingerprints("protein", [PROTEIN, PROTEIN[:150], "WWWWYYYYHHHH"]), ref)
    assert sims[0] == pytest.approx(1.0)
    assert 0.3 < sims[1] < 1.0
    assert sims[2] < 0.1


def test_reference_sample_dedupes_and_caps_with_the_seed():
    values = [f"C{'C' * (i % 50)}O" for i in range(200)]
    kept = ad.reference_sample(values, cap=20, seed=3)
    assert len(kept) == 20 and len(set(kept)) == 20
    assert kept == ad.reference_sample(values, cap=20, seed=3)
    assert ad.reference_sample(values, cap=1000, seed=3) == list(dict.fromkeys(values))


# --- the threshold rule -------------------------------------------------------------------------------


def test_threshold_is_where_validation_error_rises():
    sims = np.linspace(0.0, 1.0, 100, endpoint=False)
    err = np.where(sims < 0.4, 1.0, 0.1)  # five quantile bins: mean error 1, 1, 0.1, 0.1, 0.1 (overall 0.46)
    curve = ad.domain_curve(sims, err)
    assert len(curve.count) == 5 and sum(curve.count) == 100
    assert curve.error == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.1])
    assert curve.threshold == pytest.approx(0.4)
    assert curve.overall_error == pytest.approx(0.46)


def test_threshold_is_the_lowest_validation_similarity_when_error_never_rises():
    sims = np.linspace(0.2, 1.0, 60)
    curve = ad.domain_curve(sims, np.full(60, 0.3))
    assert curve.threshold == pytest.approx(0.2)


def test_threshold_keeps_the_most_similar_bin_even_when_it_is_bad():
    sims = np.linspace(0.0, 1.0, 50, endpoint=False)
    err = np.where(sims >= 0.6, 5.0, 0.1)  # the two most similar bins are bad: the walk stops at once
    curve = ad.domain_curve(sims, err)
    assert curve.threshold == pytest.approx(0.8)


def test_few_or_tied_validation_rows_make_one_bin():
    curve = ad.domain_curve(np.array([0.5, 0.7, 0.9]), np.array([1.0, 0.0, 2.0]))
    assert curve.count == [3] and curve.threshold == pytest.approx(0.5)
    tied = ad.domain_curve(np.ones(40), np.linspace(0, 1, 40))
    assert tied.count == [40] and tied.threshold == pytest.approx(1.0)


# --- training stores it, the tag file keeps it ----------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_backbones):
    from tagllm_core.training import train_function_tag

    return train_function_tag(tiny_backbones["llama"], None, smiles_cfg(valid_fraction=0.25), small_frame(),
                              save=False)


def test_training_stores_packed_fingerprints_and_the_validation_curve(trained):
    tag = trained.tag
    ref = tag.reference_fingerprints["smiles"]
    assert ref.dtype == torch.uint8 and ref.shape[1] == 256
    info = tag.card.applicability["smiles"]
    n_train = tag.card.training["rows_train"]
    assert info["n_reference"] == ref.shape[0] == n_train  # small_frame's molecules are all distinct
    assert info["n_training"] == n_train and info["kind"] == "smiles"
    curve = info["curve"]
    assert len(curve["edges"]) == len(curve["error"]) + 1 == len(curve["count"]) + 1
    assert sum(curve["count"]) == tag.card.training["rows_valid"]
    assert curve["edges"][0] <= info["threshold"] <= curve["edges"][-1]
    assert info["error_metric"] == "absolute error"


def test_tag_file_round_trips_the_domain_data(trained, tmp_path):
    path = tmp_path / "t.tag.safetensors"
    save_tag_file(trained.tag, path)
    back = load_tag_file(path)
    assert torch.equal(back.reference_fingerprints["smiles"], trained.tag.reference_fingerprints["smiles"])
    assert back.reference_fingerprints["smiles"].dtype == torch.uint8
    assert back.card.applicability == trained.tag.card.applicability


def test_tag_file_with_inconsistent_domain_data_is_refused(trained, tmp_path):
    path = tmp_path / "t.tag.safetensors"
    tag = trained.tag
    good = tag.reference_fingerprints["smiles"]
    try:
        tag.reference_fingerprints["smiles"] = good[:-1]  # fewer rows than the card says
        save_tag_file(tag, path)
        with pytest.raises(TagFormatError, match="applicability.smiles"):
            load_tag_file(path)
        tag.reference_fingerprints["smiles"] = good[:, :100]  # not a 2048-bit fingerprint
        save_tag_file(tag, path)
        with pytest.raises(TagFormatError, match="applicability.smiles"):
            load_tag_file(path)
    finally:
        tag.reference_fingerprints["smiles"] = good


def test_a_training_molecule_is_in_domain_after_training(trained, tiny_backbones):
    train_smiles = small_frame()["smiles"].tolist()
    res = Predictor(tiny_backbones["llama"], trained.tag).predict([{"smiles": s} for s in train_smiles])
    ones = [r for r in res if r.similarity["smiles"] == pytest.approx(1.0)]
    assert len(ones) >= trained.tag.card.training["rows_train"]
    assert all(r.domain == "in" for r in ones)


# --- prediction ------------------------------------------------------------------------------------------


def test_prediction_reports_similarity_and_flags_rows_outside_the_domain(llama):
    tag = _with_domain(make_function_tag(llama), {"smiles": AROMATICS}, {"smiles": 0.35})
    res = Predictor(llama, tag).predict([{"smiles": "Oc1ccccc1"}, {"smiles": "CCCCCCCCCCCCCCCCCCCC"},
                                         {"smiles": "N.N.Cl[Pt]Cl"}, {"smiles": "bad("}])
    assert res[0].similarity == {"smiles": pytest.approx(1.0)} and res[0].domain == "in"
    assert not any("applicability" in f for f in res[0].flags)
    for r in res[1:3]:
        assert r.domain == "out" and r.similarity["smiles"] < 0.35
        flag = next(f for f in r.flags if "applicability" in f)
        assert flag == (f"outside the applicability domain: nearest training molecule has Tanimoto "
                        f"{r.similarity['smiles']:.2f} (threshold 0.35)")
    assert not res[3].ok and res[3].similarity == {"smiles": None} and res[3].domain == ""


def test_old_tag_without_domain_data_reports_unknown(llama):
    tag = make_function_tag(llama)
    p = Predictor(llama, tag)
    assert any("applicability domain" in u for u in p.unknown_checks)
    res = p.predict([{"smiles": "CCO"}])
    assert res[0].ok and res[0].domain == "unknown" and res[0].similarity == {"smiles": None}
    frame = results_frame(res)
    assert frame["domain"].tolist() == ["unknown"] and pd.isna(frame["similarity"].iloc[0])


def test_two_input_tag_reports_both_similarities(llama):
    tag = make_function_tag(llama, slots=(("sequence", "protein", "Protein"), ("smiles", "smiles", "SMILES")))
    tag = _with_domain(tag, {"sequence": [PROTEIN], "smiles": AROMATICS}, {"sequence": 0.5, "smiles": 0.35})
    res = Predictor(llama, tag).predict([{"sequence": PROTEIN, "smiles": "c1ccccc1N"},
                                         {"sequence": "WWWWYYYYHHHH", "smiles": "c1ccccc1N"}])
    assert res[0].similarity == {"sequence": pytest.approx(1.0), "smiles": pytest.approx(1.0)}
    assert res[0].domain == "in"
    assert res[1].domain == "out" and res[1].similarity["sequence"] < 0.5
    assert any(f.startswith("sequence: outside the applicability domain: nearest training protein has "
                            "3-mer similarity") for f in res[1].flags)
    frame = results_frame(res)
    cols = list(frame.columns)
    assert cols.index("similarity(sequence)") < cols.index("similarity(smiles)") < cols.index("domain")
    assert frame["domain"].tolist() == ["in", "out"]


def test_csv_has_similarity_and_domain_after_the_prediction_columns(llama, tmp_path):
    tag = _with_domain(make_function_tag(llama, interval={"level": 0.9, "halfwidth": [1.0]}),
                       {"smiles": AROMATICS}, {"smiles": 0.35})
    out = predict_table(Predictor(llama, tag), pd.DataFrame({"smiles": ["c1ccccc1O", "CCCCCCCCCC", "xx"]}))
    out.to_csv(tmp_path / "o.csv", index=False)
    back = pd.read_csv(tmp_path / "o.csv", keep_default_na=False)
    cols = list(back.columns)
    # right after the interval, before the flags, the error and the percentiles
    assert cols[cols.index("upper") + 1: cols.index("upper") + 5] == ["similarity", "domain", "flags", "error"]
    assert back["domain"].tolist() == ["in", "out", ""]
    assert float(back["similarity"][0]) == pytest.approx(1.0) and back["similarity"][2] == ""


# --- the library card -------------------------------------------------------------------------------------


def test_domain_curve_figure_shows_the_curve_and_the_threshold():
    from ui import charts

    curve = {"edges": [0.1, 0.3, 0.5, 1.0], "error": [2.0, None, 0.5], "count": [10, 0, 10]}
    fig = charts.domain_curve_figure(curve, 0.5, "Tanimoto", "absolute error", overall=1.0, ratio=1.5)
    assert list(fig.data[0].x) == pytest.approx([0.2, 0.75]) and list(fig.data[0].y) == [2.0, 0.5]
    shapes = fig.layout.shapes
    assert any(s.x0 == s.x1 == 0.5 for s in shapes) and any(s.y0 == s.y1 == 1.5 for s in shapes)


def test_card_text_says_unknown_for_an_old_tag_and_the_threshold_otherwise(llama):
    from tagllm_core.tags import TagInfo
    from ui import cards

    old = make_function_tag(llama)
    assert "unknown" in cards.domain_lines(old.card)[""]
    tag = _with_domain(make_function_tag(llama), {"smiles": AROMATICS}, {"smiles": 0.35})
    assert cards.domain_lines(tag.card) == {
        "smiles": "smiles: in domain from Tanimoto 0.35 to the nearest of 10 training molecules"}
    table = cards.card_table(TagInfo(tag.card, "user", None, 1000))
    assert "Tanimoto 0.35" in table.set_index("field").loc["applicability domain", "value"]


def test_library_page_shows_the_domain_curve(tagllm_home, monkeypatch, tmp_path):
    from streamlit.testing.v1 import AppTest

    from tagllm_core.backbone import get_backbone
    from tagllm_core.tags import TagLibrary

    from conftest import make_char_tokenizer, make_tiny_model

    folder = tmp_path / "tiny-llama"
    make_tiny_model("llama", seed=0).save_pretrained(folder)
    make_char_tokenizer(add_bos=True).save_pretrained(folder)
    monkeypatch.setenv("TAGLLM_BACKBONE", str(folder))
    bb = get_backbone(str(folder))
    lib = TagLibrary(bb.fingerprint)
    lib.save(_with_domain(make_function_tag(bb, "Aromatic", slots=(("smiles", "smiles", None),)),
                          {"smiles": AROMATICS}, {"smiles": 0.35}))
    lib.save(make_function_tag(bb, "Old", slots=(("smiles", "smiles", None),)))
    at = AppTest.from_file(str(Path(__file__).parents[1] / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/library.py").run()
    assert not at.exception, [e.value for e in at.exception]
    keys = [c.proto.id for c in at.get("plotly_chart")]
    assert any(k.endswith("domain-curve::Aromatic::smiles") for k in keys), keys
    assert not any("domain-curve::Old" in k for k in keys)  # an old tag has no curve, only the "unknown" line
    text = "\n".join(str(m.value) for m in at.markdown) + "\n".join(str(c.value) for c in at.caption)
    assert "in domain from Tanimoto 0.35" in text
    assert "predates storing its training fingerprints" in text


def test_cli_predict_writes_similarity_and_domain_columns(env, capsys, tmp_path, library, folder_backbone):  # noqa: F811 (pytest fixtures, injected by name)
    from test_cli import run_cli

    tag = _with_domain(make_function_tag(folder_backbone, name="Arom", slots=(("smiles", "smiles", None),),
                                         interval={"level": 0.9, "halfwidth": [1.0]}),
                       {"smiles": AROMATICS}, {"smiles": 0.35})
    library.save(tag)
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"smiles": ["Oc1ccccc1", "CCCCCCCCCCCC", "C1CC"]}).to_csv(src, index=False)
    code, stdout, stderr = run_cli(capsys, "predict", "--tag", "Arom", "--input", src, "--output", out, "--quiet")
    assert code == 0, stderr
    assert "1 outside the tag's applicability domain" in stdout
    df = pd.read_csv(out, keep_default_na=False)
    cols = list(df.columns)
    # right after the interval, before the flags, the error and the percentiles
    assert cols[cols.index("upper") + 1: cols.index("upper") + 5] == ["similarity", "domain", "flags", "error"]
    assert df["domain"].tolist() == ["in", "out", ""]
    assert "outside the applicability domain" in df.loc[1, "flags"]


@pytest.mark.parametrize("field,value", [("threshold", 1.5), ("threshold", "high"), ("n_reference", 0),
                                         ("n_training", "many"), ("ratio", [1]), ("error_metric", "x" * 500),
                                         ("kind", "protein")])
def test_card_with_bad_domain_fields_is_refused(llama, tmp_path, field, value):
    tag = _with_domain(make_function_tag(llama), {"smiles": AROMATICS}, {"smiles": 0.35})
    tag.card.applicability["smiles"][field] = value
    path = tmp_path / "t.tag.safetensors"
    save_tag_file(tag, path)
    with pytest.raises(TagFormatError, match=f"applicability.smiles.{field}"):
        load_tag_file(path)


def test_a_domain_tag_may_not_carry_domain_data(llama, tmp_path):
    from conftest import make_domain_tag

    tag = make_domain_tag(llama)
    tag.card.applicability = {"smiles": {"kind": "smiles", "n_reference": 1, "threshold": 0.5,
                                         "curve": {"edges": [0.5, 1.0], "error": [0.1], "count": [2]}}}
    tag.reference_fingerprints["smiles"] = torch.from_numpy(ad.fingerprints("smiles", ["CCO"]))
    path = tmp_path / "d.tag.safetensors"
    save_tag_file(tag, path)
    with pytest.raises(TagFormatError, match="applicability"):
        load_tag_file(path)

"""Classic input descriptors (``tagllm_core.descriptors``) that a head may read beside the tag.

Column names match the columns for every input kind; a SMILES's RDKit values
are RDKit's own (MolLogP against ``Crippen.MolLogP``); a molecule RDKit cannot
parse, or a value it reports as infinite, becomes NaN instead of an error (the
head imputes it); a value repeated across rows is computed once; protein
fractions cover the standard residues and the length every residue; and
``row_features`` puts the slots side by side in ``slot_kinds`` order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tagllm_core import descriptors
from tagllm_core.bio import STANDARD_AMINO_ACIDS
from tagllm_core.descriptors import feature_names, input_features, row_features
from tagllm_core.exceptions import InputError

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


@pytest.mark.parametrize("kind, values", [
    ("smiles", ["CCO", ASPIRIN, "c1ccccc1"]),
    ("protein", ["MKTAYIAKQR", "GS", "ACDEFGHIKLMNPQRSTVWY"]),
    ("text", ["hello", "world", "!"]),
])
def test_names_match_columns(kind, values):
    names = feature_names(kind)
    X = input_features(kind, values)
    assert X.shape == (len(values), len(names))
    assert X.dtype == np.float64
    assert len(set(names)) == len(names)  # no duplicate column names
    # an empty list of values still has the right width
    assert input_features(kind, []).shape == (0, len(names))


def test_name_sets_per_kind():
    from rdkit.Chem import Descriptors

    smiles = feature_names("smiles")
    assert smiles == [f"rdkit:{n}" for n, _ in Descriptors.descList]
    assert "rdkit:MolLogP" in smiles and "rdkit:TPSA" in smiles
    protein = feature_names("protein")
    assert protein[:20] == [f"frac:{a}" for a in STANDARD_AMINO_ACIDS]
    assert "protparam:length" in protein and "protparam:isoelectric_point" in protein
    assert feature_names("text") == []
    with pytest.raises(InputError, match="dna"):
        feature_names("dna")


def test_valid_smiles_matches_rdkit_crippen_logp():
    from rdkit import Chem
    from rdkit.Chem import Crippen, Descriptors

    names = feature_names("smiles")
    X = input_features("smiles", [ASPIRIN, "CCO"])
    col = names.index("rdkit:MolLogP")
    for row, smi in zip(X, [ASPIRIN, "CCO"]):
        mol = Chem.MolFromSmiles(smi)
        assert math.isfinite(row[col])
        assert row[col] == pytest.approx(Crippen.MolLogP(mol), abs=1e-6)
        assert row[names.index("rdkit:TPSA")] == pytest.approx(Descriptors.TPSA(mol), abs=1e-6)
        assert row[names.index("rdkit:HeavyAtomCount")] == mol.GetNumHeavyAtoms()
    assert np.isfinite(X[:, col]).all()


def test_unparsable_smiles_gives_a_nan_row_not_an_error():
    X = input_features("smiles", ["CCO", "C1CC", "not a molecule", "CCN"])
    assert X.shape[0] == 4
    assert np.isnan(X[1]).all() and np.isnan(X[2]).all()
    # the good rows around it are untouched
    col = feature_names("smiles").index("rdkit:MolLogP")
    assert np.isfinite(X[[0, 3], col]).all()
    np.testing.assert_array_equal(X[0], input_features("smiles", ["CCO"])[0])


def test_infinite_values_become_nan(monkeypatch):
    width = len(feature_names("smiles"))
    monkeypatch.setattr(descriptors, "_smiles_row",
                        lambda s: [math.inf, -math.inf] + [1.0] * (width - 2))
    X = input_features("smiles", ["CCO"])
    assert np.isnan(X[0, :2]).all()
    assert (X[0, 2:] == 1.0).all()


@pytest.mark.parametrize("kind, values", [
    ("smiles", ["CCO", "CCN", "CCO", "CCO", "CCN", "C"]),
    ("protein", ["MKTAY", "GS", "MKTAY", "GS", "MKTAY"]),
])
def test_repeated_values_are_computed_once(monkeypatch, kind, values):
    attr = "_smiles_row" if kind == "smiles" else "_protein_row"
    original = getattr(descriptors, attr)
    calls = []

    def counting(value):
        calls.append(value)
        return original(value)

    monkeypatch.setattr(descriptors, attr, counting)
    X = input_features(kind, values)
    assert sorted(calls) == sorted(set(values))  # each distinct value exactly once
    # and repeated rows carry identical values
    for i, v in enumerate(values):
        j = values.index(v)
        np.testing.assert_array_equal(X[i], X[j])


def test_text_computes_nothing(monkeypatch):
    monkeypatch.setattr(descriptors, "_smiles_row", lambda s: pytest.fail("no descriptors for text"))
    monkeypatch.setattr(descriptors, "_protein_row", lambda s: pytest.fail("no descriptors for text"))
    assert input_features("text", ["a", "b"]).shape == (2, 0)


def test_protein_fractions_sum_to_one_and_length_counts_every_residue():
    names = feature_names("protein")
    seqs = ["MKTAYIAKQR", "ACDEFGHIKLMNPQRSTVWY", "WWWW", "MKXXU"]  # X and U: rare letters cleaning keeps
    X = input_features("protein", seqs)
    frac = X[:, :20]
    np.testing.assert_allclose(frac.sum(1), 1.0, atol=1e-12)
    length = X[:, names.index("protparam:length")]
    assert length.tolist() == [float(len(s)) for s in seqs]  # X/U count too
    assert frac[1] == pytest.approx([1 / 20] * 20)
    assert frac[2, STANDARD_AMINO_ACIDS.index("W")] == 1.0
    # the fractions of "MKXXU" are over its standard residues M and K only
    assert frac[3, STANDARD_AMINO_ACIDS.index("M")] == pytest.approx(0.5)
    assert frac[3, STANDARD_AMINO_ACIDS.index("K")] == pytest.approx(0.5)
    # a sequence with no standard residue at all is undefined, not an error
    assert np.isnan(input_features("protein", ["XXXX"])).all()
    assert np.isfinite(X[:3]).all()


def test_protein_molecular_weight_matches_biopython():
    from Bio.SeqUtils.ProtParam import ProteinAnalysis

    names = feature_names("protein")
    X = input_features("protein", ["MKTAYIAKQR"])
    pa = ProteinAnalysis("MKTAYIAKQR")
    assert X[0, names.index("protparam:molecular_weight")] == pytest.approx(pa.molecular_weight())
    assert X[0, names.index("protparam:isoelectric_point")] == pytest.approx(pa.isoelectric_point())
    assert X[0, names.index("protparam:gravy")] == pytest.approx(pa.gravy())


def test_row_features_concatenates_slots_in_order():
    rows = [{"sequence": "MKTAY", "smiles": "CCO", "note": "x"},
            {"sequence": "GSHW", "smiles": "C1CC", "note": "y"},  # an unparsable molecule: NaN block
            {"sequence": "MKTAY", "smiles": ASPIRIN, "note": "z"}]
    P = input_features("protein", [r["sequence"] for r in rows])
    S = input_features("smiles", [r["smiles"] for r in rows])
    n_p, n_s = len(feature_names("protein")), len(feature_names("smiles"))

    X = row_features({"sequence": "protein", "smiles": "smiles", "note": "text"}, rows)
    assert X.shape == (3, n_p + n_s)
    np.testing.assert_array_equal(X[:, :n_p], P)
    np.testing.assert_array_equal(X[:, n_p:], S)  # NaN compare equal here
    assert np.isnan(X[1, n_p:]).all() and np.isfinite(X[1, :n_p]).all()

    swapped = row_features({"smiles": "smiles", "sequence": "protein"}, rows)
    np.testing.assert_array_equal(swapped[:, :n_s], S)
    np.testing.assert_array_equal(swapped[:, n_s:], P)

    # two slots of one kind: each slot reads its own column
    two = row_features({"a": "smiles", "b": "smiles"}, [{"a": "CCO", "b": "CCN"}])
    np.testing.assert_array_equal(two[0, :n_s], input_features("smiles", ["CCO"])[0])
    np.testing.assert_array_equal(two[0, n_s:], input_features("smiles", ["CCN"])[0])

    assert row_features({}, rows).shape == (3, 0)
    assert row_features({"sequence": "protein", "smiles": "smiles"}, []).shape == (0, n_p + n_s)

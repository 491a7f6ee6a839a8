"""Row-level validation and canonicalisation of SMILES, proteins and text."""

from __future__ import annotations

import pytest

from tagllm_core.domains import (
    DEFAULT_MAX_LENGTH,
    clean,
    clean_protein,
    clean_smiles,
    clean_text,
    split_entries,
)

# --- SMILES ------------------------------------------------------------------------


@pytest.mark.parametrize("smiles", ["not_a_smiles", "C1CC", "c1cccc1", "CC(C", "Xx"])
def test_invalid_smiles_error_names_the_smiles(smiles):
    c = clean_smiles(smiles)
    assert not c.ok and c.value is None
    assert smiles in c.error
    assert "invalid SMILES" in c.error


def test_valence_error_is_reported():
    c = clean_smiles("C(C)(C)(C)(C)C")
    assert not c.ok
    assert "C(C)(C)(C)(C)C" in c.error
    assert "valence" in c.error.lower()


@pytest.mark.parametrize(
    "raw, canonical",
    [
        ("OCC", "CCO"),
        ("C(O)C", "CCO"),
        ("C1=CC=CC=C1", "c1ccccc1"),
        ("  OCC  ", "CCO"),
        ("OC(=O)c1ccccc1OC(C)=O", "CC(=O)Oc1ccccc1C(=O)O"),
        ("N[C@@H](C)C(=O)O", "C[C@H](N)C(=O)O"),  # stereo is kept
    ],
)
def test_smiles_are_canonicalised(raw, canonical):
    c = clean_smiles(raw)
    assert c.ok, c.error
    assert c.value == canonical
    assert c.warnings == []


@pytest.mark.parametrize("line", ["OCC ethanol", "CCO\tethanol", "OCC   ethyl alcohol (96%)"])
def test_smiles_with_a_trailing_name(line):
    c = clean_smiles(line)
    assert c.ok and c.value == "CCO"


@pytest.mark.parametrize("blank", ["", "   ", None, float("nan"), "\n\t"])
def test_empty_smiles(blank):
    c = clean_smiles(blank)
    assert not c.ok and "empty" in c.error


def test_long_smiles_is_refused_not_cropped():
    # A SMILES cut mid-string is another molecule, or none ("c1ccc" of benzene): refuse it instead.
    c = clean_smiles("C" * 250)
    assert not c.ok and c.value is None
    assert f"longer than the limit of {DEFAULT_MAX_LENGTH['smiles']}" in c.error and "250" in c.error
    c = clean_smiles("C" * 50, max_length=10)
    assert not c.ok and "--max-length smiles=" in c.error
    assert clean_smiles("C" * 10, max_length=10).value == "C" * 10


# --- proteins ------------------------------------------------------------------------


def test_bad_protein_letters_are_listed():
    c = clean_protein("MKTBAYJZ")
    assert not c.ok
    for letter in "BJZ":
        assert repr(letter) in c.error
    assert "'A'" not in c.error and "'M'" not in c.error
    assert "protein" in c.error


def test_smiles_pasted_as_protein_is_refused():
    c = clean_protein("CC(=O)Oc1ccccc1C(=O)O")
    assert not c.ok and "(" in c.error


def test_lowercase_protein_is_uppercased():
    c = clean_protein("mktayiakqr")
    assert c.ok and c.value == "MKTAYIAKQR"
    assert c.warnings == []


def test_fasta_header_is_stripped():
    c = clean_protein(">sp|P69905|HBA_HUMAN Hemoglobin subunit alpha\nMVLSPADKTN\nVKAAWGKVGA\n")
    assert c.ok and c.value == "MVLSPADKTNVKAAWGKVGA"


def test_digits_whitespace_and_comments_are_ignored():
    c = clean_protein("; comment\r\n   1 MKTAY IAKQR 10\n  11 qisfv\t\n")
    assert c.ok and c.value == "MKTAYIAKQRQISFV"


def test_terminal_stop_is_dropped():
    assert clean_protein("MKTAY*").value == "MKTAY"


@pytest.mark.parametrize("letter, word", [("X", "unknown"), ("U", "selenocysteine"), ("O", "pyrrolysine")])
def test_rare_residues_are_accepted_with_warning(letter, word):
    c = clean_protein(f"MK{letter}TA{letter}Y")
    assert c.ok and c.value == f"MK{letter}TA{letter}Y"
    assert len(c.warnings) == 1
    assert word in c.warnings[0] and "2" in c.warnings[0]


def test_huge_protein_is_cropped_with_warning():
    seq = "MKTAYIAKQR" * 10_000  # 100k residues
    c = clean_protein(seq)
    assert c.ok
    assert c.value == seq[: DEFAULT_MAX_LENGTH["protein"]]
    assert len(c.warnings) == 1 and "100000" in c.warnings[0] and "cropped" in c.warnings[0]
    assert len(clean_protein(seq, max_length=50).value) == 50


@pytest.mark.parametrize("blank", ["", "  \n ", None, float("nan"), ">header only\n"])
def test_empty_protein(blank):
    c = clean_protein(blank)
    assert not c.ok and "empty" in c.error


# --- text and dispatch ---------------------------------------------------------------------


def test_text_whitespace_is_collapsed():
    assert clean_text("  an   enzyme\nfrom yeast ").value == "an enzyme from yeast"
    assert not clean_text(float("nan")).ok
    c = clean_text("word " * 1000)
    assert len(c.value) == DEFAULT_MAX_LENGTH["text"] and c.warnings


def test_clean_dispatches_by_kind():
    assert clean("smiles", "OCC").value == "CCO"
    assert clean("protein", "mk").value == "MK"
    assert clean("text", " a  b ").value == "a b"
    bad = clean("dna", "ACGT")
    assert not bad.ok and "dna" in bad.error
    assert clean("protein", "M" * 20, max_length=5).value == "MMMMM"


# --- split_entries ----------------------------------------------------------------------------


def test_split_multi_record_fasta():
    text = ">p1 first\nMKT\nAYI\n\n>p2\r\nLLLV\r\n>p3 empty-ish\nG\n"
    records = split_entries("protein", text)
    assert records == [">p1 first\nMKT\nAYI", ">p2\nLLLV", ">p3 empty-ish\nG"]
    assert [clean_protein(r).value for r in records] == ["MKTAYI", "LLLV", "G"]


def test_split_plain_lines():
    assert split_entries("smiles", "CCO\n\n  c1ccccc1 \r\nO\n") == ["CCO", "c1ccccc1", "O"]
    assert split_entries("protein", "MKT\nLLL\n\n") == ["MKT", "LLL"]
    # '>' only means FASTA for proteins
    assert split_entries("text", ">a\nb") == [">a", "b"]
    assert split_entries("smiles", "") == []
    assert split_entries("smiles", None) == []


def test_randomized_smiles_are_other_spellings_of_the_same_molecule():
    from rdkit import Chem

    from tagllm_core.domains import randomized_smiles

    aspirin = "CC(=O)Oc1ccccc1C(=O)O"
    variants = randomized_smiles(aspirin, 5, seed=3)
    assert len(variants) == 5 and len(set(variants)) == 5 and aspirin not in variants
    assert {Chem.CanonSmiles(v) for v in variants} == {Chem.CanonSmiles(aspirin)}
    assert randomized_smiles(aspirin, 5, seed=3) == variants  # a seed gives the same spellings
    assert randomized_smiles(aspirin, 5, seed=4) != variants
    chiral = "C[C@H](N)C(=O)O"
    assert {Chem.CanonSmiles(v) for v in randomized_smiles(chiral, 3)} == {Chem.CanonSmiles(chiral)}
    assert randomized_smiles("C", 3) == []  # one atom, one spelling
    assert len(randomized_smiles("CCO", 10)) <= 3  # only a few spellings exist
    assert randomized_smiles("not a smiles", 3) == []

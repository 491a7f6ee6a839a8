"""Tests for tagllm_core.bio against values derived independently of ProtParam."""

from __future__ import annotations

import pytest

from tagllm_core import bio
from tagllm_core.exceptions import InputError

ALL_20 = "ACDEFGHIKLMNPQRSTVWY"

# Average residue masses (amino acid minus water), Da, as tabulated by ExPASy.
RESIDUE_MASS = {
    "A": 71.0788, "R": 156.1875, "N": 114.1038, "D": 115.0886, "C": 103.1388,
    "E": 129.1155, "Q": 128.1307, "G": 57.0519, "H": 137.1411, "I": 113.1594,
    "L": 113.1594, "K": 128.1741, "M": 131.1926, "F": 147.1766, "P": 97.1167,
    "S": 87.0782, "T": 101.1051, "W": 186.2132, "Y": 163.1760, "V": 99.1326,
}  # fmt: skip
WATER = 18.01524


def expected_mass(seq: str) -> float:
    return sum(RESIDUE_MASS[aa] for aa in seq) + WATER


# --- protein_properties ---------------------------------------------------


def test_all_twenty_residues():
    p = bio.protein_properties(ALL_20)
    assert p.length == 20
    assert p.molecular_weight == pytest.approx(2395.7, abs=0.5)
    assert p.molecular_weight == pytest.approx(expected_mass(ALL_20), rel=0.01)
    assert 0 < p.isoelectric_point < 14
    assert p.aromaticity == pytest.approx(3 / 20)  # F, W, Y
    assert p.nonstandard_residues == 0
    assert p.note is None


@pytest.mark.parametrize("seq", ["G", "GG", "MKTAYIAKQRQISFVKSHFSRQ", "W" * 50])
def test_mass_matches_sum_of_residue_masses(seq):
    assert bio.protein_properties(seq).molecular_weight == pytest.approx(expected_mass(seq), rel=0.01)


def test_gravy_is_kyte_doolittle_mean():
    # Kyte-Doolittle: I +4.5, R -4.5, A +1.8, G -0.4.
    assert bio.protein_properties("IIII").gravy == pytest.approx(4.5)
    assert bio.protein_properties("RRRR").gravy == pytest.approx(-4.5)
    assert bio.protein_properties("AG").gravy == pytest.approx((1.8 - 0.4) / 2)


def test_isoelectric_point_follows_charge():
    basic = bio.protein_properties("KKKKKKKK").isoelectric_point
    acidic = bio.protein_properties("DDDDDDDD").isoelectric_point
    neutral = bio.protein_properties("GGGGGGGG").isoelectric_point
    assert 0 < acidic < 4 < neutral < 7 < 9 < basic < 14


def test_isoelectric_point_is_not_clamped_to_biopythons_default_bracket():
    # ProteinAnalysis.isoelectric_point bisects only within [4.05, 12] and would
    # report exactly those bounds here; side-chain pKs alone (Asp 4.05 with a
    # C-terminus at 3.55; Arg 12.0) put the true values beyond them.
    assert bio.protein_properties("DDDDDDDD").isoelectric_point < 4.0
    assert bio.protein_properties("EEEE").isoelectric_point < 4.05
    assert bio.protein_properties("RRRRRRRR").isoelectric_point > 12.1


def test_aromaticity_counts_f_w_y():
    assert bio.protein_properties("FWYA").aromaticity == pytest.approx(0.75)
    assert bio.protein_properties("GGGG").aromaticity == 0.0


def test_instability_index_is_a_finite_number():
    p = bio.protein_properties("MKTAYIAKQRQISFVKSHFSRQ")
    assert isinstance(p.instability_index, float)
    assert -100 < p.instability_index < 200


def test_nonstandard_letters_are_dropped_and_reported():
    p = bio.protein_properties("ACXDU")
    assert p.length == 5
    assert p.nonstandard_residues == 2
    assert p.note is not None
    assert "3 of 5" in p.note and "X" in p.note and "U" in p.note
    assert p.molecular_weight == pytest.approx(bio.protein_properties("ACD").molecular_weight)


def test_lower_case_is_accepted():
    assert bio.protein_properties("acde").length == 4


@pytest.mark.parametrize("seq", ["", "XXXX", "BZ"])
def test_nothing_computable_is_an_input_error(seq):
    with pytest.raises(InputError):
        bio.protein_properties(seq)


@pytest.mark.parametrize("seq", ["ACD EF", "ACD*", "AC-DE", "AC1"])
def test_uncleaned_sequence_is_an_input_error(seq):
    with pytest.raises(InputError, match="not amino-acid letters"):
        bio.protein_properties(seq)


# --- residue_composition --------------------------------------------------


def test_composition_covers_the_twenty_in_fixed_order_and_sums_to_one():
    comp = bio.residue_composition("MKTAYIAKQRQISFVKSHFSRQ")
    assert list(comp) == list(ALL_20)
    assert sum(comp.values()) == pytest.approx(1.0)


def test_composition_values():
    comp = bio.residue_composition("AAAC")
    assert comp["A"] == pytest.approx(0.75)
    assert comp["C"] == pytest.approx(0.25)
    assert comp["W"] == 0.0
    assert all(v == pytest.approx(0.05) for v in bio.residue_composition(ALL_20).values())


def test_composition_fractions_are_of_the_full_length():
    comp = bio.residue_composition("AAXX")
    assert comp["A"] == pytest.approx(0.5)
    assert sum(comp.values()) == pytest.approx(0.5)


def test_composition_of_empty_sequence_is_an_input_error():
    with pytest.raises(InputError):
        bio.residue_composition("")

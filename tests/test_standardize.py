"""Input standardisation that says what it did: salts, mixtures, charges, inorganics and metals
(real molecules through RDKit), protein length against the training range, and predictions
outside the training labels' range."""

from __future__ import annotations

import pytest

from tagllm_core.domains import clean_protein
from tagllm_core.exceptions import InputError
from tagllm_core.standardize import (
    Standardised,
    clean_standardised_smiles,
    length_flag,
    length_ranges,
    prediction_range_flag,
    standardize_smiles,
    training_summary,
)

ORGANIC_ONLY = "outside the organic chemistry the tag was trained on"


# --- SMILES ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("smiles", ["CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "C[C@H](N)C(=O)O",
                                    "C[N+](=O)[O-]"])
def test_plain_organic_molecules_are_untouched(smiles):
    from rdkit import Chem

    s = standardize_smiles(smiles)
    assert isinstance(s, Standardised)
    assert s.smiles == Chem.MolToSmiles(Chem.MolFromSmiles(smiles))
    assert s.changes == [] and s.flags == [] and not s.changed


def test_water_is_flagged_inorganic_and_kept():
    s = standardize_smiles("O")
    assert s.smiles == "O" and s.changes == []
    assert s.flags == [f"inorganic: no carbon atom, {ORGANIC_ONLY}"]


def test_sodium_chloride_is_flagged_not_stripped_to_nothing():
    s = standardize_smiles("[Na+].[Cl-]")
    # nothing organic to keep: the input stays as entered, with a clear flag
    assert s.smiles == "[Cl-].[Na+]" and s.changes == []
    assert s.flags[0].startswith("inorganic: no carbon atom")
    assert any("metal (Na)" in f for f in s.flags)


def test_cisplatin_is_predicted_as_entered_with_metal_flag():
    s = standardize_smiles("N.N.Cl[Pt]Cl")
    # the ammines are ligands, not counter-ions: fragment stripping would leave PtCl2
    assert sorted(s.smiles.split(".")) == ["N", "N", "[Cl][Pt][Cl]"]
    assert s.changes == []
    assert f"contains a metal (Pt): {ORGANIC_ONLY}" in s.flags
    assert any(f.startswith("inorganic: no carbon atom") for f in s.flags)


def test_organometallic_with_carbon_gets_only_the_metal_flag():
    s = standardize_smiles("[CH3][Hg]Cl")  # methylmercury chloride
    assert s.flags == [f"contains a metal (Hg): {ORGANIC_ONLY}"] and s.changes == []


def test_sodium_carboxylate_salt_is_stripped_and_neutralised():
    s = standardize_smiles("CC(=O)[O-].[Na+]")
    assert s.smiles == "CC(=O)O"
    assert s.changes == ["salt stripped: Na+", "neutralised (net charge -1 → 0)"]
    assert s.flags == [] and s.changed


def test_covalent_sodium_salt_is_disconnected_then_stripped():
    s = standardize_smiles("CC(=O)O[Na]")
    assert s.smiles == "CC(=O)O" and "salt stripped: Na+" in s.changes and s.flags == []


def test_charged_carboxylate_alone_is_neutralised():
    s = standardize_smiles("CCCC(=O)[O-]")
    assert s.smiles == "CCCC(=O)O" and s.changes == ["neutralised (net charge -1 → 0)"]


def test_zwitterion_is_neutralised_and_said_so():
    s = standardize_smiles("[NH3+]CC(=O)[O-]")
    assert s.smiles == "NCC(=O)O" and s.changes == ["neutralised (zwitterion)"]


def test_quaternary_ammonium_keeps_its_charge_and_says_so():
    s = standardize_smiles("C[N+](C)(C)C.[Cl-]")
    assert s.smiles == "C[N+](C)(C)C"
    assert s.changes == ["salt stripped: Cl-", "net charge +1 remains (permanent charge)"]


def test_hydrochloride_salt_of_an_amine():
    s = standardize_smiles("CCN.Cl")
    assert s.smiles == "CCN" and s.changes == ["salt stripped: HCl"] and s.flags == []


def test_dihydrochloride_counts_its_counter_ions():
    s = standardize_smiles("Cl.Cl.NCCN")
    assert s.smiles == "NCCN" and s.changes == ["salt stripped: HCl ×2"]


def test_protonated_amine_hydrochloride_is_stripped_and_neutralised():
    s = standardize_smiles("CC[NH3+].[Cl-]")
    assert s.smiles == "CCN" and s.changes == ["salt stripped: Cl-", "neutralised (net charge +1 → 0)"]


def test_organic_counter_acid_is_a_salt_not_a_mixture():
    s = standardize_smiles("CN1CCC[C@H]1c1cccnc1.OC(=O)C(F)(F)F")  # nicotine trifluoroacetate
    assert s.smiles == "CN1CCC[C@H]1c1cccnc1"
    assert s.changes == ["salt stripped: trifluoroacetic acid"]


def test_hydrate_water_is_stripped():
    s = standardize_smiles("CC(=O)Nc1ccc(O)cc1.O")
    assert s.smiles == "CC(=O)Nc1ccc(O)cc1" and s.changes == ["water stripped (hydrate)"]


def test_mixture_keeps_the_largest_organic_fragment_and_names_what_was_dropped():
    s = standardize_smiles("CCO.c1ccccc1")
    assert s.smiles == "c1ccccc1"
    assert s.changes == ["kept the largest fragment of 2 (mixture); dropped CCO"]
    assert s.flags == []


def test_largest_organic_fragment_wins_over_a_bigger_inorganic_one():
    s = standardize_smiles("CCO.[O-]S(=O)(=O)[O-].[Na+].[Na+]")
    assert s.smiles == "CCO"
    assert "salt stripped: Na+ ×2" in s.changes and "salt stripped: sulfate" in s.changes


def test_unparsable_smiles_is_an_input_error():
    with pytest.raises(InputError, match="C1CC"):
        standardize_smiles("C1CC")


@pytest.mark.parametrize("smiles", ["CCO", "c1ccc2[nH]ccc2c1", "CC(=O)Oc1ccccc1C(=O)O", "C[C@H](N)C(=O)O",
                                    "OB(O)c1ccccc1", "C[Si](C)(C)C", "FC(F)(F)c1ccc(Cl)cc1"])
def test_the_shortcut_for_neutral_single_molecules_matches_the_full_standardiser(smiles):
    from rdkit import Chem

    from tagllm_core.standardize import _standardise_organic

    full = _standardise_organic(Chem.MolFromSmiles(smiles), set())
    fast = standardize_smiles(smiles)
    assert (fast.smiles, fast.changes, fast.flags) == (full.smiles, full.changes, full.flags)


def test_clean_standardised_smiles_is_what_prediction_and_training_read():
    c, std = clean_standardised_smiles("  CCN.Cl  ")
    assert c.ok and c.value == "CCN" and std.changes == ["salt stripped: HCl"]
    # the length limit applies after standardisation: a salt that fits once stripped is kept
    c, _ = clean_standardised_smiles("CCCCCCCCCCO.[Na+].[Cl-]", max_length=12)
    assert c.ok and c.value == "CCCCCCCCCCO"
    c, std = clean_standardised_smiles("CCCCCCCCCCCCO", max_length=12)
    assert not c.ok and "longer than the limit of 12" in c.error and std is not None
    c, std = clean_standardised_smiles("C1CC")
    assert not c.ok and "C1CC" in c.error and std is None
    c, std = clean_standardised_smiles("O")  # inorganic: kept as entered, flagged
    assert c.value == "O" and std.flags and not std.changes


def test_training_summary_counts_standardised_and_flagged_smiles_by_kind():
    changed = [(3, ["salt stripped: HCl"]), (7, ["salt stripped: Na+", "neutralised (net charge -1 → 0)"]),
               (9, ["net charge +1 remains (permanent charge)"]),  # the SMILES itself did not change
               (12, ["water stripped (hydrate)"])]
    flagged = [(5, ["inorganic: no carbon atom, " + ORGANIC_ONLY])]
    std, inorganic = training_summary(changed, flagged)
    assert std.startswith("3 training SMILES were standardised (salt stripped ×2, ")
    assert "neutralised" in std and "water stripped" in std and "rows 3, 7, 12" in std and "9" not in std
    assert inorganic.startswith("1 training SMILES is inorganic or contains a metal (row 5)")
    assert training_summary([], []) == [] and training_summary([(9, ["net charge +1 remains"])], []) == []
    many = training_summary([(r, ["salt stripped: HCl"]) for r in range(1, 30)], [], "validation")[0]
    assert many.startswith("29 validation SMILES") and "rows 1, 2, 3, 4, 5, 6, 7, 8, 9, 10…" in many


# --- proteins ----------------------------------------------------------------------------------


def test_digits_inside_a_peptide_are_an_error_not_stripped():
    c = clean_protein("ACDEFG123HIK")
    assert not c.ok and c.value is None
    assert "digits" in c.error and "123" in c.error


def test_position_numbers_of_a_numbered_listing_are_still_ignored():
    c = clean_protein("   1 MKTAY IAKQR 10\n  11 qisfv\n")
    assert c.ok and c.value == "MKTAYIAKQRQISFV"


def test_clean_protein_reports_the_length_before_cropping():
    c = clean_protein("MKTAYIAKQR" * 200, max_length=100)
    assert len(c.value) == 100 and c.length == 2000


def test_length_ranges_of_training_sequences_ignore_bad_rows():
    ranges = length_ranges({"sequence": ["MKTAY", "M" * 1200, None, "not a protein 123", ">h\nMKT\nAY\nWW"]})
    assert ranges == {"sequence": {"min": 5, "max": 1200}}
    assert length_ranges({"sequence": [None, ""]}) == {}


def test_a_1555_residue_protein_is_flagged_against_the_training_range():
    flag = length_flag(1555, {"min": 200, "max": 900})
    assert flag == "length 1,555 residues is far outside the training range 200–900"
    assert length_flag(1000, {"min": 200, "max": 900}) is None  # within the 25% margin
    assert length_flag(12, {"min": 200, "max": 900}) is not None
    assert length_flag(1555, None) is None  # an older tag did not record lengths: unknown, no flag


# --- prediction range ----------------------------------------------------------------------------


def test_prediction_outside_the_training_label_range_is_flagged_with_a_margin():
    labels = [1.0, 2.0, 3.5, 11.0]  # range 10, margin 1
    assert prediction_range_flag(11.9, labels) is None
    assert prediction_range_flag(0.5, labels) is None
    assert prediction_range_flag(17.6, labels) == "prediction 17.6 is outside the training labels' range 1–11"
    assert prediction_range_flag(-2.0, labels) is not None
    assert prediction_range_flag(17.6, []) is None  # no labels stored: unknown
    assert prediction_range_flag(17.6, [3.0, 3.0]) is None  # a single value has no range to compare against

"""Tests for tagllm_core.chem: reference values for known drugs, alerts, 3D and viewer HTML."""

from __future__ import annotations

import json
import threading

import pytest
from rdkit import Chem

from tagllm_core import chem
from tagllm_core.exceptions import InputError

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
RHODANINE_ENE = "O=C1NC(=S)SC1=Cc1ccccc1"  # 5-benzylidene rhodanine, the textbook PAINS
CATECHOL = "Oc1ccccc1O"
BENZENE = "c1ccccc1"
TRIACONTANE = "C" * 30  # MW 422.8: under 500 Da, yet cLogP far above 5
TETRACONTANE = "C" * 40  # MW 563.1 and cLogP > 5: two violations


# --- parsing ---------------------------------------------------------------


@pytest.mark.parametrize(
    "func",
    [chem.descriptors, chem.structural_alerts, chem.mol_to_svg, chem.conformer_molblock, chem.parse_smiles],
)
@pytest.mark.parametrize("smiles", ["not_a_smiles", "C1CC", "C(C)(C)(C)(C)C"])
def test_invalid_smiles_raise_input_error_naming_the_smiles(func, smiles):
    with pytest.raises(InputError) as err:
        func(smiles)
    assert smiles in str(err.value)


@pytest.mark.parametrize("smiles", ["", "   "])
def test_empty_smiles_is_an_input_error(smiles):
    with pytest.raises(InputError, match="Empty SMILES"):
        chem.parse_smiles(smiles)


def test_parse_error_gives_rdkit_reason():
    with pytest.raises(InputError, match="unclosed ring"):
        chem.parse_smiles("C1CC")
    with pytest.raises(InputError, match="[Vv]alence"):
        chem.parse_smiles("C(C)(C)(C)(C)C")


def test_invalid_smiles_print_nothing_to_stderr(capfd):
    for smiles in ["not_a_smiles", "C1CC", "C(C)(C)(C)(C)C"]:
        with pytest.raises(InputError):
            chem.parse_smiles(smiles)
    assert capfd.readouterr().err == ""


def test_surrounding_whitespace_is_ignored():
    assert chem.descriptors(f"  {ASPIRIN}\n").formula == "C9H8O4"


# --- descriptors and Lipinski ---------------------------------------------


def test_aspirin_descriptors_match_reference_values():
    d = chem.descriptors(ASPIRIN)
    assert d.mw == pytest.approx(180.16, abs=0.01)
    assert d.tpsa == pytest.approx(63.6, abs=0.05)
    assert d.clogp == pytest.approx(1.31, abs=0.01)  # Wildman-Crippen
    assert d.hbd == 1
    assert d.hba == 4  # Lipinski's N+O count: all four oxygens
    assert d.heavy_atoms == 13
    assert d.formula == "C9H8O4"
    assert d.qed == pytest.approx(0.55, abs=0.01)  # Bickerton et al. 2012 report 0.55


def test_ibuprofen_formula_and_weight():
    d = chem.descriptors("CC(C)Cc1ccc(cc1)C(C)C(=O)O")
    assert d.formula == "C13H18O2"
    assert d.mw == pytest.approx(206.28, abs=0.01)
    assert d.rotatable_bonds == 4


def test_aspirin_passes_rule_of_five():
    result = chem.lipinski(chem.descriptors(ASPIRIN))
    assert result.violations == []
    assert result.passes


def test_one_violation_still_passes():
    result = chem.lipinski(chem.descriptors(TRIACONTANE))
    assert len(result.violations) == 1
    assert "cLogP" in result.violations[0]
    assert result.passes


def test_big_greasy_molecule_fails_rule_of_five():
    result = chem.lipinski(chem.descriptors(TETRACONTANE))
    assert len(result.violations) == 2
    assert any("Molecular weight" in v for v in result.violations)
    assert any("cLogP" in v for v in result.violations)
    assert not result.passes


def test_rule_of_five_limits_are_inclusive_and_all_four_counted():
    at_limit = chem.Descriptors(
        mw=500.0, clogp=5.0, tpsa=0.0, hbd=5, hba=10, rotatable_bonds=0, qed=0.5, heavy_atoms=35, formula="X"
    )
    assert chem.lipinski(at_limit).violations == []
    over = chem.Descriptors(
        mw=500.1, clogp=5.1, tpsa=0.0, hbd=6, hba=11, rotatable_bonds=0, qed=0.5, heavy_atoms=35, formula="X"
    )
    result = chem.lipinski(over)
    assert len(result.violations) == 4
    assert not result.passes


# --- structural alerts ----------------------------------------------------


def test_rhodanine_ene_is_a_pains_hit():
    alerts = chem.structural_alerts(RHODANINE_ENE)
    pains = [a for a in alerts if a.catalog == "PAINS"]
    assert any("ene_rhod" in a.description for a in pains)
    assert all(a.catalog in {"PAINS", "Brenk"} for a in alerts)


def test_catechol_hits_both_catalogs():
    catalogs = {a.catalog for a in chem.structural_alerts(CATECHOL)}
    assert catalogs == {"PAINS", "Brenk"}


def test_benzene_has_no_alerts():
    assert chem.structural_alerts(BENZENE) == []


def test_alert_atoms_are_valid_highlights():
    mol = Chem.MolFromSmiles(RHODANINE_ENE)
    for alert in chem.structural_alerts(RHODANINE_ENE):
        assert alert.atoms
        assert all(0 <= i < mol.GetNumAtoms() for i in alert.atoms)
    pains = next(a for a in chem.structural_alerts(RHODANINE_ENE) if a.catalog == "PAINS")
    assert "<svg" in chem.mol_to_svg(RHODANINE_ENE, highlight_atoms=pains.atoms)


def test_catalogs_are_built_once_across_threads(monkeypatch):
    monkeypatch.setattr(chem, "_catalogs", None)
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(chem._filter_catalogs())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 8
    assert all(c is seen[0] for c in seen)
    assert set(seen[0]) == {"PAINS", "Brenk"}


# --- 2D depiction ---------------------------------------------------------


def test_mol_to_svg_is_an_svg_of_the_requested_size():
    svg = chem.mol_to_svg(ASPIRIN, width=320, height=240)
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    assert svg.rstrip().endswith("</svg>")
    assert "width='320px'" in svg and "height='240px'" in svg


def test_mol_to_svg_rejects_atom_indices_out_of_range():
    with pytest.raises(InputError, match="13 atoms"):
        chem.mol_to_svg(ASPIRIN, highlight_atoms=[0, 13])


# --- 3D conformer ---------------------------------------------------------


def _coords(molblock: str) -> list[tuple[str, float, float, float]]:
    mol = Chem.MolFromMolBlock(molblock, removeHs=False)
    conf = mol.GetConformer()
    return [(atom.GetSymbol(), *tuple(conf.GetAtomPosition(atom.GetIdx()))) for atom in mol.GetAtoms()]


def test_conformer_is_3d_with_hydrogens():
    block = chem.conformer_molblock(ASPIRIN)
    mol = Chem.MolFromMolBlock(block, removeHs=False)
    assert mol.GetConformer().Is3D()
    atoms = _coords(block)
    assert len(atoms) == 21  # C9H8O4
    assert sum(1 for symbol, *_ in atoms if symbol == "H") == 8
    assert any(abs(z) > 0.1 for *_, z in atoms)


def test_conformer_bond_lengths_are_physical():
    # MMFF-optimised ethane: C-C near 1.51 A, C-H near 1.09 A.
    mol = Chem.MolFromMolBlock(chem.conformer_molblock("CC"), removeHs=False)
    conf = mol.GetConformer()
    for bond in mol.GetBonds():
        a, b = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        length = (conf.GetAtomPosition(a) - conf.GetAtomPosition(b)).Length()
        symbols = {bond.GetBeginAtom().GetSymbol(), bond.GetEndAtom().GetSymbol()}
        expected = 1.51 if symbols == {"C"} else 1.09
        assert length == pytest.approx(expected, abs=0.03)


def test_conformer_is_deterministic_for_a_seed():
    assert chem.conformer_molblock(ASPIRIN, seed=7) == chem.conformer_molblock(ASPIRIN, seed=7)
    assert chem.conformer_molblock(ASPIRIN, seed=7) != chem.conformer_molblock(ASPIRIN, seed=8)


def test_conformer_without_force_field_parameters_still_embeds(capfd):
    # Neither MMFF nor UFF types selenophene's Se: the ETKDG geometry is returned.
    atoms = _coords(chem.conformer_molblock("[Se]1C=CC=C1"))
    assert atoms[0][0] == "Se"
    assert capfd.readouterr().err == ""


def test_embedding_retries_with_random_coordinates(monkeypatch):
    real_embed = chem.rdDistGeom.EmbedMolecule
    calls = []

    def flaky_embed(mol, params):
        calls.append(params.useRandomCoords)
        return -1 if len(calls) == 1 else real_embed(mol, params)

    monkeypatch.setattr(chem.rdDistGeom, "EmbedMolecule", flaky_embed)
    block = chem.conformer_molblock(ASPIRIN)
    assert calls == [False, True]
    assert len(_coords(block)) == 21


def test_embedding_failure_is_an_input_error(monkeypatch):
    monkeypatch.setattr(chem.rdDistGeom, "EmbedMolecule", lambda mol, params: -1)
    with pytest.raises(InputError, match="3D coordinates") as err:
        chem.conformer_molblock(ASPIRIN)
    assert ASPIRIN in str(err.value)


# --- 3D viewer ------------------------------------------------------------


@pytest.fixture
def molblock():
    return chem.conformer_molblock("CCO")


def test_viewer_without_local_js_loads_from_cdn(monkeypatch, molblock):
    monkeypatch.setattr(chem, "_js_search_paths", lambda: [])
    assert chem.local_3dmol_js_path() is None
    html = chem.view3d_html(molblock, width=300, height=200)
    assert json.dumps(molblock) in html
    assert "3Dmol-min.js" in html  # py3Dmol's CDN address
    assert "width: 300px" in html and "height: 200px" in html
    assert '"mol"' in html and '"stick"' in html


def test_viewer_inlines_local_js_and_references_no_url(monkeypatch, tmp_path, molblock):
    fake_js = tmp_path / "3Dmol-min.js"
    fake_js.write_text("window.$3Dmol = {marker: 'local copy'}; var s = '</script>';", encoding="utf-8")
    monkeypatch.setattr(chem, "_js_search_paths", lambda: [tmp_path / "missing.js", fake_js])
    assert chem.local_3dmol_js_path() == fake_js
    html = chem.view3d_html(molblock, style="ballstick")
    assert "marker: 'local copy'" in html
    assert "$3Dmolpromise = Promise.resolve()" in html
    assert "http://" not in html and "https://" not in html
    assert json.dumps(molblock) in html
    # The inlined text must not be able to close its own <script> element.
    assert "'<\\/script>'" in html
    assert html.index("marker") < html.index(json.dumps(molblock))


def test_viewer_escapes_script_end_in_molblock(monkeypatch, molblock):
    monkeypatch.setattr(chem, "_js_search_paths", lambda: [])
    hostile = "</script><script>alert(1)</script>\n" + molblock
    html = chem.view3d_html(hostile)
    assert "</script><script>alert(1)" not in html
    assert "<\\/script><script>alert(1)" in html


def test_viewer_rejects_unknown_style_and_empty_molblock(molblock):
    with pytest.raises(ValueError, match="style"):
        chem.view3d_html(molblock, style="cartoon")
    with pytest.raises(InputError):
        chem.view3d_html("  ")

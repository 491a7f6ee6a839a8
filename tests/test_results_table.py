"""Issue 10 item 7, tables people can read: long inputs shortened on screen only, blank cells for an error
row's numbers, a click on a row opening its details, optional descriptor and alert columns in the table and
the download. The shaping functions are tested without Streamlit; two AppTests check the Predict page
wires them up (the tiny backbone of tests/test_app.py)."""

from __future__ import annotations

import io
import json
import math

import pandas as pd
import pytest

from tagllm_core.property_columns import (
    ALERT_COLUMNS,
    DESCRIPTOR_COLUMNS,
    PROTEIN_COLUMNS,
    property_columns,
    protein_columns,
)
from ui.results import (
    TRUNCATE_AT,
    PredictionRun,
    display_frame,
    download_frame,
    newly_selected,
    shorten,
    with_properties,
)

from test_app import by_key, new_app, texts, tiny_app, tiny_backbone_dir  # noqa: F401 (fixtures)

LONG_SMILES = "C" * 70 + "O"  # 71 characters, a valid alkanol
QUINONE = "O=C1C=CC(=O)C=C1"  # a PAINS (quinone_A) and a Brenk alert


def _run(frame: pd.DataFrame, slots=(("smiles", "smiles"),), source=None) -> PredictionRun:
    return PredictionRun(tag="T", task="regression", slots=list(slots), frame=frame, zero_shot=False, source=source)


def _frame() -> pd.DataFrame:
    """Three rows as ``single_run`` shapes them: a long input, an error row, a salt."""
    return pd.DataFrame({
        "row": [1, 2, 3], "status": ["✅ ok", "❌ error", "✅ ok"],
        "prediction": [1.5, None, -0.25], "lower": [1.0, None, -0.75], "upper": [2.0, None, 0.25],
        "similarity": [0.5, None, 1.0], "domain": ["in", "", "in"], "flags": ["", "", ""],
        "error": ["", "row 2, smiles: invalid SMILES 'C1CC': RDKit could not parse it", ""],
        "smiles": [LONG_SMILES, "C1CC", "CCN.Cl"], "zero_shot": [False] * 3, "warnings": [""] * 3,
        "standardised": [LONG_SMILES, "", "CCN"], "changes": ["", "", "salt stripped: HCl"],
    })


# --- shortening long inputs -------------------------------------------------------------------------


def test_shorten_cuts_only_long_strings_and_ends_with_an_ellipsis():
    assert shorten("CCO") == "CCO"
    assert shorten("C" * TRUNCATE_AT) == "C" * TRUNCATE_AT  # at the limit: whole
    cut = shorten(LONG_SMILES)
    assert len(cut) == TRUNCATE_AT and cut.endswith("…") and LONG_SMILES.startswith(cut[:-1])
    assert shorten(None) is None and math.isnan(shorten(float("nan")))


def test_display_frame_shortens_inputs_on_screen_and_the_download_keeps_them_whole():
    frame = _frame()
    shown = display_frame(frame, [("smiles", "smiles")])
    assert shown.loc[0, "smiles"].endswith("…") and len(shown.loc[0, "smiles"]) == TRUNCATE_AT
    assert shown.loc[0, "standardised"].endswith("…")
    assert shown.loc[2, "smiles"] == "CCN.Cl"  # short inputs untouched
    assert frame.loc[0, "smiles"] == LONG_SMILES  # the run's own frame is not changed
    assert list(shown.columns) == list(frame.columns)
    csv = download_frame(_run(frame)).to_csv(index=False)
    assert LONG_SMILES in csv and "…" not in csv


def test_error_rows_have_missing_numbers_not_the_text_none():
    frame = _frame()
    shown = display_frame(frame, [("smiles", "smiles")])
    # numbers stay numeric with a missing value (the page shows it blank: placeholder="")
    assert shown["prediction"].dtype.kind == "f" and math.isnan(shown.loc[1, "prediction"])
    assert not (shown.astype(str) == "None").drop(columns=["prediction", "lower", "upper", "similarity"]).any().any()
    # the download's cells are empty
    csv = download_frame(_run(frame)).to_csv(index=False)
    assert "None" not in csv and "nan" not in csv.lower()
    row2 = pd.read_csv(io.StringIO(csv), keep_default_na=False).iloc[1]
    assert row2["prediction"] == "" and row2["lower"] == "" and row2["similarity"] == ""


# --- a click on a row -------------------------------------------------------------------------------


def test_a_new_selection_opens_its_row_and_an_old_one_leaves_the_detail_alone():
    assert newly_selected([], None) is None  # nothing clicked
    assert newly_selected([4], None) == 5  # 0-based position -> 1-based row of the detail view
    assert newly_selected([4], 4) is None  # still selected on a later rerun: the detail box may have moved on
    assert newly_selected([2], 4) == 3  # another row clicked
    assert newly_selected([], 4) is None  # deselected: the detail stays where it is


# --- descriptor and alert columns ---------------------------------------------------------------------


def test_property_columns_describe_the_standardised_molecule_and_leave_unreadable_rows_blank():
    cols = property_columns(["CCN.Cl", "C1CC", None, QUINONE, "CCN"])
    assert list(cols.columns) == [*DESCRIPTOR_COLUMNS.values(), *ALERT_COLUMNS]
    # the hydrochloride is described as ethylamine, the molecule the model read
    assert cols.loc[0, "MW (Da)"] == pytest.approx(45.085, abs=1e-3) and cols.loc[0, "heavy atoms"] == 3
    assert cols.loc[0].drop(["PAINS alerts", "Brenk alerts"]).tolist() == cols.loc[4].drop(
        ["PAINS alerts", "Brenk alerts"]).tolist()
    for i in (1, 2):  # unreadable and missing: blanks, not zeros
        assert cols.loc[i].isna().all()
    assert cols.loc[3, "alerts"] == 2 and "quinone" in cols.loc[3, "PAINS alerts"]
    assert cols.loc[3, "Brenk alerts"] and cols.loc[0, "PAINS alerts"] == "" and cols.loc[0, "alerts"] == 0
    assert str(cols["H-bond donors"].dtype) == "Int64"  # counts print as counts


def test_all_rdkit_descriptors_on_request_and_a_prefix_per_input():
    cols = property_columns(["CCO", "C1CC"], full=True, prefix="ligand: ")
    rdkit = [c for c in cols.columns if c.startswith("ligand: rdkit:")]
    assert len(rdkit) > 150 and "ligand: rdkit:MolWt" in rdkit and "ligand: MW (Da)" in cols.columns
    assert cols.loc[0, "ligand: rdkit:MolWt"] == pytest.approx(46.07, abs=0.01)
    assert cols.loc[1, rdkit].isna().all()


def test_with_properties_puts_the_columns_after_the_error_in_table_and_download():
    frame = _frame()
    out = with_properties(frame, [("smiles", "smiles")])
    cols = list(out.columns)
    assert cols[cols.index("error") + 1] == "MW (Da)" and cols[-1] == "changes"
    assert out.loc[1, "MW (Da)"] != out.loc[1, "MW (Da)"]  # the error row: blank
    assert out.loc[2, "heavy atoms"] == 3  # CCN.Cl -> ethylamine
    source = pd.DataFrame({"compound": ["a", "b", "c"], "smiles": frame["smiles"]})
    down = download_frame(_run(frame, source=source), properties=True)
    assert list(down.columns[:2]) == ["compound", "smiles"] and "Brenk alerts" in down.columns
    assert "rdkit:MolWt" not in down.columns
    assert "rdkit:MolWt" in download_frame(_run(frame), properties=True, full=True).columns
    assert "MW (Da)" not in download_frame(_run(frame)).columns  # optional: off by default


def test_each_input_gets_its_block_proteins_their_protparam_columns():
    frame = pd.DataFrame({"row": [1], "error": [""], "a": ["CCO"], "b": ["CCN"], "p": ["MKV"]})
    out = with_properties(frame, [("a", "smiles"), ("b", "smiles"), ("p", "protein")])
    cols = list(out.columns)
    assert "a: MW (Da)" in cols and "b: MW (Da)" in cols and "p: MW (Da)" in cols and "p: pI" in cols
    assert "p: cLogP" not in cols and "a: pI" not in cols
    assert cols.index("a: MW (Da)") < cols.index("b: MW (Da)") < cols.index("p: MW (Da)") < cols.index("a")
    only_protein = with_properties(frame, [("p", "protein")])
    assert list(only_protein.columns) == [*frame.columns[:2], *PROTEIN_COLUMNS.values(), *frame.columns[2:]]


UBIQUITIN = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"


def test_protein_columns_read_the_sequence_prediction_reads_and_leave_unreadable_rows_blank():
    fasta = f">sp|P0CG48|UBQ\n{UBIQUITIN[:40]}\n{UBIQUITIN[40:]}"
    cols = protein_columns([UBIQUITIN, fasta, "ACDEFG123HIK", None, "  ", "XXXX", UBIQUITIN.lower() + "X"])
    assert list(cols.columns) == list(PROTEIN_COLUMNS.values())
    # ubiquitin: 76 residues, 8,565 Da, pI near 6.6 (ExPASy ProtParam: 8564.84 Da, pI 6.56)
    assert cols.loc[0, "length (residues)"] == 76 and cols.loc[0, "MW (Da)"] == pytest.approx(8564.8, abs=1)
    assert cols.loc[0, "pI"] == pytest.approx(6.56, abs=0.1) and cols.loc[0, "non-standard residues"] == 0
    assert cols.loc[0].tolist() == cols.loc[1].tolist()  # the FASTA header and line breaks are not residues
    for i in (2, 3, 4, 5):  # digits inside (an error row), missing, blank, no standard residue: blanks
        assert cols.loc[i].isna().all(), cols.loc[i]
    # lower case is read; the X is counted and left out of the numbers
    assert cols.loc[6, "length (residues)"] == 77 and cols.loc[6, "non-standard residues"] == 1
    assert cols.loc[6, "MW (Da)"] == pytest.approx(cols.loc[0, "MW (Da)"])
    assert str(cols["length (residues)"].dtype) == "Int64"


def test_protein_composition_on_request():
    cols = protein_columns(["AAAG", "ACDEFG123HIK"], full=True, prefix="target: ")
    assert cols.loc[0, "target: frac:A"] == pytest.approx(0.75) and cols.loc[0, "target: frac:G"] == pytest.approx(0.25)
    assert "target: pI" in cols.columns and "target: protparam:gravy" in cols.columns
    assert cols.loc[1].isna().all()


# --- the Predict page ------------------------------------------------------------------------------


def _predict(at, text: str):
    at.text_area(key="paste::smiles").input(text).run()
    at.button(key="predict_button").click().run()
    assert not at.exception, [e.value for e in at.exception]


def test_predict_page_table_blanks_shortens_and_opens_a_clicked_row(tiny_app):  # noqa: F811
    at = new_app("pages/predict.py")
    _predict(at, f"{LONG_SMILES}\nC1CC\nCCN.Cl")
    table = next(df for df in at.dataframe if df.key == "predict_table")
    assert table.proto.placeholder == ""  # missing values render as empty cells
    shown = table.value
    assert shown.loc[0, "smiles"].endswith("…") and math.isnan(shown.loc[1, "prediction"])
    assert "shortened here" in texts(at.caption)
    # a click on row 3 (position 2) opens its details
    assert at.number_input(key="detail_row").value == 1
    at.session_state["predict_table"] = {"selection": {"rows": [2], "columns": [], "cells": []}}
    at.run()
    assert at.number_input(key="detail_row").value == 3
    assert any("Standardised from" in c.value and "salt stripped: HCl" in c.value for c in at.caption)
    # the detail's own box still moves on while row 3 stays selected
    at.number_input(key="detail_row").set_value(1).run()
    assert at.number_input(key="detail_row").value == 1
    # row 1's detail holds the full long input
    assert any(LONG_SMILES == c.value for c in at.code)


def test_predict_page_optional_descriptor_and_alert_columns(tiny_app):  # noqa: F811
    at = new_app("pages/predict.py")
    _predict(at, f"CCO\n{QUINONE}")
    assert "MW (Da)" not in next(df for df in at.dataframe if df.key == "predict_table").value.columns
    at.checkbox(key="predict_properties").check().run()
    assert not at.exception, [e.value for e in at.exception]
    table = next(df for df in at.dataframe if df.key == "predict_table")
    assert {"MW (Da)", "PAINS alerts", "Brenk alerts"} <= set(table.value.columns)
    assert table.value.loc[1, "alerts"] == 2
    assert json.loads(table.proto.columns)["MW (Da)"]["type_config"]["format"] == "%.2f"

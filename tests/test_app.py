"""AppTests for the Streamlit app (``streamlit.testing.v1.AppTest``).

Most tests point ``TAGLLM_BACKBONE`` at a tiny random Llama saved to a folder
(the conftest's builders), so pages load in well under a second and training
jobs (real subprocesses: ``python -m tagllm_core train-…``) finish in seconds.
The ``real`` tests repeat the main paths on the bundled SmolLM2 backbone.

Every test has its own ``TAGLLM_HOME`` (conftest), hence its own tag library
and job database; the job processes inherit it through the environment.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from tagllm_core.backbone import get_backbone
from tagllm_core.jobs import JobStore, launch
from tagllm_core.paths import jobs_db_path
from tagllm_core.tags import TagLibrary, load_tag_file, save_tag_file
from ui import training

from _tag_builders import synthetic_solubility_tag
from conftest import make_char_tokenizer, make_domain_tag, make_function_tag, make_tiny_model

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "app.py")
EXAMPLES = REPO / "tagllm_core" / "data" / "examples"
FAKE_JOB = Path(__file__).resolve().parent / "_fake_job.py"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + character tokenizer saved as a Hugging Face folder (a valid TAGLLM_BACKBONE)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    make_tiny_model("llama", seed=0).save_pretrained(folder)
    make_char_tokenizer(add_bos=True).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_app(tagllm_home, monkeypatch, tiny_backbone_dir):
    """The app on the tiny backbone, with <SMILES>, <Protein> and a <Solubility> function tag in the user library."""
    monkeypatch.setenv("TAGLLM_BACKBONE", str(tiny_backbone_dir))
    bb = get_backbone(str(tiny_backbone_dir))
    lib = TagLibrary(bb.fingerprint)
    lib.save(make_domain_tag(bb, "SMILES", "smiles"))
    lib.save(make_domain_tag(bb, "Protein", "protein", seed=2))
    lib.save(make_function_tag(bb, "Solubility", interval={"level": 0.9, "halfwidth": [0.5]}))
    return bb, lib


def new_app(page: str | None = None, timeout: float = 60) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page:
        at.switch_page(page).run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def by_key(widgets, key):
    return next(w for w in widgets if w.key == key)


def wait_for_job(store: JobStore, job_id: int, timeout: float = 180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = store.get(job_id)
        if job.is_done:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s; log:\n{store.get(job_id).log_tail()}")


# --------------------------------------------------------------------------- app shell


def test_app_boots_with_sidebar(tiny_app, tiny_backbone_dir):
    at = new_app()
    sidebar = texts(at.sidebar.markdown) + texts(at.sidebar.caption)
    assert tiny_backbone_dir.name in sidebar  # backbone name
    assert "device **cpu**" in sidebar and "float32" in sidebar
    assert "Function tags: **1**" in sidebar and "Domain tags: **2**" in sidebar
    assert at.title[0].value == "Predict"  # the default page


@pytest.mark.parametrize("page,title", [("pages/train.py", "Train"), ("pages/library.py", "Tag library")])
def test_every_page_renders(tiny_app, page, title):
    at = new_app(page)
    assert at.title[0].value == title


def test_predict_page_without_function_tags_points_to_training(tagllm_home, monkeypatch, tiny_backbone_dir):
    monkeypatch.setenv("TAGLLM_BACKBONE", str(tiny_backbone_dir))
    at = new_app("pages/predict.py")
    assert "no function tag" in texts(at.info)


# --------------------------------------------------------------------------- predict


def test_predict_pasted_input_with_a_bad_row(tiny_app):
    at = new_app("pages/predict.py")
    assert "Solubility" in at.selectbox(key="predict_tag").value
    at.text_area(key="paste::smiles").input("CCO\nC1CC(C\nc1ccccc1O").run()
    at.button(key="predict_button").click().run()
    assert not at.exception
    run = at.session_state["prediction"]
    frame = run.frame
    assert list(frame["row"]) == [1, 2, 3]
    assert frame.loc[1, "error"] and "invalid SMILES" in frame.loc[1, "error"]
    assert frame.loc[0, "error"] == "" and frame.loc[2, "error"] == ""
    assert isinstance(frame.loc[0, "prediction"], float) and isinstance(frame.loc[2, "prediction"], float)
    assert frame.loc[0, "lower"] == pytest.approx(frame.loc[0, "prediction"] - 0.5)
    assert "label_percentile" in frame.columns and 0 <= frame.loc[0, "label_percentile"] <= 100
    assert pd.isna(frame.loc[0, "reference_percentile"])  # a test tag stores no reference distribution
    # the error is spelled out on the page, not only in the table
    assert "1 row(s) could not be predicted" in texts(at.error)
    shown = at.dataframe[-3].value if len(at.dataframe) >= 3 else None
    assert any(len(df.value) == 3 and "error" in df.value.columns for df in at.dataframe), shown
    # CSV download of every row, histogram and the detail view of row 1 (a molecule picture)
    assert at.get("download_button")
    assert at.get("plotly_chart")
    assert at.number_input(key="detail_row").value == 1
    assert len(at.get("imgs")) >= 1 or at.get("image")
    assert any("Lipinski" in t for t in [texts(at.success), texts(at.warning)])
    # the row detail of the bad row shows its error
    at.number_input(key="detail_row").set_value(2).run()
    assert "invalid SMILES" in texts(at.error)


def test_predict_shows_standardisation_and_flags_in_table_and_detail(tiny_app):
    at = new_app("pages/predict.py")
    at.text_area(key="paste::smiles").input("CCN.Cl\nO").run()
    at.button(key="predict_button").click().run()
    assert not at.exception
    frame = at.session_state["prediction"].frame
    assert frame["standardised"].tolist() == ["CCN", "O"]
    assert frame.loc[0, "changes"] == "salt stripped: HCl"
    assert frame.loc[1, "status"] == "🚩 flagged" and "inorganic" in frame.loc[1, "flags"]
    # row 1's detail depicts the molecule the model read and says where it came from
    assert any("Standardised from" in c.value and "salt stripped: HCl" in c.value for c in at.caption)
    at.number_input(key="detail_row").set_value(2).run()
    assert "inorganic: no carbon atom" in texts(at.warning)


def test_predict_examples_button_fills_the_box(tiny_app):
    at = new_app("pages/predict.py")
    at.button(key="predict_examples").click().run()
    assert "aspirin" in at.text_area(key="paste::smiles").value
    at.button(key="predict_button").click().run()
    run = at.session_state["prediction"]
    assert run.n_ok == run.n_rows >= 5


def test_predict_csv_upload_with_column_picker(tiny_app):
    at = new_app("pages/predict.py")
    at.radio(key="predict_mode").set_value("Upload a CSV").run()
    csv = b"id,structure,note\nA,CCO,x\nB,not-a-smiles,y\nC,c1ccccc1,z\n"
    at.file_uploader(key="predict_upload").set_value(("mols.csv", csv, "text/csv")).run()
    assert not at.exception
    picker = at.selectbox(key="col::Solubility::smiles")
    assert picker.value == "structure"  # guessed from the column name
    at.button(key="predict_button").click().run()
    run = at.session_state["prediction"]
    assert run.n_rows == 3 and run.n_ok == 2
    assert "not-a-smiles" in run.frame.loc[1, "error"]
    from ui.results import download_frame

    out = download_frame(run)
    assert list(out.columns[:3]) == ["id", "structure", "note"]  # the uploaded columns come first
    assert "prediction" in out.columns and len(out) == 3


def test_predictions_of_a_file_with_measured_values_are_scored_and_compared(tiny_app):
    from tagllm_core.metrics import regression_metrics

    at = new_app("pages/predict.py")
    at.radio(key="predict_mode").set_value("Upload a CSV").run()
    smiles = ["CCO", "c1ccccc1", "CCCCN", "OCCO", "CC(=O)O", "CCCCCCO", "c1ccccc1CC", "bad(", "CN", "CCCl"]
    y = ["1.0", "2.5", "0.3", "", "3.3", "1.1", "2.2", "0.5", "0.9", "1.7"]
    csv = ("smiles,y,name\n" + "".join(f"{s},{v},m{i}\n" for i, (s, v) in enumerate(zip(smiles, y)))).encode()
    at.file_uploader(key="predict_upload").set_value(("measured.csv", csv, "text/csv")).run()
    at.button(key="predict_button").click().run()
    assert not at.exception, [e.value for e in at.exception]
    run = at.session_state["prediction"]
    # the column named like the tag's label is picked; the name column holds no numbers and is not offered
    picker = at.selectbox(key="measured_column")
    assert picker.value == "y" and picker.options == ["(none)", "y"]
    keep = [i for i in range(10) if i not in (3, 7)]  # no value; not predicted
    expected = regression_metrics(np.array(y, dtype=object)[keep].astype(float),
                                  run.frame["prediction"].to_numpy(float)[keep])
    tiles = {m.label: m.value for m in at.metric}
    assert tiles["RMSE"] == f"{expected['rmse']:.3f}" and tiles["Spearman"] == f"{expected['spearman']:.3f}"
    assert "Scored on 8 row(s); 1 without a measured value; 1 not predicted." in texts(at.caption)

    train = pd.DataFrame({"mol": [s for s in smiles if s != "bad("] * 3 + ["CCC", "CCCC", "c1ccncc1"],
                          "logS": np.arange(30) % 7 * 0.5})
    at.file_uploader(key="measured_train").set_value(("train.csv", train.to_csv(index=False).encode(),
                                                      "text/csv")).run()
    assert at.selectbox(key="measured_train::smiles").value == "mol"
    at.selectbox(key="measured_train_label").set_value("logS").run()
    at.button(key="measured_fit").click().run()
    assert not at.exception, [e.value for e in at.exception]
    table = next(d.value for d in at.dataframe if "model" in d.value.columns)
    assert list(table["model"]) == ["<Solubility>", "predict the training mean", "ridge on descriptors",
                                    "random forest on descriptors"]
    column = "tag − model, RMSE (95% CI)"
    assert table.loc[0, "rmse"] == pytest.approx(expected["rmse"]) and all(table[column][1:].str.contains(" to "))
    assert "Fitted on 30 training row(s)" in texts(at.caption)
    # another measured column (none here): the comparison is not shown for rows it was not made on
    at.selectbox(key="measured_column").set_value("(none)").run()
    assert not any(column in d.value.columns for d in at.dataframe)


def test_predict_example_csv(tiny_app):
    at = new_app("pages/predict.py")
    at.radio(key="predict_mode").set_value("Upload a CSV").run()
    at.selectbox(key="predict_example_file").set_value("screen.csv").run()
    at.button(key="predict_button").click().run()
    run = at.session_state["prediction"]
    assert run.n_rows == 13 and run.n_ok == 12  # screen.csv has one broken SMILES on purpose


def test_predict_csv_not_utf8_is_an_error(tiny_app):
    at = new_app("pages/predict.py")
    at.radio(key="predict_mode").set_value("Upload a CSV").run()
    at.file_uploader(key="predict_upload").set_value(("bad.csv", "smiles\nCCO\u00e9\n".encode("latin-1"),
                                                      "text/csv")).run()
    assert "not UTF-8" in texts(at.error)
    at.button(key="predict_button").click().run()
    assert "prediction" not in at.session_state


def test_predict_csv_missing_column_raises_input_error():
    from tagllm_core.exceptions import InputError
    from ui.inputs import rows_from_table

    with pytest.raises(InputError, match="no column"):
        rows_from_table(pd.DataFrame({"a": ["CCO"]}), {"smiles": "smiles"})


def test_predict_paste_mismatched_boxes_is_an_error():
    from tagllm_core.exceptions import InputError
    from ui.inputs import rows_from_paste

    slots = [("protein", "protein"), ("smiles", "smiles")]
    with pytest.raises(InputError, match="different numbers"):
        rows_from_paste(slots, {"protein": "MKV\nMKL", "smiles": "CCO\nCCN\nCCC"})
    rows = rows_from_paste(slots, {"protein": ">p1\nMKV\nLLA", "smiles": "CCO\nCCN"})  # one protein, paired
    assert rows == [{"protein": ">p1\nMKV\nLLA", "smiles": "CCO", "name": "p1"},
                    {"protein": ">p1\nMKV\nLLA", "smiles": "CCN", "name": "p1"}]


def test_paste_keeps_names_fasta_headers_and_blank_lines():
    """Issue 10 item 7: "SMILES name" lines and FASTA headers give a name column; a blank line is a row
    (reported as empty), so row numbers match the pasted lines."""
    from ui.inputs import rows_from_paste

    rows = rows_from_paste([("smiles", "smiles")], {"smiles": "CCO ethanol\n\nc1ccccc1O phenol  (PhOH)\n\n"})
    assert rows == [{"smiles": "CCO", "name": "ethanol"}, {"smiles": "", "name": ""},
                    {"smiles": "c1ccccc1O", "name": "phenol  (PhOH)"}]
    rows = rows_from_paste([("sequence", "protein")], {"sequence": ">p1 kinase A\nMKV\n\n>p2\nLLA\n"})
    assert [r["name"] for r in rows] == ["p1 kinase A", "p2"]
    assert rows_from_paste([("smiles", "smiles")], {"smiles": "CCO\nCCN\n"}) == [{"smiles": "CCO"}, {"smiles": "CCN"}]


def test_csv_id_column_is_kept_for_each_row():
    from ui.inputs import rows_from_table

    df = pd.DataFrame({"Compound ID": ["A", "B"], "smiles": ["CCO", "CCN"]})
    assert rows_from_table(df, {"smiles": "smiles"}) == [{"smiles": "CCO", "id": "A"}, {"smiles": "CCN", "id": "B"}]
    named = pd.DataFrame({"name": ["ethanol"], "smiles": ["CCO"]})
    assert rows_from_table(named, {"smiles": "smiles"}) == [{"smiles": "CCO", "name": "ethanol"}]


def test_predict_table_reads_names_rows_and_units(tiny_app):
    bb, lib = tiny_app
    lib.save(make_function_tag(bb, "LogS", template="Input: The SMILES of the molecule is {smiles:<SMILES>}. "
                                                     "Output: The solubility (log mol/L) is <{name}>"))
    at = new_app("pages/predict.py")
    at.selectbox(key="predict_tag").set_value("LogS").run()
    at.text_area(key="paste::smiles").input("CCO ethanol\n\nc1ccccc1O phenol").run()
    at.button(key="predict_button").click().run()
    frame = at.session_state["prediction"].frame
    assert frame["row"].tolist() == [1, 2, 3] and frame["name"].tolist() == ["ethanol", "", "phenol"]
    assert "empty input" in frame.loc[1, "error"] and frame.loc[2, "error"] == ""
    assert list(frame.columns[:4]) == ["row", "status", "name", "prediction"]
    shown = next(df for df in at.dataframe if "name" in df.value.columns)
    assert json.loads(shown.proto.columns)["prediction"]["label"] == "LogS (log mol/L)"  # units in the header


def test_predict_zero_shot_swap_is_marked(tiny_app):
    at = new_app("pages/predict.py")
    at.selectbox(key="swap::Solubility::smiles").set_value("none").run()
    assert "Zero-shot" in texts(at.warning)
    at.text_area(key="paste::smiles").input("CCO\nCCN").run()
    at.button(key="predict_button").click().run()
    run = at.session_state["prediction"]
    assert run.zero_shot and run.overrides == {"smiles": None}
    assert run.frame["zero_shot"].all()
    assert "Zero-shot combination" in texts(at.warning)


def test_predict_opens_on_a_one_input_tag(tiny_app):
    """A two-input tag that sorts first (like the bundled <BindingAffinity>) is not the default."""
    bb, lib = tiny_app
    lib.save(make_function_tag(bb, "Affinity", slots=(("sequence", "protein", "Protein"),
                                                      ("smiles", "smiles", "SMILES"))))
    at = new_app("pages/predict.py")
    assert at.selectbox(key="predict_tag").value == "Solubility"
    assert any(o.startswith("<Affinity>") for o in at.selectbox(key="predict_tag").options)


def test_predict_opens_on_solubility_before_tags_that_sort_first(tiny_app):
    """Alphabetical order would open on the bundled <BACE> (which loses to RF); a first visit opens on
    <Solubility>, and without it on the first one-input tag."""
    bb, lib = tiny_app
    lib.save(make_function_tag(bb, "Aardvark", seed=3))
    at = new_app("pages/predict.py")
    options = at.selectbox(key="predict_tag").options
    assert options.index(next(o for o in options if o.startswith("<Aardvark>"))) < \
        options.index(next(o for o in options if o.startswith("<Solubility>")))
    assert at.selectbox(key="predict_tag").value == "Solubility"
    lib.delete("Solubility")
    assert new_app("pages/predict.py").selectbox(key="predict_tag").value == "Aardvark"


def test_predict_many_tags_in_one_table(tiny_app):
    """Issue 10 item 4: tags with the same inputs give one table with a column per tag, and one CSV;
    the first tag's single-tag view stays below as the detail."""
    bb, lib = tiny_app
    lib.save(make_function_tag(bb, "Toxicity", seed=5))
    lib.save(make_function_tag(bb, "Stability", slots=(("sequence", "protein", "Protein"),)))
    at = new_app("pages/predict.py")
    more = at.multiselect(key="predict_more")
    assert any(o.startswith("<Toxicity>") for o in more.options)
    assert not any(o.startswith("<Stability>") for o in more.options)  # reads a protein, not a SMILES
    more.set_value(["Toxicity"]).run()
    at.text_area(key="paste::smiles").input("CCO\nC1CC(C\nc1ccccc1O").run()
    at.button(key="predict_button").click().run()
    assert not at.exception, [e.value for e in at.exception]
    many = at.session_state["prediction_many"]
    frame = many.frame
    assert {"Solubility", "Solubility lower", "Solubility upper", "Toxicity"} <= set(frame.columns)
    assert frame.loc[1, "error"].count("invalid SMILES") == 1
    assert frame.loc[0, "error"] == "" and frame.loc[2, "error"] == ""
    assert any({"Solubility", "Toxicity"} <= set(df.value.columns) for df in at.dataframe)
    assert "predict_many_download" in {b.key for b in at.get("download_button")}
    from ui.results import many_download_frame

    csv = many_download_frame(many).to_csv(index=False)
    assert "Toxicity" in csv.splitlines()[0] and "None" not in csv
    # the single-tag view of the first tag stays, as the detail
    assert at.session_state["prediction"].tag == "Solubility"
    assert at.number_input(key="detail_row").value == 1
    # the other tag's detail is one choice away
    at.selectbox(key="predict_detail_tag").set_value("Toxicity").run()
    assert at.session_state["prediction"].tag == "Toxicity"
    # back to one tag: the combined table goes, the single view stays
    at.multiselect(key="predict_more").set_value([]).run()
    at.button(key="predict_button").click().run()
    assert "prediction_many" not in at.session_state or at.session_state["prediction_many"] is None


def _predict_proteins(tiny_app, text: str) -> AppTest:
    """The Predict page with a protein tag, ``text`` pasted and predicted."""
    bb, lib = tiny_app
    lib.save(make_function_tag(bb, "Stability", slots=(("sequence", "protein", "Protein"),)))
    at = new_app("pages/predict.py")
    at.selectbox(key="predict_tag").set_value("Stability").run()
    at.text_area(key="paste::sequence").input(text).run()
    at.button(key="predict_button").click().run()
    return at


def test_predict_protein_detail_view(tiny_app):
    at = _predict_proteins(tiny_app, ">p1\nMKTAYIAKQR\nQISFVKSHFS\n>p2\nGIGAVLKVLT")
    run = at.session_state["prediction"]
    assert run.n_rows == 2 and run.n_ok == 2
    table = next(df.value for df in at.dataframe if "property" in df.value.columns)
    assert "Isoelectric point (pI)" in set(table["property"])
    assert at.get("plotly_chart")  # residue composition (and the histogram)


def test_predict_protein_tag_offers_protparam_columns(tiny_app):
    at = _predict_proteins(tiny_app, "MKTAYIAKQRQISFVKSHFS\nACDEFG123HIK")
    box = at.checkbox(key="predict_properties")
    assert box.label == "Add protein property columns (ProtParam)"
    box.check().run()
    assert not at.exception, [e.value for e in at.exception]
    table = next(df for df in at.dataframe if df.key == "predict_table").value
    assert {"length (residues)", "MW (Da)", "pI", "GRAVY", "instability index"} <= set(table.columns)
    assert "cLogP" not in table.columns
    assert table.loc[0, "length (residues)"] == 20 and table.loc[0, "MW (Da)"] > 2000
    assert pd.isna(table.loc[1, "MW (Da)"])  # the row with digits is an error: blank, not computed


# --------------------------------------------------------------------------- train


def _fill_function_form(at: AppTest, name: str, epochs: int = 1, max_rows: int = 30) -> AppTest:
    at.radio(key="tf_source").set_value("Bundled example").run()
    at.selectbox(key="tf_example").set_value("molecules_logp.csv").run()
    assert at.multiselect(key="tf_inputs").value == ["smiles"]
    assert at.multiselect(key="tf_labels").value == ["logp"]
    at.text_input(key="tf_name").input(name).run()
    at.number_input(key="tf_epochs").set_value(epochs).run()
    at.number_input(key="tf_maxrows").set_value(max_rows).run()
    return at


def test_function_job_argv_carries_augmentation_and_protein_crop(tmp_path):
    slots = [training.SlotChoice("target", "sequence", "protein", "Protein"),
             training.SlotChoice("drug", "smiles", "smiles", None)]
    spec = training.FunctionJobSpec(name="Aff", train_file=tmp_path / "t.csv", slots=slots, labels=["pkd"],
                                    augment=3, max_length={"protein": 512}, spellings=2)
    argv = training.function_tag_argv(spec)
    assert training.argv_value(argv, "--augment") == "3" and training.argv_value(argv, "--spellings") == "2"
    assert training.argv_value(argv, "--max-length") == "protein=512"
    from tagllm_core.cli import build_parser

    args = build_parser().parse_args(argv)  # the job's command line is one the CLI accepts
    assert args.augment == 3 and args.max_length == ["protein=512"] and args.spellings == 2
    protein_only = training.FunctionJobSpec(name="P", train_file=tmp_path / "t.csv", slots=slots[:1], labels=["y"])
    assert training.argv_value(training.function_tag_argv(protein_only), "--augment") is None
    assert training.argv_value(training.function_tag_argv(protein_only), "--spellings") is None


def test_function_job_argv_carries_readout_depth_and_descriptors(tmp_path):
    slots = [training.SlotChoice("drug", "smiles", "smiles", None)]
    spec = training.FunctionJobSpec(name="Sol", train_file=tmp_path / "t.csv", slots=slots, labels=["y"],
                                    layers="7, 15", features="descriptors")
    argv = training.function_tag_argv(spec)
    assert "--layers=7, 15" in argv and "--features=descriptors" in argv
    from tagllm_core.cli import build_parser
    from tagllm_core.training import parse_layers

    args = build_parser().parse_args(argv)
    assert parse_layers(args.layers) == [7, 15] and args.features == "descriptors"
    default = training.function_tag_argv(training.FunctionJobSpec(name="S", train_file=tmp_path / "t.csv",
                                                                  slots=slots, labels=["y"]))
    assert f"--layers={training.DEFAULT_LAYERS}" in default and f"--features={training.DEFAULT_FEATURES}" in default


def test_function_job_argv_asks_for_the_forest_only_where_it_applies(tmp_path):
    from tagllm_core.cli import build_parser

    slots = [training.SlotChoice("drug", "smiles", "smiles", None)]

    def argv(**kw):
        spec = training.FunctionJobSpec(name="Sol", train_file=tmp_path / "t.csv", slots=slots, labels=["y"], **kw)
        return training.function_tag_argv(spec)

    assert "--forest" in argv(features="descriptors", forest=True)
    assert build_parser().parse_args(argv(features="descriptors", forest=True)).forest is True
    assert "--forest" in argv(features="none", forest=True)  # the pure tag's forest reads its read-out
    assert "--forest" in argv(features="none", forest=True, spellings=2)  # grown on the canonical SMILES
    for kw in ({"task": "classification"}, {"layers": "stack"}):
        line = argv(forest=True, **{"features": "descriptors", **kw})
        assert "--no-forest" in line and build_parser().parse_args(line).forest is False, kw
    assert "--no-forest" in argv(features="descriptors", forest=False)


def test_layers_problem_explains_what_is_accepted():
    assert training.layers_problem("auto") is None and training.layers_problem("final") is None
    assert training.layers_problem("12") is None and training.layers_problem(" 7,15 ") is None
    assert training.layers_problem("") is None  # blank means the default
    for bad in ("deep", "0", "7;x"):
        assert "auto, stack, final" in training.layers_problem(bad)


def test_train_form_sends_depth_and_descriptors_to_the_job(tiny_app):
    at = _fill_function_form(new_app("pages/train.py"), "DeepLogP")
    at.text_input(key="tf_layers").input("nope").run()
    assert not at.exception and at.button(key="tf_start").disabled
    assert "auto, stack, final" in texts(at.error)
    at.text_input(key="tf_layers").input("1").run()
    at.checkbox(key="tf_features").check().run()
    assert not at.button(key="tf_start").disabled
    at.button(key="tf_start").click().run()
    assert not at.exception
    job = JobStore().list()[0]
    assert "--layers=1" in job.argv and "--features=descriptors" in job.argv


def test_train_function_tag_job_runs_to_the_end(tiny_app):
    bb, lib = tiny_app
    at = _fill_function_form(new_app("pages/train.py"), "TinyLogP")
    assert not at.button(key="tf_start").disabled
    assert "Prompt:" in texts(at.caption) and "<SMILES>" in texts(at.caption)
    at.button(key="tf_start").click().run()
    assert not at.exception
    assert "Started job #1" in texts(at.success)
    assert at.text_input(key="tf_name").value == ""  # ready for the next tag
    store = JobStore()
    job = store.list()[0]
    assert job.kind == "function-tag" and job.name == "TinyLogP"
    assert training.argv_value(job.argv, "--max-rows") and "--input=smiles=<SMILES>:smiles" in job.argv
    assert training.argv_value(job.argv, "--augment") == str(training.DEFAULT_AUGMENT)
    assert training.argv_value(job.argv, "--max-length") is None  # no protein input: no crop
    job = wait_for_job(store, job.id)
    assert job.state == "finished", (job.error, job.log_tail())
    assert lib.exists("TinyLogP")
    at.run()
    assert not at.exception
    assert "is trained and saved" in texts(at.success)
    assert at.button(key=f"use-{job.id}")
    assert at.get("plotly_chart")  # curves and parity plot
    # "Predict with <TinyLogP>" opens the Predict page with the new tag chosen
    at.button(key=f"use-{job.id}").click().run()
    assert at.title[0].value == "Predict"
    assert at.selectbox(key="predict_tag").value == "TinyLogP"


def test_train_domain_tag_job(tiny_app):
    bb, lib = tiny_app
    at = new_app("pages/train.py")
    at.radio(key="td_source").set_value("Bundled example").run()
    at.selectbox(key="td_example").set_value("proteins.fasta").run()
    assert "14 sequences" in texts(at.caption)
    assert at.selectbox(key="td_kind::proteins.fasta").value == "protein"
    at.text_input(key="td_name").input("Peptide").run()
    at.number_input(key="td_steps").set_value(4).run()
    at.button(key="td_start").click().run()
    store = JobStore()
    job = wait_for_job(store, store.list()[0].id)
    assert job.state == "finished", (job.error, job.log_tail())
    assert lib.find("Peptide").card.input_kind == "protein"
    at.run()
    assert "is trained and saved" in texts(at.success)


def test_train_uploaded_csv_is_saved_for_the_job(tiny_app):
    csv = (EXAMPLES / "molecules_logp.csv").read_bytes()
    at = new_app("pages/train.py")
    at.file_uploader(key="tf_upload").set_value(("my data.csv", csv, "text/csv")).run()
    at.text_input(key="tf_name").input("Uploaded").run()
    at.number_input(key="tf_epochs").set_value(1).run()
    at.button(key="tf_start").click().run()
    job = JobStore().list()[0]
    train_file = Path(training.argv_value(job.argv, "--train"))
    assert train_file.read_bytes() == csv
    assert train_file.parent.parent.name == "uploads" and train_file.name == "my_data.csv"
    job = wait_for_job(JobStore(), job.id)
    assert job.state == "finished", job.error


@pytest.mark.parametrize("name,message", [("bad/name", "may not contain"), ("Solubility", "already exists"),
                                          ("<x y>", "may use only")])
def test_train_refuses_bad_tag_names(tiny_app, name, message):
    at = _fill_function_form(new_app("pages/train.py"), name)
    assert message in texts(at.error)
    assert at.button(key="tf_start").disabled
    assert JobStore().list() == []


def test_train_refuses_bad_template(tiny_app):
    at = _fill_function_form(new_app("pages/train.py"), "Tpl")
    at.text_area(key="tf_template").input("The molecule {mol} has <X>").run()
    assert "must be exactly the mapped inputs" in texts(at.error)
    assert at.button(key="tf_start").disabled
    at.text_area(key="tf_template").input("Molecule {smiles}. Its logP is <Whatever>").run()
    assert "Molecule {smiles:<SMILES>}. Its logP is <Tpl>" in texts(at.caption)
    assert not at.button(key="tf_start").disabled


def test_train_csv_with_one_column_is_refused(tiny_app):
    at = new_app("pages/train.py")
    at.file_uploader(key="tf_upload").set_value(("one.csv", b"smiles\nCCO\nCCN\n", "text/csv")).run()
    assert "needs at least one input column and one label column" in texts(at.warning)
    at.text_input(key="tf_name").input("One").run()
    assert at.button(key="tf_start").disabled


def test_jobs_panel_shows_a_failed_job(tiny_app):
    store = JobStore()
    job = store.create("function-tag", "Broken", ["train-function-tag", "--name", "Broken"])
    store.fail(job.id, "TrainingError: A label column is constant: there is nothing to learn.")
    at = new_app("pages/train.py")
    assert "A label column is constant" in texts(at.error)


def test_jobs_panel_shows_a_finished_jobs_training_warnings(tiny_app):
    store = JobStore()
    job = store.create("function-tag", "Warned", ["train-function-tag", "--name=Warned"])
    warning = "The scaffold split put 0 of 50 rows in validation; a random split was used instead."
    assert store.set_running(job.id, os.getpid())
    assert store.finish(job.id, {"tag": "Warned", "metrics": {"rmse": 0.5}, "warnings": [warning],
                                 "held_out": {"rmse": 0.625, "n": 20}})
    at = new_app("pages/train.py")
    assert warning in texts(at.warning)
    # the honest figure, from the validation half that chose nothing, beside the tiles
    assert "RMSE on the held-out half of the validation rows (20 rows" in texts(at.caption)
    assert "chose neither the read-out layer nor the epoch): 0.625." in texts(at.caption)


def test_jobs_panel_cancels_a_running_job(tiny_app):
    store = JobStore()
    job = store.create("function-tag", "Slow", ["train-function-tag", "--name", "Slow"])
    launch(store, job, cmd=[__import__("sys").executable, str(FAKE_JOB), str(jobs_db_path()), str(job.id),
                            "--steps", "2000", "--sleep", "0.02"])
    deadline = time.time() + 30
    while store.get(job.id).state != "running" and time.time() < deadline:
        time.sleep(0.1)
    at = new_app("pages/train.py")
    assert at.button(key=f"cancel-{job.id}")
    assert "Step" in at.get("progress")[0].proto.text or at.get("progress")
    at.button(key=f"cancel-{job.id}").click().run()
    assert wait_for_job(store, job.id, timeout=30).state == "cancelled"
    at.run()
    assert "cancelled" in texts(at.info)


def test_jobs_panel_shows_why_a_job_died_and_relaunches_it(tiny_app, monkeypatch):
    import sys

    from tagllm_core import jobs

    store = JobStore()
    job = store.create("function-tag", "Died", ["train-function-tag", "--name=Died"])
    launch(store, job, cmd=[sys.executable, "-c", "import nonexistent_module"])
    assert wait_for_job(store, job.id, timeout=30).state == "failed"
    at = new_app("pages/train.py")
    assert "No module named 'nonexistent_module'" in texts(at.error)
    # the relaunch runs the job's own command line; here the stand-in job script
    monkeypatch.setattr(jobs, "job_command", lambda store, job, python=sys.executable: [
        python, str(FAKE_JOB), str(store.db_path), str(job.id), "--steps", "3"])
    at.button(key=f"relaunch-{job.id}").click().run()
    assert not at.exception
    assert wait_for_job(store, job.id, timeout=30).state == "finished"


# --------------------------------------------------------------------------- library


def load_tag_file_from_bytes(data: bytes, folder: Path):
    path = folder / "copy.tag.safetensors"
    path.write_bytes(data)
    return load_tag_file(path)


def test_library_export_import_delete(tiny_app, tmp_path):
    bb, lib = tiny_app
    original = lib.find("Solubility").path.read_bytes()
    at = new_app("pages/library.py")
    assert {"export::Solubility", "export::SMILES", "export::Protein"} <= {b.key for b in at.get("download_button")}
    # delete needs the confirmation tick
    assert at.button(key="delete::Solubility").disabled
    at.checkbox(key="delete-confirm::Solubility").check().run()
    at.button(key="delete::Solubility").click().run()
    assert not lib.exists("Solubility")
    assert "Deleted <Solubility>" in texts(at.success)
    # import the exported bytes back
    at.file_uploader(key="lib_import_file").set_value(("Solubility.tag.safetensors", original,
                                                       "application/octet-stream")).run()
    at.button(key="lib_import_button").click().run()
    assert "Imported <Solubility>" in texts(at.success)
    back = lib.get("Solubility")
    assert torch.equal(back.vectors, load_tag_file_from_bytes(original, tmp_path).vectors)
    # importing it again without "replace" is refused with a clear message
    at.button(key="lib_import_button").click().run()
    assert "already exists" in texts(at.error)


def test_library_export_bytes_match_the_file(tiny_app):
    bb, lib = tiny_app
    at = new_app("pages/library.py")
    from streamlit.runtime.memory_media_file_storage import _calculate_file_id

    button = by_key(at.get("download_button"), "export::Solubility")
    path = lib.find("Solubility").path
    # the served file is exactly the tag file, under its own name
    expected = _calculate_file_id(path.read_bytes(), "application/octet-stream", path.name)
    assert expected in button.proto.url


@pytest.mark.parametrize("case", ["random", "pickle", "other-backbone"])
def test_library_import_refusals(tiny_app, tmp_path, case):
    bb, lib = tiny_app
    if case == "random":
        data, message = b"this is not a tag file" * 10, "not a readable tag file"
    elif case == "pickle":
        buf = io.BytesIO()
        torch.save({"vectors": torch.zeros(2, 2)}, buf)
        data, message = buf.getvalue(), "pickle"
    else:
        from conftest import make_tiny_backbone

        other = make_tiny_backbone("llama", seed=7, name="other-llama")
        path = tmp_path / "Other.tag.safetensors"
        save_tag_file(make_function_tag(other, "Other"), path)
        data, message = path.read_bytes(), "was trained on backbone other-llama"
    at = new_app("pages/library.py")
    at.file_uploader(key="lib_import_file").set_value(("x.tag.safetensors", data, "application/octet-stream")).run()
    at.button(key="lib_import_button").click().run()
    assert "Import refused" in texts(at.error) and message in texts(at.error)
    assert not at.exception


def test_library_interpretability(tiny_app):
    at = new_app("pages/library.py")
    at.selectbox(key="interp_tag").set_value("Solubility").run()
    table = next(df.value for df in at.dataframe if "nearest tokens (cosine)" in df.value.columns)
    # 3 function-tag vectors + 2 vectors of its <SMILES> snapshot
    assert len(table) == 5 and set(table["tag"]) == {"<Solubility>", "<SMILES> (copy inside <Solubility>)"}
    assert at.get("plotly_chart")


def test_interpret_maths():
    from tagllm_core.interpret import nearest_tokens, pca_projection

    emb = torch.eye(6)[:, :4] + 0.01  # six "tokens" in 4-D
    tok = make_char_tokenizer(add_bos=False)
    nb = nearest_tokens(emb[[2]] * 3, emb, tok, k=2)
    assert nb[0][0].token_id == 2 and nb[0][0].cosine == pytest.approx(1.0)
    res = pca_projection({"t": emb[:2]}, torch.randn(50, 4), sample=40)
    assert res.vocab_xy.shape == (40, 2) and res.tag_xy["t"].shape == (2, 2)
    assert 0 < sum(res.explained) <= 1


# --------------------------------------------------------------------------- the real backbone


@pytest.fixture
def real_app(tagllm_home, monkeypatch):
    """The app on the bundled SmolLM2 backbone, with a test function tag built without training."""
    monkeypatch.delenv("TAGLLM_BACKBONE", raising=False)
    bb = get_backbone()
    tag = synthetic_solubility_tag(bb, "TestSolubility")
    lib = TagLibrary(bb.fingerprint)
    lib.save(tag)
    return bb, lib


@pytest.mark.real
def test_real_backbone_predict_and_detail(real_app):
    at = new_app(timeout=300)  # the default page is Predict
    assert at.title[0].value == "Predict"
    # (AppTest drops the app-level sidebar after switch_page, so check it on the first run)
    assert "SmolLM2" in texts(at.sidebar.markdown)
    at.text_area(key="paste::smiles").input("CC(=O)Oc1ccccc1C(=O)O\nnot a smiles\nCCO").run()
    at.button(key="predict_button").click().run()
    run = at.session_state["prediction"]
    assert run.n_rows == 3 and run.n_ok == 2 and run.frame.loc[1, "error"]
    at.toggle(key="detail-1-smiles-3d").set_value(True).run()
    assert not at.exception


@pytest.mark.real
def test_real_backbone_training_job(real_app):
    bb, lib = real_app
    at = _fill_function_form(new_app("pages/train.py", timeout=300), "RealLogP", epochs=1, max_rows=30)
    at.selectbox(key="tf_dom::smiles::smiles").set_value("none").run()
    at.button(key="tf_start").click().run()
    store = JobStore()
    job = wait_for_job(store, store.list()[0].id, timeout=600)
    assert job.state == "finished", (job.error, job.log_tail())
    assert lib.exists("RealLogP")
    at.run()
    assert "is trained and saved" in texts(at.success)


def test_predict_ten_thousand_rows(tiny_app, monkeypatch):
    """10,000 pasted rows (some bad) predict in one go, and the page stays light: one detail view, no 10k pictures."""
    import random

    smiles = [line.split()[0] for line in (EXAMPLES / "molecules.smi").read_text().splitlines()]
    rng = random.Random(0)
    rows = [rng.choice(smiles) if i % 1000 else "C1CC(C" for i in range(10_000)]
    monkeypatch.setenv("TAGLLM_PREDICT_JOB_ROWS", "20000")  # inline here; above the threshold it is a job
    at = new_app("pages/predict.py", timeout=600)
    at.text_area(key="paste::smiles").input("\n".join(rows)).run()
    t0 = time.perf_counter()
    at.button(key="predict_button").click().run()
    elapsed = time.perf_counter() - t0
    run = at.session_state["prediction"]
    assert run.n_rows == 10_000 and run.n_rows - run.n_ok == 10
    assert len(at.get("imgs")) <= 1  # only the chosen row's depiction
    print(f"10k rows on the tiny backbone: {elapsed:.1f} s")


def test_predict_classification_tag_and_3d_viewer(tiny_app):
    bb, lib = tiny_app
    lib.save(make_function_tag(bb, "Druglike", task="classification", n_outputs=2, classes=["no", "yes"]))
    at = new_app("pages/predict.py")
    at.selectbox(key="predict_tag").set_value("Druglike").run()
    at.text_area(key="paste::smiles").input("CCO\nc1ccccc1C(=O)O").run()
    at.button(key="predict_button").click().run()
    run = at.session_state["prediction"]
    assert run.n_ok == 2 and set(run.frame["prediction"]) <= {"no", "yes"}
    assert {"p(no)", "p(yes)"} <= set(run.frame.columns)
    assert at.get("plotly_chart")  # class shares against the training labels
    at.toggle(key="detail-1-smiles-3d").set_value(True).run()
    assert not at.exception
    frames = at.get("iframe")
    assert frames and "3Dmol" in str(frames[0].proto)


def test_predict_a_tag_with_several_labels_shows_each(tiny_app):
    bb, lib = tiny_app
    lib.save(make_function_tag(bb, "Props", n_outputs=2, labels=["logS", "logP"],
                               interval={"level": 0.9, "halfwidth": [0.5, 0.25]}))
    at = new_app("pages/predict.py")
    at.selectbox(key="predict_tag").set_value("Props").run()
    at.text_area(key="paste::smiles").input("CCO\nc1ccccc1O").run()
    at.button(key="predict_button").click().run()
    assert not at.exception
    frame = at.session_state["prediction"].frame
    assert frame["prediction"].tolist() == frame["prediction(logS)"].tolist()
    assert (frame["upper(logP)"] - frame["lower(logP)"]).round(6).tolist() == [0.5, 0.5]
    assert (frame["prediction(logP)"] != frame["prediction(logS)"]).all()
    # the row detail names both labels with their intervals
    captions = texts(at.caption)
    assert "logS = " in captions and "logP = " in captions, captions


def test_the_training_curve_follows_what_early_stopping_follows():
    from ui import charts

    events = [{"step": s, "metrics": {"valid_rmse": 1.0 / s, "valid_mean_scaled_rmse": 0.5 / s,
                                      "valid_by_label": {"a": {"rmse": 1.0}}}} for s in (1, 2)]
    keys = charts.metric_keys(events)
    assert "valid_by_label" not in keys  # a dict of per-label metrics is no curve
    assert charts.primary_metric(keys) == "valid_mean_scaled_rmse"  # several labels: the stopping metric
    assert charts.primary_metric(["valid_mae", "valid_rmse"]) == "valid_rmse"  # one label, as before
    assert charts.metric_figure(events, "valid_mean_scaled_rmse") is not None


def test_example_inputs_pair_up_for_two_slots():
    from ui.inputs import example_texts, rows_from_paste

    slots = [("sequence", "protein"), ("smiles", "smiles")]
    boxes = example_texts(slots, EXAMPLES)
    rows = rows_from_paste(slots, boxes)
    assert len(rows) == 12 and rows[0]["sequence"].startswith(">") and rows[0]["smiles"].startswith("CC(=O)O")


def test_unloadable_backbone_is_explained(tagllm_home, monkeypatch, tmp_path):
    monkeypatch.setenv("TAGLLM_BACKBONE", str(tmp_path / "no-such-model"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception
    assert "could not be loaded" in texts(at.error) and "no-such-model" in texts(at.error)


def test_card_summary_puts_the_held_out_figure_beside_the_main_one():
    """The held-out half's score (the one no choice read) is among the summary's tiles, next to the main
    metric on every validation row, however many other metrics the card holds."""
    from tagllm_core.tags import SlotSpec, TagCard
    from ui import cards

    valid = {"rmse": 0.73, "mae": 0.58, "n": 113, "pearson": 0.94, "spearman": 0.94, "r2": 0.87, "ci": 0.89}
    card = TagCard(name="Sol", kind="function", backbone={}, n_tokens=10, task="regression",
                   metrics={"valid": valid, "held_out": {"rmse": 0.69, "n": 56, "spearman": 0.9}})
    shown = cards.headline_metrics(card)
    assert [k for k, _ in shown[:2]] == ["valid rmse", "held-out rmse"] and shown[1][1] == 0.69
    assert len(shown) == 5 and not any(k.endswith(" n") for k, _ in shown)
    auc = TagCard(name="Act", kind="function", backbone={}, n_tokens=10, task="classification",
                  metrics={"valid": {"log_loss": 0.59, "accuracy": 0.7, "auroc": 0.78}, "held_out": {"auroc": 0.74}})
    assert [k for k, _ in cards.headline_metrics(auc)][:2] == ["valid auroc", "held-out auroc"]
    old = TagCard(name="Old", kind="function", backbone={}, n_tokens=10, task="regression",
                  metrics={"valid": {"rmse": 1.1, "n": 20}})
    assert cards.headline_metrics(old) == [("valid rmse", 1.1)]
    assert "valid ci" not in dict(shown)  # seventh for one input
    halves = dataclasses.replace(card, training={"rows_train": 902, "rows_valid": 113, "selection_rows": 57})
    assert "113 validation rows (57 chose the read-out layer and epoch, 56 held out)" in cards.training_text(halves)
    pair = dataclasses.replace(card, slots=[SlotSpec("sequence", "protein", None), SlotSpec("smiles", "smiles", None)])
    assert [k for k, _ in cards.headline_metrics(pair)][:3] == ["valid rmse", "held-out rmse", "valid ci"]


def test_card_shows_the_read_out_and_the_same_run_baselines():
    from tagllm_core.tags import SlotSpec, TagCard
    from ui import cards

    card = TagCard(name="Sol", kind="function", backbone={}, n_tokens=10, task="regression", labels=["y"],
                   slots=[SlotSpec("smiles", "smiles", None)], layers=[12], features="descriptors",
                   metrics={"valid": {"rmse": 0.8, "spearman": 0.9},
                            "baselines": {"mean": {"rmse": 2.2}, "rf_descriptors": {"rmse": 0.88, "spearman": 0.9},
                                          "probe": {"rmse": 1.1, "layer": 11}}},
                   training={"layer_choice": {"chosen": 12}})
    assert cards.readout_text(card) == "layer 12 (chosen on validation) + classic descriptors of the inputs"
    frame = cards.comparison_frame(card)
    assert frame["model"].tolist() == ["<Sol>", "predict the training mean", "random forest on descriptors",
                                       "linear probe: ridge on the backbone's mean-pooled states (layer 11)"]
    assert frame["rmse"].tolist() == [0.8, 2.2, 0.88, 1.1]
    assert "r2" not in frame.columns and "rows" not in frame.columns  # nobody has r2: no empty column
    sampled = {"rmse": 1.1, "layer": 11, "rows": 2000}  # the tag's head read every row, the probe not
    assert cards.baseline_label("probe", sampled).endswith("(layer 11, fitted on 2,000 training rows)")
    assert not any(k.startswith("baselines") for k in cards.flat_metrics(card))  # shown apart, not as metrics
    old = TagCard(name="Old", kind="function", backbone={}, n_tokens=10, task="regression",
                  metrics={"valid": {"rmse": 1.1}})
    assert cards.readout_text(old) == "the final layer" and cards.comparison_frame(old) is None
    shallow = dataclasses.replace(card, training={"layer_choice": {"chosen": 12, "best": 26}})
    assert cards.readout_text(shallow).startswith(
        "layer 12 (chosen on validation: the shallowest within one standard error of the best, layer 26)")
    stacked = dataclasses.replace(card, layers=[4, 11], features="none", training={"layer_choice": {
        "chosen": 12, "best": 12, "stack_weights": {"11": 0.75, "4": 0.25}}})  # as read back from JSON
    assert cards.readout_text(stacked) == ("layers 4 (25%), 11 (75%) (stacked: every layer up to 12, weighted on "
                                           "the training rows)")
    blended = dataclasses.replace(card, head={"forest_nodes": 900},
                                  training={"forest": {"weights": [[0.62, 0.38]]}})
    assert cards.readout_text(blended).endswith(
        "descriptors of the inputs, blended with a random forest on the descriptors (62% head, 38% forest, "
        "weighted on the training rows)")
    pure = dataclasses.replace(card, features="none", head={"forest_nodes": 900, "forest_input": "readout"},
                               training={"forest": {"weights": [[0.55, 0.45]], "reads": "readout"}})
    assert cards.readout_text(pure) == ("layer 12, blended with a random forest on the tag's read-out (55% head, "
                                        "45% forest, weighted on the training rows)")
    spelled = dataclasses.replace(card, spellings=3)
    assert cards.readout_text(spelled).endswith("descriptors of the inputs, averaged over 4 spellings of each SMILES")



def test_card_says_whether_the_tag_beats_each_baseline_on_the_same_rows():
    from tagllm_core.tags import SlotSpec, TagCard, TagInfo
    from ui import cards

    def versus(diff, low, high):
        return {"metric": "rmse", "difference": diff, "low": low, "high": high, "larger_is_better": False,
                "level": 0.95, "n_boot": 2000}

    card = TagCard(name="Sol", kind="function", backbone={}, n_tokens=10, task="regression", labels=["y"],
                   slots=[SlotSpec("smiles", "smiles", None)], layers=[12],
                   metrics={"valid": {"rmse": 0.8},
                            "baselines": {"mean": {"rmse": 2.2, "versus_tag": versus(-1.4, -1.6, -1.2)},
                                          "rf_descriptors": {"rmse": 0.7, "versus_tag": versus(0.1, 0.04, 0.16)},
                                          "probe": {"rmse": 0.82, "layer": 11,
                                                    "versus_tag": versus(-0.02, -0.05, 0.01)},
                                          "ridge_descriptors": {"rmse": 0.9}}})  # an entry without one
    frame = cards.comparison_frame(card)
    column = "tag − model, RMSE (95% CI)"
    assert frame[column].tolist() == ["", "−1.400 (−1.600 to −1.200): tag better",
                                      "+0.100 (+0.040 to +0.160): tag worse",
                                      "−0.020 (−0.050 to +0.010): no clear difference", ""]
    table = cards.card_table(TagInfo(card=card, source="user", path=Path("x"), size_bytes=1))
    values = dict(zip(table["field"], table["value"]))
    assert values["baseline: random forest on descriptors (rmse)"] == (
        "0.700; tag − it: +0.100 (+0.040 to +0.160): tag worse")
    assert values["baseline: ridge on descriptors (rmse)"] == "0.900"
    # an older card has no comparison column; a malformed entry is left out, not shown or raised
    old = dataclasses.replace(card, metrics={"valid": {"rmse": 0.8}, "baselines": {"mean": {"rmse": 2.2}}})
    assert column not in cards.comparison_frame(old).columns
    broken = dataclasses.replace(card, metrics={"valid": {"rmse": 0.8}, "baselines": {
        "mean": {"rmse": 2.2, "versus_tag": {**versus(-1.4, -1.6, -1.2), "low": "x"}}}})
    assert cards.versus_text(broken.metrics["baselines"]["mean"]) == ""
    assert column not in cards.comparison_frame(broken).columns


# --------------------------------------------------------------------------- hardening (issue 11)


def test_jobs_panel_reads_only_new_events(tiny_app, monkeypatch):
    from tagllm_core.progress import ProgressEvent

    store = JobStore()
    job = store.create("function-tag", "Curvy", ["train-function-tag", "--name=Curvy"])
    store.set_running(job.id, __import__("os").getpid())
    for step in range(1, 6):
        store.record(job.id, ProgressEvent("train", step, 20, loss=1.0 / step))
    calls = []
    real = JobStore.history
    monkeypatch.setattr(
        JobStore, "history",
        lambda self, job_id, after_event=0: calls.append(after_event) or real(self, job_id, after_event))
    at = new_app("pages/train.py")
    assert calls and calls[-1] == 0
    last = store.history(job.id)[-1]["id"]
    for step in range(6, 9):
        store.record(job.id, ProgressEvent("train", step, 20, loss=1.0 / step))
    calls.clear()
    at.run()
    assert not at.exception
    assert calls and all(after == last for after in calls)  # only the three new events are read
    assert [e["step"] for e in at.session_state["_job_events"][job.id]] == list(range(1, 9))
    store.finish(job.id, {})


HOSTILE_COLUMNS = ["-logS", "--help", "log S (mol/L)", "it's \"quoted\"", "λmax µM", "a=b", " padded ", "none", "-"]


@pytest.mark.parametrize("label", HOSTILE_COLUMNS)
def test_function_job_argv_round_trips_hostile_column_names(tmp_path, label):
    """Whatever a CSV header holds, the job's command line parses back to the same columns."""
    from tagllm_core import cli

    column = f"-{label}-in"
    slots = [training.SlotChoice(column, "smiles", "smiles", None)]
    spec = training.FunctionJobSpec(name="Sol", train_file=tmp_path / "-data dir" / "t.csv", slots=slots,
                                    labels=[label], what=label, template=None)
    argv = training.function_tag_argv(spec)
    args = cli.build_parser().parse_args(argv)
    assert args.label == [label] and args.what == label and args.train == str(spec.train_file)
    df = pd.DataFrame(columns=[column, label])
    assert cli._column_map(args.column, df) == {"smiles": column}
    assert training.argv_value(argv, "--task") == "regression"


def test_domain_job_argv_round_trips_a_hostile_column_name(tmp_path):
    from tagllm_core import cli

    spec = training.DomainJobSpec(name="Pep", corpus_file=tmp_path / "c.csv", fmt="csv", kind="protein",
                                  column="-seq")
    args = cli.build_parser().parse_args(training.domain_tag_argv(spec))
    assert args.column == "-seq" and args.corpus == str(spec.corpus_file) and args.kind == "protein"


def test_float_labels_are_never_guessed_to_be_classes():
    from ui import inputs

    assert inputs.guess_task(pd.Series(["1.5", "2.25", "3.0", "1.5", "-0.7"])) == "regression"
    assert inputs.guess_task(pd.Series(["0", "1", "1", "0", "1"])) == "classification"
    assert inputs.guess_task(pd.Series(["active", "inactive", "active"])) == "classification"


GOOD_SMILES = ["C" * n + tail for n in range(1, 8) for tail in ("", "O", "N", "Cl")]  # 28 distinct molecules


def _check(df, task="regression", labels=("y",), column="smiles", kind="smiles", **kw):
    slots = [training.SlotChoice(column, "smiles" if kind == "smiles" else "sequence", kind, None)]
    return training.check_training_data(df, slots, list(labels), task, **kw)


def _messages(problems, level):
    return [p.message for p in problems if p.level == level]


def test_check_training_data_passes_good_data():
    df = pd.DataFrame({"smiles": GOOD_SMILES, "y": [f"{0.1 * i:.2f}" for i in range(28)]})
    assert _check(df) == []


def test_check_training_data_refuses_too_few_rows():
    df = pd.DataFrame({"smiles": GOOD_SMILES[:5], "y": ["1.5", "2.5", "0.3", "1.1", "2.0"]})
    (msg,) = _messages(_check(df), "error")
    assert "5 usable rows" in msg and "at least" in msg


def test_check_training_data_refuses_text_labels_for_regression():
    df = pd.DataFrame({"smiles": GOOD_SMILES, "y": ["active", "inactive"] * 14})
    errors = _messages(_check(df), "error")
    assert len(errors) == 1 and "holds text" in errors[0] and "classification" in errors[0]
    assert _check(df, task="classification") == []


def test_check_training_data_reports_missing_labels_and_inputs():
    ys = [f"{i}.5" for i in range(28)]
    ys[3] = None
    smiles = list(GOOD_SMILES)
    smiles[5] = None
    problems = _check(pd.DataFrame({"smiles": smiles, "y": ys}))
    errors, warnings = _messages(problems, "error"), _messages(problems, "warning")
    assert len(errors) == 1 and "no label" in errors[0] and "row 4" in errors[0]
    assert any("1 row" in w and "no value" in w for w in warnings)


def test_check_training_data_invalid_inputs_and_duplicates():
    bad = GOOD_SMILES[:14] + ["C1CC(C"] * 14  # half the molecules do not parse
    errors = _messages(_check(pd.DataFrame({"smiles": bad, "y": [str(i) + ".5" for i in range(28)]})), "error")
    assert any("50%" in e and "SMILES" in e for e in errors)
    few_bad = GOOD_SMILES[:26] + ["C1CC(C", "xyz"]
    warnings = _messages(_check(pd.DataFrame({"smiles": few_bad, "y": [str(i) + ".5" for i in range(28)]})),
                         "warning")
    assert any("2 of 28 rows" in w and "skipped" in w for w in warnings)
    dup = GOOD_SMILES[:20] + ["OCC"] + ["CCO"] * 7  # OCC and CCO are one molecule
    warnings = _messages(_check(pd.DataFrame({"smiles": dup, "y": [str(i) + ".5" for i in range(28)]})), "warning")
    assert any("repeat" in w for w in warnings)


def test_check_training_data_says_what_standardisation_will_do():
    smiles = list(GOOD_SMILES)
    smiles[2] = "CCCCCCCCCN.Cl"  # a hydrochloride: trained as nonylamine
    smiles[4] = "[Na+].[Cl-]"  # inorganic: kept and flagged
    problems = _check(pd.DataFrame({"smiles": smiles, "y": [f"{0.1 * i:.2f}" for i in range(28)]}))
    assert _messages(problems, "error") == [] and _messages(problems, "warning") == []
    notes = _messages(problems, "note")
    assert any(n.startswith("1 training SMILES was standardised (salt stripped") and "row 3" in n for n in notes), notes
    assert any("1 training SMILES is inorganic" in n and "row 5" in n for n in notes), notes


def test_check_training_data_one_class_and_float_classes():
    df = pd.DataFrame({"smiles": GOOD_SMILES, "y": ["yes"] * 28})
    (msg,) = _messages(_check(df, task="classification"), "error")
    assert "one class" in msg
    floats = pd.DataFrame({"smiles": GOOD_SMILES, "y": [f"{i * 0.37:.2f}" for i in range(28)]})
    assert any("regression" in w for w in _messages(_check(floats, task="classification"), "warning"))


def _upload_train_csv(at, frame, name="data.csv"):
    at.file_uploader(key="tf_upload").set_value((name, frame.to_csv(index=False).encode(), "text/csv")).run()
    return at


def test_train_form_refuses_a_five_row_csv(tiny_app):
    frame = pd.DataFrame({"smiles": GOOD_SMILES[:5], "logS": ["1.5", "2.5", "0.3", "1.1", "2.0"]})
    at = _upload_train_csv(new_app("pages/train.py"), frame)
    at.text_input(key="tf_name").input("Tiny").run()
    assert not at.exception
    assert at.radio(key="tf_task::logS").value == "regression"  # floats are never auto-classified
    assert "5 usable rows" in texts(at.error)
    assert at.button(key="tf_start").disabled
    assert JobStore().list() == []


def test_train_form_refuses_text_labels_forced_to_regression(tiny_app):
    frame = pd.DataFrame({"smiles": GOOD_SMILES, "activity": ["active", "inactive"] * 14})
    at = _upload_train_csv(new_app("pages/train.py"), frame)
    at.text_input(key="tf_name").input("Act").run()
    assert at.radio(key="tf_task::activity").value == "classification"
    assert not at.button(key="tf_start").disabled
    at.radio(key="tf_task::activity").set_value("regression").run()
    assert "holds text" in texts(at.error)
    assert at.button(key="tf_start").disabled


def test_train_form_with_a_dash_column_starts_a_job_that_parses(tiny_app):
    frame = pd.DataFrame({"smiles": GOOD_SMILES, "-logS": [f"{0.1 * i:.2f}" for i in range(28)]})
    at = _upload_train_csv(new_app("pages/train.py"), frame)
    at.text_input(key="tf_name").input("Dash").run()
    at.number_input(key="tf_epochs").set_value(1).run()
    assert not at.button(key="tf_start").disabled, texts(at.error) + texts(at.warning)
    at.button(key="tf_start").click().run()
    job = JobStore().list()[0]
    assert "--label=-logS" in job.argv
    job = wait_for_job(JobStore(), job.id)
    assert job.state == "finished", (job.error, job.log_tail())


def test_uploads_are_parsed_once_across_reruns(tiny_app, monkeypatch):
    import uuid

    from ui import inputs

    calls = []
    real = inputs.read_table
    monkeypatch.setattr(inputs, "read_table", lambda src: calls.append(1) or real(src))
    frame = pd.DataFrame({"smiles": GOOD_SMILES, "y": [f"{0.1 * i:.2f}" for i in range(28)],
                          "note": [uuid.uuid4().hex] * 28})  # content no other test uploads
    at = _upload_train_csv(new_app("pages/train.py"), frame)
    at.text_input(key="tf_name").input("Cached").run()
    at.number_input(key="tf_epochs").set_value(2).run()
    assert not at.exception and calls == [1]


def test_predict_page_caps_the_rows(tiny_app, monkeypatch):
    monkeypatch.setenv("TAGLLM_MAX_PREDICT_ROWS", "3")
    at = new_app("pages/predict.py")
    at.text_area(key="paste::smiles").input("CCO\nCCN\nCCC\nCCCl\nc1ccccc1").run()
    at.button(key="predict_button").click().run()
    assert not at.exception
    assert "5 rows" in texts(at.error) and "at most 3" in texts(at.error)
    assert "prediction" not in at.session_state


def test_predict_above_the_row_threshold_runs_as_a_background_job(tiny_app, monkeypatch):
    """Above TAGLLM_PREDICT_JOB_ROWS the page starts a predict job instead of predicting inline; the job's
    table is downloadable from the jobs panel after the page is left and opened again."""
    monkeypatch.setenv("TAGLLM_PREDICT_JOB_ROWS", "3")
    at = new_app("pages/predict.py")
    at.text_area(key="paste::smiles").input("CCO ethanol\nCCN\nC1CC(C\nc1ccccc1O phenol\nCCCl").run()
    at.button(key="predict_button").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "prediction" not in at.session_state or at.session_state["prediction"] is None
    store = JobStore()
    (job,) = store.list()
    assert job.kind == "predict" and job.argv[:3] == ["predict", "--tag", "Solubility"]
    assert "background job" in texts(at.success)
    job = wait_for_job(store, job.id)
    assert job.state == "finished", (job.error, job.log_tail())
    assert job.result["rows"] == 5 and job.result["errors"] == 1
    # leave the page and come back (a fresh session, as after a restart): the results are there to download
    at = new_app("pages/predict.py")
    assert not at.exception
    labels = [b.proto.label for b in at.get("download_button")]
    assert any(f"job #{job.id}" in label for label in labels), labels
    from streamlit.runtime.memory_media_file_storage import _calculate_file_id

    from tagllm_core.jobs import prediction_output

    # the finished table is served as its bytes, under an id that a poll of the panel does not change
    # (a deferred callable gets a new id per poll, so a click during a poll downloaded nothing)
    path = prediction_output(store, job.id)
    file_id = _calculate_file_id(path.read_bytes(), "text/csv", "Solubility_predictions.csv")
    button = by_key(at.get("download_button"), f"predict-job-{job.id}")
    assert file_id in button.proto.url, button.proto.url
    at.run()
    assert file_id in by_key(at.get("download_button"), f"predict-job-{job.id}").proto.url
    table = pd.read_csv(path, keep_default_na=False)
    assert table["row"].tolist() == [1, 2, 3, 4, 5] and table["name"].tolist()[0] == "ethanol"
    assert "invalid SMILES" in table.loc[2, "error"]


def test_running_predict_jobs_rows_so_far_download_under_an_id_that_follows_the_file(tiny_app):
    """While a predict job runs, its rows so far are served as bytes: the same id while the file is
    unchanged (a poll does not revoke what a click is fetching), a new one once rows are added."""
    from streamlit.runtime.memory_media_file_storage import _calculate_file_id

    from tagllm_core.jobs import prediction_output

    store = JobStore()
    job = store.create("predict", "Solubility", ["predict", "--tag", "Solubility", "--input", "x.csv"])
    assert store.set_running(job.id, os.getpid())
    path = prediction_output(store, job.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("row,smiles,prediction,error\n1,CCO,-0.2,\n")

    def served_id(at):
        button = by_key(at.get("download_button"), f"predict-job-{job.id}")
        assert "so far" in button.proto.label, button.proto.label
        return button.proto.url

    at = new_app("pages/predict.py")
    assert not at.exception, [e.value for e in at.exception]
    first = _calculate_file_id(path.read_bytes(), "text/csv", "Solubility_predictions.csv")
    assert first in served_id(at)
    at.run()
    assert first in served_id(at)
    with path.open("a") as f:
        f.write("2,CCN,-0.1,\n")
    at.run()
    second = _calculate_file_id(path.read_bytes(), "text/csv", "Solubility_predictions.csv")
    assert second != first and second in served_id(at)


def test_predict_job_of_an_uploaded_csv_reads_the_saved_upload(tiny_app, monkeypatch):
    from ui import predict_jobs

    monkeypatch.setenv("TAGLLM_PREDICT_JOB_ROWS", "2")
    monkeypatch.setattr(predict_jobs, "launch", lambda store, job: None)  # the job's own run is the test above
    at = new_app("pages/predict.py")
    at.radio(key="predict_mode").set_value("Upload a CSV").run()
    csv = b"id,structure\nA,CCO\nB,CCN\nC,c1ccccc1\n"
    at.file_uploader(key="predict_upload").set_value(("my mols.csv", csv, "text/csv")).run()
    at.button(key="predict_button").click().run()
    assert not at.exception, [e.value for e in at.exception]
    (job,) = JobStore().list()
    saved = Path(training.argv_value(job.argv, "--input"))
    assert saved.read_bytes() == csv and saved.name == "my_mols.csv"
    assert "--column=smiles=structure" in job.argv


def test_gzip_bomb_upload_is_refused_on_the_train_page(tiny_app, monkeypatch):
    import gzip

    monkeypatch.setenv("TAGLLM_MAX_DECOMPRESSED_MB", "1")
    bomb = gzip.compress(b"smiles,y\n" + b"CCO,1.5\n" * 400_000)
    at = new_app("pages/train.py")
    at.file_uploader(key="tf_upload").set_value(("bomb.csv.gz", bomb, "application/gzip")).run()
    assert not at.exception and "TAGLLM_MAX_DECOMPRESSED_MB" in texts(at.error)


def test_check_training_data_on_a_large_table_samples_the_inputs(monkeypatch):
    monkeypatch.setattr(training, "CHECK_ROWS", 50)
    smiles = (GOOD_SMILES * 10)[:200]
    smiles[::4] = [None] * 50  # a quarter of the inputs missing
    df = pd.DataFrame({"smiles": smiles, "y": [f"{0.1 * i:.2f}" for i in range(200)]})
    problems = _check(df)
    assert not _messages(problems, "error")
    assert any("50 rows have no value" in w for w in _messages(problems, "warning"))
    assert any("repeat" in w for w in _messages(problems, "warning"))
    small = _check(df, max_rows=12)  # 12 rows, a quarter missing: 9 usable, fewer than needed
    assert any("About 9 usable rows" in e for e in _messages(small, "error"))

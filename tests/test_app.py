"""AppTests for the Streamlit app (``streamlit.testing.v1.AppTest``).

Most tests point ``TAGLLM_BACKBONE`` at a tiny random Llama saved to a folder
(the conftest's builders), so pages load in well under a second and training
jobs (real subprocesses: ``python -m tagllm_core train-…``) finish in seconds.
The ``real`` tests repeat the main paths on the bundled SmolLM2 backbone.

Every test has its own ``TAGLLM_HOME`` (conftest), hence its own tag library
and job database; the job processes inherit it through the environment.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from _tag_builders import synthetic_solubility_tag
from conftest import make_char_tokenizer, make_domain_tag, make_function_tag, make_tiny_model
from tagllm_core.backbone import get_backbone
from tagllm_core.jobs import JobStore, launch
from tagllm_core.paths import jobs_db_path
from tagllm_core.tags import TagLibrary, load_tag_file, save_tag_file
from ui import training

REPO = Path(__file__).resolve().parent.parent
APP = str(REPO / "app.py")
EXAMPLES = REPO / "assets" / "examples"
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
    assert "percentile" in frame.columns and 0 <= frame.loc[0, "percentile"] <= 100
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
    assert rows == [{"protein": ">p1\nMKV\nLLA", "smiles": "CCO"}, {"protein": ">p1\nMKV\nLLA", "smiles": "CCN"}]


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


def test_predict_protein_detail_view(tiny_app):
    bb, lib = tiny_app
    lib.save(make_function_tag(bb, "Stability", slots=(("sequence", "protein", "Protein"),)))
    at = new_app("pages/predict.py")
    at.selectbox(key="predict_tag").set_value("Stability").run()
    at.text_area(key="paste::sequence").input(">p1\nMKTAYIAKQR\nQISFVKSHFS\n>p2\nGIGAVLKVLT").run()
    at.button(key="predict_button").click().run()
    run = at.session_state["prediction"]
    assert run.n_rows == 2 and run.n_ok == 2
    table = next(df.value for df in at.dataframe if "property" in df.value.columns)
    assert "Isoelectric point (pI)" in set(table["property"])
    assert at.get("plotly_chart")  # residue composition (and the histogram)


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
                                    augment=3, max_length={"protein": 512})
    argv = training.function_tag_argv(spec)
    assert argv[argv.index("--augment") + 1] == "3"
    assert argv[argv.index("--max-length") + 1] == "protein=512"
    from tagllm_core.cli import build_parser

    args = build_parser().parse_args(argv)  # the job's command line is one the CLI accepts
    assert args.augment == 3 and args.max_length == ["protein=512"]
    protein_only = training.FunctionJobSpec(name="P", train_file=tmp_path / "t.csv", slots=slots[:1], labels=["y"])
    assert "--augment" not in training.function_tag_argv(protein_only)


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


def test_layers_problem_explains_what_is_accepted():
    assert training.layers_problem("auto") is None and training.layers_problem("final") is None
    assert training.layers_problem("12") is None and training.layers_problem(" 7,15 ") is None
    assert training.layers_problem("") is None  # blank means the default
    for bad in ("deep", "0", "7;x"):
        assert "auto, final" in training.layers_problem(bad)


def test_train_form_sends_depth_and_descriptors_to_the_job(tiny_app):
    at = _fill_function_form(new_app("pages/train.py"), "DeepLogP")
    at.text_input(key="tf_layers").input("nope").run()
    assert not at.exception and at.button(key="tf_start").disabled
    assert "auto, final" in texts(at.error)
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
    assert "--max-rows" in job.argv and "smiles=<SMILES>:smiles" in job.argv
    assert job.argv[job.argv.index("--augment") + 1] == str(training.DEFAULT_AUGMENT)
    assert "--max-length" not in job.argv  # no protein input: no crop
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
    train_file = Path(job.argv[job.argv.index("--train") + 1])
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


def test_predict_ten_thousand_rows(tiny_app):
    """10,000 pasted rows (some bad) predict in one go, and the page stays light: one detail view, no 10k pictures."""
    import random

    smiles = [line.split()[0] for line in (EXAMPLES / "molecules.smi").read_text().splitlines()]
    rng = random.Random(0)
    rows = [rng.choice(smiles) if i % 1000 else "C1CC(C" for i in range(10_000)]
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


def test_card_shows_the_read_out_and_the_same_run_baselines():
    from tagllm_core.tags import SlotSpec, TagCard
    from ui import cards

    card = TagCard(name="Sol", kind="function", backbone={}, n_tokens=10, task="regression", labels=["y"],
                   slots=[SlotSpec("smiles", "smiles", None)], layers=[12], features="descriptors",
                   metrics={"valid": {"rmse": 0.8, "spearman": 0.9},
                            "baselines": {"mean": {"rmse": 2.2}, "rf_descriptors": {"rmse": 0.88, "spearman": 0.9}}},
                   training={"layer_choice": {"chosen": 12}})
    assert cards.readout_text(card) == "layer 12 (chosen on validation) + classic descriptors of the inputs"
    frame = cards.comparison_frame(card)
    assert frame["model"].tolist() == ["<Sol>", "predict the training mean", "random forest on descriptors"]
    assert frame["rmse"].tolist() == [0.8, 2.2, 0.88]
    assert "r2" not in frame.columns  # nobody has it: no empty column
    assert not any(k.startswith("baselines") for k in cards.flat_metrics(card))  # shown apart, not as metrics
    old = TagCard(name="Old", kind="function", backbone={}, n_tokens=10, task="regression",
                  metrics={"valid": {"rmse": 1.1}})
    assert cards.readout_text(old) == "the final layer" and cards.comparison_frame(old) is None

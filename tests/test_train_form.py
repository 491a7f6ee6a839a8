"""The Train page's form rules (ui/train_form.py), without a running app: form values to a job's command
line, and the problems that keep Start disabled (issue 12: pages/train.py keeps only layout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tagllm_core.backbone import BackboneFingerprint
from tagllm_core.jobs import JobStore
from tagllm_core.tags import TagLibrary
from ui import train_form, training
from ui.train_form import ENTER_NAME, FunctionForm
from ui.training import SlotChoice

SMILES = SlotChoice("mol", "smiles", "smiles", "SMILES")
PROTEIN = SlotChoice("seq", "sequence", "protein", None)


def form(**changes) -> FunctionForm:
    values = dict(file_name="data.csv", columns=["mol", "logS"], slots=[SMILES], labels=["logS"],
                  task="regression", name="Sol", name_problem=None, what="solubility",
                  template=train_form.preview_template("", [SMILES], "Sol", "solubility"), epochs=3, batch_size=16,
                  tag_lr=1e-3, n_tokens=10, split="auto", valid_fraction=0.1, max_rows=0, augment=2, crop=0,
                  layers="auto", descriptors=False, train_file=Path("/data/data.csv"), spellings=3)
    values.update(changes)
    return FunctionForm(**values)


def test_a_complete_form_has_no_problems_and_becomes_the_jobs_command_line():
    f = form()
    assert train_form.function_form_problems(f) == []
    argv = training.function_tag_argv(train_form.function_spec(f))
    assert argv[:3] == ["train-function-tag", "--name=Sol", "--train=/data/data.csv"]
    assert "--input=smiles=<SMILES>:smiles" in argv and "--column=smiles=mol" in argv and "--label=logS" in argv
    assert "--what=solubility" in argv and "--epochs=3" in argv and "--augment=2" in argv and "--spellings=3" in argv
    assert "--layers=auto" in argv and "--features=none" in argv and "--valid-fraction=0.100" in argv
    # the default template is the engine's own: nothing on the command line; "0 = all" rows: no cap
    assert training.argv_value(argv, "--template") is None and training.argv_value(argv, "--max-rows") is None


def test_form_values_are_translated_as_the_widgets_mean_them():
    spec = train_form.function_spec(form(max_rows=200, layers="  ", descriptors=True, what="", crop=512))
    assert spec.max_rows == 200 and spec.layers == "auto" and spec.features == "descriptors"
    assert spec.what == "property"
    assert spec.max_length == {}  # a crop without a protein input is ignored (its widget is disabled)
    spec = train_form.function_spec(form(slots=[PROTEIN, SMILES], crop=512, layers=" 7,15 "))
    assert spec.max_length == {"protein": 512} and spec.layers == "7,15"
    assert training.argv_value(training.function_tag_argv(spec), "--max-length") == "protein=512"
    assert train_form.function_spec(form(slots=[PROTEIN], crop=0)).max_length == {}


def test_reference_percentiles_are_asked_for_single_molecule_tags_only():
    argv = training.function_tag_argv(train_form.function_spec(form(reference=True)))
    assert training.argv_value(argv, "--reference-rows") == str(train_form.REFERENCE_ROWS)
    assert training.argv_value(training.function_tag_argv(train_form.function_spec(form())), "--reference-rows") is None
    both = train_form.function_spec(form(slots=[PROTEIN, SMILES], reference=True))
    assert both.reference_rows == 0
    assert training.argv_value(training.function_tag_argv(both), "--reference-rows") is None


def test_each_form_problem_is_one_sentence_in_the_forms_order():
    bad_template = train_form.preview_template("The molecule {mol} has <X>", [SMILES], "Sol", "solubility")
    f = form(columns=["mol"], slots=[], labels=["a", "b"], task="classification", name=None, layers="nope",
             template=bad_template)
    problems = train_form.function_form_problems(f)
    assert problems[0].startswith("`data.csv` has only the column ['mol']")
    assert problems[1:4] == ["Choose at least one input column.", "A classification tag takes a single label column.",
                             ENTER_NAME]
    assert problems[4] == bad_template.problem and "must be exactly the mapped inputs" in problems[4]
    assert "auto, stack, final" in problems[5] and len(problems) == 6
    # a refused name replaces the hint; no label is its own problem
    named = train_form.function_form_problems(form(name=None, name_problem="A tag named <Sol> already exists.",
                                                   labels=[]))
    assert named == ["Choose a label column.", "A tag named <Sol> already exists."]


def test_template_preview():
    default = train_form.preview_template("", [SMILES], None, "")
    assert default.template is None and default.problem is None and "<Tag>" in default.resolved
    assert "{smiles:<SMILES>}" in default.resolved  # the chosen domain tag goes into its slot
    custom = train_form.preview_template("Molecule {smiles}. Its logP is <Whatever>", [SMILES], "LogP", "logP")
    assert custom.template == custom.resolved and custom.resolved.endswith("<LogP>")
    assert train_form.preview_template("anything", [], "X", "y") == train_form.TemplatePreview(None, None)


def test_rows_and_steps_estimate():
    assert train_form.rows_used(1000, 0) == 1000 and train_form.rows_used(1000, 300) == 300
    assert train_form.rows_used(50, 300) == 50
    assert train_form.estimate_steps(100, 0.1, 16, 3) == (90, 18)  # 6 batches an epoch, the last one partial
    assert train_form.estimate_steps(1, 0.5, 16, 1) == (1, 1)


def test_check_name(tmp_path):
    fingerprint = BackboneFingerprint("tiny", hidden_size=8, vocab_size=16, embedding_sha256="ab" * 32)
    lib = TagLibrary(fingerprint, user_dir=tmp_path / "user", bundled_root=tmp_path / "bundled")
    store = JobStore(tmp_path / "jobs.sqlite")
    assert train_form.check_name("  ", lib, store) == (None, None)
    assert train_form.check_name(" <LogP> ", lib, store) == ("LogP", None)
    name, problem = train_form.check_name("a/b", lib, store)
    assert name is None and problem
    job = store.create("function-tag", "Busy", ["train-function-tag"])
    store.set_running(job.id, __import__("os").getpid())
    assert train_form.check_name("Busy", lib, store) == (None, "A job is already training <Busy>; wait for it or "
                                                                "choose another name.")


@pytest.mark.parametrize("file_name, fmt", [("p.fasta", "fasta"), ("P.FA.gz", "fasta"), ("x.faa", "fasta"),
                                            ("t.csv", "csv"), ("t.tsv.gz", "csv"), ("m.smi", "smiles"),
                                            ("m.txt", "smiles")])
def test_corpus_format_from_the_file_name(file_name, fmt):
    assert train_form.corpus_format(file_name) == fmt


def test_domain_form():
    assert train_form.domain_form_problems("Peptide", 8) == []
    assert train_form.domain_form_problems(None, 7) == [ENTER_NAME, "A domain tag needs at least 8 usable sequences."]
    spec = train_form.domain_spec("Peptide", Path("/c.fasta"), "fasta", "protein", None, 4, 10, 0, 128, 8)
    assert spec.max_sequences is None and spec.steps == 4
    argv = training.domain_tag_argv(spec)
    assert argv[:3] == ["train-domain-tag", "--name=Peptide", "--corpus=/c.fasta"]
    assert training.argv_value(argv, "--column") is None  # only a CSV corpus names its column
    with_cap = train_form.domain_spec(None, Path("/c.csv"), "csv", "smiles", "smi", 4, 10, 500, 128, 8)
    assert with_cap.name == "" and training.argv_value(training.domain_tag_argv(with_cap), "--max-sequences") == "500"


def test_start_saves_the_uploads_in_one_folder_before_building_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TAGLLM_HOME", str(tmp_path / "home"))
    started = []
    monkeypatch.setattr(training, "start_job", lambda store, kind, name, argv: started.append((kind, name, argv)))
    spec = train_form.function_spec(form(train_file=None))
    uploads = [(b"mol,logS\nCCO,1\n", "my data.csv", lambda p: setattr(spec, "train_file", p)),
               (b"mol,logS\nCCN,2\n", "valid-v.csv", lambda p: setattr(spec, "valid_file", p))]
    train_form.start_with_uploads(None, "function-tag", "Sol", lambda: training.function_tag_argv(spec), uploads)
    ((kind, name, argv),) = started
    assert (kind, name) == ("function-tag", "Sol")
    train, valid = Path(training.argv_value(argv, "--train")), Path(training.argv_value(argv, "--valid"))
    assert train.read_bytes() == b"mol,logS\nCCO,1\n" and valid.read_bytes() == b"mol,logS\nCCN,2\n"
    assert train.parent == valid.parent and (tmp_path / "home" / "uploads") in train.parents


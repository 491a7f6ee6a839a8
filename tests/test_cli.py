"""The command line (``python -m tagllm_core``): input specs, the parser, and every command
run end to end on a tiny random Llama saved as a Hugging Face folder (``TAGLLM_BACKBONE``).

Most commands run in-process through ``cli.main`` (the same code path as ``__main__``, without
a subprocess's 8-20 s of importing torch and transformers on a busy machine); ``tags list`` and
a training job run as real subprocesses, with exit codes checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tagllm_core import cli
from tagllm_core.cli import build_parser, parse_input_spec
from tagllm_core.exceptions import InputError, TagLLMError
from tagllm_core.jobs import JobStore
from tagllm_core.prediction import Predictor
from tagllm_core.tags import SlotSpec, TagLibrary

from conftest import REPO, make_char_tokenizer, make_domain_tag, make_function_tag  # noqa: E402

SUFFIX = ".tag.safetensors"
SMILES = ["CCO", "c1ccccc1", "CC(=O)O", "CCCCN", "OCCO", "CCCCCCO", "c1ccccc1CC", "CCOC(=O)C", "CN", "CCCl"]


# --- parse_input_spec ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [
    ("smiles=<SMILES>", SlotSpec("smiles", "smiles", "SMILES")),
    ("sequence=<Protein>", SlotSpec("sequence", "protein", "Protein")),
    ("smiles", SlotSpec("smiles", "smiles", None)),
    ("smiles=none", SlotSpec("smiles", "smiles", None)),
    ("drug=none:smiles", SlotSpec("drug", "smiles", None)),
    ("drug=<Mol>:smiles", SlotSpec("drug", "smiles", "Mol")),
    ("target=<Protein>", SlotSpec("target", "protein", "Protein")),
    ("ligand=<SMILES>", SlotSpec("ligand", "smiles", "SMILES")),
    ("notes=none", SlotSpec("notes", "text", None)),
    ("x=<Prot>:protein", SlotSpec("x", "protein", "Prot")),
    (" smiles = <SMILES>", SlotSpec("smiles", "smiles", "SMILES")),
])
def test_parse_input_spec(spec, expected):
    assert parse_input_spec(spec) == expected


@pytest.mark.parametrize("spec, error", [
    ("1smiles=<SMILES>", InputError),  # slot is not an identifier
    ("=<SMILES>", InputError),
    ("my-slot=<SMILES>", InputError),
    ("smiles=<SMILES>:dna", InputError),  # unknown kind
    ("drug=none:rna", InputError),
    ("smiles=<../evil>", TagLLMError),  # unsafe tag name
])
def test_parse_input_spec_rejects_bad_specs(spec, error):
    with pytest.raises(error):
        parse_input_spec(spec)


def test_parse_input_spec_takes_the_kind_from_the_domain_tag_card(llama, library_factory):
    lib = library_factory(llama)
    lib.save(make_domain_tag(llama, name="Prot", input_kind="protein"))
    # the slot name "x" alone would say "text"; the card of <Prot> says protein
    assert parse_input_spec("x=<Prot>", lib) == SlotSpec("x", "protein", "Prot")
    assert parse_input_spec("x=<Prot>:text", lib) == SlotSpec("x", "text", "Prot")  # explicit kind wins
    assert parse_input_spec("x=<Unknown>", lib) == SlotSpec("x", "text", "Unknown")


# --- the parser --------------------------------------------------------------------------------------


def test_parser_train_function_tag_defaults_and_repeats(monkeypatch):
    monkeypatch.setenv("TAGLLM_BACKBONE", "/some/model")
    args = build_parser().parse_args([
        "train-function-tag", "--name", "Aff", "--train", "t.csv", "--input", "sequence=<Protein>",
        "--input", "smiles=<SMILES>", "--label", "y", "--column", "smiles=drug", "--epochs", "3",
        "--job-db", "db.sqlite", "--job-id", "7"])
    assert args.backbone == "/some/model"
    assert args.func is cli.cmd_train_function_tag
    assert args.input == ["sequence=<Protein>", "smiles=<SMILES>"] and args.label == ["y"]
    assert args.column == ["smiles=drug"] and args.epochs == 3
    assert (args.task, args.readout, args.split, args.batch_size, args.n_tokens) == (
        "regression", "last+mean", "auto", 16, 10)
    assert (args.job_db, args.job_id) == ("db.sqlite", "7")
    assert args.no_warm_start is False and args.valid is None and args.checkpoint_dir is None
    assert args.augment == 0 and args.max_length is None


def test_parser_other_commands(monkeypatch):
    monkeypatch.delenv("TAGLLM_BACKBONE", raising=False)
    p = build_parser()
    a = p.parse_args(["--device", "cpu", "tags", "list", "--json"])
    assert (a.command, a.tags_cmd, a.json, a.device, a.backbone) == ("tags", "list", True, "cpu", None)
    a = p.parse_args(["tags", "import", "f.tag.safetensors", "--overwrite"])
    assert (a.tags_cmd, a.file, a.overwrite) == ("import", "f.tag.safetensors", True)
    a = p.parse_args(["predict", "--tag", "T", "--input", "i.csv", "--output", "o.csv", "--domain", "smiles=none",
                      "--column", "smiles=mol"])
    assert a.func is cli.cmd_predict and a.domain == ["smiles=none"] and a.batch_size == 16
    a = p.parse_args(["train-domain-tag", "--name", "D", "--corpus", "moses", "--steps", "5"])
    assert a.func is cli.cmd_train_domain_tag and a.steps == 5 and a.kind is None
    for bad in (["predict", "--tag", "T"], ["train-function-tag", "--name", "X", "--train", "t.csv"],
                ["tags"], [], ["train-function-tag", "--name", "X", "--train", "t", "--input", "s", "--label",
                               "y", "--readout", "first"]):
        with pytest.raises(SystemExit) as err:
            p.parse_args(bad)
        assert err.value.code == 2


def test_pairs():
    assert cli._pairs(["smiles=mol", "seq = none", "a="], "--column") == {"smiles": "mol", "seq": None, "a": None}
    with pytest.raises(InputError, match="KEY=VALUE"):
        cli._pairs(["smiles"], "--column")


def test_train_function_tag_options_left_out_take_the_configs_defaults():
    from tagllm_core.training import FunctionTagConfig

    base = ["train-function-tag", "--name", "A", "--train", "t.csv", "--input", "smiles", "--label", "y"]
    args = build_parser().parse_args(base)
    defaults = {f.name: f.default for f in dataclasses.fields(FunctionTagConfig)}
    assert {name: getattr(args, name) for name in cli._CONFIG_DEFAULTS} == {
        name: defaults[name] for name in cli._CONFIG_DEFAULTS}
    given = build_parser().parse_args(base + ["--epochs", "3", "--layers", "final", "--features", "none"])
    assert (given.epochs, given.layers, given.features, given.patience) == (3, "final", "none", defaults["patience"])
    assert args.forest is None  # left out: wherever the forest applies
    assert build_parser().parse_args(base + ["--no-forest"]).forest is False
    assert build_parser().parse_args(base + ["--forest"]).forest is True
    # every option whose default is left to the config is one that _Parser fills in
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    deferred = {a.dest for a in sub.choices["train-function-tag"]._actions
                if a.default is argparse.SUPPRESS and a.dest != "help"}
    assert deferred == set(cli._CONFIG_DEFAULTS)


# `python -m tagllm_core ARGS` in a fresh interpreter; its last line: the exit code and whether torch was imported
_RUN_CLI = """
import runpy, sys
sys.argv = ["tagllm", *sys.argv[1:]]
code = None
try:
    runpy.run_module("tagllm_core", run_name="__main__")
except SystemExit as exit_:
    code = exit_.code
print("\\n", code, "torch" in sys.modules)
"""


@pytest.mark.parametrize("argv, exit_code", [
    (["--help"], 0),
    (["train-function-tag", "--help"], 0),
    (["train-function-tag", "--name", "X", "--train", "t.csv", "--input", "smiles", "--label", "y",
      "--readout", "first"], 2),
    (["predict", "--tag", "T"], 2),
])
def test_help_and_argument_errors_do_not_import_torch(argv, exit_code):
    """Building the parser loads no training code: ``tagllm --help`` answers at once, not after torch."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", _RUN_CLI, *argv], cwd=str(REPO), env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-2:] == [str(exit_code), "False"], proc.stdout[-500:] + proc.stderr[-500:]
    assert "usage: tagllm" in proc.stdout + proc.stderr


# --- end to end on a tiny model folder ----------------------------------------------------------------


@pytest.fixture
def env(model_dir, tagllm_home, monkeypatch):
    """TAGLLM_BACKBONE for in-process runs, and the environment for subprocesses."""
    monkeypatch.setenv("TAGLLM_BACKBONE", str(model_dir))
    child = dict(os.environ, TAGLLM_BACKBONE=str(model_dir), TAGLLM_HOME=str(tagllm_home), HF_HUB_OFFLINE="1",
                 TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO), TAGLLM_MAX_JOBS="1")
    return child


@pytest.fixture
def folder_backbone(model_dir):
    from tagllm_core.backbone import get_backbone

    return get_backbone(str(model_dir))  # the same memoised copy that in-process CLI runs use


@pytest.fixture
def library(folder_backbone, env) -> TagLibrary:
    """The CLI's own library: TAGLLM_HOME/tags/<slug of the folder model>."""
    return TagLibrary(folder_backbone.fingerprint)


@pytest.fixture
def func_tag(folder_backbone, library):
    tag = make_function_tag(folder_backbone, name="LogS", slots=(("smiles", "smiles", None),),
                            interval={"level": 0.9, "halfwidth": [1.5]})
    library.save(tag)
    return tag


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_sub(env, *argv, timeout=240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tagllm_core", *[str(a) for a in argv]], env=env, cwd=str(REPO),
                          capture_output=True, text=True, timeout=timeout)


def test_folder_backbone_matches_the_model_it_was_saved_from(folder_backbone, model_dir):
    from tagllm_core.backbone import load_backbone

    assert folder_backbone.fingerprint.name == "tiny-llama"
    assert load_backbone(str(model_dir)).fingerprint == folder_backbone.fingerprint
    assert folder_backbone.tokenizer("CCO").input_ids == make_char_tokenizer(add_bos=True)("CCO").input_ids


def test_tags_list_in_a_subprocess(env, library, func_tag, folder_backbone):
    library.save(make_domain_tag(folder_backbone, name="SMILES"))
    proc = run_sub(env, "tags", "list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("<LogS>\tfunction\tuser\t") and lines[0].endswith(func_tag.card.template)
    assert lines[1].startswith("<SMILES>\tdomain\tuser\t") and lines[1].endswith("\tsmiles")


def test_predict_writes_predictions_and_error_cells(env, capsys, tmp_path, library, func_tag, folder_backbone):
    src = tmp_path / "in.csv"
    pd.DataFrame({"id": range(5), "smiles": ["CCO", "c1ccccc1", "C1CC", "CCN", "O"]}).to_csv(src, index=False)
    out = tmp_path / "out.csv"
    code, stdout, stderr = run_cli(capsys, "predict", "--tag", "LogS", "--input", src, "--output", out, "--quiet")
    assert code == 0, stderr
    assert "wrote 5 rows" in stdout and "4 predicted, 1 with errors" in stdout
    assert "row 3" in stderr and "C1CC" in stderr
    df = pd.read_csv(out, keep_default_na=False)
    assert df["id"].tolist() == [0, 1, 2, 3, 4]
    assert df["error"].astype(bool).tolist() == [False, False, True, False, False]
    assert df.loc[2, "prediction"] == ""
    expected = Predictor(folder_backbone, library.get("LogS")).predict(
        [{"smiles": s} for s in ["CCO", "c1ccccc1", "CCN", "O"]])
    got = df.loc[df["error"] == "", "prediction"].astype(float).to_numpy()
    np.testing.assert_allclose(got, [r.prediction for r in expected], rtol=1e-5)
    assert float(df.loc[0, "upper"]) - float(df.loc[0, "lower"]) == pytest.approx(3.0)  # 2 x halfwidth 1.5
    assert df.loc[2, "upper"] == ""

    # --column maps a differently named column onto the slot
    pd.DataFrame({"mol": ["CCO", "xx"]}).to_csv(src, index=False)
    code, _, _ = run_cli(capsys, "predict", "--tag", "LogS", "--input", src, "--output", out, "--quiet",
                         "--column", "smiles=mol")
    assert code == 0
    df = pd.read_csv(out, keep_default_na=False)
    assert float(df.loc[0, "prediction"]) == pytest.approx(expected[0].prediction, rel=1e-5)
    assert "invalid SMILES" in df.loc[1, "error"]


def test_predict_output_says_what_standardisation_did_and_flags_rows(env, capsys, tmp_path, library, func_tag,
                                                                     folder_backbone):
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"smiles": ["CC(=O)[O-].[Na+]", "O", "N.N.Cl[Pt]Cl", "CCO.c1ccccc1"]}).to_csv(src, index=False)
    code, _, stderr = run_cli(capsys, "predict", "--tag", "LogS", "--input", src, "--output", out, "--quiet")
    assert code == 0, stderr
    df = pd.read_csv(out, keep_default_na=False)
    assert {"standardised", "changes", "flags"} <= set(df.columns)
    assert df["standardised"].tolist()[0] == "CC(=O)O" and df["standardised"].tolist()[3] == "c1ccccc1"
    assert df.loc[0, "changes"] == "salt stripped: Na+; neutralised (net charge -1 → 0)"
    assert "inorganic: no carbon atom" in df.loc[1, "flags"]
    assert "contains a metal (Pt)" in df.loc[2, "flags"]
    assert "mixture" in df.loc[3, "changes"]
    assert df["error"].tolist() == [""] * 4


def test_predict_missing_column_is_a_one_line_error(env, capsys, tmp_path, func_tag):
    src = tmp_path / "in.csv"
    pd.DataFrame({"molecule": ["CCO"], "y": [1.0]}).to_csv(src, index=False)
    out = tmp_path / "out.csv"
    code, stdout, stderr = run_cli(capsys, "predict", "--tag", "LogS", "--input", src, "--output", out, "--quiet")
    assert code == 2
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")  # one line, no traceback
    assert "['smiles']" in lines[0] and "['molecule', 'y']" in lines[0]
    assert not out.exists()


def test_unknown_tag_is_a_one_line_error(env, capsys, tmp_path, func_tag):
    src = tmp_path / "in.csv"
    src.write_text("smiles\nCCO\n")
    code, out, err = run_cli(capsys, "predict", "--tag", "Nope", "--input", src, "--output", tmp_path / "o.csv")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "<Nope>" in err and "<LogS>" in err  # lists what is available


def test_tags_show_export_delete_import(env, capsys, tmp_path, library, func_tag):
    code, out, _ = run_cli(capsys, "tags", "show", "LogS")
    assert code == 0
    shown = json.loads(out)
    assert shown["name"] == "LogS" and shown["source"] == "user" and "label_sample" not in shown

    dest = tmp_path / "export"
    dest.mkdir()
    code, out, _ = run_cli(capsys, "tags", "export", "<LogS>", dest)
    assert code == 0
    exported = dest / ("LogS" + SUFFIX)
    assert out.strip() == str(exported) and exported.read_bytes() == library.find("LogS").path.read_bytes()

    code, out, _ = run_cli(capsys, "tags", "delete", "LogS")
    assert code == 0 and "deleted" in out
    assert not library.exists("LogS")
    code, out, _ = run_cli(capsys, "tags", "list", "--json")
    assert json.loads(out) == []
    code, _, err = run_cli(capsys, "tags", "delete", "LogS")
    assert code == 2 and err.startswith("error: ")

    code, out, _ = run_cli(capsys, "tags", "import", exported)
    assert code == 0 and "imported <LogS>" in out
    loaded = library.get("LogS")
    assert (loaded.vectors == func_tag.vectors).all()
    code, _, err = run_cli(capsys, "tags", "import", exported)  # already there
    assert code == 2 and "already exists" in err
    code, _, _ = run_cli(capsys, "tags", "import", exported, "--overwrite")
    assert code == 0
    junk = tmp_path / "junk.tag.safetensors"
    junk.write_bytes(b"\x80\x04not a tag")
    code, _, err = run_cli(capsys, "tags", "import", junk)
    assert code == 2 and "pickle" in err
    code, out, _ = run_cli(capsys, "tags", "list", "--json")
    assert [t["name"] for t in json.loads(out)] == ["LogS"]


def test_evaluate_prints_json_metrics(env, capsys, tmp_path, library, func_tag, folder_backbone):
    labels = [1.0, 2.5, 0.3, 4.0, 2.0, 3.3]
    smiles = ["CCO", "c1ccccc1", "CCCCN", "C1CC", "OCCO", "CC(=O)O"]
    src = tmp_path / "eval.csv"
    pd.DataFrame({"smiles": smiles, "logS": labels}).to_csv(src, index=False)
    code, out, err = run_cli(capsys, "evaluate", "--tag", "LogS", "--input", src, "--label", "logS")
    assert code == 0, err
    metrics = json.loads(out)
    good = [i for i in range(6) if i != 3]
    preds = np.array([r.prediction for r in Predictor(folder_backbone, library.get("LogS")).predict(
        [{"smiles": smiles[i]} for i in good])])
    y = np.array(labels)[good]
    assert metrics["rows_failed"] == 1 and metrics["n"] == 5
    assert metrics["rmse"] == pytest.approx(float(np.sqrt(np.mean((preds - y) ** 2))), rel=1e-5)
    assert metrics["interval_coverage"] == pytest.approx(float(np.mean(np.abs(preds - y) <= 1.5)))
    assert {"mae", "pearson", "spearman", "r2", "ci"} <= set(metrics)

    code, _, err = run_cli(capsys, "evaluate", "--tag", "LogS", "--input", src, "--label", "solubility")
    assert code == 2 and "solubility" in err and "['smiles', 'logS']" in err


def test_evaluate_against_baselines_from_a_training_file(env, capsys, tmp_path, library, func_tag):
    from tagllm_core.metrics import PairedDifference

    test = tmp_path / "test.csv"
    pd.DataFrame({"mol": SMILES, "y": np.linspace(0, 3, len(SMILES))}).to_csv(test, index=False)
    train = _train_csv(tmp_path / "train.csv")  # columns mol, heavy
    code, out, err = run_cli(capsys, "evaluate", "--tag", "LogS", "--input", test, "--label", "y",
                             "--column", "smiles=mol", "--baselines-from", train, "--train-label", "heavy")
    assert code == 0, err
    got = json.loads(out)
    assert set(got["baselines"]) == {"mean", "ridge_descriptors", "rf_descriptors"}
    for b in got["baselines"].values():
        assert b["n"] == got["n"] and b["train_rows"] == 32
        assert PairedDifference.from_dict(b["versus_tag"]).difference == pytest.approx(got["rmse"] - b["rmse"])
    # the training file must carry the label: a clear error, exit code 2
    code, _, err = run_cli(capsys, "evaluate", "--tag", "LogS", "--input", test, "--label", "y",
                           "--column", "smiles=mol", "--baselines-from", train)
    assert code == 2 and "'y'" in err and "baseline training" in err


def test_evaluate_a_tag_with_several_labels_scores_each(env, capsys, tmp_path, library, folder_backbone):
    library.save(make_function_tag(folder_backbone, name="Props", slots=(("smiles", "smiles", None),), n_outputs=2,
                                   labels=["logS", "logP"], interval={"level": 0.9, "halfwidth": [1.5, 0.5]}))
    src = tmp_path / "eval.csv"
    smiles = ["CCO", "c1ccccc1", "CCCCN", "OCCO", "CC(=O)O"]
    pd.DataFrame({"smiles": smiles, "s": [1.0, 2.5, 0.3, 2.0, 3.3], "p": [-0.3, 2.1, 0.8, -1.0, 0.1]}).to_csv(
        src, index=False)
    code, out, err = run_cli(capsys, "evaluate", "--tag", "Props", "--input", src, "--label", "s", "--label", "p")
    assert code == 0, err
    metrics = json.loads(out)
    outputs = np.array([r.outputs for r in Predictor(folder_backbone, library.get("Props")).predict(
        [{"smiles": s} for s in smiles])])
    for i, (name, column) in enumerate((("logS", "s"), ("logP", "p"))):
        y = pd.read_csv(src)[column].to_numpy()
        got = metrics["by_label"][name]
        assert got["rmse"] == pytest.approx(float(np.sqrt(np.mean((outputs[:, i] - y) ** 2))), rel=1e-5)
        half = (1.5, 0.5)[i]
        assert got["interval_coverage"] == pytest.approx(float(np.mean(np.abs(outputs[:, i] - y) <= half)))
    assert metrics["rmse"] == pytest.approx(metrics["by_label"]["logS"]["rmse"])
    # one --label: the first output, as before; three for a two-output tag: refused
    code, out, _ = run_cli(capsys, "evaluate", "--tag", "Props", "--input", src, "--label", "s")
    assert code == 0 and "by_label" not in json.loads(out)
    code, _, err = run_cli(capsys, "evaluate", "--tag", "Props", "--input", src, "--label", "s", "--label", "p",
                           "--label", "s")
    assert code == 2 and "predicts 2 label(s)" in err


def test_evaluate_classification(env, capsys, tmp_path, library, folder_backbone):
    library.save(make_function_tag(folder_backbone, name="Tox", slots=(("smiles", "smiles", None),),
                                   task="classification", n_outputs=2, classes=["no", "yes"]))
    src = tmp_path / "eval.csv"
    pd.DataFrame({"smiles": SMILES, "toxic": ["yes", "no"] * 5}).to_csv(src, index=False)
    code, out, err = run_cli(capsys, "evaluate", "--tag", "Tox", "--input", src, "--label", "toxic")
    assert code == 0, err
    metrics = json.loads(out)
    assert {"accuracy", "auroc", "auprc"} <= set(metrics) and metrics["n"] == 10 and metrics["rows_failed"] == 0


def _train_csv(path: Path) -> Path:
    from rdkit import Chem

    smiles = []
    for n in range(1, 9):
        smiles += ["C" * n, "C" * n + "O", "c1ccccc1" + "C" * n, "C" * n + "N"]
    y = [Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in smiles]
    pd.DataFrame({"mol": smiles, "heavy": y}).to_csv(path, index=False)
    return path


def test_train_function_tag_command(env, capsys, tmp_path, library):
    csv = _train_csv(tmp_path / "train.csv")
    code, out, err = run_cli(capsys, "train-function-tag", "--name", "Heavy", "--train", csv, "--input", "smiles",
                             "--column", "smiles=mol", "--label", "heavy", "--epochs", "1", "--n-tokens", "4",
                             "--split", "random", "--valid-fraction", "0.3", "--batch-size", "8")
    assert code == 0, err
    result = json.loads(out)
    assert result["tag"] == "Heavy" and result["path"] == str(library.find("Heavy").path)
    assert [h["epoch"] for h in result["history"]] == [0, 1]
    assert len(result["parity"]["true"]) == len(result["parity"]["pred"]) == 10
    assert math.isfinite(result["metrics"]["rmse"]) and result["rows_dropped"] == 0
    card = library.get("Heavy").card
    assert result["held_out"] is None and "held_out" not in card.metrics  # 10 validation rows: too few to halve
    assert card.training["data"] == "train.csv" and card.training["stage"] == 2
    assert card.training["config"]["epochs"] == 1 and card.slots == [SlotSpec("smiles", "smiles", None)]

    # crop and augmentation reach the card; a bad crop is one clear line
    code, out, err = run_cli(capsys, "train-function-tag", "--name", "Aug", "--train", csv, "--input", "smiles",
                             "--column", "smiles=mol", "--label", "heavy", "--epochs", "1", "--n-tokens", "4",
                             "--split", "random", "--valid-fraction", "0.3", "--augment", "2",
                             "--max-length", "smiles=60", "--spellings", "1")
    assert code == 0, err
    config = library.get("Aug").card.training["config"]
    assert config["augment"] == 2 and config["max_length"] == {"smiles": 60} and config["spellings"] == 1
    assert library.get("Aug").card.spellings == 1
    code, out, err = run_cli(capsys, "train-function-tag", "--name", "Bad", "--train", csv, "--input", "smiles",
                             "--column", "smiles=mol", "--label", "heavy", "--max-length", "protein=many")
    assert code == 2 and "--max-length expects KIND=N" in err

    # a name that exists is refused with a one-line error
    code, out, err = run_cli(capsys, "train-function-tag", "--name", "Heavy", "--train", csv, "--input", "smiles",
                             "--column", "smiles=mol", "--label", "heavy", "--epochs", "1")
    assert code == 2 and out == "" and "already exists" in err


def test_train_function_tag_as_a_job_in_a_subprocess(env, tmp_path, library):
    csv = _train_csv(tmp_path / "train.csv")
    store = JobStore(tmp_path / "jobs" / "jobs.sqlite")
    argv = ["train-function-tag", "--name", "JobTag", "--train", str(csv), "--input", "smiles=none:smiles",
            "--column", "smiles=mol", "--label", "heavy", "--epochs", "1", "--n-tokens", "4", "--split", "random",
            "--valid-fraction", "0.3", "--batch-size", "8"]
    job = store.create("train-function-tag", "JobTag", argv)
    proc = run_sub(env, *argv, "--job-db", store.db_path, "--job-id", job.id)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    done = store.get(job.id)
    assert done.state == "finished", (done.error, proc.stdout)
    assert done.pid is not None and done.finished >= done.started
    result = done.result
    assert result["tag"] == "JobTag" and math.isfinite(result["metrics"]["rmse"])
    assert len(result["parity"]["true"]) == len(result["parity"]["pred"]) == 10
    assert [h["epoch"] for h in result["history"]] == [0, 1]
    events = store.history(job.id)
    assert events and events[-1]["step"] == events[-1]["total_steps"]
    assert any("valid_rmse" in e["metrics"] for e in events)
    assert library.exists("JobTag")


def test_failing_job_is_marked_failed(env, tmp_path, library):
    csv = tmp_path / "train.csv"
    pd.DataFrame({"smiles": SMILES * 2, "y": [1.0] * 20}).to_csv(csv, index=False)  # constant labels
    store = JobStore(tmp_path / "jobs" / "jobs.sqlite")
    argv = ["train-function-tag", "--name", "Flat", "--train", str(csv), "--input", "smiles", "--label", "y",
            "--epochs", "1", "--job-db", str(store.db_path)]
    job = store.create("train-function-tag", "Flat", argv)
    code = cli.main([*argv, "--job-id", str(job.id)])
    assert code == 1
    done = store.get(job.id)
    assert done.state == "failed" and "constant" in done.error
    assert not library.exists("Flat")


# --- malloc tuning only in entry points (issue 11, item 13) ------------------------------------------


def test_importing_the_package_leaves_the_allocator_alone(tmp_path):
    """A program that imports tagllm_core (the Streamlit server) keeps its own malloc settings."""
    code = ("import tagllm_core, tagllm_core.jobs, tagllm_core.cli, tagllm_core.data\n"
            "from tagllm_core import _allocator\n"
            "print(_allocator._done)\n")
    env = {k: v for k, v in os.environ.items() if k != "TAGLLM_NO_MALLOC_TUNING"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_cli_entry_point_tunes_the_allocator(monkeypatch):
    from tagllm_core import _allocator

    calls = []
    monkeypatch.setattr(_allocator, "tune", lambda: calls.append(1) or True)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert calls == [1]


def test_bench_scripts_tune_the_allocator():
    for script in sorted((REPO / "bench").glob("*.py")):
        assert "tune_allocator()" in script.read_text(), f"{script.name} does not tune the allocator"


# --- jobs: the slot first, then the loading; early errors keep their message (issue 11, item 12) -------


def test_queued_job_waits_for_its_slot_before_loading_anything(env, tmp_path, monkeypatch, capsys):
    import threading
    import time

    store = JobStore(tmp_path / "jobs" / "jobs.sqlite")
    blocker = store.create("k", "blocker", [])
    store.set_running(blocker.id, os.getpid())  # a live job holds the only slot (TAGLLM_MAX_JOBS=1)
    argv = ["train-function-tag", "--name", "Late", "--train", str(_train_csv(tmp_path / "t.csv")), "--input",
            "smiles", "--column", "smiles=mol", "--label", "heavy", "--job-db", str(store.db_path)]
    job = store.create("train-function-tag", "Late", argv)
    loaded = []

    def fake_backbone(args):
        loaded.append(store.get(job.id).state)
        raise InputError("the backbone folder is empty")

    monkeypatch.setattr(cli, "_backbone", fake_backbone)
    codes = []
    worker = threading.Thread(target=lambda: codes.append(cli.main([*argv, "--job-id", str(job.id)])))
    worker.start()
    time.sleep(1.5)
    assert loaded == [] and store.get(job.id).state == "queued"  # nothing loaded while waiting
    store.finish(blocker.id, {})
    worker.join(timeout=30)
    assert loaded == ["running"] and codes == [1]
    done = store.get(job.id)
    assert done.state == "failed" and done.error == "the backbone folder is empty"
    assert "Traceback" not in capsys.readouterr().out  # a user error: its message, no traceback


def test_job_with_a_missing_file_fails_with_the_message(env, tmp_path, capsys):
    store = JobStore(tmp_path / "jobs" / "jobs.sqlite")
    argv = ["train-function-tag", "--name", "NoFile", "--train", str(tmp_path / "gone.csv"), "--input", "smiles",
            "--label", "y", "--job-db", str(store.db_path)]
    job = store.create("train-function-tag", "NoFile", argv)
    assert cli.main([*argv, "--job-id", str(job.id)]) == 1
    done = store.get(job.id)
    assert done.state == "failed" and "File not found" in done.error and "gone.csv" in done.error
    assert "Traceback" not in capsys.readouterr().out


def test_job_with_a_bad_command_line_fails_with_the_message(env, tmp_path, capsys):
    store = JobStore(tmp_path / "jobs" / "jobs.sqlite")
    argv = ["train-function-tag", "--name", "Dash", "--train", "t.csv", "--input", "smiles", "--label", "-logS",
            "--job-db", str(store.db_path)]
    job = store.create("train-function-tag", "Dash", argv)
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, "--job-id", str(job.id)])
    assert exit_.value.code == 2
    done = store.get(job.id)
    assert done.state == "failed" and "--label" in done.error and done.error != jobs_died_message()


def jobs_died_message():
    from tagllm_core.jobs import DIED_MESSAGE

    return DIED_MESSAGE


def test_cli_progress_prints_training_warnings(capsys):
    from tagllm_core.cli import _tqdm_progress
    from tagllm_core.progress import ProgressEvent

    callback = _tqdm_progress("train-function-tag")
    callback(ProgressEvent("stage2", 0, 10, message="warning: Scaffold split not possible: one scaffold group"))
    callback(ProgressEvent("stage2", 10, 10, message="classic baselines on the same rows"))
    err = capsys.readouterr().err
    assert "warning: Scaffold split not possible" in err
    assert "classic baselines" not in err

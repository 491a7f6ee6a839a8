"""Many function tags in one run (issue 10 item 4): one table, a column per tag, one CSV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tagllm_core import cli
from tagllm_core.exceptions import InputError
from tagllm_core.multi import column_label, predict_many, same_inputs_problem
from tagllm_core.prediction import Predictor, results_frame

from conftest import make_char_tokenizer, make_function_tag, make_tiny_model

SOL_TEMPLATE = ("Input: The SMILES of the molecule is {smiles:<SMILES>}. "
                "Output: The aqueous solubility (log mol/L) is <{name}>")
ROWS = [{"smiles": "CCO"}, {"smiles": "C1CC(C"}, {"smiles": "c1ccccc1O"}]


@pytest.fixture
def two_tags(llama):
    sol = make_function_tag(llama, "Solubility", template=SOL_TEMPLATE,
                            interval={"level": 0.9, "halfwidth": [0.5]}, seed=1)
    tox = make_function_tag(llama, "Toxicity", seed=2)
    return sol, tox


def test_column_label_takes_units_from_the_template(two_tags):
    sol, tox = two_tags
    assert column_label(sol.card) == "Solubility (log mol/L)"
    assert column_label(tox.card) == "Toxicity"  # no units in its wording: the tag's name


def test_column_label_reads_units_from_the_task_phrase_of_the_default_template(llama):
    from tagllm_core.templates import default_template

    text = default_template([("smiles", "smiles", "SMILES")], "Sol", "aqueous solubility (log10 mol/L)")
    assert column_label(make_function_tag(llama, "Sol", template=text).card) == "Sol (log10 mol/L)"
    # units in the input wording are not the output's units
    odd = "Input: The SMILES (canonical) of the molecule is {smiles:<SMILES>}. Output: <Sol>"
    assert column_label(make_function_tag(llama, "Sol", template=odd).card) == "Sol"


def test_two_tags_give_one_table_with_a_column_per_tag(llama, two_tags):
    sol, tox = two_tags
    frame = predict_many(llama, [sol, tox], ROWS)
    assert len(frame) == 3 and frame["row"].tolist() == [1, 2, 3]
    cols = list(frame.columns)
    # each tag's applicability domain follows its prediction (its own training inputs)
    assert cols.index("Toxicity domain") == cols.index("Toxicity similarity") + 1 == cols.index("Toxicity") + 2
    assert frame["Toxicity domain"].tolist() == ["unknown", "", "unknown"]  # a test tag stores no fingerprints
    # the percentiles come after the error, per tag in the tags' order
    assert cols[cols.index("error") + 1: cols.index("error") + 5] == [
        "Solubility (log mol/L) label_percentile", "Solubility (log mol/L) reference_percentile",
        "Toxicity label_percentile", "Toxicity reference_percentile"]
    cols = [c for c in cols if not c.endswith((" similarity", " domain", "_percentile"))]
    assert cols[:6] == ["row", "Solubility (log mol/L)", "Solubility (log mol/L) lower",
                        "Solubility (log mol/L) upper", "Toxicity", "flags"]
    assert cols.index("error") < cols.index("smiles")  # results first, then the inputs
    for tag, col in ((sol, "Solubility (log mol/L)"), (tox, "Toxicity")):
        alone = Predictor(llama, tag).predict(ROWS)
        got = frame[col].to_numpy(float)
        np.testing.assert_allclose(got[[0, 2]], [alone[0].prediction, alone[2].prediction], rtol=1e-5)
        assert np.isnan(got[1])
    assert frame.loc[0, "Solubility (log mol/L) upper"] == pytest.approx(frame.loc[0, "Solubility (log mol/L)"] + 0.5)
    # the bad row's input error is the same for every tag: it is reported once, as a single tag reports it
    single = Predictor(llama, sol).predict(ROWS)[1].error
    assert frame.loc[1, "error"] == single and frame.loc[1, "error"].count("invalid SMILES") == 1
    assert frame.loc[0, "error"] == "" and frame.loc[2, "error"] == ""


def test_flags_shared_by_every_tag_appear_once(llama, two_tags):
    frame = predict_many(llama, list(two_tags), [{"smiles": "O"}, {"smiles": "CCN.Cl"}])
    assert frame.loc[0, "flags"].count("inorganic: no carbon atom") == 1
    assert frame.loc[1, "changes"] == "salt stripped: HCl"
    assert frame["standardised"].tolist() == ["O", "CCN"]


def test_error_rows_are_blank_cells_in_the_csv(llama, two_tags, tmp_path):
    frame = predict_many(llama, list(two_tags), ROWS)
    frame.to_csv(tmp_path / "out.csv", index=False)
    text = (tmp_path / "out.csv").read_text()
    assert "None" not in text and "nan" not in text.lower()
    back = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert back.loc[1, "Toxicity"] == "" and back.loc[1, "Solubility (log mol/L) lower"] == ""


def test_slots_are_matched_by_kind_not_by_name(llama, two_tags):
    sol, _ = two_tags
    drug = make_function_tag(llama, "Drug", slots=(("drug", "smiles", "SMILES"),), seed=3)
    frame = predict_many(llama, [sol, drug], ROWS)
    alone = Predictor(llama, drug).predict([{"drug": r["smiles"]} for r in ROWS])
    assert frame.loc[0, "Drug"] == pytest.approx(alone[0].prediction, rel=1e-5)
    assert frame.loc[1, "error"].count("invalid SMILES") == 1  # "drug" and "smiles" say the same thing


def test_classification_tags_give_the_class_and_its_probabilities(llama, two_tags):
    sol, _ = two_tags
    bbb = make_function_tag(llama, "BBB", task="classification", n_outputs=2, classes=["no", "yes"], seed=4)
    frame = predict_many(llama, [sol, bbb], ROWS)
    assert {"BBB", "BBB p(no)", "BBB p(yes)"} <= set(frame.columns)
    assert frame.loc[0, "BBB"] in ("no", "yes")
    assert frame.loc[0, "BBB p(no)"] + frame.loc[0, "BBB p(yes)"] == pytest.approx(1.0)


def test_tags_with_other_inputs_are_refused(llama, two_tags):
    sol, _ = two_tags
    aff = make_function_tag(llama, "Affinity", slots=(("sequence", "protein", "Protein"),
                                                      ("smiles", "smiles", "SMILES")))
    problem = same_inputs_problem([sol.card, aff.card])
    assert problem and "<Affinity>" in problem and "<Solubility>" in problem
    with pytest.raises(InputError, match="Affinity"):
        predict_many(llama, [sol, aff], ROWS)
    assert same_inputs_problem(list(t.card for t in two_tags)) is None


def test_names_and_ids_in_the_rows_are_kept_in_their_own_column(llama, two_tags):
    rows = [{"smiles": "CCO", "name": "ethanol"}, {"smiles": "c1ccccc1O", "name": "phenol"}]
    frame = predict_many(llama, list(two_tags), rows)
    assert list(frame.columns[:2]) == ["row", "name"] and frame["name"].tolist() == ["ethanol", "phenol"]
    single = results_frame(Predictor(llama, two_tags[0]).predict(rows))
    assert list(single.columns[:3]) == ["row", "name", "prediction"]


def test_results_frame_puts_prediction_interval_flags_and_error_first(llama, two_tags):
    sol, _ = two_tags
    frame = results_frame(Predictor(llama, sol).predict(ROWS))
    assert list(frame.columns[:10]) == ["row", "prediction", "lower", "upper", "similarity", "domain", "flags",
                                        "error", "label_percentile", "reference_percentile"]
    assert list(frame.columns).index("smiles") > list(frame.columns).index("error")


# --- CLI ---------------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path, tagllm_home, monkeypatch):
    folder = tmp_path / "tiny-llama"
    make_tiny_model("llama").save_pretrained(folder)
    make_char_tokenizer(add_bos=True).save_pretrained(folder)
    monkeypatch.setenv("TAGLLM_BACKBONE", str(folder))
    from tagllm_core.backbone import get_backbone
    from tagllm_core.tags import TagLibrary

    bb = get_backbone(str(folder))
    lib = TagLibrary(bb.fingerprint)
    lib.save(make_function_tag(bb, "Solubility", template=SOL_TEMPLATE.replace(":<SMILES>", ""),
                               slots=(("smiles", "smiles", None),), interval={"level": 0.9, "halfwidth": [0.5]},
                               seed=1))
    lib.save(make_function_tag(bb, "Toxicity", slots=(("smiles", "smiles", None),), seed=2))
    lib.save(make_function_tag(bb, "Stability", slots=(("sequence", "protein", None),), seed=3))
    return bb, lib


@pytest.mark.parametrize("tag_args", [["--tag", "Solubility", "--tag", "Toxicity"], ["--tags", "Solubility,Toxicity"]])
def test_cli_predict_with_two_tags_writes_one_csv(cli_env, capsys, tmp_path, tag_args):
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"id": ["a", "b", "c"], "smiles": ["CCO", "C1CC(C", "c1ccccc1O"]}).to_csv(src, index=False)
    code = cli.main(["predict", *tag_args, "--input", str(src), "--output", str(out), "--quiet"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert "wrote 3 rows" in stdout and "2 predicted, 1 with errors" in stdout
    df = pd.read_csv(out, keep_default_na=False)
    assert df["id"].tolist() == ["a", "b", "c"]
    assert {"Solubility (log mol/L)", "Solubility (log mol/L) lower", "Toxicity", "error"} <= set(df.columns)
    assert df.loc[1, "Toxicity"] == "" and "invalid SMILES" in df.loc[1, "error"]
    assert df.loc[0, "Toxicity"] != "" and df.loc[2, "Solubility (log mol/L)"] != ""


def test_cli_predict_refuses_tags_with_other_inputs(cli_env, capsys, tmp_path):
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"smiles": ["CCO"]}).to_csv(src, index=False)
    code = cli.main(["predict", "--tags", "Solubility,Stability", "--input", str(src), "--output", str(out)])
    _, stderr = capsys.readouterr()
    assert code == 2 and "Stability" in stderr and not out.exists()


def test_two_input_tags_are_matched_by_kind_whatever_their_slot_order(llama):
    aff = make_function_tag(llama, "Affinity", slots=(("sequence", "protein", "Protein"),
                                                      ("smiles", "smiles", "SMILES")), seed=5)
    kd = make_function_tag(llama, "Kd", slots=(("drug", "smiles", "SMILES"), ("target", "protein", "Protein")),
                           seed=6)
    rows = [{"sequence": "MKTAYIAKQR", "smiles": "CCO"}, {"sequence": "MKTAYIAKQR", "smiles": "bad("}]
    frame = predict_many(llama, [aff, kd], rows)
    alone = Predictor(llama, kd).predict([{"drug": "CCO", "target": "MKTAYIAKQR"}])
    assert frame.loc[0, "Kd"] == pytest.approx(alone[0].prediction, rel=1e-5)
    assert frame.loc[1, "error"].count("invalid SMILES") == 1 and frame.loc[1, "error"].startswith("row 2, smiles:")

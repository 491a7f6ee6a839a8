"""Streaming prediction of big files (issue 10 item 5): CSV, ``.smi`` and SDF read in chunks, output
appended chunk by chunk, resumed after a stop or a kill without a row twice or missing, SDF written
with the predictions as properties.

Tiny random backbones only (conftest); the CLI runs in-process through ``cli.main`` except the one
test that kills a real ``python -m tagllm_core predict`` process.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from tagllm_core import cli, streaming
from tagllm_core.multi import predict_many_table
from tagllm_core.prediction import Predictor, predict_table
from tagllm_core.tags import TagLibrary

from conftest import REPO, make_function_tag

SMILES = ["CCO", "c1ccccc1", "CC(=O)O", "CCCCN", "OCCO", "CCCCCCO", "c1ccccc1CC", "CCOC(=O)C", "CN", "CCCl"]
BAD = "C1CC(C"


def _numeric(frame: pd.DataFrame) -> list:
    return [c for c in frame.columns if c in ("prediction", "lower", "upper", "similarity")]


def assert_same_table(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal tables: every text cell exactly, the numbers to float rounding (batches differ by chunk)."""
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    for c in a.columns:
        if c in _numeric(a):
            np.testing.assert_allclose(pd.to_numeric(a[c], errors="coerce").to_numpy(float),
                                       pd.to_numeric(b[c], errors="coerce").to_numpy(float), rtol=1e-4, atol=1e-5)
        else:
            assert a[c].astype(str).tolist() == b[c].astype(str).tolist(), c


def read_csv(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture
def lib(llama, library_factory) -> TagLibrary:
    lib = library_factory(llama)
    lib.save(make_function_tag(llama, name="LogS", slots=(("smiles", "smiles", None),),
                               interval={"level": 0.9, "halfwidth": [1.5]}))
    lib.save(make_function_tag(llama, name="Other", slots=(("drug", "smiles", None),), seed=3))
    return lib


def table(n: int, bad_every: int = 7) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"m{i}" for i in range(n)],
                         "smiles": [BAD if i % bad_every == 3 else SMILES[i % len(SMILES)] for i in range(n)],
                         "note": ["x, with a comma" if i % 5 == 0 else "" for i in range(n)]})


def run(llama, lib, src, out, tags=("LogS",), **kw) -> streaming.StreamResult:
    return streaming.predict_file(llama, [lib.get(t) for t in tags], lib, src, out, **kw)


# --- chunks equal one shot -----------------------------------------------------------------------------


def test_chunked_csv_equals_one_shot(llama, lib, tmp_path):
    src = tmp_path / "in.csv"
    df = table(25)
    df.to_csv(src, index=False)
    one, chunked = tmp_path / "one.csv", tmp_path / "chunked.csv"
    res = run(llama, lib, src, one, chunk_rows=10_000)
    assert (res.rows, res.errors) == (25, 4)
    run(llama, lib, src, chunked, chunk_rows=4)
    a, b = read_csv(one), read_csv(chunked)
    assert_same_table(a, b)
    # rows keep their input numbers across chunks, the error messages too
    assert b["row"].tolist() == [str(i) for i in range(1, 26)]
    assert b["id"].tolist() == df["id"].tolist() and b["note"].tolist() == df["note"].fillna("").tolist()
    assert b.loc[23, "error"] == "" and b.loc[17, "error"].startswith("row 18, smiles:")
    assert b.loc[24, "error"].startswith("row 25, smiles:")
    # and the same table as the in-memory predict_table (which has no row column)
    whole = predict_table(Predictor(llama, lib.get("LogS"), lib), df).astype(object).fillna("")
    assert_same_table(b.drop(columns=["row"]), whole.astype(str).replace("nan", ""))


def test_chunked_several_tags_equals_one_shot(llama, lib, tmp_path):
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    df = table(12)
    df.to_csv(src, index=False)
    run(llama, lib, src, out, tags=("LogS", "Other"), chunk_rows=5)
    got = read_csv(out)
    raw = predict_many_table(llama, ["LogS", "Other"], df, library=lib)
    whole = raw.astype(object).fillna("")
    assert got["row"].tolist() == [str(i) for i in range(1, 13)]
    assert list(got.columns[1:]) == list(whole.columns)
    for c in whole.columns:
        if pd.api.types.is_float_dtype(raw[c]) or c in ("LogS", "Other"):
            np.testing.assert_allclose(pd.to_numeric(got[c]).to_numpy(float),
                                       pd.to_numeric(raw[c]).to_numpy(float), rtol=1e-4)
        else:
            assert got[c].tolist() == whole[c].astype(str).replace("nan", "").tolist(), c
    assert got.loc[10, "error"].startswith("row 11")


# --- resume --------------------------------------------------------------------------------------------


def test_resume_after_a_stop_gives_the_uninterrupted_file(llama, lib, tmp_path, monkeypatch):
    src, whole, cut = tmp_path / "in.csv", tmp_path / "whole.csv", tmp_path / "cut.csv"
    table(23).to_csv(src, index=False)
    run(llama, lib, src, whole, chunk_rows=5)
    first = run(llama, lib, src, cut, chunk_rows=5, max_chunks=2)  # stops as a kill after two chunks would
    assert first.rows == 10 and len(read_csv(cut)) == 10
    # a kill in the middle of a write leaves a half row at the end: it is dropped, never kept
    with open(cut, "a", encoding="utf-8") as fh:
        fh.write('11,m10,"CC')
    seen = []
    real = Predictor.predict
    monkeypatch.setattr(Predictor, "predict",
                        lambda self, rows, *a, **k: seen.extend(rows) or real(self, rows, *a, **k))
    second = run(llama, lib, src, cut, chunk_rows=5, resume=True)
    assert second.skipped == 10 and second.rows == 13 and len(seen) == 13  # finished rows are not redone
    assert cut.read_bytes() == whole.read_bytes()
    # resuming a finished file does nothing
    third = run(llama, lib, src, cut, chunk_rows=5, resume=True)
    assert third.skipped == 23 and third.rows == 0 and cut.read_bytes() == whole.read_bytes()


def test_without_resume_the_output_is_rewritten(llama, lib, tmp_path):
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    table(6).to_csv(src, index=False)
    out.write_text("stale\n")
    run(llama, lib, src, out, chunk_rows=4)
    assert len(read_csv(out)) == 6


def test_resume_refuses_an_output_from_another_input(llama, lib, tmp_path):
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    table(9).to_csv(src, index=False)
    run(llama, lib, src, out, chunk_rows=4)
    table(5).to_csv(src, index=False)
    with pytest.raises(streaming.InputError, match="more rows"):
        run(llama, lib, src, out, chunk_rows=4, resume=True)


def test_completed_rows_counts_quoted_newlines_and_drops_a_torn_tail(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text('row,text\n1,"two\nlines"\n2,plain\n3,"torn', encoding="utf-8")
    assert streaming.completed_rows(path) == 2
    assert path.read_text(encoding="utf-8") == 'row,text\n1,"two\nlines"\n2,plain\n'
    sdf = tmp_path / "out.sdf"
    sdf.write_text("\n  x\n\n  0  0  0  0  0  0  0  0  0  0999 V2000\nM  END\n$$$$\n\n  y\n", encoding="utf-8")
    assert streaming.completed_rows(sdf) == 1 and sdf.read_text().endswith("$$$$\n")


# --- .smi and SDF ----------------------------------------------------------------------------------------


def test_smi_input_keeps_names_and_reports_blank_lines(llama, lib, tmp_path):
    src, out = tmp_path / "mols.smi", tmp_path / "out.csv"
    src.write_text("smiles\nCCO ethanol\n\nc1ccccc1 benzene\nC1CC(C broken\n\n", encoding="utf-8")
    assert streaming.count_rows(src) == 4
    run(llama, lib, src, out, chunk_rows=2)
    got = read_csv(out)
    assert got["row"].tolist() == ["1", "2", "3", "4"]
    assert got["name"].tolist() == ["ethanol", "", "benzene", "broken"]
    assert got["error"].astype(bool).tolist() == [False, True, False, True]


def _sdf(records: list) -> str:
    from rdkit import Chem

    buf = io.StringIO()
    w = Chem.SDWriter(buf)
    for smi, name in records:
        if smi is None:
            continue
        mol = Chem.MolFromSmiles(smi)
        mol.SetProp("_Name", name)
        mol.SetProp("source_id", f"src-{name}")
        w.write(mol)
    w.close()
    it = iter(buf.getvalue().split("$$$$\n")[:-1])
    out = []
    for smi, name in records:
        # an unreadable record: an atom of element "Qq", which does not exist
        out.append(next(it) if smi is not None else _bad_record(name))
    return "$$$$\n".join(out) + "$$$$\n"


def _bad_record(name: str) -> str:
    return (f"{name}\n     RDKit          2D\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\n"
            "    0.0000    0.0000    0.0000 C   0  0\n    1.0000    0.0000    0.0000 Qq  0  0\n"
            "  1  2  1  0\nM  END\n")


def test_sdf_in_and_out_round_trip_with_the_predictions_as_properties(llama, lib, tmp_path):
    from rdkit import Chem

    src, out, csv_out = tmp_path / "in.sdf", tmp_path / "out.sdf", tmp_path / "out.csv"
    src.write_text(_sdf([("CCO", "ethanol"), (None, "broken"), ("c1ccccc1O", "phenol"), ("CCN", "ethylamine")]),
                   encoding="utf-8")
    assert streaming.count_rows(src) == 4
    res = run(llama, lib, src, out, chunk_rows=3)
    assert (res.rows, res.errors) == (4, 1)
    mols = list(Chem.ForwardSDMolSupplier(str(out)))
    assert len(mols) == 4 and all(m is not None for m in mols)
    assert [m.GetProp("_Name") for m in mols] == ["ethanol", "broken", "phenol", "ethylamine"]
    assert [m.GetProp("row") for m in mols] == ["1", "2", "3", "4"]
    ok = [m for m in mols if not m.GetProp("error")]
    assert len(ok) == 3 and all(float(m.GetProp("prediction")) == float(m.GetProp("prediction")) for m in ok)
    assert all(m.HasProp("lower") and m.HasProp("upper") and m.HasProp("domain") for m in ok)
    assert ok[0].GetProp("source_id") == "src-ethanol"  # the input's own properties are kept
    assert Chem.MolToSmiles(ok[1]) == "Oc1ccccc1"
    # the unreadable record is a row error, written as an empty molecule that carries the error
    bad = mols[1]
    assert bad.GetNumAtoms() == 0 and "row 2" in bad.GetProp("error") and "unreadable" in bad.GetProp("error")
    assert bad.GetProp("prediction") == ""
    # SDF in, CSV out: the name and the SMILES read from each molecule
    run(llama, lib, src, csv_out, chunk_rows=3)
    got = read_csv(csv_out)
    assert got["name"].tolist() == ["ethanol", "broken", "phenol", "ethylamine"]
    assert got["smiles"].tolist()[0] == "CCO" and got.loc[1, "smiles"] == ""
    assert "unreadable" in got.loc[1, "error"]
    # SDF out resumes like CSV
    cut = tmp_path / "cut.sdf"
    run(llama, lib, src, cut, chunk_rows=3, max_chunks=1)
    assert len(list(Chem.ForwardSDMolSupplier(str(cut)))) == 3
    run(llama, lib, src, cut, chunk_rows=3, resume=True)
    assert cut.read_bytes() == out.read_bytes()


def test_smiles_file_and_sdf_need_a_one_smiles_tag(llama, lib, library_factory, tmp_path):
    two = make_function_tag(llama, name="Pair", slots=(("a", "smiles", None), ("b", "smiles", None)))
    lib.save(two)
    src = tmp_path / "x.smi"
    src.write_text("CCO\n", encoding="utf-8")
    with pytest.raises(streaming.InputError, match="one SMILES"):
        run(llama, lib, src, tmp_path / "o.csv", tags=("Pair",))


# --- the CLI ---------------------------------------------------------------------------------------------


@pytest.fixture
def cli_lib(model_dir, tagllm_home, monkeypatch):
    from tagllm_core.backbone import get_backbone

    monkeypatch.setenv("TAGLLM_BACKBONE", str(model_dir))
    bb = get_backbone(str(model_dir))
    lib = TagLibrary(bb.fingerprint)
    lib.save(make_function_tag(bb, name="LogS", slots=(("smiles", "smiles", None),),
                               interval={"level": 0.9, "halfwidth": [1.5]}))
    env = dict(os.environ, TAGLLM_BACKBONE=str(model_dir), TAGLLM_HOME=str(tagllm_home), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    return bb, lib, env


def test_cli_predicts_ten_thousand_rows_with_three_percent_bad_in_input_order(cli_lib, tmp_path, capsys):
    """Issue 11 must-show: 10,000 rows, 3% of them bad, give 10,000 output rows in input order, each bad row
    with its error."""
    n = 10_000
    bad = {i for i in range(n) if i % 100 in (7, 42, 77)}  # 3%
    src, out = tmp_path / "big.csv", tmp_path / "big_out.csv"
    pd.DataFrame({"id": [f"r{i:05d}" for i in range(n)],
                  "smiles": [BAD if i in bad else SMILES[i % len(SMILES)] for i in range(n)]}).to_csv(src, index=False)
    code = cli.main(["predict", "--tag", "LogS", "--input", str(src), "--output", str(out), "--chunk-rows", "1000",
                     "--quiet"])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr
    assert f"wrote {n:,} rows" in stdout and "300 with errors" in stdout
    got = read_csv(out)
    assert len(got) == n
    assert got["row"].tolist() == [str(i + 1) for i in range(n)]
    assert got["id"].tolist() == [f"r{i:05d}" for i in range(n)]
    has_error = got["error"] != ""
    assert set(np.flatnonzero(has_error.to_numpy())) == bad
    assert all(got.loc[i, "error"].startswith(f"row {i + 1}, smiles: ") for i in sorted(bad))
    assert (got.loc[~has_error, "prediction"] != "").all() and (got.loc[has_error, "prediction"] == "").all()


def test_cli_sdf_output_and_resume_flags(cli_lib, tmp_path, capsys):
    from rdkit import Chem

    src, out = tmp_path / "in.smi", tmp_path / "results.sdf"
    src.write_text("\n".join(f"{s} mol{i}" for i, s in enumerate(SMILES)) + "\n", encoding="utf-8")
    code = cli.main(["predict", "--tag", "LogS", "--input", str(src), "--out", str(out), "--chunk-rows", "3",
                     "--quiet"])
    assert code == 0, capsys.readouterr().err
    mols = list(Chem.ForwardSDMolSupplier(str(out)))
    assert [m.GetProp("_Name") for m in mols] == [f"mol{i}" for i in range(len(SMILES))]
    code = cli.main(["predict", "--tag", "LogS", "--input", str(src), "--out", str(out), "--chunk-rows", "3",
                     "--resume", "--quiet"])
    assert code == 0 and "10 rows already done" in capsys.readouterr().out


def test_cli_killed_midway_resumes_without_a_row_twice_or_missing(cli_lib, tmp_path, capsys):
    """A real ``predict`` process killed (SIGKILL) after some chunks; ``--resume`` finishes the file."""
    n = 3000
    src, out, ref = tmp_path / "in.csv", tmp_path / "out.csv", tmp_path / "ref.csv"
    pd.DataFrame({"id": range(n), "smiles": [SMILES[i % len(SMILES)] if i % 50 else BAD for i in range(n)]}
                 ).to_csv(src, index=False)
    argv = ["predict", "--tag", "LogS", "--input", str(src), "--chunk-rows", "100", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "tagllm_core", *argv, "--output", str(out)], env=cli_lib[2],
                            cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 250:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()!r}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done = len(read_csv(out))
    assert 200 <= done < n
    code = cli.main([*argv, "--output", str(out), "--resume"])
    assert code == 0, capsys.readouterr().err
    code = cli.main([*argv, "--output", str(ref)])
    assert code == 0
    got, want = read_csv(out), read_csv(ref)
    assert got["row"].tolist() == [str(i) for i in range(1, n + 1)]  # none twice, none missing
    assert_same_table(got, want)


def test_predict_job_reports_progress_cancels_and_resumes(cli_lib, tmp_path, capsys, monkeypatch):
    """As a job (``--job-db``): rows of the file as steps with a throughput and an ETA; a cancel stops it
    between rows with only whole chunks written, and the same command run again finishes the table."""
    from tagllm_core import jobs
    from tagllm_core.jobs import JobStore

    n = 1500
    src = tmp_path / "in.csv"
    pd.DataFrame({"smiles": [SMILES[i % len(SMILES)] for i in range(n)]}).to_csv(src, index=False)
    store = JobStore(tmp_path / "jobs.sqlite")
    job = store.create("predict", "LogS", ["predict", "--tag", "LogS", f"--input={src}", "--chunk-rows=100"])
    argv = jobs.job_command(store, job)[3:]  # as the job process gets it: --output in the job's folder, --resume
    real_append = streaming._append
    monkeypatch.setattr(streaming, "_append", lambda path, data: (real_append(path, data),
                                                                  store.request_cancel(job.id)))
    assert cli.main(argv) == 1
    assert store.get(job.id).state == "cancelled"
    out = jobs.prediction_output(store, job.id)
    done = len(read_csv(out))
    assert 100 <= done < n and done % 100 == 0
    events = store.history(job.id)
    assert events[-1]["total_steps"] == n and any(e["eta_s"] and e["throughput"] for e in events)
    monkeypatch.setattr(streaming, "_append", real_append)
    again = store.create("predict", "LogS", job.argv)  # a second job, as a relaunch would run, on the same table
    argv[argv.index("--job-id") + 1] = str(again.id)
    assert cli.main(argv) == 0
    assert store.get(again.id).state == "finished" and store.get(again.id).result["skipped"] == done
    assert read_csv(out)["row"].tolist() == [str(i) for i in range(1, n + 1)]

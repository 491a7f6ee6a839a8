"""Prediction split over two gloo processes (``torchrun``) writes exactly the one-process output.

The processes deal each chunk's batches between them (``sharding``), so every output byte must equal the
plain run's: CSV and SDF, one tag and two, a chunk with no valid row, a file of one row (fewer rows than
processes), a resume after a stop, and a refused resume raised on every process. Runs subprocesses on a
tiny Llama: about a minute on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, make_function_tag

HERE = Path(__file__).resolve().parent
SMILES = ["CCO", "c1ccccc1O", "CC(=O)O", "CCN", "C1CCCCC1", "CCCCCCCCO", "OC(=O)c1ccccc1", "CN", "CCCl", "O=C=O"]
BAD = "C1CC(("  # an invalid SMILES: that row's error, not the file's
OUTPUTS = ("table.csv", "many.csv", "table.sdf", "one.csv", "resumed.csv")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun() -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]


def _env(**extra) -> dict:
    # one thread in every process, plain or sharded: the same arithmetic, batch for batch
    return {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TAGLLM_NO_MALLOC_TUNING": "1", "PYTHONPATH": str(REPO), **extra}


def _run(cmd: list, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    # the timeout turns a process waiting forever for the other into a failure
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _rows(n: int) -> pd.DataFrame:
    # rows 8-14 (the second chunk of 7) all invalid: a chunk with no batch to share
    smiles = [BAD if (i % 9 == 4 or 7 <= i < 14) else SMILES[i % len(SMILES)] for i in range(n)]
    return pd.DataFrame({"id": [f"m{i}" for i in range(n)], "smiles": smiles})


@pytest.fixture
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    _rows(40).to_csv(folder / "rows.csv", index=False)
    (folder / "mols.smi").write_text("".join(f"{s} mol{i}\n" for i, s in enumerate(_rows(17)["smiles"])),
                                     encoding="utf-8")
    _rows(1).to_csv(folder / "one.csv", index=False)
    return folder


def test_two_processes_write_the_one_process_files_byte_for_byte(inputs, tmp_path):
    worker = str(HERE / "_sharded_predict_worker.py")
    outs = {}
    for name, launcher in (("one", []), ("two", _torchrun()[1:])):
        outs[name] = tmp_path / name
        outs[name].mkdir()
        _run([sys.executable, *launcher, worker, str(inputs), str(outs[name])], _env(), tmp_path)
    one = json.loads((outs["one"] / "rank0.json").read_text())
    ranks = [json.loads((outs["two"] / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert (one["rank"], one["world"]) == (0, 1)
    assert [(r["rank"], r["world"]) for r in ranks] == [(0, 2), (1, 2)]  # really two processes
    # the model work is split, not repeated: each process ran some batches, together as many as one process
    assert all(r["batches_run"] > 0 for r in ranks) and sum(r["batches_run"] for r in ranks) == one["batches_run"]
    for name in OUTPUTS:
        want = (outs["one"] / name).read_bytes()
        assert want and (outs["two"] / name).read_bytes() == want, name
    assert not list((outs["two"]).glob("*.tmp"))
    # every process counted the same rows; the errors are the invalid ones, numbered as in the file
    for r in ranks:
        assert r["results"] == one["results"]
    table = one["results"]["table.csv"]
    assert table["total"] == table["rows"] == 40 and table["errors"] == 10
    assert "row 5, smiles:" in table["error_examples"][0]
    assert one["results"]["one.csv"]["rows"] == 1 and one["results"]["resumed.csv"]["skipped"] == 14
    # a resume refused by process 0 is refused on every process (none waits for the others)
    assert one["refused"] and all(r["refused"] == one["refused"] for r in ranks)


def test_torchrun_cli_predict_writes_and_reports_once(model_dir, tagllm_home, tmp_path):
    """``torchrun --nproc_per_node 2 -m tagllm_core predict …``: the plain CLI's file, one report."""
    from tagllm_core.backbone import get_backbone
    from tagllm_core.tags import TagLibrary

    bb = get_backbone(str(model_dir))
    TagLibrary(bb.fingerprint).save(make_function_tag(bb, name="LogS", slots=(("smiles", "smiles", None),),
                                                      interval={"level": 0.9, "halfwidth": [1.5]}))
    src = tmp_path / "in.csv"
    _rows(25).to_csv(src, index=False)
    env = _env(TAGLLM_BACKBONE=str(model_dir), TAGLLM_HOME=str(tagllm_home))
    argv = ["-m", "tagllm_core", "predict", "--tag", "LogS", "--input", str(src), "--chunk-rows", "10",
            "--batch-size", "3", "--quiet"]
    plain = _run([sys.executable, *argv, "--output", str(tmp_path / "plain.csv")], env, tmp_path)
    two = _run([*_torchrun(), *argv, "--output", str(tmp_path / "two.csv")], env, tmp_path)
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()
    assert two.stdout.count("wrote 25 rows") == 1
    assert two.stdout.replace("two.csv", "plain.csv").split(" at ")[0] == plain.stdout.split(" at ")[0]

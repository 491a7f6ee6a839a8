"""The training loop under several processes (``torchrun`` / ``accelerate launch``) on CPU.

Each process takes its share of every batch and the gradients are summed across processes,
so two processes (gloo) must train the same tags as one process, to float rounding: both
the function tag with its head (stages 2-3) and a domain tag (stage 1). Uses batches that do
not split evenly. Runs the worker in subprocesses: ~1 minute on two cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(args: list, out: Path) -> None:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run([sys.executable, *args, str(HERE / "_ddp_worker.py"), str(out)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=HERE.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_processes_train_the_same_tags_as_one(tmp_path):
    _run([], tmp_path / "one")
    _run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())],
         tmp_path / "two")
    one = load_file(str(tmp_path / "one" / "rank0.safetensors"))
    ranks = [load_file(str(tmp_path / "two" / f"rank{r}.safetensors")) for r in (0, 1)]
    assert one["world"].tolist() == [1, 0]
    assert [r["world"].tolist() for r in ranks] == [[2, 0], [2, 1]]  # really two processes
    for key in ("function", "head", "domain"):
        assert not torch.equal(one[key], torch.zeros_like(one[key]))
        torch.testing.assert_close(ranks[0][key], ranks[1][key], rtol=0, atol=0)  # replicas stay identical
        torch.testing.assert_close(ranks[0][key], one[key], rtol=1e-4, atol=1e-6)


def test_cli_under_torchrun_reports_and_saves_once(tmp_path):
    """`torchrun -m tagllm_core train-function-tag ...`: one JSON result, one tag file."""
    import pandas as pd

    sys.path.insert(0, str(HERE))
    from conftest import make_char_tokenizer, make_tiny_model

    model_dir = tmp_path / "tiny-llama"
    make_tiny_model("llama").save_pretrained(model_dir)
    make_char_tokenizer(add_bos=True).save_pretrained(model_dir)
    smiles = [("C" * n) + tail for n in range(1, 11) for tail in ("", "O", "N")]
    pd.DataFrame({"smiles": smiles, "y": [len(s) for s in smiles]}).to_csv(tmp_path / "train.csv", index=False)
    home = tmp_path / "home"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TAGLLM_BACKBONE": str(model_dir), "TAGLLM_HOME": str(home),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(HERE.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "-m", "tagllm_core", "train-function-tag", "--name", "Twice", "--train", str(tmp_path / "train.csv"),
         "--input", "smiles", "--label", "y", "--epochs", "1", "--n-tokens", "2", "--split", "random"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count('"tag": "Twice"') == 1
    files = list(home.rglob("*.tag.safetensors"))
    assert [f.name for f in files] == ["Twice.tag.safetensors"]
    assert not list(home.rglob("*.tmp"))

"""The training loop under several processes (``torchrun`` / ``accelerate launch``) on CPU.

Each process takes its share of every batch and the gradients are summed across processes,
so two processes (gloo) must train the same tags as one process, to float rounding: both
the function tag with its head (stages 2-3) and a domain tag (stage 1, also with gradient
accumulation). Uses batches that do not split evenly. The ranks also stop together: on rank 0's
early-stopping decision and on its cancel flag. Runs the worker in subprocesses: ~2 minutes on
two cores.
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


def _run(args: list, out: Path, mode: str = "train", timeout: float = 300) -> None:
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    # the timeout turns a rank waiting forever for the other into a failure
    proc = subprocess.run([sys.executable, *args, str(HERE / "_ddp_worker.py"), str(out), mode], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _two(out: Path, mode: str = "train", timeout: float = 300) -> list:
    _run(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())], out, mode,
         timeout)
    return [load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1)]


def test_two_processes_train_the_same_tags_as_one(tmp_path):
    _run([], tmp_path / "one")
    ranks = _two(tmp_path / "two")
    one = load_file(str(tmp_path / "one" / "rank0.safetensors"))
    assert one["world"].tolist() == [1, 0]
    assert [r["world"].tolist() for r in ranks] == [[2, 0], [2, 1]]  # really two processes
    # domain_accum*: stage 1 with gradient accumulation 2 and 3 (the gradients are summed across
    # processes once per optimizer step, not on every micro-step)
    for key in ("function", "head", "domain", "domain_accum2", "domain_accum3"):
        assert not torch.equal(one[key], torch.zeros_like(one[key]))
        torch.testing.assert_close(ranks[0][key], ranks[1][key], rtol=0, atol=0)  # replicas stay identical
        torch.testing.assert_close(ranks[0][key], one[key], rtol=1e-4, atol=1e-6)


def test_ranks_stop_on_rank_zeros_early_stopping_decision(tmp_path):
    """Rank 1's validation gets worse every epoch (patience 1: it alone would stop after epoch 1);
    rank 0's decides for both, so neither waits for the other and the replicas stay identical."""
    ranks = _two(tmp_path / "two", "stop", timeout=240)
    assert ranks[0]["epochs_run"].item() == ranks[1]["epochs_run"].item() >= 2
    torch.testing.assert_close(ranks[0]["function"], ranks[1]["function"], rtol=0, atol=0)


def test_a_cancel_on_rank_zero_stops_every_rank(tmp_path):
    """Only rank 0 reports progress, so only it sees the cancel; every rank must raise JobCancelled
    (stage 2, then stage 1) instead of waiting for the other in the next all-reduce."""
    ranks = _two(tmp_path / "two", "cancel", timeout=240)
    for r in ranks:
        assert r["function"].item() == 1 and r["domain"].item() == 1


def test_cli_under_torchrun_reports_and_saves_once(tmp_path):
    """`torchrun -m tagllm_core train-function-tag ... --reference-rows 6`: one JSON result, one tag file
    with its reference distribution (every rank must join the reference step's cancel check, a broadcast
    from rank 0; a rank left waiting for it would hang, and the timeout below turns that into a failure)."""
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
         "--input", "smiles", "--label", "y", "--epochs", "1", "--n-tokens", "2", "--split", "random",
         "--reference-rows", "6"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count('"tag": "Twice"') == 1
    files = list(home.rglob("*.tag.safetensors"))
    assert [f.name for f in files] == ["Twice.tag.safetensors"]
    assert not list(home.rglob("*.tmp"))
    reference = load_file(str(files[0]))["reference.predictions"]
    assert reference.shape[0] == 6 and torch.isfinite(reference).all()


def test_a_cli_command_closes_its_process_group_when_its_work_is_done(tmp_path, capsys):
    """Under torchrun the CLI leaves through a barrier and closes the process group (a rank exiting while
    another still worked aborted in gloo's teardown). One process, in-process: the group is closed."""
    import argparse

    import torch.distributed as dist

    from tagllm_core import cli

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        args = argparse.Namespace(job_db=None, job_id=None, command="train-function-tag")
        assert cli._run_maybe_as_job(args, lambda progress: {"tag": "Done"}) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    assert '"tag": "Done"' in capsys.readouterr().out

"""Trains one function tag and domain tags on a tiny Llama; run once plainly and once under
``torchrun --nproc_per_node 2`` by tests/test_distributed.py, which compares the two results.

Usage: python tests/_ddp_worker.py OUT_FOLDER [MODE]

MODE ``train`` (the default): a function tag, and domain tags with gradient accumulation 1, 2 and 3.
MODE ``stop``: rank 1's validation says every epoch is worse (its own decision would stop training
after one epoch); the ranks must still stop together, on rank 0's decision.
MODE ``cancel``: rank 0's progress callback cancels the job in stage 2 and in stage 1; every rank
must raise ``JobCancelled`` instead of waiting for the others.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
os.environ.setdefault("TAGLLM_NO_MALLOC_TUNING", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from tagllm_core import train_fit as training  # noqa: E402  (the epoch loop's _evaluate)
from tagllm_core.distributed import leave_together  # noqa: E402
from tagllm_core.exceptions import JobCancelled  # noqa: E402
from tagllm_core.tags import SlotSpec  # noqa: E402
from tagllm_core.training import DomainTagConfig, FunctionTagConfig, train_domain_tag, train_function_tag  # noqa: E402

from conftest import make_tiny_backbone  # noqa: E402

SMILES = [("C" * n) + tail for n in range(1, 13) for tail in ("", "O", "N", "C(=O)O")]


def _function_cfg(**kw) -> FunctionTagConfig:
    # batch 7 over 2 processes: unequal shares (4 + 3), and a last batch of 6
    base = dict(name="Dist", slots=[SlotSpec("smiles", "smiles", None)], labels=["y"], split="random",
                n_tokens=3, epochs=2, batch_size=7, tag_lr=1e-2, head_lr=1e-2, patience=5,
                ridge_warm_start=False)
    return FunctionTagConfig(**{**base, **kw})


def _train(bb, df) -> dict:
    res = train_function_tag(bb, None, _function_cfg(), df, save=False)
    out = {"function": res.tag.vectors, "head": res.tag.head_state["weight"]}
    # 44 training sequences in buckets of 5 (the last of 4): shares of 3 + 2 and 2 + 2; with accumulation
    # 3 over 9 steps every bucket is used once.
    for key, accum, steps in (("domain", 1, 4), ("domain_accum2", 2, 4), ("domain_accum3", 3, 9)):
        dom = train_domain_tag(bb, None, DomainTagConfig("Dom", "smiles", n_tokens=2, steps=steps, batch_size=5,
                                                         lr=1e-2, grad_accum=accum), SMILES, save=False)
        out[key] = dom.tag.vectors
    return out


def _stop(bb, df, rank: int) -> dict:
    if rank == 1:  # this rank's validation gets worse every time it is asked
        real, calls = training._evaluate, [0]

        def worse(task, out, y, scaler, labels=None):
            metrics, pred = real(task, out, y, scaler, labels)
            calls[0] += 1
            return {**metrics, "rmse": 1e6 * calls[0]}, pred

        training._evaluate = worse
    # a fixed read-out layer: the layer choice reads validation too, and is not what this tests
    res = train_function_tag(bb, None, _function_cfg(epochs=3, patience=1, layers="final"), df, save=False)
    return {"function": res.tag.vectors, "epochs_run": torch.tensor([res.tag.card.training["epochs_run"]])}


def _cancel(bb, df) -> dict:
    flags = {}

    def cancel_after(n):
        calls = [0]

        def callback(ev):
            calls[0] += 1
            if calls[0] > n:
                raise JobCancelled("the job was cancelled")
        return callback

    try:
        train_function_tag(bb, None, _function_cfg(), df, save=False, progress=cancel_after(12))
        flags["function"] = 0
    except JobCancelled:
        flags["function"] = 1
    try:
        train_domain_tag(bb, None, DomainTagConfig("Dom", "smiles", n_tokens=2, steps=6, batch_size=5, lr=1e-2),
                         SMILES, progress=cancel_after(2), save=False)
        flags["domain"] = 0
    except JobCancelled:
        flags["domain"] = 1
    return {k: torch.tensor([v]) for k, v in flags.items()}


def main(out: Path, mode: str) -> None:
    torch.set_num_threads(1)
    bb = make_tiny_backbone("llama")
    df = pd.DataFrame({"smiles": SMILES, "y": [len(s) for s in SMILES]})
    tensors = {"train": lambda: _train(bb, df), "stop": lambda: _stop(bb, df, int(os.environ.get("RANK", "0"))),
               "cancel": lambda: _cancel(bb, df)}[mode]()
    from accelerate import PartialState

    state = PartialState()  # what the training loop saw: the process group it split batches over
    rank = state.process_index
    tensors["world"] = torch.tensor([state.num_processes, rank])
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"rank{rank}.safetensors"))
    leave_together()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "train")

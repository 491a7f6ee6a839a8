"""Trains one function tag and one domain tag on a tiny Llama; run once plainly and once under
``torchrun --nproc_per_node 2`` by tests/test_distributed.py, which compares the two results.

Usage: python tests/_ddp_worker.py OUT_FOLDER
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

from conftest import make_tiny_backbone  # noqa: E402
from tagllm_core.tags import SlotSpec  # noqa: E402
from tagllm_core.training import DomainTagConfig, FunctionTagConfig, train_domain_tag, train_function_tag  # noqa: E402


def main(out: Path) -> None:
    torch.set_num_threads(1)
    bb = make_tiny_backbone("llama")
    smiles = [("C" * n) + tail for n in range(1, 13) for tail in ("", "O", "N", "C(=O)O")]
    df = pd.DataFrame({"smiles": smiles, "y": [len(s) for s in smiles]})
    # batch 7 over 2 processes: unequal shares (4 + 3), and a last batch of 6
    cfg = FunctionTagConfig(name="Dist", slots=[SlotSpec("smiles", "smiles", None)], labels=["y"], split="random",
                            n_tokens=3, epochs=2, batch_size=7, tag_lr=1e-2, head_lr=1e-2, patience=5,
                            ridge_warm_start=False)
    res = train_function_tag(bb, None, cfg, df, save=False)
    dom = train_domain_tag(bb, None, DomainTagConfig("Dom", "smiles", n_tokens=2, steps=4, batch_size=5, lr=1e-2),
                           smiles, save=False)
    from accelerate import PartialState

    state = PartialState()  # what the training loop saw: the process group it split batches over
    rank = state.process_index
    save_file({"world": torch.tensor([state.num_processes, rank]),"function": res.tag.vectors.contiguous(), "head": res.tag.head_state["weight"].contiguous(),
               "domain": dom.tag.vectors.contiguous()}, str(out / f"rank{rank}.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

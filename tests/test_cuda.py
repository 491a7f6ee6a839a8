"""The CUDA path on tiny backbones: skipped without a GPU (run it where one is lent:
``pytest tests/test_cuda.py``; ``bench/gpu_check.py`` measures the default architecture)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tagllm_core.data import random_split
from tagllm_core.prediction import Predictor
from tagllm_core.tags import SlotSpec
from tagllm_core.training import DomainTagConfig, FunctionTagConfig, train_domain_tag, train_function_tag

from conftest import make_tiny_backbone  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SMILES = ["C" * i + "O" for i in range(1, 21)] + ["C" * i + "N" for i in range(1, 21)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_training_and_prediction_stay_on_the_gpu(library_factory, dtype):
    bb = make_tiny_backbone("llama", dtype=dtype, device="cuda")
    assert bb.device.type == "cuda"
    lib = library_factory(bb)
    df = pd.DataFrame({"smiles": SMILES, "y": [float(len(s)) for s in SMILES]})
    cfg = FunctionTagConfig(name="Len", slots=[SlotSpec("smiles", "smiles", None)], labels=["y"], split="random",
                            n_tokens=4, epochs=2, valid_fraction=0.25)
    res = train_function_tag(bb, lib, cfg, df)
    assert res.tag.vectors.device.type == "cpu"  # files hold CPU tensors
    loaded = lib.get("Len")
    preds = Predictor(bb, loaded, lib).predict([{"smiles": s} for s in SMILES])
    assert all(p.ok for p in preds)
    # the full pass at prediction reproduces the cached pass of validation (bf16 rounds more)
    _, va_idx = random_split(len(df), 0.25, 0)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    np.testing.assert_allclose([preds[i].prediction for i in va_idx], res.valid_pred, rtol=tol, atol=tol)
    dom = train_domain_tag(bb, lib, DomainTagConfig("SMILES", "smiles", steps=10, batch_size=8, n_tokens=2), SMILES,
                           save=False)
    assert dom.perplexity["trained"] < dom.perplexity["random_tag"]

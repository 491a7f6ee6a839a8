"""Read-out depth (``tagllm_core.stack``): running the decoder only as deep as the read-out needs.

* ``run_stack`` at layer ``l`` is the RMS-normalised (no gain) output of the
  ``l``-th decoder block, checked against Hugging Face's own
  ``output_hidden_states`` on padded batches of the tiny Llama, GPT-2 and
  Qwen2 backbones (2 layers, from conftest) and of 3-layer variants of them
  (so that a read-out can stop *below* the last block and still read several
  layers). Several layers are concatenated in the order given; ``None`` is the
  final, normed ``last_hidden_state``.
* Blocks above the deepest layer never run, and no hook is left on any block,
  also when the forward pass fails.
* ``check_layers`` refuses what is not a layer.
* The cached training path (``prefix_cache``) stays exact with a truncated
  stack: loss and gradients w.r.t. the function tag equal those of the full
  pass, with per-row and shared (grouped) prefixes; the prediction helpers
  (``grouped_features``, ``features_after_shared_prefix``) equal
  ``TaggedModel.features``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tagllm_core import stack
from tagllm_core.backbone import Backbone, wrap_model
from tagllm_core.exceptions import BackboneError
from tagllm_core.heads import HeadConfig, TaskHead
from tagllm_core.model import READOUTS, TaggedModel, readout_dim, readout_hidden
from tagllm_core.prefix_cache import (
    PrefixCache,
    common_prefix_length,
    compute_prefix_states,
    features_after_shared_prefix,
    grouped_features,
    shared_prefix,
    suffix_features,
)
from tagllm_core.stack import check_layers, run_stack
from tagllm_core.tags import init_tag_vectors
from tagllm_core.templates import Template

from conftest import ARCHS, count_block_calls, make_char_tokenizer, make_tiny_backbone, make_tiny_model  # noqa: E402
from test_prefix_cache import FN, TEMPLATES, _loss_and_grads, _pairs, _rel, _rows  # noqa: E402

DEEP_LAYERS = 3


# --- backbones ------------------------------------------------------------------------------------


def make_deep_backbone(arch: str, n_layers: int = DEEP_LAYERS, seed: int = 0) -> Backbone:
    """The conftest tiny model of ``arch`` with ``n_layers`` decoder blocks instead of 2."""
    tiny = make_tiny_model(arch, seed)
    cfg = tiny.config.to_dict()
    cfg["n_layer" if arch == "gpt2" else "num_hidden_layers"] = n_layers
    cfg.pop("layer_types", None)  # Qwen2 derives one entry per layer
    torch.manual_seed(seed)
    model = type(tiny)(type(tiny.config).from_dict(cfg))
    return wrap_model(model, make_char_tokenizer(add_bos=(arch == "llama")), f"deep-{arch}", device="cpu",
                      dtype=torch.float32)


@pytest.fixture(scope="module")
def deep_backbones() -> dict:
    return {arch: make_deep_backbone(arch) for arch in ARCHS}


@pytest.fixture
def backbones(tiny_backbones, deep_backbones):
    """(depth, arch) -> backbone; depth "tiny" (2 layers, conftest) or "deep" (3 layers)."""
    return lambda depth, arch: (tiny_backbones if depth == "tiny" else deep_backbones)[arch]


DEPTHS = ("tiny", "deep")


def _final_norm_name(base: nn.Module) -> str:
    for name in ("norm", "ln_f"):  # Llama / Qwen2, GPT-2
        if isinstance(getattr(base, name, None), nn.Module):
            return name
    raise AssertionError(f"no final norm found on {type(base).__name__}")


def hf_hidden_states(bb: Backbone, embeds, mask, final_norm: bool = True):
    """Hugging Face's ``output_hidden_states`` (and ``last_hidden_state``) for the base model.

    HF's last entry is the state *after* the final norm; with ``final_norm=False`` that norm is
    replaced by the identity, so the last entry is the raw output of the last block. Computed on a
    copy of the model: ``output_hidden_states`` makes transformers install output-capturing hooks
    on the decoder blocks for good, and the backbones under test must keep hook-free blocks.
    """
    base = copy.deepcopy(bb.base)
    if not final_norm:
        setattr(base, _final_norm_name(base), nn.Identity())
    with torch.no_grad():
        out = base(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True, use_cache=False)
    return out.hidden_states, out.last_hidden_state


def rms(h: torch.Tensor) -> torch.Tensor:
    h = h.float()
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)


TEXTS = ["CCO", "c1ccccc1CCCCCCCCC", "N", "CC(=O)Oc1ccccc1C(=O)O"]  # 1 to ~25 tokens: much padding


def padded_batch(bb: Backbone):
    enc = bb.tokenizer(TEXTS, padding=True, return_tensors="pt")
    mask = enc["attention_mask"]
    assert (mask == 0).any() and mask.sum(1).unique().numel() == len(TEXTS)
    return bb.embed_ids(enc["input_ids"]), mask


def assert_no_hooks(bb: Backbone):
    for i, block in enumerate(bb.decoder_layers):
        assert len(block._forward_hooks) == 0, f"block {i} keeps {len(block._forward_hooks)} forward hook(s)"
        assert len(block._forward_pre_hooks) == 0


# --- the blocks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("arch", ARCHS)
def test_backbone_knows_its_decoder_blocks(backbones, arch, depth):
    bb = backbones(depth, arch)
    n = 2 if depth == "tiny" else DEEP_LAYERS
    assert bb.n_layers == n == stack.num_layers(bb.model)
    expected = bb.model.transformer.h if arch == "gpt2" else bb.model.model.layers
    assert bb.decoder_layers is expected
    assert bb.decoder_layers is bb.decoder_layers  # found once
    assert bb.info()["layers"] == n


# --- run_stack against Hugging Face's hidden states -----------------------------------------------


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("arch", ARCHS)
def test_each_layer_equals_rms_of_hf_hidden_state(backbones, arch, depth):
    bb = backbones(depth, arch)
    embeds, mask = padded_batch(bb)
    real = mask.bool()
    hs, _ = hf_hidden_states(bb, embeds, mask)
    hs_raw, _ = hf_hidden_states(bb, embeds, mask, final_norm=False)
    n = bb.n_layers
    assert len(hs) == n + 1
    for layer in range(1, n + 1):
        with torch.no_grad():
            out = run_stack(bb, (layer,), embeds, mask)
        assert out.cache is None
        assert out.hidden.shape == (*mask.shape, bb.hidden_size) and out.hidden.dtype == bb.dtype
        if layer < n:
            # below the last block HF's entry is the block's output itself
            torch.testing.assert_close(hs_raw[layer], hs[layer])
            reference = rms(hs[layer])
        else:
            # HF's last entry is after the final norm; layer n is the last block's own output
            reference = rms(hs_raw[n])
        torch.testing.assert_close(out.hidden[real].float(), reference[real], rtol=1e-4, atol=1e-5)
        # normalised per token without gain: every real token has unit RMS (up to the 1e-6 epsilon,
        # not negligible for the tiny random models' small states)
        torch.testing.assert_close(out.hidden[real].float().pow(2).mean(-1),
                                   torch.ones(int(real.sum())), rtol=1e-2, atol=1e-2)
    assert_no_hooks(bb)


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("arch", ARCHS)
def test_several_layers_concatenate_in_the_order_given(backbones, arch, depth):
    bb = backbones(depth, arch)
    embeds, mask = padded_batch(bb)
    real = mask.bool()
    d = bb.hidden_size
    with torch.no_grad():
        single = {layer: run_stack(bb, (layer,), embeds, mask).hidden for layer in range(1, bb.n_layers + 1)}
        orders = [(2, 1), (1, 2)] + ([(3, 1, 2), (1, 3)] if bb.n_layers >= 3 else [])
        for layers in orders:
            out = run_stack(bb, layers, embeds, mask).hidden
            assert out.shape == (*mask.shape, len(layers) * d)
            for k, layer in enumerate(layers):
                torch.testing.assert_close(out[..., k * d:(k + 1) * d][real], single[layer][real], rtol=1e-5, atol=1e-6)
    assert_no_hooks(bb)


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("arch", ARCHS)
def test_no_layers_is_the_final_normed_state(backbones, arch, depth):
    bb = backbones(depth, arch)
    embeds, mask = padded_batch(bb)
    real = mask.bool()
    hs, last = hf_hidden_states(bb, embeds, mask)
    with torch.no_grad():
        out = run_stack(bb, None, embeds, mask)
        cached = run_stack(bb, None, embeds, mask, use_cache=True)
    assert out.cache is None
    torch.testing.assert_close(out.hidden[real], last[real], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.hidden[real], hs[-1][real], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached.hidden[real], last[real], rtol=1e-5, atol=1e-6)
    assert cached.cache is not None and len(cached.cache.layers) == bb.n_layers


# --- stopping early, and the hooks ----------------------------------------------------------------


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("arch", ARCHS)
def test_blocks_above_the_deepest_layer_never_run(backbones, arch, depth):
    bb = backbones(depth, arch)
    n = bb.n_layers
    embeds, mask = padded_batch(bb)
    cases = [(layer,) for layer in range(1, n + 1)] + [(2, 1), (1, 2), None]
    if n >= 3:
        cases += [(3, 1), (1, 3, 2)]
    for layers in cases:
        deepest = n if layers is None else max(layers)
        for use_cache in (False, True):
            with count_block_calls(bb) as counts, torch.no_grad():
                out = run_stack(bb, layers, embeds, mask, use_cache=use_cache)
            assert counts == [1] * deepest + [0] * (n - deepest), (layers, use_cache, counts)
            assert_no_hooks(bb)
            if use_cache:
                # the cache holds states of the blocks that ran, and only of those
                assert len(out.cache.layers) == deepest
                for layer in out.cache.layers:
                    assert layer.keys.shape[0] == mask.shape[0] and layer.keys.shape[-2] == mask.shape[1]


def test_run_stack_with_gradients_stops_early_too(tiny_backbones):
    bb = tiny_backbones["qwen2"]
    embeds, mask = padded_batch(bb)
    embeds = embeds.detach().clone().requires_grad_(True)
    with count_block_calls(bb) as counts:
        out = run_stack(bb, (1,), embeds, mask)
        out.hidden[mask.bool()].sum().backward()
    assert counts == [1, 0]
    assert embeds.grad is not None and float(embeds.grad.abs().sum()) > 0
    assert_no_hooks(bb)


@pytest.mark.parametrize("arch", ARCHS)
def test_hooks_are_removed_when_the_forward_fails(deep_backbones, arch):
    bb = deep_backbones[arch]
    embeds, mask = padded_batch(bb)

    # 1. inputs the model cannot take (embeddings of the wrong width): its own error comes through
    bad = torch.zeros(embeds.shape[0], embeds.shape[1], bb.hidden_size + 3)
    with pytest.raises(Exception) as err:
        run_stack(bb, (2, 1), bad, mask)
    assert not isinstance(err.value, stack._Stop)
    assert_no_hooks(bb)

    # 2. a block failing in the middle of the stack, after run_stack's hooks are in place
    class Boom(RuntimeError):
        pass

    def explode(module, args, output):
        raise Boom("block 1 failed")

    handle = bb.decoder_layers[0].register_forward_hook(explode)
    try:
        with pytest.raises(Boom):
            run_stack(bb, (3, 1), embeds, mask, use_cache=True)
    finally:
        handle.remove()
    assert_no_hooks(bb)

    # 3. the deepest block itself failing before its hook could stop the pass
    handle = bb.decoder_layers[1].register_forward_pre_hook(lambda m, a: (_ for _ in ()).throw(Boom("pre")))
    try:
        with pytest.raises(Boom):
            run_stack(bb, (2,), embeds, mask)
    finally:
        handle.remove()
    assert_no_hooks(bb)

    # and the backbone works as before: the full depth runs again, the truncated one stops again
    with torch.no_grad(), count_block_calls(bb) as counts:
        again = run_stack(bb, (1,), embeds, mask).hidden
        run_stack(bb, None, embeds, mask)
    assert counts == [2, 1, 1]
    hs, _ = hf_hidden_states(bb, embeds, mask)
    torch.testing.assert_close(again[mask.bool()], rms(hs[1])[mask.bool()], rtol=1e-4, atol=1e-5)


# --- check_layers ---------------------------------------------------------------------------------


def test_check_layers_accepts_layers_and_none():
    assert check_layers(None, 3) is None
    assert check_layers([2, 1], 3) == (2, 1)
    assert check_layers((3,), 3) == (3,)
    assert check_layers(range(1, 4), 3) == (1, 2, 3)


@pytest.mark.parametrize("layers, message", [
    ((0,), r"outside 1\.\.3"),
    ((4,), r"outside 1\.\.3"),
    ((1, 5), r"\[5\] outside 1\.\.3"),
    ((-1,), r"outside 1\.\.3"),
    ((1, 1), "repeat"),
    ((2, 1, 2), "repeat"),
    ((), "at least one"),
    ([], "at least one"),
])
def test_check_layers_refuses_what_is_not_a_layer(layers, message):
    with pytest.raises(BackboneError, match=message):
        check_layers(layers, 3)


def test_run_stack_checks_its_layers_itself(llama):
    embeds = llama.embed_ids(torch.tensor([[5, 6, 7]]))
    mask = torch.ones((1, 3), dtype=torch.long)
    for bad in ((0,), (llama.n_layers + 1,)):
        with pytest.raises(BackboneError, match="outside"):
            run_stack(llama, bad, embeds, mask)


def test_tagged_model_validates_its_layers(llama):
    text, slot_kinds = TEMPLATES["plain"]
    vectors = {FN: init_tag_vectors(llama.embedding_matrix, 3)}
    for bad, message in (((3,), r"outside 1\.\.2"), ((0,), "outside"), ((1, 1), "repeat"), ((), "at least one")):
        with pytest.raises(BackboneError, match=message):
            TaggedModel(llama, Template.parse(text), slot_kinds, vectors, layers=bad)
    model = TaggedModel(llama, Template.parse(text), slot_kinds, vectors, layers=[2, 1])
    assert model.layers == (2, 1)


# --- TaggedModel with a truncated stack -----------------------------------------------------------


def _model(bb: Backbone, template_key: str, readout: str, layers, n_tokens: int = 3, seed: int = 0) -> TaggedModel:
    text, slot_kinds = TEMPLATES[template_key]
    template = Template.parse(text)
    gen = torch.Generator().manual_seed(seed)
    vectors = {FN: init_tag_vectors(bb.embedding_matrix, n_tokens, noise=0.5, generator=gen)}
    for dom in sorted({s.domain_tag for s in template.slots if s.domain_tag}):
        vectors[dom] = init_tag_vectors(bb.embedding_matrix, 2, noise=0.5, generator=gen)
    torch.manual_seed(seed)
    width = readout_dim(readout, bb.hidden_size, len(layers) if layers else 1)
    head = TaskHead(HeadConfig("regression", 1, width))
    return TaggedModel(bb, template, slot_kinds, vectors, trainable=frozenset({FN}), head=head, readout=readout,
                       layers=layers)


@pytest.mark.parametrize("readout", READOUTS)
def test_feature_dim_cache_layers_and_features(deep_backbones, readout):
    bb = deep_backbones["llama"]
    d = bb.hidden_size
    factor = 2 if readout == "last+mean" else 1
    plans = None
    feats = {}
    for layers, width, cache_layers in (((1,), d, 1), ((2, 1), 2 * d, 2), ((1, 3), 2 * d, 3), (None, d, 3)):
        model = _model(bb, "domain", readout, layers)
        assert model.feature_dim == factor * width
        assert model.cache_layers == cache_layers
        plans = plans or [model.plan(r) for r in _rows(model.slot_kinds)]
        with torch.no_grad():
            feats[layers] = model.features(plans)
            batch = model.batch(plans)
            torch.testing.assert_close(readout_hidden(bb, batch, model.layers),
                                       run_stack(bb, model.layers, batch.inputs_embeds, batch.attention_mask).hidden)
        assert feats[layers].shape == (len(plans), model.feature_dim)
        assert feats[layers].dtype == torch.float32
    # a two-layer read-out is the two one-layer read-outs side by side ([last..; mean..] for last+mean)
    one, two = feats[(1,)], feats[(2, 1)]
    if readout == "last+mean":
        # [last_2, last_1, mean_2, mean_1]
        torch.testing.assert_close(two[:, d:2 * d], one[:, :d], rtol=1e-5, atol=1e-6)  # last of layer 1
        torch.testing.assert_close(two[:, 3 * d:], one[:, d:], rtol=1e-5, atol=1e-6)  # mean of layer 1
    else:
        torch.testing.assert_close(two[:, d:], one, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(feats[(1,)], feats[None][:, : feats[(1,)].shape[1]])  # the depth matters


# --- exact prefix caching with a truncated stack --------------------------------------------------

# (depth, layers): stop below the top (2-layer backbone at 1; 3-layer at 1, or at 2 reading two layers),
# and a two-layer read-out of the whole 2-layer stack.
STACKS = [("tiny", (1,)), ("tiny", (1, 2)), ("deep", (1,)), ("deep", (2, 1))]
STACK_IDS = ["tiny-1", "tiny-1,2", "deep-1", "deep-2,1"]


def _assert_loss_and_grads_agree(cached, full):
    (c_loss, c_grads), (f_loss, f_grads) = cached, full
    assert abs(float(c_loss) - float(f_loss)) <= 1e-4 * abs(float(f_loss))
    assert float(f_grads[0].norm()) > 0  # the function tag reaches the loss
    assert _rel(c_grads[0], f_grads[0]) <= 1e-4
    for gc, gf in zip(c_grads[1:], f_grads[1:]):
        assert _rel(gc, gf) <= 1e-4


@pytest.mark.parametrize("readout", ["last", "last+mean"])
@pytest.mark.parametrize("depth, layers", STACKS, ids=STACK_IDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_truncated_cached_loss_and_gradients_equal_the_full_pass(backbones, arch, depth, layers, readout):
    bb = backbones(depth, arch)
    model = _model(bb, "domain", readout, layers)
    plans = [model.plan(r) for r in _rows(model.slot_kinds)]
    assert len({len(p) for p in plans}) > 3  # really padded batches
    keys = [("t", i) for i in range(len(plans))]
    y = torch.randn(len(plans), 1, generator=torch.Generator().manual_seed(1))
    deepest = max(layers)

    with count_block_calls(bb) as counts:
        full = _loss_and_grads(model, model(plans), y)
        with torch.no_grad():
            reference = model.features(plans)
            # chunks of 3 of 7 rows: prefixes padded to different lengths
            chunked = compute_prefix_states(model, plans, batch_size=3)
            cache = PrefixCache(model)
            states = cache.get(keys, plans)
            assert all(len(s.keys) == len(s.values) == deepest for s in states + chunked)
            torch.testing.assert_close(suffix_features(model, states), reference, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(suffix_features(model, chunked), reference, rtol=1e-4, atol=1e-5)
        via_cache = _loss_and_grads(model, model.head(suffix_features(model, states)), y)
        via_chunks = _loss_and_grads(model, model.head(suffix_features(model, chunked)), y)
    assert counts[deepest:] == [0] * (bb.n_layers - deepest)  # nothing above the read-out ever ran
    assert_no_hooks(bb)
    _assert_loss_and_grads_agree(via_cache, full)
    _assert_loss_and_grads_agree(via_chunks, full)
    for s, plan in zip(states, plans):
        assert s.length == len(plan) - 3
        if readout == "last+mean":
            assert s.input_mean.shape == (len(layers) * bb.hidden_size,)
        else:
            assert s.input_mean is None


@pytest.mark.parametrize("readout", ["last", "last+mean"])
@pytest.mark.parametrize("depth, layers", STACKS, ids=STACK_IDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_truncated_shared_group_prefixes_give_the_full_pass_loss_and_gradients(backbones, arch, depth, layers,
                                                                               readout):
    bb = backbones(depth, arch)
    model = _model(bb, "two_slot", readout, layers)
    rows = _pairs()
    plans = [model.plan(r) for r in rows]
    keys = [("t", i) for i in range(len(plans))]
    y = torch.randn(len(plans), 1, generator=torch.Generator().manual_seed(2))
    deepest = max(layers)
    with count_block_calls(bb) as counts:
        full = _loss_and_grads(model, model(plans), y)
        cache = PrefixCache(model)
        lengths = cache.share(keys, plans, [r["sequence"] for r in rows])
        assert len(lengths) == 3 and all(n > len(protein) for protein, n in lengths.items())
        order = [5, 0, 11, 3, 7, 1, 10, 2, 4, 9, 6, 8]  # rows of different groups mixed in one batch
        states = cache.get([keys[i] for i in order], [plans[i] for i in order])
        assert all(s.start == lengths[rows[i]["sequence"]] and s.shared is not None for s, i in zip(states, order))
        assert all(len(s.keys) == deepest and len(s.shared.layers) == deepest for s in states)
        with torch.no_grad():
            torch.testing.assert_close(suffix_features(model, states), model.features(plans)[order],
                                       rtol=1e-4, atol=1e-5)
        cached = _loss_and_grads(model, model.head(suffix_features(model, states)), y[order])
    assert counts[deepest:] == [0] * (bb.n_layers - deepest)
    assert_no_hooks(bb)
    _assert_loss_and_grads_agree(cached, full)


@pytest.mark.parametrize("readout", READOUTS)
@pytest.mark.parametrize("depth, layers", STACKS, ids=STACK_IDS)
@pytest.mark.parametrize("arch", ARCHS)
def test_truncated_grouped_features_and_shared_prefix_equal_model_features(backbones, arch, depth, layers, readout):
    bb = backbones(depth, arch)
    model = _model(bb, "two_slot", readout, layers)
    rows = _pairs(3, 3) + [{"sequence": "MKV", "smiles": "CCN"}]  # and one lone row
    plans = [model.plan(r) for r in rows]
    deepest = max(layers)
    with torch.no_grad(), count_block_calls(bb) as counts:
        reference = model.features(plans)
        grouped = grouped_features(model, plans, [r["sequence"] for r in rows], batch_size=2)
        single = grouped_features(model, plans)
        # one protein's rows after their shared beginning (everything up to the drug)
        group = [i for i, r in enumerate(rows) if r["sequence"] == rows[0]["sequence"]]
        n = common_prefix_length([plans[i] for i in group])
        prefix = shared_prefix(model, plans[group[0]], n)
        after = features_after_shared_prefix(model, prefix, [plans[i] for i in group])
        # every row after the template's opening words alone
        opening = shared_prefix(model, plans[0], min(plans[0].input_positions))
        after_opening = features_after_shared_prefix(model, opening, plans)
    assert counts[deepest:] == [0] * (bb.n_layers - deepest)
    assert_no_hooks(bb)
    assert n > len(rows[0]["sequence"]) and len(prefix.layers) == deepest
    assert prefix.input_sum.shape == (len(layers) * bb.hidden_size,)
    assert grouped.shape == (len(rows), model.feature_dim)
    torch.testing.assert_close(grouped, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(single, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after, reference[group], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after_opening, reference, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_the_full_pass_logs_no_cache_deprecation(monkeypatch, arch):
    """transformers 5 renamed the output's ``past_key_values`` to ``cache`` and logs a deprecation
    (once per process, hence the cleared cache) when the old name is read: a pass that asked for
    no cache must not read it, one that did must find ``cache``."""
    import logging

    from transformers.utils import logging as hf_logging

    seen: list = []
    monkeypatch.setattr(logging.Logger, "warning", lambda self, msg, *a, **k: seen.append(str(msg)))
    hf_logging.warning_once.cache_clear()
    bb = make_tiny_backbone(arch)
    x, mask = torch.randn(2, 5, bb.hidden_size), torch.ones(2, 5, dtype=torch.long)
    assert stack.run_stack(bb, None, x, mask).cache is None
    assert stack.run_stack(bb, None, x, mask, use_cache=True).cache is not None
    assert not [m for m in seen if "deprecated" in m], seen

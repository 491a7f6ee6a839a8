"""Exact prefix caching (``tagllm_core.prefix_cache``) against the full forward pass.

Training runs only the function tag's tokens on top of cached key/value states
of the frozen prefix. That is only legitimate if it is *exact*: for padded
batches of rows of different lengths, the loss and the gradient with respect
to the function tag must equal those of ``model(plans)`` (the full pass that
prediction uses). Checked on tiny Llama, GPT-2 and Qwen2 backbones, for every
read-out, with and without (frozen) domain tags and with two input slots.

Then ``PrefixCache``: hit/miss accounting, the byte budget (LRU eviction) and
that evicted rows are recomputed to the same states.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tagllm_core.heads import HeadConfig, TaskHead
from tagllm_core.model import READOUTS, TaggedModel, readout_dim
from tagllm_core.prefix_cache import PrefixCache, PrefixState, compute_prefix_states, suffix_features
from tagllm_core.tags import init_tag_vectors
from tagllm_core.templates import Template

FN = "Fn"
TEMPLATES = {
    # no domain tag: the prefix is text + the SMILES only
    "plain": ("Input: The SMILES of the molecule is {smiles}. Output: The property is <Fn>",
              {"smiles": "smiles"}),
    # a frozen domain tag before the input
    "domain": ("Input: The SMILES of the molecule is {smiles:<SMILES>}. Output: The property is <Fn>",
               {"smiles": "smiles"}),
    # stage 3: two slots across domains, each with its own frozen domain tag
    "two_slot": ("Input: The protein sequence is {sequence:<Protein>}. The SMILES of the drug is "
                 "{smiles:<SMILES>}. Output: The binding affinity is <Fn>",
                 {"sequence": "protein", "smiles": "smiles"}),
}
# Lengths from 1 to 40 characters, so batches carry a lot of padding.
SMILES = ["C", "CCO", "c1ccccc1CCCCCC", "CC(=O)Oc1ccccc1C(=O)O", "N#N", "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC",
          "OCC(O)CO"]
PROTEINS = ["MKTAYIAKQR", "GS", "MVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSF", "W", "ACDEFGHIKLMNPQRSTVWY", "MK",
            "PEPTIDEPEPTIDE"]


def _rows(slot_kinds: dict, n: int = len(SMILES)) -> list[dict]:
    rows = []
    for i in range(n):
        row = {}
        if "smiles" in slot_kinds:
            row["smiles"] = SMILES[i % len(SMILES)]
        if "sequence" in slot_kinds:
            row["sequence"] = PROTEINS[i % len(PROTEINS)]
        rows.append(row)
    return rows


def _model(backbone, template_key: str = "plain", readout: str = "last", n_tokens: int = 3,
           seed: int = 0) -> TaggedModel:
    text, slot_kinds = TEMPLATES[template_key]
    template = Template.parse(text)
    gen = torch.Generator().manual_seed(seed)
    vectors = {FN: init_tag_vectors(backbone.embedding_matrix, n_tokens, noise=0.5, generator=gen)}
    for dom in {s.domain_tag for s in template.slots if s.domain_tag}:
        vectors[dom] = init_tag_vectors(backbone.embedding_matrix, 2, noise=0.5, generator=gen)
    torch.manual_seed(seed)
    head = TaskHead(HeadConfig("regression", 1, readout_dim(readout, backbone.hidden_size)))
    return TaggedModel(backbone, template, slot_kinds, vectors, trainable=frozenset({FN}), head=head,
                       readout=readout)


def _loss_and_grads(model: TaggedModel, outputs: torch.Tensor, y: torch.Tensor):
    loss = model.head.loss(outputs, y)
    params = [model.tag(FN), model.head.linear.weight, model.head.linear.bias]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    # An unused tag (the "mean" read-out never sees it) has a zero gradient.
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return loss.detach(), grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-12))


@pytest.mark.parametrize("template_key", list(TEMPLATES))
@pytest.mark.parametrize("readout", READOUTS)
def test_cached_loss_and_gradients_equal_the_full_pass(backbone, readout, template_key):
    model = _model(backbone, template_key, readout)
    _, slot_kinds = TEMPLATES[template_key]
    plans = [model.plan(r) for r in _rows(slot_kinds)]
    assert len({len(p) for p in plans}) > 3  # really padded batches
    y = torch.randn(len(plans), 1, generator=torch.Generator().manual_seed(1))

    full_loss, full_grads = _loss_and_grads(model, model(plans), y)
    # batch_size 3 for 7 rows: the prefixes are computed in chunks padded to different lengths
    states = compute_prefix_states(model, plans, batch_size=3)
    cached_loss, cached_grads = _loss_and_grads(model, model.head(suffix_features(model, states)), y)

    assert abs(float(cached_loss) - float(full_loss)) <= 1e-4 * abs(float(full_loss))
    tag_full, tag_cached = full_grads[0], cached_grads[0]
    if readout == "mean":
        # the pooled input precedes the function tag: attention is causal, so no gradient reaches the tag
        assert float(tag_full.abs().max()) == 0.0 and float(tag_cached.abs().max()) == 0.0
    else:
        assert float(tag_full.norm()) > 0
        assert _rel(tag_cached, tag_full) <= 1e-4
    for gc, gf in zip(cached_grads[1:], full_grads[1:]):
        assert _rel(gc, gf) <= 1e-4
    # frozen domain tags stay frozen
    for name in model.tag_names:
        assert model.tag(name).requires_grad == (name == FN)


@pytest.mark.parametrize("readout", READOUTS)
def test_cached_features_equal_full_features(backbone, readout):
    model = _model(backbone, "two_slot", readout)
    plans = [model.plan(r) for r in _rows(model.slot_kinds)]
    with torch.no_grad():
        full = model.features(plans)
        states = compute_prefix_states(model, plans, batch_size=2)
        cached = suffix_features(model, states)
        # a row's features do not depend on its batch mates or their order
        reversed_ = suffix_features(model, states[::-1]).flip(0)
        alone = torch.cat([suffix_features(model, [s]) for s in states])
    assert cached.shape == (len(plans), readout_dim(readout, backbone.hidden_size))
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(reversed_, full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone, full, rtol=1e-4, atol=1e-5)


def test_prefix_state_shapes(llama):
    model = _model(llama, "domain", "last+mean", n_tokens=4)
    plans = [model.plan(r) for r in _rows(model.slot_kinds)]
    states = compute_prefix_states(model, plans, batch_size=4)
    cfg = llama.model.config
    for plan, s in zip(plans, states):
        assert s.length == len(plan) - 4  # everything but the function tag
        assert len(s.keys) == len(s.values) == cfg.num_hidden_layers
        assert s.keys[0].shape == (cfg.num_key_value_heads, s.length, cfg.hidden_size // cfg.num_attention_heads)
        assert s.input_mean.shape == (llama.hidden_size,) and s.input_mean.dtype == torch.float32
        assert s.nbytes == sum(k.numel() * 4 + v.numel() * 4 for k, v in zip(s.keys, s.values)) + 4 * 64
    last_only = compute_prefix_states(_model(llama, "domain", "last"), plans[:1])[0]
    assert last_only.input_mean is None


def test_cached_path_trains_like_the_full_path(gpt2):
    """A few optimiser steps through each path end at the same tag (exactness, compounded)."""
    results = []
    for cached in (False, True):
        model = _model(gpt2, "domain", "last+mean")
        plans = [model.plan(r) for r in _rows(model.slot_kinds)]
        states = compute_prefix_states(model, plans) if cached else None
        y = torch.randn(len(plans), 1, generator=torch.Generator().manual_seed(2))
        opt = torch.optim.Adam([model.tag(FN), *model.head.parameters()], lr=1e-2)
        for _ in range(5):
            out = model.head(suffix_features(model, states)) if cached else model(plans)
            loss = model.head.loss(out, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        results.append(model.tag(FN).detach().clone())
    assert not torch.equal(results[0], _model(gpt2, "domain", "last+mean").tag(FN).detach())  # it moved
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-5)


# --- PrefixCache ----------------------------------------------------------------------------------


def _cache_setup(backbone, readout="last+mean"):
    model = _model(backbone, "plain", readout)
    plans = [model.plan(r) for r in _rows(model.slot_kinds)]
    keys = [("t", i) for i in range(len(plans))]
    with torch.no_grad():
        reference = model.features(plans)
    return model, plans, keys, reference


def _features(model, states):
    with torch.no_grad():
        return suffix_features(model, states)


def test_cache_counts_hits_and_misses(llama):
    model, plans, keys, reference = _cache_setup(llama)
    cache = PrefixCache(model)
    first = cache.get(keys[:3], plans[:3])
    assert (cache.hits, cache.misses) == (0, 3)
    again = cache.get(keys[:3], plans[:3])
    assert (cache.hits, cache.misses) == (3, 3)
    assert all(a is b for a, b in zip(first, again))  # hits return the stored states, not recomputed ones
    mixed = cache.get([keys[4], keys[1], keys[5]], [plans[4], plans[1], plans[5]])
    assert (cache.hits, cache.misses) == (4, 5)
    assert mixed[1] is first[1]
    assert cache.nbytes == sum(s.nbytes for s in cache._store.values())
    torch.testing.assert_close(_features(model, mixed), reference[[4, 1, 5]], rtol=1e-4, atol=1e-5)


def test_cache_byte_budget_evicts_least_recently_used(llama):
    model, plans, keys, reference = _cache_setup(llama)
    sizes = [s.nbytes for s in compute_prefix_states(model, plans)]
    # room for rows 0 and 1 but not for a third row as well
    budget = sizes[0] + sizes[1] + min(sizes) // 2
    cache = PrefixCache(model, budget_bytes=budget)
    cache.get([keys[0]], [plans[0]])
    cache.get([keys[1]], [plans[1]])
    assert set(cache._store) == {keys[0], keys[1]}
    cache.get([keys[0]], [plans[0]])  # touch row 0: row 1 is now the least recently used
    cache.get([keys[2]], [plans[2]])
    assert keys[1] not in cache._store and keys[2] in cache._store
    assert cache.nbytes <= budget
    assert cache.nbytes == sum(s.nbytes for s in cache._store.values())
    misses = cache.misses
    states = cache.get([keys[1]], [plans[1]])  # evicted: recomputed
    assert cache.misses == misses + 1
    torch.testing.assert_close(_features(model, states), reference[[1]], rtol=1e-4, atol=1e-5)


def test_tiny_budget_still_returns_correct_states(gpt2):
    """A budget below one row's size keeps only the newest row, yet every call returns correct states."""
    model, plans, keys, reference = _cache_setup(gpt2)
    cache = PrefixCache(model, budget_bytes=1)
    states = cache.get(keys, plans)  # all misses, in one call
    assert len(states) == len(plans) and all(isinstance(s, PrefixState) for s in states)
    assert len(cache._store) == 1 and cache.misses == len(plans)
    torch.testing.assert_close(_features(model, states), reference, rtol=1e-4, atol=1e-5)
    for i in range(len(plans)):  # one row at a time: every row but the newest one is a miss again
        torch.testing.assert_close(_features(model, cache.get([keys[i]], [plans[i]])), reference[[i]],
                                   rtol=1e-4, atol=1e-5)
    assert len(cache._store) == 1
    assert cache.nbytes == sum(s.nbytes for s in cache._store.values())


def test_tiny_budget_with_hits_and_misses_in_one_call(llama):
    model, plans, keys, reference = _cache_setup(llama)
    cache = PrefixCache(model, budget_bytes=1)
    cache.get([keys[0]], [plans[0]])
    states = cache.get(keys[:2], plans[:2])  # row 0 hits, row 1 misses and evicts row 0
    torch.testing.assert_close(_features(model, states), reference[:2], rtol=1e-4, atol=1e-5)


def test_repeated_key_does_not_inflate_the_byte_count(llama):
    model, plans, keys, reference = _cache_setup(llama)
    cache = PrefixCache(model)
    states = cache.get([keys[0], keys[0]], [plans[0], plans[0]])
    torch.testing.assert_close(_features(model, states), reference[[0, 0]], rtol=1e-4, atol=1e-5)
    assert cache.nbytes == sum(s.nbytes for s in cache._store.values())


# --- shared prefixes (one protein, many drugs) ---------------------------------------------------


def _pairs(n_proteins: int = 3, drugs_per_protein: int = 4) -> list[dict]:
    return [{"sequence": PROTEINS[p], "smiles": SMILES[(p + d) % len(SMILES)]}
            for p in range(n_proteins) for d in range(drugs_per_protein)]


@pytest.mark.parametrize("readout", READOUTS)
def test_grouped_shared_prefix_gives_the_full_pass_loss_and_gradients(backbone, readout):
    model = _model(backbone, "two_slot", readout)
    rows = _pairs()
    plans = [model.plan(r) for r in rows]
    keys = [("t", i) for i in range(len(plans))]
    y = torch.randn(len(plans), 1, generator=torch.Generator().manual_seed(2))
    full_loss, full_grads = _loss_and_grads(model, model(plans), y)

    cache = PrefixCache(model)
    lengths = cache.share(keys, plans, [r["sequence"] for r in rows])
    assert len(lengths) == 3
    # each group shares at least its protein: the opening words, the domain tag and the residues
    for protein, n in lengths.items():
        assert n > len(protein)
    order = [5, 0, 11, 3, 7, 1, 10, 2, 4, 9, 6, 8]  # rows of different groups mixed in one batch
    states = cache.get([keys[i] for i in order], [plans[i] for i in order])
    assert all(s.start == lengths[rows[i]["sequence"]] for s, i in zip(states, order))
    assert all(s.shared is not None for s in states)
    out = model.head(suffix_features(model, states))
    cached_loss, cached_grads = _loss_and_grads(model, out, y[order])
    assert abs(float(cached_loss) - float(full_loss)) <= 1e-4 * abs(float(full_loss))
    for g_cached, g_full in zip(cached_grads, full_grads):
        if g_full.abs().sum() > 0:
            assert _rel(g_cached, g_full) <= 1e-4


def test_shared_prefix_is_stored_once_and_rows_hold_only_their_own_states(llama):
    model = _model(llama, "two_slot", "last+mean")
    rows = _pairs(2, 5)
    plans = [model.plan(r) for r in rows]
    keys = [("t", i) for i in range(len(plans))]
    unshared = compute_prefix_states(model, plans)
    cache = PrefixCache(model)
    cache.share(keys, plans, [r["sequence"] for r in rows])
    states = cache.get(keys, plans)
    shared_entries = [v for k, v in cache._store.items() if isinstance(k, tuple) and k[0] == "__shared__"]
    assert len(shared_entries) == 2
    assert cache.nbytes == sum(v.nbytes for v in cache._store.values())
    assert cache.nbytes < sum(s.nbytes for s in unshared)
    for s, u in zip(states, unshared):
        assert s.nbytes < u.nbytes and s.length == u.length
        torch.testing.assert_close(s.input_mean, u.input_mean, rtol=1e-4, atol=1e-5)


def test_evicted_shared_prefix_is_recomputed_to_the_same_features(gpt2):
    model = _model(gpt2, "two_slot", "last+mean")
    rows = _pairs(2, 3)
    plans = [model.plan(r) for r in rows]
    keys = [("t", i) for i in range(len(plans))]
    with torch.no_grad():
        reference = model.features(plans)
    cache = PrefixCache(model, budget_bytes=1)  # keeps only the newest entry: everything else is recomputed
    cache.share(keys, plans, [r["sequence"] for r in rows])
    for i in [0, 3, 1, 4, 2, 5, 0]:
        torch.testing.assert_close(_features(model, cache.get([keys[i]], [plans[i]])), reference[[i]],
                                   rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(_features(model, cache.get(keys, plans)), reference, rtol=1e-4, atol=1e-5)


def test_single_group_shares_the_template_opening(backbone):
    model = _model(backbone, "plain", "last+mean")
    plans = [model.plan(r) for r in _rows(model.slot_kinds)]
    keys = [("t", i) for i in range(len(plans))]
    cache = PrefixCache(model)
    lengths = cache.share(keys, plans)
    assert list(lengths) == [None] and lengths[None] == min(plans[0].input_positions)
    with torch.no_grad():
        reference = model.features(plans)
    torch.testing.assert_close(_features(model, cache.get(keys, plans)), reference, rtol=1e-4, atol=1e-5)


def test_lone_rows_and_short_common_prefixes_are_not_shared(llama):
    model = _model(llama, "two_slot", "last")
    rows = _pairs(3, 1)  # every protein once: nothing to share within a group
    plans = [model.plan(r) for r in rows]
    cache = PrefixCache(model)
    assert cache.share([("t", i) for i in range(3)], plans, [r["sequence"] for r in rows]) == {}
    assert all(s.start == 0 for s in cache.get([("t", i) for i in range(3)], plans))


def test_grouped_features_equal_the_full_pass(backbone):
    from tagllm_core.prefix_cache import grouped_features

    model = _model(backbone, "two_slot", "last+mean")
    rows = _pairs(3, 3) + [{"sequence": "MKV", "smiles": "CCN"}]  # and one lone row
    plans = [model.plan(r) for r in rows]
    with torch.no_grad():
        reference = model.features(plans)
        grouped = grouped_features(model, plans, [r["sequence"] for r in rows], batch_size=2)
        single = grouped_features(model, plans)
    torch.testing.assert_close(grouped, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(single, reference, rtol=1e-4, atol=1e-5)


def test_length_batches_respects_rows_and_tokens():
    from tagllm_core.prefix_cache import length_batches

    lengths = [3, 3, 4, 5, 10, 10, 20]
    batches = length_batches(lengths, batch_size=3, max_tokens=30)
    assert [i for b in batches for i in b] == list(range(len(lengths)))
    assert all(len(b) <= 3 for b in batches)
    assert all(max(lengths[i] for i in b) * len(b) <= 30 for b in batches)
    # a single row longer than the token budget still gets its own batch
    assert length_batches([100], 16, 10) == [[0]]
    assert length_batches(lengths, 4) == [[0, 1, 2, 3], [4, 5, 6]]  # no token cap


def test_row_groups_follow_the_first_input_only_with_two_slots():
    from tagllm_core.prefix_cache import row_groups
    from tagllm_core.templates import Template

    rows = [{"sequence": "MKV", "smiles": "CCO"}, {"sequence": "MKV", "smiles": "CCN"},
            {"sequence": "AAA", "smiles": "C"}]
    two = Template.parse(TEMPLATES["two_slot"][0])
    one = Template.parse(TEMPLATES["plain"][0])
    assert row_groups(two, rows) == ["MKV", "MKV", "AAA"]
    assert row_groups(one, rows) is None


def test_grouped_batches_cover_every_row_once_with_its_groups_prefix(backbone):
    from tagllm_core.prefix_cache import grouped_batches

    model = _model(backbone, "two_slot", "last+mean")
    rows = _pairs(2, 3) + [{"sequence": "MKV", "smiles": "CCN"}]
    plans = [model.plan(r) for r in rows]
    size = Counter(r["sequence"] for r in rows)
    seen = []
    with torch.no_grad():
        for idx, prefix in grouped_batches(model, plans, [r["sequence"] for r in rows], batch_size=2):
            seen += idx
            proteins = {rows[i]["sequence"] for i in idx}
            assert len(proteins) == 1 and len(idx) <= 2  # a batch never mixes groups
            # a group shares its beginning (up to the drug); a lone row has nothing to share
            assert (prefix is None) == (size[proteins.pop()] == 1)
    assert sorted(seen) == list(range(len(rows)))

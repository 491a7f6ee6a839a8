"""Exact prefix caching: run the frozen prefix once, then only the function tag.

With the domain tags frozen and the function tag at the end of the template,
everything before the function tag is constant, because attention is causal.
So for each row we compute, once and without gradients, the key/value states
of that prefix (and, for ``last+mean`` read-outs, the pooled input states),
and every training step runs only the ``p`` function-tag tokens with
gradients, attending to the cached keys/values. The loss and the gradients
are the same as those of the full forward pass (``tests/test_prefix_cache.py``
checks this on padded batches of two architectures); the cost per step falls
from (prefix + p) tokens to p tokens.

``PrefixCache`` keeps states in an LRU bounded by a byte budget and recomputes
what it evicted, so memory stays bounded on data sets of long proteins.
Rows that begin alike (every row's template opening; in stage 3, one protein
paired with many drugs) can share that beginning: ``PrefixCache.share`` finds
each group's common prefix, stores its states once, and each row then keeps
only the states of what follows.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from dataclasses import dataclass, replace
from typing import Callable, Hashable, Iterator, Optional, Protocol, Sequence, cast

import torch
from transformers.cache_utils import DynamicCache

from .model import TaggedModel, pool_features
from .stack import StackOutput, run_stack
from .templates import RowPlan, Template

__all__ = ["PrefixState", "PrefixCache", "compute_prefix_states", "suffix_features", "common_prefix_length",
           "SharedPrefix", "shared_prefix", "features_after_shared_prefix", "row_groups", "length_batches",
           "grouped_batches", "features_with_prefix", "grouped_features"]


@dataclass
class PrefixState:
    """One row's frozen prefix.

    keys/values: per layer that runs (``TaggedModel.cache_layers``: up to the
    deepest read-out layer) (kv_heads, length - start, head_dim) in the backbone
    dtype, the states of positions ``start .. length``; positions before
    ``start`` are the group's ``shared`` prefix (``start`` is 0 without one).
    input_mean: (w,) float32 mean read-out state over all the row's input
    tokens, shared part included (``None`` for the ``last`` read-out).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int
    input_mean: Optional[torch.Tensor]
    start: int = 0
    group: Hashable = None
    shared: Optional["SharedPrefix"] = None  # set on the states PrefixCache.get returns, never stored

    @property
    def nbytes(self) -> int:
        """Bytes this row holds on its own (a shared prefix is counted once, by the cache)."""
        n = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in zip(self.keys, self.values))
        return n + (self.input_mean.numel() * 4 if self.input_mean is not None else 0)


class _FilledLayer(Protocol):
    """A cache layer after a pass wrote to it: keys/values (B, kv_heads, T, head_dim)."""

    keys: torch.Tensor
    values: torch.Tensor


def _filled_layers(result: StackOutput, n: int) -> list[_FilledLayer]:
    """The first ``n`` layers of the cache a ``use_cache=True`` pass filled."""
    assert result.cache is not None, "run_stack(use_cache=True) returns its cache"
    # transformers types a layer's states as unset (None) before its first update, and a layer as
    # possibly linear-attention; the decoder blocks run here are attention layers the pass just filled.
    return cast("list[_FilledLayer]", result.cache.layers[:n])


def _prefix_plan(model: TaggedModel, plan: RowPlan) -> RowPlan:
    fn = model.template.function_tag
    p = model.tag_lengths[fn]
    return RowPlan(plan.ids[:-p], [t for t in plan.tags if t[0] != fn], plan.input_positions)


def compute_prefix_states(model: TaggedModel, plans: list[RowPlan], batch_size: int = 8,
                          shared: Optional["SharedPrefix"] = None, group: Hashable = None) -> list[PrefixState]:
    """Run every row's prefix (no gradients) and keep its key/value states.

    With ``shared`` (the first ``shared.length`` positions of every plan), only what follows is
    run and kept; the states come back with ``start = shared.length`` and ``group``."""
    out: list[PrefixState] = []
    n = shared.length if shared is not None else 0
    for begin in range(0, len(plans), batch_size):
        chunk = [_prefix_plan(model, p) for p in plans[begin:begin + batch_size]]
        with torch.no_grad():
            if shared is None:
                batch = model.batch(chunk)
                result = run_stack(model.backbone, model.layers, batch.inputs_embeds, batch.attention_mask,
                                   use_cache=True)
                means = pool_features(result.hidden, batch.readout_index, batch.input_mask, "mean")
            else:
                result, batch = _run_after(model, shared, chunk)
                means = pool_features(result.hidden, batch.readout_index, batch.input_mask, "mean",
                                      shared.input_sum, shared.input_count)
        cache_layers = _filled_layers(result, model.cache_layers)
        for b, plan in enumerate(chunk):
            end = len(plan)
            keys = [layer.keys[b, :, n:end].clone() for layer in cache_layers]
            values = [layer.values[b, :, n:end].clone() for layer in cache_layers]
            mean = means[b].clone() if model.readout != "last" else None
            out.append(PrefixState(keys, values, end, mean, n, group if shared is not None else None))
    return out


def suffix_features(model: TaggedModel, states: list[PrefixState]) -> torch.Tensor:
    """(B, F) read-out features from cached prefixes plus the function tag, with gradients to the tag."""
    bb = model.backbone
    fn = model.template.function_tag
    vectors = model.tag(fn)  # (p, d)
    B, p = len(states), vectors.shape[0]
    P = max(s.length for s in states)
    n_layers = len(states[0].keys)
    layers = []
    for layer in range(n_layers):
        k0 = states[0].keys[layer]
        keys = k0.new_zeros((B, k0.shape[0], P, k0.shape[2]))
        vals = k0.new_zeros((B, k0.shape[0], P, states[0].values[layer].shape[2]))
        for b, s in enumerate(states):
            if s.start:
                assert s.shared is not None, "a state with start > 0 comes with its shared prefix"
                shared_k, shared_v = s.shared.layers[layer]
                keys[b, :, : s.start] = shared_k[0]
                vals[b, :, : s.start] = shared_v[0]
            keys[b, :, s.start: s.length] = s.keys[layer]
            vals[b, :, s.start: s.length] = s.values[layer]
        layers.append((keys, vals))
    cache = DynamicCache(layers)
    # Padding sits between each prefix and its tag tokens; the mask hides it and the
    # positions continue from each row's own prefix length, as in the unpadded pass.
    mask = torch.zeros((B, P + p), dtype=torch.long, device=bb.device)
    for b, s in enumerate(states):
        mask[b, : s.length] = 1
    mask[:, P:] = 1
    lengths = torch.tensor([s.length for s in states], device=bb.device)
    position_ids = lengths[:, None] + torch.arange(p, device=bb.device)[None, :]
    embeds = vectors.to(bb.dtype).unsqueeze(0).expand(B, -1, -1)
    result = run_stack(bb, model.layers, embeds, mask, cache=cache, position_ids=position_ids, use_cache=True)
    last = result.hidden[:, -1].float()
    if model.readout == "last":
        return last
    # every state has its input mean when the read-out uses it (compute_prefix_states)
    means = torch.stack([cast(torch.Tensor, s.input_mean) for s in states]).to(last.device)
    return means if model.readout == "mean" else torch.cat([last, means], dim=-1)


class PrefixCache:
    """LRU of ``PrefixState`` keyed by row key, bounded by ``budget_bytes``; misses are recomputed.

    After ``share``, rows of a group keep only their own states; the group's common prefix is
    an LRU entry of its own (recomputed if evicted), attached to the states ``get`` returns.
    """

    def __init__(self, model: TaggedModel, budget_bytes: int = 4 << 30):
        self.model = model
        self.budget = budget_bytes
        self._store: OrderedDict = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._group_of: dict = {}  # row key -> group
        self._group_head: dict = {}  # group -> (length, a plan of the group)

    def share(self, keys: list, plans: list[RowPlan], groups: Optional[list] = None, min_length: int = 2) -> dict:
        """Declare rows that begin alike. ``groups[i]``: a hashable group for row i (default: all rows
        one group). Each group of two or more rows whose prefixes agree on at least ``min_length``
        positions shares them. Returns {group: shared length}."""
        members = defaultdict(list)
        for i in range(len(keys)):
            members[None if groups is None else groups[i]].append(i)
        lengths = {}
        for group, idx in members.items():
            if len(idx) < 2:
                continue
            heads = [_prefix_plan(self.model, plans[i]) for i in idx]
            n = common_prefix_length(heads)
            if n < min_length:
                continue
            self._group_head[group] = (n, heads[0])
            for i in idx:
                self._group_of[keys[i]] = group
            lengths[group] = n
        return lengths

    def get(self, keys: list, plans: list[RowPlan]) -> list[PrefixState]:
        result: dict = {}
        # Take the hits first: inserting the misses may evict them.
        for i, k in enumerate(keys):
            if k in self._store:
                self._store.move_to_end(k)
                result[i] = self._store[k]
        missing = [i for i in range(len(keys)) if i not in result]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        by_group = defaultdict(list)
        for i in missing:
            by_group[self._group_of.get(keys[i])].append(i)
        for group, idx in by_group.items():
            prefix = self._shared(group) if group in self._group_head else None
            fresh = compute_prefix_states(self.model, [plans[i] for i in idx], shared=prefix, group=group)
            for i, state in zip(idx, fresh):
                result[i] = state
                self._put(keys[i], state)
        states = [result[i] for i in range(len(keys))]
        return [replace(s, shared=self._shared(s.group)) if s.start else s for s in states]

    def _shared(self, group) -> "SharedPrefix":
        key = ("__shared__", group)
        if key in self._store:
            self._store.move_to_end(key)
            return self._store[key]
        n, plan = self._group_head[group]
        with torch.no_grad():
            prefix = shared_prefix(self.model, plan, n)
        self._put(key, prefix)
        return prefix

    def narrow(self, positions: Sequence[int], depth: int, width: int) -> None:
        """Keep what a shallower read-out needs of every stored state: the key/value states of the
        first ``depth`` layers and, of the pooled input states (layers side by side, ``width`` each),
        the blocks at the 0-based ``positions``, side by side in that order. Used once the read-out
        layers are chosen from an all-layer pass; the model's ``layers`` must then be set to them."""
        columns = torch.cat([torch.arange(p * width, (p + 1) * width) for p in positions])
        for key, state in list(self._store.items()):
            if isinstance(state, SharedPrefix):
                self._store[key] = SharedPrefix(state.layers[:depth], state.length, state.input_sum[columns],
                                                state.input_count)
            else:
                mean = state.input_mean[columns] if state.input_mean is not None else None
                self._store[key] = replace(state, keys=state.keys[:depth], values=state.values[:depth],
                                           input_mean=mean)
        self.nbytes = sum(s.nbytes for s in self._store.values())

    def _put(self, key, state) -> None:
        old = self._store.pop(key, None)
        if old is not None:
            self.nbytes -= old.nbytes
        self._store[key] = state
        self.nbytes += state.nbytes
        while self.nbytes > self.budget and len(self._store) > 1:
            _, evicted = self._store.popitem(last=False)
            self.nbytes -= evicted.nbytes


# ---------------------------------------------------------------------------------------------
# Prediction: one prefix shared by every row (the template's opening words and domain tag, or
# the whole protein when one target is screened against many molecules).


def common_prefix_length(plans: list[RowPlan]) -> int:
    """Number of leading positions identical in every plan: same token ids, and the same tags
    (by name and start) wherever tag placeholders are. Stops before each row's last token,
    which must stay in the per-row part to be read out, and never cuts a tag in two."""
    first = plans[0]
    limit = max(min(len(p) for p in plans) - 1, 0)
    n = 0
    while n < limit and all(p.ids[n] == first.ids[n] for p in plans):
        n += 1
    for _, start in first.tags:
        if start < n < start + _tag_len(first, start):
            n = start
    head_tags = [t for t in first.tags if t[1] < n]
    if any([t for t in p.tags if t[1] < n] != head_tags for p in plans):
        return 0
    return n


def _tag_len(plan: RowPlan, start: int) -> int:
    n = 0
    while start + n < len(plan.ids) and plan.ids[start + n] == -1:
        n += 1
    return n


@dataclass
class SharedPrefix:
    """The first ``length`` positions common to a set of rows.

    layers: per layer that runs (keys, values), each (1, kv_heads, length, head_dim);
    input_sum: (w,) float32 sum of read-out states over input tokens inside
    the prefix, input_count how many (for ``mean`` read-outs).
    """

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    length: int
    input_sum: torch.Tensor
    input_count: int

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


def shared_prefix(model: TaggedModel, plan: RowPlan, n: int) -> SharedPrefix:
    """Run the first ``n`` positions of ``plan`` once (callers hold no_grad/inference_mode)."""
    inside = [i for i in plan.input_positions if i < n]
    head = RowPlan(plan.ids[:n], [t for t in plan.tags if t[1] < n], inside)
    batch = model.batch([head])
    result = run_stack(model.backbone, model.layers, batch.inputs_embeds, batch.attention_mask, use_cache=True)
    hidden = result.hidden[0].float()
    total = hidden[inside].sum(0) if inside else hidden.new_zeros(hidden.shape[-1])
    layers = _filled_layers(result, model.cache_layers)
    return SharedPrefix([(layer.keys, layer.values) for layer in layers], n, total, len(inside))


def _run_after(model: TaggedModel, prefix: SharedPrefix, plans: list[RowPlan]):
    """Run what follows ``prefix`` in each plan, attending to its cached states.
    Returns (the ``StackOutput``, the batch of remainders)."""
    bb = model.backbone
    n = prefix.length
    rest = [RowPlan(p.ids[n:], [(name, s - n) for name, s in p.tags if s >= n],
                    [i - n for i in p.input_positions if i >= n]) for p in plans]
    batch = model.batch(rest)
    B = len(plans)
    cache = DynamicCache([(k.expand(B, -1, -1, -1).contiguous(), v.expand(B, -1, -1, -1).contiguous())
                          for k, v in prefix.layers])
    mask = torch.cat([torch.ones((B, n), dtype=batch.attention_mask.dtype, device=bb.device),
                      batch.attention_mask], dim=1)
    T = batch.inputs_embeds.shape[1]
    position_ids = (n + torch.arange(T, device=bb.device)).unsqueeze(0).expand(B, -1)
    result = run_stack(bb, model.layers, batch.inputs_embeds, mask, cache=cache, position_ids=position_ids,
                       use_cache=True)
    return result, batch


def features_after_shared_prefix(model: TaggedModel, prefix: SharedPrefix, plans: list[RowPlan]) -> torch.Tensor:
    """(B, F) read-out features of ``plans``, whose first ``prefix.length`` positions are ``prefix``;
    only each row's remainder is run. Equals ``model.features(plans)`` up to float rounding."""
    result, batch = _run_after(model, prefix, plans)
    return pool_features(result.hidden, batch.readout_index, batch.input_mask, model.readout,
                         prefix.input_sum, prefix.input_count)


def row_groups(template: Template, rows: list[dict]) -> Optional[list]:
    """The sharing group of each row, for ``PrefixCache.share`` and ``grouped_batches``.

    With two or more inputs, rows with the same first input (one protein against many drugs)
    share everything up to the second one, so the first input's text is the group. With one
    input, ``None``: all rows form one group and share the template's opening words."""
    if len(template.slots) < 2:
        return None
    first = template.slots[0].name
    return [r[first] for r in rows]


def length_batches(lengths: list[int], batch_size: int, max_tokens: Optional[int] = None) -> list[list[int]]:
    """Consecutive index groups of ``lengths`` (sorted ascending by the caller), capped at
    ``batch_size`` rows and, if given, ``max_tokens`` padded tokens; a row longer than the
    token cap still gets a batch of its own."""
    batches: list[list[int]] = []
    current: list[int] = []
    for i, n in enumerate(lengths):
        longest = max([n] + [lengths[j] for j in current])
        if current and (len(current) >= batch_size or (max_tokens and longest * (len(current) + 1) > max_tokens)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def _group_prefix(model: TaggedModel, plans: list[RowPlan]) -> Optional[SharedPrefix]:
    n = common_prefix_length(plans) if len(plans) > 1 else 0
    return shared_prefix(model, plans[0], n) if n >= 2 else None


def grouped_batches(model: TaggedModel, plans: list[RowPlan], groups: Optional[list] = None, batch_size: int = 16,
                    max_tokens: Optional[int] = None,
                    prefix_fn: Optional[Callable[[list[RowPlan]], Optional[SharedPrefix]]] = None,
                    ) -> Iterator[tuple[list[int], Optional[SharedPrefix]]]:
    """Yield ``(rows, prefix)``: indices into ``plans`` to run together, and the prefix they share.

    Rows are grouped by ``groups[i]`` (default: one group, see ``row_groups``); each group's
    common prefix is computed once by ``prefix_fn(group_plans)`` (default: ``shared_prefix`` of
    the group's common beginning, ``None`` for a lone row) and its rows come in length-sorted
    batches (``length_batches``). Callers hold no_grad/inference_mode."""
    members = defaultdict(list)
    for i in range(len(plans)):
        members[None if groups is None else groups[i]].append(i)
    for idx in members.values():
        idx = sorted(idx, key=lambda i: len(plans[i]))
        group_plans = [plans[i] for i in idx]
        prefix = (prefix_fn or (lambda ps: _group_prefix(model, ps)))(group_plans)
        for batch in length_batches([len(p) for p in group_plans], batch_size, max_tokens):
            yield [idx[j] for j in batch], prefix


def features_with_prefix(model: TaggedModel, plans: list[RowPlan], prefix: Optional[SharedPrefix]) -> torch.Tensor:
    """(B, F) read-out features of ``plans``: the full pass, or only what follows ``prefix``."""
    return model.features(plans) if prefix is None else features_after_shared_prefix(model, prefix, plans)


def grouped_features(model: TaggedModel, plans: list[RowPlan], groups: Optional[list] = None,
                     batch_size: int = 16) -> torch.Tensor:
    """(N, F) read-out features of ``plans`` (callers hold no_grad/inference_mode), each group's
    common prefix run once (``grouped_batches``). Equals ``model.features`` up to float rounding;
    much cheaper when many rows share a long beginning (one protein, many drugs)."""
    out: list = [None] * len(plans)
    for idx, prefix in grouped_batches(model, plans, groups, batch_size):
        for i, f in zip(idx, features_with_prefix(model, [plans[i] for i in idx], prefix)):
            out[i] = f.cpu()
    return torch.stack(out) if out else torch.zeros(0, model.feature_dim)

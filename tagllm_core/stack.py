"""Running the frozen decoder only as deep as the read-out needs.

A read-out may take hidden states from chosen layers instead of the final one
(middle layers carry more of what a property head needs; docs/BENCHMARKS.md).
Layer ``l`` (1-based) is the output of the ``l``-th decoder block, the
residual stream (Hugging Face's ``output_hidden_states[l]`` for every layer
but the last, where that list holds the state after the final norm). The blocks above
the deepest layer read are never run: a forward hook on that block captures
its output and stops the pass, so a read-out at 40% depth costs 40% of the
FLOPs. Nothing is model-specific: the decoder blocks are found as the model's
``ModuleList`` of ``num_hidden_layers`` modules.

Each captured state is RMS-normalised per token without a learned gain (the
backbone's own final norm is trained for the last layer only, and the head
standardises features anyway); this keeps every layer on one scale, which
the ridge warm start and the layer choice compare.

``layers=None`` is the whole stack and its final (normed) hidden state, the
read-out of tags trained before read-out depth existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, overload

import torch
from torch import nn

from .exceptions import BackboneError

if TYPE_CHECKING:  # transformers is imported when a backbone loads, not on import
    from transformers import PreTrainedModel
    from transformers.cache_utils import Cache

__all__ = ["StackOutput", "num_layers", "decoder_layers", "check_layers", "run_stack"]


class _Stop(Exception):
    """Raised by the hook on the deepest block read, to end the forward pass there."""


@dataclass
class StackOutput:
    """hidden: (B, T, k*d) the read-out layers' states side by side (k = number of layers read; k = 1
    for the final state), in the backbone dtype; cache: the key/value cache the pass filled (only
    its first ``max(layers)`` layers hold states), or ``None`` without ``use_cache``."""

    hidden: torch.Tensor
    cache: Optional[Cache]


def num_layers(model: PreTrainedModel) -> int:
    config = model.config
    n = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    if not n:
        raise BackboneError(f"{type(model).__name__}'s config names no number of layers.")
    return int(n)


def decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    """The decoder blocks of a causal LM, in order."""
    n = num_layers(model)
    for module in model.base_model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise BackboneError(f"Could not find the {n} decoder blocks of {type(model).__name__}.")


@overload
def check_layers(layers: None, n_layers: int) -> None: ...
@overload
def check_layers(layers: Sequence[int], n_layers: int) -> tuple[int, ...]: ...
@overload
def check_layers(layers: Optional[Sequence[int]], n_layers: int) -> Optional[tuple[int, ...]]: ...


def check_layers(layers: Optional[Sequence[int]], n_layers: int) -> Optional[tuple[int, ...]]:
    """Validate read-out layers (1-based, 1..n_layers); ``None`` stays ``None`` (the final state)."""
    if layers is None:
        return None
    layers = tuple(int(x) for x in layers)
    if not layers:
        raise BackboneError("Name at least one read-out layer.")
    bad = [x for x in layers if not 1 <= x <= n_layers]
    if bad:
        raise BackboneError(f"Read-out layer(s) {bad} outside 1..{n_layers} (the backbone has {n_layers} layers).")
    if len(set(layers)) != len(layers):
        raise BackboneError(f"Read-out layers {list(layers)} repeat a layer.")
    return layers


def _rms(h: torch.Tensor) -> torch.Tensor:
    h32 = h.float()
    return (h32 * torch.rsqrt(h32.pow(2).mean(-1, keepdim=True) + 1e-6)).to(h.dtype)


def run_stack(backbone, layers: Optional[Sequence[int]], inputs_embeds: torch.Tensor,
              attention_mask: torch.Tensor, cache=None, position_ids: Optional[torch.Tensor] = None,
              use_cache: bool = False) -> StackOutput:
    """Run ``backbone`` on (B, T, d) embeddings up to ``max(layers)`` and return those layers' states.

    ``cache``: key/value states of earlier positions (a ``DynamicCache``); with ``use_cache`` the
    pass adds its own to it (a fresh cache is made when none is given)."""
    base = backbone.base
    if layers is None:
        with backbone.lock:  # another thread's read-out hooks must not fire in this pass
            out = base(inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache,
                       position_ids=position_ids, use_cache=use_cache)
        if not use_cache:  # asking an output without a cache for ``past_key_values`` logs a deprecation
            return StackOutput(out.last_hidden_state, None)
        returned = getattr(out, "cache", None)  # transformers 5 names it ``cache``
        if returned is None:
            returned = getattr(out, "past_key_values", None)
        return StackOutput(out.last_hidden_state, returned)
    if use_cache and cache is None:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()  # ours, so it survives the early stop
    layers = check_layers(layers, len(backbone.decoder_layers))
    blocks = backbone.decoder_layers
    deepest = max(layers)
    captured: dict = {}

    def hook(index: int):
        def capture(module, args, output):
            captured[index] = output[0] if isinstance(output, tuple) else output
            if index == deepest:
                raise _Stop
        return capture

    # The hooks sit on modules every caller shares: hold the backbone's lock so that no other
    # thread's pass runs into them.
    with backbone.lock:
        handles = [blocks[i - 1].register_forward_hook(hook(i)) for i in set(layers)]
        try:
            base(inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=cache,
                 position_ids=position_ids, use_cache=use_cache)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()
    hidden = torch.cat([_rms(captured[i]) for i in layers], dim=-1)
    return StackOutput(hidden, cache if use_cache else None)

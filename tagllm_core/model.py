"""The tagged model: frozen backbone + tag vectors + read-out + task head.

One class serves prediction and training. The backbone is held, not owned:
it is shared between every ``TaggedModel`` and never receives gradients;
only the tag vectors marked trainable and the head are parameters.

Read-outs (features for the head, all float32), from the hidden states at the
read-out layers (``stack``: chosen layers, side by side, so w = k*d for k
layers; or the final state, w = d):

* ``last``: the state at the last function-tag token, (B, w), as in the paper;
* ``last+mean``: that, concatenated with the mean state over the slots'
  content tokens, (B, 2w);
* ``mean``: the mean over content tokens alone, (B, w): the linear-probe baseline.

The head may also read fixed descriptors of the inputs (``descriptors``),
passed beside the features as ``extra``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .backbone import Backbone
from .exceptions import TemplateError
from .heads import TaskHead
from .stack import check_layers, run_stack
from .templates import PromptEncoder, RowPlan, TaggedBatch, Template, collate

__all__ = ["READOUTS", "readout_dim", "TaggedModel", "readout_hidden", "pool_features"]

READOUTS = ("last", "last+mean", "mean")


def readout_dim(readout: str, hidden_size: int, n_layers: int = 1) -> int:
    """Feature width of a read-out over ``n_layers`` read-out layers of width ``hidden_size``."""
    if readout not in READOUTS:
        raise TemplateError(f"Unknown read-out {readout!r}; use one of {READOUTS}.")
    width = hidden_size * n_layers
    return 2 * width if readout == "last+mean" else width


def readout_hidden(backbone: Backbone, batch: TaggedBatch, layers: Optional[tuple] = None) -> torch.Tensor:
    """(B, T, w) hidden states at the read-out ``layers`` (``None``: the final, normed state)."""
    return run_stack(backbone, layers, batch.inputs_embeds, batch.attention_mask).hidden


def pool_features(hidden: torch.Tensor, readout_index: torch.Tensor, input_mask: torch.Tensor,
                  readout: str, prefix_sum: Optional[torch.Tensor] = None, prefix_count: int = 0) -> torch.Tensor:
    """hidden (B, T, d), readout_index (B,), input_mask (B, T) -> (B, F) float32 features.

    ``prefix_sum`` (d,) / ``prefix_count``: input-token states already summed in a
    shared prefix that ``hidden`` does not contain, so the mean covers them too.
    """
    hidden = hidden.float()
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), readout_index]
    if readout == "last":
        return last
    weights = input_mask.unsqueeze(-1)
    total = (hidden * weights).sum(1)
    if prefix_sum is not None:
        total = total + prefix_sum
    mean = total / (weights.sum(1) + prefix_count).clamp(min=1.0)
    return mean if readout == "mean" else torch.cat([last, mean], dim=-1)


class TaggedModel(nn.Module):
    """Backbone + tags + head for one template.

    ``tag_vectors``: name -> (p, d) tensor for every tag the template uses;
    names in ``trainable`` become trainable parameters, the rest are frozen
    buffers. ``slot_kinds``: slot -> "smiles" | "protein" | "text".
    ``layers``: 1-based read-out layers (the stack stops at the deepest);
    ``None`` reads the final hidden state.
    """

    def __init__(self, backbone: Backbone, template: Template, slot_kinds: dict, tag_vectors: dict,
                 trainable: frozenset = frozenset(), head: Optional[TaskHead] = None, readout: str = "last",
                 max_tokens: Optional[dict] = None, layers: Optional[tuple] = None):
        super().__init__()
        readout_dim(readout, backbone.hidden_size)  # validates the name
        self.backbone = backbone
        self.template = template
        self.slot_kinds = dict(slot_kinds)
        self.readout = readout
        self.layers = check_layers(layers, backbone.n_layers)
        self.encoder = PromptEncoder(backbone.tokenizer, max_tokens)
        # ParameterDict keys may not contain '.', which tag names may: index by position instead. On the
        # backbone's device, so optimiser steps and gradient all-reduces (NCCL) stay on the GPU.
        self.tag_names = list(tag_vectors)
        self.tag_params = nn.ParameterList(
            nn.Parameter(tag_vectors[n].detach().float().to(backbone.device, copy=True), requires_grad=n in trainable)
            for n in self.tag_names
        )
        # Heads are built on the CPU (from files, ridge fits); features come from the backbone's device.
        self.head = head.to(backbone.device) if head is not None else None
        missing = {s.name for s in template.slots} - set(self.slot_kinds)
        if missing:
            raise TemplateError(f"No input kind given for slot(s) {sorted(missing)}.")

    @property
    def feature_dim(self) -> int:
        """Width of the read-out features (before any descriptors)."""
        return readout_dim(self.readout, self.backbone.hidden_size, len(self.layers or (0,)))

    @property
    def cache_layers(self) -> int:
        """How many decoder layers run (and hold key/value states in a prefix cache)."""
        return max(self.layers) if self.layers else self.backbone.n_layers

    def tag(self, name: str) -> nn.Parameter:
        return self.tag_params[self.tag_names.index(name)]

    @property
    def tag_lengths(self) -> dict:
        return {n: p.shape[0] for n, p in zip(self.tag_names, self.tag_params)}

    def plan(self, inputs: dict) -> RowPlan:
        """inputs: slot -> cleaned value."""
        return self.encoder.plan(self.template, self.slot_kinds, inputs, self.tag_lengths)

    def batch(self, plans: list[RowPlan]) -> TaggedBatch:
        bb = self.backbone
        return collate(plans, bb.embed_ids, dict(zip(self.tag_names, self.tag_params)),
                       bb.tokenizer.pad_token_id, bb.dtype, bb.device)

    def features(self, plans: list[RowPlan]) -> torch.Tensor:
        """(B, F) float32 read-out features."""
        batch = self.batch(plans)
        hidden = readout_hidden(self.backbone, batch, self.layers)
        return pool_features(hidden, batch.readout_index, batch.input_mask, self.readout)

    def forward(self, plans: list[RowPlan], extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, n_outputs) head outputs (standardised predictions or logits). ``extra``: (B, E)
        descriptors of the rows, for heads that read them."""
        if self.head is None:
            raise TypeError("This model has no head, so it has no outputs.")
        return self.head(self.features(plans), extra)

"""The ridge warm start of a function tag's head, and the choice of its read-out layer.

Before the tag is trained, its head is fitted in closed form (ridge
regression) on the features of the untrained tag, so training starts from the
linear probe and not from noise. The same fit chooses the read-out depth: one
pass through the whole stack gives every layer's features at once
(``stack.run_stack`` with all layers), a ridge head is fitted on each layer's
training features and scored on the validation rows, and the best layer is
kept. The deeper layers then never run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from .heads import TaskHead, fit_ridge

__all__ = ["LayerChoice", "ridge_alpha", "fit_head", "layer_slice", "choose_layer"]


def ridge_alpha(features: np.ndarray, targets: np.ndarray) -> float:
    """Ridge penalty for (N, F) standardised features by efficient leave-one-out (``RidgeCV``)."""
    from sklearn.linear_model import RidgeCV

    return float(RidgeCV(alphas=np.logspace(-1, 5, 13)).fit(features, targets).alpha_)


def fit_head(head: TaskHead, features: torch.Tensor, targets: torch.Tensor,
             extra: Optional[torch.Tensor] = None) -> float:
    """Fit ``head`` by ridge on (N, F) features [+ (N, E) descriptors] for (N, K) targets: its
    standardisation first (if it standardises), then the weights. Returns the penalty used."""
    x = features.float() if extra is None else torch.cat([features.float(), extra.float()], dim=-1)
    if head.config.standardize:
        head.fit_scaling(x)
    with torch.no_grad():
        z = head.inputs(features, extra).cpu()
    alpha = ridge_alpha(z.numpy(), targets.numpy())
    head.load_state({**head.state(), **fit_ridge(z, targets, alpha)})
    return alpha


def layer_slice(features: torch.Tensor, n_layers: int, layer: int, readout: str) -> torch.Tensor:
    """(N, F_one) features of one layer (1-based) out of (N, F_all) features read at layers 1..n_layers.

    A read-out over several layers puts their states side by side, so ``last+mean`` features are
    ``[last_1 .. last_n ; mean_1 .. mean_n]``."""
    parts = 2 if readout == "last+mean" else 1
    width = features.shape[1] // (parts * n_layers)
    blocks = features.reshape(features.shape[0], parts, n_layers, width)
    return blocks[:, :, layer - 1].reshape(features.shape[0], parts * width)


@dataclass
class LayerChoice:
    """The chosen read-out layer and each candidate's validation score (lower is better)."""

    layer: int
    scores: dict  # layer -> score


def choose_layer(head_factory: Callable[[], TaskHead], train_features: torch.Tensor, targets: torch.Tensor,
                 valid_features: torch.Tensor, score: Callable[[np.ndarray], float], n_layers: int, readout: str,
                 train_extra: Optional[torch.Tensor] = None, valid_extra: Optional[torch.Tensor] = None,
                 candidates: Optional[list] = None) -> LayerChoice:
    """Fit a ridge head on each candidate layer's training features and keep the layer whose
    head scores best on the validation rows. ``score``: (N_valid, K) head outputs -> a loss."""
    scores = {}
    for layer in candidates or range(1, n_layers + 1):
        head = head_factory()
        fit_head(head, layer_slice(train_features, n_layers, layer, readout), targets, train_extra)
        with torch.no_grad():
            out = head(layer_slice(valid_features, n_layers, layer, readout), valid_extra)
        scores[layer] = float(score(out.numpy()))
    best = min(scores, key=lambda k: (scores[k], k))
    return LayerChoice(best, scores)

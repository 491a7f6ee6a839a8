"""Task heads on the read-out features, and label scaling.

Regression heads predict standardised labels (one or several outputs) and
are trained with MSE; classification heads output logits (2 for binary, K for
K classes) trained with cross-entropy. A head is one linear layer: with the
backbone frozen, the tag is what adapts; a deeper head would only overfit the
small data sets scientists bring.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from .exceptions import TrainingError

__all__ = ["HeadConfig", "TaskHead", "LabelScaler", "fit_ridge", "build_head"]

TASKS = ("regression", "classification")


@dataclass
class HeadConfig:
    """``n_outputs``: number of regression targets, or of classes (>= 2)."""

    task: str
    n_outputs: int
    in_dim: int

    def __post_init__(self):
        if self.task not in TASKS:
            raise TrainingError(f"Unknown task {self.task!r}; use one of {TASKS}.")
        if self.task == "classification" and self.n_outputs < 2:
            raise TrainingError("A classification head needs at least two classes.")

    def to_dict(self) -> dict:
        return asdict(self)


class TaskHead(nn.Module):
    """(B, in_dim) float32 features -> (B, n_outputs) predictions (standardised) or logits."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.in_dim, config.n_outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features.float())

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """targets: (B, n_outputs) standardised floats, or (B,) class indices."""
        if self.config.task == "regression":
            return nn.functional.mse_loss(outputs, targets.float())
        return nn.functional.cross_entropy(outputs, targets.long())

    def state(self) -> dict:
        return {"weight": self.linear.weight.detach().clone(), "bias": self.linear.bias.detach().clone()}

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            self.linear.weight.copy_(state["weight"])
            self.linear.bias.copy_(state["bias"])


def build_head(config: HeadConfig, state: Optional[dict] = None) -> TaskHead:
    head = TaskHead(config)
    if state:
        head.load_state(state)
    return head


@dataclass
class LabelScaler:
    """Per-output standardisation: z = (y - mean) / std."""

    mean: list
    std: list

    @classmethod
    def fit(cls, y: np.ndarray) -> "LabelScaler":
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        std = y.std(axis=0)
        if np.any(std == 0):
            raise TrainingError("A label column is constant: there is nothing to learn.")
        return cls(mean=y.mean(axis=0).tolist(), std=std.tolist())

    def transform(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        return (y - np.array(self.mean)) / np.array(self.std)

    def inverse(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64).reshape(len(z), -1)
        return z * np.array(self.std) + np.array(self.mean)

    def to_dict(self) -> dict:
        return asdict(self)


def fit_ridge(features: torch.Tensor, targets: torch.Tensor, alpha: float) -> dict:
    """Closed-form ridge on (N, F) features for (N, K) targets -> head state.

    Used to warm-start a regression head (or one-hot classification targets),
    so the tag's training starts from the linear probe instead of from noise.
    Features are centred so the bias is not penalised.
    """
    X = features.double()
    Y = targets.double().reshape(len(targets), -1)
    x_mean, y_mean = X.mean(0), Y.mean(0)
    Xc, Yc = X - x_mean, Y - y_mean
    F = X.shape[1]
    W = torch.linalg.solve(Xc.T @ Xc + alpha * torch.eye(F, dtype=torch.float64), Xc.T @ Yc)  # (F, K)
    bias = y_mean - x_mean @ W
    return {"weight": W.T.float().contiguous(), "bias": bias.float().contiguous()}

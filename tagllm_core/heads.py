"""Task heads on the read-out features, and label scaling.

Regression heads predict standardised labels (one or several outputs) and
are trained with MSE; classification heads output logits (2 for binary, K for
K classes) trained with cross-entropy. A head is one linear layer: with the
backbone frozen, the tag is what adapts; a deeper head would only overfit the
small data sets scientists bring.

A head may standardise its input (``HeadConfig.standardize``): each feature is
centred and scaled with statistics of the training rows, missing values (NaN
or infinite descriptors) become the training mean, and standardised values are clipped to
+-``CLIP`` so that an input far outside the training data cannot push the
prediction arbitrarily far. Heads of tags trained before this existed read
their features as they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from .exceptions import TrainingError
from .forest import FOREST_INPUTS, FOREST_KEYS, forest_outputs

__all__ = ["HeadConfig", "TaskHead", "LabelScaler", "build_head", "forest_shapes", "ridge_targets", "CLIP"]

TASKS = ("regression", "classification")
CLIP = 8.0  # standard deviations


@dataclass
class HeadConfig:
    """``n_outputs``: number of regression targets, or of classes (>= 2). ``in_dim``: input width,
    the read-out features followed by ``n_extra`` descriptor columns."""

    task: str
    n_outputs: int
    in_dim: int
    n_extra: int = 0
    standardize: bool = False
    # a random forest blended with the linear head (``forest``); 0: none. It reads the descriptor columns,
    # or the read-out features before them (``forest.FOREST_INPUTS``)
    forest_trees: int = 0
    forest_nodes: int = 0
    forest_depth: int = 0
    forest_input: str = "descriptors"

    def __post_init__(self):
        if self.task not in TASKS:
            raise TrainingError(f"Unknown task {self.task!r}; use one of {TASKS}.")
        if self.task == "classification" and self.n_outputs < 2:
            raise TrainingError("A classification head needs at least two classes.")
        if self.forest_input not in FOREST_INPUTS:
            raise TrainingError(f"A forest reads one of {FOREST_INPUTS}, not {self.forest_input!r}.")
        if self.forest_nodes and (self.task != "regression" or not self.forest_width):
            raise TrainingError("A forest blends into a regression head, and reads its descriptors or read-out "
                                "features.")

    @property
    def forest_width(self) -> int:
        """Columns the forest reads: the descriptors, or the read-out features."""
        return self.n_extra if self.forest_input == "descriptors" else self.in_dim - self.n_extra

    def to_dict(self) -> dict:
        return asdict(self)


class TaskHead(nn.Module):
    """(B, F) read-out features [+ (B, n_extra) descriptors] -> (B, n_outputs) predictions
    (standardised) or logits. With a forest (``HeadConfig.forest_nodes``), a regression head's output is
    ``blend[0] * linear + blend[1] * forest(x)``, x the descriptors or the read-out features as they come
    (``HeadConfig.forest_input``); only the linear part has parameters."""

    x_mean: torch.Tensor  # (in_dim,) buffers, registered in __init__
    x_std: torch.Tensor
    blend: torch.Tensor  # (2, n_outputs), with a forest

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.linear = nn.Linear(config.in_dim, config.n_outputs)
        self.register_buffer("x_mean", torch.zeros(config.in_dim))
        self.register_buffer("x_std", torch.ones(config.in_dim))
        if config.forest_nodes:
            for key, shape in forest_shapes(config).items():
                self.register_buffer(key, torch.zeros(shape))
            self.register_buffer("blend", torch.tensor([[1.0] * config.n_outputs, [0.0] * config.n_outputs]))

    def forest_state(self) -> dict[str, torch.Tensor]:
        return {key: getattr(self, key) for key in FOREST_KEYS} if self.config.forest_nodes else {}

    def inputs(self, features: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, in_dim) float32 head input: features and descriptors side by side, standardised
        if the head standardises."""
        x = features.float()
        if extra is not None:
            x = torch.cat([x, extra.to(device=x.device, dtype=torch.float32)], dim=-1)
        if x.shape[-1] != self.config.in_dim:
            raise TrainingError(f"The head reads {self.config.in_dim} features but got {x.shape[-1]}"
                                f"{'' if extra is not None or not self.config.n_extra else ' (descriptors missing)'}.")
        if not self.config.standardize:
            return x
        x = torch.where(torch.isfinite(x), x, self.x_mean)
        return ((x - self.x_mean) / self.x_std).clamp(-CLIP, CLIP)

    def forward(self, features: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.linear(self.inputs(features, extra))
        if not self.config.forest_nodes:
            return out
        if self.config.forest_input == "readout":
            x = features
        else:
            assert extra is not None  # ``inputs`` refused a head reading descriptors without them
            x = extra
        # no gradient flows through the trees: training moves the tag through the linear part alone
        trees = forest_outputs(self.forest_state(), self.config.forest_depth,
                               x.detach().to(device=out.device, dtype=torch.float32))
        return self.blend[0] * out + self.blend[1] * trees

    def fit_scaling(self, x: torch.Tensor) -> None:
        """Set the standardisation from (N, in_dim) training inputs (NaN and inf ignored; a constant
        or all-missing column is centred and left unscaled)."""
        x = x.double()
        ok = torch.isfinite(x)
        count = ok.sum(0).clamp(min=1)
        mean = torch.where(ok, x, 0.0).sum(0) / count
        var = torch.where(ok, (x - mean) ** 2, 0.0).sum(0) / count
        std = var.sqrt()
        std = torch.where(std > 1e-8 * mean.abs().clamp(min=1.0), std, torch.ones_like(std))
        with torch.no_grad():
            self.x_mean.copy_(mean.float())
            self.x_std.copy_(std.float())

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """targets: (B, n_outputs) standardised floats, or (B,) class indices."""
        if self.config.task == "regression":
            return nn.functional.mse_loss(outputs, targets.float())
        return nn.functional.cross_entropy(outputs, targets.long())

    def state(self) -> dict:
        out = {"weight": self.linear.weight.detach().clone(), "bias": self.linear.bias.detach().clone()}
        if self.config.standardize:
            out.update(x_mean=self.x_mean.detach().clone(), x_std=self.x_std.detach().clone())
        if self.config.forest_nodes:
            out.update({k: v.detach().clone() for k, v in self.forest_state().items()},
                       blend=self.blend.detach().clone())
        return out

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            self.linear.weight.copy_(state["weight"])
            self.linear.bias.copy_(state["bias"])
            if self.config.standardize:
                if "x_mean" not in state or "x_std" not in state:
                    raise TrainingError("The head standardises its input but its state has no statistics.")
                self.x_mean.copy_(state["x_mean"])
                self.x_std.copy_(state["x_std"])
            if self.config.forest_nodes:
                missing = [k for k in (*FOREST_KEYS, "blend") if k not in state]
                if missing:
                    raise TrainingError(f"The head blends a forest but its state lacks {missing}.")
                for key in (*FOREST_KEYS, "blend"):
                    getattr(self, key).copy_(state[key])


def forest_shapes(config: HeadConfig) -> dict[str, tuple[int, ...]]:
    """The shapes of a head's forest tensors (``forest.FOREST_KEYS``) and of its ``blend``."""
    if not config.forest_nodes:
        return {}
    nodes = (config.forest_nodes,)
    return {"forest_left": nodes, "forest_right": nodes, "forest_feature": nodes, "forest_threshold": nodes,
            "forest_value": (config.forest_nodes, config.n_outputs), "forest_roots": (config.forest_trees,),
            "forest_fill": (config.forest_width,)}


def build_head(config: HeadConfig, state: Optional[dict] = None) -> TaskHead:
    head = TaskHead(config)
    if state:
        head.load_state(state)
    return head


@dataclass
class LabelScaler:
    """Per-output standardisation: z = (y - mean) / std."""

    mean: list[float]
    std: list[float]

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


def ridge_targets(task: str, y: np.ndarray, n_classes: int = 0) -> tuple[Optional[LabelScaler], torch.Tensor]:
    """The ridge head's float targets of labels ``y``: (N, K) standardised regression labels with their
    scaler, or the (N,) class indices of a classification as (N, n_classes) +-1 one-hot columns (no scaler)."""
    if task == "regression":
        scaler = LabelScaler.fit(y)
        return scaler, torch.tensor(scaler.transform(y), dtype=torch.float32)
    return None, torch.nn.functional.one_hot(torch.as_tensor(y, dtype=torch.long), n_classes).float() * 2 - 1

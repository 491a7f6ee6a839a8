"""The progress event that long operations (training, batch prediction) report.

The CLI turns events into a tqdm bar, the job runner writes them to SQLite and
the Streamlit pages draw them; all three consume this one dataclass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

__all__ = ["ProgressEvent", "ProgressCallback"]


@dataclass
class ProgressEvent:
    """One progress report.

    ``step`` counts from 1 to ``total_steps``. ``metrics`` holds validation
    metrics on the steps where validation ran (e.g. ``{"valid_rmse": 1.02}``).
    """

    stage: str
    step: int
    total_steps: int
    loss: Optional[float] = None
    metrics: dict[str, float] = field(default_factory=dict)
    epoch: Optional[float] = None
    throughput: Optional[float] = None  # examples (or tokens, see message) per second
    eta_s: Optional[float] = None
    message: Optional[str] = None

    @property
    def is_warning(self) -> bool:
        """A message the user must see (training prefixes them "warning:"), not a status line."""
        return self.message is not None and self.message.startswith("warning:")

    @property
    def fraction(self) -> float:
        return 0.0 if self.total_steps <= 0 else min(1.0, self.step / self.total_steps)

    def to_dict(self) -> dict:
        return asdict(self)


ProgressCallback = Callable[[ProgressEvent], None]

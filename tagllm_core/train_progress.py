"""Progress events of a training stage, the warnings kept for its card, and a cancel that several
processes learn of together."""

from __future__ import annotations

import time
from typing import Any, Optional

from .exceptions import JobCancelled
from .progress import ProgressCallback, ProgressEvent

__all__ = ["StageProgress"]


class StageProgress:
    """Progress events for the callback. ``defer_cancel`` (several processes): only the main process
    reports, so only it learns of a cancel; it keeps the flag (``cancelled``) instead of raising, and
    ``distributed.stop_if_cancelled`` raises ``JobCancelled`` on every process at once."""

    def __init__(self, callback: Optional[ProgressCallback], stage: str, total: int, defer_cancel: bool = False):
        self.callback, self.stage, self.total, self.t0 = callback, stage, total, time.perf_counter()
        self.step = 0
        self.warnings: list[str] = []
        self.defer_cancel, self.cancelled = defer_cancel, False

    def _send(self, event: ProgressEvent) -> None:
        if self.cancelled or self.callback is None:
            return
        try:
            self.callback(event)
        except JobCancelled:
            if not self.defer_cancel:
                raise
            self.cancelled = True

    def __call__(self, step: int, loss: Optional[float] = None, metrics: Optional[dict[str, Any]] = None,
                 epoch: Optional[float] = None, examples: int = 0, message: Optional[str] = None) -> None:
        self.step = step
        if not self.callback:
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / step * (self.total - step) if step else None
        self._send(ProgressEvent(self.stage, step, self.total, loss, metrics or {}, epoch,
                                 examples / elapsed if elapsed > 0 and examples else None, eta, message))

    def warn(self, message: str) -> None:
        """Keep ``message`` for the card and the result, and send it at once: the job log and the
        CLI show progress messages, so a person sees it while the job runs, not only afterwards."""
        self.warnings.append(message)
        if self.callback:
            self._send(ProgressEvent(self.stage, self.step, self.total, message=f"warning: {message}"))

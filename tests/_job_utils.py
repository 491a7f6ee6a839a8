"""Helpers shared by the job tests (tests/test_jobs.py, tests/test_concurrency.py)."""

from __future__ import annotations

import time


def wait_until(pred, timeout: float = 30.0, what: str = "condition"):
    """Poll ``pred`` every 50 ms until it returns something truthy, and return that; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")

"""Resource limits on what a person can hand the engine, read from the environment on each use.

An upload within the server's size limit can still be a gzip bomb, or a table
with millions of rows that takes the shared server's memory. Each limit has a
default that fits the target machine and a variable to change it:

* ``TAGLLM_MAX_DECOMPRESSED_MB`` (default 512): the most text one file may
  hold once decompressed; gzip is decompressed in chunks and stopped there.
* ``TAGLLM_MAX_ROWS`` (default 1,000,000): the most rows of a table, or
  records of a FASTA / SMILES corpus.
* ``TAGLLM_MAX_PREDICT_ROWS`` (default 100,000): the most rows the Predict page
  takes at once (the CLI's ``predict`` streams its input in chunks and has no row limit).
* ``TAGLLM_PREDICT_JOB_ROWS`` (default 500): above this many rows the Predict
  page runs the prediction as a background job (``predict`` through the job
  runner) rather than inside the page's script run.

A value that is not a positive whole number is ignored (the default applies).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["Limits", "limits"]


@dataclass(frozen=True)
class Limits:
    max_decompressed_bytes: int
    max_rows: int
    max_predict_rows: int
    predict_job_rows: int

    @property
    def max_decompressed_mb(self) -> int:
        return self.max_decompressed_bytes >> 20


def _positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip().replace("_", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


def limits() -> Limits:
    """The limits now in force (the environment is read each time, so a test or a restart can change them)."""
    return Limits(max_decompressed_bytes=_positive_int("TAGLLM_MAX_DECOMPRESSED_MB", 512) << 20,
                  max_rows=_positive_int("TAGLLM_MAX_ROWS", 1_000_000),
                  max_predict_rows=_positive_int("TAGLLM_MAX_PREDICT_ROWS", 100_000),
                  predict_job_rows=_positive_int("TAGLLM_PREDICT_JOB_ROWS", 500))

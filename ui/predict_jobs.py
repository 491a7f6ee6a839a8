"""Predictions too big for the page's script run, as background jobs (``predict`` through the job runner).

Above ``TAGLLM_PREDICT_JOB_ROWS`` rows (``limits``) the Predict page saves its input under the uploads
folder and starts ``tagllm predict`` as a job: its process outlives the tab, progress, ETA and cancel
come from the jobs panel, and the table lands in the job's own folder (``jobs.prediction_output``),
downloadable from the panel later, after a restart too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from tagllm_core.exceptions import TagLLMError
from tagllm_core.jobs import Job, JobStore, launch
from tagllm_core.limits import limits
from tagllm_core.streaming import input_format

from .inputs import save_upload

__all__ = ["KIND", "job_threshold", "runs_as_job", "any_jobs", "save_input", "job_argv", "start"]

KIND = "predict"


def job_threshold() -> int:
    """The most rows predicted inline (``TAGLLM_PREDICT_JOB_ROWS``)."""
    return limits().predict_job_rows


def runs_as_job(n_rows: int) -> bool:
    """Whether ``n_rows`` rows are predicted as a background job rather than inline."""
    return n_rows > job_threshold()


def any_jobs(store: JobStore) -> bool:
    """Whether there is a predict job to show (the panel is left out until there is)."""
    return any(j.kind == KIND for j in store.list(limit=200))


def save_input(rows: Sequence[dict], slots: Sequence[str], upload: Optional[tuple] = None) -> tuple[Path, dict]:
    """The job's input file and its slot -> column map. ``upload``: (bytes, file name, {slot: column}) of an
    uploaded table, saved as it came (the job reads it as CSV/TSV, as the page did); else the pasted
    ``rows`` as a CSV with a column per slot (and ``name`` when the rows carry names)."""
    if upload is not None:
        data, name, columns = upload
        if input_format(name) != "csv":  # the page read it as a table: so must the job
            name = f"{name}.csv"
        return save_upload(data, name), dict(columns)
    keys = list(slots) + (["name"] if any("name" in r for r in rows) and "name" not in slots else [])
    frame = pd.DataFrame([{k: r.get(k, "") for k in keys} for r in rows], columns=keys)
    return save_upload(frame.to_csv(index=False).encode("utf-8"), "pasted.csv"), {s: s for s in slots}


def job_argv(tag_names: Sequence[str], input_path: Path, columns: dict, overrides: Optional[dict] = None,
             batch_size: int = 16) -> list[str]:
    """The ``predict`` command line of the job (the job runner adds ``--output`` and ``--resume``).
    Values ride in ``--option=value`` form, so a column starting with a dash is not taken for an option."""
    argv = ["predict"]
    for name in tag_names:
        argv += ["--tag", name]
    argv.append(f"--input={input_path}")
    argv += [f"--column={slot}={column}" for slot, column in columns.items()]
    argv += [f"--domain={slot}={tag or 'none'}" for slot, tag in (overrides or {}).items()]
    argv.append(f"--batch-size={int(batch_size)}")
    return argv


def start(store: JobStore, tag_names: Sequence[str], rows: Sequence[dict], slots: Sequence[str],
          overrides: Optional[dict] = None, batch_size: int = 16, upload: Optional[tuple] = None) -> Job:
    """Save the input, record the job and start its process; raises ``TagLLMError`` if it cannot start."""
    path, columns = save_input(rows, slots, upload)
    job = store.create(KIND, " + ".join(tag_names), job_argv(tag_names, path, columns, overrides, batch_size))
    try:
        launch(store, job)
    except OSError as err:
        raise TagLLMError(f"Could not start the prediction process: {err}") from err
    return store.get(job.id)

"""Background jobs (training; predictions too big for a page, ``predict`` jobs) whose state lives in SQLite.

Why a separate OS process: Streamlit re-runs the page script on every widget
interaction and kills script threads on a browser refresh, so a training loop
running inside the script would die (or be duplicated) the moment the user
touches the page. Training also holds the GIL and most of the CPU for minutes;
in its own process it cannot freeze the UI, and it can be killed as a unit
(its own session / process group) without taking the server down.

Why SQLite: the job state must outlive the browser tab that started it and be
visible from a second tab or a restarted Streamlit server, and both the UI and
the job process write to it. SQLite in WAL mode gives that with no server to
run: readers never block the writer, ``BEGIN IMMEDIATE`` serialises the few
read-modify-write steps (claiming a queue slot, state transitions), and each
operation opens its own short-lived connection so no connection is ever shared
between Streamlit threads or processes.

Lifecycle::

    UI:    job = store.create(kind, name, argv); launch(store, job)
    child: run_job(store, job.id, work)      # wait_for_slot -> running -> work
           work(reporter) calls reporter(ProgressEvent) each step
    UI:    store.get(job.id) / store.history(job.id) to draw progress
           cancel(store, job.id)   -> cooperative, via the reporter
           kill(store, job.id)     -> SIGTERM to the process group, if it hangs

States: ``queued -> running -> finished | failed | cancelled`` (a queued job
can also go straight to ``failed`` or ``cancelled``). Terminal states are never
overwritten, so a late writer (a reaper, a dying child) cannot resurrect or
relabel a job. The one way back is ``relaunch`` (a job that died or was
cancelled, once its process is gone): the same row, argv and checkpoint
folder, queued again.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

from . import paths
from .exceptions import JobCancelled, TagLLMError, TagNameError
from .progress import ProgressEvent

__all__ = [
    "JOB_STATES",
    "ACTIVE_STATES",
    "TERMINAL_STATES",
    "DIED_MESSAGE",
    "died_reason",
    "Job",
    "JobStore",
    "JobReporter",
    "max_concurrent_jobs",
    "prediction_output",
    "job_command",
    "launch",
    "wait_for_slot",
    "run_job",
    "cancel",
    "kill",
    "can_relaunch",
    "relaunch",
]

JOB_STATES = ("queued", "running", "finished", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
TERMINAL_STATES = ("finished", "failed", "cancelled")

DIED_MESSAGE = "the job process died unexpectedly"

# The last line of a log counts as the reason for a death only if it reads like one: the process died
# before it could record anything, so stderr's last words (python's "can't open file", a shell's
# "not found") are all there is. A job's own progress lines are never quoted as the cause.
_ERROR_LINE = re.compile(r"(?i)error|exception|can't open file|no such file|not found|permission denied")
_RELAUNCH_MARK = "--- relaunched"  # a line that relaunch() writes into the log before each new start

# Kinds of jobs that train a tag: the app's ("function-tag", "domain-tag") and the CLI command names.
_TRAINING_SQL = "(kind LIKE 'train%' OR kind LIKE '%-tag')"


def _trains_a_tag(kind: str) -> bool:
    return kind.startswith("train") or kind.endswith("-tag")

_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    kind                TEXT NOT NULL,
    name                TEXT NOT NULL,
    argv_json           TEXT NOT NULL,
    state               TEXT NOT NULL,
    created             REAL NOT NULL,
    started             REAL,
    finished            REAL,
    step                INTEGER NOT NULL DEFAULT 0,
    total_steps         INTEGER NOT NULL DEFAULT 0,
    loss                REAL,
    eta_s               REAL,
    pid                 INTEGER,
    pid_start           INTEGER,
    error               TEXT,
    result_json         TEXT,
    cancel_requested    INTEGER NOT NULL DEFAULT 0,
    cancel_requested_at REAL,
    log_path            TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id       INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    t            REAL NOT NULL,
    stage        TEXT,
    step         INTEGER,
    total_steps  INTEGER,
    loss         REAL,
    metrics_json TEXT,
    epoch        REAL,
    eta_s        REAL,
    throughput   REAL,
    message      TEXT
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, id);
"""


# --------------------------------------------------------------------------
# Job record
# --------------------------------------------------------------------------


@dataclass
class Job:
    """A snapshot of one job row; re-read it with ``JobStore.get`` to refresh."""

    id: int
    kind: str
    name: str
    argv: list[str]
    state: str
    created: float
    started: Optional[float] = None
    finished: Optional[float] = None
    step: int = 0
    total_steps: int = 0
    loss: Optional[float] = None
    eta_s: Optional[float] = None
    pid: Optional[int] = None
    error: Optional[str] = None
    result: Optional[dict[str, Any]] = None  # what the job's work returned (JSON)
    cancel_requested: bool = False
    log_path: str = ""
    cancel_requested_at: Optional[float] = None

    @property
    def progress(self) -> float:
        """Fraction done in 0..1 (1.0 once finished, whatever the last step was)."""
        if self.state == "finished":
            return 1.0
        if self.total_steps <= 0:
            return 0.0
        return max(0.0, min(1.0, self.step / self.total_steps))

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def is_done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def elapsed_s(self) -> Optional[float]:
        """Seconds spent running (so far, if still running); None before start."""
        if self.started is None:
            return None
        end = self.finished if self.finished is not None else time.time()
        return max(0.0, end - self.started)

    def log_tail(self, max_bytes: int = 20_000) -> str:
        """The end of the job's log (stdout + stderr of the job process)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - max_bytes))
                return fh.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    @classmethod
    def _from_row(cls, row: sqlite3.Row) -> "Job":
        return cls(
            id=row["id"],
            kind=row["kind"],
            name=row["name"],
            argv=json.loads(row["argv_json"]),
            state=row["state"],
            created=row["created"],
            started=row["started"],
            finished=row["finished"],
            step=row["step"],
            total_steps=row["total_steps"],
            loss=row["loss"],
            eta_s=row["eta_s"],
            pid=row["pid"],
            error=row["error"],
            result=json.loads(row["result_json"]) if row["result_json"] is not None else None,
            cancel_requested=bool(row["cancel_requested"]),
            log_path=row["log_path"],
            cancel_requested_at=row["cancel_requested_at"],
        )


def _json_default(obj):
    # Results carry numpy scalars/arrays (metrics, parity-plot data) and Paths;
    # turn them into plain JSON rather than failing a finished training run.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _dumps(obj) -> str:
    return json.dumps(obj, default=_json_default)


def _uploaded_files(argv: Sequence[str]) -> list[Path]:
    """The files in a job's argv (``--opt=PATH`` or ``PATH``) that lie under ``paths.uploads_dir()``.

    Only those: a path the user typed on the command line is their own file and is never deleted.
    """
    root = paths.uploads_dir().resolve()
    found = []
    for arg in argv:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        try:
            path = Path(value).resolve()
        except (OSError, ValueError, RuntimeError):
            continue
        if root in path.parents and path.is_file():
            found.append(path)
    return found


def _remove_uploads(argv: Sequence[str]) -> None:
    """Delete a job's uploaded files, and their per-job folder once it is empty."""
    root = paths.uploads_dir().resolve()
    for path in _uploaded_files(argv):
        with contextlib.suppress(OSError):
            path.unlink()
        folder = path.parent
        if folder != root:
            with contextlib.suppress(OSError):  # not empty (another file still in use), or gone already
                folder.rmdir()


def _exit_text(returncode: Optional[int]) -> str:
    if returncode is None:
        return ""
    if returncode < 0:
        try:
            return f" (killed by {signal.Signals(-returncode).name})"
        except ValueError:
            return f" (killed by signal {-returncode})"
    return f" (exit status {returncode})"


def _log_error(text: str) -> Optional[str]:
    """The error a job log ends with: the final line of its last Python traceback, or else its last line if
    that reads like an error (``_ERROR_LINE``); None when the log ends otherwise (progress, nothing)."""
    text = text.rsplit(_RELAUNCH_MARK, 1)[-1]  # only this attempt's lines
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        # The exception line is the traceback's last unindented line (frames and code lines are indented).
        tail = [line for line in lines[starts[-1] + 1:] if not line[:1].isspace()]
        if tail:
            return tail[-1][:300]
    last = lines[-1].strip()
    return last[:300] if _ERROR_LINE.search(last) else None


def died_reason(log_path: str | Path | None, returncode: Optional[int] = None, max_bytes: int = 8_000) -> str:
    """Why a job's process died, as far as can be told: ``DIED_MESSAGE``, its exit status when known, and
    the error its log (stdout + stderr) ends with. A process that dies before it has parsed its argv (an
    import error, a script that cannot be opened) has recorded nothing, and its stderr is all there is."""
    reason = DIED_MESSAGE + _exit_text(returncode)
    if not log_path:
        return reason
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            error = _log_error(fh.read().decode("utf-8", errors="replace"))
    except OSError:
        return reason
    return f"{reason}; its log ends with: {error}" if error else reason


# --------------------------------------------------------------------------
# Process liveness
# --------------------------------------------------------------------------


def _proc_stat(pid: int) -> Optional[list[str]]:
    """Fields of /proc/<pid>/stat after the command name, or None if unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("ascii", errors="replace")
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or ')'.
    return raw[raw.rfind(")") + 2 :].split()


def _proc_start_time(pid: int) -> Optional[int]:
    """Process start time in clock ticks since boot (Linux), to detect pid reuse."""
    fields = _proc_stat(pid)
    if fields is None or len(fields) < 20:
        return None
    try:
        return int(fields[19])  # stat field 22; fields[0] is field 3 (state)
    except ValueError:
        return None


def _pid_alive(pid: Optional[int], start: Optional[int] = None) -> bool:
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # The pid exists but belongs to another user, so it cannot be our job
        # process (which runs as us): the pid was recycled.
        return False
    fields = _proc_stat(pid)
    if fields is None:
        return True  # no /proc (macOS): signal 0 is the best we have
    if fields[0] in ("Z", "X"):
        # A zombie has exited; it only waits for its parent to collect it.
        return False
    if start is not None and len(fields) >= 20 and fields[19] != str(start):
        return False  # the pid was recycled by an unrelated process
    return True


# --------------------------------------------------------------------------
# Store
# --------------------------------------------------------------------------


class JobStore:
    """Jobs and their progress history in one SQLite file, shared by processes.

    Every method opens and closes its own connection, so one ``JobStore`` can
    be used from any thread, and any number of them (tabs, job processes) can
    point at the same file.
    """

    def __init__(self, db_path: Path | str | None = None, log_dir: Path | str | None = None):
        self.db_path = Path(db_path) if db_path is not None else paths.jobs_db_path()
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        # Logs live beside the database (for the default database that is
        # data_dir()/job_logs) so two databases never share "1.log".
        self.log_dir = Path(log_dir) if log_dir is not None else self.db_path.parent / "job_logs"
        self._init_schema()

    # -- connection plumbing -------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN ourselves, so reads are not
        # wrapped in implicit transactions that would pin an old WAL snapshot.
        conn = sqlite3.connect(str(self.db_path), timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fsync per checkpoint
        return conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction: takes the write lock up front, so
        a read-then-write cannot be overtaken by another writer in between."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _init_schema(self) -> None:
        # journal_mode is persistent in the file and cannot change inside a
        # transaction, hence its own statement before the schema transaction.
        with self._read() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
        with self._write() as conn:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    @staticmethod
    def _row(conn: sqlite3.Connection, job_id: int) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"no job with id {job_id}")
        return row

    def _transition(
        self, job_id: int, to_state: str, from_states: Sequence[str], **cols
    ) -> bool:
        """Move a job to ``to_state`` only if it is in one of ``from_states``."""
        sets = ["state=?"] + [f"{c}=?" for c in cols]
        marks = ",".join("?" * len(from_states))
        with self._write() as conn:
            self._row(conn, job_id)  # KeyError for unknown ids
            cur = conn.execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE id=? AND state IN ({marks})",
                (to_state, *cols.values(), job_id, *from_states),
            )
            return cur.rowcount == 1

    # -- create / read -------------------------------------------------------

    def create(self, kind: str, name: str, argv: Sequence[str]) -> Job:
        """Insert a queued job; it does nothing until someone ``launch``es it."""
        argv = [str(a) for a in argv]
        with self._write() as conn:
            cur = conn.execute(
                "INSERT INTO jobs (kind, name, argv_json, state, created) VALUES (?,?,?,?,?)",
                (kind, name, json.dumps(argv), "queued", time.time()),
            )
            job_id = cur.lastrowid
            assert job_id is not None  # set by every INSERT
            log_path = str(self.log_dir / f"{job_id}.log")
            conn.execute("UPDATE jobs SET log_path=? WHERE id=?", (log_path, job_id))
            return Job._from_row(self._row(conn, job_id))

    def get(self, job_id: int) -> Job:
        """The job's current state (reaping it first if its process vanished)."""
        self.reap(job_ids=[job_id])
        with self._read() as conn:
            return Job._from_row(self._row(conn, job_id))

    def list(self, limit: int = 50, states: Optional[Iterable[str]] = None) -> list[Job]:
        """Newest first, optionally only jobs in ``states``."""
        self.reap()
        sql = "SELECT * FROM jobs"
        args: list[Union[str, int]] = []
        if states is not None:
            states = tuple(states)
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args.extend(states)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(int(limit))
        with self._read() as conn:
            return [Job._from_row(r) for r in conn.execute(sql, args)]

    def active_name_conflict(self, name: str) -> bool:
        """True if a queued or running job already trains a tag called ``name``."""
        self.reap()
        with self._read() as conn:
            row = conn.execute(
                "SELECT 1 FROM jobs WHERE name=? AND state IN ('queued','running') LIMIT 1",
                (name,),
            ).fetchone()
            return row is not None

    def name_taken_by(self, job_id: int) -> Optional[int]:
        """The id of an earlier training job, still queued or running, that trains a tag of the same name
        as training job ``job_id`` (None if there is none, or ``job_id`` trains nothing). The earliest job
        keeps the name: two sessions can pass the Train page's name check at the same moment, and the
        later job must learn that before it trains for minutes, not when it saves."""
        self.reap()
        with self._read() as conn:
            row = self._row(conn, job_id)
            if not _trains_a_tag(row["kind"]):
                return None
            other = conn.execute(
                f"SELECT id FROM jobs WHERE name=? AND id<? AND {_TRAINING_SQL}"
                " AND state IN ('queued','running') ORDER BY id LIMIT 1",
                (row["name"], job_id),
            ).fetchone()
            return None if other is None else int(other["id"])

    def queue_position(self, job_id: int) -> Optional[int]:
        """How many launched jobs are queued ahead of this one (None if not queued)."""
        with self._read() as conn:
            row = self._row(conn, job_id)
            if row["state"] != "queued":
                return None
            (ahead,) = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE state='queued' AND pid IS NOT NULL AND id<?",
                (job_id,),
            ).fetchone()
            return int(ahead)

    # -- progress ------------------------------------------------------------

    def record(self, job_id: int, ev: ProgressEvent) -> bool:
        """Append ``ev`` to the history and update the job's summary columns.

        Returns whether a cancel was requested, read in the same transaction, so
        a reporter needs one round trip per step, not two.
        """
        now = time.time()
        with self._write() as conn:
            row = self._row(conn, job_id)
            conn.execute(
                "INSERT INTO events (job_id, t, stage, step, total_steps, loss, metrics_json,"
                " epoch, eta_s, throughput, message) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    job_id,
                    now,
                    ev.stage,
                    ev.step,
                    ev.total_steps,
                    ev.loss,
                    _dumps(ev.metrics or {}),
                    ev.epoch,
                    ev.eta_s,
                    ev.throughput,
                    ev.message,
                ),
            )
            # A step without a loss (e.g. a validation-only event) keeps the last loss.
            conn.execute(
                "UPDATE jobs SET step=?, total_steps=?, loss=COALESCE(?, loss), eta_s=? WHERE id=?",
                (ev.step, ev.total_steps, ev.loss, ev.eta_s, job_id),
            )
            return bool(row["cancel_requested"])

    # ``builtins.list``: in the class body from here on, ``list`` names the method above
    def history(self, job_id: int, after_event: int = 0) -> builtins.list[dict]:
        """The job's events in order; ``after_event`` (an event ``id``) lets a
        poller fetch only what is new."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM events WHERE job_id=? AND id>? ORDER BY id", (job_id, after_event)
            ).fetchall()
        return [
            {
                "id": r["id"],
                "t": r["t"],
                "stage": r["stage"],
                "step": r["step"],
                "total_steps": r["total_steps"],
                "loss": r["loss"],
                "metrics": json.loads(r["metrics_json"]) if r["metrics_json"] else {},
                "epoch": r["epoch"],
                "eta_s": r["eta_s"],
                "throughput": r["throughput"],
                "message": r["message"],
            }
            for r in rows
        ]

    # -- state transitions ---------------------------------------------------

    def set_pid(self, job_id: int, pid: int) -> None:
        """Remember which process serves this job (still queued or running)."""
        start = _proc_start_time(pid)
        with self._write() as conn:
            self._row(conn, job_id)
            conn.execute(
                "UPDATE jobs SET pid=?, pid_start=? WHERE id=? AND state IN ('queued','running')",
                (pid, start, job_id),
            )

    def set_running(self, job_id: int, pid: int) -> bool:
        """queued -> running, unconditionally on the queue (see ``try_start``)."""
        return self._transition(
            job_id, "running", ("queued",), pid=pid, pid_start=_proc_start_time(pid),
            started=time.time(),
        )

    def try_start(self, job_id: int, pid: int, max_concurrent: int) -> bool:
        """Atomically claim a run slot: succeeds only if fewer than
        ``max_concurrent`` jobs run and this is the oldest launched queued job."""
        with self._write() as conn:
            row = self._row(conn, job_id)
            if row["state"] != "queued" or row["cancel_requested"]:
                return False
            (running,) = conn.execute("SELECT COUNT(*) FROM jobs WHERE state='running'").fetchone()
            if running >= max_concurrent:
                return False
            # Jobs that were created but never launched (no pid) must not block
            # the queue forever, so only launched ones count as ahead of us.
            first = conn.execute(
                "SELECT id FROM jobs WHERE state='queued' AND cancel_requested=0"
                " AND (pid IS NOT NULL OR id=?) ORDER BY id LIMIT 1",
                (job_id,),
            ).fetchone()
            if first is None or first["id"] != job_id:
                return False
            conn.execute(
                "UPDATE jobs SET state='running', started=?, pid=?, pid_start=? WHERE id=?",
                (time.time(), pid, _proc_start_time(pid), job_id),
            )
            return True

    def finish(self, job_id: int, result: dict) -> bool:
        return self._transition(
            job_id, "finished", ("running",), result_json=_dumps(result), finished=time.time()
        )

    def fail(self, job_id: int, error: str) -> bool:
        return self._transition(
            job_id, "failed", ACTIVE_STATES, error=str(error), finished=time.time()
        )

    def request_cancel(self, job_id: int) -> bool:
        """Ask the job to stop at its next progress report. False if already over."""
        with self._write() as conn:
            self._row(conn, job_id)
            cur = conn.execute(
                "UPDATE jobs SET cancel_requested=1,"
                " cancel_requested_at=COALESCE(cancel_requested_at, ?)"
                " WHERE id=? AND state IN ('queued','running')",
                (time.time(), job_id),
            )
            return cur.rowcount == 1

    def cancel_requested(self, job_id: int) -> bool:
        with self._read() as conn:
            return bool(self._row(conn, job_id)["cancel_requested"])

    def mark_cancelled(self, job_id: int, from_states: Sequence[str] = ACTIVE_STATES) -> bool:
        return self._transition(job_id, "cancelled", tuple(from_states), finished=time.time())

    def delete(self, job_id: int) -> bool:
        """Forget a finished/failed/cancelled job, its history, its log and the files the app uploaded for it."""
        with self._write() as conn:
            row = self._row(conn, job_id)
            if row["state"] not in TERMINAL_STATES:
                return False
            conn.execute("DELETE FROM events WHERE job_id=?", (job_id,))
            conn.execute("DELETE FROM jobs WHERE id=?", (job_id,))
            log_path = row["log_path"]
            argv = json.loads(row["argv_json"])
        if log_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(log_path)
        _remove_uploads(argv)
        shutil.rmtree(self.log_dir / f"{job_id}-checkpoint", ignore_errors=True)
        shutil.rmtree(prediction_output(self, job_id).parent, ignore_errors=True)
        return True

    # -- crash detection -----------------------------------------------------

    def reap(self, job_ids: Optional[Iterable[int]] = None,
             returncodes: Optional[dict[int, int]] = None) -> builtins.list[int]:
        """Fail active jobs whose process is gone (killed, OOM, crashed before
        it could report). Returns the ids it failed.

        The recorded reason is ``died_reason``: ``DIED_MESSAGE``, the exit status
        where ``returncodes`` (job id -> the status of a process the caller
        waited for, as ``launch``'s waiter does) knows it, and the error the
        job's log ends with, if any. Cheap on the common path: a plain read and
        a /proc lookup per active job; the write lock is only taken when a dead
        process was found.
        """
        sql = ("SELECT id, pid, pid_start, log_path FROM jobs"
               " WHERE state IN ('queued','running') AND pid IS NOT NULL")
        args: list = []
        if job_ids is not None:
            ids = [int(i) for i in job_ids]
            if not ids:
                return []
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            args.extend(ids)
        with self._read() as conn:
            suspects = [r for r in conn.execute(sql, args) if not _pid_alive(r["pid"], r["pid_start"])]
        if not suspects:
            return []
        codes = returncodes or {}
        # Read the logs before taking the write lock: file reads have no business holding it.
        reasons = {r["id"]: died_reason(r["log_path"], codes.get(r["id"])) for r in suspects}
        reaped = []
        now = time.time()
        with self._write() as conn:
            for r in suspects:
                # Re-check under the lock: the process may have written its final
                # state (and then exited) between our read and now.
                cur = conn.execute(
                    "UPDATE jobs SET state='failed', error=?, finished=?"
                    " WHERE id=? AND state IN ('queued','running') AND pid=?",
                    (reasons[r["id"]], now, r["id"], r["pid"]),
                )
                if cur.rowcount:
                    reaped.append(r["id"])
        for job_id in reaped:
            # A process killed mid-write leaves atomic_write's temporary file in the job's own folders; it
            # is dead, so nothing writes there now (and a live writer's file is never taken: see paths).
            for folder in (self.log_dir / f"{job_id}-checkpoint", prediction_output(self, job_id).parent):
                paths.remove_stale_temp_files(folder, min_age_s=0)
        return reaped

    def requeue(self, job_id: int) -> bool:
        """failed / cancelled -> queued, as a new start of the same job: progress, events, result, error and
        cancel flags cleared; argv, name, log and folders kept. False if the job is not over, or its process
        is still alive (a cancelled job still unwinding would otherwise record its end over the new start)."""
        with self._write() as conn:
            row = self._row(conn, job_id)
            if row["state"] not in ("failed", "cancelled") or _pid_alive(row["pid"], row["pid_start"]):
                return False
            conn.execute("DELETE FROM events WHERE job_id=?", (job_id,))
            conn.execute(
                "UPDATE jobs SET state='queued', started=NULL, finished=NULL, step=0, total_steps=0, loss=NULL,"
                " eta_s=NULL, pid=NULL, pid_start=NULL, error=NULL, result_json=NULL, cancel_requested=0,"
                " cancel_requested_at=NULL WHERE id=?",
                (job_id,),
            )
            return True


# --------------------------------------------------------------------------
# Job-process side
# --------------------------------------------------------------------------


class JobReporter:
    """The progress callback handed to training inside the job process.

    Writes events to the store (throttled, so a fast loop doesn't spend its
    time in fsync) and turns a cancel request into ``JobCancelled`` so the
    training loop unwinds through its own cleanup and leaves no tag behind.
    """

    def __init__(self, store: JobStore, job_id: int, min_interval: float = 0.25):
        self.store = store
        self.job_id = job_id
        self.min_interval = min_interval
        self._last_write = float("-inf")

    def __call__(self, ev: ProgressEvent) -> None:
        now = time.monotonic()
        if ev.is_warning:  # the job log (this process's stdout) keeps it, as the CLI prints it
            print(f"job {self.job_id}: {ev.message}", flush=True)
        important = ev.is_warning or bool(ev.metrics) or (ev.total_steps > 0 and ev.step >= ev.total_steps)
        if not important and now - self._last_write < self.min_interval:
            return
        self._last_write = now
        if self.store.record(self.job_id, ev):
            raise JobCancelled("the job was cancelled")


def max_concurrent_jobs() -> int:
    """How many jobs may run at once: ``$TAGLLM_MAX_JOBS``, default 1 (the
    target machine has 2 cores, and one training run already uses both)."""
    raw = os.environ.get("TAGLLM_MAX_JOBS", "").strip()
    try:
        return max(1, int(raw)) if raw else 1
    except ValueError:
        return 1


def wait_for_slot(
    store: JobStore,
    job_id: int,
    poll: float = 0.5,
    max_concurrent: Optional[int] = None,
) -> None:
    """Block until this job may run, then mark it running (atomically).

    Raises ``JobCancelled`` if the job is cancelled while waiting.
    """
    limit = max_concurrent if max_concurrent is not None else max_concurrent_jobs()
    pid = os.getpid()
    store.set_pid(job_id, pid)  # so the reaper can tell if we die while queued
    while True:
        # Free slots held by jobs whose process died, and drop dead queued
        # jobs that would otherwise block the head of the queue.
        store.reap()
        if store.try_start(job_id, pid, limit):
            return
        job = store.get(job_id)
        if job.cancel_requested or job.state == "cancelled":
            store.mark_cancelled(job_id)
            raise JobCancelled("the job was cancelled while queued")
        if job.state != "queued":
            raise RuntimeError(f"job {job_id} is {job.state}; it cannot be started")
        time.sleep(poll)


def run_job(
    store: JobStore,
    job_id: int,
    work: Callable[[JobReporter], dict],
    poll: float = 0.5,
    max_concurrent: Optional[int] = None,
) -> str:
    """Run ``work`` as job ``job_id`` in this (job) process; returns the final state.

    ``work`` does all the loading (backbone, data) itself, after the slot is
    claimed: a queued job holds no model in memory and its loading errors are
    recorded like any other.

    Never raises for the work's own errors: they end up in the job row, because
    nobody is around to catch them. A user error (``TagLLMError``) is recorded
    and logged as its message alone; anything else is a bug and keeps its
    traceback in the log (this process's stdout). Ctrl-C / SystemExit still
    propagate after the job is marked, so the process exits as asked.
    """
    try:
        wait_for_slot(store, job_id, poll=poll, max_concurrent=max_concurrent)
        print(f"job {job_id}: running (pid {os.getpid()})", flush=True)
        earlier = store.name_taken_by(job_id)
        if earlier is not None:  # checked again, atomically, when the tag is saved (TagLibrary.save)
            name = store.get(job_id).name
            raise TagNameError(f"The name <{name}> is taken: job #{earlier} is already training a tag called "
                               f"<{name}>. Choose another name.")
        result = work(JobReporter(store, job_id))
        store.finish(job_id, result if result is not None else {})
    except JobCancelled:
        store.mark_cancelled(job_id)
        print(f"job {job_id}: cancelled", flush=True)
    except TagLLMError as e:  # written for the user: the message is the whole story
        print(f"job {job_id}: error: {e}", flush=True)
        store.fail(job_id, str(e))
    except Exception as e:  # the job process's top level: record, don't crash
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        store.fail(job_id, f"{type(e).__name__}: {e}")
    except BaseException as e:
        store.fail(job_id, f"interrupted ({type(e).__name__})")
        raise
    return store.get(job_id).state


# --------------------------------------------------------------------------
# UI side
# --------------------------------------------------------------------------


def prediction_output(store: JobStore, job_id: int) -> Path:
    """Where a predict job writes its table: a folder of its own beside the logs, found again from any
    store on the database (after an app restart), so its results can be downloaded later."""
    return store.log_dir / f"{job_id}-predict" / "predictions.csv"


def job_command(store: JobStore, job: Job, python: str = sys.executable) -> list[str]:
    """The command line that runs ``job`` through the CLI."""
    # A function-tag job checkpoints each epoch in a folder of its own, the same on every launch: a
    # job process started again (after the app or the machine restarted) resumes where it stopped.
    folder = store.log_dir / f"{job.id}-checkpoint"
    ckpt = [f"--checkpoint-dir={folder}"] if job.argv[:1] == ["train-function-tag"] else []
    if job.argv[:1] == ["predict"]:  # likewise a predict job resumes its table, keeping the rows it finished
        ckpt = [f"--output={prediction_output(store, job.id)}", "--resume"]
    return [
        python, "-m", "tagllm_core", *job.argv, *ckpt,
        "--job-db", str(store.db_path), "--job-id", str(job.id),
    ]


def launch(
    store: JobStore,
    job: Job,
    python: str = sys.executable,
    cwd: Path | str | None = None,
    cmd: Optional[Sequence[str]] = None,
    env: Optional[dict] = None,
) -> int:
    """Start the job's process and return its pid without waiting.

    ``cmd`` replaces the default ``python -m tagllm_core ...`` command line
    (tests, other entry points); it must itself pass the db path and job id.
    """
    argv = list(cmd) if cmd is not None else job_command(store, job, python)
    child_env = dict(os.environ if env is None else env)
    # Make the child import the same tagllm_core as this process, even when
    # it is not installed and the server was started from another directory.
    root = str(paths.REPO_ROOT)
    pp = child_env.get("PYTHONPATH", "")
    if root not in pp.split(os.pathsep):
        child_env["PYTHONPATH"] = root + (os.pathsep + pp if pp else "")
    child_env.setdefault("PYTHONUNBUFFERED", "1")  # so the log shows progress live

    log_path = Path(job.log_path or store.log_dir / f"{job.id}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Appending: a relaunched job keeps the log of its earlier attempts (a new job has no log yet).
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=child_env,
                # Own session: a Ctrl-C or restart of the Streamlit server does
                # not hit the job, and kill() can signal the job's whole group
                # (data-loader workers included) without touching the server.
                start_new_session=True,
            )
    except OSError as e:
        store.fail(job.id, f"could not start the job process: {e}")
        raise
    store.set_pid(job.id, proc.pid)
    # Collect the exit status in the background so a finished child does not
    # linger as a zombie of the (long-lived) Streamlit server, and so a child
    # that died without recording its end is reaped at once, with its status.
    threading.Thread(target=_wait_and_reap, args=(store, job.id, proc), name=f"tagllm-job-{job.id}-waiter",
                     daemon=True).start()
    return proc.pid


def _wait_and_reap(store: JobStore, job_id: int, proc: subprocess.Popen) -> None:
    code = proc.wait()
    # A job that recorded its own end is left alone (reap only touches active jobs). The store may be gone
    # by now (a test's temporary folder): nothing to record then.
    with contextlib.suppress(sqlite3.Error, OSError):
        store.reap(job_ids=[job_id], returncodes={job_id: code})


def can_relaunch(job: Job) -> bool:
    """Whether ``relaunch`` takes this job: an app job (it has a command line) that was cancelled, or whose
    process died or was interrupted. A job that failed with its own error would only fail again."""
    if not job.argv:
        return False
    died = job.state == "failed" and (job.error or "").startswith((DIED_MESSAGE, "interrupted"))
    return died or job.state == "cancelled"


def relaunch(store: JobStore, job_id: int, python: str = sys.executable, cwd: Path | str | None = None,
             cmd: Optional[Sequence[str]] = None) -> Job:
    """Start a cancelled or died job again: the same row, argv and command line (``job_command``; ``cmd`` as
    in ``launch``), so a function-tag job resumes from its checkpoint folder and a predict job keeps the
    rows it wrote; it waits for a slot like any job. Raises ``TagLLMError`` (a sentence for the user) when
    it cannot."""
    job = store.get(job_id)
    if not can_relaunch(job):
        raise TagLLMError(f"Job #{job_id} is {job.state}; only a cancelled job, or one whose process died, "
                          f"can be relaunched.")
    if _trains_a_tag(job.kind) and any(j.name == job.name and _trains_a_tag(j.kind)
                                       for j in store.list(limit=10_000, states=ACTIVE_STATES)):
        raise TagLLMError(f"Another job is training <{job.name}> right now; wait for it to end.")
    if not store.requeue(job_id):
        raise TagLLMError(f"Job #{job_id}'s process is still stopping; try again in a few seconds.")
    job = store.get(job_id)
    with contextlib.suppress(OSError):
        with open(job.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n{_RELAUNCH_MARK} {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n")
    try:
        launch(store, job, python=python, cwd=cwd, cmd=cmd)
    except OSError as err:  # launch has failed the job with the reason
        raise TagLLMError(f"Could not start the job process: {err}") from err
    return store.get(job_id)


def cancel(store: JobStore, job_id: int) -> Job:
    """Ask a job to stop. A queued job is cancelled at once; a running one stops
    at its next progress report (use ``kill`` if it does not within a grace
    period, e.g. while it is still loading the model)."""
    store.request_cancel(job_id)
    # Only if still queued: if the child claimed its slot meanwhile, its
    # reporter sees the flag instead.
    store.mark_cancelled(job_id, from_states=("queued",))
    return store.get(job_id)


def kill(store: JobStore, job_id: int, sig: int = signal.SIGTERM) -> Job:
    """Stop a job's process group by signal and mark the job cancelled."""
    with store._read() as conn:
        row = store._row(conn, job_id)
        pid, pid_start, state = row["pid"], row["pid_start"], row["state"]
    if state not in ACTIVE_STATES:
        return store.get(job_id)
    store.request_cancel(job_id)
    # Mark first, so the reaper does not call the dead process a crash.
    store.mark_cancelled(job_id)
    # Only signal if the pid is still our job process, not a recycled pid.
    if pid and _pid_alive(pid, pid_start):
        # It may exit on its own between the check and the signal.
        with contextlib.suppress(ProcessLookupError):
            # launch() makes the job a group leader, so the group takes its
            # workers along; a job started by hand from a shell is signalled
            # alone rather than taking the shell's group (or ours) with it.
            if os.getpgid(pid) == pid and pid != os.getpgrp():
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
    return store.get(job_id)

"""Tests for tagllm_core.jobs: the SQLite job store and job processes.

Job processes are ``tests/_fake_job.py`` (a stand-in for the CLI), so these
tests need neither a model nor ``python -m tagllm_core``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tagllm_core import jobs  # noqa: E402
from tagllm_core.exceptions import JobCancelled, TagLLMError  # noqa: E402
from tagllm_core.jobs import (  # noqa: E402
    DIED_MESSAGE,
    JOB_STATES,
    JobReporter,
    JobStore,
    cancel,
    kill,
    launch,
    run_job,
)
from tagllm_core.progress import ProgressEvent  # noqa: E402

from _job_utils import wait_until  # noqa: E402

FAKE = str(Path(__file__).resolve().parent / "_fake_job.py")
TIMEOUT = 30.0


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("TAGLLM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TAGLLM_MAX_JOBS", "1")
    return JobStore(tmp_path / "db" / "jobs.sqlite")


@pytest.fixture
def spawn(store):
    """Launch the fake job script for a job; kills leftovers at teardown."""
    pids: list[int] = []

    def _spawn(job, *extra: str) -> int:
        cmd = [sys.executable, FAKE, str(store.db_path), str(job.id), *extra]
        pid = launch(store, job, cmd=cmd)
        pids.append(pid)
        return pid

    yield _spawn
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def ev(step, total=10, **kw) -> ProgressEvent:
    return ProgressEvent(stage="train", step=step, total_steps=total, **kw)


def done(store, job_id):
    job = store.get(job_id)
    return job if job.is_done else None


# -- store basics -----------------------------------------------------------


def test_create_get_list_round_trip(store):
    a = store.create("train-function-tag", "solubility", ["train", "--tag", "solubility"])
    b = store.create("train-domain-tag", "protein", ["train-domain", "--x", "1"])
    assert a.state == "queued" and a.id != b.id
    assert a.argv == ["train", "--tag", "solubility"]
    assert a.log_path.endswith(f"{a.id}.log")
    assert Path(a.log_path).parent == store.db_path.parent / "job_logs"

    got = store.get(a.id)
    assert got == a
    assert got.progress == 0.0 and got.result is None and not got.cancel_requested

    assert [j.id for j in store.list()] == [b.id, a.id]  # newest first
    assert [j.id for j in store.list(limit=1)] == [b.id]
    assert [j.id for j in store.list(states=["queued"])] == [b.id, a.id]
    assert store.list(states=["running"]) == []
    with pytest.raises(KeyError):
        store.get(9999)


def test_default_db_path_follows_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TAGLLM_HOME", str(tmp_path / "nested" / "home"))
    s = JobStore()
    assert s.db_path == tmp_path / "nested" / "home" / "jobs.sqlite"
    assert s.db_path.exists()
    assert s.create("k", "n", []).log_path == str(tmp_path / "nested" / "home" / "job_logs" / "1.log")


def test_record_and_history(store):
    job = store.create("train-function-tag", "t", [])
    store.set_running(job.id, os.getpid())
    store.record(job.id, ev(1, loss=2.0, eta_s=9.0, throughput=3.5))
    store.record(job.id, ev(2, loss=None, metrics={"valid_rmse": 1.25}, message="validated"))

    hist = store.history(job.id)
    assert [h["step"] for h in hist] == [1, 2]
    assert hist[0]["loss"] == 2.0 and hist[0]["throughput"] == 3.5 and hist[0]["metrics"] == {}
    assert hist[1]["metrics"] == {"valid_rmse": 1.25} and hist[1]["message"] == "validated"
    assert store.history(job.id, after_event=hist[0]["id"]) == hist[1:]

    j = store.get(job.id)
    assert (j.step, j.total_steps) == (2, 10)
    assert j.loss == 2.0  # an event without a loss keeps the last one
    assert j.progress == pytest.approx(0.2)


def test_state_transitions_do_not_overwrite_terminal_states(store):
    job = store.create("k", "n", [])
    assert store.set_running(job.id, os.getpid())
    assert store.finish(job.id, {"rmse": 0.5, "path": Path("/x"), "t": (1, 2)})
    assert not store.fail(job.id, "late error")
    assert not store.mark_cancelled(job.id)
    j = store.get(job.id)
    assert j.state == "finished" and j.error is None and j.progress == 1.0
    assert j.result == {"rmse": 0.5, "path": "/x", "t": [1, 2]}
    assert j.started is not None and j.finished >= j.started
    assert set(JOB_STATES) == {"queued", "running", "finished", "failed", "cancelled"}


def test_result_with_numpy_values_is_stored():
    np = pytest.importorskip("numpy")
    assert jobs._dumps({"a": np.float32(1.5), "b": np.arange(3)}) == '{"a": 1.5, "b": [0, 1, 2]}'


def test_two_stores_see_the_same_state(store):
    other_tab = JobStore(store.db_path)
    job = store.create("k", "shared", [])
    assert other_tab.get(job.id).state == "queued"
    other_tab.request_cancel(job.id)
    assert store.cancel_requested(job.id)
    assert store.get(job.id).cancel_requested_at is not None
    assert other_tab.active_name_conflict("shared")
    store.mark_cancelled(job.id)
    assert other_tab.get(job.id).state == "cancelled"
    assert not other_tab.active_name_conflict("shared")


def test_active_name_conflict(store):
    assert not store.active_name_conflict("logp")
    job = store.create("k", "logp", [])
    assert store.active_name_conflict("logp")
    assert not store.active_name_conflict("other")
    store.set_running(job.id, os.getpid())
    assert store.active_name_conflict("logp")
    store.fail(job.id, "x")
    assert not store.active_name_conflict("logp")


def test_delete_only_terminal_jobs(store):
    job = store.create("k", "n", [])
    assert not store.delete(job.id)
    store.record(job.id, ev(1))
    store.mark_cancelled(job.id)
    assert store.delete(job.id)
    assert store.history(job.id) == []
    with pytest.raises(KeyError):
        store.get(job.id)


# -- reporter ---------------------------------------------------------------


def test_reporter_raises_after_cancel_request(store):
    job = store.create("k", "n", [])
    store.set_running(job.id, os.getpid())
    report = JobReporter(store, job.id, min_interval=0.0)
    report(ev(1, loss=1.0))
    store.request_cancel(job.id)
    with pytest.raises(JobCancelled):
        report(ev(2, loss=0.9))


def test_reporter_throttles_but_keeps_metrics_and_last_step(store):
    job = store.create("k", "n", [])
    store.set_running(job.id, os.getpid())
    report = JobReporter(store, job.id, min_interval=3600)
    for step in range(1, 101):
        metrics = {"valid_rmse": 1.0} if step == 50 else {}
        report(ev(step, total=100, loss=1.0, metrics=metrics))
    assert [h["step"] for h in store.history(job.id)] == [1, 50, 100]
    assert store.get(job.id).step == 100


# -- reaping ----------------------------------------------------------------


def test_reap_marks_dead_running_job_failed(store):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    job = store.create("k", "n", [])
    store.set_running(job.id, proc.pid)
    j = store.get(job.id)  # get() reaps
    assert j.state == "failed" and j.error == DIED_MESSAGE


def test_reap_keeps_live_jobs_and_detects_zombies(store):
    live = store.create("k", "live", [])
    store.set_running(live.id, os.getpid())
    # A child that exited but was not waited for is a zombie: still in the
    # process table, yet dead.
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    zombie = store.create("k", "zombie", [])
    store.set_running(zombie.id, proc.pid)
    try:
        wait_until(lambda: store.get(zombie.id).state == "failed", what="zombie reaped")
    finally:
        proc.wait()
    assert store.reap() == []
    assert store.get(live.id).state == "running"


def test_reap_fails_queued_job_whose_process_died(store):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    job = store.create("k", "n", [])
    store.set_pid(job.id, proc.pid)
    assert [j.state for j in store.list()] == ["failed"]


def test_a_job_that_dies_before_parsing_its_argv_is_reaped_with_its_error(store, spawn):
    """An import error (or anything before the job records itself) used to end as a bare "died"."""
    job = store.create("function-tag", "Early", ["train-function-tag", "--name=Early"])
    pid = launch(store, job, cmd=[sys.executable, "-c", "import nonexistent_module"])
    j = wait_until(lambda: done(store, job.id), what="the death to be recorded")
    assert j.state == "failed" and j.error.startswith(DIED_MESSAGE), j.error
    assert "ModuleNotFoundError: No module named 'nonexistent_module'" in j.error
    wait_until(lambda: not jobs._pid_alive(pid), what="the process to be collected")
    # launch's waiter records the exit status when it reaps first; the error is there either way
    assert "exit status 1" in j.error or j.error.endswith("'nonexistent_module'")


def test_died_reason_quotes_an_error_not_progress(tmp_path):
    log = tmp_path / "job.log"
    assert jobs.died_reason(None) == DIED_MESSAGE and jobs.died_reason(tmp_path / "none.log") == DIED_MESSAGE
    log.write_text("job 3: running (pid 12)\n")
    assert jobs.died_reason(log, -9) == DIED_MESSAGE + " (killed by SIGKILL)"
    log.write_text("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n    import torch\n"
                   "OSError: libcuda.so: cannot open shared object file\n\n")
    assert jobs.died_reason(log, 1) == (DIED_MESSAGE + " (exit status 1); its log ends with: "
                                        "OSError: libcuda.so: cannot open shared object file")
    log.write_text("/usr/bin/python3: can't open file '/gone/tagllm_core': [Errno 2] No such file or directory\n")
    assert "can't open file" in jobs.died_reason(log)
    # after a relaunch only the new attempt's lines count
    with open(log, "a") as fh:
        fh.write("\n--- relaunched 2026-01-01 00:00:00 ---\njob 3: running (pid 13)\n")
    assert jobs.died_reason(log) == DIED_MESSAGE


def test_reap_after_a_restart_reads_the_reason_from_the_log(store):
    """No waiter after an app restart: the reaper alone finds the death, and the log still tells why."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    job = store.create("k", "n", ["predict"])
    Path(job.log_path).parent.mkdir(parents=True, exist_ok=True)
    Path(job.log_path).write_text("Traceback (most recent call last):\nImportError: cannot import name 'x'\n")
    store.set_running(job.id, proc.pid)
    assert store.get(job.id).error == f"{DIED_MESSAGE}; its log ends with: ImportError: cannot import name 'x'"


def test_reaping_a_dead_job_removes_the_temp_files_it_left_in_its_folders(store):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    job = store.create("function-tag", "T", ["train-function-tag"])
    ckpt = store.log_dir / f"{job.id}-checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "checkpoint.safetensors").write_bytes(b"whole")
    (ckpt / ".checkpoint.safetensors.abc123.tmp").write_bytes(b"half")
    store.set_running(job.id, proc.pid)
    assert store.reap() == [job.id]
    assert [p.name for p in ckpt.iterdir()] == ["checkpoint.safetensors"]


# -- relaunch -------------------------------------------------------------------


def test_a_cancelled_job_relaunches_as_the_same_job(store, spawn):
    job = store.create("function-tag", "Again", ["train-function-tag", "--name=Again"])
    pid = spawn(job, "--steps", "100000", "--sleep", "0.01")
    wait_until(lambda: store.get(job.id).step > 0, what="job to report progress")
    assert not jobs.can_relaunch(store.get(job.id))  # running
    kill(store, job.id)
    wait_until(lambda: not jobs._pid_alive(pid), what="the process to die")
    cancelled = store.get(job.id)
    assert cancelled.state == "cancelled" and jobs.can_relaunch(cancelled) and store.history(job.id)
    cmd = [sys.executable, FAKE, str(store.db_path), str(job.id), "--steps", "3"]
    again = jobs.relaunch(store, job.id, cmd=cmd)
    assert again.id == job.id and again.argv == job.argv and again.state in ("queued", "running")
    assert not again.cancel_requested and again.error is None
    j = wait_until(lambda: done(store, job.id), what="the relaunched job to finish")
    assert j.state == "finished", j.error
    steps = [h["step"] for h in store.history(job.id)]
    assert steps[0] == 1 and steps[-1] == 3 and max(steps) == 3  # the first attempt's progress is gone
    log = Path(j.log_path).read_text()
    assert log.count("running (pid") == 2 and "--- relaunched" in log  # both attempts' logs are kept
    # the job's command line is the same, checkpoint folder included: a function-tag job resumes there
    assert f"--checkpoint-dir={store.log_dir / f'{job.id}-checkpoint'}" in jobs.job_command(store, j)


def test_a_died_job_relaunches_and_jobs_that_cannot_are_refused(store, spawn):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    died = store.create("predict", "P", ["predict", "--tag=P"])
    store.set_running(died.id, dead.pid)
    assert store.get(died.id).state == "failed" and jobs.can_relaunch(store.get(died.id))
    user_error = store.create("predict", "P", ["predict"])
    store.fail(user_error.id, "The labels are all the same.")
    finished = store.create("predict", "P", ["predict"])
    store.set_running(finished.id, os.getpid())
    store.finish(finished.id, {})
    for job_id in (user_error.id, finished.id):
        assert not jobs.can_relaunch(store.get(job_id))
        with pytest.raises(TagLLMError, match="only a cancelled job"):
            jobs.relaunch(store, job_id, cmd=[sys.executable, "-c", "pass"])
    relaunched = jobs.relaunch(store, died.id, cmd=[sys.executable, FAKE, str(store.db_path), str(died.id)])
    assert relaunched.state in ("queued", "running")
    assert wait_until(lambda: done(store, died.id)).state == "finished"


def test_relaunch_waits_for_a_cancelled_process_to_end_and_keeps_the_name_rule(store):
    # cancelled, but its process (this one, for the test) is still alive: it could still record its end
    stopping = store.create("function-tag", "Busy", ["train-function-tag"])
    store.set_running(stopping.id, os.getpid())
    store.mark_cancelled(stopping.id)
    with pytest.raises(TagLLMError, match="still stopping"):
        jobs.relaunch(store, stopping.id, cmd=[sys.executable, "-c", "pass"])
    assert store.get(stopping.id).state == "cancelled"
    # another job trains the name now: relaunching would only race it for the tag
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    old = store.create("function-tag", "Name", ["train-function-tag"])
    store.set_running(old.id, gone.pid)
    now = store.create("function-tag", "Name", ["train-function-tag"])
    store.set_running(now.id, os.getpid())
    assert store.get(old.id).state == "failed"
    with pytest.raises(TagLLMError, match="training <Name> right now"):
        jobs.relaunch(store, old.id, cmd=[sys.executable, "-c", "pass"])


def test_app_training_jobs_are_held_to_the_name_rule(store):
    """The app records training jobs as "function-tag" / "domain-tag"; the earlier job keeps the name."""
    first = store.create("function-tag", "Dup", ["train-function-tag"])
    second = store.create("domain-tag", "Dup", ["train-domain-tag"])
    store.set_running(first.id, os.getpid())
    assert store.name_taken_by(second.id) == first.id


# -- concurrency --------------------------------------------------------------


def test_concurrent_writes_from_threads_and_processes(store):
    job = store.create("k", "n", [])
    n = 50
    procs = [
        subprocess.Popen([sys.executable, FAKE, "record", str(store.db_path), str(job.id), str(n), f"p{i}"])
        for i in range(2)
    ]
    errors: list[BaseException] = []

    def writer(tag: str):
        try:
            s = JobStore(store.db_path)  # one store per "tab"
            for i in range(1, n + 1):
                s.record(job.id, ProgressEvent(stage="train", step=i, total_steps=n, message=tag))
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(f"t{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    for p in procs:
        assert p.wait(TIMEOUT) == 0
    assert errors == []

    hist = store.history(job.id)
    assert len(hist) == 5 * n
    for tag in ("p0", "p1", "t0", "t1", "t2"):
        assert [h["step"] for h in hist if h["message"] == tag] == list(range(1, n + 1))


# -- job processes ----------------------------------------------------------


def test_launch_runs_a_real_process_to_completion(store, spawn):
    job = store.create("train-function-tag", "sol", ["train"])
    pid = spawn(job, "--steps", "12")
    assert isinstance(pid, int) and pid > 0
    assert store.get(job.id).pid == pid
    j = wait_until(lambda: done(store, job.id), what="job to finish")
    assert j.state == "finished", j.error
    assert j.result["parity"]["y_pred"] == [1.1, 1.9]
    assert j.step == 12 and j.progress == 1.0
    hist = store.history(job.id)
    assert hist[-1]["step"] == 12
    assert {"valid_rmse": 0.2} in [h["metrics"] for h in hist]  # step 10 carried metrics
    assert "running" in Path(j.log_path).read_text()


def test_default_command_goes_through_the_cli(store):
    job = store.create("train-function-tag", "sol", ["train", "--tag", "sol"])
    cmd = jobs.job_command(store, job, python="py")
    assert cmd == ["py", "-m", "tagllm_core", "train", "--tag", "sol",
                   "--job-db", str(store.db_path), "--job-id", str(job.id)]


def test_function_tag_jobs_checkpoint_in_their_own_folder(store):
    """A training job passes a checkpoint folder of its own, the same on every launch (from any
    store on the database, as after an app restart), so a job process started again resumes its
    last epoch; deleting the job deletes the folder."""
    job = store.create("train-function-tag", "sol", ["train-function-tag", "--name=sol"])
    cmd = jobs.job_command(store, job, python="py")
    folder = store.log_dir / f"{job.id}-checkpoint"
    assert f"--checkpoint-dir={folder}" in cmd
    assert jobs.job_command(JobStore(store.db_path), job, python="py") == cmd
    other = store.create("train-domain-tag", "dom", ["train-domain-tag", "--name=dom"])
    assert not any(a.startswith("--checkpoint-dir") for a in jobs.job_command(store, other, python="py"))
    folder.mkdir(parents=True)
    (folder / "checkpoint.safetensors").write_bytes(b"")
    store.fail(job.id, "stopped")
    assert store.delete(job.id) and not folder.exists()


def test_predict_jobs_write_and_resume_their_table_in_their_own_folder(store):
    """A predict job writes its table under its own folder, the same on every launch, and resumes it
    (a job process started again after a restart keeps the rows it finished); deleting the job deletes it."""
    job = store.create("predict", "LogS", ["predict", "--tag", "LogS", "--input", "in.csv"])
    cmd = jobs.job_command(store, job, python="py")
    out = jobs.prediction_output(store, job.id)
    assert out.parent == store.log_dir / f"{job.id}-predict"
    assert f"--output={out}" in cmd and "--resume" in cmd
    assert jobs.job_command(JobStore(store.db_path), job, python="py") == cmd
    assert jobs.prediction_output(JobStore(store.db_path), job.id) == out
    other = store.create("train-domain-tag", "dom", ["train-domain-tag", "--name=dom"])
    assert not any(a.startswith("--output") for a in jobs.job_command(store, other, python="py"))
    out.parent.mkdir(parents=True)
    out.write_text("row,prediction\n1,2.0\n")
    store.fail(job.id, "stopped")
    assert store.delete(job.id) and not out.parent.exists()


def test_launch_failure_marks_job_failed(store):
    job = store.create("k", "n", [])
    with pytest.raises(OSError):
        launch(store, job, cmd=[str(store.db_path.parent / "no-such-program")])
    j = store.get(job.id)
    assert j.state == "failed" and "could not start" in j.error


def test_failing_work_ends_failed_with_error_text(store, spawn):
    job = store.create("k", "n", [])
    spawn(job, "--steps", "6", "--fail", "labels are constant")
    j = wait_until(lambda: done(store, job.id), what="job to fail")
    assert j.state == "failed"
    assert j.error == "ValueError: labels are constant"
    assert "Traceback" in Path(j.log_path).read_text()


def test_run_job_in_process_success_and_failure(store):
    ok = store.create("k", "ok", [])
    assert run_job(store, ok.id, lambda report: {"x": 1}, poll=0.01) == "finished"
    assert store.get(ok.id).result == {"x": 1}

    bad = store.create("k", "bad", [])

    def boom(report):
        raise RuntimeError("no GPU needed, still broken")

    assert run_job(store, bad.id, boom, poll=0.01) == "failed"
    assert store.get(bad.id).error == "RuntimeError: no GPU needed, still broken"


def test_queue_runs_one_job_at_a_time(store, spawn):
    first = store.create("k", "a", [])
    second = store.create("k", "b", [])
    spawn(first, "--steps", "30", "--sleep", "0.05")
    spawn(second, "--steps", "3")

    wait_until(lambda: store.get(first.id).state == "running", what="first job to start")
    assert store.get(second.id).state == "queued"
    assert store.queue_position(second.id) == 0
    a = wait_until(lambda: done(store, first.id), what="first job to finish")
    b = wait_until(lambda: done(store, second.id), what="second job to finish")
    assert a.state == b.state == "finished"
    assert b.started >= a.finished


def test_cancel_running_job(store, spawn):
    job = store.create("k", "n", [])
    spawn(job, "--steps", "100000", "--sleep", "0.01")
    wait_until(lambda: store.get(job.id).step > 0, what="job to report progress")
    cancel(store, job.id)
    j = wait_until(lambda: done(store, job.id), what="job to stop")
    assert j.state == "cancelled" and j.result is None
    assert j.step < 100000


def test_cancel_queued_job_with_and_without_process(store, spawn):
    never_launched = store.create("k", "a", [])
    assert cancel(store, never_launched.id).state == "cancelled"

    blocker = store.create("k", "blocker", [])
    waiting = store.create("k", "waiting", [])
    spawn(blocker, "--steps", "100000", "--sleep", "0.01")
    pid = spawn(waiting)
    wait_until(lambda: store.get(blocker.id).state == "running", what="blocker to start")
    assert store.get(waiting.id).state == "queued"
    assert cancel(store, waiting.id).state == "cancelled"
    # Its process notices while polling for a slot and exits.
    wait_until(lambda: not jobs._pid_alive(pid), what="queued job process to exit")
    assert store.get(waiting.id).state == "cancelled"
    cancel(store, blocker.id)
    assert wait_until(lambda: done(store, blocker.id)).state == "cancelled"


def test_never_launched_job_does_not_block_the_queue(store, spawn):
    store.create("k", "orphan", [])  # created, never launched
    job = store.create("k", "n", [])
    spawn(job, "--steps", "2")
    assert wait_until(lambda: done(store, job.id)).state == "finished"


def test_kill_hung_job(store, spawn):
    job = store.create("k", "n", [])
    pid = spawn(job, "--hang", "600")
    wait_until(lambda: store.get(job.id).state == "running", what="job to start")
    cancel(store, job.id)  # ignored: the job never reports
    time.sleep(0.3)
    assert store.get(job.id).state == "running"
    j = kill(store, job.id)
    assert j.state == "cancelled"
    wait_until(lambda: not jobs._pid_alive(pid), what="process to die")
    assert store.get(job.id).state == "cancelled"  # not relabelled as a crash


def test_user_error_is_recorded_as_its_message_without_a_traceback(store, capsys):
    from tagllm_core.exceptions import TrainingError

    job = store.create("k", "flat", [])

    def flat(report):
        raise TrainingError("The labels are all the same: there is nothing to learn.")

    assert run_job(store, job.id, flat, poll=0.01) == "failed"
    assert store.get(job.id).error == "The labels are all the same: there is nothing to learn."
    out = capsys.readouterr().out
    assert "Traceback" not in out and "nothing to learn" in out  # the log says why, in one line


def test_delete_removes_the_jobs_uploaded_files(store, tmp_path):
    from tagllm_core import paths

    upload = paths.data_dir() / "uploads" / "20260101-000000-abcd1234"
    upload.mkdir(parents=True)
    (upload / "t.csv").write_text("smiles,y\nCCO,1\n")
    (upload / "valid-v.csv").write_text("smiles,y\nCCN,2\n")
    own = tmp_path / "my own data.csv"  # a file the user named on the command line: never ours to delete
    own.write_text("smiles,y\n")
    argv = ["train-function-tag", f"--train={upload / 't.csv'}", "--valid", str(upload / "valid-v.csv"),
            f"--corpus={own}", "--input=smiles=<SMILES>:smiles"]
    running = store.create("k", "busy", argv)
    store.set_running(running.id, os.getpid())
    assert not store.delete(running.id) and (upload / "t.csv").exists()  # an active job keeps its files
    store.mark_cancelled(running.id)
    assert store.delete(running.id)
    assert not upload.exists() and own.exists() and (paths.data_dir() / "uploads").is_dir()


def test_reporter_keeps_training_warnings_and_prints_them_to_the_job_log(store, capsys):
    # a warning right after a step must not be throttled away, and the job log (stdout) shows it
    job = store.create("k", "n", [])
    store.set_running(job.id, os.getpid())
    report = JobReporter(store, job.id, min_interval=3600)
    report(ev(1, total=100, loss=1.0))
    report(ev(2, total=100, loss=1.0))
    report(ev(2, total=100, message="warning: Training stopped at epoch 2: the loss became non-finite"))
    assert [h["message"] for h in store.history(job.id)][-1].startswith("warning: Training stopped")
    assert "warning: Training stopped at epoch 2" in capsys.readouterr().out


# -- one tag name, two jobs; SIGKILL (issue 11, concurrency and faults) --------------------------------------


def test_a_later_training_job_for_a_taken_name_is_refused_before_its_work(store):
    """Two sessions can pass the Train page's name check at the same moment: the earlier job keeps the
    name, the later one fails at once with the reason (tests/test_concurrency.py runs it with real jobs)."""
    first = store.create("train-function-tag", "Dup", [])
    second = store.create("train-domain-tag", "Dup", [])
    other = store.create("train-function-tag", "Other", [])
    assert store.set_running(first.id, os.getpid())
    assert store.name_taken_by(first.id) is None and store.name_taken_by(other.id) is None
    assert store.name_taken_by(second.id) == first.id
    ran = []
    assert run_job(store, second.id, lambda report: ran.append(1) or {}, poll=0.01, max_concurrent=3) == "failed"
    error = store.get(second.id).error
    assert ran == [] and "<Dup> is taken" in error and f"job #{first.id}" in error
    # the name is free again once the earlier job is over (the library then says whether the tag exists)
    store.fail(first.id, "stopped")
    third = store.create("train-function-tag", "Dup", [])
    assert run_job(store, third.id, lambda report: {"ok": 1}, poll=0.01) == "finished"
    # jobs that train nothing (a prediction with a tag's name) are not held to it
    busy = store.create("train-function-tag", "Busy", [])
    store.set_running(busy.id, os.getpid())
    reading = store.create("predict", "Busy", [])
    assert store.name_taken_by(reading.id) is None


def test_sigkill_while_jobs_write_events_leaves_a_sound_database(store, spawn):
    """Job processes killed with SIGKILL at 10 seeded random moments while they write progress as fast as
    they can (each write a transaction): the database passes SQLite's integrity check, each killed job is
    recorded as died, its events so far are readable, and the next job gets the slot and finishes."""
    import random
    import sqlite3

    rng = random.Random(7)
    for trial in range(10):
        job = store.create("k", f"kill{trial}", [])
        pid = spawn(job, "--steps", "100000", "--sleep", "0", "--poll", "0.01")
        wait_until(lambda: store.get(job.id).state == "running", what="job to start")
        time.sleep(rng.uniform(0.0, 0.3))
        os.killpg(pid, signal.SIGKILL)
        j = wait_until(lambda: done(store, job.id), what="the death to be recorded")
        assert j.state == "failed" and j.error.startswith(DIED_MESSAGE)
        assert "its log ends with" not in j.error  # its last words are progress lines, not a reason
        steps = [h["step"] for h in store.history(job.id)]
        assert steps == sorted(steps) and (not steps or steps[-1] == j.step)
        conn = sqlite3.connect(str(store.db_path))
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            conn.close()
    nxt = store.create("k", "next", [])
    spawn(nxt, "--steps", "3")
    assert wait_until(lambda: done(store, nxt.id), what="the next job").state == "finished"

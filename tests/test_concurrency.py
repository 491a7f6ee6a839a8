"""Concurrency and faults (issue 11, "Concurrency and load"): two jobs after one tag name, a job killed
with SIGKILL at random points, several Streamlit sessions predicting at once on one shared backbone.

Training jobs here are real: ``tagllm_core.cli.main`` with the app's own job command line
(``jobs.job_command``), on a tiny random Llama saved as a folder, each in a process of its own session.
The processes are forked from ``tests/_job_zygote.py``, which imports torch and the engine once, so a
job takes a couple of seconds instead of the 15-25 s a fresh ``python -m tagllm_core`` needs on a busy
machine. What happens inside a job (claiming a slot, training, saving the tag, recording the result)
is the code the app runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tagllm_core import jobs
from tagllm_core.backbone import get_backbone
from tagllm_core.exceptions import TagNameError
from tagllm_core.jobs import DIED_MESSAGE, JobStore
from tagllm_core.tags import SUFFIX, TagLibrary, load_tag_file

from _job_utils import wait_until
from conftest import REPO, make_function_tag

ZYGOTE = Path(__file__).resolve().parent / "_job_zygote.py"
APP = str(REPO / "app.py")
TIMEOUT = 120.0

# One epoch, the final layer, two tag tokens: the whole job (warm start, an epoch, baselines, saving) takes
# a few seconds on the tiny backbone.
TRAIN_ARGS = ["--input=smiles", "--column=smiles=mol", "--label=heavy", "--epochs=1", "--n-tokens=2",
              "--split=random", "--valid-fraction=0.3", "--batch-size=8", "--layers=final"]


# --------------------------------------------------------------------------- fixtures


class Zygote:
    """Starts job processes (see tests/_job_zygote.py) and kills what is left at the end."""

    def __init__(self, model_dir: Path):
        env = dict(os.environ, TAGLLM_BACKBONE=str(model_dir), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen([sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=str(REPO))
        self.pids: list[int] = []
        self.lock = threading.Lock()
        ready = self.proc.stdout.readline().strip()
        assert ready == "ready", f"the job zygote did not start: {ready!r}"

    def start(self, argv: list[str], log: str, script: str = "", **env: str) -> int:
        with self.lock:
            self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "log": log, "script": script}) + "\n")
            self.proc.stdin.flush()
            pid = int(self.proc.stdout.readline())
        self.pids.append(pid)
        return pid

    def close(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def zygote(model_dir):
    z = Zygote(model_dir)
    yield z
    z.close()


@pytest.fixture
def train_csv(tmp_path) -> Path:
    from rdkit import Chem

    smiles = []
    for n in range(1, 9):
        smiles += ["C" * n, "C" * n + "O", "c1ccccc1" + "C" * n, "C" * n + "N"]
    path = tmp_path / "train.csv"
    pd.DataFrame({"mol": smiles, "heavy": [Chem.MolFromSmiles(s).GetNumHeavyAtoms() for s in smiles]}).to_csv(
        path, index=False)
    return path


class Jobs:
    """Training jobs as the app makes them: ``store.create`` then a process running ``jobs.job_command``."""

    def __init__(self, zygote: Zygote, home: Path, model_dir: Path, csv: Path):
        self.zygote, self.home, self.csv = zygote, home, csv
        self.store = JobStore()  # TAGLLM_HOME/jobs.sqlite, as in the app
        self.library = TagLibrary(get_backbone(str(model_dir)).fingerprint)  # the jobs' own library

    def create(self, name: str):
        return self.store.create("train-function-tag", name,
                                 ["train-function-tag", f"--name={name}", f"--train={self.csv}", *TRAIN_ARGS])

    def start(self, job, max_jobs: int = 1) -> int:
        argv = jobs.job_command(self.store, job)[3:]  # what follows "python -m tagllm_core"
        pid = self.zygote.start(argv, job.log_path, TAGLLM_HOME=str(self.home), TAGLLM_MAX_JOBS=str(max_jobs))
        self.store.set_pid(job.id, pid)  # as jobs.launch does
        return pid

    def wait(self, job_id: int, timeout: float = TIMEOUT):
        def done():
            job = self.store.get(job_id)
            return job if job.is_done else None

        try:
            return wait_until(done, timeout, f"job {job_id}")
        except AssertionError:
            raise AssertionError(f"job {job_id} did not end; log:\n{self.store.get(job_id).log_tail()}") from None


@pytest.fixture
def job_runner(zygote, tagllm_home, model_dir, train_csv) -> Jobs:
    return Jobs(zygote, tagllm_home, model_dir, train_csv)


def user_files(lib: TagLibrary) -> list[Path]:
    return sorted(lib.user_dir.iterdir()) if lib.user_dir.is_dir() else []


def assert_library_whole(lib: TagLibrary) -> list[str]:
    """Every tag file in the user folder loads completely; nothing is listed that does not. Returns the names."""
    names = []
    for path in user_files(lib):
        if path.name.endswith(SUFFIX):
            tag = load_tag_file(path)  # a partial file would raise TagFormatError here
            assert path.name == f"{tag.name}{SUFFIX}"
            names.append(tag.name)
        else:  # a temporary file of a write that was cut short: hidden, never a tag
            assert path.name.startswith(".") and path.name.endswith(".tmp"), path
    assert lib.problems() == []
    assert sorted(t.name for t in lib.list()) == sorted(names)
    return names


def assert_database_sound(db_path: Path) -> None:
    conn = sqlite3.connect(str(db_path))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()


# --------------------------------------------------------------------------- one name, two trainings


def test_two_saves_of_one_name_at_once_keep_exactly_one(llama, library_factory):
    """The library's name check and the write are one step: of two saves racing for a name, one wins,
    the other is refused, and the file on disk is the winner's (it used to be check, write, rename over)."""
    lib = library_factory(llama)
    for round_ in range(4):
        name = f"Race{round_}"
        tags = [make_function_tag(llama, name=name, seed=10 * round_ + i) for i in range(2)]
        barrier = threading.Barrier(2)
        outcome: list = [None, None]

        def save(i):
            barrier.wait()
            try:
                lib.save(tags[i])
                outcome[i] = "saved"
            except TagNameError as err:
                outcome[i] = str(err)

        threads = [threading.Thread(target=save, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert outcome.count("saved") == 1, outcome
        winner = outcome.index("saved")
        assert f"<{name}>" in outcome[1 - winner] and "already exists" in outcome[1 - winner]
        assert torch.equal(lib.get(name).vectors, tags[winner].vectors)
    assert [p.name for p in user_files(lib)] == [f"Race{i}{SUFFIX}" for i in range(4)]  # no temporary file left


def test_overwrite_still_replaces_and_a_new_name_is_saved(llama, library_factory):
    lib = library_factory(llama)
    first, second = make_function_tag(llama, name="Again", seed=1), make_function_tag(llama, name="Again", seed=2)
    lib.save(first)
    with pytest.raises(TagNameError, match="already exists"):
        lib.save(second)
    assert torch.equal(lib.get("Again").vectors, first.vectors)
    lib.save(second, overwrite=True)
    assert torch.equal(lib.get("Again").vectors, second.vectors)
    assert [p.name for p in user_files(lib)] == [f"Again{SUFFIX}"]


def test_two_jobs_with_one_name_at_once_save_one_tag(job_runner):
    """Two sessions start <Dup> at the same moment and two jobs may run at once: the later job is refused
    before it trains (its name is taken by the earlier one), and exactly one tag is saved."""
    r = job_runner
    a, b = r.create("Dup"), r.create("Dup")
    r.start(b, max_jobs=2)  # the later job's process may even start first
    r.start(a, max_jobs=2)
    a, b = r.wait(a.id), r.wait(b.id)
    assert a.state == "finished", (a.error, a.log_tail())
    assert b.state == "failed" and "<Dup>" in b.error and "taken" in b.error, b.error
    assert f"#{a.id}" in b.error
    assert r.store.history(b.id) == []  # refused before any training step
    assert assert_library_whole(r.library) == ["Dup"]
    assert a.result["path"] == str(r.library.find("Dup").path)


def test_two_jobs_with_one_name_in_a_queue_of_one(job_runner):
    """With one job at a time the second waits, then is refused at once: the first one's tag exists."""
    r = job_runner
    a, b = r.create("Dup"), r.create("Dup")
    r.start(a)
    r.start(b)
    done = sorted((r.wait(a.id), r.wait(b.id)), key=lambda j: j.state != "finished")
    winner, loser = done
    assert winner.state == "finished", (winner.error, winner.log_tail())
    assert loser.state == "failed" and "<Dup>" in loser.error and "already exists" in loser.error, loser.error
    assert loser.started >= winner.finished and r.store.history(loser.id) == []
    assert assert_library_whole(r.library) == ["Dup"]


def test_two_jobs_with_different_names_both_finish_one_after_the_other(job_runner):
    r = job_runner
    a, b = r.create("First"), r.create("Second")
    r.start(a)
    r.start(b)
    a, b = r.wait(a.id), r.wait(b.id)
    assert a.state == b.state == "finished", (a.error, b.error)
    first, second = sorted((a, b), key=lambda j: j.started)
    assert second.started >= first.finished  # one waited for the other (TAGLLM_MAX_JOBS=1)
    assert sorted(assert_library_whole(r.library)) == ["First", "Second"]


# --------------------------------------------------------------------------- SIGKILL


def test_job_killed_at_random_points_leaves_no_partial_tag_and_a_sound_database(job_runner):
    """SIGKILL at 10 seeded random moments of a training job (claiming the slot, warm start, the epoch,
    baselines, saving): the database stays consistent, the killed job is recorded as died (or finished, if
    it got there first), the library holds only whole tags, and the next job runs."""
    r = job_runner
    rng = random.Random(11)
    t0 = time.monotonic()
    whole = r.create("Whole")
    r.start(whole)
    assert r.wait(whole.id).state == "finished"
    duration = time.monotonic() - t0
    states = []
    for trial in range(10):
        job = r.create(f"Kill{trial}")
        started = time.monotonic()
        pid = r.start(job)
        time.sleep(max(0.0, started + rng.uniform(0.0, 1.1 * duration) - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        wait_until(lambda: not jobs._pid_alive(pid), TIMEOUT, what=f"process {pid} to die")
        killed = r.wait(job.id, timeout=30)  # the reaper records the death
        assert killed.state in ("failed", "finished"), killed.state
        if killed.state == "failed":
            assert killed.error.startswith(DIED_MESSAGE), killed.error
        states.append(killed.state)
        assert_database_sound(r.store.db_path)
        names = assert_library_whole(r.library)
        assert killed.state != "finished" or f"Kill{trial}" in names  # (killed after saving: died, tag whole)
        assert [j.state for j in r.store.list(states=["queued", "running"])] == []
    assert "failed" in states  # the kills did land inside jobs
    after = r.create("After")
    r.start(after)
    assert r.wait(after.id).state == "finished"  # the queue was freed
    assert "After" in assert_library_whole(r.library)
    assert_database_sound(r.store.db_path)


def test_kill_while_writing_a_tag_leaves_the_old_file_or_none(zygote, tagllm_home, model_dir):
    """The moment that matters most, made certain: the process dies with half a tag written. The library
    keeps the previous version (or has no such tag), lists nothing broken, and the name can be saved again."""
    bb = get_backbone(str(model_dir))
    lib = TagLibrary(bb.fingerprint)
    old = make_function_tag(bb, name="Kept", seed=1)
    lib.save(old)
    code = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from conftest import make_function_tag
from tagllm_core import tags
from tagllm_core.backbone import get_backbone
real = tags.save_file
def half_then_die(tensors, tmp, metadata=None):
    real(tensors, tmp, metadata=metadata)
    with open(tmp, "r+b") as fh:
        fh.truncate(os.path.getsize(tmp) // 2)
    os.kill(os.getpid(), 9)
tags.save_file = half_then_die
bb = get_backbone(os.environ["TAGLLM_BACKBONE"])
lib = tags.TagLibrary(bb.fingerprint)
name = os.environ["TAG_NAME"]
lib.save(make_function_tag(bb, name=name, seed=2), overwrite=name == "Kept")  # replace, or claim a new name
"""
    script = tagllm_home / "die.py"
    script.write_text(code)
    for name in ("Kept", "Fresh"):
        pid = zygote.start([], str(tagllm_home / f"{name}.log"), script=str(script), TAGLLM_HOME=str(tagllm_home),
                           TAG_NAME=name)
        wait_until(lambda: not jobs._pid_alive(pid), TIMEOUT, what="the writer to die")
    assert assert_library_whole(lib) == ["Kept"]
    assert torch.equal(lib.get("Kept").vectors, old.vectors)
    leftovers = [p for p in user_files(lib) if p.name.endswith(".tmp")]
    assert len(leftovers) == 2  # the cut-short writes: hidden temporary files, never listed
    lib.save(make_function_tag(bb, name="Fresh", seed=3))
    assert sorted(assert_library_whole(lib)) == ["Fresh", "Kept"]


# --------------------------------------------------------------------------- sessions predicting at once


_MOLECULES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "CCN", "CCCCCCCC", "c1ccncc1", "O=C(O)c1ccccc1",
              "CC(C)O", "C1CCCCC1", "CCOC(=O)C", "c1ccc2ccccc2c1", "CCCl", "OCCO", "CC(=O)N", "CCS", "C=CC=C"]
# Each session its own rows (one invalid), in batches of two: many passes of the sessions interleave.
SESSION_INPUTS = [_MOLECULES[i::2] + (["not a smiles"] if i == 1 else []) for i in range(2)] + [
    _MOLECULES[::-1][:9], _MOLECULES[3:14]]
SESSION_BATCH = 2


def _session(tag_name: str, smiles: list[str], timeout: float):
    from streamlit.testing.v1 import AppTest

    def element(kind: str, key: str):
        # Under load a run of one session, sharing the mock runtime with three others, now and then returns
        # before its page's widgets are in the tree (KeyError, seen on a loaded CI machine); one more run
        # renders them. What this test checks is each session's results, below.
        try:
            return getattr(at, kind)(key=key)
        except KeyError:
            at.run()
            return getattr(at, kind)(key=key)

    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    at.switch_page("pages/predict.py").run()
    element("selectbox", "predict_tag").set_value(tag_name).run()
    element("number_input", "predict_batch").set_value(SESSION_BATCH)
    element("text_area", "paste::smiles").input("\n".join(smiles)).run()
    element("button", "predict_button").click().run()
    exceptions = [e.value for e in at.exception]
    return at.session_state["prediction"] if "prediction" in at.session_state else None, exceptions


def _rss_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def one_runtime_for_all_sessions():
    """What a Streamlit server is: one runtime, a script thread per session. ``AppTest`` installs a mock
    runtime (and the ``global.appTest`` option) for each run and removes it when the run ends, which
    would pull the runtime from under the other sessions; here the first mock stays until all are done."""
    from streamlit.runtime import Runtime
    from streamlit.testing.v1 import app_test
    from streamlit.testing.v1.util import patch_config_options

    class _Kept(type):
        @property
        def _instance(cls):
            return Runtime._instance

        @_instance.setter
        def _instance(cls, value):
            if value is not None and Runtime._instance is None:
                Runtime._instance = value

    class KeptRuntime(Runtime, metaclass=_Kept):
        pass

    saved = app_test.Runtime, app_test.patch_config_options
    app_test.Runtime, app_test.patch_config_options = KeptRuntime, lambda options: contextlib.nullcontext()
    try:
        with patch_config_options({"global.appTest": True}):
            yield
    finally:
        app_test.Runtime, app_test.patch_config_options = saved
        Runtime._instance = None


def run_sessions_at_once(bb, lib, tag_names: list[str], timeout: float) -> int:
    """Four AppTest sessions in threads, each predicting its own rows with its tag; checks every result
    against the same prediction made alone. Returns the peak resident memory seen while they ran."""
    from tagllm_core.prediction import Predictor

    expected = []
    for i, smiles in enumerate(SESSION_INPUTS):
        alone = Predictor(bb, lib.get(tag_names[i % len(tag_names)])).predict([{"smiles": s} for s in smiles],
                                                                             batch_size=SESSION_BATCH)
        expected.append([(r.error, r.prediction) for r in alone])
    peak, stop = [_rss_bytes()], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out: list = [None] * len(SESSION_INPUTS)
    barrier = threading.Barrier(len(SESSION_INPUTS))

    def worker(i):
        try:
            barrier.wait()
            out[i] = _session(tag_names[i % len(tag_names)], SESSION_INPUTS[i], timeout)
        except BaseException as err:  # reported by the assertions below
            out[i] = (None, [repr(err)])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(SESSION_INPUTS))]
    with one_runtime_for_all_sessions():
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout * 6)
    stop.set()
    sampler.join()
    for i, (run, exceptions) in enumerate(out):
        assert exceptions == [], (i, exceptions)
        assert run is not None, f"session {i} has no prediction"
        assert run.tag == tag_names[i % len(tag_names)] and run.n_rows == len(SESSION_INPUTS[i])
        frame = run.frame
        for (err, pred), got_err, got in zip(expected[i], frame["error"], frame["prediction"]):
            assert bool(err) == bool(got_err), (i, err, got_err)
            if not err:
                np.testing.assert_allclose(got, pred, rtol=1e-4, atol=1e-5)
    return peak[0]


@pytest.fixture
def two_tags_app(tagllm_home, monkeypatch, model_dir):
    """The app on the tiny backbone with two function tags that read different layers (so their passes
    hook different blocks of the one shared model)."""
    monkeypatch.setenv("TAGLLM_BACKBONE", str(model_dir))
    bb = get_backbone(str(model_dir))
    lib = TagLibrary(bb.fingerprint)
    deep = make_function_tag(bb, name="Deep", slots=(("smiles", "smiles", None),), seed=3)
    shallow = make_function_tag(bb, name="Shallow", slots=(("smiles", "smiles", None),), seed=4)
    shallow.card.layers = [1]
    lib.save(deep)
    lib.save(shallow)
    return bb, lib


def test_four_sessions_predicting_at_once_get_their_own_right_results(two_tags_app):
    bb, lib = two_tags_app
    run_sessions_at_once(bb, lib, ["Deep", "Shallow"], timeout=120)


@pytest.mark.real
def test_four_sessions_predicting_at_once_on_the_real_backbone(tagllm_home, monkeypatch):
    from _tag_builders import synthetic_solubility_tag

    monkeypatch.delenv("TAGLLM_BACKBONE", raising=False)
    bb = get_backbone()
    lib = TagLibrary(bb.fingerprint)
    lib.save(synthetic_solubility_tag(bb, "TestSolubility"))
    peak = run_sessions_at_once(bb, lib, ["TestSolubility"], timeout=300)
    print(f"four sessions on the real backbone: resident memory peaked at {peak / 2**30:.2f} GiB")
    assert peak < 2.5 * 2**30, f"resident memory peaked at {peak / 2**30:.2f} GiB"

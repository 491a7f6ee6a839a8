"""Leftover temporary files of ``paths.atomic_write`` (issue 11): a writer killed mid-write leaves a hidden
``.<name>.….tmp``; it is never listed, and it is removed once its writer is dead, never while one lives."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from tagllm_core import paths
from tagllm_core.backbone import BackboneFingerprint
from tagllm_core.paths import atomic_write, remove_stale_temp_files
from tagllm_core.tags import TagLibrary

REPO = Path(__file__).resolve().parent.parent
FINGERPRINT = BackboneFingerprint("tiny", hidden_size=8, vocab_size=16, embedding_sha256="ab" * 32)

# Writes half a file under atomic_write's temporary name, the way safetensors does (a new file under the
# name), then dies by SIGKILL before the rename: what a job killed while saving a tag leaves behind.
DIE_MID_WRITE = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
from tagllm_core.paths import atomic_write
def write(tmp):
    os.unlink(tmp)
    with open(tmp, "wb") as fh:
        fh.write(b"half a tag")
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write(sys.argv[1], write)
"""


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def _die_mid_write(target: Path) -> Path:
    proc = subprocess.run([sys.executable, "-c", DIE_MID_WRITE, str(target), str(REPO)], timeout=60)
    assert proc.returncode == -9
    (tmp,) = target.parent.glob(f".{target.name}.*.tmp")
    return tmp


def test_a_dead_writers_temp_file_is_never_listed_and_is_removed_when_stale(tmp_path):
    user = tmp_path / "user" / FINGERPRINT.slug
    user.mkdir(parents=True)
    tmp = _die_mid_write(user / "Half.tag.safetensors")
    lib = TagLibrary(FINGERPRINT, user_dir=user, bundled_root=tmp_path / "bundled")
    assert tmp.exists()  # seconds old: within the safety age, kept
    assert lib.list() == [] and lib.problems() == [] and not lib.exists("Half")
    _age(tmp, 2 * paths.STALE_TEMP_AGE_S)
    TagLibrary(FINGERPRINT, user_dir=user, bundled_root=tmp_path / "bundled")  # opening the library cleans up
    assert list(user.iterdir()) == []


def _write_while_paused(tmp_path: Path, paused: threading.Event, release: threading.Event, write, **kwargs):
    """Run ``atomic_write(write)`` in a thread; once it is paused at ``paused``, age its temporary file past
    the safety age and check that cleanup keeps it; then let it finish. Returns the written bytes."""
    target = tmp_path / "Live.tag.safetensors"
    errors = []

    def run():
        try:
            atomic_write(target, write, **kwargs)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    assert paused.wait(30)
    (tmp,) = tmp_path.glob(".*.tmp")
    _age(tmp, 10 * paths.STALE_TEMP_AGE_S)
    assert remove_stale_temp_files(tmp_path) == [] and tmp.exists()
    release.set()
    thread.join(30)
    assert errors == [] and list(tmp_path.glob(".*.tmp")) == []
    return target.read_bytes()


def test_a_live_writers_temp_file_is_never_removed_while_it_is_written(tmp_path):
    writing, release = threading.Event(), threading.Event()

    def write_in_place(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"first")
            fh.flush()
            writing.set()
            assert release.wait(30)

    assert _write_while_paused(tmp_path, writing, release, write_in_place) == b"first"


def test_a_live_writers_new_file_is_locked_until_the_rename(tmp_path, monkeypatch):
    """After ``write`` put a new file under the temporary name (as safetensors does), just before the
    name is claimed: still locked, still kept."""
    linking, release = threading.Event(), threading.Event()
    real_link = paths._link_exclusive

    def slow_link(tmp, path):
        linking.set()
        assert release.wait(30)
        real_link(tmp, path)

    monkeypatch.setattr(paths, "_link_exclusive", slow_link)

    def write_new_file(tmp):
        os.unlink(tmp)
        Path(tmp).write_bytes(b"second")

    assert _write_while_paused(tmp_path, linking, release, write_new_file, replace=False) == b"second"


def test_cleanup_leaves_everything_else_alone(tmp_path):
    keep = [tmp_path / "A.tag.safetensors", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for p in keep:
        p.write_bytes(b"x")
        _age(p, 10 * paths.STALE_TEMP_AGE_S)
    assert remove_stale_temp_files(tmp_path) == []
    assert remove_stale_temp_files(tmp_path / "missing") == []
    assert sorted(tmp_path.iterdir()) == sorted(keep)

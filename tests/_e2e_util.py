"""Helpers for the browser end-to-end test (``tests/test_e2e_browser.py``).

* ``python tests/_e2e_util.py ensure-tag`` (run with ``TAGLLM_HOME`` set) makes
  sure a function tag exists for the bundled default backbone and prints its
  name as the last line of stdout. A bundled one is used when there is one;
  otherwise an untrained SMILES regression tag is written into the user
  library. It runs as its own process so that the test process never holds a
  third copy of the 135M backbone (the server and the training job hold theirs).
* ``StreamlitServer``: ``streamlit run app.py`` on a free local port, in its own
  process group, stopped (with every training job it launched) by ``stop()``;
  ``restart()`` starts a fresh server process on the same ``TAGLLM_HOME``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
E2E_TAG = "E2ESolubility"


# --------------------------------------------------------------------------- the function tag


def ensure_function_tag() -> str:
    """The name of a function tag (SMILES input, regression preferred) usable on the default backbone."""
    from tagllm_core.backbone import get_backbone
    from tagllm_core.tags import TagLibrary

    from _tag_builders import synthetic_solubility_tag  # after __main__ has put the repository on sys.path

    bb = get_backbone()
    lib = TagLibrary(bb.fingerprint)

    def usable(info) -> bool:
        slots = info.card.slots or []
        return len(slots) == 1 and slots[0].kind == "smiles" and info.card.task == "regression"

    existing = [t for t in lib.list("function") if usable(t)]
    if existing:
        preferred = [t for t in existing if t.name == "Solubility"]
        return (preferred or existing)[0].name
    tag = synthetic_solubility_tag(bb, E2E_TAG, description="untrained tag written by the browser end-to-end test")
    lib.save(tag)
    return E2E_TAG


def ensure_function_tag_in_subprocess(env: dict, timeout: float = 600) -> str:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "ensure-tag"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"could not prepare a function tag:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout.strip().splitlines()[-1].strip()


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StreamlitServer:
    """``streamlit run app.py`` headless on 127.0.0.1:<free port>; output goes to ``log_path``."""

    def __init__(self, env: dict, log_path: Path, port: Optional[int] = None):
        self.env = env
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: Optional[subprocess.Popen] = None
        self._log = None

    def start(self) -> "StreamlitServer":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # appending: a restarted server keeps the first one's log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(self.port), "--server.address", "127.0.0.1",
             "--browser.gatherUsageStats", "false"],
            cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def restart(self, timeout: float = 180) -> "StreamlitServer":
        """Stop this server (and its jobs, as ``stop``) and start a new process on the same home and
        environment, on a new free port (``url`` changes); nothing of the old process's memory survives."""
        self.stop()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start()
        self.wait_healthy(timeout=timeout)
        return self

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=5) as r:
                    if r.status == 200 and r.read().strip() == b"ok":
                        return
            time.sleep(0.5)
        raise TimeoutError(f"streamlit was not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server's process group, then every job process it launched (their own groups)."""
        if self.proc is not None and self.proc.poll() is None:
            _kill_group(self.proc.pid, self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None
        stop_jobs(Path(self.env["TAGLLM_HOME"]))


def _kill_group(pid: int, proc: Optional[subprocess.Popen] = None, grace: float = 10) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc is not None:
                if proc.poll() is not None:
                    return
            elif not _alive(pid):
                return
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie counts as gone
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def stop_jobs(home: Path) -> None:
    """Stop every still-active job recorded in ``home``'s job database (each runs in its own session)."""
    db = home / "jobs.sqlite"
    if not db.exists():
        return
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tagllm_core.jobs import JobStore, _pid_alive, kill

    store = JobStore(db)
    for job in store.list(limit=1000):
        if not job.is_active:
            continue
        pid = getattr(job, "pid", None)
        with contextlib.suppress(Exception):
            kill(store, job.id)  # SIGTERM to the job's process group; marks it cancelled
        if pid:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _pid_alive(pid):
                time.sleep(0.2)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    if sys.argv[1:] == ["ensure-tag"]:
        print(ensure_function_tag(), flush=True)
    else:
        sys.exit(f"usage: {sys.argv[0]} ensure-tag")

"""Job processes for tests that pay Python's and torch's import time once (tests/test_concurrency.py).

A real training job is ``python -m tagllm_core train-… --job-db DB --job-id N``; on a loaded 2-core machine
its imports alone take 10-20 s. This helper imports the CLI and the training code and loads the backbone
(``TAGLLM_BACKBONE``, memoised by ``get_backbone``) once, then forks one process per job, which runs
``tagllm_core.cli.main(argv)`` exactly as the job process would, in its own session (like ``jobs.launch``).

Protocol (one JSON object per line on stdin, one line back on stdout)::

    {"argv": [...], "env": {...}, "log": "/path/job.log"}   ->  "<pid>"
    {"script": "/path/code.py", "env": {...}, "log": ...}    ->  "<pid>"   (runs a file instead of the CLI)

The pid is a job process like any other: the test signals it (SIGKILL) or waits for its job in the store.
Children are reaped here as they exit, so none lingers as a zombie.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

torch.set_num_threads(1)  # no OpenMP pool in the parent: forking stays safe

# Imported for their import cost only: warm in the zygote, so a forked job finds them loaded
# (baselines, data and descriptors are imported lazily by the job).
from tagllm_core import baselines, cli, data, descriptors, training  # noqa: E402,F401
from tagllm_core.backbone import get_backbone  # noqa: E402


def _reap(signum, frame) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _child(cmd: dict) -> None:
    code = 1
    try:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        Path(cmd["log"]).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(cmd["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.environ.update(cmd.get("env", {}))
        if cmd.get("script"):  # a test's own code in a job-like process
            runpy.run_path(cmd["script"], run_name="__main__")
            code = 0
        else:
            code = cli.main(cmd["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(code or 0))


def main() -> int:
    get_backbone(os.environ["TAGLLM_BACKBONE"])
    signal.signal(signal.SIGCHLD, _reap)
    print("ready", flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(cmd)
        print(pid, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A stand-in for ``python -m tagllm_core ... --job-db DB --job-id ID`` in tests.

Usage:
    _fake_job.py DB ID [--steps N] [--sleep S] [--fail MSG] [--hang S]
    _fake_job.py record DB ID N WRITER     # N raw store.record calls, no run_job

``--hang`` sleeps without reporting (a job stuck loading a model), so only
``kill`` can stop it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tagllm_core.jobs import JobReporter, JobStore, run_job  # noqa: E402
from tagllm_core.progress import ProgressEvent  # noqa: E402


def _record_many(argv: list[str]) -> int:
    db, job_id, n, writer = argv[0], int(argv[1]), int(argv[2]), argv[3]
    store = JobStore(Path(db))
    for i in range(1, n + 1):
        store.record(job_id, ProgressEvent(stage="train", step=i, total_steps=n, message=writer))
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "record":
        return _record_many(argv[1:])
    p = argparse.ArgumentParser()
    p.add_argument("db")
    p.add_argument("job_id", type=int)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--sleep", type=float, default=0.01)
    p.add_argument("--fail", default=None)
    p.add_argument("--hang", type=float, default=0.0)
    p.add_argument("--poll", type=float, default=0.05)
    args = p.parse_args(argv)

    def work(report: JobReporter) -> dict:
        if args.hang:
            time.sleep(args.hang)
        for step in range(1, args.steps + 1):
            time.sleep(args.sleep)
            metrics = {"valid_rmse": 1.0 / step} if step % 5 == 0 else {}
            report(ProgressEvent(stage="train", step=step, total_steps=args.steps,
                                 loss=1.0 / step, metrics=metrics))
            if args.fail and step == args.steps // 2 + 1:
                raise ValueError(args.fail)
        return {"valid_rmse": 0.5, "parity": {"y_true": [1.0, 2.0], "y_pred": [1.1, 1.9]}}

    run_job(JobStore(Path(args.db)), args.job_id, work, poll=args.poll)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

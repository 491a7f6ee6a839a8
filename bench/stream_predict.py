"""Streaming CLI prediction on the real backbone: rows/s and peak memory of ``tagllm predict``.

Writes a SMILES CSV of ``--rows`` rows (MOSES test-set molecules when the ``molsets`` package's data is
installed, else a list of drug-like molecules cycled, each row with its own id), runs
``python -m tagllm_core predict`` on it in a fresh process with the bundled <Solubility> tag, and prints:

  * rows/s of the prediction loop (the CLI's own figure: reading, predicting and writing, without the
    backbone load) and of the whole process (imports and load included);
  * peak RSS of the process;
  * with ``--resume-check``: the run killed (SIGKILL) once half the rows are written, then resumed; the
    output must have every row once, in input order.

Usage:  HF_HUB_OFFLINE=1 .venv/bin/python bench/stream_predict.py [--rows 400] [--chunk-rows 100]
A 10,000-row file takes about 35 minutes on a quiet 2-core machine (4.9 rows/s, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tagllm_core._allocator import tune as tune_allocator  # noqa: E402

FALLBACK = [
    "CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
    "c1ccc2c(c1)cccc2", "CCOC(=O)c1ccccc1", "Clc1ccc(Cl)cc1", "OC1CCCCC1", "CCCCCCCCCCO",
    "O=C(O)c1ccccc1O", "CN1CCC[C@H]1c1cccnc1", "NC(=O)c1cccnc1", "CC(C)(C)c1ccc(O)cc1",
    "COc1ccc2[nH]cc(CCN)c2c1", "O=c1[nH]c(=O)c2[nH]cnc2[nH]1", "Brc1ccccc1", "CC(=O)Nc1ccc(O)cc1",
]


def molecules(n: int) -> tuple[list, str]:
    """n SMILES: MOSES test molecules when installed, else the fallback list cycled."""
    try:
        import pandas as pd

        from tagllm_core.data import moses_smiles_path

        smiles = pd.read_csv(moses_smiles_path("test"), usecols=["SMILES"], nrows=n)["SMILES"].tolist()
        if smiles:
            return [smiles[i % len(smiles)] for i in range(n)], "MOSES test set"
    except Exception as err:  # the bench still runs without molsets; it says which molecules it used
        print(f"(MOSES not available: {err}; using {len(FALLBACK)} drug-like molecules cycled)")
    return [FALLBACK[i % len(FALLBACK)] for i in range(n)], f"{len(FALLBACK)} drug-like molecules cycled"


def predict_cmd(src: Path, out: Path, chunk_rows: int, resume: bool = False) -> list:
    return [sys.executable, "-m", "tagllm_core", "predict", "--tag", "Solubility", "--input", str(src),
            "--output", str(out), "--chunk-rows", str(chunk_rows), "--quiet", *(["--resume"] if resume else [])]


def run_measured(cmd: list, env: dict) -> tuple[str, float, float]:
    """(stdout, wall seconds, peak RSS in GB) of one process; the RSS is its own (wait4's rusage)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"predict failed:\n{err}")
    return out, wall, usage.ru_maxrss / 1024 ** 2  # ru_maxrss is in kB on Linux


def resume_check(src: Path, out: Path, n: int, chunk_rows: int, env: dict) -> str:
    proc = subprocess.Popen(predict_cmd(src, out, chunk_rows), env=env, cwd=str(ROOT),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and (not out.exists() or out.read_bytes().count(b"\n") < n // 2):
        time.sleep(0.2)
    if proc.poll() is not None:
        return "finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(out, newline="") as fh:
        done = sum(1 for _ in csv.reader(fh)) - 1
    stdout, wall, _ = run_measured(predict_cmd(src, out, chunk_rows, resume=True), env)
    with open(out, newline="") as fh:
        rows = [r[0] for r in list(csv.reader(fh))[1:]]
    ok = rows == [str(i) for i in range(1, n + 1)]
    return (f"killed with {done} rows written; resumed in {wall:.1f} s; "
            f"{'every row once, in order' if ok else 'ROWS WRONG'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=400)
    ap.add_argument("--chunk-rows", type=int, default=100)
    ap.add_argument("--resume-check", action="store_true")
    args = ap.parse_args()
    tune_allocator()  # as every entry point does; the measured process is the CLI, which tunes its own
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
    smiles, source = molecules(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "screen.csv", Path(tmp) / "out.csv"
        with open(src, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "smiles"])
            w.writerows((f"mol{i:06d}", s) for i, s in enumerate(smiles))
        stdout, wall, rss = run_measured(predict_cmd(src, out, args.chunk_rows), env)
        loop = re.search(r"at ([\d.]+) rows/s", stdout)
        print(f"input: {args.rows:,} rows ({source}), chunks of {args.chunk_rows}, bundled <Solubility>, CPU")
        print(stdout.strip())
        print(f"prediction loop: {float(loop.group(1)) if loop else float('nan'):.2f} rows/s")
        print(f"whole process (imports + backbone load + predict): {wall:.1f} s, {args.rows / wall:.2f} rows/s")
        print(f"peak RSS: {rss:.2f} GB")
        if args.resume_check:
            out.unlink()
            print("kill and resume:", resume_check(src, out, args.rows, args.chunk_rows, env))
    print(f"(this machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}; "
          f"max RSS of this script {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2:.2f} GB)")


if __name__ == "__main__":
    main()

"""What the applicability-domain flag costs per predicted row, and what storing it costs at training.

Molecules: MOSES (the ``molsets`` package in the venv): the first N_TRAIN of its train split as the tag's
training molecules, 1,000 of its test split as queries. Per query row, prediction pays one Morgan
fingerprint and one sparse Tanimoto product against the stored reference (``applicability.ReferenceSet``);
the reference is indexed once per ``Predictor``. Proteins (optional): ../shared/corpora/proteins.fasta,
3-mer Jaccard of 500 queries against up to 2,000 training sequences.

Usage:  .venv/bin/python bench/domain_overhead.py [--queries 1000] [--train 1000 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tagllm_core import applicability as ad  # noqa: E402
from tagllm_core._allocator import tune as tune_allocator  # noqa: E402
from tagllm_core.data import moses_smiles_path  # noqa: E402

PROTEINS = ROOT.parent / "shared" / "corpora" / "proteins.fasta"


CPU: list = []  # process CPU seconds of each best_of's fastest call, printed at the end


def best_of(repeat: int, fn):
    """(smallest wall time in seconds, last result) of ``repeat`` calls: the machine is shared. The CPU time
    of that call goes to ``CPU``: on a loaded machine it is the steadier figure."""
    times, out = [], None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    wall, cpu = min(times)
    CPU.append(cpu)
    return wall, out


def smiles_column(split: str, n: int) -> list[str]:
    df = pd.read_csv(moses_smiles_path(split), nrows=n)
    return df[df.columns[0]].astype(str).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--train", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tune_allocator()
    queries = smiles_column("test", args.queries)
    train = smiles_column("train", max(args.train))
    t_fp, q_fp = best_of(args.repeat, lambda: ad.fingerprints("smiles", queries))
    c_fp = CPU[-1]
    bits = np.unpackbits(q_fp, axis=1).sum(1)
    print(f"queries: {len(queries)} MOSES test molecules, {bits.mean():.0f} Morgan bits set on average; "
          f"times are wall (CPU) of the fastest of {args.repeat}")
    print(f"fingerprint: {1e3 * t_fp / len(queries):.3f} ({1e3 * c_fp / len(queries):.3f}) ms/row")
    for n in args.train:
        t_ref_fp, ref = best_of(1, lambda: ad.fingerprints("smiles", train[:n]))
        c_ref_fp = CPU[-1]
        t_index, reference = best_of(args.repeat, lambda: ad.ReferenceSet(ref))
        c_index = CPU[-1]
        t_sim, sims = best_of(args.repeat, lambda: reference.max_similarity(q_fp))
        c_sim = CPU[-1]
        print(f"reference {n:,} molecules ({ref.nbytes / 1e6:.2f} MB packed): fingerprints at training "
              f"{t_ref_fp:.2f} ({c_ref_fp:.2f}) s; index once per Predictor {1e3 * t_index:.0f} "
              f"({1e3 * c_index:.0f}) ms; "
              f"max Tanimoto {1e3 * t_sim / len(queries):.3f} ({1e3 * c_sim / len(queries):.3f}) ms/row; "
              f"with the fingerprint {1e3 * (t_fp + t_sim) / len(queries):.3f} "
              f"({1e3 * (c_fp + c_sim) / len(queries):.3f}) ms/row; median nearest similarity {np.median(sims):.2f}")
    n = max(args.train)
    valid = smiles_column("test", args.queries + 2000)[args.queries:]
    err = np.random.default_rng(0).random(len(valid))
    t_build, _ = best_of(1, lambda: ad.build_applicability({"smiles": "smiles"}, [{"smiles": s} for s in train[:n]],
                                                           [{"smiles": s} for s in valid], err, "regression"))
    print(f"build_applicability at training ({n:,} training, {len(valid):,} validation molecules): "
          f"{t_build:.2f} ({CPU[-1]:.2f}) s")
    if PROTEINS.is_file():
        from tagllm_core.data import read_fasta

        seqs = [s for _, s in read_fasta(PROTEINS)][:2500]
        ref_seqs, q_seqs = seqs[:2000], seqs[2000:2500]
        t_qfp, q = best_of(args.repeat, lambda: ad.fingerprints("protein", q_seqs))
        c_qfp = CPU[-1]
        reference = ad.ReferenceSet(ad.fingerprints("protein", ref_seqs))
        t_sim, sims = best_of(args.repeat, lambda: reference.max_similarity(q))
        print(f"proteins: {len(q_seqs)} queries against {len(ref_seqs):,} sequences: 3-mers "
              f"{1e3 * t_qfp / len(q_seqs):.3f} ({1e3 * c_qfp / len(q_seqs):.3f}) ms/row, max Jaccard "
              f"{1e3 * t_sim / len(q_seqs):.3f} ({1e3 * CPU[-1] / len(q_seqs):.3f}) ms/row; "
              f"median nearest similarity {np.median(sims):.2f}")


if __name__ == "__main__":
    main()

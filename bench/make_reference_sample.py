"""Draw the reference sample that function tags' percentiles are measured against (development only).

2,000 molecules drawn once, without replacement, with a fixed seed, from the MOSES test split (176,074
drug-like molecules from ZINC Clean Leads, filtered; the PyPI package ``molsets``, MIT-licensed), kept in
the split's order. Rerunning it with the same molsets release writes the same file byte for byte; the
file's SHA-256 goes into each tag card that stores a distribution over it (``tagllm_core.reference``).

Usage:
  .venv/bin/python bench/make_reference_sample.py [--n 2000] [--seed 0] [--out FILE]
  (default FILE: tagllm_core/data/reference/moses_reference.smi)
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tagllm_core._allocator import tune as tune_allocator  # noqa: E402
from tagllm_core.data import moses_smiles_path  # noqa: E402
from tagllm_core.reference import REFERENCE_FILE  # noqa: E402


def draw(n: int, seed: int) -> list[str]:
    """``n`` SMILES of the MOSES test split: a seeded draw without replacement, in the split's order."""
    with gzip.open(moses_smiles_path("test"), "rt", encoding="utf-8") as fh:
        lines = [line.strip() for line in fh if line.strip()]
    if lines[0].lower() != "smiles":
        raise SystemExit(f"unexpected MOSES header {lines[0]!r}")
    smiles = lines[1:]
    picked = np.sort(np.random.default_rng(seed).choice(len(smiles), size=n, replace=False))
    return [smiles[i] for i in picked]


def main() -> None:
    tune_allocator()  # an entry point (the package does not tune malloc on import)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REFERENCE_FILE)
    args = ap.parse_args()
    text = "smiles\n" + "\n".join(draw(args.n, args.seed)) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"{args.n} molecules -> {args.out} (sha256 {hashlib.sha256(text.encode()).hexdigest()})")


if __name__ == "__main__":
    main()

"""Prediction speed of two or more tag files on the same rows, interleaved, so a busy machine slows all alike.

Usage:  .venv/bin/python bench/compare_tags_speed.py OLD.tag.safetensors NEW.tag.safetensors [MORE ...]
            [--rows 128] [--rounds 2]
Prints SMILES/s of each (best of the rounds) and its ratio to the first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tagllm_core._allocator import tune as tune_allocator  # noqa: E402

from predict_throughput import SMILES  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tags", nargs="+", type=Path)
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if len(args.tags) < 2:
        ap.error("give at least two tag files")
    tune_allocator()  # an entry point: the package does not tune malloc on import
    from tagllm_core.backbone import load_backbone
    from tagllm_core.prediction import Predictor
    from tagllm_core.tags import load_tag_file

    bb = load_backbone()
    rows = [{"smiles": SMILES[i % len(SMILES)]} for i in range(args.rows)]
    predictors = [Predictor(bb, load_tag_file(p)) for p in args.tags]
    for p in predictors:
        p.predict(rows[:32], batch_size=32)  # warm-up: shared prefix, allocator
    best = [0.0] * len(predictors)
    for _ in range(args.rounds):
        for i, p in enumerate(predictors):
            t = time.perf_counter()
            p.predict(rows, batch_size=32)
            best[i] = max(best[i], args.rows / (time.perf_counter() - t))
    for path, p, rate in zip(args.tags, predictors, best):
        print(f"{path}: layers {p.card.layers or 'final'}, features {p.card.features}: {rate:.1f} SMILES/s "
              f"(best of {args.rounds} rounds of {args.rows} rows), {rate / best[0]:.2f}x the first")


if __name__ == "__main__":
    main()

"""Prediction speed and memory of the default backbone on this machine.

Prints, for SMILES prediction with a function tag:
  * cold start to the first prediction: first run (empty cache: dequantise the
    GGUF) and cached run, each in a fresh process (imports included);
  * peak RSS of the cached cold-start process (load + predict N rows);
  * warm single-row latency (median) and batched SMILES/s;
  * fp32 against bf16 on the CPU: speed and agreement of predictions.

Usage:  .venv/bin/python bench/predict_throughput.py [--rows 256] [--skip-first-run] [--bf16-rows 0] [--tag FILE]
The tag is the bundled <Solubility> tag when present, else a freshly initialised
tag with a random head (speed does not depend on the tag's values); ``--tag FILE``
measures another tag file instead (an older build, for a same-day comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tagllm_core._allocator import tune as tune_allocator  # noqa: E402

# tests/_tag_builders.py (pytest-free); by folder, since site-packages may hold an unrelated `tests` package
sys.path.insert(1, str(ROOT / "tests"))

SMILES = [
    "CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "CC(C)Cc1ccc(cc1)C(C)C(=O)O",
    "c1ccc2c(c1)cccc2", "CCOC(=O)c1ccccc1", "Clc1ccc(Cl)cc1", "OC1CCCCC1", "CCCCCCCCCCO",
    "O=C(O)c1ccccc1O", "CN1CCC[C@H]1c1cccnc1", "NC(=O)c1cccnc1", "CC(C)(C)c1ccc(O)cc1",
    "COc1ccc2[nH]cc(CCN)c2c1", "O=c1[nH]c(=O)c2[nH]cnc2[nH]1", "CC12CCC3C(CCC4=CC(=O)CCC34C)C1CCC2O",
    "Brc1ccccc1", "CCN(CC)CC", "OCC(O)CO", "c1ccncc1", "CC(=O)Nc1ccc(O)cc1",
]


def _tag(bb):
    from tagllm_core.tags import TagLibrary, load_tag_file

    from _tag_builders import synthetic_solubility_tag

    if os.environ.get("BENCH_TAG_FILE"):  # --tag, passed to the child processes too
        path = Path(os.environ["BENCH_TAG_FILE"])
        return load_tag_file(path), f"<{path.name.split('.')[0]}> from {path}"
    lib = TagLibrary(bb.fingerprint)
    if lib.exists("Solubility"):
        return lib.get("Solubility"), "bundled <Solubility>"
    return synthetic_solubility_tag(bb, "BenchTag"), "synthetic tag (random head)"


def child(rows: int) -> None:
    """Fresh process: import, load, predict once (timed), then predict ``rows`` rows; print JSON."""
    t0 = time.perf_counter()
    from tagllm_core.backbone import load_backbone
    from tagllm_core.prediction import Predictor

    bb = load_backbone()
    tag, _ = _tag(bb)
    pred = Predictor(bb, tag)
    pred.predict([{"smiles": SMILES[0]}])
    first = time.perf_counter() - t0
    batch = [{"smiles": SMILES[i % len(SMILES)]} for i in range(rows)]
    pred.predict(batch, batch_size=32)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"first_prediction_s": first, "load_s": bb.load_seconds, "from_cache": bb.loaded_from_cache,
                      "peak_rss_mb": rss_mb}))


def run_child(rows: int, env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", "--rows", str(rows)], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm(rows: int, dtype: str) -> dict:
    import torch

    from tagllm_core.backbone import load_backbone
    from tagllm_core.prediction import Predictor

    bb = load_backbone(dtype=dtype)
    tag, what = _tag(bb)
    pred = Predictor(bb, tag)
    one = [{"smiles": SMILES[3]}]
    pred.predict(one)
    lat = []
    for _ in range(15):
        t = time.perf_counter()
        pred.predict(one)
        lat.append(time.perf_counter() - t)
    batch = [{"smiles": SMILES[i % len(SMILES)]} for i in range(rows)]
    pred.predict(batch[:32], batch_size=32)
    t = time.perf_counter()
    res = pred.predict(batch, batch_size=32)
    dt = time.perf_counter() - t
    plans = [pred.model.plan({"smiles": r["smiles"]}) for r in batch]
    # the template's opening (up to the first input) is run once per call and shared by all rows
    run = [len(p) - min(p.input_positions) for p in plans]
    return {"what": what, "dtype": dtype, "single_ms_median": 1000 * statistics.median(lat),
            "smiles_per_s": rows / dt, "tokens_per_row": sum(map(len, plans)) / len(plans),
            "tokens_run_per_row": sum(run) / len(run), "layers": pred.card.layers or "final",
            "threads": torch.get_num_threads(), "predictions": [r.prediction for r in res]}


def main() -> None:
    tune_allocator()  # an entry point: the package no longer tunes malloc on import
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--bf16-rows", type=int, default=64, help="rows for the bf16 comparison (slow on most CPUs)")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--skip-first-run", action="store_true", help="skip the empty-cache cold start (40 s+)")
    ap.add_argument("--tag", type=Path, help="a tag file to measure instead of the bundled <Solubility>")
    args = ap.parse_args()
    if args.tag:
        os.environ["BENCH_TAG_FILE"] = str(args.tag.resolve())
    if args.child:
        child(args.rows)
        return
    env = dict(os.environ, HF_HUB_OFFLINE="1")  # after --tag: the children read BENCH_TAG_FILE
    print(f"machine: {os.cpu_count()} CPU cores; python {sys.version.split()[0]}")
    if not args.skip_first_run:
        with tempfile.TemporaryDirectory() as empty:
            first = run_child(args.rows, dict(env, TAGLLM_CACHE=empty))
        print(f"cold start, first run (dequantise GGUF + cache): "
              f"{first['first_prediction_s']:.1f} s to first prediction")
    cached = run_child(args.rows, env)
    print(f"cold start, cached: {cached['first_prediction_s']:.1f} s to first prediction "
          f"(backbone load {cached['load_s']:.1f} s, from cache: {cached['from_cache']})")
    print(f"peak RSS (load + {args.rows} predictions): {cached['peak_rss_mb']:.0f} MB")
    results = {}
    for dtype, rows in (("float32", args.rows), ("bfloat16", args.bf16_rows)):
        if not rows:  # --bf16-rows 0: skip the (slow on most CPUs) bf16 comparison
            continue
        r = warm(rows, dtype)
        results[dtype] = r
        print(f"[{dtype}] {r['what']}: single prediction {r['single_ms_median']:.0f} ms (median of 15); "
              f"batched {r['smiles_per_s']:.1f} SMILES/s over {rows} rows "
              f"({r['tokens_per_row']:.0f} tokens/row of which {r['tokens_run_per_row']:.0f} run per row, "
              f"read-out layers {r['layers']}, {r['threads']} threads)")
    if "bfloat16" not in results:
        return
    import numpy as np

    b = np.array(results["bfloat16"]["predictions"])
    a = np.array(results["float32"]["predictions"][: len(b)])
    print(f"bf16 vs fp32 predictions: max |diff| {np.max(np.abs(a - b)):.4f}, "
          f"Pearson {np.corrcoef(a, b)[0, 1]:.5f}; speed ratio bf16/fp32 "
          f"{results['bfloat16']['smiles_per_s'] / results['float32']['smiles_per_s']:.2f}x")


if __name__ == "__main__":
    main()

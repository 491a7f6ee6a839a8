"""Every training batch's loss of a function tag, for diagnosing a diverging run.

Trains on a benchmark of ../shared (bench/accuracy.py's data sets and loading) with the read-out layer
fixed, and prints per variant the first batches' losses, the largest, means over 25-batch windows, the
validation score by epoch and the guard's warnings (docs/BENCHMARKS.md, "A guard against a diverging tag").

Usage:  .venv/bin/python bench/batch_losses.py --dataset gb1 --crop protein=56 --layers 1 --epochs 3 \\
            --variants default '{"tag_lr": 1e-4}'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import accuracy  # noqa: E402
import numpy as np  # noqa: E402

from tagllm_core._allocator import tune as tune_allocator  # noqa: E402


def main() -> None:
    tune_allocator()
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="gb1", choices=sorted(accuracy.DATASETS))
    ap.add_argument("--crop", nargs="*", default=[], type=accuracy.crop_arg, help="e.g. protein=56")
    ap.add_argument("--layers", default="1", help='read-out layer(s), e.g. "1" or "auto"')
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--variants", nargs="+", default=["default"], help="JSON overrides of FunctionTagConfig")
    args = ap.parse_args()
    from tagllm_core.backbone import load_backbone
    from tagllm_core.tags import SlotSpec, TagLibrary
    from tagllm_core.training import FunctionTagConfig, train_function_tag

    bb = load_backbone()
    tr, va, slots, what = accuracy.load(args.dataset, None, None)
    for variant in args.variants:
        overrides = json.loads(variant) if variant != "default" else {}
        cfg = FunctionTagConfig(name="BatchLosses", slots=[SlotSpec(s, k, None) for s, k in slots.items()],
                                labels=["y"], what=what, epochs=args.epochs, layers=args.layers,
                                cache_budget_gb=12.0, max_length=dict(args.crop), **overrides)
        losses: list[float] = []

        def show(ev) -> None:
            if ev.metrics:
                rmse = ev.metrics.get("valid_rmse", float("nan"))
                print(f"  epoch {ev.epoch:.0f}: valid RMSE {rmse:.3f}", flush=True)
            elif ev.loss is not None:
                losses.append(ev.loss)  # an applied batch (a rejected one reports no loss)
            if ev.message and ev.message.startswith("warning"):
                print(f"  {ev.message}", flush=True)

        t0 = time.perf_counter()
        res = train_function_tag(bb, TagLibrary(bb.fingerprint), cfg, tr.astype({"y": str}), va.astype({"y": str}),
                                 save=False, progress=show)
        L = np.array(losses)
        windows = [round(float(L[i:i + 25].mean()), 3) for i in range(0, len(L), 25)]
        print(f"{variant}: {time.perf_counter() - t0:.0f} s; applied batches {len(L)}; first 12 "
              f"{np.round(L[:12], 3).tolist()}; largest {L.max():.4g} (batch {int(L.argmax()) + 1}); "
              f"25-batch means {windows}; valid RMSE by epoch "
              f"{[round(h.get('valid_rmse', float('nan')), 3) for h in res.history]}; "
              f"kept epoch {res.tag.card.training['best_epoch']}", flush=True)


if __name__ == "__main__":
    main()

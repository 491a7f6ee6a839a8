"""Which read-out layer rule generalises: the best validation score, or the shallowest layer within
one standard error of it ("one-SE rule", which also runs fewer blocks per prediction)?

Nested check on real data, so the rule is judged on rows it never saw: the training split is cut
into an inner train / inner validation part many times; each rule picks a layer on the inner
validation part (ridge on the mean-pooled state of that layer [+ descriptors]); the ridge refitted
on the whole training split at that layer is scored on the real validation split.

Usage:  .venv/bin/python bench/layer_rule.py [--datasets esol bace] [--repeats 10] [--features both]
Needs ../shared/benchmarks and the backbone features that bench/accuracy.py caches (it computes
them when missing: minutes on two cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from accuracy import backbone_features, input_descriptors, load, ridge_cv  # noqa: E402

from tagllm_core._allocator import tune as tune_allocator  # noqa: E402
from tagllm_core.warm_start import bootstrap_scores, one_se_layer  # noqa: E402


def rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["esol", "bace"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--inner-valid", type=float, default=0.15)
    ap.add_argument("--features", choices=["none", "descriptors", "both"], default="both")
    args = ap.parse_args()
    tune_allocator()  # an entry point: the package does not tune malloc on import
    from tagllm_core.backbone import load_backbone

    bb = load_backbone()
    n_layers = bb.n_layers
    for name in args.datasets:
        tr, va, slots, what = load(name, None, None)
        ytr, yva = tr.y.to_numpy(float), va.y.to_numpy(float)
        Ftr, Fva = backbone_features(bb, tr, slots, what, {}), backbone_features(bb, va, slots, what, {})
        Dtr, Dva = input_descriptors(tr, slots, {}), input_descriptors(va, slots, {})
        kinds = ["none", "descriptors"] if args.features == "both" else [args.features]
        for kind in kinds:
            def x(F, D, layer):
                return F[:, 1, layer - 1] if kind == "none" else np.hstack([F[:, 1, layer - 1], D])

            # Real-valid RMSE of the ridge fitted on all training rows, per layer (what each pick scores).
            outer = {layer: rmse(ridge_cv(x(Ftr, Dtr, layer), ytr, x(Fva, Dva, layer)), yva)
                     for layer in range(1, n_layers + 1)}
            picks = {"best": [], "one_se": []}
            rng = np.random.default_rng(0)
            for _ in range(args.repeats):
                perm = rng.permutation(len(tr))
                n_in = int(round(args.inner_valid * len(tr)))
                iv, it = perm[:n_in], perm[n_in:]
                preds = {layer: ridge_cv(x(Ftr[it], Dtr[it], layer), ytr[it], x(Ftr[iv], Dtr[iv], layer))
                         for layer in range(1, n_layers + 1)}
                y_in = ytr[iv]

                def score(out, rows):
                    return rmse(out, y_in[rows])

                scores = {k: score(v, np.arange(len(iv))) for k, v in preds.items()}
                replicates = bootstrap_scores(score, preds, len(iv))
                picks["best"].append(min(scores, key=lambda k: (scores[k], k)))
                picks["one_se"].append(one_se_layer(scores, replicates, 1.0))
            print(f"{name} features={kind}: real-valid RMSE by layer: "
                  + " ".join(f"{k}:{v:.3f}" for k, v in outer.items()), flush=True)
            for rule, layers in picks.items():
                scored = [outer[layer] for layer in layers]
                print(f"  {rule:7s} layers {layers}  mean depth {np.mean(layers):.1f}  "
                      f"real-valid RMSE mean {np.mean(scored):.3f} (sd {np.std(scored):.3f})", flush=True)


if __name__ == "__main__":
    main()

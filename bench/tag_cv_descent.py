"""Train the tag against a cross-validated ridge error instead of the training loss.

Session 13 (docs/BENCHMARKS.md, "Can training move the tag at all?") found that the tag's training loss is
sharp while the head stays frozen, and that with the head refitted by ridge after each step the training
loss falls but validation does not follow: what the tag learns fits the training rows. This bench asks
the next question: if the tag is moved to lower the error of ridge heads *on rows they were not fitted
on*, does the gain carry to the validation fold?

The objective is the K-fold cross-validated squared error of a ridge head on the tag's standardised
read-out features, with the head fitted in closed form inside every fold (so its gradient passes
through the fit: variable projection with a held-out loss). Folds group whole Bemis–Murcko scaffolds
(``--folds scaffold``) because the benchmark's valid folds are scaffold splits, or are random
(``--folds random``). The ridge penalty is the warm start's (sklearn ``RidgeCV``, leave-one-out), and
the standardisation is the warm start's. Each step follows the exact full-batch gradient of that
objective with a line search over step lengths (fractions of the tag's norm) and keeps the best one if
it lowers the objective. After every step the head is fitted again the library's way (``fit_head``)
and both validation halves are scored: the selection half (which the library uses to choose the layer
and the epoch) and the held-out calibration half.

    .venv/bin/python bench/tag_cv_descent.py --dataset esol --layer 6 --steps 6
    .venv/bin/python bench/tag_cv_descent.py --dataset bace --layer 23 --steps 4
    .venv/bin/python bench/tag_cv_descent.py --dataset esol --layer 6 --steps 6 --n-tokens 1 --features descriptors
    .venv/bin/python bench/tag_cv_descent.py --dataset gb1 --layer 1 --steps 6 --n-tokens 1 --folds random

``--refold`` draws new folds for every step; ``--n-tokens`` sets the tag's length (the library's default
is 10); ``--features descriptors`` gives the head the library's default descriptors beside the tag;
``--steps 0`` prints only the warm start's scores.

The layer is fixed (the pure tag's choice with the library's default prompt: ESOL 6, BACE 23, GB1 1), so the
warm start reads only that layer and the run takes minutes. The model after the warm start is reached
by running ``train_function_tag`` with its epoch loop replaced by this measurement, which then hands
back to the real loop with 0 epochs. Reads ../shared/benchmarks (``bench/accuracy.py``'s loader).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from accuracy import load  # noqa: E402
from tag_line_search import CHUNK, hand_back, line_search, read_out  # noqa: E402

from tagllm_core._allocator import tune as tune_allocator  # noqa: E402

FRACTIONS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)


def scaffold_folds(smiles: list[str], k: int, seed: int = 0) -> list[np.ndarray]:
    """``k`` arrays of row positions, each a set of whole Bemis–Murcko scaffold groups: the groups in a
    seeded random order, each into the emptiest fold so far."""
    from tagllm_core.data import scaffold_groups

    groups = scaffold_groups(smiles)
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    listed = list(groups.values())
    for i in rng.permutation(len(listed)):
        min(folds, key=len).extend(listed[i])
    return [np.array(sorted(f)) for f in folds]


def random_folds(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(order[i::k]) for i in range(k)]


def cv_ridge_error(z: torch.Tensor, y: torch.Tensor, folds: list[np.ndarray], alpha: float) -> torch.Tensor:
    """Mean squared error of ridge heads on held-out folds. ``z``: (N, F) standardised features,
    ``y``: (N, K) targets; each fold's head is fitted in closed form on the other folds (features and
    targets centred there, the bias unpenalised), so the error is differentiable in ``z``."""
    n = z.shape[0]
    eye = torch.eye(z.shape[1], dtype=z.dtype)
    total = z.new_zeros(())
    for held in folds:
        fit = np.setdiff1d(np.arange(n), held)
        zf, yf = z[fit], y[fit]
        mu, ym = zf.mean(0), yf.mean(0)
        zc = zf - mu
        weight = torch.linalg.solve(zc.T @ zc + alpha * eye, zc.T @ (yf - ym))  # (F, K)
        total = total + (((z[held] - mu) @ weight + ym - y[held]) ** 2).sum()
    return total / (n * y.shape[1])


def cv_descent_fit(make_folds, refold: bool, steps: int, fractions: tuple, calib_y: np.ndarray, calib_pos: np.ndarray,
                   real_fit):
    """A stand-in for ``training.fit``: ``steps`` line-searched gradient steps of the tag on the
    cross-validated ridge error, each scored on both validation halves; then the tag goes back to its
    warm start and the real loop runs 0 epochs. ``make_folds(seed)``: the folds (arrays of training row
    positions); ``refold``: new folds for every step, so that no one partition is fitted. ``calib_y``: (M, 1)
    labels of the calibration half, at ``calib_pos`` among the validation rows."""
    from tagllm_core.prefix_cache import suffix_features
    from tagllm_core.train_eval import evaluate
    from tagllm_core.warm_start import fit_head

    folds = make_folds(0)

    def fit(cfg, inputs, targets, valid, classes, run):
        model, cache, head = inputs.model, inputs.cache, inputs.model.head
        tag = model.tag(cfg.name)
        keys, plans = inputs.train_keys, inputs.train_plans
        assert len(keys) == sum(len(f) for f in folds), "one fold position per training row"
        assert len(inputs.calib_keys) == len(calib_y), "the calibration half as the library split it"
        y = targets.ridge.double()

        def feats_of(k: list, p: list) -> torch.Tensor:
            return read_out(model, cache, k, p)

        # The warm start's penalty and standardisation stay fixed during the descent.
        scaler = copy.deepcopy(head)
        extra, extra_sel = inputs.extra_train, inputs.extra_valid
        extra_cal = inputs.extra_all_valid[calib_pos] if inputs.extra_all_valid is not None else None
        alpha = fit_head(scaler, feats_of(keys, plans), targets.ridge, extra)

        def z_of(features: torch.Tensor, start: int = 0) -> torch.Tensor:
            """(B, F) standardised head inputs of training rows ``start`` on: the features, and the
            descriptors beside them when the head reads some."""
            part = None if extra is None else extra[start:start + len(features)]
            return scaler.inputs(features, part).double()

        def objective() -> float:
            with torch.no_grad():
                return float(cv_ridge_error(z_of(feats_of(keys, plans)), y, folds, alpha))

        def gradient() -> tuple[float, torch.Tensor]:
            """The objective and its (p, d) gradient with respect to the tag: d(error)/d(features) from the
            closed form, then back through the stack one chunk of rows at a time."""
            z = z_of(feats_of(keys, plans)).requires_grad_(True)
            loss = cv_ridge_error(z, y, folds, alpha)
            (gz,) = torch.autograd.grad(loss, z)
            tag.grad = None
            for s in range(0, len(keys), CHUNK):
                zc = z_of(suffix_features(model, cache.get(keys[s:s + CHUNK], plans[s:s + CHUNK])), s)
                (zc * gz[s:s + CHUNK]).sum().backward()
            assert tag.grad is not None
            return float(loss.detach()), tag.grad.detach().clone()

        def scores() -> str:
            """Training MSE, then selection-half and calibration-half RMSE of a head refitted the
            library's way (``fit_head``: its own standardisation and penalty)."""
            train_feats = feats_of(keys, plans)
            refit = copy.deepcopy(head)
            a = fit_head(refit, train_feats, targets.ridge, extra)
            with torch.no_grad():
                train_mse = float(((refit(train_feats, extra).double() - y) ** 2).mean())
                sel = refit(feats_of(inputs.valid_keys, inputs.valid_plans), extra_sel).numpy()
                cal = refit(feats_of(inputs.calib_keys, inputs.calib_plans), extra_cal).numpy()
            rmse_sel = evaluate(cfg.task, sel, valid.y, targets.scaler, cfg.labels)[0]["rmse"]
            rmse_cal = evaluate(cfg.task, cal, calib_y, targets.scaler, cfg.labels)[0]["rmse"]
            n_sel, n_cal = len(sel), len(cal)
            rmse_all = float(np.sqrt((n_sel * rmse_sel ** 2 + n_cal * rmse_cal ** 2) / (n_sel + n_cal)))
            return (f"training MSE {train_mse:.4f} (penalty {a:.3g}); valid RMSE selection {rmse_sel:.4f}, "
                    f"calibration {rmse_cal:.4f}, all {rmse_all:.4f}")

        for p in head.parameters():
            p.requires_grad_(False)
        start = tag.detach().clone()
        print(f"{len(folds)} folds of {[len(f) for f in folds]} rows; warm-start penalty {alpha:.3g}; "
              f"|tag| {start.norm():.3f} ({tag.shape[0]} x {tag.shape[1]})", flush=True)
        print(f"step 0 (warm start): cross-validated error {objective():.5f}; {scores()}", flush=True)
        for it in range(steps):
            t0 = time.perf_counter()
            if refold and it:
                folds[:] = make_folds(it)
            loss0, g = gradient()
            tried, kept = line_search(tag, g, objective, loss0, fractions, float(start.norm()))
            print(f"step {it + 1}: cross-validated error {loss0:.5f} at 0, then by step length (fraction of "
                  f"|tag|): " + ", ".join(f"{f:g}: {v:.5f}" for v, f in tried) + f"; kept {kept:g}; "
                  f"moved {float((tag.detach() - start).norm() / start.norm()):.3f} of |tag|; {scores()}; "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
            if kept == 0.0:
                break
        return hand_back(tag, start, head, real_fit, cfg, inputs, targets, valid, classes, run)

    return fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", choices=["esol", "bace", "gb1"], default="esol")
    ap.add_argument("--layer", type=int, default=6, help="read-out layer (fixed)")
    ap.add_argument("--steps", type=int, default=6, help="gradient steps")
    ap.add_argument("--folds", choices=["scaffold", "random"], default="scaffold")
    ap.add_argument("--k", type=int, default=5, help="number of folds")
    ap.add_argument("--refold", action="store_true", help="draw new folds for every step")
    ap.add_argument("--n-tokens", type=int, default=10, help="tag tokens (the library default is 10)")
    ap.add_argument("--features", choices=["none", "descriptors"], default="none",
                    help="what the head reads beside the tag (the library default is descriptors)")
    ap.add_argument("--fractions", default=",".join(f"{f:g}" for f in FRACTIONS),
                    help="step lengths to try, as fractions of the tag's norm (comma-separated)")
    args = ap.parse_args()
    tune_allocator()

    import tagllm_core.training as training
    from tagllm_core.backbone import load_backbone
    from tagllm_core.tags import SlotSpec, TagLibrary
    from tagllm_core.train_prepare import calibration_split
    from tagllm_core.training import FunctionTagConfig, train_function_tag

    tr, va, slots, what = load(args.dataset, None, None)
    cfg = FunctionTagConfig(name=f"Bench{args.dataset}", slots=[SlotSpec(s, k, None) for s, k in slots.items()],
                            labels=["y"], what=what, epochs=1, features=args.features, layers=[args.layer],
                            n_tokens=args.n_tokens, baselines=False, cache_budget_gb=12.0,
                            max_length={"protein": 56} if args.dataset == "gb1" else {})
    holdout = calibration_split(len(va), cfg.seed)
    assert holdout is not None
    calib_y = va.y.to_numpy(float)[holdout[1]].reshape(-1, 1)
    if args.folds == "scaffold" and "smiles" not in tr:
        raise SystemExit("scaffold folds need a SMILES column: use --folds random")

    def make_folds(seed: int) -> list[np.ndarray]:
        if args.folds == "scaffold":
            return scaffold_folds(tr.smiles.tolist(), args.k, seed)
        return random_folds(len(tr), args.k, seed)

    fractions = tuple(float(f) for f in args.fractions.split(","))
    training.fit = cv_descent_fit(make_folds, args.refold, args.steps, fractions, calib_y, holdout[1],
                                  training.fit)
    print(f"{args.dataset}: {len(tr)} training rows, {len(va)} valid; layer {args.layer}; {args.folds} folds"
          f"{' drawn again every step' if args.refold else ''}; {args.n_tokens} tag tokens; "
          f"head features: {args.features}",
          flush=True)
    bb = load_backbone()
    train_function_tag(bb, TagLibrary(bb.fingerprint), cfg, tr.astype({"y": str}), va.astype({"y": str}),
                       save=False)


if __name__ == "__main__":
    main()

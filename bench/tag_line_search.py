"""Why tag training cannot beat its warm start: the training loss as a function of the tag alone.

After the ridge warm start (head frozen), take exact full-batch steps along the steepest-descent
direction of the training loss with respect to the tag, with a line search over step lengths given as
fractions of the tag's norm, and print the training loss at each length. The data are those of
``bench/descriptor_pretrain.py`` (MOSES molecules, about 100 quantile-normalised RDKit descriptors as
labels, pure tag, a fixed read-out layer), where labels are plentiful and a linear probe reads them
well, so a tag that can be trained at all should improve here.

    .venv/bin/python bench/tag_line_search.py --rows 1500 --layer 12 --iters 2
    .venv/bin/python bench/tag_line_search.py --rows 1500 --layer 12 --iters 2 --refit bias
    .venv/bin/python bench/tag_line_search.py --rows 1500 --layer 12 --iters 2 --refit ridge

``--refit bias`` scores every step with the head's bias moved to the mean residual (the best bias for
that tag), ``--refit ridge`` with the whole head fitted again by ridge on the moved tag's features: if
the loss is sharp only because a moved tag shifts every molecule's prediction alike, the bias refit
removes the sharpness; if the tag can help at all once the head follows it, the ridge refit shows it.
The gradient is always that of the frozen warm-start head. After each step the validation score
(``mean_scaled_rmse`` on MOSES test molecules) is printed, with the head refitted on the training
rows when ``--refit ridge``: whether a lower training loss carries to new molecules.

The model after the warm start is reached by running ``train_function_tag`` with its epoch loop
(``training.fit``) replaced by this measurement, which then hands back to the real loop with 0 epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from descriptor_pretrain import descriptor_labels  # noqa: E402

from tagllm_core._allocator import tune as tune_allocator  # noqa: E402

FRACTIONS = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
CHUNK = 64  # rows per pass through the tag's tokens


def read_out(model, cache, keys: list, plans: list) -> torch.Tensor:
    """(N, F) read-out features of the tag as it is now, for cached rows, without gradients (the head's
    inputs; ``train_eval.predict_std`` gives its outputs instead)."""
    from tagllm_core.prefix_cache import suffix_features

    with torch.no_grad():
        return torch.cat([suffix_features(model, cache.get(keys[s:s + CHUNK], plans[s:s + CHUNK])).float()
                          for s in range(0, len(keys), CHUNK)])


def line_search(tag: torch.Tensor, gradient: torch.Tensor, loss, loss0: float, fractions: tuple,
                scale: float) -> tuple[list[tuple[float, float]], float]:
    """Steps from the tag's current (p, d) value along ``-gradient``, of lengths ``fractions`` × ``scale``,
    each scored by ``loss()``. The tag is left at the best step when it beats ``loss0`` (else where it
    was). Returns ([(loss, fraction)] in the order tried, the kept fraction: 0 for none)."""
    base, unit = tag.detach().clone(), gradient / gradient.norm()
    tried = []
    for f in fractions:
        with torch.no_grad():
            tag.copy_(base - f * scale * unit)
        tried.append((loss(), f))
    best, f_best = min(tried)
    kept = f_best if best < loss0 else 0.0
    with torch.no_grad():
        tag.copy_(base - kept * scale * unit)
    return tried, kept


def hand_back(tag: torch.Tensor, start: torch.Tensor, head, real_fit, cfg, *fit_args):
    """After a measurement in place of ``training.fit``: the tag back to its warm start ``start``, the
    head trainable again, and the real loop run with 0 epochs so that ``train_function_tag`` finishes."""
    with torch.no_grad():
        tag.copy_(start)
    for p in head.parameters():
        p.requires_grad_(True)
    return real_fit(dataclasses.replace(cfg, epochs=0), *fit_args)


def line_search_fit(iters: int, refit: str, fractions: tuple, real_fit):
    """A stand-in for ``training.fit``: ``iters`` steepest-descent steps on the tag with a line search,
    printed; then the tag goes back to its warm start and the real loop runs 0 epochs."""
    import copy

    from tagllm_core.prefix_cache import suffix_features
    from tagllm_core.warm_start import fit_head

    def fit(cfg, inputs, targets, valid, classes, run):
        model, cache, head = inputs.model, inputs.cache, inputs.model.head
        tag = model.tag(cfg.name)
        for p in head.parameters():
            p.requires_grad_(False)
        keys, plans, y = inputs.train_keys, inputs.train_plans, targets.y
        n = len(keys)

        def feats_of(k: list, p: list) -> torch.Tensor:
            return read_out(model, cache, k, p)

        def refit_loss() -> float:
            """The training loss with the bias (``refit="bias"``) or the whole head refitted to the tag."""
            feats = feats_of(keys, plans)
            with torch.no_grad():
                scorer = head
                if refit == "ridge":
                    scorer = copy.deepcopy(head)
                    fit_head(scorer, feats, targets.ridge)
                out = scorer(feats, None)
                if refit == "bias":
                    out = out + (y.to(out.device) - out).mean(0)
                return float(head.loss(out, y.to(out.device)))

        def train_loss(grad: bool = False) -> float:
            """Mean loss over every training row (the head's loss on standardised labels)."""
            if refit != "none" and not grad:
                return refit_loss()
            total = 0.0
            if grad:
                tag.grad = None
            for s in range(0, n, CHUNK):
                states = cache.get(keys[s:s + CHUNK], plans[s:s + CHUNK])
                with torch.set_grad_enabled(grad):
                    out = head(suffix_features(model, states), None)
                    loss = head.loss(out, y[s:s + CHUNK].to(out.device)) * (len(out) / n)
                    if grad:
                        loss.backward()
                total += float(loss.detach())
            return total

        def valid_score() -> float:
            """``mean_scaled_rmse`` on the validation rows, with the head refitted to the tag on the training
            rows when ``refit="ridge"`` (the frozen head otherwise)."""
            from tagllm_core.train_eval import evaluate

            with torch.no_grad():
                scorer = head
                if refit == "ridge":
                    scorer = copy.deepcopy(head)
                    fit_head(scorer, feats_of(keys, plans), targets.ridge)
                out = scorer(feats_of(inputs.valid_keys, inputs.valid_plans), None).cpu().numpy()
            return evaluate(cfg.task, out, valid.y, targets.scaler, cfg.labels)[0]["mean_scaled_rmse"]

        start = tag.detach().clone()
        print(f"validation (MOSES test, selection half): {valid_score():.4f}", flush=True)
        print(f"warm start: training loss {train_loss():.6f} (refit: {refit}); |tag| {start.norm():.3f} "
              f"({tag.shape[0]} x {tag.shape[1]})", flush=True)
        for it in range(iters):
            t0 = time.perf_counter()
            train_loss(grad=True)
            loss0 = train_loss()
            assert tag.grad is not None
            g = tag.grad.detach().clone()
            results, kept = line_search(tag, g, train_loss, loss0, fractions, float(start.norm()))
            print(f"step {it + 1}: |gradient| {g.norm():.4g}; training loss {loss0:.6f} at 0, then by step length "
                  f"(fraction of |tag|): " + ", ".join(f"{f:g}: {v:.6f}" for v, f in results)
                  + f"; kept {kept:g}; validation {valid_score():.4f}; {time.perf_counter() - t0:.0f} s", flush=True)
        return hand_back(tag, start, head, real_fit, cfg, inputs, targets, valid, classes, run)

    return fit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1500, help="MOSES training molecules")
    ap.add_argument("--layer", type=int, default=12, help="read-out layer (fixed)")
    ap.add_argument("--iters", type=int, default=2, help="steepest-descent steps")
    ap.add_argument("--refit", choices=["none", "bias", "ridge"], default="none",
                    help="score each step with the head's bias, or the whole head, fitted again to the moved tag")
    ap.add_argument("--fractions", default=",".join(f"{f:g}" for f in FRACTIONS),
                    help="step lengths to try, as fractions of the tag's norm (comma-separated)")
    args = ap.parse_args()
    tune_allocator()

    import tagllm_core.training as training
    from tagllm_core.backbone import load_backbone
    from tagllm_core.data import moses_smiles_path
    from tagllm_core.tags import SlotSpec, TagLibrary
    from tagllm_core.training import FunctionTagConfig, train_function_tag

    def sample(split: str, n: int, seed: int) -> list[str]:
        return pd.read_csv(moses_smiles_path(split), usecols=["SMILES"])["SMILES"].sample(n, random_state=seed).tolist()

    train_smiles, valid_smiles = sample("train", args.rows, 0), sample("test", 500, 1)
    z_tr, z_va, names = descriptor_labels(train_smiles, valid_smiles)
    labels = [f"d{i}" for i in range(len(names))]

    def frame(smiles: list[str], z) -> pd.DataFrame:
        df = pd.DataFrame(z, columns=labels).astype(str)
        df.insert(0, "smiles", smiles)
        return df

    fractions = tuple(float(f) for f in args.fractions.split(","))
    # the measurement in place of the epoch loop
    training.fit = line_search_fit(args.iters, args.refit, fractions, training.fit)
    bb = load_backbone()
    cfg = FunctionTagConfig(name="Descriptors", slots=[SlotSpec("smiles", "smiles", None)], labels=labels,
                            what="chemical descriptors", epochs=1, features="none", layers=[args.layer],
                            baselines=False, cache_budget_gb=12.0)
    print(f"{len(names)} descriptor labels; {args.rows} training molecules; layer {args.layer}", flush=True)
    train_function_tag(bb, TagLibrary(bb.fingerprint), cfg, frame(train_smiles, z_tr), frame(valid_smiles, z_va),
                       save=False)


if __name__ == "__main__":
    main()

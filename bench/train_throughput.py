"""Function-tag training speed: cached prefixes against the naive full pass.

For two workloads on the default backbone it times one optimisation step
(forward + backward w.r.t. the function tag) both ways and checks that the
loss and gradient agree:

  * single SMILES (ESOL-like molecules, stage 2);
  * protein + drug pairs with 512-residue proteins (stage 3, DAVIS-like).

The cached path pays the prefix once per row (reported separately: it is
amortised over all epochs). ``--only shared`` measures that one-off pass and
the cache's memory for proteins paired with many drugs, per row against one
shared protein prefix per target (``PrefixCache.share``). Also prints bf16 autocast against fp32 on the CPU
for the naive step: speed and loss difference.

Usage:  .venv/bin/python bench/train_throughput.py [--batch 16] [--reps 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch  # noqa: E402

from tagllm_core._allocator import tune as tune_allocator  # noqa: E402

from predict_throughput import SMILES  # noqa: E402

AA = "ACDEFGHIKLMNPQRSTVWY"


def build(bb, template: str, slot_kinds: dict, domain_tags: list):
    from tagllm_core.heads import HeadConfig, TaskHead
    from tagllm_core.model import TaggedModel
    from tagllm_core.tags import init_tag_vectors
    from tagllm_core.templates import Template

    g = torch.Generator().manual_seed(0)
    t = Template.parse(template)
    vecs = {t.function_tag: init_tag_vectors(bb.embedding_matrix, 10, generator=g)}
    for d in domain_tags:
        vecs[d] = init_tag_vectors(bb.embedding_matrix, 10, generator=g)
    head = TaskHead(HeadConfig("regression", 1, 2 * bb.hidden_size))
    return TaggedModel(bb, t, slot_kinds, vecs, trainable=frozenset({t.function_tag}), head=head,
                       readout="last+mean")


def step_naive(model, plans, y, autocast=False):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(plans)
    loss = torch.nn.functional.mse_loss(out.float(), y)
    loss.backward()
    return loss.item(), model.tag(model.template.function_tag).grad.clone()


def step_cached(model, states, y):
    from tagllm_core.prefix_cache import suffix_features

    model.zero_grad()
    loss = torch.nn.functional.mse_loss(model.head(suffix_features(model, states)), y)
    loss.backward()
    return loss.item(), model.tag(model.template.function_tag).grad.clone()


def timed(fn, reps):
    times, result = [], None
    for _ in range(reps):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def compare(name, model, rows, reps, bf16=False):
    from tagllm_core.prefix_cache import compute_prefix_states

    plans = [model.plan(r) for r in rows]
    y = torch.randn(len(plans), 1, generator=torch.Generator().manual_seed(1))
    tokens = sum(map(len, plans)) / len(plans)
    step_naive(model, plans, y)  # warm-up
    t_naive, (loss_n, grad_n) = timed(lambda: step_naive(model, plans, y), reps)
    t = time.perf_counter()
    states = compute_prefix_states(model, plans)
    t_prefix = time.perf_counter() - t
    step_cached(model, states, y)
    t_cached, (loss_c, grad_c) = timed(lambda: step_cached(model, states, y), reps)
    rel = float((grad_n - grad_c).norm() / grad_n.norm())
    print(f"[{name}] {len(plans)} rows x {tokens:.0f} tokens: naive step {t_naive:.2f} s "
          f"({len(plans) / t_naive:.1f} rows/s), cached step {t_cached:.2f} s ({len(plans) / t_cached:.1f} rows/s) "
          f"-> {t_naive / t_cached:.1f}x; one-off prefix pass {t_prefix:.2f} s; "
          f"loss {loss_n:.6f} vs {loss_c:.6f}, gradient relative error {rel:.1e}")
    if bf16:
        step_naive(model, plans, y, autocast=True)
        t_bf, (loss_b, grad_b) = timed(lambda: step_naive(model, plans, y, autocast=True), reps)
        cos = float(torch.nn.functional.cosine_similarity(grad_b.flatten(), grad_n.flatten(), dim=0))
        print(f"[{name}] bf16 autocast naive step {t_bf:.2f} s vs fp32 {t_naive:.2f} s -> {t_naive / t_bf:.2f}x; "
              f"loss {loss_b:.6f} vs {loss_n:.6f} (diff {abs(loss_b - loss_n):.2e}); gradient cosine {cos:.4f}")


def shared_prefix_pass(model, proteins: int, drugs: int, protein_length: int):
    """One-off prefix pass and cache bytes for proteins x drugs pairs: per-row against shared."""
    from tagllm_core.prefix_cache import PrefixCache, suffix_features

    rng = random.Random(1)
    prots = ["".join(rng.choice(AA) for _ in range(protein_length)) for _ in range(proteins)]
    rows = [{"sequence": p, "smiles": SMILES[(i * 7 + j) % len(SMILES)]} for i, p in enumerate(prots)
            for j in range(drugs)]
    plans = [model.plan(r) for r in rows]
    keys = [("t", i) for i in range(len(plans))]
    results = {}
    for mode in ("per-row", "shared"):
        cache = PrefixCache(model, budget_bytes=64 << 30)
        if mode == "shared":
            cache.share(keys, plans, [r["sequence"] for r in rows])
        t = time.perf_counter()
        for s in range(0, len(plans), 8):
            cache.get(keys[s:s + 8], plans[s:s + 8])
        seconds = time.perf_counter() - t
        with torch.no_grad():
            feats = suffix_features(model, cache.get(keys[:8], plans[:8]))
        results[mode] = (seconds, cache.nbytes, feats)
        print(f"[{proteins} proteins({protein_length}) x {drugs} drugs, {mode}] prefix pass {seconds:.1f} s, "
              f"cache {cache.nbytes / 2**30:.2f} GiB", flush=True)
    (t_row, b_row, f_row), (t_sh, b_sh, f_sh) = results["per-row"], results["shared"]
    rel = float((f_row - f_sh).norm() / f_row.norm())
    print(f"shared/per-row: prefix pass {t_row / t_sh:.1f}x faster, cache {b_row / b_sh:.1f}x smaller; "
          f"features relative difference {rel:.1e}")


def main():
    tune_allocator()  # an entry point: the package no longer tunes malloc on import
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--protein-length", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", choices=["smiles", "protein", "shared"], help="run one workload")
    ap.add_argument("--proteins", type=int, default=4, help="--only shared: distinct proteins")
    ap.add_argument("--drugs", type=int, default=8, help="--only shared: drugs per protein")
    args = ap.parse_args()
    from tagllm_core.backbone import load_backbone

    bb = load_backbone()
    print(f"backbone {bb.name}, {torch.get_num_threads()} threads")
    model = build(bb, "Input: The SMILES of the molecule is {smiles:<SMILES>}. Output: The solubility is <Sol>",
                  {"smiles": "smiles"}, ["SMILES"])
    rows = [{"smiles": SMILES[i % len(SMILES)]} for i in range(args.batch)]
    if args.only not in ("protein", "shared"):
        compare("single SMILES", model, rows, args.reps, bf16=True)
    if args.only == "smiles":
        return
    rng = random.Random(0)
    model2 = build(bb, "Input: The protein sequence is {sequence:<Protein>}. The SMILES of the drug is "
                       "{smiles:<SMILES>}. Output: The binding affinity is <Affinity>",
                   {"sequence": "protein", "smiles": "smiles"}, ["Protein", "SMILES"])
    pairs = [{"sequence": "".join(rng.choice(AA) for _ in range(args.protein_length)),
              "smiles": SMILES[i % len(SMILES)]} for i in range(args.pairs)]
    if args.only == "shared":
        shared_prefix_pass(model2, args.proteins, args.drugs, args.protein_length)
        return
    compare(f"protein({args.protein_length})+drug", model2, pairs, max(1, args.reps - 1))


if __name__ == "__main__":
    main()

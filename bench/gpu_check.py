"""GPU check: the CUDA/bf16 paths and GPU throughput, on a randomly initialised default backbone.

The bundled backbone (98 MB) cannot travel to the lent GPU machine, and speed does
not depend on the weights, so this builds the default backbone's architecture
(its config.json) with random weights and its real tokenizer (so token counts are
those of the real model). Two steps:

  here:        .venv/bin/python bench/gpu_check.py --export-skeleton .tagllm-dev/skeleton
  on the GPU:  python bench/gpu_check.py --skeleton .tagllm-dev/skeleton --out $OUT/gpu_check.json
               (carry .tagllm-dev/skeleton)

Prints, on the chosen device (default: cuda when available):
  * exactness: cached-prefix against full-pass loss and tag gradient, fp32 and bf16;
  * one training step, naive against cached, single SMILES and protein(512)+drug, bf16;
  * prediction throughput (SMILES/s) with the Predictor, bf16;
  * stage 2 end to end (train_function_tag, 2 epochs) and stage 1 (train_domain_tag) wall time;
  * peak GPU memory.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tagllm_core._allocator import tune as tune_allocator  # noqa: E402

sys.path.insert(1, str(ROOT / "tests"))  # _tag_builders (pytest-free)
sys.path.insert(2, str(ROOT / "bench"))

import torch  # noqa: E402


def export_skeleton(dest: Path) -> None:
    """Copy the default backbone's config and tokenizer (no weights) to ``dest``."""
    from tagllm_core.backbone import load_backbone

    bb = load_backbone(device="cpu")
    dest.mkdir(parents=True, exist_ok=True)
    bb.model.config.to_json_file(dest / "config.json")
    bb.tokenizer.save_pretrained(dest)
    print(f"skeleton of {bb.name} in {dest}: {sorted(p.name for p in dest.iterdir())}")


def random_backbone(skeleton: Path, device: str, dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tagllm_core.backbone import wrap_model

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(skeleton), dtype=torch.float32)
    return wrap_model(model, AutoTokenizer.from_pretrained(skeleton), "random-" + skeleton.name, device=device,
                      dtype=dtype)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_check(bb, device: str, label: str, rows_fn, template: str, slot_kinds: dict, domains: list, reps: int):
    """Naive against cached step: time and agreement. Returns a dict of figures."""
    from tagllm_core.prefix_cache import compute_prefix_states

    from train_throughput import build, step_cached, step_naive, timed

    model = build(bb, template, slot_kinds, domains)
    plans = [model.plan(r) for r in rows_fn()]
    y = torch.randn(len(plans), 1, generator=torch.Generator().manual_seed(1)).to(device)
    # Each step ends in loss.item(), which waits for the GPU, so wall time is device time.
    step_naive(model, plans, y)
    t_naive, (loss_n, grad_n) = timed(lambda: step_naive(model, plans, y), reps)
    states = compute_prefix_states(model, plans)
    step_cached(model, states, y)
    t_cached, (loss_c, grad_c) = timed(lambda: step_cached(model, states, y), reps)
    rel = float((grad_n.float() - grad_c.float()).norm() / grad_n.float().norm())
    out = {"rows": len(plans), "tokens_per_row": sum(map(len, plans)) / len(plans), "naive_s": t_naive,
           "cached_s": t_cached, "speedup": t_naive / t_cached, "loss_naive": loss_n, "loss_cached": loss_c,
           "grad_rel_err": rel}
    print(f"[{label}] {out['rows']} rows x {out['tokens_per_row']:.0f} tokens: naive {t_naive * 1e3:.1f} ms, "
          f"cached {t_cached * 1e3:.1f} ms -> {out['speedup']:.1f}x; loss {loss_n:.6f} / {loss_c:.6f}, "
          f"gradient rel. error {rel:.1e}", flush=True)
    return out


def main():
    tune_allocator()  # an entry point: the package no longer tunes malloc on import
    ap = argparse.ArgumentParser()
    ap.add_argument("--export-skeleton", type=Path, help="write config+tokenizer of the default backbone and stop")
    ap.add_argument("--skeleton", type=Path, default=ROOT / ".tagllm-dev" / "skeleton")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smiles-rows", type=int, default=64, help="rows of the single-SMILES training step")
    ap.add_argument("--pairs", type=int, default=16, help="rows of the protein(512)+drug training step")
    ap.add_argument("--predict-rows", type=int, default=4096)
    ap.add_argument("--train-rows", type=int, default=1024)
    ap.add_argument("--domain-steps", type=int, default=100)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                    help="step checks in each; prediction and training use the last (bf16 is what GPUs get)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.export_skeleton:
        export_skeleton(args.export_skeleton)
        return

    import pandas as pd
    from rdkit import Chem

    from tagllm_core.prediction import Predictor
    from tagllm_core.tags import SlotSpec
    from tagllm_core.training import DomainTagConfig, FunctionTagConfig, train_domain_tag, train_function_tag

    from _tag_builders import synthetic_solubility_tag
    from predict_throughput import SMILES
    from train_throughput import AA

    dev = args.device
    report: dict = {"device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else dev,
                    "torch": torch.__version__}
    print(f"device {report['device']}, torch {torch.__version__}", flush=True)
    smi_template = "Input: The SMILES of the molecule is {smiles:<SMILES>}. Output: The solubility is <Sol>"
    pair_template = ("Input: The protein sequence is {sequence:<Protein>}. "
                     "The SMILES of the drug is {smiles:<SMILES>}. "
                     "Output: The binding affinity is <Affinity>")
    rng = random.Random(0)
    proteins = ["".join(rng.choice(AA) for _ in range(512)) for _ in range(8)]

    def smiles_rows():
        return [{"smiles": SMILES[i % len(SMILES)]} for i in range(args.smiles_rows)]

    def pair_rows():
        return [{"sequence": proteins[i % 8], "smiles": SMILES[i % len(SMILES)]} for i in range(args.pairs)]

    for dtype in [getattr(torch, d) for d in args.dtypes]:
        bb = random_backbone(args.skeleton, dev, dtype)
        name = str(dtype).split(".")[-1]
        report[f"smiles_{name}"] = step_check(bb, dev, f"SMILES {name}", smiles_rows, smi_template,
                                              {"smiles": "smiles"}, ["SMILES"], args.reps)
        report[f"pair_{name}"] = step_check(bb, dev, f"protein(512)+drug {name}", pair_rows, pair_template,
                                            {"sequence": "protein", "smiles": "smiles"}, ["Protein", "SMILES"],
                                            args.reps)
    # bb now has the last dtype: bf16 by default, as the app and the CLI load it on a GPU.
    pred = Predictor(bb, synthetic_solubility_tag(bb, "GpuCheck"))
    rows = [{"smiles": SMILES[i % len(SMILES)]} for i in range(args.predict_rows)]
    pred.predict(rows[:64], batch_size=64)
    sync(dev)
    t = time.perf_counter()
    res = pred.predict(rows, batch_size=128, max_batch_tokens=1 << 16)
    sync(dev)
    seconds = time.perf_counter() - t
    report["predict"] = {"rows": len(rows), "seconds": seconds, "rows_per_s": len(rows) / seconds,
                         "errors": sum(not r.ok for r in res)}
    print(f"[predict {name}] {len(rows)} SMILES in {seconds:.2f} s -> {len(rows) / seconds:.0f} SMILES/s", flush=True)

    train = pd.DataFrame({"smiles": [SMILES[i % len(SMILES)] for i in range(args.train_rows)]})
    train["y"] = [Chem.MolFromSmiles(s).GetNumHeavyAtoms() + 0.1 * (i % 7) for i, s in enumerate(train.smiles)]
    cfg = FunctionTagConfig(name="GpuHeavy", slots=[SlotSpec("smiles", "smiles", None)], labels=["y"],
                            split="random", epochs=2)
    t = time.perf_counter()
    fres = train_function_tag(bb, None, cfg, train, save=False)
    sync(dev)
    report["stage2"] = {"rows": args.train_rows, "epochs": 2, "seconds": time.perf_counter() - t,
                        "valid_rmse": fres.metrics["rmse"],
                        "phase_seconds": fres.tag.card.training.get("phase_seconds")}
    print(f"[stage 2 {name}] {args.train_rows} rows x 2 epochs: {report['stage2']['seconds']:.1f} s, "
          f"valid RMSE {fres.metrics['rmse']:.3f}; seconds per phase {report['stage2']['phase_seconds']}", flush=True)
    dcfg = DomainTagConfig("Protein", "protein", steps=args.domain_steps, batch_size=16, max_tokens=256)
    t = time.perf_counter()
    dres = train_domain_tag(bb, None, dcfg, proteins * 8, save=False)
    sync(dev)
    seconds = time.perf_counter() - t
    report["stage1"] = {"steps": args.domain_steps, "batch": 16, "tokens": 256, "seconds": seconds,
                        "perplexity": dres.perplexity}
    # The wall time includes the held-out perplexity (trained, no tag, random tag), as a user waits for it.
    print(f"[stage 1 {name}] {args.domain_steps} steps x 16 x 256 tokens: {seconds:.1f} s with the perplexity "
          f"evaluation; perplexity {dres.perplexity['trained']:.1f} (no tag {dres.perplexity['no_tag']:.1f})",
          flush=True)
    if dev.startswith("cuda"):
        report["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak GPU memory {report['peak_gib']:.2f} GiB")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=float))


if __name__ == "__main__":
    main()

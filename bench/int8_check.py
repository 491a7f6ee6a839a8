"""Dynamic int8 quantisation of the backbone's Linear layers on the CPU: speed and how far it moves the
hidden states a tag's head reads (issue 9, prediction speed). Development only.

Usage:  .venv/bin/python bench/int8_check.py [--layer 26] [--batch 16] [--tokens 50] [--rounds 3]
Prints the seconds per round of fp32 and int8 (interleaved, so a busy machine slows both alike), and the
relative error and the smallest per-row cosine similarity of the int8 states at ``--layer``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tagllm_core._allocator import tune as tune_allocator  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layer", type=int, default=26, help="hidden state compared (26: the bundled <Solubility>)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tune_allocator()  # an entry point: the package does not tune malloc on import
    import torch

    from tagllm_core.backbone import load_backbone

    bb = load_backbone()
    fp32 = bb.model
    int8 = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8)
    ids = torch.randint(100, bb.tokenizer.vocab_size - 100, (args.batch, args.tokens),
                        generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        embeds = fp32.get_input_embeddings()(ids)
    mask = torch.ones(args.batch, args.tokens, dtype=torch.long)

    def states(model):
        with torch.inference_mode():
            out = model.model(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True)
        return out.hidden_states[args.layer]

    for model in (fp32, int8):  # warm-up
        states(model)
    seconds: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(args.rounds):
        for name, model in (("fp32", fp32), ("int8", int8)):
            t = time.perf_counter()
            states(model)
            seconds[name].append(time.perf_counter() - t)
    a, b = states(fp32), states(int8)
    rel = float((a - b).norm() / a.norm())
    cos = float(torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min())
    print(f"{args.batch} x {args.tokens} tokens through layer {args.layer}, {torch.get_num_threads()} threads")
    for name, ts in seconds.items():
        print(f"  {name}: " + ", ".join(f"{t:.2f}" for t in ts) + " s")
    print(f"  speed-up (best of rounds): {min(seconds['fp32']) / min(seconds['int8']):.2f}x")
    print(f"  int8 states at layer {args.layer}: relative error {rel:.3f}, smallest per-row cosine {cos:.4f}")


if __name__ == "__main__":
    main()

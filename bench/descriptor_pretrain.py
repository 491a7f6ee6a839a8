"""Can training move a function tag at all? A multi-task tag on RDKit descriptors of MOSES molecules.

QUALITY_NOTES lists "transfer for function tags" as a lever: pretrain one function tag on many RDKit
descriptors of MOSES molecules (free labels, as many rows as wanted), then start new SMILES tags from
its vectors instead of from the mean embedding. This script runs the first half with the library's own
``train_function_tag`` (pure tag, a fixed read-out layer, one head output per descriptor, early
stopping on ``mean_scaled_rmse``) and prints the validation score by epoch: epoch 0 is the ridge warm
start, so a later epoch that scores lower is a tag that training improved. ``--score-training-rows``
scores the first 500 training rows instead of MOSES test molecules: whether training improves even
the fit to the rows it trains on.

    .venv/bin/python bench/descriptor_pretrain.py --rows 5000 --layer 12 --epochs 4 --tag-lr 1e-3
    .venv/bin/python bench/descriptor_pretrain.py --rows 1500 --layer 12 --epochs 3 --tag-lr 1e-3 --score-training-rows
    .venv/bin/python bench/descriptor_pretrain.py --rows 1500 --layer 12 --epochs 3 --tag-lr 1e-3 --head-lr 0 \\
        --batch-size 64 --score-training-rows

Labels: every RDKit 2D descriptor with under 1% missing values and at least 20 distinct values in the
training rows, quantile-normalised (fitted on the training rows), so heavy-tailed counts weigh like
the rest. Needs ``molsets`` (``.venv/bin/pip install --no-deps molsets``) for the MOSES SMILES.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tagllm_core._allocator import tune as tune_allocator  # noqa: E402


def descriptor_labels(train_smiles: list[str], valid_smiles: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(train labels (N, K), valid labels (M, K), names): quantile-normalised RDKit descriptors, MolLogP first."""
    from sklearn.preprocessing import QuantileTransformer

    from tagllm_core.descriptors import feature_names, input_features

    x_tr, x_va = input_features("smiles", train_smiles), input_features("smiles", valid_smiles)
    names = np.array([n.split(":", 1)[1] for n in feature_names("smiles")])
    distinct = np.array([len(np.unique(c[~np.isnan(c)])) for c in x_tr.T])
    keep = (np.isnan(x_tr).mean(0) < 0.01) & (distinct >= 20)
    x_tr, x_va, names = x_tr[:, keep], x_va[:, keep], names[keep]
    median = np.nanmedian(x_tr, 0)
    x_tr, x_va = np.where(np.isnan(x_tr), median, x_tr), np.where(np.isnan(x_va), median, x_va)
    qt = QuantileTransformer(output_distribution="normal", n_quantiles=min(1000, len(x_tr)), random_state=0)
    z_tr, z_va = qt.fit(x_tr).transform(x_tr), qt.transform(x_va)
    order = sorted(range(len(names)), key=lambda i: names[i] != "MolLogP")  # stable: MolLogP first, the rest as is
    return z_tr[:, order], z_va[:, order], [str(names[i]) for i in order]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5000, help="MOSES training molecules")
    ap.add_argument("--valid-rows", type=int, default=500, help="MOSES test molecules to validate on")
    ap.add_argument("--layer", type=int, default=12, help="read-out layer (fixed)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--tag-lr", type=float, default=1e-3)
    ap.add_argument("--head-lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--score-training-rows", action="store_true",
                    help="validate on the first --valid-rows training molecules: does training improve its own fit?")
    args = ap.parse_args()
    tune_allocator()

    from tagllm_core.backbone import load_backbone
    from tagllm_core.data import moses_smiles_path
    from tagllm_core.tags import SlotSpec, TagLibrary
    from tagllm_core.training import FunctionTagConfig, train_function_tag

    def sample(split: str, n: int, seed: int) -> list[str]:
        return pd.read_csv(moses_smiles_path(split), usecols=["SMILES"])["SMILES"].sample(n, random_state=seed).tolist()

    train_smiles = sample("train", args.rows, 0)
    valid_smiles = train_smiles[:args.valid_rows] if args.score_training_rows else sample("test", args.valid_rows, 1)
    z_tr, z_va, names = descriptor_labels(train_smiles, valid_smiles)
    labels = [f"d{i}" for i in range(len(names))]
    print(f"{len(names)} descriptor labels ({', '.join(names[:6])}, ...); train {len(train_smiles)}, valid "
          f"{len(valid_smiles)}{' (training rows)' if args.score_training_rows else ' (MOSES test)'}", flush=True)

    def frame(smiles: list[str], z: np.ndarray) -> pd.DataFrame:
        df = pd.DataFrame(z, columns=labels).astype(str)
        df.insert(0, "smiles", smiles)
        return df

    bb = load_backbone()
    # anchor_decay 0: nothing pulls the tag back to its start; patience = epochs: every epoch runs
    cfg = FunctionTagConfig(name="Descriptors", slots=[SlotSpec("smiles", "smiles", None)], labels=labels,
                            what="chemical descriptors", epochs=args.epochs, features="none", layers=[args.layer],
                            tag_lr=args.tag_lr, head_lr=args.head_lr, batch_size=args.batch_size, anchor_decay=0.0,
                            patience=args.epochs, baselines=False, cache_budget_gb=12.0)
    t0 = time.perf_counter()
    res = train_function_tag(bb, TagLibrary(bb.fingerprint), cfg, frame(train_smiles, z_tr),
                             frame(valid_smiles, z_va), save=False)
    for h in res.history:
        loss = h.get("train_loss")
        print(f"epoch {h['epoch']}: train loss {'-' if loss is None else f'{loss:.4f}'}, valid mean scaled RMSE "
              f"{h['valid_mean_scaled_rmse']:.4f} (MolLogP RMSE {h['valid_rmse']:.4f})", flush=True)
    card = res.tag.card
    print(f"kept epoch {card.training['best_epoch']} (0 = the ridge warm start); {time.perf_counter() - t0:.0f} s; "
          f"phases {card.training['phase_seconds']}", flush=True)
    for w in res.warnings:
        print(f"warning: {w}", flush=True)


if __name__ == "__main__":
    main()

"""Tag-LLM against baselines on the benchmark valid splits, as one table.

Rows per data set (all fitted on `train`, scored on `valid` of ../shared/benchmarks):
  * mean            predict the training mean;
  * probe-mean      ridge (alpha by CV, standardised features) on mean-pooled last-layer states of the same backbone;
  * probe-last      ridge on the last layer's state at the last token;
  * notag-head      the Tag-LLM template with no tag tokens, ridge head on its last+mean read-out;
  * probe-mean@L    probe-mean at the layer L that scores best on valid (L printed; optimistic: chosen on valid);
  * probe@L+desc    ridge on [mean-pooled layer-L states ; descriptors of every input] (tagllm_core.descriptors:
                    RDKit 2D for SMILES, composition + ProtParam for proteins): the descriptor-augmented head;
  * ridge-desc      ridge on the descriptors alone;
  * rf-morgan       random forest on Morgan fingerprints (SMILES inputs);
  * rf-rdkit        random forest on RDKit 2D descriptors (SMILES inputs);
  * ridge-onehot    ridge on one-hot residues (protein inputs, aligned by position);
  * rf-morgan+onehot  random forest on drug Morgan bits + protein one-hot (protein-drug pairs);
  * tagllm          train_function_tag with the library defaults (and --variant settings).

Backbone features are cached in .tagllm-dev/features so reruns are cheap.

Usage:  .venv/bin/python bench/accuracy.py --datasets esol bace [--max-train 2000] [--epochs 4]
        .venv/bin/python bench/accuracy.py --datasets gb1 --crop protein=64
        .venv/bin/python bench/accuracy.py --datasets davis --max-proteins 32 --crop protein=512
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from tagllm_core._allocator import tune as tune_allocator  # noqa: E402

SHARED = ROOT.parent / "shared" / "benchmarks"
DOMAIN_TAGS = {"smiles": "SMILES", "protein": "Protein"}
CACHE = ROOT / ".tagllm-dev" / "features"

DATASETS = {
    "esol": ("esol.csv", {"smiles": "smiles"}, "aqueous solubility (log mol/L)"),
    "bace": ("bace.csv", {"smiles": "smiles"}, "BACE-1 pIC50"),
    "gb1": ("gb1_three_vs_rest.csv", {"sequence": "protein"}, "GB1 fitness"),
    "davis": ("davis.csv.gz", {"sequence": "protein", "smiles": "smiles"}, "binding affinity (pKd)"),
}


def load(name: str, max_train: int | None, max_valid: int | None, seed: int = 0, max_proteins: int | None = None):
    fname, slots, what = DATASETS[name]
    df = pd.read_csv(SHARED / fname)
    if max_proteins and "target_id" in df and df.target_id.nunique() > max_proteins:
        # Subsample whole targets (all their drugs), so each kept protein is shared by many pairs.
        keep = pd.Series(df.target_id.unique()).sample(max_proteins, random_state=seed)
        df = df[df.target_id.isin(set(keep))]
    tr = df[df.split == "train"].reset_index(drop=True)
    va = df[df.split == "valid"].reset_index(drop=True)
    if max_train and len(tr) > max_train:
        tr = tr.sample(max_train, random_state=seed).reset_index(drop=True)
    if max_valid and len(va) > max_valid:
        va = va.sample(max_valid, random_state=seed).reset_index(drop=True)
    return tr, va, slots, what


def template_for(slots: dict, what: str, tag: str) -> str:
    from tagllm_core.templates import default_template

    return default_template([(s, k, None) for s, k in slots.items()], tag, what)


def backbone_features(bb, df, slots, what, crop: dict) -> np.ndarray:
    """(N, 2, L, d) ``[last ; mean]`` features of the no-tag template at every layer (RMS-normalised,
    ``tagllm_core.stack``), one forward pass; cached on disk. Rows sharing their first input (stage 3:
    one protein, many drugs) share its states."""
    from tagllm_core.domains import clean
    from tagllm_core.model import TaggedModel
    from tagllm_core.prefix_cache import grouped_features, row_groups
    from tagllm_core.templates import Template

    text = template_for(slots, what, "NoTag")
    # The template's text is in the key: a changed default wording must not reuse another prompt's states.
    key = hashlib.sha256(json.dumps([bb.fingerprint.embedding_sha256, text, "last+mean@all", list(slots), crop,
                                     df[list(slots)].astype(str).values.tolist()]).encode()).hexdigest()[:16]
    path = CACHE / f"{key}.npy"
    if path.exists():
        return np.load(path)
    t = Template.parse(text)
    n = bb.n_layers
    model = TaggedModel(bb, t, slots, {"NoTag": torch.zeros(0, bb.hidden_size)}, readout="last+mean",
                        layers=tuple(range(1, n + 1)))
    rows = [{s: clean(k, v, crop.get(k)).value for (s, k), v in zip(slots.items(), r)}
            for r in df[list(slots)].values.tolist()]
    plans = [model.plan(r) for r in rows]
    groups = row_groups(t, rows)
    t0 = time.perf_counter()
    with torch.inference_mode():
        feats = grouped_features(model, plans, groups).numpy().reshape(len(plans), 2, n, bb.hidden_size)
    print(f"    features for {len(plans)} rows: {time.perf_counter() - t0:.0f} s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, feats)
    return feats


def input_descriptors(df, slots: dict, crop: dict) -> np.ndarray:
    """(N, E) descriptors of every input (``tagllm_core.descriptors``); undefined values become the
    column median of ``df``."""
    from tagllm_core.descriptors import row_features
    from tagllm_core.domains import clean

    rows = [{s: clean(k, v, crop.get(k)).value for (s, k), v in zip(slots.items(), r)}
            for r in df[list(slots)].values.tolist()]
    X = row_features(slots, rows)
    med = np.nan_to_num(np.nanmedian(X, axis=0))
    return np.where(np.isnan(X), med, X)


def ridge_cv(Xtr, ytr, Xva):
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(Xtr)
    m = RidgeCV(alphas=np.logspace(-2, 5, 15)).fit(np.clip(sc.transform(Xtr), -8, 8), ytr)
    return m.predict(np.clip(sc.transform(Xva), -8, 8))


def morgan(smiles):
    from rdkit import Chem
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    return np.array([gen.GetFingerprintAsNumPy(Chem.MolFromSmiles(s)) for s in smiles], dtype=np.uint8)


def rdkit_desc(smiles):
    from rdkit import Chem
    from rdkit.Chem import Descriptors

    X = np.array([[f(Chem.MolFromSmiles(s)) for _, f in Descriptors.descList] for s in smiles], dtype=np.float64)
    return np.nan_to_num(X, nan=0.0, posinf=0.0, neginf=0.0).clip(-1e6, 1e6)


def onehot(seqs, length=None):
    length = length or max(map(len, seqs))
    aa = {a: i for i, a in enumerate("ACDEFGHIKLMNPQRSTVWY")}
    X = np.zeros((len(seqs), length * 20), np.uint8)
    for n, s in enumerate(seqs):
        for i, a in enumerate(s[:length]):
            if a in aa:
                X[n, i * 20 + aa[a]] = 1
    return X


def rf(Xtr, ytr, Xva, seed=0):
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=300, n_jobs=-1, random_state=seed).fit(Xtr, ytr).predict(Xva)


def _epoch_printer(t0: float):
    def show(ev):
        if ev.metrics:  # once per epoch (and after the warm start)
            print(f"      epoch {ev.epoch:.0f}: valid RMSE {ev.metrics.get('valid_rmse', float('nan')):.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return show


def run_dataset(bb, name, args, table):
    from tagllm_core.metrics import paired_difference, regression_metrics
    from tagllm_core.tags import SlotSpec, TagLibrary
    from tagllm_core.training import FunctionTagConfig, train_function_tag

    tr, va, slots, what = load(name, args.max_train, args.max_valid, max_proteins=args.max_proteins)
    crop = dict(args.crop)
    ytr, yva = tr.y.to_numpy(float), va.y.to_numpy(float)
    print(f"== {name}: train {len(tr)}, valid {len(va)}", flush=True)

    preds: dict = {}  # method -> (N,) valid predictions, for paired comparisons

    def versus(pred, method) -> str:
        """``tag − probe-mean@14: −0.031 (−0.052 to −0.010), better``: a paired bootstrap over the valid rows."""
        d = paired_difference("regression", yva, pred, preds[method])
        return f"{method}: {d.difference:+.3f} ({d.low:+.3f} to {d.high:+.3f}), {d.verdict}" if d else ""

    def add(method, pred, seconds=None, extra=""):
        preds[method] = pred
        m = regression_metrics(yva, pred)
        table.append({"dataset": name, "method": method, "rmse": m["rmse"], "mae": m["mae"],
                      "pearson": m.get("pearson"), "spearman": m.get("spearman"), "ci": m.get("ci"),
                      "n_train": len(tr), "n_valid": len(va), "seconds": seconds, "note": extra})
        ci = f"  CI {m['ci']:.3f}" if m.get("ci") is not None else ""
        print(f"    {method:14s} RMSE {m['rmse']:.3f}  Spearman {m.get('spearman', float('nan')):.3f}{ci}  {extra}",
              flush=True)

    add("mean", np.full(len(va), ytr.mean()))
    single_smiles = "smiles" in slots and len(slots) == 1
    if "probe" in args.methods:
        Ftr, Fva = backbone_features(bb, tr, slots, what, crop), backbone_features(bb, va, slots, what, crop)
        add("probe-mean", ridge_cv(Ftr[:, 1, -1], ytr, Fva[:, 1, -1]))
        add("probe-last", ridge_cv(Ftr[:, 0, -1], ytr, Fva[:, 0, -1]))
        add("notag-head", ridge_cv(Ftr[:, :, -1].reshape(len(tr), -1), ytr, Fva[:, :, -1].reshape(len(va), -1)),
            extra="template, no tag, last+mean read-out")
        by_layer = {layer + 1: ridge_cv(Ftr[:, 1, layer], ytr, Fva[:, 1, layer]) for layer in range(Ftr.shape[2])}
        best = min(by_layer, key=lambda k: np.sqrt(np.mean((by_layer[k] - yva) ** 2)))
        add(f"probe-mean@{best}", by_layer[best], extra="layer chosen on valid (optimistic)")
        Dtr, Dva = input_descriptors(tr, slots, crop), input_descriptors(va, slots, crop)
        add(f"probe@{best}+desc", ridge_cv(np.hstack([Ftr[:, 1, best - 1], Dtr]), ytr,
                                            np.hstack([Fva[:, 1, best - 1], Dva])))

    if "classic" in args.methods:
        add("ridge-desc", ridge_cv(input_descriptors(tr, slots, crop), ytr, input_descriptors(va, slots, crop)),
            extra="descriptors alone (RDKit 2D / composition + ProtParam)")
        if single_smiles:
            add("rf-morgan", rf(morgan(tr.smiles), ytr, morgan(va.smiles)))
            add("rf-rdkit", rf(rdkit_desc(tr.smiles), ytr, rdkit_desc(va.smiles)))
        if "sequence" in slots:
            L = min(max(map(len, tr.sequence)), crop.get("protein", 10**9))
            add("ridge-onehot", ridge_cv(onehot(tr.sequence, L), ytr, onehot(va.sequence, L)),
                extra="protein one-hot only" if len(slots) > 1 else "")
        if "smiles" in slots and "sequence" in slots:
            Xtr = np.concatenate([morgan(tr.smiles), onehot(tr.sequence, L)], 1)
            Xva = np.concatenate([morgan(va.smiles), onehot(va.sequence, L)], 1)
            add("rf-morgan+onehot", rf(Xtr, ytr, Xva), extra="drug Morgan bits + protein one-hot")
    if "tagllm" in args.methods:
        for variant in args.variants:
            overrides = json.loads(variant) if variant != "default" else {}
            # "domain_tags": true puts the bundled stage-1 tags (<SMILES>, <Protein>) in front of the inputs
            use_domain = overrides.pop("domain_tags", False)
            cfg = FunctionTagConfig(name=f"Bench{name}",
                                    slots=[SlotSpec(s, k, DOMAIN_TAGS[k] if use_domain else None)
                                           for s, k in slots.items()],
                                    labels=["y"], what=what, epochs=args.epochs,
                                    **{"cache_budget_gb": 12.0, "max_length": crop, **overrides})
            t0 = time.perf_counter()
            res = train_function_tag(bb, TagLibrary(bb.fingerprint), cfg, tr.astype({"y": str}), va.astype({"y": str}),
                                     save=False, progress=_epoch_printer(t0))
            hist = " ".join(f"{h['epoch']}:{h.get('valid_rmse', float('nan')):.3f}" for h in res.history)
            card = res.tag.card
            probe = card.metrics.get("baselines", {}).get("probe") or {}
            warm = card.metrics.get("baselines", {}).get("warm_start") or {}
            vw = {k: (warm.get("versus_tag") or {}).get(k, float("nan")) for k in ("difference", "low", "high")}
            held = card.metrics.get("held_out") or {}
            # the tag against the strongest models and the earlier variants of this run on the same rows (tag
            # minus model, 95% interval)
            against = [m for m in preds if m.startswith(("probe-mean@", "rf-", "tagllm"))]
            vp = {k: (probe.get("versus_tag") or {}).get(k, float("nan")) for k in ("difference", "low", "high")}
            paired = "; ".join(filter(None, [versus(np.array(res.valid_pred), m) for m in against]))
            add(f"tagllm{'' if variant == 'default' else ' ' + variant}", np.array(res.valid_pred),
                time.perf_counter() - t0, f"layers {card.layers}; best epoch {card.training['best_epoch']}; "
                f"valid RMSE by epoch {hist}; held-out half RMSE {held.get('rmse', float('nan')):.3f}; "
                f"warm start RMSE {warm.get('rmse', float('nan')):.3f} (all rows; tag − warm start "
                f"{vw['difference']:+.3f}, {vw['low']:+.3f} to {vw['high']:+.3f}); "
                f"same run's probe (layer {probe.get('layer')}) RMSE {probe.get('rmse', float('nan')):.3f}, "
                f"CI {probe.get('ci', float('nan')):.3f}, tag − probe {vp['difference']:+.3f} "
                f"({vp['low']:+.3f} to {vp['high']:+.3f}); "
                f"paired, tag − {paired or 'no other model run'}; seconds by phase {card.training['phase_seconds']}")


def crop_arg(kv: str) -> tuple[str, int]:
    """``protein=512`` -> ("protein", 512): one ``--crop`` item."""
    kind, length = kv.split("=")
    return kind, int(length)


def main():
    tune_allocator()  # an entry point: the package no longer tunes malloc on import
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["esol", "bace"])
    ap.add_argument("--methods", nargs="+", default=["probe", "classic", "tagllm"])
    ap.add_argument("--variants", nargs="+", default=["default"],
                    help='JSON overrides of FunctionTagConfig, e.g. \'{"tag_lr": 1e-4}\'; "default" = library defaults')
    ap.add_argument("--max-train", type=int)
    ap.add_argument("--max-valid", type=int)
    ap.add_argument("--max-proteins", type=int, help="DAVIS: keep this many targets (with all their drugs)")
    ap.add_argument("--crop", nargs="*", default=[], type=crop_arg,
                    help="crop inputs, e.g. protein=512 (applied to every method that reads the sequence)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / ".tagllm-dev" / "accuracy.json"))
    args = ap.parse_args()
    from tagllm_core.backbone import load_backbone

    bb = load_backbone()
    table: list = []
    for name in args.datasets:
        run_dataset(bb, name, args, table)
    df = pd.DataFrame(table)
    print()
    print(df.drop(columns=["note"]).to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else df.to_string())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(table, indent=1, default=float))


def _has_tabulate() -> bool:
    import importlib.util

    return importlib.util.find_spec("tabulate") is not None


if __name__ == "__main__":
    main()

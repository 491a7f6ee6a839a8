"""Train the tags bundled in tagllm_core/data/tags/<backbone-slug>/ (development only).

Needs ../shared (benchmarks, protein corpus) and, for <SMILES>, the MOSES
corpus from `pip install --no-deps molsets`. Each tag is trained with the
same library functions the app and CLI use, then written (atomically) into the
bundled folder; the command line that built it goes into its card.

Function tags are trained with the library defaults (read-out layer chosen
on validation, ``FunctionTagConfig.features``) unless ``--features`` says
otherwise; their cards carry the baselines fitted on the same rows.

Usage:
  .venv/bin/python bench/build_bundled_tags.py --only SMILES Protein Solubility [--steps 300] [--epochs 6]
  .venv/bin/python bench/build_bundled_tags.py --only QED --qed-rows 4000
  .venv/bin/python bench/build_bundled_tags.py --only GB1 --epochs 3
  .venv/bin/python bench/build_bundled_tags.py --compare-only --only Solubility BACE GB1 BindingAffinity
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import pandas as pd  # noqa: E402

from tagllm_core._allocator import tune as tune_allocator  # noqa: E402

SHARED = ROOT.parent / "shared"


def main():
    tune_allocator()  # an entry point: the package no longer tunes malloc on import
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="+", default=["SMILES", "Protein", "Solubility", "BACE"])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--domain-tags", action="store_true", help="function tags use the bundled <SMILES>/<Protein>")
    ap.add_argument("--davis-proteins", type=int, default=32,
                    help="<BindingAffinity>: DAVIS targets kept (with all their drugs); CPU time bounds it")
    ap.add_argument("--qed-rows", type=int, default=4000, help="<QED>: MOSES training molecules (valid: 10%%)")
    ap.add_argument("--features", help="none | descriptors (default: the library default)")
    ap.add_argument("--reference-rows", type=int, default=2000,
                    help="MOSES reference molecules each single-molecule function tag predicts for its percentiles")
    ap.add_argument("--out-dir", help="write here instead of the bundled folder (for trial builds)")
    ap.add_argument("--compare-only", action="store_true",
                    help="train nothing: add the paired comparison with each baseline to the built function tags "
                         "named by --only, where this run reproduces the card's figures")
    ap.add_argument("--template", help="the prompt of the one function tag built (default: the library's); "
                                       "to rebuild a tag with the wording its card records")
    args = ap.parse_args()
    overrides = {"features": args.features} if args.features else {}
    if args.template:
        function_tags = [n for n in args.only if n not in ("SMILES", "Protein")]
        if len(function_tags) != 1:
            ap.error(f"--template names one tag's prompt; --only builds {function_tags or 'no function tag'}")
        overrides["template"] = args.template
    overrides["reference_rows"] = args.reference_rows

    from tagllm_core.backbone import load_backbone
    from tagllm_core.data import moses_smiles_path, read_corpus
    from tagllm_core.paths import BUNDLED_TAGS_DIR
    from tagllm_core.tags import SlotSpec, TagLibrary, save_tag_file
    from tagllm_core.training import DomainTagConfig, FunctionTagConfig, train_domain_tag, train_function_tag

    bb = load_backbone()
    out_dir = Path(args.out_dir) if args.out_dir else BUNDLED_TAGS_DIR / bb.fingerprint.slug
    out_dir.mkdir(parents=True, exist_ok=True)
    # the card records how to rebuild the tag; where a trial build was written is not part of that
    argv = sys.argv[1:]
    if "--out-dir" in argv:
        at = argv.index("--out-dir")
        argv = argv[:at] + argv[at + 2:]
    argv = [a for a in argv if not a.startswith("--out-dir=")]  # argparse's other spelling
    command = "python bench/build_bundled_tags.py " + shlex.join(argv)  # a --template holds spaces

    def progress(ev):
        if ev.metrics or ev.step == ev.total_steps or ev.step % 25 == 0:
            print(f"  {ev.stage} {ev.step}/{ev.total_steps} loss={ev.loss} {ev.metrics or ''}", flush=True)

    def write(tag):
        tag.card.training["built_by"] = command
        path = out_dir / f"{tag.name}.tag.safetensors"
        save_tag_file(tag, path)
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")

    if "SMILES" in args.only:
        corpus = pd.read_csv(moses_smiles_path("train"), usecols=["SMILES"], nrows=20000)["SMILES"].tolist()
        cfg = DomainTagConfig("SMILES", "smiles", steps=args.steps, batch_size=8, max_tokens=96,
                              description="Molecules written as SMILES (MOSES/ZINC drug-like set).")
        res = train_domain_tag(bb, None, cfg, corpus, progress=progress, save=False, data_name="MOSES train (20k)")
        print("SMILES perplexity", res.perplexity)
        write(res.tag)
    if "Protein" in args.only:
        corpus = read_corpus(SHARED / "corpora" / "proteins.fasta")
        # 128 residues per sequence: a full backward pass per step on two CPU cores is the cost here.
        cfg = DomainTagConfig("Protein", "protein", steps=args.steps, batch_size=4, max_tokens=128,
                              description="Protein amino-acid sequences, one residue per token.")
        res = train_domain_tag(bb, None, cfg, corpus, progress=progress, save=False, data_name="proteins.fasta (2,597)")
        print("Protein perplexity", res.perplexity)
        write(res.tag)

    def bundled_lib():
        return TagLibrary(bb.fingerprint, user_dir=out_dir)  # to resolve freshly written domain tags

    dom = "SMILES" if args.domain_tags else None
    wanted = [n for n in ("Solubility", "BACE", "QED", "GB1", "BindingAffinity") if n in args.only]
    if args.compare_only:
        for key in wanted:
            tr, va = function_data(key, args)
            add_comparisons(bb, out_dir, TAG_NAMES.get(key, key), tr, va, command)
        return
    jobs = {
        "Solubility": ("esol.csv", "aqueous solubility (log10 mol/L)",
                       "Aqueous solubility, log10(mol/L) (ESOL, Delaney 2004; scaffold split)."),
        "BACE": ("bace.csv", "BACE-1 inhibition (pIC50)",
                 "BACE-1 inhibition, pIC50 (Subramanian et al. 2016; scaffold split)."),
    }
    for name, (fname, what, desc) in jobs.items():
        if name not in args.only:
            continue
        tr, va = function_data(name, args)
        cfg = FunctionTagConfig(name=name, slots=[SlotSpec("smiles", "smiles", dom)], labels=["y"], what=what,
                                epochs=args.epochs, description=desc, **overrides)
        res = train_function_tag(bb, bundled_lib(), cfg, tr, va, progress=progress, save=False, data_name=fname)
        print(name, res.metrics)
        write(res.tag)

    if "QED" in args.only:
        # The paper's QED task: RDKit's quantitative estimate of drug-likeness as the label, on MOSES
        # molecules (abundant, free labels). Train from MOSES train, validate on MOSES test.
        tr, va = function_data("QED", args)
        # The pure tag unless --features says otherwise: RDKit's 2D descriptors include QED itself, so a
        # descriptor-augmented head reads the label off its inputs (warm start: valid RMSE 2e-5).
        qed_overrides = {"features": "none", **overrides}
        cfg = FunctionTagConfig(name="QED", slots=[SlotSpec("smiles", "smiles", dom)], labels=["y"],
                                what="drug-likeness (QED)", epochs=args.epochs,
                                description=(f"Quantitative estimate of drug-likeness (QED, Bickerton et al. 2012, as "
                                             f"computed by RDKit) learned from {args.qed_rows:,} MOSES molecules"
                                             + ("; the pure tag (RDKit's descriptors include QED itself)."
                                                if qed_overrides["features"] == "none" else ".")),
                                **qed_overrides)
        res = train_function_tag(bb, bundled_lib(), cfg, tr, va, progress=progress, save=False,
                                 data_name=f"MOSES train ({args.qed_rows:,}) / test ({len(va):,}), RDKit QED")
        print("QED", res.metrics)
        write(res.tag)

    if "GB1" in args.only:
        tr, va = function_data("GB1", args)
        cfg = FunctionTagConfig(name="GB1Fitness", slots=[SlotSpec("sequence", "protein", None)], labels=["y"],
                                what="GB1 binding fitness", epochs=args.epochs, max_length={"protein": 56},
                                description=("Protein GB1 binding fitness relative to wild type (Wu et al. 2016, FLIP "
                                             "split three_vs_rest: trained on up to triple mutants; sequences cropped "
                                             "to the 56-residue GB1 domain)."), **overrides)
        res = train_function_tag(bb, bundled_lib(), cfg, tr, va, progress=progress, save=False,
                                 data_name="gb1_three_vs_rest.csv")
        print("GB1Fitness", res.metrics)
        write(res.tag)

    if "BindingAffinity" in args.only:
        # Stage 3: protein and drug, each behind its stage-1 domain tag (needs <Protein> and <SMILES>).
        tr, va = function_data("BindingAffinity", args)
        cfg = FunctionTagConfig(
            name="BindingAffinity",
            slots=[SlotSpec("sequence", "protein", "Protein"), SlotSpec("smiles", "smiles", "SMILES")],
            labels=["y"], what="binding affinity (pKd)", epochs=args.epochs, max_length={"protein": 512},
            cache_budget_gb=12.0, **overrides,
            description=(f"Kinase-inhibitor binding affinity, pKd (DAVIS, Davis et al. 2011; "
                         f"DeepDTA setting-1 folds, {args.davis_proteins} of 442 kinases with all their drugs; "
                         f"proteins cropped to 512 residues)."))
        res = train_function_tag(bb, bundled_lib(), cfg, tr, va, progress=progress, save=False,
                                 data_name=f"davis.csv.gz ({args.davis_proteins} targets)")
        print("BindingAffinity", res.metrics)
        write(res.tag)


TAG_NAMES = {"GB1": "GB1Fitness"}  # --only key -> tag name where they differ


def function_data(key: str, args) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid) rows of a bundled function tag, read as its build reads them."""
    from tagllm_core.data import moses_smiles_path

    if key in ("Solubility", "BACE"):
        df = pd.read_csv(SHARED / "benchmarks" / {"Solubility": "esol.csv", "BACE": "bace.csv"}[key], dtype=str)
        return df[df.split == "train"], df[df.split == "valid"]
    if key == "QED":
        from rdkit import Chem
        from rdkit.Chem import QED

        def qed_frame(split, n, seed):
            smi = pd.read_csv(moses_smiles_path(split), usecols=["SMILES"])["SMILES"].sample(n, random_state=seed)
            return pd.DataFrame({"smiles": smi.tolist(),
                                 "y": [QED.qed(Chem.MolFromSmiles(s)) for s in smi]}).astype({"y": str})

        return qed_frame("train", args.qed_rows, 0), qed_frame("test", max(200, args.qed_rows // 10), 1)
    if key == "GB1":
        # FLIP GB1 three_vs_rest: every sequence is the same construct with mutations at residues 39-41
        # and 54, so the 56-residue GB1 domain holds all the information (bench/accuracy.py --crop).
        df = pd.read_csv(SHARED / "benchmarks" / "gb1_three_vs_rest.csv", dtype={"y": str})
        return df[df.split == "train"], df[df.split == "valid"]
    if key == "BindingAffinity":
        df = pd.read_csv(SHARED / "benchmarks" / "davis.csv.gz", dtype={"y": str})
        keep = pd.Series(df.target_id.unique()).sample(args.davis_proteins, random_state=0)
        df = df[df.target_id.isin(set(keep))]
        return df[df.split == "train"], df[df.split == "valid"]
    raise ValueError(key)


def add_comparisons(bb, out_dir: Path, name: str, tr: pd.DataFrame, va: pd.DataFrame, command: str) -> None:
    """Give an already built tag's card the paired comparison (``versus_tag``) with each baseline whose
    figures this run reproduces: the tag is predicted on its validation rows, which must give the card's
    validation metrics; the mean, ridge and RF on descriptors are refitted on its training rows
    (``evaluation.classic_baselines``) and must match the card's figures. The warm start gets it when it is
    the kept state (the same predictions). The probe is not refitted here and keeps its plain figures."""
    import numpy as np

    from tagllm_core.evaluation import classic_baselines, score_predictions
    from tagllm_core.metrics import paired_difference
    from tagllm_core.prediction import Predictor, output_labels, results_frame
    from tagllm_core.tags import TagLibrary, load_tag_file, save_tag_file

    path = out_dir / f"{name}.tag.safetensors"
    tag = load_tag_file(path)
    card = tag.card
    assert card.task == "regression", "the bundled function tags are regressions"
    rows = va[[s.name for s in card.slots]].to_dict("records")
    results = Predictor(bb, tag, TagLibrary(bb.fingerprint, user_dir=out_dir)).predict(rows)
    ev = score_predictions(card, results_frame(results, None, output_labels(card)), va, card.labels[:1])
    stored = card.metrics["valid"]
    print(f"<{name}>: valid RMSE {ev.first.metrics['rmse']:.6f} on {ev.first.metrics['n']} rows; the card: "
          f"{stored['rmse']:.6f} on {stored['n']}")
    # prediction batches rows differently from training's cached pass: float rounding, not another model
    if ev.first.metrics["n"] != stored["n"] or abs(ev.first.metrics["rmse"] - stored["rmse"]) > 1e-4:
        print(f"  the card's validation figures are not reproduced: <{name}> left as it is")
        return
    seed = int((card.training.get("config") or {}).get("seed", 0))
    found = classic_baselines(card, ev, rows, tr, None, card.labels[0], seed=seed)
    baselines = card.metrics["baselines"]
    added = []
    for key, metrics in found.items():
        old = baselines.get(key) or {}
        same = old.get("n") == metrics["n"] and abs(old.get("rmse", np.inf) - metrics["rmse"]) <= 1e-5
        print(f"  {key}: RMSE {metrics['rmse']:.6f}, the card {old.get('rmse')}: "
              f"{'reproduced' if same else 'NOT reproduced, left without a comparison'}")
        if same:
            old["versus_tag"] = metrics["versus_tag"]
            added.append(key)
    warm = baselines.get("warm_start") or {}
    if warm.get("n") == stored["n"] and warm.get("rmse") == stored["rmse"]:  # the kept state is the warm start
        versus = paired_difference("regression", ev.first.true, ev.first.pred, ev.first.pred, seed=seed)
        assert versus is not None
        warm["versus_tag"] = versus.to_dict()
        added.append("warm_start")
    if added:
        card.training["comparisons_added_by"] = command
        save_tag_file(tag, path)
        print(f"  wrote {path}: versus_tag for {', '.join(added)}")


if __name__ == "__main__":
    main()

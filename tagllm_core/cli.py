"""``python -m tagllm_core`` (entry point ``tagllm``): the same operations as the app.

A thin layer: each command parses its arguments, calls the library, and
prints. Errors derived from ``TagLLMError`` are printed as one line (exit 2);
anything else is a bug and keeps its traceback.

Training commands and ``predict`` accept ``--job-db PATH --job-id N``: the app launches them
this way as background jobs (see ``jobs``), and progress goes to SQLite. ``predict`` streams its
input in chunks and can resume an interrupted output (``streaming``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import sys
from pathlib import Path
from typing import Optional

# Only light modules here: the parser is built (``--help``, a mistyped option) without the training code
# and torch, which each command imports when it runs.
from . import _allocator
from .descriptors import FEATURE_SETS
from .domains import KINDS, guess_kind
from .exceptions import InputError, TagLLMError
from .progress import ProgressEvent

__all__ = ["main", "build_parser", "parse_input_spec"]


def parse_input_spec(spec: str, library=None):
    """``smiles=<SMILES>``, ``sequence=<Protein>``, ``smiles`` / ``smiles=none``, or ``drug=none:smiles``
    -> SlotSpec. The input kind comes from the domain tag's card, else ``:KIND``, else the slot name."""
    from .tags import SlotSpec, normalize_tag_name

    slot, _, rest = spec.partition("=")
    slot = slot.strip()
    if not slot.isidentifier():
        raise InputError(f"Bad --input {spec!r}: the slot name must be a simple identifier.")
    tag_part, _, kind = rest.partition(":") if not rest.startswith("<") else (rest, "", "")
    if rest.startswith("<") and ">:" in rest:
        tag_part, kind = rest.split(">:", 1)
        tag_part += ">"
    domain = None if tag_part.strip() in ("", "none") else normalize_tag_name(tag_part)
    if not kind and domain and library is not None and library.exists(domain):
        kind = library.find(domain).card.input_kind or ""
    kind = kind or guess_kind(slot)
    if kind not in KINDS:
        raise InputError(f"Bad --input {spec!r}: kind must be smiles, protein or text.")
    return SlotSpec(slot, kind, domain)


def _pairs(values: Optional[list], what: str) -> dict:
    out = {}
    for v in values or []:
        k, sep, val = v.partition("=")
        if not sep:
            raise InputError(f"{what} expects KEY=VALUE, got {v!r}.")
        out[k.strip()] = None if val.strip() in ("none", "") else val.strip()
    return out


def _lengths(values: Optional[list]) -> dict:
    out = {}
    for kind, n in _pairs(values, "--max-length").items():
        if kind not in KINDS or not (n or "").isdigit() or int(n) < 1:
            raise InputError(f"--max-length expects KIND=N with KIND smiles, protein or text, got {kind}={n}.")
        out[kind] = int(n)
    return out


def _backbone(args):
    from .backbone import get_backbone

    return get_backbone(args.backbone, args.device, args.dtype)


def _library(bb):
    from .tags import TagLibrary

    return TagLibrary(bb.fingerprint)


def _tqdm_progress(desc: str):
    from tqdm import tqdm

    b = None  # the bar, opened by the first event

    def callback(ev: ProgressEvent) -> None:
        nonlocal b
        if ev.is_warning:
            tqdm.write(ev.message, file=sys.stderr)  # printed above the bar, so it stays on screen
        if b is None:
            b = tqdm(total=ev.total_steps, desc=desc, unit="step", file=sys.stderr)
        b.total = ev.total_steps
        b.n = ev.step
        post = {}
        if ev.loss is not None:
            post["loss"] = f"{ev.loss:.4f}"
        for k, v in (ev.metrics or {}).items():
            if isinstance(v, float):
                post[k] = f"{v:.4f}"
        if post:
            b.set_postfix(post, refresh=False)
        b.refresh()
        if ev.step >= ev.total_steps:
            b.close()

    return callback


# ---------------------------------------------------------------------------- commands


def cmd_backbone_info(args) -> int:
    print(json.dumps(_backbone(args).info(), indent=2))
    return 0


def cmd_tags(args) -> int:
    bb = _backbone(args)
    lib = _library(bb)
    if args.tags_cmd == "list":
        rows = lib.list()
        if args.json:
            print(json.dumps([{"name": t.name, "kind": t.card.kind, "source": t.source, "size": t.size_bytes,
                               "template": t.card.template} for t in rows], indent=2))
        else:
            for t in rows:
                print(f"<{t.name}>\t{t.card.kind}\t{t.source}\t{t.size_bytes // 1024} KB\t"
                      f"{t.card.template or t.card.input_kind}")
        for p in lib.problems():
            print(f"warning: {p}", file=sys.stderr)
    elif args.tags_cmd == "show":
        info = lib.find(args.name)
        card = json.loads(info.card.to_json())
        card.pop("label_sample", None)
        print(json.dumps({"source": info.source, "path": str(info.path), **card}, indent=2))
    elif args.tags_cmd == "export":
        print(lib.export(args.name, Path(args.dest)))
    elif args.tags_cmd == "import":
        info = lib.import_file(Path(args.file), overwrite=args.overwrite)
        print(f"imported <{info.name}> to {info.path}")
    elif args.tags_cmd == "delete":
        lib.delete(args.name)
        print(f"deleted <{args.name}>")
    elif args.tags_cmd == "add-reference":
        _add_reference(bb, lib, args)
    return 0


def _add_reference(bb, lib, args) -> None:
    """Predict the reference set with a user tag and store the distribution in its file (``reference``)."""
    from .reference import attach_reference

    info = lib.find(args.name)
    if info.source != "user":
        raise TagLLMError(f"<{info.name}> is bundled with the app and read-only; its reference distribution is "
                          f"added when it is built. Export it and import it under another name to add one.")
    tag = attach_reference(lib.get(info.name), bb, rows=args.rows, batch_size=args.batch_size,
                           progress=None if args.quiet else _tqdm_progress("reference"))
    path = lib.save(tag, overwrite=True)  # atomic: the old file or the new one, never half of one
    entry = tag.card.reference_set
    skipped = f", {entry['n_skipped']:,} skipped (not predictable)" if entry["n_skipped"] else ""
    print(f"<{tag.name}>: predictions over {entry['n']:,} reference molecules ({entry['name']}){skipped} "
          f"stored in {path}")


def cmd_predict(args) -> int:
    from .streaming import predict_file

    names = list(args.tag or []) + [n.strip() for v in args.tags or [] for n in v.split(",") if n.strip()]
    if not names:
        raise InputError("predict needs a function tag: --tag NAME (repeat it, or --tags A,B, for several).")
    if len(dict.fromkeys(names)) > 1 and args.domain:
        raise InputError("--domain swaps a domain tag of one function tag; predict several tags without it.")

    def work(progress):
        # Loaded here, inside the job once it holds its slot (``jobs.run_job``), like the training commands.
        bb = _backbone(args)
        lib = _library(bb)
        res = predict_file(bb, [lib.get(n) for n in dict.fromkeys(names)], lib, Path(args.input),
                           Path(args.output), columns=_pairs(args.column, "--column"),
                           domain_overrides=_pairs(args.domain, "--domain") or None, chunk_rows=args.chunk_rows,
                           batch_size=args.batch_size, resume=args.resume, progress=progress)
        return res.to_dict()

    def report(res: dict) -> None:
        kept = f"; {res['skipped']:,} rows already done were kept" if res["skipped"] else ""
        print(f"wrote {res['skipped'] + res['rows']:,} rows to {args.output} ({res['rows'] - res['errors']:,} "
              f"predicted, {res['errors']:,} with errors{kept}) at {res['rows_per_s']:.1f} rows/s")
        if res["outside"]:
            print(f"{res['outside']:,} outside the tag's applicability domain (see the similarity, domain and "
                  f"flags columns)")
        for msg in res["error_examples"]:
            print(f"  {msg}", file=sys.stderr)

    # Under torchrun a helper process runs its share of the batches; process 0 writes the table and reports.
    return _run_maybe_as_job(args, work, report)


def cmd_evaluate(args) -> int:
    from .data import read_table, require_columns
    from .evaluation import classic_baselines, score_predictions
    from .prediction import Predictor, output_labels, results_frame

    bb = _backbone(args)
    lib = _library(bb)
    tag = lib.get(args.tag)
    predictor = Predictor(bb, tag, lib)
    df = read_table(args.input)
    columns = {s: _pairs(args.column, "--column").get(s, s) for s in predictor.slots}
    require_columns(df, [*columns.values(), *args.label], "evaluation")
    train = read_table(args.baselines_from) if args.baselines_from else None
    if train is not None:  # a wrong training file fails before the model runs, not after
        require_columns(train, [*columns.values(), args.train_label or args.label[0]], "baseline training")
    rows = [{slot: df[col].iat[i] for slot, col in columns.items()} for i in range(len(df))]
    results = predictor.predict(rows, batch_size=args.batch_size)
    frame = results_frame(results, tag.card.classes if tag.card.task == "classification" else None,
                          output_labels(tag.card))
    evaluation = score_predictions(tag.card, frame, df, args.label)
    if train is not None:
        classic_baselines(tag.card, evaluation, rows, train, columns, args.train_label or args.label[0])
    print(json.dumps(evaluation.to_dict(), indent=2))
    return 0


def _run_maybe_as_job(args, work, report=None) -> int:
    """Run ``work(progress)`` directly (a tqdm bar unless ``--quiet``, then ``report(result)``: the
    result as JSON by default) or, with --job-db/--job-id, as a tracked job of the app. Under torchrun
    or accelerate launch, a helper process (RANK > 0) does its share of ``work`` and reports nothing.
    Every path that finishes leaves the process group together (``distributed.leave_together``)."""
    from .distributed import leave_together

    if int(os.environ.get("RANK", "0")):
        work(None)
        leave_together()
        return 0
    if args.job_db:
        from .jobs import JobStore, run_job

        state = run_job(JobStore(Path(args.job_db)), int(args.job_id), lambda reporter: work(reporter))
        if state != "finished":  # the run is over: helpers still waiting fail when this process leaves
            return 1
        leave_together()
        return 0
    result = work(None if getattr(args, "quiet", False) else _tqdm_progress(args.command))
    leave_together()
    if report is None:
        print(json.dumps(result, indent=2, default=str))
    else:
        report(result)
    return 0


def _column_map(values: Optional[list], df) -> dict:
    """``--column SLOT=COLUMN`` pairs -> {slot: column}. A column name is taken exactly as given when
    the table has it (leading/trailing spaces, a column called ``none``), else with spaces trimmed."""
    out = {}
    for v in values or []:
        slot, sep, column = v.partition("=")
        if not sep:
            raise InputError(f"--column expects SLOT=COLUMN, got {v!r}.")
        out[slot.strip()] = column if column in df.columns else column.strip()
    return out


def cmd_train_function_tag(args) -> int:
    from .data import read_table
    from .tags import normalize_tag_name
    from .training import FunctionTagConfig, train_function_tag

    def work(progress):
        # Everything is loaded here, inside the job once it has its slot (``jobs.run_job``): a queued job
        # holds no backbone or data, and a loading error is recorded with its message.
        bb = _backbone(args)
        lib = _library(bb)
        slots = [parse_input_spec(s, lib) for s in args.input]
        train_df = read_table(args.train)
        cfg = FunctionTagConfig(
            name=normalize_tag_name(args.name), slots=slots, labels=args.label, task=args.task,
            template=args.template, columns=_column_map(args.column, train_df), what=args.what,
            n_tokens=args.n_tokens, readout=args.readout, epochs=args.epochs, batch_size=args.batch_size,
            tag_lr=args.tag_lr, head_lr=args.head_lr, anchor_decay=args.anchor_decay,
            ridge_warm_start=not args.no_warm_start, split=args.split, valid_fraction=args.valid_fraction,
            patience=args.patience, seed=args.seed, max_rows=args.max_rows, augment=args.augment,
            spellings=args.spellings, max_length=_lengths(args.max_length), layers=args.layers,
            layer_tolerance=args.layer_tolerance,
            features=args.features, forest=args.forest, reference_rows=args.reference_rows,
            description=args.description or "",
        )
        if args.split_column:
            if args.split_column not in train_df.columns:
                raise InputError(f"No split column {args.split_column!r} in {args.train}.")
            valid_df = train_df[train_df[args.split_column] == "valid"].reset_index(drop=True)
            train_df = train_df[train_df[args.split_column] == "train"].reset_index(drop=True)
        else:
            valid_df = read_table(args.valid) if args.valid else None
        ckpt = Path(args.checkpoint_dir) if args.checkpoint_dir else None
        res = train_function_tag(bb, lib, cfg, train_df, valid_df, progress=progress, checkpoint_dir=ckpt,
                                 data_name=Path(args.train).name)
        return {"tag": res.tag.name, "path": str(res.path), "metrics": res.metrics, "history": res.history,
                "held_out": (res.tag.card.metrics or {}).get("held_out"), "interval": res.tag.card.interval,
                "rows_dropped": len(res.dropped), "warnings": res.warnings,
                "dropped_examples": res.dropped[:10],
                "parity": {"true": res.valid_true[:2000], "pred": res.valid_pred[:2000]}}

    return _run_maybe_as_job(args, work)


def cmd_train_domain_tag(args) -> int:
    from .data import moses_smiles_path, read_corpus
    from .tags import normalize_tag_name
    from .training import DomainTagConfig, train_domain_tag

    def work(progress):
        # Loaded inside the job, after its slot is claimed (see cmd_train_function_tag).
        bb = _backbone(args)
        lib = _library(bb)
        if args.corpus == "moses":
            import pandas as pd

            corpus = pd.read_csv(moses_smiles_path("train"), usecols=["SMILES"],
                                 nrows=args.max_sequences)["SMILES"].tolist()
            fmt = "smiles"
        else:
            fmt = args.format
            corpus = read_corpus(args.corpus, fmt, args.column)
        if args.max_sequences:
            corpus = corpus[: args.max_sequences]
        kind = args.kind or ("protein" if (fmt == "fasta" or str(args.corpus).lower().endswith(
            (".fasta", ".fa", ".faa"))) else "smiles" if fmt in ("smiles", None) else "text")
        cfg = DomainTagConfig(name=normalize_tag_name(args.name), input_kind=kind, n_tokens=args.n_tokens,
                              steps=args.steps, batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr,
                              max_tokens=args.max_tokens, seed=args.seed, init_text=args.init_text,
                              description=args.description or "")
        res = train_domain_tag(bb, lib, cfg, corpus, progress=progress, data_name=Path(str(args.corpus)).name)
        return {"tag": res.tag.name, "path": str(res.path), "perplexity": res.perplexity, "history": res.history,
                "sequences_dropped": res.dropped, "warnings": res.warnings}

    return _run_maybe_as_job(args, work)


# ---------------------------------------------------------------------------- parser

# Options of train-function-tag whose defaults are FunctionTagConfig's (one source of defaults). The config
# lives with the training code, which imports torch: ``_Parser`` reads the defaults only once such a command
# line has parsed, so ``--help`` and a mistyped option are answered without loading it.
_CONFIG_DEFAULTS = ("epochs", "batch_size", "n_tokens", "readout", "layers", "layer_tolerance", "features", "forest",
                    "tag_lr", "head_lr", "anchor_decay", "augment", "spellings", "split", "valid_fraction", "patience",
                    "reference_rows")


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that gives the ``_CONFIG_DEFAULTS`` options a train-function-tag command line
    left out their ``FunctionTagConfig`` defaults, after parsing."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        if getattr(parsed, "command", None) == "train-function-tag":
            missing = [name for name in _CONFIG_DEFAULTS if not hasattr(parsed, name)]
            if missing:
                from .training import FunctionTagConfig

                defaults = {f.name: f.default for f in dataclasses.fields(FunctionTagConfig)}
                for name in missing:
                    setattr(parsed, name, defaults[name])
        return parsed, extras


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tagllm", description="Tag-LLM Studio: a frozen LLM with learned input tags.")
    p.add_argument("--backbone", default=os.environ.get("TAGLLM_BACKBONE"),
                   help="model: 'default' (bundled SmolLM2-135M-Instruct), a local folder/.gguf, or a hub id")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: auto)")
    p.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: bf16 on CUDA, fp32 on CPU)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=argparse.ArgumentParser)

    b = sub.add_parser("backbone", help="backbone information")
    b.add_argument("backbone_cmd", choices=["info"])
    b.set_defaults(func=cmd_backbone_info)

    t = sub.add_parser("tags", help="list, show, export, import, delete tags; add-reference")
    tsub = t.add_subparsers(dest="tags_cmd", required=True)
    tl = tsub.add_parser("list")
    tl.add_argument("--json", action="store_true")
    tsub.add_parser("show").add_argument("name")
    te = tsub.add_parser("export")
    te.add_argument("name")
    te.add_argument("dest")
    ti = tsub.add_parser("import")
    ti.add_argument("file")
    ti.add_argument("--overwrite", action="store_true")
    tsub.add_parser("delete").add_argument("name")
    tr = tsub.add_parser("add-reference", help="store a user tag's predictions over the drug-like reference set, "
                                               "for the reference_percentile column")
    tr.add_argument("name")
    tr.add_argument("--rows", type=int, default=None, help="predict a seeded sample of N reference molecules "
                                                          "(default: all 2,000)")
    tr.add_argument("--batch-size", type=int, default=16)
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_tags)

    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("--job-db", help=argparse.SUPPRESS)
    job.add_argument("--job-id", help=argparse.SUPPRESS)

    pr = sub.add_parser("predict", parents=[job],
                        help="predict a CSV, .smi or SDF file with one function tag, or several into one table")
    pr.add_argument("--tag", action="append", help="a function tag; repeat it for one column per tag")
    pr.add_argument("--tags", action="append", metavar="A,B,…", help="several function tags taking the same inputs")
    pr.add_argument("--input", required=True, help="CSV/TSV, .smi or .sdf (optionally .gz), read in chunks")
    pr.add_argument("--output", "--out", dest="output", required=True,
                    help="a CSV, or .sdf for molecules with the predictions as properties; written chunk by chunk")
    pr.add_argument("--chunk-rows", type=int, default=1000, metavar="N",
                    help="rows read, predicted and written at a time (memory holds one chunk)")
    pr.add_argument("--resume", action="store_true",
                    help="keep the rows an interrupted run finished in --output and predict only the rest")
    pr.add_argument("--column", action="append", metavar="SLOT=COLUMN")
    pr.add_argument("--domain", action="append", metavar="SLOT=TAG", help="zero-shot: swap a slot's domain tag")
    pr.add_argument("--batch-size", type=int, default=16)
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(func=cmd_predict)

    ev = sub.add_parser("evaluate", help="metrics of a function tag on a labelled CSV (JSON)")
    ev.add_argument("--tag", required=True)
    ev.add_argument("--input", required=True)
    ev.add_argument("--label", action="append", required=True,
                    help="the label column; for a tag with several outputs, one per output, in the tag's order")
    ev.add_argument("--column", action="append", metavar="SLOT=COLUMN")
    ev.add_argument("--baselines-from", metavar="TRAIN_CSV",
                    help="also fit the classic baselines (training mean, ridge and random forest on descriptors) "
                         "on this labelled file, with the same input columns, and compare the tag with each on "
                         "the evaluated rows (paired bootstrap 95%% interval)")
    ev.add_argument("--train-label", help="the label column of --baselines-from (default: the first --label)")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.set_defaults(func=cmd_evaluate)

    f = sub.add_parser("train-function-tag", parents=[job], help="stages 2-3: learn a function tag and its head")
    f.add_argument("--name", required=True)
    f.add_argument("--train", required=True)
    f.add_argument("--valid")
    f.add_argument("--split-column", help="a column with 'train'/'valid' values (instead of --valid)")
    f.add_argument("--input", action="append", required=True, metavar="SLOT=<DomainTag>",
                   help="e.g. smiles=<SMILES>, sequence=<Protein>, smiles=none, drug=none:smiles")
    f.add_argument("--column", action="append", metavar="SLOT=COLUMN")
    f.add_argument("--label", action="append", required=True,
                   help="the label column; repeat it for a regression tag with several outputs")
    f.add_argument("--task", choices=["regression", "classification"], default="regression")
    f.add_argument("--template")
    f.add_argument("--what", default="property",
                   help="the default template's task phrase: 'Task: WHAT. Input: ... Output: <Tag>'; units in "
                        "parentheses, e.g. 'solubility (log10 mol/L)', name the output column")
    f.add_argument("--description")
    from_config = argparse.SUPPRESS  # left out: FunctionTagConfig's default, filled in by _Parser
    f.add_argument("--epochs", type=int, default=from_config)
    f.add_argument("--batch-size", type=int, default=from_config)
    f.add_argument("--n-tokens", type=int, default=from_config)
    f.add_argument("--readout", choices=["last", "last+mean", "mean"], default=from_config)
    f.add_argument("--layers", default=from_config, metavar="auto|stack|final|N[,M…]",
                   help="read-out depth: auto (chosen by ridge heads' validation scores, see --layer-tolerance; "
                        "the layers above never run), stack (the same depth; the head combines every layer up to "
                        "it, weighted by their leave-one-out fit: better for the pure tag on BACE, worse on ESOL "
                        "with descriptors), final (the last layer, as in the paper), or layer numbers (12 or 7,15)")
    f.add_argument("--layer-tolerance", type=float, default=from_config, metavar="SE",
                   help="with --layers auto: keep the shallowest layer within this many standard errors of the "
                        "best validation score (faster predictions, often less accurate); 0, the default, keeps "
                        "the best-scoring layer")
    f.add_argument("--features", choices=list(FEATURE_SETS), default=from_config,
                   help="descriptors: the head also reads RDKit 2D descriptors (SMILES) and composition/ProtParam "
                        "features (proteins) beside the tag; none: the tag alone (the paper's method)")
    f.add_argument("--forest", action=argparse.BooleanOptionalAction, default=from_config,
                   help="regression: blend the ridge head with a random forest on the descriptors (or, with "
                        "--features none, on the tag's read-out features), weighted by their out-of-sample fit on "
                        "the training rows; on wherever it applies unless --no-forest (docs/BENCHMARKS.md)")
    f.add_argument("--reference-rows", type=int, default=from_config, metavar="N",
                   help="predict N molecules of the shipped MOSES reference sample (up to 2,000) with the finished "
                        "tag, so every later prediction shows its percentile among drug-like molecules; costs N "
                        "predictions; 0, the default, skips it (`tags add-reference` can add it later)")
    f.add_argument("--tag-lr", type=float, default=from_config)
    f.add_argument("--head-lr", type=float, default=from_config)
    f.add_argument("--anchor-decay", type=float, default=from_config)
    f.add_argument("--augment", type=int, default=from_config,
                   help="randomised SMILES spellings per training molecule (SMILES inputs)")
    f.add_argument("--spellings", type=int, default=from_config, metavar="N",
                   help="SMILES spellings per molecule the tag reads besides the canonical one: the ridge warm "
                        "start fits every spelling as a training row, and validation and every later prediction "
                        "average the head over the molecule's spellings (1 + N passes per molecule). Pure tag "
                        "(--features none), N = 3, with the forest: ESOL 1.04 -> 0.98 RMSE, BACE 0.60 -> 0.56; "
                        "with descriptors it hurt ESOL (docs/BENCHMARKS.md); 0, the default, reads the canonical "
                        "SMILES alone")
    f.add_argument("--max-length", action="append", metavar="KIND=N",
                   help="longest input of a kind, e.g. protein=512: longer proteins and text are cropped (predictions "
                        "with the tag crop alike); a longer SMILES is refused for its row, never cut mid-string")
    f.add_argument("--no-warm-start", action="store_true")
    f.add_argument("--split", choices=["auto", "random", "scaffold"], default=from_config)
    f.add_argument("--valid-fraction", type=float, default=from_config)
    f.add_argument("--patience", type=int, default=from_config)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--max-rows", type=int)
    f.add_argument("--checkpoint-dir")
    f.set_defaults(func=cmd_train_function_tag)

    d = sub.add_parser("train-domain-tag", parents=[job], help="stage 1: learn a domain tag on in-domain text")
    d.add_argument("--name", required=True)
    d.add_argument("--corpus", required=True, help="FASTA, .smi/.txt, CSV (with --column), or 'moses'")
    d.add_argument("--format", choices=["fasta", "smiles", "csv"])
    d.add_argument("--column")
    d.add_argument("--kind", choices=list(KINDS))
    d.add_argument("--steps", type=int, default=200)
    d.add_argument("--batch-size", type=int, default=8)
    d.add_argument("--grad-accum", type=int, default=1)
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--n-tokens", type=int, default=10)
    d.add_argument("--max-tokens", type=int, default=128)
    d.add_argument("--max-sequences", type=int)
    d.add_argument("--init-text")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--description")
    d.set_defaults(func=cmd_train_domain_tag)
    return p


def main(argv: Optional[list] = None) -> int:
    # An entry point (the CLI and every job process): tune malloc here, not on import, so that a
    # program importing the engine (the Streamlit server) keeps its allocator.
    _allocator.tune()
    argv = list(sys.argv[1:] if argv is None else argv)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        sys.stderr.write(stderr.getvalue())
        if exit_.code:
            _fail_job_of(argv, stderr.getvalue())
        raise
    sys.stderr.write(stderr.getvalue())
    try:
        return args.func(args)
    except TagLLMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _fail_job_of(argv: list, usage_error: str) -> None:
    """A job whose command line does not parse never reaches ``run_job``: record argparse's message
    on it, rather than leaving the reaper to call it a crash."""
    found = {}
    for i, arg in enumerate(argv):
        for opt in ("--job-db", "--job-id"):
            if arg == opt and i + 1 < len(argv):
                found[opt] = argv[i + 1]
            elif arg.startswith(opt + "="):
                found[opt] = arg[len(opt) + 1:]
    if len(found) < 2 or not found["--job-id"].isdigit():
        return
    from .jobs import JobStore

    reason = usage_error.strip().splitlines()[-1] if usage_error.strip() else "bad arguments"
    with contextlib.suppress(Exception):  # the job row is best effort; the exit status still says it failed
        JobStore(Path(found["--job-db"])).fail(int(found["--job-id"]),
                                               f"The job's command line was not understood ({reason}).")


if __name__ == "__main__":
    sys.exit(main())

"""Train: forms that start background training jobs, and the live jobs panel.

Nothing trains inside this script: Start saves the data and launches
``python -m tagllm_core train-…`` as its own process (see ``tagllm_core.jobs``).
"""

import streamlit as st

from tagllm_core.domains import KINDS
from tagllm_core.exceptions import InputError, TagLLMError
from ui import cards, inputs, jobs_panel, state, train_form, training, widgets

st.title("Train")
bb = state.backbone()
lib = state.library(bb)
store = state.job_store()
state.show_flash()
domain_tags = lib.list("domain")


def _domain_options(kind):
    return ["none"] + [d.name for d in domain_tags if d.card.input_kind == kind]


def _dom_label(option):
    return "no domain tag" if option == "none" else f"<{option}>"


def _start(kind, name, argv_builder, name_key, uploads):
    """Button callback: save the uploads, create and launch the job, clear the name box."""
    try:
        job = train_form.start_with_uploads(store, kind, name, argv_builder, uploads)
    except TagLLMError as err:
        state.flash(str(err), "error")
        return
    st.session_state["job_select"] = job.id
    st.session_state[name_key] = ""
    state.flash(f"Started job #{job.id}: training <{name}> in the background. Follow it under "
                f"Training jobs below; it keeps running if you close this tab.")


tab_fn, tab_dom = st.tabs(["Train new function tag", "Train new domain tag"])

with tab_fn:
    st.caption("Learn a function tag (and its task head) from a table of inputs and labels: the paper's "
               "stages 2 and 3. The language model stays frozen; only the tag and a linear head are trained.")
    data, fname, example_path = widgets.file_or_example("tf", "Training data", ["csv", "tsv", "txt", "gz"],
                                                        (".csv",))
    df = None
    if data is not None:
        try:
            df = inputs.read_uploaded_table(data, fname)
        except InputError as err:
            st.error(str(err))
    if df is not None:
        st.caption(f"`{fname}`: {len(df):,} rows; columns {', '.join(map(str, df.columns))}")
        st.dataframe(df.head(5), hide_index=True, width="stretch")
        columns = [str(c) for c in df.columns]
        guessed = [c for c in columns if inputs.guess_kind_of_column(c, df[c]) in ("smiles", "protein")][:2]
        input_cols = st.multiselect("Input column(s)", columns, default=guessed or columns[:1], key="tf_inputs",
                                    max_selections=3, help="Each input becomes a slot in the prompt template.")
        slots = []
        for col in input_cols:
            c1, c2, c3 = st.columns([2, 2, 3])
            guess = inputs.guess_kind_of_column(col, df[col])
            kind = c1.selectbox(f"'{col}' holds", KINDS, index=KINDS.index(guess), key=f"tf_kind::{col}",
                                format_func=lambda k: cards.KIND_LABEL.get(k, k))
            options = _domain_options(kind)
            dom = c2.selectbox(f"Domain tag for '{col}'", options, index=1 if len(options) > 1 else 0,
                               key=f"tf_dom::{col}::{kind}", format_func=_dom_label,
                               help="A domain tag trained on this kind of input (stage 1), or none.")
            slot = inputs.slot_name_for(col, kind, [s.slot for s in slots])
            c3.caption(f"template slot `{{{slot}}}`")
            slots.append(training.SlotChoice(col, slot, kind, None if dom == "none" else dom))

        label_options = inputs.label_candidates(df, exclude=input_cols)
        labels = st.multiselect("Label column(s)", label_options, default=label_options[:1], key="tf_labels",
                                help="What the tag learns to predict. Several columns = multi-output regression: "
                                     "each label gets its own prediction column, and early stopping weighs them "
                                     "alike.")
        first = labels[0] if labels else ""
        task_guess = inputs.guess_task(df[first]) if first else "regression"
        task = st.radio("Task", ["regression", "classification"], horizontal=True, key=f"tf_task::{first}",
                        index=0 if task_guess == "regression" else 1)

        c1, c2 = st.columns(2)
        raw_name = c1.text_input("Tag name", key="tf_name", placeholder="e.g. LogP",
                                 help="Letters, digits and _ . + - ; becomes <Name> in the prompt.")
        name, name_problem = train_form.check_name(raw_name, lib, store)
        if name_problem:
            st.error(name_problem)
        what = c2.text_input("What is predicted (prompt wording)", key=f"tf_what::{first}",
                             value=first.replace("_", " ") if first else "property")
        template_text = st.text_area("Template (optional)", key="tf_template", height=80,
                                     placeholder=train_form.preview_template("", slots, name, what).resolved,
                                     help="Use {slot} for each input; the function tag goes at the end. "
                                          "Leave empty for the default shown.")
        template = train_form.preview_template(template_text, slots, name, what)
        if template.resolved:
            st.caption(f"Prompt: `{template.resolved}`")
        elif template.problem:
            st.error(f"Template: {template.problem}")

        c1, c2 = st.columns(2)
        epochs = c1.number_input("Epochs", min_value=1, max_value=200, value=training.DEFAULT_EPOCHS,
                                key="tf_epochs")
        batch_size = c2.number_input("Batch size", min_value=1, max_value=256, value=16, key="tf_batch")
        with st.expander("Advanced settings"):
            a1, a2 = st.columns(2)
            tag_lr = a1.number_input("Tag learning rate", min_value=1e-5, max_value=1.0,
                                     value=training.DEFAULT_TAG_LR, step=1e-4, format="%.5f", key="tf_lr")
            n_tokens = a2.number_input(
                "Tag tokens (p)", min_value=1, max_value=64, value=training.DEFAULT_N_TOKENS, key="tf_ntok",
                help="Learned vectors placed after the input; the paper uses 10. Fewer tokens predict faster "
                     "(one token: about 1.5× the speed) but can cost accuracy: on ESOL one token was 0.10 RMSE "
                     "worse at the layer where ten did best (docs/BENCHMARKS.md).")
            split = a1.selectbox("Validation split", ["auto", "random", "scaffold"], key="tf_split",
                                 help="auto: scaffold split when an input is a SMILES, else random.")
            max_rows = a2.number_input("Use at most this many rows (0 = all)", min_value=0, value=0, step=100,
                                       key="tf_maxrows")
            n_rows = train_form.rows_used(len(df), max_rows)
            valid_fraction = a1.number_input(
                "Validation share", min_value=0.05, max_value=0.5, step=0.05, format="%.2f",
                value=training.suggest_valid_fraction(n_rows), key=f"tf_vfrac::{n_rows}",
                help="Held out from training (at least 10 rows by default). From 40 validation rows on, half of "
                     "them choose the read-out layer and the best epoch, and the other half gives the honest "
                     "held-out score and calibrates the prediction interval; below that, the same rows do both.")
            kinds = {s.kind for s in slots}
            augment = a2.number_input(
                "SMILES augmentation (extra spellings per molecule)", min_value=0, max_value=20,
                value=training.DEFAULT_AUGMENT, key="tf_augment", disabled="smiles" not in kinds,
                help="Each epoch shows every molecule under one of its randomised SMILES spellings. "
                     "Costs one extra prefix pass per spelling.")
            spellings = a2.number_input(
                "SMILES spellings read per molecule", min_value=0, max_value=16,
                value=training.DEFAULT_SPELLINGS, key="tf_spellings", disabled="smiles" not in kinds,
                help="Besides the canonical SMILES, the tag reads this many random spellings of each molecule: "
                     "the warm start learns from all of them, and every prediction averages over them, so it "
                     "costs 1 + N passes per molecule. With the head on the tag alone (descriptors off) and the "
                     "forest, 3 took ESOL from 1.04 to 0.98 RMSE and BACE from 0.60 to 0.56; with descriptors it "
                     "hurt ESOL.")
            crop = a1.number_input(
                "Crop proteins to (residues, 0 = 1000)", min_value=0, max_value=100_000, value=0, step=64,
                key="tf_crop", disabled="protein" not in kinds,
                help="Longer sequences are cut; predictions with this tag are cropped alike.")
            layers = a1.text_input(
                "Read-out depth", value=str(training.DEFAULT_LAYERS), key="tf_layers",
                help="auto: the layer whose linear head scores best on validation, chosen in the warm start; "
                     "the layers above it never run, so training and prediction are faster (the CLI's "
                     "--layer-tolerance trades accuracy for a shallower layer). stack: the same depth, "
                     "and the head combines every layer up to it, weighted by how well each predicts the "
                     "training rows it did not see; it helped the pure tag on BACE and hurt ESOL with "
                     "descriptors. final: the last layer, as in the paper. Or layer numbers, e.g. 12 or 7,15.")
            layers_problem = training.layers_problem(layers)
            if layers_problem:
                st.error(layers_problem)
            descriptors = a2.checkbox(
                "Head also reads classic descriptors", value=training.DEFAULT_FEATURES == "descriptors",
                key="tf_features",
                help="Beside the tag, the head reads RDKit 2D descriptors of each SMILES and composition/"
                     "ProtParam features of each protein. Often more accurate with little data; off is the "
                     "paper's pure-tag method.")
            forest_ok = training.forest_applies(task, layers)
            forest = a2.checkbox(
                "Blend with a random forest", value=training.DEFAULT_FOREST is not False,
                key="tf_forest",
                disabled=not forest_ok,
                help="Regression: a random forest predicts beside the tag's linear head, and the two are "
                     "averaged with weights fitted on the training rows. It reads the descriptors when the head "
                     "does, else the tag's own read-out. It catches what a linear head cannot (thresholds, "
                     "interactions): with descriptors it took the validation RMSE on ESOL from 0.82 to 0.74, on "
                     "BACE from 0.65 to 0.55. Not with read-out depth 'stack'.")
            reference = a2.checkbox(
                f"Reference percentiles ({train_form.REFERENCE_ROWS} drug-like molecules)", value=True,
                key="tf_reference", disabled=kinds != {"smiles"},
                help="After training, the tag predicts a fixed sample of MOSES molecules, so each later "
                     "prediction shows its percentile among drug-like molecules. Single-molecule tags only; "
                     "adds a minute or two.")
            valid_up = st.file_uploader("Separate validation CSV (optional)", type=["csv", "tsv", "txt", "gz"],
                                        key="tf_valid")
        n_train, n_steps = train_form.estimate_steps(n_rows, valid_fraction, batch_size, epochs)
        st.caption(f"{n_rows:,} rows, about {n_train:,} for training: {n_steps:,} optimiser steps "
                   f"after a one-pass warm start. "
                   f"Training runs in the background; you can leave this page.")
        form = train_form.FunctionForm(
            file_name=fname, columns=columns, slots=slots, labels=labels, task=task, name=name,
            name_problem=name_problem, what=what, template=template, epochs=epochs, batch_size=batch_size,
            tag_lr=tag_lr, n_tokens=n_tokens, split=split, valid_fraction=valid_fraction, max_rows=max_rows,
            augment=augment, crop=crop, layers=layers, descriptors=descriptors, train_file=example_path,
            reference=reference, spellings=spellings, forest=forest and forest_ok)
        problems = train_form.function_form_problems(form)
        for p in problems:
            if p != name_problem:
                (st.caption if p == train_form.ENTER_NAME else st.warning)(p)
        # The engine's own checks on the data (labels, inputs, row count), so that no job is queued only to fail.
        for dp in train_form.data_problems(df, form, valid_up is not None):
            {"error": st.error, "warning": st.warning}.get(dp.level, st.info)(dp.message)
            if dp.level == "error":
                problems.append(dp.message)

        spec = train_form.function_spec(form)
        uploads = []
        if example_path is None:
            uploads.append((data, fname, lambda p: setattr(spec, "train_file", p)))
        if valid_up is not None:
            uploads.append((valid_up.getvalue(), "valid-" + valid_up.name, lambda p: setattr(spec, "valid_file", p)))
        st.button("Start training", type="primary", key="tf_start", disabled=bool(problems),
                  on_click=_start, args=("function-tag", name, lambda: training.function_tag_argv(spec),
                                         "tf_name", uploads))

with tab_dom:
    st.caption("Learn a domain tag (stage 1) by next-token prediction on unlabelled inputs of one kind: "
               "a FASTA file of proteins, a SMILES list, or a CSV column.")
    data, fname, example_path = widgets.file_or_example(
        "td", "Corpus", ["fasta", "fa", "faa", "smi", "txt", "csv", "tsv", "gz"], (".fasta", ".smi", ".csv"))
    corpus, fmt, column = None, None, None
    if data is not None:
        guess = train_form.corpus_format(fname)
        formats = ["fasta", "smiles", "csv"]
        fmt = st.selectbox("Format", formats, index=formats.index(guess), key=f"td_fmt::{fname}",
                           format_func={"fasta": "FASTA", "smiles": "SMILES list (one per line)",
                                        "csv": "CSV column"}.get)
        try:
            if fmt == "csv":
                table = inputs.read_uploaded_table(data, fname)
                cols = [str(c) for c in table.columns]
                column = st.selectbox("Column", cols, key=f"td_col::{fname}",
                                      index=next((i for i, c in enumerate(cols)
                                                  if inputs.guess_kind_of_column(c, table[c]) != "text"), 0))
            corpus = inputs.read_uploaded_corpus(data, fname, fmt, column)
        except InputError as err:
            st.error(str(err))
    if corpus is not None:
        st.caption(f"{len(corpus):,} sequences, e.g. " + ", ".join(f"`{c[:40]}`" for c in corpus[:3]))
        default_kind = "protein" if fmt == "fasta" else (
            inputs.guess_kind_of_column(column or "", corpus) if fmt == "csv" else "smiles")
        c1, c2 = st.columns(2)
        kind = c1.selectbox("Input kind", KINDS, index=KINDS.index(default_kind), key=f"td_kind::{fname}",
                            format_func=lambda k: cards.KIND_LABEL.get(k, k))
        raw_name = c2.text_input("Tag name", key="td_name", placeholder="e.g. Peptide")
        name, name_problem = train_form.check_name(raw_name, lib, store)
        if name_problem:
            st.error(name_problem)
        steps = st.number_input("Training steps", min_value=1, max_value=100_000, value=200, key="td_steps")
        with st.expander("Advanced settings"):
            a1, a2 = st.columns(2)
            n_tokens = a1.number_input("Tag tokens (p)", min_value=1, max_value=64, value=10, key="td_ntok")
            max_tokens = a2.number_input("Crop each sequence to this many tokens", min_value=8, max_value=4096,
                                         value=128, key="td_maxtok")
            max_seq = a1.number_input("Use at most this many sequences (0 = all)", min_value=0, value=0,
                                      step=1000, key="td_maxseq")
            batch = a2.number_input("Batch size", min_value=1, max_value=128, value=8, key="td_batch")
        problems = train_form.domain_form_problems(name, len(corpus))
        if not name and not name_problem:
            st.caption("Enter a tag name to start.")
        for p in problems:
            if p != train_form.ENTER_NAME:
                st.warning(p)
        spec = train_form.domain_spec(name, example_path, fmt, kind, column, steps, n_tokens, max_seq, max_tokens,
                                      batch)
        uploads = [] if example_path is not None else [(data, fname, lambda p: setattr(spec, "corpus_file", p))]
        st.button("Start training", type="primary", key="td_start", disabled=bool(problems),
                  on_click=_start, args=("domain-tag", name, lambda: training.domain_tag_argv(spec),
                                         "td_name", uploads))

st.divider()
st.subheader("Training jobs")
jobs_panel.panel()

"""Tag cards as people read them: one-line summaries and a detailed view."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Optional

import pandas as pd
import streamlit as st

from tagllm_core.applicability import NEAREST
from tagllm_core.backbone import BackboneFingerprint
from tagllm_core.exceptions import TagLLMError
from tagllm_core.metrics import PRIMARY_METRIC, PairedDifference
from tagllm_core.reference import ReferenceDistribution, reference_problem
from tagllm_core.tags import TagCard, TagInfo, load_tag_file

from . import charts

KIND_LABEL = {"smiles": "molecule (SMILES)", "protein": "protein sequence", "text": "text"}
KIND_ICON = {"smiles": "🧪", "protein": "🧬", "text": "📝"}


def slot_summary(card: TagCard) -> str:
    """``smiles (SMILES via <SMILES>) + sequence (…)``."""
    parts = []
    for s in card.slots:
        dom = f" via <{s.domain_tag}>" if s.domain_tag else ", no domain tag"
        parts.append(f"{KIND_ICON.get(s.kind, '')} **{s.name}**: {KIND_LABEL.get(s.kind, s.kind)}{dom}")
    return "; ".join(parts)


BASELINE_LABEL = {"mean": "predict the training mean", "warm_start": "the tag's head before training (its warm start)",
                  "probe": "linear probe: ridge on the backbone's mean-pooled states",
                  "rf_descriptors": "random forest on descriptors", "ridge_descriptors": "ridge on descriptors"}


def baseline_label(key: str, metrics: dict) -> str:
    """How a card baseline is named on screen; the probe names the layer it read."""
    label = BASELINE_LABEL.get(key, key.replace("_", " "))
    if key != "probe" or not metrics.get("layer"):
        return label
    rows = f", fitted on {metrics['rows']:,} training rows" if metrics.get("rows") else ""
    return f"{label} (layer {metrics['layer']}{rows})"


def flat_metrics(card: TagCard) -> dict:
    """Card metrics as ``{"valid rmse": 0.71, …}`` (nested dicts flattened, non-numbers dropped;
    the baselines are shown apart, by ``comparison_frame``)."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix} {k}".strip(), v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix.replace("_", " ")] = value

    walk("", {k: v for k, v in (card.metrics or {}).items() if k != "baselines"})
    return out


HELD_OUT_HELP = ("Scored on the seeded half of the validation rows that chose neither the read-out layer nor the "
                 "epoch: the figure to expect on new data like the validation set. \"valid\" covers every "
                 "validation row, including the half that made those choices.")


def headline_metrics(card: TagCard, limit: int = 5) -> list[tuple[str, float]]:
    """The summary's tiles: the task's main metric on every validation row and on the held-out half
    beside it (the honest figure, easy to miss further down the list), then for a pair of inputs the
    concordance index (how drug–target affinity is usually reported), then the rest in card order."""
    metrics = {k: v for k, v in flat_metrics(card).items() if not k.endswith(" n")}
    main = PRIMARY_METRIC.get(str(card.task), ("",))[0]
    pair = ("valid ci",) if len(card.slots) > 1 else ()
    first = [k for k in (f"valid {main}", f"held out {main}", *pair) if k in metrics]
    ordered = [(k, metrics[k]) for k in first + [k for k in metrics if k not in first]][:limit]
    return [(k.replace("held out ", "held-out "), v) for k, v in ordered]


VERDICT_TEXT = {"better": "tag better", "worse": "tag worse", "tie": "no clear difference"}


def versus(metrics: dict) -> Optional[PairedDifference]:
    """A baseline's ``versus_tag`` comparison, or ``None`` (an older card, or a malformed entry)."""
    raw = metrics.get("versus_tag")
    if not isinstance(raw, dict):
        return None
    try:
        d = PairedDifference.from_dict(raw)
        d.verdict  # noqa: B018 - compares the numbers: a malformed entry fails here, not on screen
    except (KeyError, TypeError):
        return None
    return d


def versus_text(metrics: dict) -> str:
    """``−0.031 (−0.052 to −0.010): tag better``: the tag's metric minus the baseline's, its 95% paired
    bootstrap interval, and what that interval says; "" when the card holds no comparison."""
    d = versus(metrics)
    if d is None:
        return ""
    signed = lambda v: f"{v:+.3f}".replace("-", "\u2212")  # noqa: E731
    return f"{signed(d.difference)} ({signed(d.low)} to {signed(d.high)}): {VERDICT_TEXT[d.verdict]}"


def comparison_frame(card: TagCard) -> Optional[pd.DataFrame]:
    """The tag's validation metrics beside the baselines fitted on the same rows (None without them),
    with the tag-minus-baseline difference of the main metric where the card holds it."""
    baselines = (card.metrics or {}).get("baselines") or {}
    if not baselines:
        return None
    return baselines_frame(card.name, str(card.task), card.metrics.get("valid") or {}, baselines)


def baselines_frame(tag: str, task: str, tag_metrics: dict, baselines: dict) -> pd.DataFrame:
    """One row for the tag (``tag_metrics``) and one per baseline ({key: metrics}), scored on the same
    rows, with the tag-minus-baseline column where the baselines carry ``versus_tag``."""
    names = ["rmse", "spearman", "r2", "ci"] if task == "regression" else ["auroc", "auprc", "accuracy"]
    rows = [{"model": f"<{tag}>", **{n: tag_metrics.get(n) for n in names}}]
    compared = {key: versus(m) for key, m in baselines.items() if isinstance(m, dict)}
    metric = next((d.metric for d in compared.values() if d is not None), None)
    column = f"tag − model, {metric.upper() if metric else ''} (95% CI)"
    for key, metrics in baselines.items():
        rows.append({"model": baseline_label(key, metrics), **{n: metrics.get(n) for n in names},
                     **({column: versus_text(metrics) or None} if metric else {})})
    frame = pd.DataFrame(rows).dropna(axis=1, how="all")
    if column in frame.columns:
        frame[column] = frame[column].fillna("")
    return frame


def readout_text(card: TagCard) -> str:
    """Where the head reads: ``layer 12 of the backbone (chosen on validation) + descriptors``."""
    if card.kind != "function":
        return ""
    if card.layers:
        chosen = (card.training or {}).get("layer_choice")
        text = f"layer{'s' if len(card.layers) > 1 else ''} {', '.join(map(str, card.layers))}"
        best = (chosen or {}).get("best")
        weights = (chosen or {}).get("stack_weights")
        if weights:  # JSON keys are strings after a save
            text = "layers " + ", ".join(f"{layer} ({float(w):.0%})" for layer, w in
                                         sorted(weights.items(), key=lambda kv: int(kv[0])))
            text += f" (stacked: every layer up to {chosen.get('chosen')}, weighted on the training rows)"
        elif chosen and best and best != chosen.get("chosen"):
            text += f" (chosen on validation: the shallowest within one standard error of the best, layer {best})"
        elif chosen:
            text += " (chosen on validation)"
    else:
        text = "the final layer"
    if card.features == "descriptors":
        text += " + classic descriptors of the inputs"
    blend = (card.training or {}).get("forest")
    if (card.head or {}).get("forest_nodes") and isinstance(blend, dict) and blend.get("weights"):
        w_head, w_forest = blend["weights"][0]
        on = "the tag's read-out" if card.head.get("forest_input") == "readout" else "the descriptors"
        text += (f", blended with a random forest on {on} ({float(w_head):.0%} head, "
                 f"{float(w_forest):.0%} forest, weighted on the training rows)")
    if card.spellings:
        text += f", averaged over {card.spellings + 1} spellings of each SMILES"
    return text


def format_number(value: Optional[float], digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 1000 or (abs(value) < 1e-3 and value != 0):
        return f"{value:.3g}"
    return f"{value:.{digits}f}"


def created_text(card: TagCard) -> str:
    try:
        return _dt.datetime.fromtimestamp(float(card.created)).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError, OSError):
        return "unknown"


def size_text(n_bytes: int) -> str:
    return f"{n_bytes / 1024:.0f} KB" if n_bytes < 1 << 20 else f"{n_bytes / (1 << 20):.1f} MB"


def backbone_text(card: TagCard, current: Optional[BackboneFingerprint] = None) -> str:
    try:
        fp = card.fingerprint
    except (KeyError, TypeError, ValueError):
        return "unknown backbone"
    text = f"{fp.name} (emb {fp.embedding_sha256[:8]})"
    if current is not None:
        text += " ✅ matches" if fp.matches(current) else " ⚠️ differs from the backbone in use"
    return text


def training_text(card: TagCard) -> str:
    t = card.training or {}
    bits = []
    if t.get("data"):
        bits.append(f"data: `{t['data']}`")
    if t.get("rows_train") is not None:
        held = ((card.metrics or {}).get("held_out") or {}).get("n")
        halves = (f" ({t['selection_rows']} chose the read-out layer and epoch, {held} held out)"
                  if held and t.get("selection_rows") else "")
        bits.append(f"{t['rows_train']} training / {t.get('rows_valid', '?')} validation rows{halves}")
    if t.get("sequences_train") is not None:
        bits.append(f"{t['sequences_train']} sequences, {t.get('steps', '?')} steps")
    if t.get("split"):
        bits.append(f"split: {t['split']}")
    if t.get("seconds") is not None:
        bits.append(f"{t['seconds']} s")
    return ", ".join(bits) or "no provenance recorded"


def tag_label(info: TagInfo) -> str:
    """Selectbox label: ``<Solubility> · regression · user``."""
    card = info.card
    what = card.task or card.input_kind or card.kind
    return f"<{info.name}> · {what} · {info.source}"


def render_summary(info: TagInfo, current: Optional[BackboneFingerprint] = None) -> None:
    """What a predicting scientist needs: inputs, task, training data, metrics, backbone."""
    card = info.card
    if card.description:
        st.caption(card.description)
    st.markdown(f"**Inputs:** {slot_summary(card) or '–'}")
    task = card.task or "–"
    if card.task == "classification" and card.classes:
        task += f" (classes: {', '.join(map(str, card.classes))})"
    elif card.labels:
        task += f" of `{', '.join(map(str, card.labels))}`"
    st.markdown(f"**Task:** {task}")
    st.markdown(f"**Training:** {training_text(card)}")
    if card.kind == "function":
        st.markdown(f"**Head reads:** {readout_text(card)}")
    shown = headline_metrics(card)
    if shown:
        cols = st.columns(len(shown))
        for col, (name, value) in zip(cols, shown):
            col.metric(name, format_number(value), help=HELD_OUT_HELP if name.startswith("held-out") else None)
    comparison = comparison_frame(card)
    if comparison is not None:
        note = ""
        if any(c.startswith("tag − model") for c in comparison.columns):
            note = (" The last column is the tag's metric minus the model's, with a 95% interval from "
                    "resampling the validation rows (paired bootstrap); where the interval spans zero, "
                    "these rows cannot tell the two apart.")
        st.caption("Validation metrics beside simple models fitted on the same rows." + note)
        st.dataframe(comparison, hide_index=True, width="stretch")
    if card.interval:
        level = card.interval.get("level")
        half = (card.interval.get("halfwidth") or [None])[0]
        if half is not None:
            st.caption(f"Predictions come with a {level:.0%} interval of ± {format_number(half)} "
                       f"(split-conformal, from validation residuals).")
    st.caption(f"Backbone: {backbone_text(card, current)} · template: `{card.template}`"
               if card.template else f"Backbone: {backbone_text(card, current)}")


def card_table(info: TagInfo, current: Optional[BackboneFingerprint] = None) -> pd.DataFrame:
    """Every card field worth showing in the library, as a two-column table."""
    card = info.card
    rows = [("kind", f"{card.kind} tag ({info.source})"),
            ("backbone", backbone_text(card, current)),
            ("tag tokens", str(card.n_tokens))]
    if card.kind == "domain":
        rows.append(("input kind", KIND_LABEL.get(card.input_kind, str(card.input_kind))))
    else:
        rows.append(("inputs", "; ".join(f"{s.name}: {s.kind}" + (f" via <{s.domain_tag}>" if s.domain_tag else "")
                                         for s in card.slots)))
        rows.append(("template", card.template or ""))
        rows.append(("head reads", readout_text(card)))
        rows.append(("task", card.task or ""))
        if card.labels:
            rows.append(("labels", ", ".join(map(str, card.labels))))
        if card.classes:
            rows.append(("classes", ", ".join(map(str, card.classes))))
    rows.append(("training data", training_text(card).replace("`", "")))
    if card.kind == "function":
        rows.append(("applicability domain", "; ".join(domain_lines(card).values())))
        rows.append(("reference set", reference_line(card)))
    for name, value in flat_metrics(card).items():
        rows.append((name, format_number(value)))
    for key, metrics in ((card.metrics or {}).get("baselines") or {}).items():
        main = "rmse" if "rmse" in metrics else "auroc"
        if metrics.get(main) is not None:
            compared = versus_text(metrics)
            rows.append((f"baseline: {baseline_label(key, metrics)} ({main})",
                         format_number(metrics[main]) + (f"; tag − it: {compared}" if compared else "")))
    rows.append(("created", created_text(card)))
    rows.append(("size", size_text(info.size_bytes)))
    if card.description:
        rows.append(("description", card.description))
    return pd.DataFrame(rows, columns=["field", "value"])


def domain_lines(card: TagCard) -> dict:
    """{slot: ``smiles: in domain from Tanimoto 0.35 (nearest of 1,234 training molecules)``}; an older tag
    without the data gets one "unknown" line."""
    stored = card.applicability or {}
    if not stored:
        return {"": "unknown (the tag predates storing its training fingerprints)"}
    out = {}
    for slot, info in stored.items():
        what, measure = NEAREST.get(info.get("kind"), ("input", "similarity"))
        n = info.get("n_reference")
        sample = "" if n == info.get("n_training") else f", a sample of {format_number(info.get('n_training'))}"
        out[slot] = (f"{slot}: in domain from {measure} {format_number(info.get('threshold'), 2)} "
                     f"to the nearest of {format_number(n)} training {what}s{sample}")
    return out


def render_domain(card: TagCard, key: str) -> None:
    """The applicability domain of a function tag: its threshold per input and the validation curve
    the threshold came from (error against similarity to the training inputs)."""
    lines = domain_lines(card)
    if not card.applicability:
        st.caption(f"Applicability domain: {lines['']}. Predictions show domain \"unknown\".")
        return
    for slot, info in card.applicability.items():
        st.markdown(f"**Applicability domain** · {lines[slot]}")
        what, measure = NEAREST.get(info.get("kind"), ("input", "similarity"))
        ratio = info.get("ratio")
        st.caption(f"Rows whose nearest training {what} is less similar than the threshold are flagged "
                   f"\"out\". The threshold is where validation {info.get('error_metric', 'error')} rose above "
                   f"{ratio:g} × its average." if ratio else "")
        st.plotly_chart(charts.domain_curve_figure(info.get("curve") or {}, float(info.get("threshold", 0.0)),
                                                   measure, info.get("error_metric", "error"),
                                                   info.get("overall_error"), ratio),
                        width="stretch", key=f"domain-curve::{key}::{slot}")


def reference_line(card: TagCard) -> str:
    """``MOSES test split, seeded sample (v1): 2,000 molecules predicted``, or why there is none."""
    entry = card.reference_set or {}
    if not entry:
        return reference_problem(card) or "none (add one: python -m tagllm_core tags add-reference NAME)"
    skipped = f", {entry['n_skipped']:,} could not be predicted" if entry.get("n_skipped") else ""
    return f"{entry.get('name', '')} (v{entry.get('version', '?')}): {entry.get('n', 0):,} molecules predicted{skipped}"


@st.cache_data(max_entries=64, show_spinner=False)
def _reference_values(path: str, mtime_ns: int):
    """The stored reference predictions of the tag file at ``path`` ((n, n_outputs), or None); keyed by its
    modification time, so a tag given a distribution later is read again."""
    dist = ReferenceDistribution.from_tag(load_tag_file(Path(path)))
    return None if dist is None else dist.predictions


def render_reference(info: TagInfo, key: str) -> None:
    """A function tag's predictions over its reference set, as a histogram (over the training labels for
    regression), or a line saying why it has none."""
    card = info.card
    if not card.reference_set:
        st.caption(f"Reference set: {reference_line(card)}. Predictions show a blank reference percentile.")
        return
    try:
        values = _reference_values(str(info.path), info.path.stat().st_mtime_ns)
    except (TagLLMError, OSError) as err:
        st.caption(f"Reference set: unreadable ({err}).")
        return
    if values is None:
        return
    st.markdown(f"**Reference set** · {reference_line(card)}")
    st.caption("Each prediction's reference percentile is its place in this distribution.")
    classes = (list(card.classes) or list(range(values.shape[1]))) if card.task == "classification" else []
    st.plotly_chart(charts.reference_histogram(values, (card.labels or ["prediction"])[0],
                                               card.reference_set.get("name", ""), card.label_sample or [],
                                               classes),
                    width="stretch", key=f"reference-hist::{key}")

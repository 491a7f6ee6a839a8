"""Plotly figures for the pages (pure functions of plain data, easy to test)."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go

_TRAIN_COLOUR = "#9aa5b1"
_PRED_COLOUR = "#2e6fdb"


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 320) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, height=height,
                      margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    return fig


def prediction_histogram(predictions: Sequence[float], label_sample: Sequence[float], label: str = "prediction",
                         zero_shot: bool = False) -> go.Figure:
    """Regression: predictions over the training-label distribution, on shared bins, each as a share of its rows."""
    preds = [float(p) for p in predictions if p is not None and np.isfinite(p)]
    sample = [float(v) for v in label_sample if v is not None and np.isfinite(v)]
    values = preds + sample
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    size = (hi - lo) / 30 or 1.0
    bins = dict(start=lo - size / 2, end=hi + size / 2, size=size)
    fig = go.Figure()
    if sample:
        fig.add_histogram(x=sample, name="training labels", histnorm="probability", xbins=bins,
                          marker_color=_TRAIN_COLOUR, opacity=0.6)
    fig.add_histogram(x=preds, name="your predictions" + (" (zero-shot)" if zero_shot else ""),
                      histnorm="probability", xbins=bins, marker_color=_PRED_COLOUR, opacity=0.7)
    fig.update_layout(barmode="overlay")
    return _layout(fig, "Predictions against the training-label distribution", label, "share of rows")


def reference_histogram(predictions: np.ndarray, label: str, set_name: str,
                        label_sample: Sequence[float] = (), classes: Sequence = ()) -> go.Figure:
    """A tag's predictions over its reference set (``tagllm_core.reference``), each as a share of its rows.
    ``predictions``: (n, n_outputs). Regression: the first output, over the training labels when given;
    classification (``classes``): each class's probability."""
    values = np.asarray(predictions, dtype=float)
    fig = go.Figure()
    if classes:
        for i, c in enumerate(classes[: values.shape[1]]):
            fig.add_histogram(x=values[:, i], name=f"p({c})", histnorm="probability", opacity=0.6,
                              xbins=dict(start=0.0, end=1.0, size=0.05))
        fig.update_layout(barmode="overlay")
        return _layout(fig, f"Predictions over the reference set: {set_name}", "probability", "share of molecules")
    ref = values[:, 0]
    sample = [float(v) for v in label_sample if v is not None and np.isfinite(v)]
    lo, hi = float(min(ref.min(), *sample)), float(max(ref.max(), *sample))
    size = (hi - lo) / 30 or 1.0
    bins = dict(start=lo - size / 2, end=hi + size / 2, size=size)
    if sample:
        fig.add_histogram(x=sample, name="training labels", histnorm="probability", xbins=bins,
                          marker_color=_TRAIN_COLOUR, opacity=0.6)
    fig.add_histogram(x=ref, name="reference molecules (predicted)", histnorm="probability", xbins=bins,
                      marker_color=_PRED_COLOUR, opacity=0.7)
    fig.update_layout(barmode="overlay")
    return _layout(fig, f"Predictions over the reference set: {set_name}", label, "share of rows")


def class_bars(predicted: Sequence, label_sample: Sequence, classes: Sequence) -> go.Figure:
    """Classification: share of each predicted class next to its share in the training labels."""
    classes = list(classes)
    names = [str(c) for c in classes]
    pred_share = [sum(1 for p in predicted if str(p) == n) / max(len(predicted), 1) for n in names]
    fig = go.Figure()
    if len(label_sample):
        # label_sample holds class indices for classification tags
        idx = [int(v) for v in label_sample if v is not None]
        train_share = [idx.count(i) / max(len(idx), 1) for i in range(len(classes))]
        fig.add_bar(x=names, y=train_share, name="training labels", marker_color=_TRAIN_COLOUR)
    fig.add_bar(x=names, y=pred_share, name="your predictions", marker_color=_PRED_COLOUR)
    return _layout(fig, "Predicted classes against the training labels", "class", "share of rows")


def parity_figure(true: Sequence[float], pred: Sequence[float], task: str = "regression",
                  rows: str = "validation", true_label: str = "true") -> go.Figure:
    """Predicted against true for ``rows`` (the validation set, or the measured rows of a file), with the
    y = x line (regression) or per class (classification)."""
    true = [float(t) for t in true]
    pred = [float(p) for p in pred]
    fig = go.Figure()
    if task == "classification":
        fig.add_box(x=[str(int(t)) for t in true], y=pred, boxpoints="all", jitter=0.4, marker_color=_PRED_COLOUR,
                    name=rows)
        return _layout(fig, f"{rows.capitalize()}: predicted probability by {true_label} class",
                       f"{true_label} class index", "predicted probability (last class)")
    fig.add_scatter(x=true, y=pred, mode="markers", name=f"{rows} rows",
                    marker=dict(color=_PRED_COLOUR, size=7, opacity=0.75))
    if true:
        lo, hi = min(true + pred), max(true + pred)
        pad = 0.05 * (hi - lo or 1.0)
        fig.add_scatter(x=[lo - pad, hi + pad], y=[lo - pad, hi + pad], mode="lines", name="y = x",
                        line=dict(color="#888", dash="dash"))
    fig = _layout(fig, f"{rows.capitalize()} parity", true_label, "predicted", height=380)
    fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return fig


def loss_figure(events: Sequence[dict]) -> Optional[go.Figure]:
    """Training loss per step from job events (None if there is none yet)."""
    usable = [e for e in events if e.get("loss") is not None and e.get("step") is not None]
    # Per-batch losses; the end-of-epoch summaries (which carry metrics) would double-plot their steps.
    pts = [(e["step"], e["loss"]) for e in usable if not e.get("metrics")] or [(e["step"], e["loss"]) for e in usable]
    if not pts:
        return None
    fig = go.Figure(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines",
                               line=dict(color=_PRED_COLOUR), name="training loss"))
    return _layout(fig, "Training loss", "step", "loss", height=260)


# What early stopping follows, so the curve shows why an epoch was kept: a tag with several labels stops
# on mean_scaled_rmse (its valid_rmse is the first label's alone).
PRIMARY_METRICS = ("valid_mean_scaled_rmse", "valid_rmse", "valid_auroc", "valid_perplexity")


def metric_keys(events: Sequence[dict]) -> list[str]:
    keys: list[str] = []
    for e in events:
        for k, v in (e.get("metrics") or {}).items():
            if isinstance(v, (int, float)) and k not in keys:
                keys.append(k)
    return keys


def primary_metric(keys: Sequence[str]) -> Optional[str]:
    for k in PRIMARY_METRICS:
        if k in keys:
            return k
    return keys[0] if keys else None


def metric_figure(events: Sequence[dict], key: str) -> Optional[go.Figure]:
    """One validation metric per step from job events."""
    pts = [(e["step"], e["metrics"][key]) for e in events
           if isinstance((e.get("metrics") or {}).get(key), (int, float))]
    if not pts:
        return None
    fig = go.Figure(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                               line=dict(color="#d9822b"), name=key))
    return _layout(fig, key.replace("_", " "), "step", key.replace("valid_", ""), height=260)


def perplexity_figure(ppl: dict) -> go.Figure:
    names = {"trained": "trained tag", "no_tag": "no tag", "random_tag": "random tag"}
    keys = [k for k in names if isinstance(ppl.get(k), (int, float))]
    fig = go.Figure(go.Bar(x=[names[k] for k in keys], y=[ppl[k] for k in keys],
                           marker_color=[_PRED_COLOUR if k == "trained" else _TRAIN_COLOUR for k in keys]))
    return _layout(fig, "Validation perplexity (lower is better)", "", "perplexity", height=280)


def residue_figure(composition: dict) -> go.Figure:
    fig = go.Figure(go.Bar(x=list(composition), y=[100 * v for v in composition.values()],
                           marker_color=_PRED_COLOUR))
    return _layout(fig, "Residue composition", "amino acid", "% of residues", height=280)


def domain_curve_figure(curve: dict, threshold: float, measure: str = "similarity",
                        error_metric: str = "error", overall: Optional[float] = None,
                        ratio: Optional[float] = None) -> go.Figure:
    """Validation error against similarity to the training inputs (one point per similarity-quantile
    bin, at its middle), the threshold read from it (vertical line) and the error limit of the rule
    (``ratio`` x ``overall``, horizontal line). ``curve``: {"edges": (B+1,), "error": (B,), "count": (B,)}."""
    edges = [float(e) for e in curve.get("edges") or []]
    points = [((a + b) / 2, e, n, a, b) for a, b, e, n in zip(edges, edges[1:], curve.get("error") or [],
                                                             curve.get("count") or []) if e is not None]
    fig = go.Figure(go.Scatter(
        x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name="validation rows",
        line=dict(color=_PRED_COLOUR), marker=dict(size=9),
        customdata=[[p[2], p[3], p[4]] for p in points],
        hovertemplate=f"{measure} %{{customdata[1]:.2f}}–%{{customdata[2]:.2f}}<br>mean {error_metric} %{{y:.3g}}"
                      "<br>%{customdata[0]} rows<extra></extra>"))
    if overall is not None and ratio:
        fig.add_hline(y=ratio * overall, line=dict(color="#888", dash="dot"),
                      annotation_text=f"{ratio:g} × average {error_metric}", annotation_position="top left")
    fig.add_vline(x=threshold, line=dict(color="#d9822b", dash="dash"),
                  annotation_text=f"threshold {threshold:.2f}", annotation_position="top right")
    return _layout(fig, "Validation error against similarity to the training data",
                   f"nearest training input ({measure})", f"mean {error_metric}", height=300)

"""Library-page helpers: importing uploaded tag files and the cached interpretability tables."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from tagllm_core import interpret
from tagllm_core.tags import TagInfo, TagLibrary, load_tag_file

from . import state
from .inputs import _safe_filename


def import_tag_bytes(library: TagLibrary, data: bytes, filename: str, overwrite: bool = False) -> TagInfo:
    """Validate an uploaded tag file (card, tensors, backbone; never unpickled) and add it to the user library.

    Raises the engine's ``TagLLMError`` subclasses (wrong backbone, corrupted file, pickle, name taken).
    """
    with tempfile.TemporaryDirectory(prefix="tagllm-import-") as tmp:
        path = Path(tmp) / _safe_filename(filename or "upload.tag.safetensors")
        path.write_bytes(data)
        return library.import_file(path, overwrite=overwrite)


def _tag_vectors(path: str) -> dict:
    tag = load_tag_file(Path(path))
    vectors = {f"<{tag.name}>": tag.vectors}
    for name, vec in tag.domain_vectors.items():
        vectors[f"<{name}> (copy inside <{tag.name}>)"] = vec
    return vectors


@st.cache_data(max_entries=32, show_spinner="Comparing the tag with the vocabulary…")
def neighbours_table(path: str, mtime: float, k: int, spec: Optional[str]) -> pd.DataFrame:
    """One row per tag vector: its norm and its ``k`` nearest vocabulary tokens (cosine)."""
    bb = state._load_backbone(spec)
    rows = []
    for name, vec in _tag_vectors(path).items():
        neighbours = interpret.nearest_tokens(vec, bb.embedding_matrix, bb.tokenizer, k)
        norms = vec.float().norm(dim=1).tolist()
        for i, (nbrs, norm) in enumerate(zip(neighbours, norms)):
            rows.append({"tag": name, "vector": i + 1, "norm": round(norm, 3),
                         "nearest tokens (cosine)": ", ".join(f"{n.text!r} {n.cosine:.2f}" for n in nbrs)})
    return pd.DataFrame(rows)


@st.cache_data(max_entries=32, show_spinner="Projecting on the vocabulary's principal components…")
def pca_figure(path: str, mtime: float, spec: Optional[str], sample: int = 2000) -> go.Figure:
    bb = state._load_backbone(spec)
    res = interpret.pca_projection(_tag_vectors(path), bb.embedding_matrix, sample=sample)
    tokens = bb.tokenizer.convert_ids_to_tokens(res.vocab_ids.tolist())
    fig = go.Figure()
    fig.add_scattergl(x=res.vocab_xy[:, 0], y=res.vocab_xy[:, 1], mode="markers",
                      name=f"{len(tokens)} vocabulary tokens",
                      text=[interpret.token_text(bb.tokenizer, str(t)) for t in tokens], hoverinfo="text",
                      marker=dict(size=4, color="#b8c0cc", opacity=0.6))
    for name, xy in res.tag_xy.items():
        fig.add_scatter(x=xy[:, 0], y=xy[:, 1], mode="markers+text", name=name,
                        text=[str(i + 1) for i in range(len(xy))], textposition="top center",
                        marker=dict(size=11, line=dict(width=1, color="#222")))
    fig.update_layout(height=460, margin=dict(l=10, r=10, t=40, b=10),
                      title=f"PCA of vocabulary embeddings (PC1 {res.explained[0]:.1%}, PC2 {res.explained[1]:.1%} "
                            f"of the sample's variance); mean token norm {res.vocab_norm_mean:.2f}",
                      xaxis_title="PC1", yaxis_title="PC2")
    return fig

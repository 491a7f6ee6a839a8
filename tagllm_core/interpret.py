"""What do learned tags look like to the backbone?

Two views, both in the backbone's input-embedding space:

* ``nearest_tokens``: for each of a tag's p vectors, the vocabulary tokens whose
  input embeddings have the highest cosine similarity with it;
* ``pca_projection``: a 2-D PCA fitted on a random sample of vocabulary
  embeddings (numpy SVD of the centred sample), with the tag vectors projected
  into the same plane, so one sees whether tags sit inside the cloud of real
  tokens or far from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Neighbour", "nearest_tokens", "PCAResult", "pca_projection", "token_text"]


@dataclass
class Neighbour:
    token_id: int
    token: str  # the tokenizer's own spelling, e.g. 'Ġcarbon'
    text: str  # what the token reads as, e.g. ' carbon'
    cosine: float


def token_text(tokenizer, token: str) -> str:
    """A token as readable text (byte-level BPE marks such as 'Ġ' become spaces)."""
    try:
        return tokenizer.convert_tokens_to_string([token])
    except Exception:  # tokenizers without that method, or odd byte tokens
        return token


def nearest_tokens(vectors: torch.Tensor, embedding: torch.Tensor, tokenizer, k: int = 5) -> list[list[Neighbour]]:
    """For each row of ``vectors`` (p, d), its ``k`` nearest vocabulary tokens by cosine similarity.

    ``embedding`` is the backbone's (vocab, d) input-embedding matrix.
    """
    v = torch.nn.functional.normalize(vectors.detach().float().cpu(), dim=1)
    e = torch.nn.functional.normalize(embedding.detach().float().cpu(), dim=1)
    sims = v @ e.T  # (p, vocab)
    top = sims.topk(min(k, e.shape[0]), dim=1)
    out = []
    for ids, vals in zip(top.indices.tolist(), top.values.tolist()):
        toks = tokenizer.convert_ids_to_tokens(ids)
        out.append([Neighbour(i, str(t), token_text(tokenizer, str(t)), float(c)) for i, t, c in zip(ids, toks, vals)])
    return out


@dataclass
class PCAResult:
    vocab_xy: np.ndarray  # (n_sample, 2)
    vocab_ids: np.ndarray  # (n_sample,)
    tag_xy: dict[str, np.ndarray]  # tag name -> (p, 2)
    explained: tuple[float, ...]  # variance ratio of the two components (within the vocabulary sample)
    tag_norms: dict[str, np.ndarray]  # tag name -> (p,) vector norms
    vocab_norm_mean: float


def pca_projection(tag_vectors: dict, embedding: torch.Tensor, sample: int = 2000, seed: int = 0) -> PCAResult:
    """2-D PCA of ``sample`` random vocabulary embeddings, with each tag's vectors projected onto it.

    ``tag_vectors``: name -> (p, d) tensor. Deterministic for a given ``seed``.
    """
    emb = embedding.detach().float().cpu().numpy()
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(emb.shape[0], size=min(sample, emb.shape[0]), replace=False))
    x = emb[ids].astype(np.float64)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:2]
    var = s ** 2
    explained = tuple(float(v) for v in (var[:2] / var.sum()))
    tag_xy, norms = {}, {}
    for name, vec in tag_vectors.items():
        arr = vec.detach().float().cpu().numpy().astype(np.float64)
        tag_xy[name] = (arr - mean) @ comps.T
        norms[name] = np.linalg.norm(arr, axis=1)
    return PCAResult((x - mean) @ comps.T, ids, tag_xy, explained, norms,
                     float(np.linalg.norm(emb, axis=1).mean()))

"""The applicability domain: how similar an input is to the tag's training inputs, and below which
similarity validation error rises.

* SMILES: Morgan fingerprints (radius 2, 2048 bits, RDKit), compared by Tanimoto.
* Proteins: the set of 3-mers over the 20 standard residues, an 8,000-bit presence vector, compared by
  Jaccard. Tanimoto on presence bits *is* Jaccard on the sets, so one function scores both.

Fingerprints are stored packed (``np.packbits``: 2048 bits -> 256 bytes, 8000 bits -> 1000 bytes per
row) in the tag file, one uint8 tensor ``applicability.<slot>`` per input, at most
``MAX_REFERENCE_ROWS[kind]`` distinct training inputs (a seeded sample above that). The card's
``applicability[slot]`` holds the threshold and the validation curve it came from (``domain_curve``).

A row is out of the domain when any input's nearest training input is less similar than that input's
threshold. As with the other flags (``standardize``), an out-of-domain row is still predicted; the
flag says why the number deserves little trust.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["FP_RADIUS", "FP_BITS", "KMER", "AMINO_ACIDS", "KMER_BITS", "PACKED_WIDTH", "METHODS",
           "MAX_REFERENCE_ROWS", "ERROR_RATIO", "MAX_BINS", "MIN_BIN_ROWS", "TENSOR_PREFIX", "fingerprints",
           "kmer_index", "ReferenceSet", "max_similarity", "reference_sample", "DomainCurve", "domain_curve",
           "validation_errors", "build_applicability", "outside_message"]

FP_RADIUS = 2
FP_BITS = 2048
KMER = 3
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
KMER_BITS = len(AMINO_ACIDS) ** KMER  # 8000
PACKED_WIDTH = {"smiles": FP_BITS // 8, "protein": KMER_BITS // 8}  # bytes per stored row
METHODS = {"smiles": f"Tanimoto, Morgan radius {FP_RADIUS}, {FP_BITS} bits",
           "protein": f"Jaccard of {KMER}-mer sets"}
NEAREST = {"smiles": ("molecule", "Tanimoto"), "protein": ("protein", f"{KMER}-mer similarity")}
# 20,000 molecules are 5 MB in the file; a protein row is four times wider, and a tag rarely sees
# more than a few thousand distinct proteins.
MAX_REFERENCE_ROWS = {"smiles": 20_000, "protein": 5_000}
TENSOR_PREFIX = "applicability."
# The threshold rule (``domain_curve``): validation rows in up to MAX_BINS similarity-quantile bins of
# at least MIN_BIN_ROWS rows; a bin is "still fine" while its mean error is <= ERROR_RATIO x overall.
ERROR_RATIO = 1.5
MAX_BINS = 5
MIN_BIN_ROWS = 10
# Dense intersection block (query rows x reference rows) per step: bounds the memory of a big query.
_BLOCK = 1 << 22

_AA_CODE = np.full(256, -1, dtype=np.int64)
_AA_CODE[np.frombuffer(AMINO_ACIDS.encode(), dtype=np.uint8)] = np.arange(len(AMINO_ACIDS))


def kmer_index(kmer: str) -> int:
    """Bit of a 3-mer of standard residues in the protein fingerprint (base-20 number)."""
    index = 0
    for ch in kmer:
        index = index * len(AMINO_ACIDS) + AMINO_ACIDS.index(ch)
    return index


def _morgan_bits(values: Sequence[str]) -> np.ndarray:
    from rdkit import Chem, rdBase
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=FP_RADIUS, fpSize=FP_BITS)
    bits = np.zeros((len(values), FP_BITS), dtype=np.uint8)
    rdBase.DisableLog("rdApp.*")
    try:
        for i, smiles in enumerate(values):
            mol = Chem.MolFromSmiles(str(smiles))
            if mol is not None:  # an unreadable one stays all zeros: similarity 0 to everything
                bits[i] = gen.GetFingerprintAsNumPy(mol)
    finally:
        rdBase.EnableLog("rdApp.*")
    return bits


def _kmer_bits(values: Sequence[str]) -> np.ndarray:
    bits = np.zeros((len(values), KMER_BITS), dtype=np.uint8)
    n_aa = len(AMINO_ACIDS)
    for i, seq in enumerate(values):
        codes = _AA_CODE[np.frombuffer(str(seq).upper().encode("ascii", "replace"), dtype=np.uint8)]
        if len(codes) < KMER:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(codes, KMER)
        windows = windows[(windows >= 0).all(axis=1)]  # k-mers with X, U, O… are not counted
        bits[i, windows @ (n_aa ** np.arange(KMER - 1, -1, -1))] = 1
    return bits


def fingerprints(kind: str, values: Sequence[str]) -> np.ndarray:
    """(N, PACKED_WIDTH[kind]) uint8: packed Morgan bits (``"smiles"``) or 3-mer presence bits
    (``"protein"``) of cleaned inputs. Built in chunks, so memory stays at a chunk of unpacked bits."""
    if kind not in PACKED_WIDTH:
        raise ValueError(f"no similarity is defined for {kind!r} inputs")
    build = _morgan_bits if kind == "smiles" else _kmer_bits
    values = list(values)
    out = np.zeros((len(values), PACKED_WIDTH[kind]), dtype=np.uint8)
    for s in range(0, len(values), 1024):
        out[s:s + 1024] = np.packbits(build(values[s:s + 1024]), axis=1)
    return out


def _sparse_bits(packed: np.ndarray):
    """CSR (N, 8 x width) float32 of unpacked bits; fingerprints are sparse (a molecule sets ~50 of
    2048 bits), so the intersection counts are a sparse product."""
    import scipy.sparse as sp

    n, width = packed.shape
    counts, columns = [np.zeros(1, dtype=np.int64)], []
    for s in range(0, n, 4096):  # unpacked 4096 rows at a time: at most 4096 x 8000 bytes
        rows, cols = np.nonzero(np.unpackbits(packed[s:s + 4096], axis=1))  # row-major: CSR order
        counts.append(np.bincount(rows, minlength=min(4096, n - s)))
        columns.append(cols.astype(np.int32))
    indices = np.concatenate(columns) if columns else np.zeros(0, dtype=np.int32)
    indptr = np.cumsum(np.concatenate(counts))
    return sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(n, width * 8))


class ReferenceSet:
    """The stored training fingerprints of one input, ready to compare queries with.

    ``packed``: (N, W) uint8. ``max_similarity(queries)`` with queries (Q, W) uint8 gives (Q,) float64:
    each query's largest |a AND b| / |a OR b| over the N rows (0 for an empty query or reference).
    """

    def __init__(self, packed: np.ndarray, chunk_rows: int = 4096):
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        self.n, self.width = packed.shape
        self.chunk_rows = chunk_rows
        self._bits_t = _sparse_bits(packed).T.tocsr()  # (8W, N): one product per query block
        self._counts = np.asarray(self._bits_t.sum(axis=0)).ravel()

    def max_similarity(self, queries: np.ndarray) -> np.ndarray:
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        out = np.zeros(len(queries))
        if not len(queries) or not self.n:
            return out
        q = _sparse_bits(queries)
        q_counts = np.asarray(q.sum(axis=1)).ravel()
        step = max(1, min(self.chunk_rows, _BLOCK // self.n))
        for s in range(0, len(queries), step):
            inter = (q[s:s + step] @ self._bits_t).toarray().astype(np.float64)  # exact counts; float64 ratio
            union = q_counts[s:s + step, None] + self._counts[None, :] - inter
            sim = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
            out[s:s + step] = sim.max(axis=1)
        return out


def max_similarity(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(Q,) largest Tanimoto/Jaccard of each packed query row against packed ``reference`` rows."""
    return ReferenceSet(reference).max_similarity(queries)


def reference_sample(values: Sequence[str], cap: int, seed: int) -> list:
    """The distinct ``values`` (first-seen order); above ``cap`` of them, a sample of ``cap`` drawn with
    ``seed`` (kept in first-seen order)."""
    unique = list(dict.fromkeys(values))
    if len(unique) <= cap:
        return unique
    keep = np.sort(np.random.default_rng([seed, 11]).choice(len(unique), cap, replace=False))
    return [unique[i] for i in keep]


@dataclass
class DomainCurve:
    """Validation error against similarity to the training inputs, and the threshold read from it.

    ``edges``: (B + 1,) similarity-quantile bin edges; ``error``: (B,) mean error per bin (``None`` for
    an empty bin); ``count``: (B,) rows per bin; ``overall_error``: mean over all validation rows;
    ``threshold``: inputs at least this similar are in the domain.
    """

    edges: list[float]
    error: list[Optional[float]]
    count: list[int]
    overall_error: float
    threshold: float

    def to_dict(self) -> dict:
        return asdict(self)


def domain_curve(similarity: np.ndarray, error: np.ndarray, ratio: float = ERROR_RATIO, max_bins: int = MAX_BINS,
                 min_bin_rows: int = MIN_BIN_ROWS) -> DomainCurve:
    """Bin validation rows by their similarity to the training inputs and find where error rises.

    The rule: B = min(max_bins, n // min_bin_rows) bins (at least one) at similarity quantiles. Walk
    down from the most similar bin (always kept), keeping each bin whose mean error is at most
    ``ratio`` x the overall mean error; the first bin above that stops the walk. The threshold is the
    lowest similarity of a validation row in the kept bins: below it, validation error was more than
    ``ratio`` times the average, or nothing was validated at all.

    ``similarity``, ``error``: (n,) per validation row (absolute error, or 1 for a wrong class).
    """
    sim = np.asarray(similarity, dtype=float)
    err = np.asarray(error, dtype=float)
    n_bins = max(1, min(max_bins, len(sim) // min_bin_rows))
    edges = np.unique(np.quantile(sim, np.linspace(0.0, 1.0, n_bins + 1)))
    if len(edges) == 1:  # every row equally similar (one protein in every pair, say)
        edges = np.repeat(edges, 2)
    which = np.searchsorted(edges[1:-1], sim, side="right")  # the last bin is closed at the top
    n_bins = len(edges) - 1
    count = np.bincount(which, minlength=n_bins)
    means = [float(err[which == b].mean()) if count[b] else None for b in range(n_bins)]
    overall = float(err.mean())
    kept = n_bins - 1
    for b in range(n_bins - 2, -1, -1):
        mean = means[b]
        if mean is None:
            continue
        if mean > ratio * overall:
            break
        kept = b
    threshold = float(sim[which >= kept].min())
    return DomainCurve([float(e) for e in edges], means, [int(c) for c in count], overall, threshold)


def validation_errors(task: str, y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(n,) per validation row: |y - prediction| of the first output (regression, ``y`` and ``pred``
    (n, outputs)), or 1.0 where the most probable class is wrong (classification: ``y`` (n,) class
    indices, ``pred`` (n, classes) probabilities)."""
    if task == "regression":
        return np.abs(np.asarray(y, float)[:, 0] - np.asarray(pred, float)[:, 0])
    return (np.argmax(pred, axis=1) != np.asarray(y)).astype(float)


def build_applicability(slot_kinds: dict, train_rows: Sequence[dict], valid_rows: Sequence[dict],
                        valid_error: np.ndarray, task: str, seed: int = 0,
                        caps: Optional[dict] = None) -> tuple[dict, dict]:
    """What training stores: ``(card, tensors)`` with card = {slot: {threshold, curve, counts…}} and
    tensors = {slot: (N, W) uint8 packed fingerprints}, for every SMILES and protein input.

    ``train_rows`` / ``valid_rows``: cleaned inputs as the model read them ({slot: value}); the reference
    is the distinct training inputs (a seeded sample above ``caps[kind]``), and the curve compares each
    validation row with that same stored reference, as prediction will.
    """
    caps = {**MAX_REFERENCE_ROWS, **(caps or {})}
    card, tensors = {}, {}
    for slot, kind in slot_kinds.items():
        if kind not in PACKED_WIDTH:
            continue
        values = [r[slot] for r in train_rows]
        reference = reference_sample(values, caps[kind], seed)
        packed = fingerprints(kind, reference)
        sims = ReferenceSet(packed).max_similarity(fingerprints(kind, [r[slot] for r in valid_rows]))
        curve = domain_curve(sims, valid_error)
        card[slot] = {"kind": kind, "method": METHODS[kind], "n_reference": len(reference),
                      "n_training": len(dict.fromkeys(values)), "threshold": curve.threshold,
                      "curve": {"edges": curve.edges, "error": curve.error, "count": curve.count},
                      "error_metric": "absolute error" if task == "regression" else "error rate",
                      "overall_error": curve.overall_error, "ratio": ERROR_RATIO}
        tensors[slot] = torch.from_numpy(packed)
    return card, tensors


def outside_message(kind: str, similarity: float, threshold: float) -> str:
    """``outside the applicability domain: nearest training molecule has Tanimoto 0.21 (threshold 0.35)``."""
    what, measure = NEAREST[kind]
    return (f"outside the applicability domain: nearest training {what} has {measure} {similarity:.2f} "
            f"(threshold {threshold:.2f})")

"""Percentiles of a prediction: among the training labels, and against a fixed drug-like reference set.

A percentile among the training labels says where a prediction falls in the data the tag learned from;
it moves with whatever that data happened to be. The reference set does not: 2,000 molecules drawn once
(seeded) from the MOSES test split (``data/reference/moses_reference.smi``, drawn by
``bench/make_reference_sample.py``; MIT licence beside it). A function tag that reads one SMILES can carry
its predictions over that set (``attach_reference``), stored in the tag file as the float32 tensor
``reference.predictions`` (n, n_outputs), each column sorted, with the card's ``reference_set`` naming the
set, its version, the rows predicted and skipped, and the sample file's SHA-256. Every prediction then
shows its percentile against it: "higher than 93% of drug-like molecules".

Tags reading a protein (with or without a SMILES) get none: the reference drugs would have to be predicted
against every protein a user brings, 2,000 passes per protein, so the column stays blank; text tags have no
reference set. A tag without a stored distribution (older tags) shows a blank percentile, never an error.

``percentile(value, sorted_values)`` is the one definition both columns use: the share of values at or
below ``value``, in percent, rounded to 0.1.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .backbone import Backbone
from .exceptions import InputError
from .paths import PACKAGE_DATA_DIR
from .progress import ProgressCallback, ProgressEvent
from .tag_schema import REFERENCE_TENSOR
from .tags import Tag, TagCard

__all__ = ["REFERENCE_DIR", "REFERENCE_FILE", "REFERENCE_NAME", "REFERENCE_VERSION", "REFERENCE_TENSOR",
           "MAX_REFERENCE_ROWS", "ReferenceDistribution", "load_reference_smiles", "reference_problem",
           "reference_predictions", "attach_reference", "percentile", "percentiles", "sorted_finite"]

# Package data (``tagllm_core/data/reference``), so it travels with an installed wheel.
REFERENCE_DIR = PACKAGE_DATA_DIR / "reference"
REFERENCE_FILE = REFERENCE_DIR / "moses_reference.smi"
REFERENCE_NAME = "MOSES test split, seeded sample"
REFERENCE_VERSION = 1  # of the sample: a new draw is a new version, and cards say which one they hold
MAX_REFERENCE_ROWS = 100_000  # what a card may declare; the shipped sample has 2,000


def sorted_finite(values: Sequence) -> np.ndarray:
    """The finite numbers of ``values`` (None and NaN dropped), sorted: what ``percentile`` compares with."""
    arr = np.asarray([v for v in values if v is not None and isinstance(v, (int, float, np.number))], dtype=float)
    return np.sort(arr[np.isfinite(arr)])


def percentile(value, distribution: Optional[np.ndarray]) -> Optional[float]:
    """Percentile (0-100, one decimal) of ``value`` in ``distribution`` (sorted, finite): the share of
    its values at or below ``value``. ``None`` when either is missing or ``value`` is not a finite number."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return None
    if distribution is None or len(distribution) == 0 or not np.isfinite(value):
        return None
    return round(100.0 * np.searchsorted(distribution, float(value), side="right") / len(distribution), 1)


def percentiles(values: Sequence, sample: Sequence) -> list[Optional[float]]:
    """``percentile`` of each of ``values`` within ``sample`` (unsorted; None and NaN in it ignored)."""
    ref = sorted_finite(sample)
    return [percentile(v, ref) for v in values]


@dataclass
class ReferenceDistribution:
    """A function tag's predictions over a reference set. ``predictions``: (n, n_outputs) float32, each
    column sorted ascending (regression: outputs in label units; classification: class probabilities).
    ``n_skipped``: reference rows that could not be predicted (standardisation or cleaning refused them)."""

    name: str
    version: int
    predictions: np.ndarray
    n_skipped: int = 0
    sha256: str = ""
    created: float = 0.0

    @property
    def n(self) -> int:
        return int(self.predictions.shape[0])

    def column(self, output: int) -> np.ndarray:
        """Output ``output``'s sorted predictions, (n,)."""
        return self.predictions[:, output]

    def card_entry(self) -> dict:
        """What the card's ``reference_set`` records (the tensor holds the numbers)."""
        return {"name": self.name, "version": self.version, "n": self.n, "n_outputs": int(self.predictions.shape[1]),
                "n_skipped": self.n_skipped, "sha256": self.sha256, "created": self.created}

    @classmethod
    def from_tag(cls, tag: Tag) -> Optional["ReferenceDistribution"]:
        """The tag's stored distribution, or None (an older tag, or one that cannot have one)."""
        entry = tag.card.reference_set or {}
        if not entry or tag.reference_predictions is None:
            return None
        values = np.sort(tag.reference_predictions.detach().cpu().float().numpy(), axis=0)  # sorted on disk too
        return cls(entry.get("name", ""), int(entry.get("version", 0)), values, int(entry.get("n_skipped", 0)),
                   entry.get("sha256", ""), float(entry.get("created") or 0.0))


def load_reference_smiles(path: Optional[Path] = None) -> list[str]:
    """The reference sample's SMILES (one per line after a ``smiles`` header)."""
    from .data import read_smiles_file

    path = Path(path or REFERENCE_FILE)
    if not path.is_file():
        raise InputError(f"The reference sample {path} is missing; rerun bench/make_reference_sample.py.")
    return read_smiles_file(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def reference_problem(card: TagCard) -> Optional[str]:
    """Why this tag gets no reference distribution (None when it can have one)."""
    if card.kind != "function":
        return f"<{card.name}> is a domain tag; only function tags predict."
    kinds = [s.kind for s in card.slots]
    if kinds == ["smiles"]:
        return None
    if "protein" in kinds:
        return (f"<{card.name}> reads a protein: a reference distribution would need the reference molecules "
                f"predicted against every protein (2,000 passes per protein), so it has none.")
    return f"<{card.name}> does not read one SMILES; the reference set is molecules."


def _subsample(smiles: list, rows: Optional[int], seed: int = 0) -> list:
    """``rows`` of the sample (seeded, in its order), or all of it."""
    if rows is None or rows >= len(smiles):
        return smiles
    if rows < 1:
        raise InputError(f"--rows must be at least 1, got {rows}.")
    picked = np.sort(np.random.default_rng(seed).choice(len(smiles), size=rows, replace=False))
    return [smiles[i] for i in picked]


def reference_predictions(backbone: Backbone, tag: Tag, rows: Optional[int] = None, batch_size: int = 16,
                          progress: Optional[ProgressCallback] = None, path: Optional[Path] = None,
                          name: str = REFERENCE_NAME, version: int = REFERENCE_VERSION) -> ReferenceDistribution:
    """Predict the reference sample (or ``rows`` of it, seeded) with ``tag`` through ``Predictor``, as the CLI
    and the app predict: standardised SMILES, the tag's trained domain tags, batched. Rows the predictor
    refuses are skipped and counted. Raises ``InputError`` for a tag ``reference_problem`` names, or when no
    row could be predicted."""
    from .prediction import Predictor

    problem = reference_problem(tag.card)
    if problem:
        raise InputError(problem)
    path = Path(path or REFERENCE_FILE)
    smiles = _subsample(load_reference_smiles(path), rows)
    slot = tag.card.slots[0].name

    def forward(ev: ProgressEvent) -> None:
        if progress:
            progress(ProgressEvent("reference", ev.step, ev.total_steps, throughput=ev.throughput, eta_s=ev.eta_s,
                                   message=f"<{tag.name}> over the reference set"))

    results = Predictor(backbone, tag).predict([{slot: s} for s in smiles], batch_size=batch_size, progress=forward)
    outputs = [r.outputs for r in results if r.ok and r.outputs is not None]
    if not outputs:
        raise InputError(f"<{tag.name}> predicted none of the {len(smiles):,} reference molecules.")
    values = np.sort(np.asarray(outputs, dtype=np.float32), axis=0)
    return ReferenceDistribution(name, version, values, n_skipped=len(smiles) - len(outputs), sha256=_sha256(path),
                                 created=time.time())


def attach_reference(tag: Tag, backbone: Backbone, rows: Optional[int] = None, batch_size: int = 16,
                     progress: Optional[ProgressCallback] = None, path: Optional[Path] = None) -> Tag:
    """``tag`` with its reference distribution stored (card ``reference_set`` + tensor ``reference.predictions``);
    the same object, changed in place, for chaining. Check ``reference_problem(tag.card)`` first to skip tags
    that cannot have one (this raises ``InputError`` for them)."""
    dist = reference_predictions(backbone, tag, rows=rows, batch_size=batch_size, progress=progress, path=path)
    tag.card.reference_set = dist.card_entry()
    tag.reference_predictions = torch.from_numpy(np.ascontiguousarray(dist.predictions))
    return tag

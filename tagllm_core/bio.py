"""Protein sequence properties for the UI, computed with Biopython's ProtParam.

Inputs are already-cleaned one-letter sequences (no FASTA header, no
whitespace, no gaps); lower case is accepted. ProtParam only knows the 20 standard amino acids and rejects
anything else, so non-standard letters (X, U, O, B, Z, J, ...) are removed
before computing and the result says how many were left out.

Definitions, as in ExPASy ProtParam:

* ``molecular_weight``: average mass in Da of the (standard part of the)
  chain: the sum of residue masses plus one water, for free termini.
* ``isoelectric_point``: by bisection, with the pK values of Bjellqvist et al.
  (1993, 1994), searched over pH 0-14 (see :func:`protein_properties`).
* ``gravy``: grand average of hydropathy (Kyte-Doolittle); > 0 is hydrophobic.
* ``instability_index``: Guruprasad et al. (1990); > 40 suggests the protein
  is unstable in vitro.
* ``aromaticity``: fraction of F + W + Y (Lobry & Gautier, 1994).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

from Bio.SeqUtils.IsoelectricPoint import IsoelectricPoint
from Bio.SeqUtils.ProtParam import ProteinAnalysis

from tagllm_core.exceptions import InputError

__all__ = [
    "STANDARD_AMINO_ACIDS",
    "ProteinProperties",
    "protein_properties",
    "residue_composition",
]

STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
_STANDARD = frozenset(STANDARD_AMINO_ACIDS)


@dataclass
class ProteinProperties:
    """ProtParam properties of one sequence.

    ``length`` is the full input length, non-standard residues included; every
    other number is computed on the standard residues only (see ``note``).
    """

    length: int
    molecular_weight: float
    isoelectric_point: float
    gravy: float
    instability_index: float
    aromaticity: float
    nonstandard_residues: int
    note: Optional[str] = None


def _checked(sequence: str) -> str:
    """Upper-case ``sequence`` and reject what no cleaning step should have let through."""
    if not isinstance(sequence, str) or not sequence:
        raise InputError("Empty protein sequence: please enter at least one residue.")
    seq = sequence.upper()
    # Letters outside the 20 are tolerated (and reported); anything else
    # (digits, '*', '-', spaces) means the sequence was not cleaned.
    odd = sorted({c for c in seq if not ("A" <= c <= "Z")})
    if odd:
        raise InputError(
            f"Protein sequence contains characters that are not amino-acid letters: {odd}. "
            "Remove gaps, stop codons ('*'), digits and whitespace first."
        )
    return seq


def protein_properties(sequence: str) -> ProteinProperties:
    """Compute :class:`ProteinProperties` for a one-letter ``sequence``.

    Non-standard letters are dropped before ProtParam sees the sequence, so
    the mass omits them and the dipeptide-based instability index reads the
    residues on either side of a dropped one as neighbours; ``note`` says this
    whenever it happens. A sequence with no standard residue at all raises
    :class:`InputError`.

    The pI is searched over pH 0-14: ``ProteinAnalysis.isoelectric_point``
    bisects only between 4.05 and 12, so it returns exactly 4.05 or 12.0 for
    strongly acidic or basic sequences (poly-Asp, poly-Arg, many peptides).
    """
    seq = _checked(sequence)
    standard = "".join(c for c in seq if c in _STANDARD)
    dropped = Counter(c for c in seq if c not in _STANDARD)
    n_dropped = sum(dropped.values())
    if not standard:
        raise InputError(
            f"Protein sequence has no standard amino acid (only {', '.join(sorted(dropped))}); "
            "its properties cannot be computed."
        )
    note = None
    if n_dropped:
        detail = ", ".join(f"{letter}\u00d7{count}" for letter, count in sorted(dropped.items()))
        note = (
            f"Computed on {len(standard)} of {len(seq)} residues: {n_dropped} non-standard "
            f"({detail}) left out, as ProtParam supports only the 20 standard amino acids. "
            "Mass, pI and indices therefore ignore them."
        )
    analysis = ProteinAnalysis(standard)
    return ProteinProperties(
        length=len(seq),
        molecular_weight=float(analysis.molecular_weight()),
        isoelectric_point=_isoelectric_point(standard),
        gravy=float(analysis.gravy()),
        instability_index=float(analysis.instability_index()),
        aromaticity=float(analysis.aromaticity()),
        nonstandard_residues=n_dropped,
        note=note,
    )


def _isoelectric_point(standard: str) -> float:
    """pI of a standard-residue sequence, bisected over the whole pH 0-14 scale."""
    return float(IsoelectricPoint(standard).pi(pH=7.0, min_=0.0, max_=14.0))


def residue_composition(sequence: str) -> dict[str, float]:
    """Fraction of the sequence made of each standard amino acid, in ``STANDARD_AMINO_ACIDS`` order.

    Fractions are of the full length, so they sum to 1 minus the fraction of
    non-standard residues rather than being renormalised over the 20.
    """
    seq = _checked(sequence)
    counts = Counter(seq)
    return {aa: counts[aa] / len(seq) for aa in STANDARD_AMINO_ACIDS}

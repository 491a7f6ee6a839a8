"""Classic features of the inputs, for heads that read them beside the tag.

A function tag's head may read, next to the backbone's read-out, fixed
descriptors of each input (``FunctionTagConfig.features = "descriptors"``):

* SMILES: RDKit's 2D descriptors (``Descriptors.CalcMolDescriptors``: about
  210 numbers such as MolLogP, TPSA, ring counts, charges and fragment counts);
* proteins: the 20 residue fractions plus ProtParam's length, molecular
  weight, isoelectric point, GRAVY, instability index, aromaticity and the
  helix/turn/sheet propensity fractions;
* free text: none.

Values RDKit cannot compute for a molecule are NaN here; the head imputes
and clips them (``heads.TaskHead``), so one odd molecule never breaks a batch.
Rows that share an input (one protein, many drugs) compute it once.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import numpy as np

from .exceptions import InputError

__all__ = ["FEATURE_SETS", "feature_names", "row_feature_names", "input_features", "row_features"]

FEATURE_SETS = ("none", "descriptors")
_LIMIT = 1e12

_PROTEIN_PARAMS = ("length", "molecular_weight", "isoelectric_point", "gravy", "instability_index",
                   "aromaticity", "helix_fraction", "turn_fraction", "sheet_fraction")


@lru_cache(maxsize=1)
def _rdkit_names() -> tuple:
    from rdkit.Chem import Descriptors

    return tuple(name for name, _ in Descriptors.descList)


def feature_names(kind: str) -> list[str]:
    """Names of the descriptors of one input kind, in column order."""
    if kind == "smiles":
        return [f"rdkit:{n}" for n in _rdkit_names()]
    if kind == "protein":
        from .bio import STANDARD_AMINO_ACIDS

        return [f"frac:{a}" for a in STANDARD_AMINO_ACIDS] + [f"protparam:{n}" for n in _PROTEIN_PARAMS]
    if kind == "text":
        return []
    raise InputError(f"Unknown input kind {kind!r}.")


def _smiles_row(smiles: str) -> list[float]:
    from rdkit import Chem, rdBase
    from rdkit.Chem import Descriptors

    rdBase.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    names = _rdkit_names()
    if mol is None:
        return [math.nan] * len(names)
    values = Descriptors.CalcMolDescriptors(mol, missingVal=math.nan, silent=True)
    return [float(values.get(n, math.nan)) for n in names]


def _protein_row(sequence: str) -> list[float]:
    from Bio.SeqUtils.ProtParam import ProteinAnalysis

    from .bio import STANDARD_AMINO_ACIDS

    seq = "".join(r for r in sequence.upper() if r in STANDARD_AMINO_ACIDS)
    if not seq:
        return [math.nan] * (len(STANDARD_AMINO_ACIDS) + len(_PROTEIN_PARAMS))
    counts = {a: seq.count(a) for a in STANDARD_AMINO_ACIDS}
    fractions = [counts[a] / len(seq) for a in STANDARD_AMINO_ACIDS]
    pa = ProteinAnalysis(seq)
    helix, turn, sheet = pa.secondary_structure_fraction()
    params = [len(sequence), pa.molecular_weight(), pa.isoelectric_point(), pa.gravy(), pa.instability_index(),
              pa.aromaticity(), helix, turn, sheet]
    return fractions + [float(v) for v in params]


def input_features(kind: str, values: Sequence[str]) -> np.ndarray:
    """(N, F) float64 descriptors of cleaned inputs of one kind; NaN where undefined.
    Repeated values are computed once."""
    width = len(feature_names(kind))
    if kind == "text" or not values:
        return np.zeros((len(values), width))
    compute = _smiles_row if kind == "smiles" else _protein_row
    memo: dict = {}
    rows = []
    for v in values:
        if v not in memo:
            memo[v] = compute(v)
        rows.append(memo[v])
    X = np.asarray(rows, dtype=np.float64)
    X[~np.isfinite(X)] = np.nan  # RDKit returns inf for a few descriptors of odd molecules
    # ...and astronomically large finite ones (Ipc of a long chain: 1e55), beyond float32
    return np.clip(X, -_LIMIT, _LIMIT)


def row_feature_names(slot_kinds: dict) -> list[str]:
    """Column names of ``row_features(slot_kinds, …)``, slot by slot."""
    return [n for kind in slot_kinds.values() for n in feature_names(kind)]


def row_features(slot_kinds: dict, rows: Sequence[dict]) -> np.ndarray:
    """(N, F) descriptors of every slot of each row, slot by slot in ``slot_kinds`` order."""
    blocks = [input_features(kind, [r[slot] for r in rows]) for slot, kind in slot_kinds.items()]
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(rows), 0))

"""Optional columns of a results table: readable RDKit descriptors, Lipinski's count and the PAINS / Brenk
structural alerts of each molecule, and, for a download, every RDKit 2D descriptor; for proteins, the
ProtParam properties (length, mass, pI, GRAVY, instability index, aromaticity) and, for a download, the
residue composition.

The same inputs the model read: each SMILES is cleaned and standardised as prediction does it
(``standardize.clean_standardised_smiles``), so a hydrochloride's descriptors are its parent's; each
protein is cleaned as prediction cleans it (FASTA header, whitespace and position numbers dropped). A row
whose input cannot be read gets blanks (NaN, or ``<NA>`` in the integer columns): never a made-up zero.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd

from . import chem
from .bio import protein_properties
from .descriptors import feature_names, input_features
from .domains import clean
from .exceptions import InputError
from .standardize import clean_standardised_smiles

__all__ = ["DESCRIPTOR_COLUMNS", "ALERT_COLUMNS", "PROTEIN_COLUMNS", "property_columns", "protein_columns"]

# chem.Descriptors field -> column header, units in the header
DESCRIPTOR_COLUMNS = {
    "mw": "MW (Da)", "clogp": "cLogP", "tpsa": "TPSA (Å²)", "hbd": "H-bond donors", "hba": "H-bond acceptors",
    "rotatable_bonds": "rotatable bonds", "qed": "QED", "heavy_atoms": "heavy atoms",
}
_INTEGERS = ("hbd", "hba", "rotatable_bonds", "heavy_atoms")
ALERT_COLUMNS = ("Lipinski violations", "alerts", "PAINS alerts", "Brenk alerts")


def _molecule(smiles: str) -> dict:
    """One molecule's columns; raises ``InputError`` when RDKit cannot read it."""
    d = chem.descriptors(smiles)
    alerts = chem.structural_alerts(smiles)
    rec: dict = {label: getattr(d, key) for key, label in DESCRIPTOR_COLUMNS.items()}
    rec["Lipinski violations"] = len(chem.lipinski(d).violations)
    rec["alerts"] = len(alerts)
    for catalog in ("PAINS", "Brenk"):
        rec[f"{catalog} alerts"] = "; ".join(a.description for a in alerts if a.catalog == catalog)
    return rec


def _standardised(raw) -> Optional[str]:
    c, _ = clean_standardised_smiles(raw, 10 ** 9)  # descriptors need no length limit
    return c.value if c.ok else None


def property_columns(smiles: Sequence, full: bool = False, prefix: str = "") -> pd.DataFrame:
    """One row per entry of ``smiles`` (raw SMILES as entered; None/blank for none): the
    ``DESCRIPTOR_COLUMNS``, then ``ALERT_COLUMNS`` (Lipinski violations and alert counts as integers,
    the PAINS and Brenk alerts' names joined by "; ", "" for none). ``full``: also every RDKit 2D
    descriptor, as ``rdkit:<name>`` columns. ``prefix`` goes before every column name (a tag with two
    SMILES inputs gets a block per input). Repeated molecules are computed once."""
    names = list(DESCRIPTOR_COLUMNS.values()) + list(ALERT_COLUMNS)
    std = [_standardised(s) if s is not None and s == s and str(s).strip() else None for s in smiles]  # s != s: NaN
    memo: dict = {}
    records = []
    for s in std:
        if s is not None and s not in memo:
            try:
                memo[s] = _molecule(s)
            except InputError:
                memo[s] = {}
        records.append(memo.get(s, {}) if s is not None else {})
    frame = pd.DataFrame.from_records(records, columns=names, index=range(len(std)))
    for key in _INTEGERS:
        frame[DESCRIPTOR_COLUMNS[key]] = frame[DESCRIPTOR_COLUMNS[key]].astype("Int64")
    for col in ("Lipinski violations", "alerts"):
        frame[col] = frame[col].astype("Int64")
    for col in ("PAINS alerts", "Brenk alerts"):
        frame[col] = frame[col].astype(object)  # NaN for an unread molecule stays a blank cell
    if full:
        values = input_features("smiles", [s or "" for s in std])
        values[[s is None for s in std]] = np.nan
        extra = pd.DataFrame(values, columns=feature_names("smiles"), index=frame.index)
        frame = pd.concat([frame, extra], axis=1)
    return frame.add_prefix(prefix) if prefix else frame


# bio.ProteinProperties field -> column header, units in the header
PROTEIN_COLUMNS = {
    "length": "length (residues)", "molecular_weight": "MW (Da)", "isoelectric_point": "pI", "gravy": "GRAVY",
    "instability_index": "instability index", "aromaticity": "aromaticity",
    "nonstandard_residues": "non-standard residues",
}


def _read_protein(raw) -> Optional[str]:
    """The sequence prediction would read from ``raw``, or None (blank, or not a sequence)."""
    if not (isinstance(raw, str) and raw.strip()):
        return None
    c = clean("protein", raw, 10 ** 9)  # properties need no length limit
    return str(c.value) if c.ok else None


def _protein(sequence: str) -> dict:
    """One cleaned sequence's columns; empty (blanks) when it has no standard residue (only X/U/O)."""
    try:
        p = protein_properties(sequence)
    except InputError:
        return {}
    return {label: getattr(p, key) for key, label in PROTEIN_COLUMNS.items()}


def protein_columns(sequences: Sequence, full: bool = False, prefix: str = "") -> pd.DataFrame:
    """One row per entry of ``sequences`` (raw as entered; None/blank for none): the ``PROTEIN_COLUMNS``
    (ProtParam on the standard residues; ``bio.protein_properties``). ``full``: also the residue fractions
    and ProtParam numbers the descriptor-augmented head reads (``frac:<aa>``, ``protparam:<name>``).
    ``prefix`` goes before every column name. Each input is cleaned once; repeated sequences are
    computed once."""
    read = [_read_protein(raw) for raw in sequences]
    memo: dict = {}
    for seq in read:
        if seq is not None and seq not in memo:
            memo[seq] = _protein(seq)
    records = [memo[seq] if seq is not None else {} for seq in read]
    frame = pd.DataFrame.from_records(records, columns=list(PROTEIN_COLUMNS.values()), index=range(len(records)))
    for col in ("length (residues)", "non-standard residues"):
        frame[col] = frame[col].astype("Int64")
    if full:
        values = input_features("protein", [seq or "" for seq in read])
        values[[seq is None for seq in read]] = np.nan
        extra = pd.DataFrame(values, columns=feature_names("protein"), index=frame.index)
        frame = pd.concat([frame, extra], axis=1)
    return frame.add_prefix(prefix) if prefix else frame

"""Validating and canonicalising each kind of input, one row at a time.

Nothing here raises for a bad row: every function returns a ``CleanInput``
with either a cleaned value or an ``error`` a scientist can act on, plus
``warnings`` for things that were fixed (a protein or text cropped, unusual
residues); an over-long SMILES is an error, since a cropped one is another
molecule. A batch of 10,000 rows with one bad SMILES predicts the other 9,999.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

__all__ = ["KINDS", "CleanInput", "clean", "clean_smiles", "clean_protein", "clean_text", "split_entries",
           "DEFAULT_MAX_LENGTH", "guess_kind", "randomized_smiles", "MAX_SPELLINGS", "spelled_rows",
           "spelled_entries"]

KINDS = ("smiles", "protein", "text")
STANDARD_AA = set("ACDEFGHIKLMNPQRSTVWY")
# X (unknown), U (selenocysteine), O (pyrrolysine) are real but rare: accepted with a warning.
RARE_AA = {"X": "unknown residue", "U": "selenocysteine", "O": "pyrrolysine"}
DEFAULT_MAX_LENGTH = {"protein": 1000, "smiles": 200, "text": 2000}


@dataclass
class CleanInput:
    value: Optional[str]
    warnings: list[str] = field(default_factory=list)
    error: Optional[str] = None
    length: Optional[int] = None  # residues / characters before any cropping (proteins, text)

    @property
    def ok(self) -> bool:
        return self.error is None


def _is_blank(text) -> bool:
    if text is None:
        return True
    if isinstance(text, float) and text != text:  # NaN from pandas for an empty CSV cell
        return True
    return not str(text).strip()


def clean_smiles(text, max_length: Optional[int] = None) -> CleanInput:
    """Parse with RDKit and return the canonical SMILES (stereo kept)."""
    from rdkit import Chem, rdBase

    if _is_blank(text):
        return CleanInput(None, error="empty input: a SMILES string is needed")
    raw = str(text).strip()
    if any(c.isspace() for c in raw):
        # "CCO ethanol" style lines: the SMILES is the first word, the rest is a name.
        raw = raw.split()[0]
    rdBase.DisableLog("rdApp.*")  # RDKit would print to stderr for every bad row
    try:
        mol = Chem.MolFromSmiles(raw, sanitize=False)
        if mol is None:
            return CleanInput(None, error=f"invalid SMILES {raw[:60]!r}: RDKit could not parse it")
        try:
            Chem.SanitizeMol(mol)
        except Exception as err:  # RDKit raises several sanitisation exception types
            return CleanInput(None, error=f"invalid SMILES {raw[:60]!r}: {err}")
        if mol.GetNumAtoms() == 0:
            return CleanInput(None, error=f"invalid SMILES {raw[:60]!r}: no atoms")
        canonical = Chem.MolToSmiles(mol)
    finally:
        rdBase.EnableLog("rdApp.*")
    # Unlike a protein, a SMILES cannot be cropped: cut mid-string it is another molecule or none.
    limit = max_length or DEFAULT_MAX_LENGTH["smiles"]
    if len(canonical) > limit:
        return CleanInput(None, error=f"SMILES of {len(canonical)} characters is longer than the limit of {limit}; "
                                      f"it is not cropped, because a cut SMILES is another molecule "
                                      f"(raise the limit with --max-length smiles=N if the model's context allows)")
    return CleanInput(canonical, [])


def randomized_smiles(smiles: str, n: int, seed: int = 0, max_tries: int = 5) -> list[str]:
    """Up to ``n`` distinct non-canonical SMILES of the same molecule (random atom order), for
    augmentation. Fewer come back for small molecules that have few spellings; none that
    equals ``smiles`` itself."""
    import numpy as np
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None or n <= 0:
        return []
    # Our own atom permutation rather than RDKit's doRandom, so a seed gives the same variants.
    rng = np.random.default_rng(seed)
    seen, out = {smiles}, []
    for _ in range(n * max_tries):
        order = rng.permutation(mol.GetNumAtoms()).tolist()
        s = Chem.MolToSmiles(Chem.RenumberAtoms(mol, order), canonical=False)
        if s not in seen:
            seen.add(s)
            out.append(s)
            if len(out) == n:
                break
    return out


MAX_SPELLINGS = 16  # a tag's spellings per molecule at prediction: each one is another forward pass


def spelled_rows(row: dict[str, str], kinds: dict[str, str], n: int) -> list[dict[str, str]]:
    """``row`` first, then up to ``n`` copies with every SMILES input spelled differently (random atom
    order), for a tag that averages its read-out over spellings. The spellings are seeded by the SMILES
    itself, so a molecule gets the same ones in training, in validation and in every later prediction.
    Copy j takes each SMILES input's j-th spelling (its canonical form once that input has no more:
    small molecules have few); copies equal to ``row`` are left out."""
    import zlib

    out = [row]
    if n <= 0:
        return out
    variants = {slot: randomized_smiles(row[slot], n, seed=zlib.crc32(row[slot].encode()))
                for slot, kind in kinds.items() if kind == "smiles"}
    for j in range(n):
        new = {**row, **{slot: v[j] for slot, v in variants.items() if j < len(v)}}
        if new != row:
            out.append(new)
    return out


def spelled_entries(rows: list[dict[str, str]], kinds: dict[str, str],
                    n: int) -> tuple[list[dict[str, str]], list[int]]:
    """(every row followed by its up to ``n`` spellings (``spelled_rows``), the index of each entry's row)."""
    entries: list[dict[str, str]] = []
    owner: list[int] = []
    for i, row in enumerate(rows):
        variants = spelled_rows(row, kinds, n)
        entries += variants
        owner += [i] * len(variants)
    return entries, owner


def clean_protein(text, max_length: Optional[int] = None) -> CleanInput:
    """Plain or FASTA text, any case; whitespace, header lines and the position numbers of a numbered
    listing (a number at the start or end of a line) are ignored. Digits anywhere else are an error:
    ``ACDEFG123HIK`` is not a protein, and silently reading it as ``ACDEFGHIK`` would predict for one."""
    if _is_blank(text):
        return CleanInput(None, error="empty input: a protein sequence is needed")
    lines = str(text).replace("\r", "\n").split("\n")
    body = []
    for line in lines:
        if line.lstrip().startswith((">", ";")):
            continue
        words = line.split()
        if words and words[0].isdigit():
            words = words[1:]
        if words and words[-1].isdigit():
            words = words[:-1]
        digits = re.search(r"\d+", "".join(words))
        if digits:
            return CleanInput(None, error=f"not a protein sequence: digits {digits.group()!r} inside the sequence "
                                          f"(only position numbers at the start or end of a line are allowed)")
        body.extend(words)
    seq = "".join(body).upper().rstrip("*")  # '*' marks a stop codon at the end
    if not seq:
        return CleanInput(None, error="empty input: only a FASTA header, no residues")
    bad = sorted(set(seq) - STANDARD_AA - set(RARE_AA))
    if bad:
        shown = ", ".join(repr(c) for c in bad[:8])
        return CleanInput(None, error=f"not a protein sequence: unexpected letters {shown} "
                                      f"(allowed: the 20 standard amino acids, X, U, O)")
    warnings = [f"{seq.count(c)} × {c} ({RARE_AA[c]})" for c in RARE_AA if c in seq]
    length = len(seq)
    limit = max_length or DEFAULT_MAX_LENGTH["protein"]
    if len(seq) > limit:
        warnings.append(f"sequence of {len(seq)} residues cropped to the first {limit}")
        seq = seq[:limit]
    return CleanInput(seq, warnings, length=length)


def clean_text(text, max_length: Optional[int] = None) -> CleanInput:
    if _is_blank(text):
        return CleanInput(None, error="empty input")
    value = " ".join(str(text).split())
    limit = max_length or DEFAULT_MAX_LENGTH["text"]
    warnings = []
    if len(value) > limit:
        warnings.append(f"text of {len(value)} characters cropped to {limit}")
        value = value[:limit]
    return CleanInput(value, warnings)


_CLEANERS = {"smiles": clean_smiles, "protein": clean_protein, "text": clean_text}


def clean(kind: str, text, max_length: Optional[int] = None) -> CleanInput:
    if kind not in _CLEANERS:
        return CleanInput(None, error=f"unknown input kind {kind!r}")
    return _CLEANERS[kind](text, max_length)


def guess_kind(slot: str) -> str:
    """The input kind a slot or column name suggests: "smiles", "protein" or "text"."""
    s = slot.lower()
    if "smiles" in s or s in ("drug", "molecule", "ligand", "compound"):
        return "smiles"
    if s in ("sequence", "protein", "target", "seq") or "protein" in s:
        return "protein"
    return "text"


def split_entries(kind: str, text: str) -> list[str]:
    """A paste box -> entries: FASTA records (for proteins, when '>' is present) or one per non-blank line."""
    if text is None:
        return []
    text = str(text).replace("\r\n", "\n")
    if kind == "protein" and text.lstrip().startswith(">"):
        records: list[str] = []
        current: list[str] = []
        for line in text.split("\n"):
            if line.startswith(">") and current:
                records.append("\n".join(current))
                current = []
            if line.strip():
                current.append(line)
        if current:
            records.append("\n".join(current))
        return records
    return [line.strip() for line in text.split("\n") if line.strip()]

"""Input standardisation that says what it did, and the checks that flag inputs or predictions far
from what a tag was trained on.

* ``standardize_smiles``: keep the largest organic fragment (salts, hydrates and mixtures), neutralise
  what can be neutralised, and flag inorganics and metals (RDKit ``rdMolStandardize``). Every change
  and every flag is a sentence for the results table.
* ``clean_standardised_smiles``: the one path from a raw SMILES to what the model reads, shared by
  prediction and training, so a salt in the training data is the parent molecule there too;
  ``training_summary`` says in a sentence or two what it did to a training file.
* ``length_ranges`` / ``length_flag``: protein lengths recorded at training time, and a flag for a
  sequence far outside them.
* ``prediction_range_flag``: a regression prediction outside the training labels' range.

Nothing here decides to refuse a row: a flagged input is still predicted, and the flag says why the
number deserves little trust. A chemist asking about cisplatin wants the number and the caveat.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

from .domains import CleanInput, clean, clean_smiles
from .exceptions import InputError

__all__ = ["Standardised", "standardize_smiles", "clean_standardised_smiles", "clean_for_model", "training_summary",
           "length_ranges", "length_flag", "prediction_range_flag", "LENGTH_MARGIN", "LABEL_MARGIN"]

# A sequence is "far outside" when it is longer than 1.25 x the longest training sequence or shorter
# than the shortest / 1.25: near the edges the model has seen similar lengths.
LENGTH_MARGIN = 1.25
# Predictions may overshoot the training labels by 10 % of their range before they are flagged.
LABEL_MARGIN = 0.10

OUTSIDE = "outside the organic chemistry the tag was trained on"
# Non-metals and metalloids that organic molecules carry (boronic acids, silanes, arsenicals, selenides).
_NON_METALS = {1, 2, 5, 6, 7, 8, 9, 10, 14, 15, 16, 17, 18, 33, 34, 35, 36, 52, 53, 54, 85, 86}
# Alkali and alkaline-earth metals: in drug SMILES they are counter-ions (sodium salts), so a bond to
# them is disconnected and they are stripped like any salt. Any other metal is chemistry of its own.
_SALT_METALS = {3, 11, 12, 19, 20, 37, 38, 55, 56}
# Common organic counter-acids, by SMILES without stereo: stripped as salts, not reported as mixtures.
_COUNTER_ACIDS = {
    "CC(=O)O": "acetic acid", "O=C(O)C(F)(F)F": "trifluoroacetic acid", "O=CO": "formic acid",
    "CS(=O)(=O)O": "methanesulfonic acid", "O=C(O)C=CC(=O)O": "maleic/fumaric acid",
    "O=C(O)C(=O)O": "oxalic acid", "O=C(O)CCC(=O)O": "succinic acid",
    "O=C(O)CC(O)(CC(=O)O)C(=O)O": "citric acid", "O=C(O)C(O)C(O)C(=O)O": "tartaric acid",
    "Cc1ccc(S(=O)(=O)O)cc1": "p-toluenesulfonic acid", "O=S(=O)(O)c1ccccc1": "benzenesulfonic acid",
    "CC(O)C(=O)O": "lactic acid", "O=C(O)c1ccccc1": "benzoic acid",
}
# Inorganic counter-ions of more than two atoms, named as a chemist writes them (Na+, Cl- need no name).
_INORGANIC_IONS = {
    "O=S(=O)([O-])[O-]": "sulfate", "O=S(=O)([O-])O": "hydrogen sulfate", "O=S(=O)(O)O": "sulfuric acid",
    "O=P([O-])([O-])[O-]": "phosphate", "O=P(O)(O)O": "phosphoric acid", "O=[N+]([O-])[O-]": "nitrate",
    "O=C([O-])[O-]": "carbonate", "O=C([O-])O": "hydrogen carbonate",
}


@dataclass
class Standardised:
    """The molecule a tag reads. ``smiles``: canonical SMILES after standardisation; ``changes``: what
    was done to the input ("salt stripped: Na+"); ``flags``: why the prediction deserves caution."""

    smiles: str
    changes: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def standardize_smiles(smiles: str) -> Standardised:
    """Standardise one SMILES; raises ``InputError`` if RDKit cannot read it.

    Organic inputs: metal-salt bonds disconnected, counter-ions, water and smaller organic fragments
    dropped (the largest organic fragment is kept), then charges neutralised where a proton can be
    added or removed. Inputs without carbon, or with a metal that is not a salt counter-ion, are kept
    as entered: stripping cisplatin's ammines or NaCl's chloride would invent a molecule.
    """
    from rdkit import Chem, rdBase

    rdBase.DisableLog("rdApp.*")  # the standardiser logs every step to stderr
    try:
        mol = Chem.MolFromSmiles(str(smiles))
        if mol is None or mol.GetNumAtoms() == 0:
            raise InputError(f"invalid SMILES {str(smiles)[:60]!r}: RDKit could not parse it")
        nums = {a.GetAtomicNum() for a in mol.GetAtoms()}
        metals = {n for n in nums if n not in _NON_METALS}
        if 6 not in nums or metals - _SALT_METALS:
            return Standardised(Chem.MolToSmiles(mol), [], _flags(mol))
        if not metals and len(Chem.GetMolFrags(mol)) == 1 and not any(a.GetFormalCharge() for a in mol.GetAtoms()):
            # nothing to strip or neutralise: the common case, without the standardiser's cost
            return Standardised(Chem.MolToSmiles(mol))
        return _standardise_organic(mol, metals)
    except InputError:
        raise
    except Exception as err:  # RDKit raises several types; a row error, never a crashed batch
        raise InputError(f"could not standardise SMILES {str(smiles)[:60]!r}: {err}") from err
    finally:
        rdBase.EnableLog("rdApp.*")


def _standardise_organic(mol, metals: set) -> Standardised:
    """Disconnect salt metals, keep the largest organic fragment, neutralise; report each step."""
    from rdkit import Chem
    from rdkit.Chem.MolStandardize import rdMolStandardize

    if metals:
        mol = rdMolStandardize.MetalDisconnector().Disconnect(mol)
    changes = []
    fragments = list(Chem.GetMolFrags(mol, asMols=True))
    if len(fragments) > 1:
        kept = rdMolStandardize.LargestFragmentChooser(preferOrganic=True).choose(mol)
        kept_smiles = Chem.MolToSmiles(kept)
        # further copies of the kept fragment (a 2:1 salt's cation) are the same molecule
        dropped = [f for f in fragments if Chem.MolToSmiles(f) != kept_smiles]
        changes = _fragment_changes(dropped, len(fragments))
        mol = kept
    charge = Chem.GetFormalCharge(mol)
    neutral = rdMolStandardize.Uncharger().uncharge(mol)
    after = Chem.GetFormalCharge(neutral)
    if Chem.MolToSmiles(neutral) != Chem.MolToSmiles(mol):
        changes.append("neutralised (zwitterion)" if charge == after == 0
                       else f"neutralised (net charge {charge:+d} → {after})")
        mol = neutral
    if after:
        changes.append(f"net charge {after:+d} remains (permanent charge)")
    return Standardised(Chem.MolToSmiles(mol), changes, _flags(mol))


def _flags(mol) -> list[str]:
    flags = []
    symbols = [a.GetSymbol() for a in mol.GetAtoms()]
    if "C" not in symbols:
        flags.append(f"inorganic: no carbon atom, {OUTSIDE}")
    metals = sorted({a.GetSymbol() for a in mol.GetAtoms() if a.GetAtomicNum() not in _NON_METALS})
    if metals:
        flags.append(f"contains a metal ({', '.join(metals)}): {OUTSIDE}")
    return flags


def _fragment_changes(dropped: list, n_fragments: int) -> list[str]:
    """One sentence per kind of dropped fragment, counter-ions and water before mixture partners."""
    from rdkit import Chem

    salts: Counter[str] = Counter()
    water, others = 0, []
    for frag in dropped:
        nums = {a.GetAtomicNum() for a in frag.GetAtoms()}
        plain = Chem.MolToSmiles(frag, isomericSmiles=False)
        if plain == "O":
            water += 1
        elif 6 not in nums or Chem.GetFormalCharge(frag) != 0 or plain in _COUNTER_ACIDS:
            salts[_ion_name(frag, plain)] += 1
        else:
            others.append(Chem.MolToSmiles(frag))
    changes = [f"salt stripped: {name}" + (f" ×{n}" if n > 1 else "") for name, n in salts.items()]
    if water:
        changes.append("water stripped (hydrate)")
    if others:
        changes.append(f"kept the largest fragment of {n_fragments} (mixture); dropped {'.'.join(others)}")
    return changes


def _ion_name(frag, plain: str) -> str:
    """Na+, Cl-, HCl for small ions (formula); a name for known counter-acids; SMILES otherwise."""
    from rdkit.Chem.rdMolDescriptors import CalcMolFormula

    if plain in _COUNTER_ACIDS or plain in _INORGANIC_IONS:
        return _COUNTER_ACIDS.get(plain) or _INORGANIC_IONS[plain]
    if frag.GetNumHeavyAtoms() <= 2:
        return CalcMolFormula(frag)
    from rdkit import Chem

    return Chem.MolToSmiles(frag)


def clean_standardised_smiles(raw, max_length: Optional[int] = None) -> tuple[CleanInput, Optional[Standardised]]:
    """Parse, standardise, then check the length of one raw SMILES: what prediction and training both
    feed the model. Returns the cleaned input (its ``value`` the canonical standardised SMILES, or its
    ``error``) and the ``Standardised`` record (``None`` when the SMILES did not parse). The length limit
    applies to the standardised SMILES: a salt may fit once stripped."""
    c = clean_smiles(raw, _NO_LIMIT)
    if c.value is None:  # not c.ok
        return c, None
    try:
        std = standardize_smiles(c.value)
    except InputError as err:
        return CleanInput(None, error=str(err)), None
    return clean_smiles(std.smiles, max_length), std


def clean_for_model(kind: str, raw, max_length: Optional[int] = None) -> tuple[CleanInput, list[str], list[str]]:
    """One input of any kind as the model will read it, with what standardisation changed and flagged
    (SMILES only; empty lists for other kinds and for inputs that failed). Supervised and domain-tag
    training clean with it; prediction, which keeps the ``Standardised`` record, calls
    ``clean_standardised_smiles`` itself, so both read the same molecule."""
    if kind != "smiles":
        return clean(kind, raw, max_length), [], []
    c, std = clean_standardised_smiles(raw, max_length)
    return (c, std.changes, std.flags) if std is not None and c.ok else (c, [], [])


_NO_LIMIT = 10 ** 9
_LISTED_ROWS = 10


def training_summary(changed: Sequence[tuple[int, list[str]]], flagged: Sequence[tuple[int, list[str]]],
                     what: str = "training") -> list[str]:
    """Sentences for the training warnings: how many of ``what``'s SMILES standardisation changed, by
    kind of change, and how many are inorganic or hold a metal (kept and trained on as entered, as
    prediction keeps and flags them). ``changed``/``flagged``: (1-based file row, sentences) per SMILES."""
    out = []
    # a permanent charge left alone is said per row at prediction, but the SMILES did not change
    real = [(row, [_change_kind(m) for m in sentences]) for row, sentences in changed]
    real = [(row, ks) for row, ks in real if any(ks)]
    if real:
        kinds: Counter[str] = Counter(k for _, ks in real for k in set(ks) if k)  # SMILES per kind
        said = ", ".join(f"{k} ×{n}" if n > 1 else k for k, n in kinds.most_common())
        out.append(f"{len(real):,} {what} SMILES {'was' if len(real) == 1 else 'were'} standardised "
                   f"({said}; {_rows(real)}): the model learns the parent molecule, as prediction reads it.")
    if flagged:
        out.append(f"{len(flagged):,} {what} SMILES {'is' if len(flagged) == 1 else 'are'} inorganic or "
                   f"contain{'s' if len(flagged) == 1 else ''} a metal ({_rows(flagged)}): kept as entered "
                   f"and trained on; predictions for such inputs are flagged.")
    return out


def _change_kind(sentence: str) -> str:
    """"salt stripped: Na+" -> "salt stripped"; "neutralised (net charge +1 → 0)" -> "neutralised".
    A permanent charge that remains is not a change."""
    if "remains" in sentence:
        return ""
    if sentence.startswith("kept the largest fragment"):
        return "mixture: largest fragment kept"
    for stop in (":", " ("):
        sentence = sentence.split(stop, 1)[0]
    return sentence.strip()


def _rows(items: Sequence[tuple[int, list[str]]]) -> str:
    rows = sorted({r for r, _ in items})
    listed = ", ".join(str(r) for r in rows[:_LISTED_ROWS])
    return f"row{'s' if len(rows) > 1 else ''} {listed}{'…' if len(rows) > _LISTED_ROWS else ''}"


# --- proteins: lengths ----------------------------------------------------------------------------


def length_ranges(values_by_slot: dict) -> dict:
    """{slot: raw sequences} -> {slot: {"min": residues, "max": residues}} over the sequences that
    parse, measured before any cropping. Recorded in a function tag's card at training time; a slot
    with no valid sequence is left out."""
    from .domains import clean_protein

    ranges = {}
    for slot, values in values_by_slot.items():
        lengths = [c.length for c in (clean_protein(v) for v in _iter(values)) if c.ok and c.length is not None]
        if lengths:
            ranges[slot] = {"min": int(min(lengths)), "max": int(max(lengths))}
    return ranges


def _iter(values) -> Iterable:
    return values.tolist() if hasattr(values, "tolist") else values


def length_flag(length: int, trained: Optional[dict], margin: float = LENGTH_MARGIN) -> Optional[str]:
    """A flag when ``length`` residues is far outside the training range ``{"min", "max"}``;
    ``None`` inside it, or when the tag did not record one (unknown is not an error)."""
    if not trained or trained.get("min") is None or trained.get("max") is None:
        return None
    lo, hi = int(trained["min"]), int(trained["max"])
    if lo / margin <= length <= hi * margin:
        return None
    return f"length {length:,} residues is far outside the training range {lo:,}–{hi:,}"


# --- predictions: label range -------------------------------------------------------------------------


def prediction_range_flag(value: float, labels: Sequence[float], margin: float = LABEL_MARGIN) -> Optional[str]:
    """A flag when a regression ``value`` lies outside the training labels' range widened by
    ``margin`` x the range on both sides; ``None`` when inside or when no range is known."""
    import math

    finite = [float(v) for v in labels if v is not None and math.isfinite(float(v))]
    if len(finite) < 2:
        return None
    lo, hi = min(finite), max(finite)
    pad = margin * (hi - lo)
    if hi == lo or lo - pad <= value <= hi + pad:
        return None
    return f"prediction {value:.3g} is outside the training labels' range {lo:.3g}–{hi:.3g}"

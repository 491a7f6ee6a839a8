"""Reading user data: CSV tables, FASTA and SMILES corpora, and validation splits.

Whole-file problems (not UTF-8, missing columns) raise ``InputError`` with a
message that names the file and the fix; row problems are left to
``domains`` so that one bad row never sinks a file.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd

from .exceptions import InputError
from .limits import limits

__all__ = ["read_table", "require_columns", "read_fasta", "read_smiles_file", "read_corpus", "moses_smiles_path",
           "Split", "random_split", "stratified_split", "scaffold_groups", "scaffold_split"]

Source = Union[str, Path, bytes, io.IOBase]


def _too_big(name: str, cap: int) -> InputError:
    return InputError(f"{name} holds more than {cap >> 20} MB of text (decompressed); the limit is "
                      f"{cap >> 20} MB (TAGLLM_MAX_DECOMPRESSED_MB). Split the file, or raise the limit.")


def _read_bytes(src: Source) -> tuple[bytes, str]:
    cap = limits().max_decompressed_bytes
    if isinstance(src, bytes):
        return src, "uploaded file"
    if hasattr(src, "read"):
        data = src.read()
        return (data.encode() if isinstance(data, str) else data), getattr(src, "name", "uploaded file")
    path = Path(src)
    if not path.is_file():
        raise InputError(f"File not found: {path}")
    if path.stat().st_size > cap:  # refuse before reading it all into memory
        raise _too_big(path.name, cap)
    data = path.read_bytes()
    return data, path.name


def _gunzip(data: bytes, name: str, cap: int) -> bytes:
    """Decompress in 1 MB chunks and stop past ``cap``: a few kB of gzip can hold gigabytes (a gzip bomb)."""
    out = io.BytesIO()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
            while chunk := gz.read(1 << 20):
                if out.tell() + len(chunk) > cap:
                    raise _too_big(name, cap)
                out.write(chunk)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise InputError(f"{name} is not a readable gzip file ({err}); upload it uncompressed or "
                         f"compress it again.") from err
    return out.getvalue()


def _decode(data: bytes, name: str) -> str:
    cap = limits().max_decompressed_bytes
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, name, cap)
    elif len(data) > cap:
        raise _too_big(name, cap)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{name} is not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r}). "
            f"Save it as UTF-8 CSV (Excel: 'CSV UTF-8') and try again."
        ) from err


def _check_rows(n: int, name: str, what: str = "rows") -> None:
    cap = limits().max_rows
    if n > cap:
        raise InputError(f"{name} has more than {cap:,} {what}; the limit is {cap:,} (TAGLLM_MAX_ROWS). "
                         f"Split the file, or raise the limit.")


def read_table(src: Source) -> pd.DataFrame:
    """CSV or TSV (optionally gzipped) -> DataFrame of strings and numbers."""
    data, name = _read_bytes(src)
    text = _decode(data, name)
    if not text.strip():
        raise InputError(f"{name} is empty.")
    first = text.split("\n", 1)[0]
    sep = "\t" if first.count("\t") > first.count(",") else ","
    try:
        # One row past the cap is enough to know it is too long, without parsing the rest.
        df = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_values=[""],
                         nrows=limits().max_rows + 1)
    except (pd.errors.ParserError, ValueError) as err:
        raise InputError(f"{name} could not be read as CSV: {err}") from err
    _check_rows(len(df), name)
    return df


def require_columns(df: pd.DataFrame, columns: list[str], what: str = "input") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(
            f"The {what} file has no column(s) {missing}. Its columns are {list(df.columns)}; "
            f"pick the right ones (CLI: --column SLOT=COLUMN)."
        )


def read_fasta(src: Source) -> list[tuple[str, str]]:
    """[(header, sequence)]; sequences are joined across lines, not yet validated."""
    data, name = _read_bytes(src)
    text = _decode(data, name)
    records: list[tuple[str, str]] = []
    header: Optional[str] = None
    seq: list[str] = []
    for line in text.splitlines():
        if line.startswith(">"):
            if header is not None or seq:
                records.append((header or "", "".join(seq)))
            header, seq = line[1:].strip(), []
        elif line.strip() and not line.startswith(";"):
            seq.append(line.strip())
    if header is not None or seq:
        records.append((header or "", "".join(seq)))
    if not records:
        raise InputError(f"{name} holds no FASTA records.")
    _check_rows(len(records), name, "records")
    return records


def read_smiles_file(src: Source) -> list[str]:
    """One SMILES per line (.smi/.txt); a second whitespace-separated field (a name) is ignored;
    a header line 'smiles' or 'SMILES' is skipped."""
    data, name = _read_bytes(src)
    lines = [line.split()[0] for line in _decode(data, name).splitlines() if line.strip()]
    if lines and lines[0].lower() == "smiles":
        lines = lines[1:]
    _check_rows(len(lines), name, "lines")
    return lines


def read_corpus(src: Source, fmt: Optional[str] = None, column: Optional[str] = None) -> list[str]:
    """A domain-tag corpus: FASTA, SMILES list, or one CSV column. ``fmt`` is guessed from the name."""
    name = str(getattr(src, "name", src)).lower()
    if fmt is None:
        if name.endswith((".fasta", ".fa", ".faa", ".fasta.gz")):
            fmt = "fasta"
        elif name.endswith((".csv", ".tsv", ".csv.gz")):
            fmt = "csv"
        else:
            fmt = "smiles"
    if fmt == "fasta":
        return [s for _, s in read_fasta(src)]
    if fmt == "csv":
        df = read_table(src)
        if column is None:
            raise InputError(f"Pick the corpus column; the file has {list(df.columns)}.")
        require_columns(df, [column], "corpus")
        return df[column].dropna().astype(str).tolist()
    if fmt == "smiles":
        return read_smiles_file(src)
    raise InputError(f"Unknown corpus format {fmt!r}; use fasta, smiles or csv.")


def moses_smiles_path(split: str = "train") -> Path:
    """The MOSES SMILES corpus inside the PyPI package ``molsets`` (found without importing it)."""
    spec = importlib.util.find_spec("moses")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("The MOSES corpus needs `pip install --no-deps molsets`.")
    path = Path(list(spec.submodule_search_locations)[0]) / "dataset" / "data" / f"{split}.csv.gz"
    if not path.exists():
        raise InputError(f"MOSES split {split!r} not found at {path}.")
    return path


# A scaffold split is kept only when its validation share is within this factor of the one asked for;
# beyond it (one scaffold holding most molecules) the early stopping would run on a few rows or none.
SCAFFOLD_SHARE_TOLERANCE = 2.0


@dataclass
class Split:
    """Row indices of a train/validation split and how it was made.

    ``method``: "scaffold", "random" or "stratified"; ``warning``: a sentence for the user when
    the split asked for could not be made and another one was used instead.
    """

    train: np.ndarray
    valid: np.ndarray
    method: str
    warning: Optional[str] = None


def random_split(n: int, valid_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_valid = max(1, int(round(n * valid_fraction)))
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def stratified_split(labels, valid_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random split that keeps each class's share on both sides, so a validation fold never lacks a
    class that training has (AUROC would be undefined). A class with one member stays in train."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    n_valid = max(1, int(round(len(labels) * valid_fraction)))
    classes = np.unique(labels)
    members = {c: rng.permutation(np.where(labels == c)[0]) for c in classes}
    # Every class with 2+ members gives at least one row; the rest of the quota goes by class size.
    take = {c: min(len(m) - 1, max(1, int(round(len(m) * valid_fraction)))) for c, m in members.items()}
    while sum(take.values()) > n_valid and any(t > 1 for t in take.values()):
        biggest = max((c for c in classes if take[c] > 1), key=lambda c: take[c])
        take[biggest] -= 1
    while sum(take.values()) < n_valid and any(take[c] < len(members[c]) - 1 for c in classes):
        roomiest = max((c for c in classes if take[c] < len(members[c]) - 1), key=lambda c: len(members[c]) - take[c])
        take[roomiest] += 1
    valid = np.concatenate([members[c][:take[c]] for c in classes]).astype(int)
    train = np.setdiff1d(np.arange(len(labels)), valid)
    return np.sort(train), np.sort(valid)


def scaffold_groups(smiles: list[str]) -> dict[str, list[int]]:
    """Bemis–Murcko scaffold SMILES -> positions of the molecules that have it, in input order. A SMILES
    RDKit cannot parse is its own group; acyclic molecules share the empty scaffold ``""``."""
    from rdkit import rdBase
    from rdkit.Chem.Scaffolds import MurckoScaffold

    rdBase.DisableLog("rdApp.*")
    groups: dict[str, list[int]] = {}
    try:
        for i, s in enumerate(smiles):
            try:
                key = MurckoScaffold.MurckoScaffoldSmiles(smiles=s, includeChirality=False)
            except (ValueError, RuntimeError):
                key = s
            groups.setdefault(key, []).append(i)
    finally:
        rdBase.EnableLog("rdApp.*")
    return groups


def scaffold_split(smiles: list[str], valid_fraction: float, seed: int = 0) -> Split:
    """Bemis–Murcko scaffold split: whole scaffold groups go to one side, so validation molecules
    have scaffolds training never saw.

    As in chemprop, groups larger than half the validation target go to train first (largest
    first), then the other groups in random order fill train up to its target and the rest go
    to validation. When one scaffold dominates (or every molecule is acyclic, one empty
    scaffold), no scaffold split comes near ``valid_fraction``: a random split is returned
    instead, with a ``warning`` saying so.
    """
    groups = scaffold_groups(smiles)
    rng = np.random.default_rng(seed)
    n = len(smiles)
    n_valid_target = max(1, int(round(n * valid_fraction)))
    n_train_target = n - n_valid_target
    big = [g for g in groups.values() if len(g) > n_valid_target / 2]
    small = [g for g in groups.values() if len(g) <= n_valid_target / 2]
    big.sort(key=lambda g: (-len(g), g[0]))
    small = [small[i] for i in rng.permutation(len(small))]
    train: list[int] = []
    valid: list[int] = []
    for g in big + small:
        # The largest group always goes to train, even past its target: validation is the side to stay small.
        (train if not train or len(train) + len(g) <= n_train_target else valid).extend(g)
    low, high = n_valid_target / SCAFFOLD_SHARE_TOLERANCE, n_valid_target * SCAFFOLD_SHARE_TOLERANCE
    if train and len(valid) >= min(2, n_valid_target) and low <= len(valid) <= high:
        return Split(np.sort(np.array(train, dtype=int)), np.sort(np.array(valid, dtype=int)), "scaffold")
    tr, va = random_split(n, valid_fraction, seed)
    largest = max(len(g) for g in groups.values()) if groups else 0
    warning = (f"Scaffold split not possible: {len(groups)} scaffold group(s), the largest holding {largest} of "
               f"{n} molecules, would put {len(valid)} rows in validation instead of about {n_valid_target}. "
               f"Used a random split instead, so validation molecules may share scaffolds with training.")
    return Split(tr, va, "random", warning)

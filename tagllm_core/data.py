"""Reading user data: CSV tables, FASTA and SMILES corpora, and validation splits.

Whole-file problems (not UTF-8, missing columns) raise ``InputError`` with a
message that names the file and the fix; row problems are left to
``domains`` so that one bad row never sinks a file.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
from pathlib import Path
from typing import Optional, Union

import numpy as np
import pandas as pd

from .exceptions import InputError

__all__ = ["read_table", "require_columns", "read_fasta", "read_smiles_file", "read_corpus", "moses_smiles_path",
           "random_split", "scaffold_split"]

Source = Union[str, Path, bytes, io.IOBase]


def _read_bytes(src: Source) -> tuple[bytes, str]:
    if isinstance(src, bytes):
        return src, "uploaded file"
    if hasattr(src, "read"):
        data = src.read()
        return (data.encode() if isinstance(data, str) else data), getattr(src, "name", "uploaded file")
    path = Path(src)
    if not path.is_file():
        raise InputError(f"File not found: {path}")
    data = path.read_bytes()
    return data, path.name


def _decode(data: bytes, name: str) -> str:
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{name} is not UTF-8 text (byte {err.start}: {data[err.start:err.start + 1]!r}). "
            f"Save it as UTF-8 CSV (Excel: 'CSV UTF-8') and try again."
        ) from err


def read_table(src: Source) -> pd.DataFrame:
    """CSV or TSV (optionally gzipped) -> DataFrame of strings and numbers."""
    data, name = _read_bytes(src)
    text = _decode(data, name)
    if not text.strip():
        raise InputError(f"{name} is empty.")
    first = text.split("\n", 1)[0]
    sep = "\t" if first.count("\t") > first.count(",") else ","
    try:
        return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, ValueError) as err:
        raise InputError(f"{name} could not be read as CSV: {err}") from err


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
    records, header, seq = [], None, []
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
    return records


def read_smiles_file(src: Source) -> list[str]:
    """One SMILES per line (.smi/.txt); a second whitespace-separated field (a name) is ignored;
    a header line 'smiles' or 'SMILES' is skipped."""
    data, name = _read_bytes(src)
    lines = [line.split()[0] for line in _decode(data, name).splitlines() if line.strip()]
    if lines and lines[0].lower() == "smiles":
        lines = lines[1:]
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


def random_split(n: int, valid_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_valid = max(1, int(round(n * valid_fraction)))
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def scaffold_split(smiles: list[str], valid_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bemis–Murcko scaffold split: whole scaffold groups go to one side, the largest to train
    (as MoleculeNet does), so validation molecules have scaffolds training never saw."""
    from rdkit import RDLogger
    from rdkit.Chem.Scaffolds import MurckoScaffold

    RDLogger.DisableLog("rdApp.*")
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(smiles):
        try:
            key = MurckoScaffold.MurckoScaffoldSmiles(smiles=s, includeChirality=False)
        except (ValueError, RuntimeError):
            key = s
        groups.setdefault(key, []).append(i)
    RDLogger.EnableLog("rdApp.*")
    rng = np.random.default_rng(seed)
    ordered = sorted(groups.values(), key=lambda g: (-len(g), rng.random()))
    n_train_target = len(smiles) - max(1, int(round(len(smiles) * valid_fraction)))
    train, valid = [], []
    for g in ordered:
        (train if len(train) + len(g) <= n_train_target else valid).extend(g)
    if not valid:  # one giant scaffold: fall back to moving the last group
        valid = train[n_train_target:]
        train = train[:n_train_target]
    return np.sort(np.array(train, dtype=int)), np.sort(np.array(valid, dtype=int))

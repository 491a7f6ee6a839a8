"""Input plumbing for the pages: paste boxes, CSV column picks, saved uploads.

Validation of each entry is the engine's (``tagllm_core.domains``); this module
only turns widgets into rows and files.
"""

from __future__ import annotations

import hashlib
import io
import re
import time
import uuid
from pathlib import Path
from typing import Iterable, Optional, Sequence

import pandas as pd
import streamlit as st

from tagllm_core import paths
from tagllm_core.data import read_corpus, read_table, require_columns
from tagllm_core.domains import clean, guess_kind, split_entries
from tagllm_core.exceptions import InputError
from tagllm_core.limits import limits

__all__ = ["rows_from_paste", "paste_entries", "rows_from_table", "id_column", "guess_column", "guess_kind_of_column",
           "slot_name_for", "named_bytes", "content_key", "read_uploaded_table", "read_uploaded_corpus",
           "predict_rows_problem", "save_upload", "label_candidates", "guess_task"]


def rows_from_paste(slots: Sequence[tuple[str, str]], texts: dict) -> list[dict]:
    """Paste boxes -> rows. ``slots``: [(slot, kind)]; ``texts``: slot -> box text.

    Each box holds one entry per line (FASTA records for proteins); a blank line is an empty entry,
    reported as such, so row numbers match the pasted lines. With several slots, every box needs the
    same number of entries, except that a box with a single entry is paired with every entry of the
    others (one protein against many molecules). Names ("CCO ethanol", FASTA headers) go to a ``name``
    key when any entry has one. Raises ``InputError`` for empty boxes or mismatched counts.
    """
    named = {slot: paste_entries(kind, texts.get(slot) or "") for slot, kind in slots}
    entries = {slot: [e for e, _ in pairs] for slot, pairs in named.items()}
    empty = [slot for slot, values in entries.items() if not any(v for v in values)]
    if empty:
        raise InputError(f"Enter at least one entry for {', '.join(repr(s) for s in empty)}.")
    n = max(len(v) for v in entries.values())
    uneven = {s: len(v) for s, v in entries.items() if len(v) not in (1, n)}
    if uneven:
        counts = ", ".join(f"{s}: {len(v)}" for s, v in entries.items())
        raise InputError(f"The boxes hold different numbers of entries ({counts}). Give each box the same "
                         f"number of lines, or a single entry to pair with all the others.")
    rows = [{slot: (values[i] if len(values) > 1 else values[0]) for slot, values in entries.items()}
            for i in range(n)]
    if "name" not in entries and any(name for pairs in named.values() for _, name in pairs):
        for i, row in enumerate(rows):
            names = [pairs[i if len(pairs) > 1 else 0][1] for pairs in named.values()]
            row["name"] = " · ".join(dict.fromkeys(x for x in names if x))
    return rows


def paste_entries(kind: str, text: str) -> list[tuple[str, str]]:
    """A paste box -> [(entry, name)]: FASTA records with their header as the name (proteins, when '>'
    starts the box), else one entry per line. A SMILES cannot hold a space, so the rest of a SMILES line
    is its name; other kinds keep the whole line. Blank lines in between stay, as empty entries; blank
    lines at the end are not rows."""
    text = str(text or "").replace("\r\n", "\n")
    if kind == "protein" and text.lstrip().startswith(">"):
        return [(record, record.split("\n", 1)[0][1:].strip()) for record in split_entries(kind, text)]
    lines = text.rstrip().split("\n") if text.strip() else []
    out = []
    for line in lines:
        value, _, name = line.strip().partition(" ") if kind == "smiles" else (line.strip(), "", "")
        out.append((value, name.strip()))
    return out


EXAMPLE_FILES = {"smiles": "molecules.smi", "protein": "proteins.fasta"}


def example_texts(slots: Sequence[tuple[str, str]], folder: Path) -> dict:
    """Paste-box contents from the bundled examples, one box per slot of a known kind.

    With several slots every box gets the same number of entries, so the rows pair up.
    """
    entries = {}
    for slot, kind in slots:
        path = folder / EXAMPLE_FILES.get(kind, "")
        if path.is_file():
            entries[slot] = split_entries(kind, path.read_text())
    if not entries:
        return {}
    n = min(len(v) for v in entries.values())
    return {slot: "\n".join(values[:n]) for slot, values in entries.items()}


def rows_from_table(df: pd.DataFrame, columns: dict) -> list[dict]:
    """CSV rows -> [{slot: value}]; ``columns``: slot -> column. A column that names or identifies rows
    (``id_column``) rides along as ``name`` or ``id``. Missing columns raise ``InputError``."""
    require_columns(df, list(columns.values()))
    data = {slot: df[col].tolist() for slot, col in columns.items()}
    ident = id_column(df, exclude=list(columns.values()))
    if ident is not None and ident[1] not in data:
        data[ident[1]] = ["" if v is None or v != v else v for v in df[ident[0]].tolist()]  # NaN: blank
    return [{slot: values[i] for slot, values in data.items()} for i in range(len(df))]


_ID_NAMES = {"id": ("id", "compoundid", "molid", "molregno", "chemblid", "identifier", "cid", "uniprotid",
                    "accession"),
             "name": ("name", "compoundname", "molname", "moleculename", "title", "drugname")}


def id_column(df: pd.DataFrame, exclude: Iterable[str] = ()) -> Optional[tuple[str, str]]:
    """(column, "id" or "name") for the first column whose header says it identifies rows; else None."""
    exclude = set(exclude)
    for col in df.columns:
        if col in exclude:
            continue
        for key, names in _ID_NAMES.items():
            if _norm(col) in names:
                return col, key
    return None


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


_KIND_HINTS = {
    "smiles": ("smiles", "smi", "structure", "molecule", "mol", "compound", "drug", "ligand", "canonicalsmiles"),
    "protein": ("sequence", "protein", "seq", "target", "aasequence", "fasta"),
    "text": ("text", "description", "name"),
}


def guess_column(columns: Sequence[str], slot: str, kind: str, df: Optional[pd.DataFrame] = None) -> int:
    """Index of the column most likely to hold ``slot`` (its own name, a kind keyword, or content)."""
    cols = [str(c) for c in columns]
    normed = [_norm(c) for c in cols]
    if _norm(slot) in normed:
        return normed.index(_norm(slot))
    for hint in _KIND_HINTS.get(kind, ()):
        for i, c in enumerate(normed):
            if c == hint or c.endswith(hint) or c.startswith(hint):
                return i
    if df is not None:
        for i, c in enumerate(cols):
            if guess_kind_of_column(c, df[c]) == kind:
                return i
    return 0


def guess_kind_of_column(column: str, values: Iterable) -> str:
    """smiles / protein / text for a column, from its name, else from a few of its values."""
    by_name = guess_kind(str(column))
    if by_name != "text":
        return by_name
    sample = [v for v in list(values)[:20] if isinstance(v, str) and v.strip()]
    if not sample:
        return "text"
    if all(v.strip().isalpha() and v.strip().isupper() and len(v.strip()) >= 8 for v in sample) and \
            all(clean("protein", v).ok for v in sample):
        return "protein"
    if sum(clean("smiles", v).ok for v in sample) >= 0.8 * len(sample) and \
            not all(v.strip().isalpha() for v in sample):
        return "smiles"
    return "text"


def slot_name_for(column: str, kind: str, taken: Iterable[str] = ()) -> str:
    """A template slot name (a Python identifier) for a CSV column: the kind if free, else the column."""
    taken = set(taken)
    base = kind if kind not in taken else re.sub(r"\W+", "_", str(column).strip().lower()).strip("_") or kind
    if not base.isidentifier():
        base = f"{kind}_{base}"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def named_bytes(data: bytes, name: str) -> io.BytesIO:
    """Bytes as a file object with a ``name`` (the engine's readers use it in messages and to guess formats)."""
    buf = io.BytesIO(data)
    buf.name = name
    return buf


def _caps() -> tuple:
    """The reading limits in force, part of the cache key: a changed limit re-reads the file."""
    lim = limits()
    return lim.max_decompressed_bytes, lim.max_rows


def content_key(data: bytes) -> str:
    """The SHA-256 of an upload: what the parse caches are keyed on (the bytes themselves are not hashed twice)."""
    return hashlib.sha256(data).hexdigest()


@st.cache_data(max_entries=16, show_spinner="Reading the file…")
def _parse_table(key: str, name: str, caps: tuple, _data: bytes) -> tuple[Optional[pd.DataFrame], str]:
    """(table, "") or (None, why not). Errors are returned, not raised, so a bad file is not re-read either."""
    try:
        df = read_table(named_bytes(_data, name))
    except InputError as err:
        return None, str(err)
    return (None, f"{name} has a header but no data rows.") if df.empty else (df, "")


def read_uploaded_table(data: bytes, name: str) -> pd.DataFrame:
    """An uploaded CSV/TSV -> DataFrame; ``InputError`` for unreadable or header-only files.

    Parsed once per content (and limits): Streamlit reruns the page on every click, and re-parsing a large
    upload each time made every widget sluggish.
    """
    df, error = _parse_table(content_key(data), name, _caps(), data)
    if error:
        raise InputError(error)
    return df


@st.cache_data(max_entries=16, show_spinner="Reading the corpus…")
def _parse_corpus(key: str, name: str, fmt: Optional[str], column: Optional[str], caps: tuple,
                  _data: bytes) -> tuple[Optional[list], str]:
    try:
        return read_corpus(named_bytes(_data, name), fmt, column), ""
    except InputError as err:
        return None, str(err)


def read_uploaded_corpus(data: bytes, name: str, fmt: Optional[str], column: Optional[str] = None) -> list[str]:
    """A domain-tag corpus from an upload (``data.read_corpus``), parsed once per content like tables."""
    corpus, error = _parse_corpus(content_key(data), name, fmt, column, _caps(), data)
    if error:
        raise InputError(error)
    return corpus


def predict_rows_problem(n_rows: int) -> Optional[str]:
    """Why ``n_rows`` is too many for the Predict page (``TAGLLM_MAX_PREDICT_ROWS``); None if it is not."""
    cap = limits().max_predict_rows
    if n_rows <= cap:
        return None
    return (f"{n_rows:,} rows is more than this page predicts at once (at most {cap:,}, TAGLLM_MAX_PREDICT_ROWS): "
            f"split the input, or use the command line (tagllm predict) for large files.")


def _safe_filename(name: str) -> str:
    base = Path(str(name)).name  # drop any folders a browser might send
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "upload"
    return base[:120]


def save_upload(data: bytes, filename: str, folder: Optional[Path] = None) -> Path:
    """Save an upload into ``folder`` (default: a fresh per-job folder under ``data_dir()/uploads``)
    and return its path; the job reads it from there, whatever happens to the browser tab."""
    if folder is None:
        folder = paths.uploads_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / _safe_filename(filename)
    path.write_bytes(data)
    return path


def label_candidates(df: pd.DataFrame, exclude: Iterable[str] = ()) -> list[str]:
    """Columns that could be labels, numeric ones first."""
    exclude = set(exclude)
    cols = [c for c in df.columns if c not in exclude]
    numeric = [c for c in cols if pd.to_numeric(df[c], errors="coerce").notna().mean() >= 0.8]
    return numeric + [c for c in cols if c not in numeric]


def guess_task(values: pd.Series) -> str:
    """regression for mostly-numeric columns, unless they hold a few whole numbers (0/1, 1-5 grades):
    a column with any fractional value is a measurement and is never guessed to be classes."""
    nums = pd.to_numeric(values, errors="coerce")
    if nums.notna().mean() < 0.8:
        return "classification"
    finite = nums[nums.notna()]
    whole = bool(((finite - finite.round()).abs() < 1e-9).all())
    return "classification" if whole and finite.nunique() <= 10 else "regression"

"""Predicting a big file in chunks: bounded memory, output written as it goes, resumable after a kill.

``predict_file(backbone, tags, library, input, output)`` reads CSV/TSV, ``.smi`` or SDF input (each
optionally gzipped) ``chunk_rows`` rows at a time, predicts each chunk with predictors built once, and
appends the chunk's rows to the output with one write and an fsync. Memory holds one chunk, never the file.

Row numbers are the input's: the output's ``row`` column and every error message count rows of the
whole file (``Predictor.predict(first_row=…)``), whatever the chunk. The table is the one
``prediction.predict_table`` (one tag) or ``multi.predict_many_table`` (several) gives, with ``row`` first.

Resume (``resume=True``): the rows already in the output are counted, anything after the last complete
row (a write cut by a kill) is cut off, and reading starts after them, so no row is predicted twice and
none is missing. Counting reads the output itself (a CSV record may span lines in quotes; an SDF record
ends at ``$$$$``), so a copied or moved output resumes too.

Inputs:

* CSV/TSV: the separator is the header line's most common of tab and comma; cells are text.
* ``.smi``/``.smiles``: ``SMILES [name]`` per line; a first line ``smiles`` is a header. A blank line
  between entries is a row (reported as empty), so row numbers are entry lines; blank lines at the end are not.
* ``.sdf``/``.sd``: each record parsed with RDKit's ``ForwardSDMolSupplier``; the SMILES is written from
  the molecule, the name is its title line (``_Name``). A record RDKit cannot read is an error for its row.

``.smi`` and SDF give one SMILES per row (columns ``smiles`` and ``name``), so they need tags that read
one SMILES.

SDF output (``.sdf``/``.sd``): one record per input row, in input order, so the file always lines up
with the input and resumes by counting records. A predicted row is its molecule (the input record with
its own properties, or a molecule with 2D coordinates from the SMILES) with every output column as a
property. A row that failed gets a record too, with its ``error`` property and blank predictions: the
molecule when one could be read, else an empty molecule (no atoms) with the row's name.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence, Union

import pandas as pd

from .backbone import Backbone
from .exceptions import InputError
from .progress import ProgressCallback, ProgressEvent
from .tags import Tag, TagLibrary

if TYPE_CHECKING:  # for annotations only: the code imports these where it uses them
    from rdkit import Chem

    from .multi import ManyPredictor
    from .prediction import Predictor

__all__ = ["InputError", "input_format", "output_format", "Chunk", "iter_chunks", "count_rows", "completed_rows",
           "StreamResult", "predict_file"]

PathLike = Union[str, Path]
SMILES_EXTENSIONS = (".smi", ".smiles")
SDF_EXTENSIONS = (".sdf", ".sd")
_SDF_END = b"$$$$"


def _suffix(path: PathLike) -> str:
    name = str(path).lower()
    return Path(name[:-3] if name.endswith(".gz") else name).suffix


def input_format(path: PathLike) -> str:
    """"csv", "smi" or "sdf", from the file name (``.gz`` ignored); anything else is read as CSV/TSV."""
    suffix = _suffix(path)
    return "smi" if suffix in SMILES_EXTENSIONS else "sdf" if suffix in SDF_EXTENSIONS else "csv"


def output_format(path: PathLike) -> str:
    """"sdf" for ``.sdf``/``.sd``, else "csv"."""
    return "sdf" if _suffix(path) in SDF_EXTENSIONS else "csv"


def _open_binary(path: PathLike):
    path = Path(path)
    if not path.is_file():
        raise InputError(f"File not found: {path}")
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _open_text(path: PathLike):
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8-sig", newline="")


def _not_utf8(path: PathLike, err: UnicodeDecodeError) -> InputError:
    return InputError(f"{Path(path).name} is not UTF-8 text ({err.reason} at byte {err.start} of a block). "
                      f"Save it as UTF-8 (Excel: 'CSV UTF-8') and try again.")


@dataclass
class Chunk:
    """Consecutive rows of an input file.

    ``first_row``: the 1-based input row number of ``frame``'s first row. ``frame``: the rows' cells as
    text (CSV: the file's columns; ``.smi``/SDF: ``smiles`` and ``name``). ``errors``: position in the
    chunk -> why the reader could not give that row (an unreadable SDF record). ``mols``: SDF input only,
    the molecule of each row (``None`` where unreadable), kept for SDF output.
    """

    first_row: int
    frame: pd.DataFrame
    errors: dict[int, str] = field(default_factory=dict)
    mols: Optional[list[Optional[Chem.Mol]]] = None

    def __len__(self) -> int:
        return len(self.frame)


def _sep(path: PathLike) -> str:
    with _open_text(path) as fh:
        first = fh.readline()
    return "\t" if first.count("\t") > first.count(",") else ","


def _csv_chunks(path: PathLike, chunk_rows: int) -> Iterator[Chunk]:
    first = 1
    try:
        with _open_text(path) as fh:
            reader = pd.read_csv(fh, sep=_sep(path), dtype=str, keep_default_na=False, na_values=[""],
                                 chunksize=chunk_rows)
            for frame in reader:
                yield Chunk(first, frame.reset_index(drop=True))
                first += len(frame)
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from err
    except pd.errors.EmptyDataError as err:
        raise InputError(f"{Path(path).name} is empty.") from err
    except (pd.errors.ParserError, ValueError) as err:
        raise InputError(f"{Path(path).name} could not be read as CSV: {err}") from err


def _smi_entries(path: PathLike) -> Iterator[tuple[str, str]]:
    """(SMILES, name) per entry line; blank lines between entries as ("", ""), trailing ones dropped."""
    blank, started = 0, False
    try:
        with _open_text(path) as fh:
            for line in fh:
                text = line.strip()
                if not text:
                    blank += started
                    continue
                smiles, _, name = text.partition(" ") if " " in text else text.partition("\t")
                if not started and smiles.lower() == "smiles":
                    started = True
                    continue  # a header line
                started = True
                for _ in range(blank):
                    yield "", ""
                blank = 0
                yield smiles, name.strip()
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from err


def _sdf_records(path: PathLike) -> Iterator[bytes]:
    """The raw text of each SDF record (up to and including its ``$$$$`` line); a last record without
    one counts when it holds anything."""
    record: list[bytes] = []
    with _open_binary(path) as fh:
        for line in fh:
            record.append(line)
            if line.rstrip(b"\r\n") == _SDF_END:
                yield b"".join(record)
                record = []
    if b"".join(record).strip():
        yield b"".join(record)


def _read_sdf_record(raw: bytes):
    """(molecule or None, name, SMILES) of one record, parsed by RDKit alone (one bad record cannot
    derail the next)."""
    from rdkit import Chem, rdBase

    rdBase.DisableLog("rdApp.*")  # a bad record is reported in its row, not as a log line per record
    try:
        mol = next(iter(Chem.ForwardSDMolSupplier(io.BytesIO(raw))), None)
    except Exception:  # RDKit raises a variety of its own errors on garbage; all mean "unreadable"
        mol = None
    finally:
        rdBase.EnableLog("rdApp.*")
    title = raw.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
    if mol is None:
        return None, title, ""
    name = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else title
    return mol, name, Chem.MolToSmiles(Chem.RemoveHs(mol))


def _entry_chunks(entries: Iterator, chunk_rows: int, sdf: bool) -> Iterator[Chunk]:
    first = 1
    rows: list[tuple[str, str]] = []
    errors: dict[int, str] = {}
    mols: list[Optional[Chem.Mol]] = []

    def flush() -> Chunk:
        return Chunk(first, pd.DataFrame(rows, columns=["smiles", "name"]), dict(errors), list(mols) if sdf else None)

    for entry in entries:
        if sdf:
            mol, name, smiles = _read_sdf_record(entry)
            if mol is None:
                errors[len(rows)] = (f"row {first + len(rows)}: unreadable SDF record (RDKit could not parse "
                                     f"its molblock)")
            mols.append(mol)
            rows.append((smiles, name))
        else:
            rows.append(entry)
        if len(rows) == chunk_rows:
            yield flush()
            first, rows, errors, mols = first + len(rows), [], {}, []
    if rows:
        yield flush()


def iter_chunks(path: PathLike, chunk_rows: int = 1000) -> Iterator[Chunk]:
    """The input file as consecutive ``Chunk``s of at most ``chunk_rows`` rows."""
    if chunk_rows < 1:
        raise InputError("--chunk-rows must be at least 1.")
    fmt = input_format(path)
    if fmt == "csv":
        return _csv_chunks(path, chunk_rows)
    if fmt == "smi":
        return _entry_chunks(_smi_entries(path), chunk_rows, sdf=False)
    return _entry_chunks(_sdf_records(path), chunk_rows, sdf=True)


def count_rows(path: PathLike) -> int:
    """How many rows ``iter_chunks`` will give, read without holding them (for progress and the ETA)."""
    fmt = input_format(path)
    if fmt == "smi":
        return sum(1 for _ in _smi_entries(path))
    if fmt == "sdf":
        return sum(1 for _ in _sdf_records(path))
    try:
        with _open_text(path) as fh:
            # blank lines are no rows to pandas either
            return max(0, sum(1 for record in csv.reader(fh, delimiter=_sep(path)) if record) - 1)
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from err
    except csv.Error as err:
        raise InputError(f"{Path(path).name} could not be read as CSV: {err}") from err


# ------------------------------------------------------------------------------------------- the output


def _csv_state(path: Path) -> tuple[int, list[str], int, Optional[list[str]]]:
    """(complete data rows, header, bytes up to the end of the last complete row, that row) of a CSV
    output. A record counts once its closing newline is written; a quoted field still open at the end
    of the file (a write cut short) stops the count."""
    good, rows = 0, 0
    header: list[str] = []
    last: Optional[list[str]] = None
    consumed, last_line = 0, b""  # bytes read so far, and the last line read

    def lines() -> Iterator[str]:
        nonlocal consumed, last_line
        with open(path, "rb") as fh:
            for line in fh:
                consumed += len(line)
                last_line = line
                yield line.decode("utf-8", errors="replace")

    try:
        for record in csv.reader(lines(), strict=True):
            if not last_line.endswith(b"\n"):
                break  # the last line was cut before its newline
            if header:
                rows, last = rows + 1, record
            else:
                header = record
            good = consumed
    except csv.Error:
        pass  # a record cut inside a quoted field
    return rows, header, good, last


def _sdf_state(path: Path) -> tuple[int, int]:
    """(complete records, bytes up to the end of the last one) of an SDF output."""
    records, good, pos = 0, 0, 0
    with open(path, "rb") as fh:
        for line in fh:
            pos += len(line)
            if line.rstrip(b"\r\n") == _SDF_END and line.endswith(b"\n"):
                records, good = records + 1, pos
    return records, good


def completed_rows(path: PathLike) -> int:
    """The rows an earlier run finished in the output ``path`` (0 if there is none); anything written
    after the last complete row is cut off, so appending continues a whole file."""
    path = Path(path)
    if not path.exists():
        return 0
    if output_format(path) == "sdf":
        rows, good = _sdf_state(path)
    else:
        rows, _, good, _ = _csv_state(path)
    if path.stat().st_size != good:
        with open(path, "r+b") as fh:
            fh.truncate(good)
    return rows


def _append(path: Path, data: bytes) -> None:
    """One write and an fsync: a kill leaves the file ending at a row boundary or, at worst, inside the
    last write, which ``completed_rows`` cuts off."""
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _blank(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _sdf_bytes(frame: pd.DataFrame, chunk: Chunk, columns: dict) -> bytes:
    """The chunk's rows as SDF records (see the module docstring)."""
    from rdkit import Chem, rdBase
    from rdkit.Chem import rdDepictor

    smiles_col = next(iter(columns.values()))
    buf = io.StringIO()
    writer = Chem.SDWriter(buf)
    for i, rec in enumerate(frame.to_dict("records")):
        mol = chunk.mols[i] if chunk.mols is not None else None
        if mol is None and chunk.mols is None:
            raw = _blank(rec.get(smiles_col))
            rdBase.DisableLog("rdApp.*")  # an invalid SMILES is already the row's error
            mol = Chem.MolFromSmiles(raw) if raw else None
            rdBase.EnableLog("rdApp.*")
            if mol is not None:
                rdDepictor.Compute2DCoords(mol)
        mol = Chem.Mol(mol) if mol is not None else Chem.Mol()
        name = _blank(rec.get("name")) or _blank(rec.get("id"))
        if name or not mol.HasProp("_Name"):
            mol.SetProp("_Name", name)
        for key, value in rec.items():
            mol.SetProp(str(key), _blank(value))
        writer.write(mol)
    writer.close()
    return buf.getvalue().encode("utf-8")


# ------------------------------------------------------------------------------------------- predicting


class _TablePredictor:
    """One tag's ``Predictor`` or several tags' ``ManyPredictor``, built once, giving a chunk's output table."""

    def __init__(self, backbone: Backbone, tags: Sequence[Tag], library: Optional[TagLibrary],
                 domain_overrides: Optional[dict]):
        from .multi import ManyPredictor
        from .prediction import Predictor

        if not tags:
            raise InputError("predict needs a function tag.")
        unique = list({t.name: t for t in tags}.values())
        self.one: Optional[Predictor] = None
        self.many: Optional[ManyPredictor] = None
        if len(unique) > 1:
            if domain_overrides:
                raise InputError("--domain swaps a domain tag of one function tag; predict several tags without it.")
            self.many = ManyPredictor(backbone, unique, library)
            card = self.many.tags[0].card
        else:
            self.one = Predictor(backbone, unique[0], library, domain_overrides=domain_overrides or None)
            card = unique[0].card
        self.card = card
        self.slot_kinds = {s.name: s.kind for s in card.slots}

    def predictors(self) -> list[Predictor]:
        """Every ``Predictor`` at work: the one tag's, or each of the several tags'."""
        if self.one is not None:
            return [self.one]
        assert self.many is not None  # built whenever self.one is not
        return list(self.many.predictors)

    def table(self, chunk: Chunk, columns: dict, batch_size: int,
              progress: Optional[ProgressCallback]) -> pd.DataFrame:
        from .multi import combined_frame
        from .prediction import _side_by_side, output_labels, results_frame

        df = chunk.frame
        rows = [{slot: df[col].iat[i] for slot, col in columns.items()} for i in range(len(df))]
        if self.one is not None:
            results = self.one.predict(rows, batch_size=batch_size, progress=progress, first_row=chunk.first_row)
            classes = self.card.classes if self.card.task == "classification" else None
            # a chunk whose rows all failed still has the interval columns of the chunks around it
            out = results_frame(results, classes, output_labels(self.card), intervals=bool(self.card.interval))
        else:
            assert self.many is not None  # built whenever self.one is not
            out = combined_frame(rows, self.many.predict(rows, batch_size=batch_size, progress=progress,
                                                         first_row=chunk.first_row))
        table = _side_by_side(df.reset_index(drop=True), out.drop(columns=list(self.slot_kinds)))
        row_col = "row_pred" if "row" in df.columns else "row"
        table = table[[row_col] + [c for c in table.columns if c != row_col]].copy()
        error_col = "error_pred" if "error" in df.columns else "error"
        for pos, message in chunk.errors.items():
            table.loc[pos, error_col] = message
        return table


@dataclass
class StreamResult:
    """What ``predict_file`` did. ``rows``/``errors``/``outside``: rows predicted by this run, those with an
    error, and those outside a tag's applicability domain; ``skipped``: rows an earlier run had finished
    (resume); ``total``: rows of the input; ``error_examples``: the first few error messages."""

    output: Path
    total: int
    rows: int = 0
    errors: int = 0
    outside: int = 0
    skipped: int = 0
    seconds: float = 0.0
    error_examples: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"output": str(self.output), "total": self.total, "rows": self.rows, "errors": self.errors,
                "outside": self.outside, "skipped": self.skipped, "seconds": round(self.seconds, 3),
                "rows_per_s": round(self.rows_per_s, 3), "error_examples": self.error_examples}


def _columns(predictor: _TablePredictor, fmt: str, columns: Optional[dict]) -> dict:
    """slot -> input column. ``.smi``/SDF rows have one ``smiles`` column: the tag must read one SMILES."""
    kinds = predictor.slot_kinds
    if fmt == "csv":
        return {s: (columns or {}).get(s, s) for s in kinds}
    if list(kinds.values()) != ["smiles"]:
        raise InputError(f"A .smi or SDF file gives one SMILES per row, but <{predictor.card.name}> reads "
                         f"{', '.join(f'{s} ({k})' for s, k in kinds.items())}. Use a CSV with a column per input.")
    return {next(iter(kinds)): "smiles"}


def _chunk_progress(progress: Optional[ProgressCallback], done: int, size: int, total: int, t0: float,
                    predicted_before: int) -> Optional[ProgressCallback]:
    """A chunk's own events as rows of the whole file, with the throughput and ETA of this run so far."""
    if progress is None:
        return None

    def forward(ev: ProgressEvent) -> None:
        step = done + int(round(ev.fraction * size))
        rate = (step - predicted_before) / max(time.perf_counter() - t0, 1e-9)
        progress(ProgressEvent("predict", step, total, throughput=rate or None,
                               eta_s=(total - step) / rate if rate > 0 else None, message=ev.message))

    return forward


def predict_file(backbone: Backbone, tags: Sequence[Tag], library: Optional[TagLibrary], input_path: PathLike,
                 output_path: PathLike, columns: Optional[dict] = None, domain_overrides: Optional[dict] = None,
                 chunk_rows: int = 1000, batch_size: int = 16, resume: bool = False,
                 progress: Optional[ProgressCallback] = None, max_chunks: Optional[int] = None) -> StreamResult:
    """Predict ``input_path`` with ``tags`` into ``output_path`` chunk by chunk (module docstring).

    ``columns``: slot -> CSV column (default: the slot's name). ``resume``: keep the rows an earlier run
    finished in ``output_path`` and predict only the rest; without it the output is rewritten.
    ``max_chunks``: stop after that many chunks, as a kill would (tests; a later ``resume`` finishes).
    Raises ``InputError`` for an unusable file, mapping or output; never for a bad row.
    Under ``torchrun`` the processes share the batches and process 0 alone writes and reports (``sharding``).
    """
    from .sharding import current_shard, main_decides, shard_predictors

    t0 = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    predictor = _TablePredictor(backbone, tags, library, domain_overrides)
    shard = current_shard()
    if shard is not None:
        shard_predictors(predictor.predictors(), shard)
    writes = shard is None or shard.is_main
    progress = progress if writes else None
    fmt, out_fmt = input_format(input_path), output_format(output_path)
    slot_columns = _columns(predictor, fmt, columns)
    if fmt == "csv":  # a wrong column is refused before the output is touched
        from .data import require_columns

        require_columns(next(iter_chunks(input_path, 1), Chunk(1, pd.DataFrame())).frame, list(slot_columns.values()))
    total = count_rows(input_path)
    result = StreamResult(output_path, total)

    def start_output() -> tuple[int, Optional[list]]:
        """(rows an earlier run finished, the CSV header to keep): the output read, cut or emptied."""
        if not (resume and output_path.exists()):
            output_path.parent.mkdir(parents=True, exist_ok=True)
            output_path.write_bytes(b"")
            return 0, None
        skipped, header = completed_rows(output_path), None
        if out_fmt == "csv":
            _, header, _, last = _csv_state(output_path)
            header = header or None  # a header alone is kept; an empty file gets one
            if last is not None and last[0] != str(skipped):  # the row number comes first
                raise InputError(f"{output_path.name} was not written by predict in input order (its last row is "
                                 f"numbered {last[0]}, not {skipped}); write a new output.")
        if skipped > total:
            raise InputError(f"{output_path.name} holds more rows ({skipped:,}) than {input_path.name} "
                             f"({total:,}): it is the output of another input. Write a new output, or drop --resume.")
        return skipped, header

    result.skipped, header = main_decides(shard, start_output)
    done, chunks = result.skipped, 0
    if progress and total:
        progress(ProgressEvent("predict", done, total))
    for chunk in iter_chunks(input_path, chunk_rows):
        end = chunk.first_row - 1 + len(chunk)
        if end <= done:
            continue  # finished by an earlier run
        if chunk.first_row <= done:  # a different --chunk-rows than the earlier run: keep the unfinished part
            cut = done - chunk.first_row + 1
            chunk = Chunk(done + 1, chunk.frame.iloc[cut:].reset_index(drop=True),
                          {p - cut: m for p, m in chunk.errors.items() if p >= cut},
                          chunk.mols[cut:] if chunk.mols is not None else None)
        table = predictor.table(chunk, slot_columns, batch_size,
                                _chunk_progress(progress, done, len(chunk), total, t0, result.skipped))
        if out_fmt == "csv":
            write_header = header is None
            if header is not None:
                table = table.reindex(columns=header)
            else:
                header = [str(c) for c in table.columns]
        if writes:
            data = (_sdf_bytes(table, chunk, slot_columns) if out_fmt == "sdf" else
                    table.to_csv(index=False, header=write_header, lineterminator="\n").encode("utf-8"))
            _append(output_path, data)
        _count(result, table)
        done += len(chunk)
        chunks += 1
        if progress:
            rate = (done - result.skipped) / max(time.perf_counter() - t0, 1e-9)
            progress(ProgressEvent("predict", done, total, throughput=rate,
                                   eta_s=(total - done) / rate if rate > 0 else None))
        if max_chunks is not None and chunks >= max_chunks:
            break
    result.seconds = time.perf_counter() - t0
    return result


def _count(result: StreamResult, table: pd.DataFrame) -> None:
    error_col = "error_pred" if "error_pred" in table.columns else "error"
    errors = table[error_col].fillna("").astype(str)
    failed = errors != ""
    result.rows += len(table)
    result.errors += int(failed.sum())
    domains = [c for c in table.columns if str(c) == "domain" or str(c).endswith(" domain")]
    if domains:
        result.outside += int((table[domains] == "out").any(axis=1).sum())
    room = 10 - len(result.error_examples)
    if room > 0:
        result.error_examples.extend(errors[failed].head(room).tolist())

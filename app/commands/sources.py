"""Vector files read in bounded batches, for `annserve import`: `.npy`, `.fvecs`, `.parquet`, `.jsonl`,
and the side files `--ids` (`.npy` or text, one id per line) and `--payloads` (`.jsonl`, one object or
null per line).

Memory is bounded by one batch, not by the file: `.npy` is memory-mapped, `.fvecs` read a chunk of rows
at a time, `.parquet` iterated by record batches (row groups before the start are not read at all),
text files line by line. Every reader can start at any row, which is how an import resumes.
Blank lines are skipped in every text file. Rows are numbered from 0 in file order; an item's id is,
in order of preference, the `--ids` file's, the file's own id field (`.parquet`, `.jsonl`), its row number.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SUFFIXES = (".npy", ".fvecs", ".parquet", ".jsonl")
PARQUET_HINT = 'reading .parquet needs pyarrow: pip install "annserve[parquet]" (or pip install pyarrow)'


@dataclass(frozen=True)
class Fields:
    """Names of the id, vector and payload fields of `.parquet` columns and `.jsonl` objects."""

    id: str = "id"
    vector: str = "vector"
    payload: str = "payload"


@dataclass
class Batch:
    """Rows `start .. start + len(ids)` of the input: `vectors` (n, dim) float32."""

    start: int
    ids: list[str]
    vectors: np.ndarray
    payloads: list[dict[str, Any] | None] | None


@dataclass
class _Part:
    """What one vector file gives for a run of rows: ids and payloads only where the file has them."""

    vectors: np.ndarray
    ids: list[Any] | None = None
    payloads: list[Any] | None = None


class InputError(ValueError):
    """The input files are not what `annserve import` reads; the message names the file and the row."""


# ---- vector files -------------------------------------------------------------------------------


class _VectorFile:
    """`rows` (n) vectors of `dim` numbers; `parts(start, size)` gives them from row `start` on."""

    path: Path
    rows: int
    dim: int

    def parts(self, start: int, size: int) -> Iterator[_Part]:
        raise NotImplementedError


class _Npy(_VectorFile):
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise InputError(f"{path}: not a readable .npy array ({exc})") from None
        if self.array.ndim != 2 or self.array.dtype.kind not in "iuf":
            raise InputError(
                f"{path}: expected a 2-D array of numbers (n, dim), got {self.array.dtype} {self.array.shape}"
            )
        self.rows, self.dim = self.array.shape

    def parts(self, start: int, size: int) -> Iterator[_Part]:
        for lo in range(start, self.rows, size):
            yield _Part(np.asarray(self.array[lo : lo + size], dtype=np.float32))


class _Fvecs(_VectorFile):
    """The TEXMEX format (SIFT, GIST): per row an int32 `dim`, then `dim` float32, little-endian."""

    def __init__(self, path: Path) -> None:
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
        if len(head) < 4:
            raise InputError(f"{path}: expected .fvecs rows (int32 dim, then dim float32), got {size} bytes")
        self.dim = int(np.frombuffer(head, dtype="<i4")[0])
        if self.dim < 1:
            raise InputError(f"{path}: the first row's dim is {self.dim}; expected a positive int32")
        self.row_bytes = 4 * (self.dim + 1)
        if size % self.row_bytes:
            raise InputError(
                f"{path}: {size} bytes is not a whole number of {self.row_bytes}-byte rows (dim {self.dim})"
            )
        self.rows = size // self.row_bytes

    def parts(self, start: int, size: int) -> Iterator[_Part]:
        with open(self.path, "rb") as f:
            f.seek(start * self.row_bytes)
            row = start
            while chunk := f.read(size * self.row_bytes):
                words = np.frombuffer(chunk, dtype="<i4").reshape(-1, self.dim + 1)
                wrong = np.flatnonzero(words[:, 0] != self.dim)
                if len(wrong):
                    at = int(wrong[0])
                    raise InputError(
                        f"{self.path}: row {row + at} has dim {words[at, 0]}; expected {self.dim} as in row 0"
                    )
                yield _Part(words[:, 1:].view("<f4").astype(np.float32))
                row += len(words)


class _Parquet(_VectorFile):
    """A vector column (list or fixed-size list of numbers), with optional id and payload columns
    (payload: a struct, or a JSON string)."""

    def __init__(self, path: Path, fields: Fields) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise InputError(PARQUET_HINT) from None
        self.path, self.fields, self._pa = path, fields, pa
        self.file = pq.ParquetFile(path)
        schema = self.file.schema_arrow
        if fields.vector not in schema.names:
            raise InputError(
                f"{path}: no vector column {fields.vector!r} (columns: {', '.join(schema.names)}); "
                "name it with --vector-field"
            )
        vector_type = schema.field(fields.vector).type
        if not (
            pa.types.is_list(vector_type)
            or pa.types.is_large_list(vector_type)
            or pa.types.is_fixed_size_list(vector_type)
        ) or not (
            pa.types.is_floating(vector_type.value_type) or pa.types.is_integer(vector_type.value_type)
        ):
            raise InputError(f"{path}: column {fields.vector!r} is {vector_type}; expected a list of numbers")
        self.columns = [name for name in (fields.vector, fields.id, fields.payload) if name in schema.names]
        self.has_ids, self.has_payloads = fields.id in schema.names, fields.payload in schema.names
        if self.has_payloads:
            payload_type = schema.field(fields.payload).type
            if not (
                pa.types.is_struct(payload_type)
                or pa.types.is_string(payload_type)
                or pa.types.is_large_string(payload_type)
            ):
                raise InputError(
                    f"{path}: column {fields.payload!r} is {payload_type}; expected a struct or a JSON string"
                )
        self.rows = self.file.metadata.num_rows
        if pa.types.is_fixed_size_list(vector_type):
            self.dim = vector_type.list_size
        elif self.rows:
            first = next(self.file.iter_batches(batch_size=1, columns=[fields.vector])).column(0)
            self.dim = len(first[0])
        else:
            self.dim = 0

    def parts(self, start: int, size: int) -> Iterator[_Part]:
        import pyarrow.compute as pc

        skip, groups = start, []
        for group in range(self.file.num_row_groups):  # whole row groups before `start` are not read
            n = self.file.metadata.row_group(group).num_rows
            if skip >= n and not groups:
                skip -= n
            else:
                groups.append(group)
        row = start - skip
        for batch in self.file.iter_batches(batch_size=size, row_groups=groups, columns=self.columns):
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                row += batch.num_rows
                continue
            batch, row, skip = batch.slice(skip), row + skip, 0
            column = batch.column(self.fields.vector)
            lengths = pc.fill_null(pc.list_value_length(column), -1).to_numpy()
            wrong = np.flatnonzero(lengths != self.dim)
            if len(wrong):
                at = int(wrong[0])
                raise InputError(
                    f"{self.path}: row {row + at} has a vector of {lengths[at]} numbers (-1: null); "
                    f"expected {self.dim} as in row 0"
                )
            flat = column.flatten().to_numpy(zero_copy_only=False)
            part = _Part(np.asarray(flat, dtype=np.float32).reshape(-1, self.dim))
            if self.has_ids:
                part.ids = batch.column(self.fields.id).to_pylist()
            if self.has_payloads:
                payloads = batch.column(self.fields.payload).to_pylist()
                part.payloads = [json.loads(p) if isinstance(p, str) else p for p in payloads]
            yield part
            row += batch.num_rows


class _Jsonl(_VectorFile):
    """One object per line: `{"id": ..., "vector": [...], "payload": {...}}`; id and payload optional."""

    def __init__(self, path: Path, fields: Fields) -> None:
        self.path, self.fields = path, fields
        self.rows, first = 0, None
        for _, record in _records(path, 0, parse_first_only=True):
            first = first if first is not None else record
            self.rows += 1
        self.dim = len(self._vector(first, 0, None)) if first is not None else 0

    def _vector(self, record: Any, line: int, dim: int | None) -> list:
        vector = record.get(self.fields.vector) if isinstance(record, dict) else None
        if not isinstance(vector, list) or (dim is not None and len(vector) != dim):
            got = f"{len(vector)} numbers" if isinstance(vector, list) else repr(vector)[:60]
            raise InputError(
                f"{self.path} line {line}: expected an object with {self.fields.vector!r}: "
                f"{dim if dim is not None else 'a list of'} numbers, got {got}"
            )
        return vector

    def parts(self, start: int, size: int) -> Iterator[_Part]:
        records = _records(self.path, start)
        while chunk := list(itertools.islice(records, size)):
            rows = [self._vector(record, line, self.dim) for line, record in chunk]
            try:
                vectors = np.asarray(rows, dtype=np.float32)
            except (TypeError, ValueError):
                raise InputError(
                    f"{self.path} lines {chunk[0][0]}-{chunk[-1][0]}: vectors hold non-numbers"
                ) from None
            yield _Part(
                vectors,
                ids=[record.get(self.fields.id) for _, record in chunk],
                payloads=[record.get(self.fields.payload) for _, record in chunk],
            )


def _loads(text: bytes) -> Any:
    try:
        import orjson

        return orjson.loads(text)
    except ImportError:  # pragma: no cover
        return json.loads(text)


def _lines(path: Path, start: int) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, line) of the non-blank lines of a text file, from the `start`-th one on."""
    with open(path, "rb") as f:
        kept = 0
        for number, line in enumerate(f, start=1):
            if line.strip():
                if kept >= start:
                    yield number, line
                kept += 1


def _records(path: Path, start: int, parse_first_only: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of a `.jsonl` file's records from the `start`-th one on; with
    `parse_first_only`, later lines are only counted (given as None)."""
    for index, (number, line) in enumerate(_lines(path, start)):
        if parse_first_only and index:
            yield number, None
            continue
        try:
            yield number, _loads(line)
        except ValueError as exc:
            raise InputError(f"{path} line {number}: not JSON ({exc})") from None


# ---- side files ---------------------------------------------------------------------------------


class _SideFile:
    """One value per row of the vector file, read in step with it."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what
        self.count = sum(1 for _ in self.values(0))

    def values(self, start: int) -> Iterator[Any]:
        raise NotImplementedError


class _IdsFile(_SideFile):
    """`.npy` (1-D, any dtype) or text with one id per line."""

    def __init__(self, path: Path) -> None:
        self.array = None
        if path.suffix == ".npy":
            self.array = np.load(path, mmap_mode="r", allow_pickle=False)
            if self.array.ndim != 1:
                raise InputError(f"{path}: expected a 1-D array of ids, got shape {self.array.shape}")
        super().__init__(path, "ids")

    def values(self, start: int) -> Iterator[Any]:
        if self.array is not None:
            for lo in range(start, len(self.array), 65536):
                yield from self.array[lo : lo + 65536].tolist()
        else:
            for _, line in _lines(self.path, start):
                yield line.decode().strip()


class _PayloadsFile(_SideFile):
    """`.jsonl`: one object, or null, per line."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "payloads")

    def values(self, start: int) -> Iterator[Any]:
        for number, record in _records(self.path, start):
            if record is not None and not isinstance(record, dict):
                raise InputError(
                    f"{self.path} line {number}: expected an object or null, got {type(record).__name__}"
                )
            yield record


# ---- the input as a whole -----------------------------------------------------------------------


class Input:
    """A vector file with its optional side files: `rows`, `dim`, and `batches(start, size)`."""

    def __init__(
        self, path: Path, ids: Path | None = None, payloads: Path | None = None, fields: Fields = Fields()
    ) -> None:
        self.paths = [p for p in (path, ids, payloads) if p is not None]
        for p in self.paths:
            if not p.is_file():
                raise InputError(f"{p}: no such file")
        suffix = path.suffix.lower()
        if suffix == ".npy":
            self.vectors: _VectorFile = _Npy(path)
        elif suffix == ".fvecs":
            self.vectors = _Fvecs(path)
        elif suffix == ".parquet":
            self.vectors = _Parquet(path, fields)
        elif suffix == ".jsonl":
            self.vectors = _Jsonl(path, fields)
        else:
            raise InputError(f"{path}: expected one of {', '.join(SUFFIXES)}, got {suffix or 'no suffix'!r}")
        self.rows, self.dim = self.vectors.rows, self.vectors.dim
        self.ids = _IdsFile(ids) if ids is not None else None
        self.payloads = _PayloadsFile(payloads) if payloads is not None else None
        for side in (self.ids, self.payloads):
            if side is not None and side.count != self.rows:
                raise InputError(
                    f"--{side.what} {side.path}: {side.count} lines for the {self.rows} rows of {path}"
                )

    def fingerprint(self) -> dict[str, list[int]]:
        """What makes a re-run the same input: each file's resolved path, size and modification time."""
        return {str(p.resolve()): [p.stat().st_size, p.stat().st_mtime_ns] for p in self.paths}

    def batches(self, start: int, size: int) -> Iterator[Batch]:
        """Batches of at most `size` rows from row `start` on (a parquet row group may end one early)."""
        ids = self.ids.values(start) if self.ids is not None else None
        payloads = self.payloads.values(start) if self.payloads is not None else None
        row = start
        for part in self.vectors.parts(start, size):
            n = len(part.vectors)
            batch_ids = _take(ids, n) if ids is not None else part.ids
            batch_payloads = _take(payloads, n) if payloads is not None else part.payloads
            yield Batch(
                row,
                self._ids(batch_ids, row, n),
                part.vectors,
                None
                if batch_payloads is None
                else [self._payload(p, row + i) for i, p in enumerate(batch_payloads)],
            )
            row += n

    def _ids(self, ids: list[Any] | None, row: int, n: int) -> list[str]:
        if ids is None:
            return [str(i) for i in range(row, row + n)]
        out = []
        for i, item_id in enumerate(ids):
            if item_id is None:
                item_id = row + i  # a .jsonl line without an id
            elif isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or item_id == "":
                raise InputError(f"row {row + i}: expected a non-empty string or integer id, got {item_id!r}")
            out.append(str(item_id))
        return out

    def _payload(self, payload: Any, row: int) -> dict[str, Any] | None:
        if payload is not None and not isinstance(payload, dict):
            raise InputError(f"row {row}: expected a payload object or null, got {type(payload).__name__}")
        return payload


def _take(values: Iterator[Any], n: int) -> list[Any]:
    return list(itertools.islice(values, n))

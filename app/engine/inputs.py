"""What the engine accepts from its callers: vectors, ids, payloads, k and exclusions.

The engine is the one place these are checked (the HTTP layer only parses JSON structure), so
every message says what was expected and what came, with the position of the first bad element.
Vectors are checked once per call by `check_vectors`; queries are then normalised once by
`prepare_queries` (as indexes.base.prepare_vectors would) and handed as they are to every shard and
index (`Index.search_prepared`), which check nothing again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from ..indexes.base import check_finite, normalize_rows

MAX_ID_CHARS = 256
# Largest Euclidean norm of a stored or query vector. Scores are float32: with both vectors
# under this norm an inner product stays below 1e36 and a squared L2 distance below 4e36, far
# from float32's 3.4e38. Above it a score overflows to inf, which JSON cannot carry and which
# the indexes treat as "no result" (and a cosine row's norm itself could overflow to inf,
# which would normalise the row to zeros).
MAX_NORM = 1e18


def check_vectors(x: Any, dim: int, metric: str, collection: str, what: str = "vectors") -> np.ndarray:
    """`x` as C-contiguous (n, dim) float32 (n may be 0; one (dim,) vector is one row), values
    as given: finite numbers, each row of norm at most MAX_NORM and, for cosine, not all zero.
    ValueError naming what was expected, what came and where otherwise."""
    return _checked(x, dim, metric, collection, what)[0]


def _checked(x: Any, dim: int, metric: str, collection: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """`check_vectors`, with the rows' float64 sums of squares it computed on the way."""
    arr = _as_rows(x, dim, collection, what)
    if not arr.shape[0]:
        return arr, np.zeros(0)
    squared = np.einsum("ij,ij->i", arr, arr, dtype=np.float64)
    # Squares of float32 values cannot overflow float64: a non-finite sum means a NaN or Inf
    # value, which check_finite names (it raises here).
    if not np.isfinite(squared).all():
        check_finite(arr, what)
    if squared.max() > MAX_NORM**2:
        big = np.flatnonzero(squared > MAX_NORM**2)
        raise ValueError(
            f"{what}: expected vectors of Euclidean norm at most {MAX_NORM:.0e} (so that scores "
            f"stay finite in float32), got {big.size} rows above it (first: row {int(big[0])}, "
            f"norm {float(np.sqrt(squared[big[0]])):.3g})"
        )
    if metric == "cosine" and not squared.all():
        zero = np.flatnonzero(squared == 0)
        raise ValueError(
            f"{what}: cosine collection {collection!r} expects non-zero vectors, got {zero.size} "
            f"all-zero rows (cosine similarity is undefined for them; first: row {int(zero[0])})"
        )
    return arr, squared


def prepare_queries(x: Any, dim: int, metric: str, collection: str) -> np.ndarray:
    """Queries checked (`check_vectors`) and prepared once for `Index.search_prepared` of every
    index of this dim and metric: unit rows for cosine."""
    queries, squared = _checked(x, dim, metric, collection, "queries")
    # What prepare_vectors would do, without its second pass: the rows are already C-contiguous
    # float32 of finite values, and their sums of squares are known (a single-query search
    # paid ~6 us for the repeat).
    return normalize_rows(queries, squared) if metric == "cosine" and queries.shape[0] else queries


def _as_rows(x: Any, dim: int, collection: str, what: str) -> np.ndarray:
    """`x` as (n, dim) float32: numbers only (no strings, nulls, booleans), the right shape."""
    if isinstance(x, np.ndarray):
        arr = x
    else:
        try:
            arr = np.asarray(x)  # the dtype numpy infers tells numbers from anything else
        except (ValueError, TypeError, OverflowError):
            raise ValueError(f"{what}: expected (n, {dim}) numbers, got {_first_misfit(x, dim)}") from None
    if arr.dtype.kind not in "iuf":
        found = _first_misfit(x, dim) if not isinstance(x, np.ndarray) else f"an array of dtype {arr.dtype}"
        raise ValueError(f"{what}: expected numbers, got {found}")
    if arr.ndim == 1 and arr.shape[0] in (0, dim):
        arr = arr.reshape(-1, dim)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected shape (n, {dim}), got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise ValueError(f"dimension mismatch: collection {collection!r} has dim {dim}, got {arr.shape[1]}")
    if not isinstance(x, np.ndarray) and ((arr == 0) | (arr == 1)).any():
        # JSON true/false beside numbers become 1 and 0: they can only hide where a value is 0
        # or 1, so only then are the elements looked at in Python.
        found = _first_bool(x)
        if found is not None:
            raise ValueError(f"{what}: expected numbers, got {found}")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf: check_finite names it
        return np.ascontiguousarray(arr, dtype=np.float32)


def _rows_of(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)) and x and all(isinstance(r, (list, tuple, np.ndarray)) for r in x):
        return list(x)
    return [x]


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", tuple: "a list", str: "a string", bool: "a boolean",
             type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _first_misfit(x: Any, dim: int) -> str:
    """Where `x` first stops being rows of `dim` numbers (only runs on the error path)."""
    if not isinstance(x, (list, tuple, np.ndarray)):
        return _kind(x)
    rows = _rows_of(x)
    for r, row in enumerate(rows):
        where = f"row {r}" if len(rows) > 1 or row is not x else "the vector"
        if not isinstance(row, (list, tuple, np.ndarray)):
            return f"{_kind(row)} at {where}"
        for c, value in enumerate(row):
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                return f"{value!r} ({_kind(value)}) at {where}, column {c}"
        if len(row) != dim:
            return f"{len(row)} numbers at {where}"
    return "a nested or ragged value"


def _first_bool(x: Any) -> str | None:
    rows = _rows_of(x)
    for r, row in enumerate(rows):
        for c, value in enumerate(row if isinstance(row, (list, tuple)) else [row]):
            if type(value) is bool or isinstance(value, np.bool_):
                where = f"row {r}, column {c}" if len(rows) > 1 or row is not x else f"column {c}"
                return f"{value!r} (a boolean) at {where}"
    return None


def check_ids(ids: Any, what: str = "id") -> list[str]:
    """`ids` as a list of str of 1 to MAX_ID_CHARS characters that UTF-8 can encode (the store
    and the shard hash encode them)."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
        raise ValueError(f"ids: expected a list of strings, got {_kind(ids)}")
    for pos, item_id in enumerate(ids):
        if not isinstance(item_id, str) or not 1 <= len(item_id) <= MAX_ID_CHARS:
            got = f"{len(item_id)} characters" if isinstance(item_id, str) else _kind(item_id)
            raise ValueError(
                f"{what} at position {pos}: expected a string of 1 to {MAX_ID_CHARS} characters, got {got}"
            )
        if not item_id.isascii():
            try:
                item_id.encode()
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"{what} at position {pos}: expected valid Unicode text, got a lone surrogate "
                    f"at character {exc.start}"
                ) from None
    return list(ids)


def payload_texts(payloads: Any) -> list[str | None]:
    """Each payload (an object or None) as JSON text for the store."""
    if isinstance(payloads, (str, bytes, dict)) or not isinstance(payloads, Sequence):
        raise ValueError(f"payloads: expected a list of objects or nulls, got {_kind(payloads)}")
    texts: list[str | None] = []
    for pos, payload in enumerate(payloads):
        if payload is None:
            texts.append(None)
            continue
        if not isinstance(payload, dict):
            raise ValueError(f"payload at position {pos}: expected an object or null, got {_kind(payload)}")
        try:
            # orjson: ~10x faster than json.dumps, which was a quarter of an upsert's time. JSON
            # has no NaN: a non-finite float in a payload is stored as null.
            texts.append(orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS).decode())
        except TypeError as exc:
            raise ValueError(f"payload at position {pos}: not representable as JSON ({exc})") from None
    return texts


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected an integer >= 1, got {k!r}")
    return int(k)


def check_exclude(exclude: Any, nq: int) -> list[str | None] | None:
    """One id (or None) per query, left out of that query's answers; None when nothing is."""
    if exclude is None:
        return None
    exclude = list(exclude)
    if len(exclude) != nq:
        raise ValueError(f"exclude: expected {nq} entries (one per query), got {len(exclude)}")
    for pos, item_id in enumerate(exclude):
        if item_id is not None and not isinstance(item_id, str):
            raise ValueError(f"exclude at position {pos}: expected an id string or null, got {_kind(item_id)}")
    return exclude if any(e is not None for e in exclude) else None


def is_storable_id(item_id: Any) -> bool:
    """Whether `item_id` could be stored at all (so a get or delete can look for it)."""
    if not isinstance(item_id, str) or not 1 <= len(item_id) <= MAX_ID_CHARS:
        return False
    if item_id.isascii():
        return True
    try:
        item_id.encode()
    except UnicodeEncodeError:
        return False
    return True

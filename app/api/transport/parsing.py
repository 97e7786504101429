"""The hot routes' body handling: raw bytes -> orjson -> float32 arrays, their structure
checked at the edge.

Pydantic would build a Python float per number and validate each one; here orjson parses the
body and numpy converts lists of numbers in C loops. The edge checks the structure only: JSON
lists of numbers (booleans rejected), the collection's dim, base64 sizes, the request caps. The
values themselves (finite, norms, non-zero for cosine) and ids and payloads are the engine's to
check, once (`Collection.upsert`, `Collection.search`). Every rule mirrors a model in
`schemas.py` (those models document the routes in OpenAPI). Errors are `ValueError`s whose
message says what was expected and what came; the app maps them to 422.

The event loop must never wait for a parse (~10 ns a byte of JSON, a third of a second at the
32 MiB cap): bodies above INLINE_BODY_BYTES are parsed in a thread (`parse_body`), the large
arrays in pieces (`json_pieces`) and converted STEP_NUMBERS numbers at a time, so that the
thread hands the GIL back to the loop between steps.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import orjson
import pybase64
from fastapi import Response
from fastapi.concurrency import run_in_threadpool

from ...engine.filters import parse_filter
from ...engine.search_options import SearchOptions

from . import json_pieces, simd_rows

_F32_LE = np.dtype("<f4")
T = TypeVar("T")

# Measured on this box: orjson plus numpy take ~7 ns a byte for small bodies, so 16 KiB is
# ~0.1 ms on the loop; above it the two thread wake-ups of a hop cost less than the parse.
INLINE_BODY_BYTES = 16 * 1024
# Numbers converted per numpy call (~0.2 ms): a thread converting a large body holds the GIL no
# longer than that at a time.
STEP_NUMBERS = 16 * 1024


async def parse_body(chunks: list[bytes], parse: Callable[[bytes | bytearray], T]) -> T:
    """`parse(body)` of the body that came in `chunks`: on the event loop for a small body, in a
    thread above INLINE_BODY_BYTES (joined there too, a chunk at a time)."""
    size = sum(map(len, chunks))
    if size <= INLINE_BODY_BYTES:
        return parse(chunks[0] if len(chunks) == 1 else b"".join(chunks))
    return await run_in_threadpool(lambda: parse(_joined_body(chunks, size)))


def _joined_body(chunks: list[bytes], size: int) -> bytes | bytearray:
    """The chunks as one buffer, copied one at a time (one C call each, not one for the body)."""
    if len(chunks) == 1:
        return chunks[0]
    body = bytearray(size)
    at = 0
    with memoryview(body) as view:
        for chunk in chunks:
            view[at : at + len(chunk)] = chunk
            at += len(chunk)
    return body


def dumps(content: Any, status_code: int = 200) -> Response:
    """A JSON response serialised by orjson (numpy arrays and scalars included)."""
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        media_type="application/json",
    )


def load_object(
    raw: bytes | bytearray, allowed: frozenset[str], key: str | None = None,
    convert: json_pieces.Convert | None = None, fast: json_pieces.ParsePiece | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The body as a JSON object whose keys are all in `allowed`. Given `key` and `convert`, a
    list at `key` comes back as `json_pieces.Converted`, parsed and converted a piece at a time.
    Given `key` and `fast` (a `simd_rows` piece parser), that list is read by `fast` when it
    accepts every piece (`Converted` of its runs, what `convert` would have made of them),
    else as without `fast`."""
    if not raw:
        raise ValueError("request body: expected a JSON object, got an empty body")
    body = json_pieces.loads_with(raw, key, fast, simd_rows.PIECE_BYTES) if key and fast else None
    if body is None:  # no fast path, or it declined: orjson's values and errors
        try:
            body = json_pieces.loads(raw, key, convert) if key and convert else orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"request body: expected JSON, got invalid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ValueError(f"request body: expected a JSON object, got {_kind(body)}")
    unknown = body.keys() - allowed
    if unknown:
        raise ValueError(
            f"request body: unknown field(s) {sorted(unknown)}; expected some of {sorted(allowed)}"
        )
    return body


def get_k(body: dict[str, Any], max_k: int) -> int:
    k = body.get("k", 10)
    if type(k) is not int or not 1 <= k <= max_k:  # noqa: E721 - bool is an int subclass
        raise ValueError(f"k: expected an integer in 1..{max_k}, got {k!r}")
    return k


def get_params(body: dict[str, Any]) -> dict[str, Any] | None:
    params = body.get("params")
    if params is None:
        return None
    if not isinstance(params, dict):
        raise ValueError(f"params: expected an object of search parameters, got {_kind(params)}")
    return params or None


def get_bool(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if type(value) is not bool:  # noqa: E721
        raise ValueError(f"{name}: expected true or false, got {value!r}")
    return value


OPTION_FIELDS = frozenset(("filter", "with_payload", "with_vector", "score_threshold"))


def get_options(body: dict[str, Any]) -> SearchOptions | None:
    """The optional search fields (filter, with_payload, with_vector, score_threshold) of a
    search body, checked; None when it has none of them (the default path does no more)."""
    if not OPTION_FIELDS & body.keys():
        return None
    with_payload = body.get("with_payload", False)
    if type(with_payload) is not bool:  # noqa: E721
        if not isinstance(with_payload, list) or not all(isinstance(f, str) for f in with_payload):
            raise ValueError(f"with_payload: expected true, false or a list of field names, got {with_payload!r}")
        with_payload = tuple(with_payload)
    threshold = body.get("score_threshold")
    if threshold is not None and (type(threshold) is bool or not isinstance(threshold, (int, float))):  # noqa: E721
        raise ValueError(f"score_threshold: expected a number, got {threshold!r}")
    return SearchOptions(
        where=parse_filter(body.get("filter")),
        with_payload=with_payload,
        with_vector=get_bool(body, "with_vector"),
        score_threshold=None if threshold is None else float(threshold),
    )


def vector_from_list(value: Any, dim: int, what: str = "vector") -> np.ndarray:
    """One JSON list of `dim` numbers -> (dim,) float32."""
    if not isinstance(value, list):
        raise ValueError(f"{what}: expected a list of {dim} numbers, got {_kind(value)}")
    if len(value) != dim:
        raise ValueError(f"{what}: expected {dim} numbers (the collection's dim), got {len(value)}")
    return _numbers(value, what, 1)


def vectors_from_lists(value: Any, dim: int, what: str = "vectors", first: int = 0) -> np.ndarray:
    """A JSON list of n lists of `dim` numbers -> (n, dim) float32; `first`: the index of its
    first row in the request's list (a run of it, converted by json_pieces), for the messages."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{what}: expected a non-empty list of vectors, got {_kind(value)}")
    for i, row in enumerate(value, start=first):
        # Cheap per-row checks (no per-number work) so the error names the bad row.
        if not isinstance(row, list):
            raise ValueError(f"{what}[{i}]: expected a list of {dim} numbers, got {_kind(row)}")
        if len(row) != dim:
            raise ValueError(f"{what}[{i}]: expected {dim} numbers (the collection's dim), got {len(row)}")
    return _numbers(value, what, 2)


def joined(runs: list[np.ndarray]) -> np.ndarray:
    """The (n_i, dim) arrays of consecutive runs as one (n, dim) array."""
    return runs[0] if len(runs) == 1 else np.concatenate(runs)


def vectors_from_b64(value: Any, dim: int, what: str = "vector_b64", rows: int | None = 1) -> np.ndarray:
    """Base64 of little-endian float32 (as Elasticsearch accepts) -> (n, dim) float32.

    `rows=1` demands exactly one vector; `rows=None` accepts any positive whole number of rows.
    """
    return vectors_from_bytes(decode_b64(value, dim, what, rows), dim)


def decode_b64(value: Any, dim: int, what: str, rows: int | None = 1) -> bytes:
    """The bytes of a base64 string holding `rows` (None: any number of) float32 vectors."""
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected a base64 string, got {_kind(value)}")
    try:
        # pybase64 (SIMD): 0.5 us for a 384-d row against the standard library's 4.5, which
        # was a fifth of a base64 upsert's server CPU; the same strict alphabet and padding.
        raw = pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(
            f"{what}: expected base64 of little-endian float32, got invalid base64 ({exc})"
        ) from None
    row_bytes = 4 * dim
    if rows == 1 and len(raw) != row_bytes:
        raise ValueError(
            f"{what}: expected {row_bytes} bytes ({dim} float32, the collection's dim), got {len(raw)} bytes"
        )
    if not raw or len(raw) % row_bytes:
        raise ValueError(
            f"{what}: expected a positive multiple of {row_bytes} bytes ({dim} float32 per vector), "
            f"got {len(raw)} bytes"
        )
    return raw


def vectors_from_bytes(raw: bytes, dim: int) -> np.ndarray:
    """Little-endian float32 bytes -> (n, dim) float32 (NaN and Inf left for the engine)."""
    return np.frombuffer(raw, dtype=_F32_LE).reshape(-1, dim).astype(np.float32, copy=False)


def vectors_from_b64_rows(values: list, dim: int) -> np.ndarray:
    """Base64 strings of one `dim`-d little-endian float32 row each -> (n, dim) float32, all
    decoded by one call; ValueError, without naming the row, when any of them is not one
    such row (the caller then decodes row by row with `decode_b64`, for the exact message).

    Why together: per row, a decode call and its checks cost ~1 us against ~0.2 us of decoding.
    The strings of whole rows join into the base64 of the rows' bytes only where a row needs no
    padding (4 * dim a multiple of 3, as for 384 or 768); other dims are decoded row by row."""
    row_bytes = 4 * dim
    if row_bytes % 3:
        return vectors_from_byte_rows([decode_b64(v, dim, "vector_b64") for v in values], dim)
    # Every row a string of exactly its length: rows of other lengths could join into valid
    # base64 (and a number or null has no length: the row-by-row pass names it).
    if {len(v) if isinstance(v, str) else -1 for v in values} != {row_bytes // 3 * 4}:
        raise ValueError("vector_b64: expected base64 strings of one row each")
    try:
        raw = pybase64.b64decode_as_bytearray("".join(values), validate=True)
    except (TypeError, ValueError) as exc:  # binascii.Error is a ValueError
        raise ValueError(f"vector_b64: expected base64 of little-endian float32 ({exc})") from None
    if len(raw) != len(values) * row_bytes:  # a padding '=' at the very end
        raise ValueError("vector_b64: expected base64 strings of one row each")
    return np.frombuffer(raw, dtype=_F32_LE).reshape(-1, dim).astype(np.float32, copy=False)


def vectors_from_byte_rows(rows: list[bytes], dim: int) -> np.ndarray:
    """Rows of `dim` little-endian float32 each -> (n, dim) float32, STEP_NUMBERS at a time."""
    out = np.empty((len(rows), dim), dtype=np.float32)
    step = max(1, STEP_NUMBERS // dim)
    for lo in range(0, len(rows), step):
        out[lo : lo + step] = vectors_from_bytes(b"".join(rows[lo : lo + step]), dim)
    return out


def _numbers(value: list, what: str, ndim: int) -> np.ndarray:
    """`value` (a list of numbers, or for ndim 2 of equally long lists) as float32."""
    step = max(1, STEP_NUMBERS // max(len(value[0]), 1)) if ndim == 2 and value else len(value)
    if len(value) > step:  # in steps: a thread converting a large body lets the loop run between
        out = np.empty((len(value), len(value[0])), dtype=np.float32)
        for lo in range(0, len(value), step):
            out[lo : lo + step] = _numbers(value[lo : lo + step], what, 2)
        return out
    # numpy infers the dtype in one C pass: only a numeric result is accepted, so strings,
    # nulls, objects and ragged nesting fail here, whatever numpy would coerce with dtype=float32.
    try:
        arr = np.asarray(value)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{what}: expected numbers only, got a nested or ragged value ({exc})") from None
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{what}: expected numbers only, got {_non_number(value)}")
    if arr.ndim != ndim:
        raise ValueError(f"{what}: expected numbers only, got lists nested {arr.ndim} deep")
    # JSON true/false are not numbers, but beside numbers numpy reads them as 1 and 0. They can
    # only hide where a value is exactly 0 or 1, so only then are the elements looked at in Python.
    if ((arr == 0) | (arr == 1)).any():
        found = _first_bool(value)
        if found is not None:
            raise ValueError(f"{what}: expected numbers only, got {found!r} (a boolean)")
    with np.errstate(over="ignore"):  # beyond float32's range becomes inf: the engine names it
        return arr.astype(np.float32, copy=False)


def _first_bool(value: list) -> bool | None:
    """The first JSON boolean among the (possibly nested) lists, or None."""
    stack = [value]
    while stack:
        for x in stack.pop():
            if isinstance(x, list):
                stack.append(x)
            elif type(x) is bool:  # noqa: E721
                return x
    return None


def _non_number(value: list) -> str:
    """Name the first element that is not a number (only runs on the error path)."""
    stack = [value]
    while stack:
        for x in stack.pop():
            if isinstance(x, list):
                stack.append(x)
            elif isinstance(x, bool) or not isinstance(x, (int, float)):
                return f"{x!r} ({_kind(x)})"
    return "a non-numeric value"


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, list) and not value:
        return "an empty list"
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)

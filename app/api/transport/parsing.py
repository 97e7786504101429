"""The hot routes' body handling: raw bytes -> orjson -> one float32 array, checked at the edge.

Pydantic would build a Python float per number and validate each one; here orjson parses the
body, numpy converts each list of numbers in one C loop, and the checks run on whole arrays.
Every rule mirrors a model in `app/schemas.py` (those models document the routes in OpenAPI).
Errors are `ValueError`s whose message says what was expected and what came; the app maps them
to 422.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import orjson
from fastapi import Response

from ...indexes.base import check_finite

_F32_LE = np.dtype("<f4")


def dumps(content: Any, status_code: int = 200) -> Response:
    """A JSON response serialised by orjson (numpy arrays and scalars included)."""
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        media_type="application/json",
    )


def load_object(raw: bytes, allowed: frozenset[str]) -> dict[str, Any]:
    """The body as a JSON object whose keys are all in `allowed`."""
    if not raw:
        raise ValueError("request body: expected a JSON object, got an empty body")
    try:
        body = orjson.loads(raw)
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


def vector_from_list(value: Any, dim: int, what: str = "vector") -> np.ndarray:
    """One JSON list of `dim` numbers -> (dim,) float32."""
    if not isinstance(value, list):
        raise ValueError(f"{what}: expected a list of {dim} numbers, got {_kind(value)}")
    if len(value) != dim:
        raise ValueError(f"{what}: expected {dim} numbers (the collection's dim), got {len(value)}")
    return check_finite(_numbers(value, what, 1), what)


def vectors_from_lists(value: Any, dim: int, what: str = "vectors") -> np.ndarray:
    """A JSON list of n lists of `dim` numbers -> (n, dim) float32."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{what}: expected a non-empty list of vectors, got {_kind(value)}")
    for i, row in enumerate(value):
        # Cheap per-row checks (no per-number work) so the error names the bad row.
        if not isinstance(row, list):
            raise ValueError(f"{what}[{i}]: expected a list of {dim} numbers, got {_kind(row)}")
        if len(row) != dim:
            raise ValueError(f"{what}[{i}]: expected {dim} numbers (the collection's dim), got {len(row)}")
    return check_finite(_numbers(value, what, 2), what)


def vectors_from_b64(value: Any, dim: int, what: str = "vector_b64", rows: int | None = 1) -> np.ndarray:
    """Base64 of little-endian float32 (as Elasticsearch accepts) -> (n, dim) float32.

    `rows=1` demands exactly one vector; `rows=None` accepts any positive whole number of rows.
    """
    return vectors_from_bytes(decode_b64(value, dim, what, rows), dim, what)


def decode_b64(value: Any, dim: int, what: str, rows: int | None = 1) -> bytes:
    """The bytes of a base64 string holding `rows` (None: any number of) float32 vectors."""
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected a base64 string, got {_kind(value)}")
    try:
        raw = base64.b64decode(value, validate=True)
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


def vectors_from_bytes(raw: bytes, dim: int, what: str) -> np.ndarray:
    """Little-endian float32 bytes -> (n, dim) float32, finite."""
    arr = np.frombuffer(raw, dtype=_F32_LE).reshape(-1, dim).astype(np.float32, copy=False)
    return check_finite(arr, what)


def _numbers(value: list, what: str, ndim: int) -> np.ndarray:
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
    with np.errstate(over="ignore"):  # a finite float64 too big for float32 becomes inf: caught below
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

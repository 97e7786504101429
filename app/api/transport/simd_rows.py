"""JSON number lists read straight into float32 by simdjson (pysimdjson): the fast path of the
upsert and batch-search bodies, for `json_pieces.loads_with`.

orjson makes a Python float of every number, which numpy then converts; simdjson parses a
piece onto its tape and `Array.as_buffer` copies a list's numbers out as float64 in one C loop:
a 1000 x 384 upsert body parses in 9.9 ms instead of 22.8 (15.0 instead of 28.9 with 17-digit
numbers). Both parse numbers correctly rounded to float64, and the float64 -> float32 cast is
numpy's either way, so the arrays are equal bit for bit.

Not used for `/search`'s one vector: through the same pieces machinery it measured 24 us
against orjson's 25 (numpy's per-call overhead on one short row eats what simdjson saves).

A piece parser here accepts narrowly and declines (`json_pieces.Declined`) everything it is
not sure to read exactly as orjson and `parsing.py` would: the body is then parsed the usual
way, whose values and 422 messages stay the reference. Declined: an integer among the numbers
(orjson's ints convert on another numpy path), a list nested in a vector or a row, a '[' in a
string, a row of the wrong length, an item with other fields than id, vector and payload
(duplicate keys included), an id that is not a string, anything not a number where numbers go,
a payload nested deeper than PAYLOAD_DEPTH. A piece simdjson finds invalid gives None: json_pieces
grows it or gives the body up to orjson, whose error message is the one sent.

simdjson holds the GIL while it parses (pysimdjson releases it nowhere): pieces of
PIECE_BYTES keep each hold short, and json_pieces hands the GIL over between them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import simdjson

from .json_pieces import Declined, ParsePiece, Parsed

# ~0.15 ms of simdjson and copying a piece (orjson's pieces are 32 KiB for as long a hold):
# fewer pieces, less per-piece work (the cut search, the piece's copy, a parse call).
PIECE_BYTES = 128 * 1024
PAYLOAD_DEPTH = 64  # deeper payloads go the orjson way (see _payload)
_ARRAY, _OBJECT = simdjson.Array, simdjson.Object
_OPEN = ord("[")


def item_rows(dim: int) -> ParsePiece:
    """A piece parser of upsert items `{"id": str, "vector": [dim floats], "payload": ...}`
    -> Parsed((ids, (n, dim) float32, payloads)); one simdjson parser for the body."""
    parser = simdjson.Parser()

    def parse(piece: memoryview | bytes) -> Parsed | None:
        text = b"[" + piece + b"]"
        try:
            items = parser.parse(text)
        except (ValueError, RuntimeError):  # invalid JSON (or the wrong cut): orjson's to judge
            return None
        try:
            return Parsed(_items(items, text, dim), len(items))
        finally:
            del items  # the parser can parse the next piece only once no proxy of this one is left

    return parse


def query_rows(dim: int) -> ParsePiece:
    """A piece parser of batch queries `[dim floats], ...` -> Parsed((n, dim) float32)."""
    parser = simdjson.Parser()

    def parse(piece: memoryview | bytes) -> Parsed | None:
        text = b"[" + piece + b"]"
        try:
            rows = parser.parse(text)
        except (ValueError, RuntimeError):
            return None
        try:
            return Parsed(_rows(rows, text, dim), len(rows))
        finally:
            del rows

    return parse


def _items(items: simdjson.Array, text: bytes, dim: int) -> tuple[list, np.ndarray, list]:
    n = len(items)
    if not n:
        raise Declined
    ids: list = []
    vectors: list = []
    numbers: list = []  # each vector's numbers as float64, joined and cast once at the end
    payloads: list = []
    payload_lists = 0
    try:
        for item in items:
            if type(item) is not _OBJECT:
                raise Declined
            # Exactly these fields, each once: a duplicate key would count as one more field.
            fields = len(item)
            if fields == 2:
                payload = None
            elif fields == 3 and "payload" in item:
                payload, lists = _payload(item["payload"])
                payload_lists += lists
            else:
                raise Declined
            item_id, vector = item["id"], item["vector"]
            if type(item_id) is not str or type(vector) is not _ARRAY or len(vector) != dim:
                raise Declined
            numbers.append(vector.as_buffer(of_type="d"))  # flattened: see the '[' count below
            ids.append(item_id)
            vectors.append(vector)
            payloads.append(payload)
    except KeyError:  # no id or no vector
        raise Declined from None
    except TypeError:  # a string, a boolean, null or an object among a vector's numbers
        raise Declined from None
    # Every '[' opens the piece, a vector or a list of a payload: none is nested in a vector
    # (as_buffer would have flattened it) or sits in a string.
    if _brackets(text) != 1 + n + payload_lists:
        raise Declined
    out = _float32(b"".join(numbers), n, dim)
    _decline_ints(out, vectors)
    return ids, out, payloads


def _payload(value: Any) -> tuple[Any, int]:
    """(a payload as the Python objects orjson makes, lists in it). simdjson's dict and list
    conversion gives the same types and values (ints as int64/uint64, floats correctly rounded,
    a duplicate key's last value in its first place), and both parsers refuse the same strings.
    Declined past PAYLOAD_DEPTH: orjson's depth limit (1024) counts from the body, simdjson's
    from the piece, one level apart; a payload that deep is refused by the engine anyway."""
    if type(value) is _OBJECT:
        value = value.as_dict()
    elif type(value) is _ARRAY:
        value = value.as_list()
    else:
        return value, 0
    lists, stack = 0, [(value, 1)]
    while stack:
        container, depth = stack.pop()
        if depth > PAYLOAD_DEPTH:
            raise Declined
        if type(container) is list:
            lists += 1
            members = container
        else:
            members = container.values()
        stack.extend((x, depth + 1) for x in members if type(x) is dict or type(x) is list)
    return value, lists


def _rows(rows: simdjson.Array, text: bytes, dim: int) -> np.ndarray:
    n = len(rows)
    # Every row a list of dim elements, and no other '[': no row holds a list.
    if not n or _brackets(text) != n + 1:
        raise Declined
    for row in rows:
        if type(row) is not _ARRAY or len(row) != dim:
            raise Declined
    try:
        numbers = rows.as_buffer(of_type="d")  # the rows' numbers, flattened
    except TypeError:
        raise Declined from None
    out = _float32(numbers, n, dim)
    _decline_ints(out, rows)
    return out


def _float32(numbers, n: int, dim: int) -> np.ndarray:
    """float64 numbers (a buffer) -> (n, dim) float32, cast as orjson's Python floats are cast on
    the usual path; beyond float32's range becomes inf there too (the engine names it)."""
    values = np.frombuffer(numbers, dtype=np.float64)
    if values.size != n * dim:
        raise Declined
    with np.errstate(over="ignore"):
        return values.astype(np.float32).reshape(n, dim)


def _brackets(text: bytes) -> int:
    """How many '[' the text holds (numpy's SIMD compare: 4x faster than bytes.count)."""
    return int(np.count_nonzero(np.frombuffer(text, dtype=np.uint8) == _OPEN))


def _decline_ints(out: np.ndarray, rows) -> None:
    """Decline if any row holds a JSON integer. as_buffer turns integers into doubles unseen;
    an integer can only sit where a value is whole, so only rows with a whole value are looked
    at element by element (simdjson gives int for an integer, float for any other number)."""
    whole = np.flatnonzero((np.floor(out) == out).any(axis=1))
    for at in whole:
        if any(type(x) is not float for x in rows[int(at)]):
            raise Declined

"""`loads(raw, key, convert)`: a JSON body parsed as orjson does, with its list member `key`
(an upsert's `items`, a batch's `vectors`) parsed and converted a piece at a time.

orjson parses a document in one C call that holds the GIL throughout: about 10 ns a byte, a
third of a second for an upsert at the 32 MiB cap. Moved to a thread, that call still stops the
event loop's thread for as long, since Python switches threads only between bytecodes; and the
two million objects it makes keep CPython's garbage collector busy (each young-generation pass
over them holds the GIL for milliseconds). So the list is cut between its elements into pieces
of about `piece_bytes`; each piece is parsed, converted by `convert` (to numpy arrays, say) and
dropped before the next one: no single step holds the GIL for long, and the objects alive at
any time are one piece's.

The cuts are guessed with a regular expression that looks a short way past each piece's end
for a comma between two containers (`}, {` or `], [`); nothing scans the whole body. The answer
does not rest on the guesses: every cut is a comma, every piece must parse as a non-empty list,
and the rest of the body must parse with the list replaced by a marker, found exactly once, as
the value of a top-level member. A wrong guess can only make a piece fail; the piece then grows
to the next guess, and after a few failures the body is parsed whole. So the values, and the
errors, are always orjson's own; `convert` sees the same elements either way.

`loads_with(raw, key, parse)` cuts the same way but reads each piece with `parse` (simd_rows:
simdjson straight into float32) and gives None, for the body to be parsed as above, whenever a
piece parser declines or the cuts do not work out.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson

T = TypeVar("T")
PIECE_BYTES = 32 * 1024  # about 0.3 ms of orjson (and as much converting) per piece
RUN = 64  # elements converted at a time when a large body had to be parsed whole
MAX_REGROWTHS = 8  # failed tries at a piece (or at the list's end) before the body is parsed whole
# A comma between two elements that are objects or lists; group 1 is the comma.
_ELEMENT_GAP = re.compile(rb"[\]}]\s*(,)\s*[\[{]")
# Stands in for the list while the rest of the body is parsed.
_MARK_CONTENT = b"\\u0000annserve:pieces"
_MARK_TEXT = b'"' + _MARK_CONTENT + b'"'
_MARK = "\x00annserve:pieces"

Convert = Callable[[list, int], T]  # (a run of consecutive elements, the index of its first)


class Declined(Exception):
    """Raised by a piece parser given to `loads_with` that is not sure to read a piece exactly
    as orjson and the usual conversion would: the body is then parsed the usual way."""


@dataclass
class Parsed(Generic[T]):
    """What a piece parser made of one piece: `value`, converted from `count` elements."""

    value: T
    count: int

    def __len__(self) -> int:
        return self.count


ParsePiece = Callable[[memoryview | bytes], "Parsed | None"]  # a piece's elements (no brackets) -> None: invalid


@dataclass
class Converted(Generic[T]):
    """A list member of the body, converted a run of elements at a time."""

    count: int = 0  # elements in the list
    parts: list[T] = field(default_factory=list)  # convert(run, offset) of consecutive runs, in order
    error: ValueError | None = None  # the first one a run raised; no run was converted after it

    def results(self) -> list[T]:
        """The converted runs; raises the first conversion error instead, if there was one."""
        if self.error is not None:
            raise self.error
        return self.parts

    def add(self, elements: list, convert: Convert) -> None:
        if self.error is None:
            try:
                self.parts.append(convert(elements, self.count))
            except ValueError as exc:  # kept: the JSON must prove valid first, as orjson would say
                self.error = exc
        self.count += len(elements)


def hand_over_gil() -> None:
    """Let a thread that waits for the GIL (the event loop's) have it, between two pieces, at
    most once a switch interval.

    Python makes the holder give the GIL up only once a waiter has waited a whole switch
    interval with no change of hands; numpy's brief releases while a piece is converted restart
    that wait every time, and the holder takes the GIL straight back. Without this the loop
    waited 40-100 ms at a time during a 32 MiB parse; with it, 2-3 ms.
    Each `time.sleep(0)` costs 50-80 us of wall time here (a timer sleep: the kernel's timer
    slack), so it is skipped until a switch interval has passed since the last one: pieces of
    base64 items take ~0.15 ms, and sleeping after each one made their parse half sleep."""
    now = time.perf_counter()
    if now - getattr(_hand_over, "at", 0.0) < sys.getswitchinterval():
        return
    time.sleep(0)
    _hand_over.at = time.perf_counter()


_hand_over = threading.local()  # when this thread last handed the GIL over


def loads(raw: bytes | bytearray, key: str, convert: Convert, piece_bytes: int = PIECE_BYTES) -> Any:
    """`orjson.loads(raw)`, except that when the body is an object whose member `key` is a list,
    that member comes back as `Converted`; a large body is parsed `piece_bytes` at a time."""
    if len(raw) > 2 * piece_bytes:
        body = _in_pieces(memoryview(raw), key, convert, piece_bytes)
        if body is not None:
            return body
    body = orjson.loads(raw)
    if isinstance(body, dict) and isinstance(body.get(key), list):
        body[key] = convert_list(body[key], convert, RUN if len(raw) > 2 * piece_bytes else None)
    return body


def loads_with(raw: bytes | bytearray, key: str, parse: ParsePiece, piece_bytes: int = PIECE_BYTES) -> dict | None:
    """The body (a JSON object, as orjson reads it) with its list member `key` read by `parse` a
    piece at a time, as `Converted` of the pieces' values; None when `parse` declines a piece
    (`Declined`), or finds a piece invalid that no regrowth mends, or the list is not there."""
    try:
        return _in_pieces(memoryview(raw), key, _value_of, piece_bytes, parse=parse, whole=True)
    except Declined:
        return None


def _value_of(parsed: Parsed, first: int) -> Any:
    return parsed.value


def convert_list(elements: list, convert: Convert, run: int | None = RUN) -> Converted:
    """`elements` converted `run` at a time (None: all in one run)."""
    converted: Converted = Converted()
    step = run or max(len(elements), 1)
    for lo in range(0, len(elements), step):
        converted.add(elements[lo : lo + step], convert)
        if run:
            hand_over_gil()
    return converted


def _in_pieces(
    data: memoryview, key: str, convert: Convert, piece_bytes: int,
    parse: ParsePiece | None = None, whole: bool = False,
) -> dict | None:  # fmt: skip
    """The body parsed piece by piece, or None when that does not work out (parse it whole).
    `parse` reads a piece's elements (orjson by default); `whole`: a list too short to cut is
    read as one last piece rather than given up on."""
    parse = parse or _parse_list
    found = re.search(b'"' + re.escape(key.encode()) + rb'"\s*:\s*\[', data)
    if found is None:
        return None
    start = found.end() - 1  # the list's '['
    converted: Converted = Converted()
    at = start  # the '[' or the comma the next piece starts after
    gap = _ELEMENT_GAP.search(data, at + piece_bytes)
    while gap is not None:
        piece = parse(data[at + 1 : gap.start(1)])
        regrowths = 0
        while piece is None:  # a cut inside an element (or invalid JSON): grow the piece
            regrowths += 1
            if regrowths > MAX_REGROWTHS:
                return None
            gap = _ELEMENT_GAP.search(data, gap.end(1))
            if gap is None:  # no cut left: the rest is the last piece
                break
            piece = parse(data[at + 1 : gap.start(1)])
        if gap is None:
            break
        converted.add(piece, convert)
        hand_over_gil()
        at = gap.start(1)
        gap = _ELEMENT_GAP.search(data, at + piece_bytes)
    if at == start and not whole:
        return None  # too few elements to cut: parse it whole
    # The list's ']': the last one of the body, unless members after the list hold lists too.
    rest = bytes(data[at + 1 :])
    end = len(rest)
    for _ in range(MAX_REGROWTHS):
        end = rest.rfind(b"]", 0, end)
        if end < 0:
            return None
        last = parse(rest[:end])
        body = None if last is None else _with_marker(data[:start], rest[end + 1 :])
        if body is not None:
            converted.add(last, convert)
            marked = next(name for name, value in body.items() if value == _MARK)
            body[marked] = converted
            return body
    return None


def _with_marker(head: memoryview, tail: bytes) -> dict | None:
    """The body `head` + list + `tail` parsed with a marker in the list's place; None unless
    that is valid, an object, and the marker is the value of exactly one top-level member."""
    if _MARK_CONTENT in tail or _MARK_CONTENT in bytes(head):
        return None
    try:
        body = orjson.loads(b"".join((head, _MARK_TEXT, tail)))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    marked = [name for name, value in body.items() if isinstance(value, str) and value == _MARK]
    return body if len(marked) == 1 else None


def _parse_list(elements: memoryview | bytes) -> list | None:
    """The comma-separated JSON values `elements` as a list; None unless valid and non-empty
    (an empty piece would let `[a, , b]` pass)."""
    try:
        found = orjson.loads(b"[" + elements + b"]")
    except orjson.JSONDecodeError:
        return None
    return found or None

"""A shard's payload index: which labels hold a value in a field, as sorted int64 arrays, so
that a filter (filters.py) becomes the labels it admits without reading a payload.

Every top-level field of every payload is indexed, in three columns per field:
- terms: (label, code) for each string or boolean value (an array contributes each of its
  scalar elements); codes number the distinct values, once per shard;
- numbers: (label, value as float64) for each number (array elements too);
- present: the labels whose payload has the field at all (any value, null included).
A column is appended in label order (labels only grow), so its labels are already sorted.
Lookups read a sealed part and a short tail: the sealed part is the column sorted once by
(code, label) for equality and by value for ranges, answered by binary search (an inverted
index and a sorted array in flat numpy form); the tail, the entries appended since, is scanned.
Once the tail passes a quarter of the sealed part (and SEAL_MIN entries) the column is sealed
again, and the entries of labels that died since (deleted, or replaced by a new upsert) are
dropped then; until then a dead label's entries stay, and evaluation keeps only live labels.

Cost per item: 8 bytes for each field it has, plus 24 bytes for each string or boolean value
and 32 for each number (raw and sorted copies), plus each distinct string once (a dict entry
with its str, ~100 bytes + its length); the arrays grow by half again when full.

Threads: one writer (the shard's write path), readers without a lock: a reader takes `view()`,
a dict of immutable `FieldState`s; appends write past the ends those states know of (or into
new arrays), sealing builds new arrays, and a new dict is published for the next view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .filters import Range, Scalar
from .labels import LabelView

GROWTH = 1.5
MIN_CAPACITY = 64
SEAL_MIN = 1024  # a tail shorter than this is scanned; no column is sorted for fewer entries
SEAL_SHARE = 0.25  # seal again once the tail passes this share of the sealed part
TERM_BYTES = 100  # a distinct string's dict slot and str object, beside its characters (estimated)

_EMPTY_I64 = np.empty(0, dtype=np.int64)
_EMPTY_I32 = np.empty(0, dtype=np.int32)
_EMPTY_F64 = np.empty(0, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class Sealed:
    """A field's columns sorted once: the first `terms` term entries by (code, label), the
    first `numbers` number entries by value."""

    terms: int = 0
    codes_sorted: np.ndarray = field(default_factory=lambda: _EMPTY_I32)
    labels_by_code: np.ndarray = field(default_factory=lambda: _EMPTY_I64)
    numbers: int = 0
    values_sorted: np.ndarray = field(default_factory=lambda: _EMPTY_F64)
    labels_by_value: np.ndarray = field(default_factory=lambda: _EMPTY_I64)
    present: int = 0  # present entries when sealed (the column needs no sorting)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.codes_sorted, self.labels_by_code, self.values_sorted, self.labels_by_value))


@dataclass(frozen=True, eq=False)
class FieldState:
    """One field's columns as a reader sees them: arrays (possibly with spare capacity) and
    how many entries of each are valid."""

    term_labels: np.ndarray = field(default_factory=lambda: _EMPTY_I64)
    term_codes: np.ndarray = field(default_factory=lambda: _EMPTY_I32)
    n_terms: int = 0
    number_labels: np.ndarray = field(default_factory=lambda: _EMPTY_I64)
    number_values: np.ndarray = field(default_factory=lambda: _EMPTY_F64)
    n_numbers: int = 0
    present: np.ndarray = field(default_factory=lambda: _EMPTY_I64)
    n_present: int = 0
    sealed: Sealed = field(default_factory=Sealed)

    @property
    def tail(self) -> int:
        sealed = self.sealed
        return self.n_terms - sealed.terms + self.n_numbers - sealed.numbers + self.n_present - sealed.present

    @property
    def nbytes(self) -> int:
        arrays = (self.term_labels, self.term_codes, self.number_labels, self.number_values, self.present)
        return sum(a.nbytes for a in arrays) + self.sealed.nbytes

    # ---- lookups (sorted unique labels, dead ones included) ----

    def with_codes(self, codes: np.ndarray) -> np.ndarray:
        """Labels holding a term whose code is in (m,) int32 `codes`."""
        sealed, parts = self.sealed, []
        for code in codes.tolist():
            lo = int(sealed.codes_sorted.searchsorted(code, "left"))
            hi = int(sealed.codes_sorted.searchsorted(code, "right"))
            if hi > lo:
                parts.append(sealed.labels_by_code[lo:hi])
        if self.n_terms > sealed.terms:
            tail_codes = self.term_codes[sealed.terms : self.n_terms]
            hit = tail_codes == codes[0] if len(codes) == 1 else np.isin(tail_codes, codes)
            parts.append(self.term_labels[sealed.terms : self.n_terms][hit])
        return _union(parts)

    def in_range(self, condition: Range) -> np.ndarray:
        """Labels holding a number inside `condition`'s interval."""
        sealed, parts = self.sealed, []
        if sealed.numbers:
            values = sealed.values_sorted
            lo = int(values.searchsorted(condition.low, "left" if condition.low_inclusive else "right"))
            hi = int(values.searchsorted(condition.high, "right" if condition.high_inclusive else "left"))
            if hi > lo:
                parts.append(np.sort(sealed.labels_by_value[lo:hi]))
        if self.n_numbers > sealed.numbers:
            tail = self.number_values[sealed.numbers : self.n_numbers]
            low = tail >= condition.low if condition.low_inclusive else tail > condition.low
            high = tail <= condition.high if condition.high_inclusive else tail < condition.high
            parts.append(self.number_labels[sealed.numbers : self.n_numbers][low & high])
        return _union(parts)

    def having(self) -> np.ndarray:
        return self.present[: self.n_present]


def _union(parts: list[np.ndarray]) -> np.ndarray:
    """Sorted unique labels of sorted (not necessarily unique) arrays."""
    if not parts:
        return _EMPTY_I64
    if len(parts) == 1:
        part = parts[0]
        if len(part) < 2 or (part[1:] > part[:-1]).all():
            return part
        return np.unique(part)
    return np.unique(np.concatenate(parts))


class PayloadView:
    """A consistent read view of a shard's payload index."""

    __slots__ = ("_fields", "_codes")

    def __init__(self, fields: dict[str, FieldState], codes: dict[str | bool, int]) -> None:
        self._fields, self._codes = fields, codes

    def equals(self, field: str, values: tuple[Scalar, ...]) -> np.ndarray:
        state = self._fields.get(field)
        if state is None:
            return _EMPTY_I64
        parts = []
        # str and bool keys never meet a number in this dict (numbers have their own column), so
        # True and 1 cannot collide.
        codes = [self._codes.get(v) for v in values if not _is_number(v)]
        codes = [c for c in codes if c is not None]
        if codes:
            parts.append(state.with_codes(np.asarray(codes, dtype=np.int32)))
        for v in values:
            if _is_number(v):
                parts.append(state.in_range(Range(field, low=float(v), high=float(v))))
        return _union(parts)

    def in_range(self, condition: Range) -> np.ndarray:
        state = self._fields.get(condition.field)
        return state.in_range(condition) if state is not None else _EMPTY_I64

    def having(self, field: str) -> np.ndarray:
        state = self._fields.get(field)
        return state.having() if state is not None else _EMPTY_I64

    def fields(self) -> list[str]:
        return sorted(self._fields)


class ShardLookup:
    """`filters.Lookup` over one shard: its payload view, its label view (which labels are
    live) and the labels of the ids the filter names (read from the store beforehand)."""

    def __init__(self, payloads: PayloadView, labels: LabelView, id_labels: dict[str, int]) -> None:
        self._payloads, self._labels, self._id_labels = payloads, labels, id_labels
        self._universe: np.ndarray | None = None
        self.equals, self.in_range, self.having = payloads.equals, payloads.in_range, payloads.having

    def ids(self, ids: tuple[str, ...]) -> np.ndarray:
        found = self._id_labels
        return np.unique(np.fromiter((found[i] for i in ids if i in found), dtype=np.int64))

    def universe(self) -> np.ndarray:
        if self._universe is None:  # computed once per evaluation, only if a negation needs it
            self._universe = self._labels.live_labels()
        return self._universe

    def live(self, labels: np.ndarray) -> np.ndarray:
        return labels[self._labels.is_live(labels)]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and type(x) is not bool  # noqa: E721


class _Entries:
    """One write's new entries for one field, gathered in Python lists."""

    __slots__ = ("term_labels", "term_codes", "number_labels", "number_values", "present")

    def __init__(self) -> None:
        self.term_labels: list[int] = []
        self.term_codes: list[int] = []
        self.number_labels: list[int] = []
        self.number_values: list[float] = []
        self.present: list[int] = []


class PayloadIndex:
    """The payload index of one shard; see the module docstring. Writers: `add` and `seal`
    from the shard's write path only."""

    def __init__(self) -> None:
        self._fields: dict[str, FieldState] = {}
        self._codes: dict[str | bool, int] = {}
        self._terms_bytes = 0  # estimated memory of the distinct strings, kept as they come
        self._view = PayloadView(self._fields, self._codes)

    def view(self) -> PayloadView:
        return self._view

    def memory_bytes(self) -> int:
        """Bytes of the arrays (at their capacity) and an estimate for the distinct terms."""
        return sum(s.nbytes for s in self._fields.values()) + self._terms_bytes

    def entries(self, labels: np.ndarray, payloads: Sequence[dict[str, Any] | None]) -> dict[str, _Entries]:
        """The index entries of (n,) ascending `labels` with their payloads, ready for `add`
        (built without touching the published state: the caller may do it outside its lock)."""
        gathered: dict[str, _Entries] = {}
        codes = self._codes
        for label, payload in zip(labels.tolist(), payloads):
            if not payload:
                continue
            for name, value in payload.items():
                entries = gathered.get(name)
                if entries is None:
                    entries = gathered[name] = _Entries()
                entries.present.append(label)
                for element in value if isinstance(value, list) else (value,):
                    if isinstance(element, str) or type(element) is bool:  # noqa: E721
                        code = codes.get(element)
                        if code is None:
                            # New codes may appear before the entries are published: a reader
                            # that finds one just finds no entries for it yet.
                            code = codes[element] = len(codes)
                            # A dict slot, the str object and its characters, about.
                            self._terms_bytes += TERM_BYTES + (len(element) if isinstance(element, str) else 0)
                        entries.term_labels.append(label)
                        entries.term_codes.append(code)
                    elif isinstance(element, (int, float)):
                        entries.number_labels.append(label)
                        entries.number_values.append(float(element))
        return gathered

    def add(self, gathered: dict[str, _Entries]) -> None:
        """Append entries built by `entries` (for labels above every label indexed so far) and
        publish them to new views."""
        if not gathered:
            return
        fields = dict(self._fields)
        for name, new in gathered.items():
            state = fields.get(name, FieldState())
            term_labels, n_terms = _extend(state.term_labels, state.n_terms, new.term_labels, np.int64)
            term_codes, _ = _extend(state.term_codes, state.n_terms, new.term_codes, np.int32)
            number_labels, n_numbers = _extend(state.number_labels, state.n_numbers, new.number_labels, np.int64)
            number_values, _ = _extend(state.number_values, state.n_numbers, new.number_values, np.float64)
            present, n_present = _extend(state.present, state.n_present, new.present, np.int64)
            fields[name] = replace(
                state, term_labels=term_labels, term_codes=term_codes, n_terms=n_terms,
                number_labels=number_labels, number_values=number_values, n_numbers=n_numbers,
                present=present, n_present=n_present,
            )
        self._publish(fields)

    def seal(self, is_live: Callable[[np.ndarray], np.ndarray], force: bool = False) -> None:
        """Sort again the fields whose tail has grown past SEAL_SHARE of their sealed part (every
        field when `force`), dropping the entries of labels `is_live` says are dead."""
        due = [
            name for name, s in self._fields.items()
            if force or s.tail >= max(SEAL_MIN, SEAL_SHARE * (s.sealed.terms + s.sealed.numbers + s.sealed.present))
        ]
        if not due:
            return
        fields = dict(self._fields)
        for name in due:
            sealed = _sealed(fields[name], is_live)
            if sealed is None:
                del fields[name]
            else:
                fields[name] = sealed
        self._publish(fields)

    def _publish(self, fields: dict[str, FieldState]) -> None:
        self._fields = fields
        self._view = PayloadView(fields, self._codes)


def _extend(array: np.ndarray, n: int, values: list, dtype: Any) -> tuple[np.ndarray, int]:
    """`values` written after the first `n` entries of `array`: in place when it has room (views
    know only their first entries), else into a larger copy."""
    m = len(values)
    if not m:
        return array, n
    if n + m > len(array):
        grown = np.empty(max(n + m, int(len(array) * GROWTH), MIN_CAPACITY), dtype=dtype)
        grown[:n] = array[:n]
        array = grown
    array[n : n + m] = values
    return array, n + m


def _sealed(state: FieldState, is_live: Callable[[np.ndarray], np.ndarray]) -> FieldState | None:
    """`state` without its dead entries, every entry sealed; None when no live entry is left."""
    present = state.present[: state.n_present]
    present = present[is_live(present)]
    if not len(present):
        return None
    term_labels = state.term_labels[: state.n_terms]
    keep = is_live(term_labels)
    term_labels, term_codes = term_labels[keep], state.term_codes[: state.n_terms][keep]
    number_labels = state.number_labels[: state.n_numbers]
    keep = is_live(number_labels)
    number_labels, number_values = number_labels[keep], state.number_values[: state.n_numbers][keep]
    by_code = np.argsort(term_codes, kind="stable")  # stable: labels stay ascending within a code
    by_value = np.argsort(number_values, kind="stable")
    sealed = Sealed(
        len(term_labels), term_codes[by_code], term_labels[by_code],
        len(number_labels), number_values[by_value], number_labels[by_value], len(present),
    )
    return FieldState(
        term_labels, term_codes, len(term_labels), number_labels, number_values, len(number_labels),
        present, len(present), sealed,
    )

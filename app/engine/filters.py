"""The filter language: payload conditions in the Chroma/Pinecone/MongoDB style, parsed once
into a small tree, then either evaluated to the sorted labels it admits (through a shard's
payload index, `payload_index.py`) or matched against one payload dict (for brute-force checks).

Syntax (a JSON object):
- `{"field": value}` is `{"field": {"$eq": value}}`; several members are ANDed.
- `{"field": {"$op": value, ...}}` with `$eq $ne $gt $gte $lt $lte $in $nin $exists`; several
  operators on one field are ANDed.
- `{"$and": [f, ...]}`, `{"$or": [f, ...]}` (non-empty lists of filters), `{"$not": f}`.
- Values are strings, numbers or booleans; `$in`/`$nin` take a list of them; range operators
  (`$gt $gte $lt $lte`) take a number; `$exists` takes true or false.
- The reserved field `id` is the item's id: `$eq $ne $in $nin` with strings.

Semantics (MongoDB's and Qdrant's where they agree):
- A payload array matches `$eq`/`$in`/a range if any of its elements does.
- Numbers compare as numbers (1 equals 1.0); a boolean is not a number (true does not equal 1);
  a string only equals a string. Numbers are compared as float64 (integers beyond 2**53 lose
  exactness).
- `$ne` and `$nin` are the negation of `$eq` and `$in`: an item without the field matches them
  (as in MongoDB). `$exists: true` matches an item whose payload has the field, whatever its
  value (null included). Only top-level payload fields are addressed; a nested object's fields
  are not (its field exists, and that is all a filter can say about it).
- `{}` admits everything.

Caps (422 above them, naming the part): MAX_DEPTH levels of nested objects, MAX_CONDITIONS
field conditions, MAX_VALUES values in all `$in`/`$nin` lists together.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, Union

import numpy as np

MAX_DEPTH = 16  # nested filter objects ($and/$or/$not and field operator objects)
MAX_CONDITIONS = 256  # field conditions in one filter
MAX_VALUES = 10_000  # values over all $in / $nin lists of one filter ("already seen" id lists)
ID_FIELD = "id"

EQUALITY = ("$eq", "$ne", "$in", "$nin")
RANGES = ("$gt", "$gte", "$lt", "$lte")
OPERATORS = (*EQUALITY, *RANGES, "$exists")
COMBINATORS = ("$and", "$or", "$not")

Scalar = Union[str, float, bool]


# ---- the tree ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Equals:
    """`field` holds one of `values` (or an array with one of them)."""

    field: str
    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class Range:
    """`field` holds a number (or an array with a number) in the interval."""

    field: str
    low: float = -np.inf
    low_inclusive: bool = True
    high: float = np.inf
    high_inclusive: bool = True

    def holds(self, x: float) -> bool:
        above = x >= self.low if self.low_inclusive else x > self.low
        below = x <= self.high if self.high_inclusive else x < self.high
        return above and below


@dataclass(frozen=True)
class Exists:
    field: str


@dataclass(frozen=True)
class IdIn:
    """The item's id is one of `ids`."""

    ids: tuple[str, ...]


@dataclass(frozen=True)
class All:
    """Admits everything (`{}`)."""


@dataclass(frozen=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    child: Node


Node = Union[Equals, Range, Exists, IdIn, All, And, Or, Not]
_NODE_TYPES = (Equals, Range, Exists, IdIn, All, And, Or, Not)


# ---- parsing ----------------------------------------------------------------------------


class _Budget:
    def __init__(self) -> None:
        self.conditions = 0
        self.values = 0

    def condition(self, where: str) -> None:
        self.conditions += 1
        if self.conditions > MAX_CONDITIONS:
            raise ValueError(f"{where}: expected at most {MAX_CONDITIONS} conditions in a filter, got more")

    def add_values(self, n: int, where: str) -> None:
        self.values += n
        if self.values > MAX_VALUES:
            raise ValueError(
                f"{where}: expected at most {MAX_VALUES} values in all $in/$nin lists of a filter, "
                f"got {self.values} so far"
            )


def parse_filter(value: Any) -> Node | None:
    """The filter tree of a request's `filter` (a JSON object); None when it admits everything
    (absent, null or `{}`). ValueError naming the part that is wrong (`filter.price.$lt: ...`)."""
    if value is None:
        return None
    node = _parse_object(value, "filter", 1, _Budget())
    return None if isinstance(node, All) else node


def _parse_object(value: Any, where: str, depth: int, budget: _Budget) -> Node:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a filter object, got {_kind(value)}")
    if depth > MAX_DEPTH:
        raise ValueError(f"{where}: expected filters nested at most {MAX_DEPTH} levels deep, got deeper")
    parts: list[Node] = []
    for key, member in value.items():
        at = f"{where}.{key}"
        if key in ("$and", "$or"):
            if not isinstance(member, list) or not member:
                raise ValueError(f"{at}: expected a non-empty list of filter objects, got {_kind(member)}")
            children = tuple(_parse_object(m, f"{at}[{i}]", depth + 1, budget) for i, m in enumerate(member))
            parts.append(And(children) if key == "$and" else Or(children))
        elif key == "$not":
            parts.append(Not(_parse_object(member, at, depth + 1, budget)))
        elif key.startswith("$"):
            raise ValueError(
                f"{at}: unknown operator {key!r} at the top of a filter object; expected a field name "
                f"or one of {list(COMBINATORS)}"
            )
        elif not key:
            raise ValueError(f"{where}: expected non-empty field names, got an empty one")
        else:
            parts.extend(_parse_field(key, member, at, depth, budget))
    return _and(parts)


def _and(parts: list[Node]) -> Node:
    parts = [p for p in parts if not isinstance(p, All)]
    if not parts:
        return All()
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _parse_field(field: str, value: Any, where: str, depth: int, budget: _Budget) -> Iterator[Node]:
    if not isinstance(value, dict):  # {"field": value}: equality
        budget.condition(where)
        yield _condition(field, "$eq", value, where, budget)
        return
    if depth + 1 > MAX_DEPTH:
        raise ValueError(f"{where}: expected filters nested at most {MAX_DEPTH} levels deep, got deeper")
    if not value:
        raise ValueError(f"{where}: expected an operator object such as {{\"$eq\": ...}}, got an empty object")
    for op, operand in value.items():
        budget.condition(where)
        yield _condition(field, op, operand, f"{where}.{op}", budget)


def _condition(field: str, op: str, operand: Any, where: str, budget: _Budget) -> Node:
    if op not in OPERATORS:
        raise ValueError(f"{where}: unknown operator {op!r}; expected one of {list(OPERATORS)}")
    if field == ID_FIELD:
        return _id_condition(op, operand, where, budget)
    if op in ("$eq", "$ne"):
        node: Node = Equals(field, (_scalar(operand, where),))
        return Not(node) if op == "$ne" else node
    if op in ("$in", "$nin"):
        values = _scalar_list(operand, where, budget)
        node = Equals(field, values)
        return Not(node) if op == "$nin" else node
    if op == "$exists":
        if type(operand) is not bool:  # noqa: E721
            raise ValueError(f"{where}: expected true or false, got {_show(operand)}")
        return Exists(field) if operand else Not(Exists(field))
    number = _number(operand, where)
    if op == "$gt":
        return Range(field, low=number, low_inclusive=False)
    if op == "$gte":
        return Range(field, low=number)
    if op == "$lt":
        return Range(field, high=number, high_inclusive=False)
    return Range(field, high=number)


def _id_condition(op: str, operand: Any, where: str, budget: _Budget) -> Node:
    if op in ("$eq", "$ne"):
        if not isinstance(operand, str):
            raise ValueError(f"{where}: the reserved field 'id' takes a string, got {_show(operand)}")
        node: Node = IdIn((operand,))
        return Not(node) if op == "$ne" else node
    if op in ("$in", "$nin"):
        if not isinstance(operand, list):
            raise ValueError(f"{where}: expected a list of id strings, got {_kind(operand)}")
        budget.add_values(len(operand), where)
        for i, item in enumerate(operand):
            if not isinstance(item, str):
                raise ValueError(f"{where}[{i}]: the reserved field 'id' takes strings, got {_show(item)}")
        node = IdIn(tuple(operand))
        return Not(node) if op == "$nin" else node
    if op == "$exists":
        if type(operand) is not bool:  # noqa: E721
            raise ValueError(f"{where}: expected true or false, got {_show(operand)}")
        return All() if operand else Not(All())
    raise ValueError(f"{where}: the reserved field 'id' takes $eq, $ne, $in, $nin or $exists, got {op}")


def _scalar(value: Any, where: str) -> Scalar:
    if isinstance(value, str) or type(value) is bool:  # noqa: E721
        return value
    if isinstance(value, (int, float)):
        return float(value)
    raise ValueError(f"{where}: expected a string, a number or a boolean, got {_show(value)}")


def _scalar_list(value: Any, where: str, budget: _Budget) -> tuple[Scalar, ...]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list of strings, numbers or booleans, got {_kind(value)}")
    budget.add_values(len(value), where)
    return tuple(_scalar(item, f"{where}[{i}]") for i, item in enumerate(value))


def _number(value: Any, where: str) -> float:
    if type(value) is bool or not isinstance(value, (int, float)):  # noqa: E721
        raise ValueError(f"{where}: expected a number, got {_show(value)}")
    return float(value)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _show(value: Any) -> str:
    text = repr(value)
    return f"{_kind(value)} ({text[:60]}{'...' if len(text) > 60 else ''})"


def as_filter(value: Any) -> Node | None:
    """A filter given as a tree (parsed at the edge already) or as a filter object (parsed
    here); None when it admits everything."""
    if value is None or isinstance(value, _NODE_TYPES):
        return None if isinstance(value, All) else value
    return parse_filter(value)


def referenced_ids(node: Node | None) -> list[str]:
    """Every id the tree's `id` conditions name (the shard resolves them to labels once)."""
    found: list[str] = []
    todo = [node] if node is not None else []
    while todo:
        n = todo.pop()
        if isinstance(n, IdIn):
            found.extend(n.ids)
        elif isinstance(n, (And, Or)):
            todo.extend(n.children)
        elif isinstance(n, Not):
            todo.append(n.child)
    return list(dict.fromkeys(found))


# ---- matching one payload (brute force) -------------------------------------------------


def matches(node: Node | None, payload: dict[str, Any] | None, item_id: str) -> bool:
    """Whether one item (its payload, possibly None, and id) passes the filter, by walking the
    tree over the payload itself: the reference the index evaluation is tested against."""
    if node is None or isinstance(node, All):
        return True
    payload = payload or {}
    if isinstance(node, And):
        return all(matches(c, payload, item_id) for c in node.children)
    if isinstance(node, Or):
        return any(matches(c, payload, item_id) for c in node.children)
    if isinstance(node, Not):
        return not matches(node.child, payload, item_id)
    if isinstance(node, IdIn):
        return item_id in node.ids
    if isinstance(node, Exists):
        return node.field in payload
    if node.field not in payload:
        return False
    value = payload[node.field]
    elements = value if isinstance(value, list) else [value]
    if isinstance(node, Equals):
        return any(_same(e, v) for e in elements for v in node.values)
    return any(_is_number(e) and node.holds(float(e)) for e in elements)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and type(x) is not bool  # noqa: E721


def _same(stored: Any, wanted: Scalar) -> bool:
    if type(wanted) is bool or type(stored) is bool:  # noqa: E721
        return type(stored) is bool and type(wanted) is bool and stored == wanted  # noqa: E721
    if isinstance(wanted, str):
        return isinstance(stored, str) and stored == wanted
    return _is_number(stored) and float(stored) == wanted


# ---- evaluating through an index --------------------------------------------------------


class Lookup(Protocol):
    """What evaluation needs from a shard: its payload index's answers and its live labels.
    Every method returns sorted unique int64 labels; all but `universe` may include dead ones."""

    def equals(self, field: str, values: tuple[Scalar, ...]) -> np.ndarray: ...
    def in_range(self, condition: Range) -> np.ndarray: ...
    def having(self, field: str) -> np.ndarray: ...
    def ids(self, ids: tuple[str, ...]) -> np.ndarray: ...
    def universe(self) -> np.ndarray: ...  # the live labels
    def live(self, labels: np.ndarray) -> np.ndarray: ...  # the live ones of sorted unique labels


EMPTY = np.empty(0, dtype=np.int64)


def admitted(node: Node, lookup: Lookup) -> np.ndarray:
    """The sorted unique int64 live labels that `node` admits."""
    return lookup.live(_evaluate(node, lookup))


def _evaluate(node: Node, lookup: Lookup) -> np.ndarray:
    # A negation is the live universe minus its child; everything else may carry dead labels,
    # which `admitted` removes once at the end.
    if isinstance(node, All):
        return lookup.universe()
    if isinstance(node, Equals):
        return lookup.equals(node.field, node.values)
    if isinstance(node, Range):
        return lookup.in_range(node)
    if isinstance(node, Exists):
        return lookup.having(node.field)
    if isinstance(node, IdIn):
        return lookup.ids(node.ids)
    if isinstance(node, Not):
        return np.setdiff1d(lookup.universe(), _evaluate(node.child, lookup), assume_unique=True)
    if isinstance(node, And):
        # Negated children are subtracted from the others' intersection (no universe needed
        # unless every child is negated); the smallest set goes first, so the result shrinks fastest.
        positive = sorted((_evaluate(c, lookup) for c in node.children if not isinstance(c, Not)), key=len)
        out = positive[0] if positive else lookup.universe()
        for part in positive[1:]:
            if not len(out):
                return out
            out = np.intersect1d(out, part, assume_unique=True)
        for negated in (c for c in node.children if isinstance(c, Not)):
            if not len(out):
                return out
            out = np.setdiff1d(out, _evaluate(negated.child, lookup), assume_unique=True)
        return out
    parts = [_evaluate(c, lookup) for c in node.children]
    return np.unique(np.concatenate(parts)) if len(parts) > 1 else parts[0]

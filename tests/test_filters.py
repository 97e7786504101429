"""The filter language (app/engine/filters.py): parsing, the errors that name the wrong part,
and the semantics of matching one payload."""

from __future__ import annotations

import pytest

from annserve.engine.filters import (
    MAX_CONDITIONS, MAX_DEPTH, MAX_VALUES, And, Equals, IdIn, Not, Range, matches, parse_filter,
    referenced_ids,
)

BOOK = {"category": "books", "price": 8, "tags": ["new", "sale"], "in_stock": True, "meta": {"a": 1}}


def ok(where, payload=BOOK, item_id="b1") -> bool:
    return matches(parse_filter(where), payload, item_id)


def test_shorthand_is_equality_and_members_are_anded():
    assert parse_filter({"category": "books"}) == Equals("category", ("books",))
    assert parse_filter({"category": "books", "price": {"$lt": 10}}) == And(
        (Equals("category", ("books",)), Range("price", high=10.0, high_inclusive=False))
    )
    assert parse_filter({}) is None and parse_filter(None) is None


@pytest.mark.parametrize(
    "where, expected",
    [
        ({"category": "books"}, True),
        ({"category": "music"}, False),
        ({"category": {"$eq": "books"}}, True),
        ({"category": {"$ne": "books"}}, False),
        ({"category": {"$ne": "music"}}, True),
        ({"price": {"$gt": 8}}, False),
        ({"price": {"$gte": 8}}, True),
        ({"price": {"$lt": 8}}, False),
        ({"price": {"$lte": 8}}, True),
        ({"price": {"$gt": 1, "$lt": 9}}, True),
        ({"price": 8.0}, True),  # numbers compare as numbers
        ({"price": "8"}, False),  # a string is not a number
        ({"in_stock": True}, True),
        ({"in_stock": 1}, False),  # a boolean is not a number
        ({"tags": "sale"}, True),  # an array matches if any element does
        ({"tags": {"$in": ["old", "new"]}}, True),
        ({"tags": {"$nin": ["old", "new"]}}, False),
        ({"tags": {"$in": []}}, False),
        ({"category": {"$in": ["music", "books"]}}, True),
        ({"category": {"$nin": ["music", "film"]}}, True),
        ({"meta": {"$exists": True}}, True),
        ({"missing": {"$exists": True}}, False),
        ({"missing": {"$exists": False}}, True),
        ({"missing": {"$ne": "x"}}, True),  # $ne and $nin match an item without the field
        ({"missing": {"$nin": ["x"]}}, True),
        ({"missing": "x"}, False),
        ({"category": {"$gt": 1}}, False),  # ranges only match numbers
        ({"$and": [{"category": "books"}, {"price": {"$lt": 10}}]}, True),
        ({"$and": [{"category": "books"}, {"price": {"$lt": 5}}]}, False),
        ({"$or": [{"category": "music"}, {"price": {"$lt": 10}}]}, True),
        ({"$or": [{"category": "music"}, {"price": {"$lt": 5}}]}, False),
        ({"$not": {"category": "books"}}, False),
        ({"$not": {"$or": [{"category": "music"}, {"in_stock": False}]}}, True),
        ({"id": "b1"}, True),
        ({"id": {"$ne": "b1"}}, False),
        ({"id": {"$in": ["a", "b1"]}}, True),
        ({"id": {"$nin": ["a", "b1"]}}, False),
        ({"id": {"$exists": True}}, True),
    ],
)
def test_matching_one_payload(where, expected):
    assert ok(where) is expected


def test_an_item_without_payload():
    assert matches(parse_filter({"category": {"$ne": "books"}}), None, "x")
    assert not matches(parse_filter({"category": "books"}), None, "x")
    assert matches(parse_filter({"id": "x"}), None, "x")


def test_negations_parse_to_not():
    assert parse_filter({"category": {"$ne": "a"}}) == Not(Equals("category", ("a",)))
    assert parse_filter({"id": {"$nin": ["a", "b"]}}) == Not(IdIn(("a", "b")))
    where = parse_filter({"$or": [{"id": "a"}, {"$not": {"id": {"$in": ["b", "a"]}}}]})
    assert sorted(referenced_ids(where)) == ["a", "b"]


def nested(depth: int) -> dict:
    where: dict = {"x": 1}
    for _ in range(depth - 1):
        where = {"$not": where}
    return where


@pytest.mark.parametrize(
    "where, fragments",
    [
        ([1], ["filter", "expected a filter object", "a list"]),
        ({"price": {"$lt": "ten"}}, ["filter.price.$lt", "expected a number", "ten"]),
        ({"price": {"$lt": True}}, ["filter.price.$lt", "expected a number"]),
        ({"price": {"$between": [1, 2]}}, ["filter.price.$between", "unknown operator"]),
        ({"$nor": [{"a": 1}]}, ["filter.$nor", "unknown operator"]),
        ({"a": None}, ["filter.a", "expected a string, a number or a boolean", "null"]),
        ({"a": [1, 2]}, ["filter.a", "a list"]),
        ({"a": {"$eq": {"b": 1}}}, ["filter.a.$eq", "an object"]),
        ({"a": {"$in": "x"}}, ["filter.a.$in", "expected a list"]),
        ({"a": {"$in": [1, None]}}, ["filter.a.$in[1]", "null"]),
        ({"a": {"$exists": 1}}, ["filter.a.$exists", "true or false"]),
        ({"a": {}}, ["filter.a", "operator object"]),
        ({"$and": []}, ["filter.$and", "non-empty list"]),
        ({"$or": {"a": 1}}, ["filter.$or", "non-empty list"]),
        ({"$and": [{"a": 1}, 3]}, ["filter.$and[1]", "expected a filter object"]),
        ({"$not": [{"a": 1}]}, ["filter.$not", "expected a filter object"]),
        ({"id": 5}, ["filter.id", "takes a string"]),
        ({"id": {"$in": ["a", 2]}}, ["filter.id.$in[1]", "strings"]),
        ({"id": {"$gt": "a"}}, ["filter.id.$gt", "reserved field 'id'"]),
        ({"": 1}, ["filter", "non-empty field names"]),
        (nested(MAX_DEPTH + 1), ["nested at most", str(MAX_DEPTH)]),
        ({f"f{i}": i for i in range(MAX_CONDITIONS + 1)}, ["at most", str(MAX_CONDITIONS), "conditions"]),
        ({"a": {"$in": list(range(MAX_VALUES + 1))}}, ["filter.a.$in", str(MAX_VALUES), "values"]),
    ],
)
def test_malformed_filters_name_the_part_that_is_wrong(where, fragments):
    with pytest.raises(ValueError) as raised:
        parse_filter(where)
    for fragment in fragments:
        assert fragment in str(raised.value), (fragment, str(raised.value))


def test_the_caps_admit_filters_at_them():
    assert parse_filter(nested(MAX_DEPTH)) is not None
    assert parse_filter({f"f{i}": i for i in range(MAX_CONDITIONS)}) is not None
    assert parse_filter({"id": {"$nin": [str(i) for i in range(MAX_VALUES)]}}) is not None

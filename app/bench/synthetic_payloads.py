"""Synthetic payloads and filters for the filter tests and `filter_cost`: seeded, with every value type a payload
may hold (strings, integers, floats, booleans, arrays, null, nested objects, missing fields),
and filters covering every operator and combinator at several selectivities."""

from __future__ import annotations

import random
from typing import Any

CATEGORIES = ["books", "music", "film", "games", "toys"]
TAGS = ["new", "sale", "gift", "eco", "rare", "used", "kids", "top"]


def payload(rng: random.Random, i: int) -> dict[str, Any] | None:
    if rng.random() < 0.05:
        return None
    p: dict[str, Any] = {"category": rng.choice(CATEGORIES), "n": i}
    if rng.random() < 0.9:
        p["price"] = round(rng.uniform(0, 100), 2)
    if rng.random() < 0.8:
        p["year"] = rng.randint(1990, 2025)
    p["tags"] = rng.sample(TAGS, rng.randint(0, 3))
    if rng.random() < 0.7:
        p["in_stock"] = rng.random() < 0.5
    if rng.random() < 0.3:
        p["rating"] = None
    elif rng.random() < 0.5:
        p["rating"] = rng.choice([1, 2, 3, 4, 5, 2.5, "n/a"])
    if rng.random() < 0.2:
        p["meta"] = {"a": rng.randint(0, 3)}
    if rng.random() < 0.1:
        p["mixed"] = [rng.choice(CATEGORIES), rng.randint(0, 5), True]
    return p


def payloads(n: int, seed: int = 7) -> list[dict[str, Any] | None]:
    rng = random.Random(seed)
    return [payload(rng, i) for i in range(n)]


# Every operator and combinator, from very selective to almost everything.
FILTERS: list[dict[str, Any]] = [
    {"category": "books"},
    {"category": {"$eq": "music"}},
    {"category": {"$ne": "books"}},
    {"category": {"$in": ["film", "games"]}},
    {"category": {"$nin": ["film", "games", "toys"]}},
    {"price": {"$lt": 10}},
    {"price": {"$lte": 50.5}},
    {"price": {"$gt": 95}},
    {"price": {"$gte": 20, "$lt": 30}},
    {"year": 2001},
    {"year": {"$in": [1995, 2000, 2020]}},
    {"tags": "sale"},
    {"tags": {"$in": ["rare", "eco"]}},
    {"tags": {"$nin": ["new", "sale"]}},
    {"in_stock": True},
    {"in_stock": {"$ne": True}},
    {"rating": {"$exists": True}},
    {"rating": {"$exists": False}},
    {"rating": {"$gte": 3}},
    {"rating": "n/a"},
    {"meta": {"$exists": True}},
    {"mixed": True},
    {"mixed": {"$in": ["toys", 3]}},
    {"absent": {"$exists": False}},
    {"absent": "x"},
    {"n": {"$lt": 100}},
    {"$and": [{"category": "books"}, {"price": {"$lt": 50}}]},
    {"$or": [{"category": "toys"}, {"tags": "gift"}]},
    {"$not": {"category": {"$in": ["books", "music"]}}},
    {"$and": [{"$not": {"tags": "new"}}, {"$not": {"in_stock": False}}]},
    {"$or": [{"$and": [{"year": {"$gte": 2020}}, {"in_stock": True}]}, {"price": {"$lt": 5}}]},
    {"category": "games", "year": {"$lt": 2000}, "tags": {"$nin": ["used"]}},
]


def id_filters(ids: list[str], rng: random.Random) -> list[dict[str, Any]]:
    """Filters on the reserved field `id`, built from existing ids (and some that do not exist)."""
    some = rng.sample(ids, min(len(ids), 50)) + ["no-such-id"]
    return [
        {"id": some[0]},
        {"id": {"$ne": some[0]}},
        {"id": {"$in": some}},
        {"id": {"$nin": some}},
        {"$and": [{"category": "books"}, {"id": {"$nin": some}}]},
        {"$or": [{"id": {"$in": some[:5]}}, {"price": {"$gt": 99}}]},
    ]

"""The payload index (app/engine/payload_index.py): every filter of app/bench/synthetic_payloads.py
evaluated through the index equals the same filter matched payload by payload (filters.matches),
while items are upserted, replaced and deleted, across seals, through a shard's store and after
a restart, and on collections of several shards (exact search, which needs no index kind)."""

from __future__ import annotations

import random

import numpy as np
import pytest
from conftest import opened

from annserve.bench.synthetic_payloads import FILTERS, id_filters, payloads
from annserve.engine import payload_index as payload_index_module
from annserve.engine.filters import admitted, matches, parse_filter
from annserve.engine.labels import LabelMap
from annserve.engine.payload_index import PayloadIndex, ShardLookup


class Model:
    """A shard's labels and payload index driven like the shard does, beside a plain dict of
    what is live: id -> (label, payload)."""

    def __init__(self) -> None:
        self.labels, self.index = LabelMap(), PayloadIndex()
        self.live: dict[str, tuple[int, dict | None]] = {}
        self.next = 1

    def upsert(self, ids: list[str], items: list[dict | None]) -> None:
        labels = np.arange(self.next, self.next + len(ids), dtype=np.int64)
        self.next += len(ids)
        replaced = np.array([self.live[i][0] for i in ids if i in self.live], dtype=np.int64)
        entries = self.index.entries(labels, items)
        self.labels.kill(replaced)
        self.labels.append(labels, ids)
        self.index.add(entries)
        self.index.seal(self.labels.view().is_live)
        for item_id, label, item in zip(ids, labels.tolist(), items):
            self.live[item_id] = (label, item)

    def delete(self, ids: list[str]) -> None:
        self.labels.kill(np.array([self.live.pop(i)[0] for i in ids], dtype=np.int64))

    def admitted(self, where: dict) -> set[int]:
        id_labels = {i: label for i, (label, _) in self.live.items()}
        lookup = ShardLookup(self.index.view(), self.labels.view(), id_labels)
        found = admitted(parse_filter(where), lookup)
        assert found.dtype == np.int64 and (np.diff(found) > 0).all(), "sorted unique int64"
        return set(found.tolist())

    def truth(self, where: dict) -> set[int]:
        node = parse_filter(where)
        return {label for i, (label, p) in self.live.items() if matches(node, p, i)}


def check_all(model: Model, rng: random.Random) -> None:
    for where in FILTERS + id_filters(list(model.live), rng):
        assert model.admitted(where) == model.truth(where), where


@pytest.mark.parametrize("seal_min", [1024, 8])
def test_index_agrees_with_brute_force_through_upserts_replacements_and_deletes(monkeypatch, seal_min):
    monkeypatch.setattr(payload_index_module, "SEAL_MIN", seal_min)
    rng = random.Random(3)
    model = Model()
    items = payloads(6000, seed=1)
    for lo in range(0, 4000, 250):  # write groups of varied size, as group commits make them
        model.upsert([f"i{j}" for j in range(lo, lo + 250)], items[lo : lo + 250])
    check_all(model, rng)
    sealed = [s for s in model.index.view()._fields.values() if s.sealed.terms + s.sealed.numbers]
    assert sealed, "some columns were sealed"
    assert any(s.tail for s in model.index.view()._fields.values()), "and some have a tail"
    # Replacements (new payloads under existing ids) and deletes.
    replace = rng.sample(sorted(model.live), 1500)
    model.upsert(replace, items[4000:5500])
    model.delete(rng.sample(sorted(model.live), 800))
    check_all(model, rng)
    model.index.seal(model.labels.view().is_live, force=True)
    check_all(model, rng)
    # Sealing dropped the dead entries: what is indexed is what is live.
    present = model.index.view()._fields["category"]
    live_with_category = sum(1 for _, p in model.live.values() if p and "category" in p)
    assert present.n_present == live_with_category


def test_an_empty_index_and_unknown_values_admit_nothing_but_negations():
    model = Model()
    assert model.admitted({"category": "books"}) == set()
    model.upsert(["a", "b"], [{"category": "books"}, None])
    assert model.admitted({"category": "nope"}) == set()
    assert model.admitted({"category": {"$ne": "nope"}}) == {1, 2}
    assert model.admitted({"other": {"$exists": False}}) == {1, 2}


def test_memory_is_reported_and_bounded_by_live_entries():
    model = Model()
    items = payloads(3000, seed=2)
    ids = [f"i{j}" for j in range(3000)]
    model.upsert(ids, items)
    first = model.index.memory_bytes()
    assert first > 3000 * 8
    for _ in range(6):  # the same ids replaced again and again: dead entries are dropped at seals
        model.upsert(ids, items)
    model.index.seal(model.labels.view().is_live, force=True)
    assert model.index.memory_bytes() < 2.5 * first


# ---- through the engine: the store, restarts, shards ----


def exact_ids(collection, where: dict, n: int) -> set[str]:
    """Every item the filter admits, by an exact search for all of them."""
    query = np.ones((1, collection.dim), dtype=np.float32)
    hits = collection.search(query, max(n, 1), exact=True, filter=where)[0]
    return {item_id for item_id, _ in hits}


def engine_truth(live: dict[str, dict | None], where: dict) -> set[str]:
    node = parse_filter(where)
    return {i for i, p in live.items() if matches(node, p, i)}


@pytest.mark.parametrize("shards", [1, 3])
def test_the_index_stays_consistent_with_the_store_and_survives_a_restart(tmp_path, shards):
    rng = random.Random(5)
    n, dim = 1500, 8
    items = payloads(n + 600, seed=9)
    vectors = np.random.default_rng(0).standard_normal((n + 600, dim)).astype(np.float32)
    ids = [f"item-{j}" for j in range(n)]
    live = dict(zip(ids, items[:n]))
    with opened(tmp_path) as manager:
        c = manager.create("p", dim, "l2", "flat", {}, shards=shards)
        for lo in range(0, n, 300):
            c.upsert(ids[lo : lo + 300], vectors[lo : lo + 300], items[lo : lo + 300])
        replaced = rng.sample(ids, 400)
        c.upsert(replaced, vectors[n : n + 400], items[n : n + 400])
        live.update(zip(replaced, items[n : n + 400]))
        gone = rng.sample(ids, 300)
        assert c.delete(gone) == 300
        for item_id in gone:
            del live[item_id]
        checks = FILTERS + id_filters(list(live), rng)
        before = {}
        for where in checks:
            before[str(where)] = exact_ids(c, where, n)
            assert before[str(where)] == engine_truth(live, where), where
    with opened(tmp_path) as manager:  # a restart builds the index again from the store
        c = manager.get("p")
        for where in checks:
            assert exact_ids(c, where, n) == before[str(where)], where

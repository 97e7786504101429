"""The SQLite store of record: durability settings, label rules, snapshots, persistence."""

from __future__ import annotations

import sqlite3
import threading
import time

import numpy as np
import orjson
import pytest

from annserve.engine import store as store_module
from annserve.engine.store import ShardStore

DIM = 50


@pytest.fixture()
def store(tmp_path):
    s = ShardStore(tmp_path / "store.sqlite", DIM)
    yield s
    s.close()


def _put(store: ShardStore, first_label: int, ids: list[str], vectors: np.ndarray, payload=None) -> None:
    labels = np.arange(first_label, first_label + len(ids), dtype=np.int64)
    store.upsert(labels, ids, vectors, [payload] * len(ids))


def test_wal_and_full_sync_on_every_connection(store, glove):
    _put(store, 1, ["a"], glove.base[:1])
    # Two readers at once, so that the pool holds more than one connection besides the writer.
    with store.snapshot(), store.snapshot():
        pass
    assert store.get("a") is not None
    journal, sync = store.pragma("journal_mode"), store.pragma("synchronous")
    assert len(sync) == 3  # the writer and both pooled readers
    assert journal == ["wal"] * 3
    assert sync == [2] * 3  # FULL: the WAL is fsynced at every commit, on every connection


def test_round_trip_is_bit_exact(store, glove):
    _put(store, 1, ["a", "b"], glove.base[:2], '{"tag":"x"}')
    vector, payload = store.get("b")
    assert vector.dtype == np.float32 and np.array_equal(vector, glove.base[1])
    assert payload == {"tag": "x"}
    assert store.get("missing") is None


def test_replace_moves_the_id_to_its_new_label(store, glove):
    _put(store, 1, ["a", "b"], glove.base[:2])
    replaced = store.upsert(np.array([3, 4], dtype=np.int64), ["a", "new"], glove.base[5:7], [None, None])
    assert replaced.dtype == np.int64 and replaced.tolist() == [1]  # a's old label; "new" had none
    with store.snapshot() as snap:
        labels, ids, vectors = next(snap.chunks())
        assert snap.ids_of(np.array([3, 1, 2, -1])) == {2: "b", 3: "a"}  # 1 is dead, -1 padding
    assert labels.tolist() == [2, 3, 4] and ids == ["b", "a", "new"]
    assert np.array_equal(vectors[1], glove.base[5])


def test_labels_are_never_reused_after_deleting_the_last(store, glove, tmp_path):
    _put(store, 1, ["a", "b", "c"], glove.base[:3])
    assert store.delete(["c", "nope"]).tolist() == [3]  # the labels of the ids that existed
    assert store.delete(["nope"]).tolist() == []
    with store.snapshot() as snap:
        # A reused label 3 would make a stale main index answer with the wrong item.
        assert snap.max_label == 3 and snap.count() == 2


def test_snapshot_is_isolated_from_later_writes(store, glove):
    _put(store, 1, [f"i{i}" for i in range(100)], glove.base[:100])
    with store.snapshot() as snap:
        _put(store, 101, ["late"], glove.base[100:101])
        store.delete(["i0"])
        assert snap.max_label == 100
        seen = [i for _, ids, _ in snap.chunks(rows=7) for i in ids]
    assert len(seen) == 100 and "i0" in seen and "late" not in seen


def test_chunks_after_a_label(store, glove):
    _put(store, 1, [f"i{i}" for i in range(10)], glove.base[:10])
    with store.snapshot() as snap:
        labels, ids, vectors = next(snap.chunks(after=7, vectors=False))
    assert labels.tolist() == [8, 9, 10] and vectors is None


def test_a_failed_batch_writes_nothing(store, glove):
    _put(store, 1, ["a"], glove.base[:1])
    with pytest.raises(sqlite3.IntegrityError):
        _put(store, 2, ["b", None], glove.base[1:3])  # the NULL id fails the second row
    assert store.get("b") is None  # the whole transaction rolled back, first row included
    assert store.get("a") is not None


def test_persists_across_reopen(tmp_path, glove):
    s = ShardStore(tmp_path / "s.sqlite", DIM)
    _put(s, 1, [f"i{i}" for i in range(500)], glove.base[:500])
    s.close()
    s = ShardStore(tmp_path / "s.sqlite", DIM)
    with s.snapshot() as snap:
        assert snap.count() == 500 and snap.max_label == 500
    assert np.array_equal(s.get("i499")[0], glove.base[499])
    s.close()


def test_concurrent_readers_and_writer(store, glove):
    errors = []

    def read() -> None:
        try:
            for _ in range(50):
                with store.snapshot() as snap:
                    sum(len(ids) for _, ids, _ in snap.chunks(rows=100))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    for b in range(20):
        _put(store, 1 + 100 * b, [f"i{b}-{i}" for i in range(100)], glove.base[100 * b : 100 * (b + 1)])
    for t in readers:
        t.join()
    assert not errors
    with store.snapshot() as snap:
        assert snap.count() == 2000


def test_a_batch_keeps_each_row_its_own_id_vector_and_payload(store, glove):
    # A batch goes in as one statement over a JSON array (consecutive labels) and row by row
    # otherwise: both ways store each item's own bytes and payload text, whatever the ids hold.
    ids = ['q"uote', "back\\slash", "é", "😀", "tab\t", "\u2028", "plain"]
    payloads = [None, '{"tag":"x\\"y"}', None, '{"n":1.0000000000000002}', None, '{"u":"\\u00e9"}', None]
    _put(store, 1, ids[:4], glove.base[:4])
    store.upsert(np.arange(5, 12, dtype=np.int64), ids, glove.base[10:17], payloads)
    store.upsert(np.array([20, 30], dtype=np.int64), ["gap-a", "gap-b"], glove.base[20:22], ['{"g":1}', None])
    for pos, item_id in enumerate(ids):
        vector, payload = store.get(item_id)
        assert np.array_equal(vector, glove.base[10 + pos]), item_id
        assert payload == (None if payloads[pos] is None else orjson.loads(payloads[pos]))
    assert np.array_equal(store.get("gap-b")[0], glove.base[21]) and store.get("gap-a")[1] == {"g": 1}
    with store.snapshot() as snap:
        labels, got_ids, _ = next(snap.chunks())
    assert labels.tolist() == [5, 6, 7, 8, 9, 10, 11, 20, 30] and got_ids == ids + ["gap-a", "gap-b"]


def test_an_id_with_a_nul_character_is_not_cut_short(store, glove):
    # SQLite's JSON functions end a string at NUL: "a\x00b" must not be taken for "a" when
    # old labels are looked up, rows inserted, deleted or read.
    _put(store, 1, ["a", "a\x00b"], glove.base[:2])
    assert store.upsert(np.array([3], dtype=np.int64), ["a\x00b"], glove.base[2:3], ['{"k":1}']).tolist() == [2]
    assert store.labels_of(["a\x00b", "a"]) == {"a\x00b": 3, "a": 1}
    assert set(store.records(["a\x00b"], payloads=True, vectors=False)) == {"a\x00b"}
    assert np.array_equal(store.get("a\x00b")[0], glove.base[2])
    assert store.delete(["a\x00b"]).tolist() == [3]
    assert store.get("a") is not None and store.get("a\x00b") is None


def _fill(store: ShardStore, glove, rows: int, batch: int = 2000) -> None:
    """`rows` new items in batches (glove's rows again under new ids)."""
    for lo in range(0, rows, batch):
        ids = [f"fill{lo + i}" for i in range(batch)]
        store.upsert(None, ids, glove.base[np.arange(lo, lo + batch) % len(glove.base)], [None] * batch)


def test_a_commit_leaves_the_checkpoint_to_the_checkpointer(store, glove, monkeypatch):
    # SQLite's own checkpoint (every 1000 WAL pages) would run inside a COMMIT; here 5 MB of
    # commits leave the database file as it was and ask the checkpointer, once per store.
    asked = []
    monkeypatch.setattr(store_module.CHECKPOINTER, "request", asked.append)
    _put(store, 1, ["first"], glove.base[:1])
    before = store.path.stat().st_size
    _fill(store, glove, 20_000)
    assert store.path.stat().st_size == before
    assert asked and set(map(id, asked)) == {id(store)}
    store.checkpoint()
    assert store.path.stat().st_size > before + 20_000 * DIM * 4  # the rows are in the file now
    assert store.get("fill19999") is not None


def test_the_checkpointer_thread_checkpoints(store, glove, monkeypatch):
    monkeypatch.setattr(store_module, "CHECKPOINT_PAGES", 100)
    before = store.path.stat().st_size
    _fill(store, glove, 4000)
    deadline = time.monotonic() + 10
    while store.path.stat().st_size < before + 3000 * DIM * 4:
        assert time.monotonic() < deadline, "the checkpointer did not copy the WAL within 10 s"
        time.sleep(0.01)


def test_a_writer_checkpoints_itself_when_the_checkpointer_falls_behind(store, glove, monkeypatch):
    monkeypatch.setattr(store_module, "CHECKPOINT_PAGES", 100)
    monkeypatch.setattr(store_module, "INLINE_CHECKPOINT_PAGES", 400)
    monkeypatch.setattr(store_module.CHECKPOINTER, "request", lambda store: None)  # never gets to it
    before = store.path.stat().st_size
    _fill(store, glove, 8000)  # about 500 pages
    assert store.path.stat().st_size > before + 4000 * DIM * 4


def test_deletes_count_toward_the_next_checkpoint(store, glove, monkeypatch):
    # Each deleted (or replaced) row dirties pages of its own wherever it lies: scattered
    # deletes grow the WAL by pages, not by bytes, and must bring the checkpoint too.
    asked = []
    monkeypatch.setattr(store_module, "CHECKPOINT_PAGES", 300)
    monkeypatch.setattr(store_module.CHECKPOINTER, "request", asked.append)
    _fill(store, glove, 2000)  # about 130 pages
    assert asked == []
    assert len(store.delete([f"fill{i}" for i in range(0, 2000, 10)])) == 200
    assert asked == [store]

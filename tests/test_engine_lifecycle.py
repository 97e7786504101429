"""A collection's lifetime against what runs inside it: deletes racing reads (NotFound, never a
crash), deletes during a slow rebuild (prompt, and the rebuild leaves nothing behind), and one
kind of main index per collection whatever a rebuild does."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
from test_engine import eventually, held_train, manager, opened, wait  # noqa: F401 - manager: a fixture

from annserve.engine import collection as collection_module
from annserve.engine import snapshots
from annserve.engine.errors import NotFound

DIM = 16


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def fill(c, n: int, seed: int = 0) -> None:
    x = vectors(n, seed)
    for start in range(0, n, 1000):
        c.upsert([f"i{i}" for i in range(start, min(n, start + 1000))], x[start : start + 1000], [None] * len(x[start : start + 1000]))


# ---- defect 4: a delete racing reads -------------------------------------------------------


def test_a_delete_racing_reads_ends_them_in_not_found_never_in_a_crash(tmp_path):
    """Gets, searches by id, exact searches and snapshots racing a collection delete: each
    answers or raises NotFound (a 404); nothing else (a closed SQLite connection was a 500)."""
    rng = random.Random(4)
    with opened(tmp_path) as m:
        for round_no in range(25):
            name = f"race{round_no}"
            c = m.create(name, DIM, "l2", "flat", {}, shards=2)
            fill(c, 3000, round_no)
            queries = vectors(8, 99)
            errors: list[BaseException] = []
            answered = {"get": 0, "by_id": 0, "exact": 0, "snapshot": 0}
            stop = threading.Event()

            def read(what: str, c=c, name=name, queries=queries, stop=stop, errors=errors, answered=answered) -> None:
                while not stop.is_set():
                    try:
                        if what == "get":
                            c.get(f"i{rng.randrange(3000)}")
                        elif what == "by_id":
                            item_id = f"i{rng.randrange(3000)}"
                            vector, _ = c.get(item_id)
                            c.search(vector, 5, exact=True, exclude=[item_id])
                        elif what == "exact":
                            c.search(queries, 10, exact=True)
                        else:
                            snapshots.create_snapshot(c, tmp_path / "snaps", include_index=False)
                        answered[what] += 1
                    except NotFound:
                        if stop.is_set() or name not in [x.name for x in m.list()]:
                            continue
                        errors.append(AssertionError(f"{what}: NotFound while the collection exists"))
                    except BaseException as exc:  # noqa: BLE001 - every other outcome is the bug
                        errors.append(exc)
                        return

            readers = [threading.Thread(target=read, args=(w,)) for w in answered for _ in range(2)]
            for t in readers:
                t.start()
            time.sleep(rng.uniform(0.01, 0.15))
            m.delete(name)
            time.sleep(0.05)  # readers now run into the deleted collection
            stop.set()
            for t in readers:
                t.join(60)
            assert not errors, f"round {round_no}: {errors[:3]!r}"
            with pytest.raises(NotFound):
                c.get("i0")
            with pytest.raises(NotFound):
                c.search(queries, 3, exact=True)


# ---- defect 5: a delete during a slow rebuild ----------------------------------------------


def test_a_delete_during_a_slow_rebuild_answers_promptly_and_the_rebuild_leaves_nothing(tmp_path, monkeypatch):
    bound = 3.0  # seconds; the rebuild below is held in train for as long as the test likes
    with opened(tmp_path) as m, held_train(monkeypatch) as (entered, release):
        c = m.create("slow", DIM, "l2", "ivf_flat", {"nlist": 16})
        fill(c, 2000)
        job = m.start_rebuild("slow")
        assert entered.wait(60), f"the rebuild never reached train ({job.state})"
        outcome: dict[str, float] = {}

        def timed(what: str, call) -> None:
            start = time.monotonic()
            call()
            outcome[what] = time.monotonic() - start

        deleter = threading.Thread(target=timed, args=("delete", lambda: m.delete("slow")))
        deleter.start()
        time.sleep(0.05)  # the delete has started (and, before the fix, holds the manager lock)
        creator = threading.Thread(target=timed, args=("create", lambda: m.create("other", DIM, "l2", "flat", {})))
        creator.start()
        deleter.join(bound)
        creator.join(bound)
        prompt = not deleter.is_alive() and not creator.is_alive()
        if not prompt:
            release.set()  # let the stuck calls finish before failing
            deleter.join(60)
            creator.join(60)
        assert prompt, f"still waiting after {bound}s while a rebuild trains: {outcome}"
        assert outcome["delete"] < bound and outcome["create"] < bound, outcome
        with pytest.raises(NotFound):
            m.get("slow")
        # The name is free at once; the old rebuild must never write into the new collection.
        again = m.create("slow", DIM, "l2", "flat", {})
        fill(again, 50, seed=5)
        release.set()
        assert wait(job).state == "failed" and "stopped" in job.error, job.to_dict()
        root = tmp_path / "collections"
        assert not list((root / "slow").rglob("main-*")), "the deleted collection's rebuild wrote into the new one"
        assert again.info()["count"] == 50 and again.info()["index"]["built"] is None
        eventually(lambda: not [p for p in root.iterdir() if p.name.startswith(".")], 10, "cleaned up")


# ---- defect 9: one kind of main index per collection ---------------------------------------


def kinds(c) -> set[str]:
    return {s.main.kind for s in c._shards if s.main is not None}


def test_a_partly_failed_auto_rebuild_changes_no_shard(manager, monkeypatch):
    c = manager.create("mixed", DIM, "l2", "auto", {}, shards=2)
    fill(c, 2000)
    assert wait(manager.start_rebuild("mixed")).state == "succeeded"
    assert kinds(c) == {"flat"}
    # The collection grew: auto now picks a graph; one shard's build of it fails.
    monkeypatch.setattr(collection_module, "pick_kind", lambda n, dim, budget: ("hnswlib", {}))
    real_build = c._shards[1].build_main

    def failing(*args, **kwargs):
        raise ValueError("injected: shard 1 cannot build")

    monkeypatch.setattr(c._shards[1], "build_main", failing)
    job = wait(manager.start_rebuild("mixed"))
    assert job.state == "failed" and "injected" in job.error and "no shard changed" in job.error
    assert kinds(c) == {"flat"}, "one shard swapped to the new kind, the other kept the old one"
    assert not list((manager.root / "mixed").rglob("main-*hnsw*"))
    with pytest.raises(ValueError, match="'flat'"):
        c.search(vectors(1), 5, params={"ef": 40})  # judged against the one kind in force
    assert len(c.search(vectors(1), 5)[0]) == 5
    monkeypatch.setattr(c._shards[1], "build_main", real_build)
    assert wait(manager.start_rebuild("mixed")).state == "succeeded"
    assert kinds(c) == {"hnswlib"}
    assert len(c.search(vectors(1), 5, params={"ef": 40})[0]) == 5


def test_a_start_with_two_kinds_on_disk_serves_one(tmp_path):
    """A crash between moving the shards' new index files leaves two kinds on disk; the start
    keeps the newest build's kind and serves the other shard exactly until a rebuild."""
    from annserve.engine.build import main_file_name, notes_path
    from annserve.indexes import create_index

    with opened(tmp_path) as m:
        c = m.create("torn", DIM, "l2", "flat", {}, shards=2)
        fill(c, 2000)
        assert wait(m.start_rebuild("torn")).state == "succeeded"
        shard = c._shards[1]
        with shard.store.snapshot() as snap:
            ((labels, _, x),) = snap.chunks()
            max_label = snap.max_label
    graph = create_index("hnswlib", DIM, "l2")
    graph.add(x, labels)
    shard_dir = tmp_path / "collections" / "torn" / "shard-1"
    for old in shard_dir.glob("main-*"):
        old.unlink()
    graph.save(shard_dir / main_file_name(max_label))
    notes_path(shard_dir / main_file_name(max_label)).write_text('{"built_at": "2999-01-01T00:00:00+00:00"}')
    with opened(tmp_path, rebuild_interval_seconds=0) as m:
        c = m.get("torn")
        assert len(kinds(c)) == 1
        assert c.info()["count"] == 2000
        hits, truth = c.search(vectors(5), 3), c.search(vectors(5), 3, exact=True)
        assert [[i for i, _ in h] for h in hits] == [[i for i, _ in h] for h in truth]
        np.testing.assert_allclose([[s for _, s in h] for h in hits], [[s for _, s in h] for h in truth], rtol=1e-5)

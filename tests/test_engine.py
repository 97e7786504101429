"""The collection engine on real data (GloVe 10K x 50, cosine): dual main/fresh index, rebuilds,
deletes and replacements, restart, corrupt index files, shards, the `auto` kind, input checks.
Every quality check compares with exact search (indexes.brute_force_knn)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from conftest import opened

from annserve.engine import build
from annserve.engine.errors import Conflict, NotFound
from annserve.indexes import brute_force_knn, recall_at_k

K = 10
RECALL_FLOOR = 0.95  # hnswlib main + exact fresh, default parameters


def ids_for(rows) -> list[str]:
    return [f"g{r}" for r in rows]


def rows_of(results) -> np.ndarray:
    """(nq, k) base row numbers of search results whose ids are g<row>."""
    return np.array([[int(item_id[1:]) for item_id, _ in hits] for hits in results])



def wait(job, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while job.state in ("queued", "running"):
        assert time.monotonic() < deadline, f"job still {job.state} at {job.progress:.0%}"
        time.sleep(0.05)
    return job


def eventually(check: Callable[[], Any], timeout: float, what: str) -> None:
    """Poll `check()` until it is true; fails the test with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not {what} after {timeout}s"
        time.sleep(0.02)


def fill(collection, base: np.ndarray, rows, batch: int = 1000) -> None:
    rows = list(rows)
    for start in range(0, len(rows), batch):
        part = rows[start : start + batch]
        collection.upsert(ids_for(part), base[part], [{"row": r} for r in part])


@pytest.fixture()
def manager(tmp_path):
    with opened(tmp_path) as m:
        yield m


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, glove):
    """hnswlib collection: rows 0..7999 in main, 8000..9999 in fresh."""
    with opened(tmp_path_factory.mktemp("mixed")) as m:
        c = m.create("glove", glove.dim, "cosine", "hnswlib", {})
        fill(c, glove.base, range(8000))
        assert wait(m.start_rebuild("glove")).state == "succeeded"
        fill(c, glove.base, range(8000, 10_000))
        yield c


# ---- the dual index ----


def test_new_items_are_found_before_any_rebuild(manager, glove):
    c = manager.create("fresh", glove.dim, "cosine", "hnswlib", {})
    fill(c, glove.base, range(500))
    assert c.info()["fresh_count"] == 500 and c.info()["main_count"] == 0
    hits = c.search(glove.base[:500], 1)
    assert [h[0][0] for h in hits] == ids_for(range(500))


def test_recall_with_main_and_fresh(mixed, glove):
    info = mixed.info()
    assert (info["count"], info["main_count"], info["fresh_count"]) == (10_000, 8000, 2000)
    assert info["index"]["built"]["kind"] == "hnswlib"
    assert info["index"]["built"]["recall_at_10"] >= RECALL_FLOOR  # measured by the rebuild itself
    results = mixed.search(glove.queries, K)
    assert all(len(hits) == K for hits in results)
    assert recall_at_k(rows_of(results), glove.truth) >= RECALL_FLOOR


def test_exact_equals_brute_force(mixed, glove):
    results = mixed.search(glove.queries[:100], K, exact=True)
    truth_rows, truth_scores = brute_force_knn(glove.base, glove.queries[:100], K, "cosine")
    assert np.array_equal(rows_of(results), truth_rows)
    scores = np.array([[s for _, s in hits] for hits in results])
    np.testing.assert_allclose(scores, truth_scores, atol=1e-5)


def test_exclude_leaves_the_item_out_and_still_returns_k(mixed, glove):
    rows = [3, 8500]  # one in main, one in fresh
    for exact in (False, True):
        results = mixed.search(glove.base[rows], K, exact=exact, exclude=ids_for(rows))
        for row, hits in zip(rows, results):
            assert len(hits) == K and f"g{row}" not in [i for i, _ in hits]


def test_search_params_override_and_unknown_is_an_error(mixed, glove):
    low = mixed.search(glove.queries, K, params={"ef": 10})
    default = mixed.search(glove.queries, K)
    assert recall_at_k(rows_of(low), glove.truth) <= recall_at_k(rows_of(default), glove.truth)
    assert mixed.info()["index"]["search_params"]["ef"] != 10  # for that call only
    with pytest.raises(ValueError, match="nprobe"):
        mixed.search(glove.queries[:1], K, params={"nprobe": 4})


def test_l2_merges_lowest_distance_first(manager, fashion):
    c = manager.create("pixels", fashion.dim, "l2", "hnswlib", {})
    fill(c, fashion.base, range(4000))
    wait(manager.start_rebuild("pixels"))
    fill(c, fashion.base, range(4000, 6000))  # a third in fresh: the merge decides the order
    results = c.search(fashion.queries, K)
    assert recall_at_k(rows_of(results), fashion.truth) >= RECALL_FLOOR
    for hits in results:
        scores = [s for _, s in hits]
        assert scores == sorted(scores)
    exact = c.search(fashion.queries[:50], K, exact=True)
    _, truth_scores = brute_force_knn(fashion.base, fashion.queries[:50], K, "l2")
    np.testing.assert_allclose([[s for _, s in h] for h in exact], truth_scores, rtol=1e-4, atol=1e-3)


def test_deletes_and_replacements_are_never_returned(manager, glove):
    c = manager.create("churn", glove.dim, "cosine", "hnswlib", {})
    fill(c, glove.base, range(3000))
    wait(manager.start_rebuild("churn"))
    deleted, replaced = list(range(0, 3000, 5)), list(range(1, 3000, 5))
    assert c.delete(ids_for(deleted) + ["never-existed"]) == len(deleted)
    new_vectors = glove.base[[r + 5000 for r in replaced]]  # each replaced id gets another row
    c.upsert(ids_for(replaced), new_vectors, [None] * len(replaced))
    info = c.info()
    assert info["count"] == 3000 - len(deleted)
    assert info["fresh_count"] == len(replaced) and info["main_count"] == info["count"] - len(replaced)
    # Query with the old vectors: without the tombstone filter the old items would rank first.
    results = c.search(glove.base[deleted + replaced], K)
    gone = set(ids_for(deleted))
    for hits in results:
        assert len(hits) == K and not gone & {i for i, _ in hits}
    for pos, row in enumerate(replaced):
        hits = dict(results[len(deleted) + pos])
        if f"g{row}" in hits:  # found again, then only through its new vector
            a, b = glove.base[row], new_vectors[pos]
            assert hits[f"g{row}"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-5)
    with pytest.raises(NotFound):
        c.get("g0")
    assert np.array_equal(c.get("g1")[0], new_vectors[0])
    assert c.get("g2")[1] == {"row": 2}


def test_concurrent_upserts_of_the_same_ids_stay_consistent(manager):
    c = manager.create("racing", 50, "cosine", "flat", {})
    # Random rows: no two are equal, so a search with an item's own vector has exactly one
    # answer at score 1.0, the item itself (GloVe repeats some rows; a tie would hide a bug).
    rows_of_thread = np.random.default_rng(7).standard_normal((6, 300, 50)).astype(np.float32)
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for i in range(30):  # ids 0..99 written by every thread, each with its own rows
                rows = rows_of_thread[t, i * 10 : i * 10 + 10]
                c.upsert([f"x{(i * 10 + j) % 100}" for j in range(10)], rows, [{"t": t}] * 10)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    shard = c._shards[0]
    view = shard.labels.view()
    live = view.live_labels()
    assert c.info()["count"] == 100 == len(shard.fresh) == len(live)
    # Memory and the store agree on which label each id has now...
    with shard.store.snapshot() as snap:
        ((labels, ids, _),) = snap.chunks()
    assert dict(zip(labels.tolist(), ids)) == dict(zip(live.tolist(), view.ids(live)))
    # ...and on its final vector: the store's vector finds its own id first, at score 1.
    for n in range(100):
        vector, _ = c.get(f"x{n}")
        assert any(np.array_equal(vector, row) for row in rows_of_thread.reshape(-1, 50))
        (top_id, score), *_ = c.search(vector, 2)[0]
        assert top_id == f"x{n}" and score == pytest.approx(1.0, abs=1e-5)


def test_rebuild_drains_fresh_exactly_while_writes_and_searches_go_on(manager, glove):
    c = manager.create("busy", glove.dim, "cosine", "hnswlib", {})
    fill(c, glove.base, range(4000))
    errors: list[BaseException] = []
    stop = threading.Event()

    def search_loop() -> None:
        try:
            while not stop.is_set():
                for hits in c.search(glove.queries[:20], K):
                    assert len(hits) == K
        except BaseException as exc:
            errors.append(exc)

    searchers = [threading.Thread(target=search_loop) for _ in range(2)]
    for t in searchers:
        t.start()
    job = manager.start_rebuild("busy")
    written = 4000
    # Write while the rebuild runs (bounded by the rows there are: a slow machine rebuilds slowly).
    while (job.state in ("queued", "running") and written + 50 <= len(glove.base)) or written < 4400:
        fill(c, glove.base, range(written, written + 50))
        written += 50
    stop.set()
    for t in searchers:
        t.join()
    assert wait(job).state == "succeeded" and not errors, errors
    shard = c._shards[0]
    info = c.info()
    assert info["count"] == written
    # fresh holds exactly the writes after the snapshot: every live label above main_max.
    after_snapshot = len(shard.labels.view().live_labels(after=shard.main_max))
    assert 0 < info["fresh_count"] == after_snapshot and info["main_count"] == written - after_snapshot
    assert wait(manager.start_rebuild("busy")).state == "succeeded"
    assert (c.info()["fresh_count"], c.info()["main_count"]) == (0, written)


def test_one_rebuild_at_a_time(manager, glove):
    c = manager.create("once", glove.dim, "cosine", "hnswlib", {})
    fill(c, glove.base, range(3000))
    job = manager.start_rebuild("once")
    with pytest.raises(Conflict, match="already has a rebuild"):
        manager.start_rebuild("once")
    assert wait(job).to_dict()["state"] == "succeeded"
    assert manager.jobs.get(job.id) is job
    with pytest.raises(NotFound):
        manager.jobs.get("nope")


def test_fresh_limit_triggers_a_rebuild(tmp_path, glove):
    with opened(tmp_path, fresh_limit=1000) as m:
        c = m.create("auto-trigger", glove.dim, "cosine", "flat", {})
        fill(c, glove.base, range(1500), batch=500)
        # The rebuild may be over before any check here could see it active: watch its outcome
        # instead (main only grows through a rebuild that succeeded).
        eventually(lambda: c.info()["main_count"] >= 1001, 120, "rebuilt by the fresh limit")
        assert c.info()["main_count"] >= 1001


def test_many_deletes_trigger_a_compacting_rebuild(manager, glove):
    c = manager.create("compact", glove.dim, "cosine", "flat", {})
    fill(c, glove.base, range(4000))
    wait(manager.start_rebuild("compact"))
    c.delete(ids_for(range(900)))
    assert c.info()["tombstone_count"] == 900 and manager.jobs.active("compact") is None
    c.delete(ids_for(range(900, 1200)))  # 1200 of 4000: past the 25% share
    # As above, the compacting rebuild may finish before `jobs.active` could see it: watch the
    # tombstones go, which only a rebuild that succeeded does.
    eventually(lambda: c.info()["tombstone_count"] == 0, 120, "compacted")
    info = c.info()
    assert (info["count"], info["main_count"], info["tombstone_count"]) == (2800, 2800, 0)


def test_interval_rebuilds_collections_with_fresh_items(tmp_path, glove):
    with opened(tmp_path, rebuild_interval_seconds=0.2) as m:
        c = m.create("timer", glove.dim, "cosine", "flat", {})
        fill(c, glove.base, range(300))
        deadline = time.monotonic() + 30
        while c.info()["fresh_count"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.info()["main_count"] == 300


@contextmanager
def held_train(monkeypatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Every index a rebuild creates blocks in `train` until `release` is set (`entered` says
    one got there): a rebuild that is surely running, for as long as a test needs."""
    entered, release = threading.Event(), threading.Event()
    real = build.create_index

    def create(*args, **kwargs):
        index = real(*args, **kwargs)
        train = index.train

        def slow_train(x):
            entered.set()
            assert release.wait(120), "train never released"
            train(x)

        index.train = slow_train
        return index

    monkeypatch.setattr(build, "create_index", create)
    try:
        yield entered, release
    finally:
        release.set()


def test_close_during_a_rebuild_stops_it_and_installs_nothing(tmp_path, glove, monkeypatch):
    with opened(tmp_path) as m, held_train(monkeypatch) as (entered, release):
        c = m.create("closing", glove.dim, "cosine", "hnswlib", {})
        fill(c, glove.base, range(3000))
        job = m.start_rebuild("closing")
        assert entered.wait(60), f"the rebuild never reached train ({job.state})"
        closer = threading.Thread(target=m.close)
        closer.start()
        eventually(lambda: c._stop.is_set(), 10, "asked to stop")
        release.set()  # train returns; the next safe point sees the stop
        closer.join(60)
        assert not closer.is_alive()
        assert job.state == "failed" and "stopped" in job.error, job.to_dict()
    shard_dir = tmp_path / "collections" / "closing" / "shard-0"
    assert not list(shard_dir.glob("main-*")) and not list((tmp_path / "collections").glob(".build-*"))
    with opened(tmp_path) as m:
        info = m.get("closing").info()
        assert info["count"] == 3000 and info["index"]["built"] is None


def test_a_kind_that_cannot_be_built_fails_the_job_not_the_service(manager, glove):
    c = manager.create("tiny", glove.dim, "cosine", "ivf_flat", {"nlist": 64})  # 64 cells, 20 points
    fill(c, glove.base, range(20))
    job = wait(manager.start_rebuild("tiny"))
    assert job.state == "failed" and "'tiny'" in job.error and "20 items" in job.error
    assert c.info()["fresh_count"] == 20
    assert c.search(glove.base[:1], 1)[0][0][0] == "g0"


# ---- restart and recovery ----


def test_restart_restores_counts_and_answers(tmp_path, glove):
    with opened(tmp_path) as m:
        c = m.create("keep", glove.dim, "cosine", "hnswlib", {}, shards=2)
        fill(c, glove.base, range(3000))
        wait(m.start_rebuild("keep"))
        fill(c, glove.base, range(3000, 3500))
        c.delete(ids_for(range(0, 100)))
        before_info, before = c.info(), c.search(glove.queries, K)
        m.close()
        m.close()  # idempotent (and `opened` closes once more)

    with opened(tmp_path) as m:
        c = m.get("keep")
        info = c.info()
        for key in ("count", "main_count", "fresh_count", "index", "shards"):
            assert info[key] == before_info[key]
        assert c.search(glove.queries, K) == before


def test_a_corrupt_index_file_is_rebuilt_from_the_store(tmp_path, glove):
    with opened(tmp_path) as m:
        c = m.create("hurt", glove.dim, "cosine", "hnswlib", {})
        fill(c, glove.base, range(3000))
        wait(m.start_rebuild("hurt"))
    (index_file,) = (tmp_path / "collections" / "hurt" / "shard-0").glob("main-*.idx")
    index_file.write_bytes(b"not an index" * 100)

    with opened(tmp_path) as m:
        c = m.get("hurt")
        assert c.info()["count"] == 3000
        hits = c.search(glove.base[:200], 1)  # served meanwhile, from fresh or the new main
        assert [h[0][0] for h in hits] == ids_for(range(200))
        # The rebuild scheduled at open may already be done (polling `jobs.active` would race
        # it): its outcome is a main index over every item again.
        eventually(lambda: c.info()["main_count"] == 3000, 120, "rebuilt from the store")
        assert c.info()["index"]["built"] is not None
        assert index_file.read_bytes() != b"not an index" * 100


# Durability. Killing a process cannot simulate power loss: the kernel still holds what the
# process wrote and writes it out later, so a write acknowledged with synchronous=OFF survives a
# SIGKILL as well as one with FULL. What can be checked is the setting itself (on every
# connection) and the fsync behaviour (strace: each acknowledgement comes after an fsync of the
# WAL that holds its write); the kill test then checks acknowledged means committed and whole.

WRITER = """
import sys, numpy as np
from annserve.engine.manager import CollectionManager
from annserve.settings import Settings
m = CollectionManager(Settings(data_dir=sys.argv[1]))
m.open()
c = m.create("crash", 50, "l2", "flat", {}, shards=2)
batches = int(sys.argv[2])
for b in range(batches or 10**9):
    x = np.arange(b * 100 * 50, (b + 1) * 100 * 50, dtype=np.float32).reshape(100, 50)
    c.upsert([f"b{b}-{i}" for i in range(100)], x, [{"b": b, "i": i} for i in range(100)])
    print(f"ACK {b}", flush=True)  # the caller's answer: only after upsert returned
"""


def test_every_store_connection_syncs_fully(manager, glove):
    c = manager.create("sync", glove.dim, "cosine", "flat", {}, shards=2)
    fill(c, glove.base, range(200))
    c.get("g1"), c.search(glove.queries[:3], K, exact=True)  # readers join the pools
    for shard in c._shards:
        modes, syncs = shard.store.pragma("journal_mode"), shard.store.pragma("synchronous")
        assert len(syncs) >= 2 and modes == ["wal"] * len(syncs) and syncs == [2] * len(syncs)  # FULL


def test_each_acknowledged_write_was_fsynced_first(tmp_path):
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed: cannot watch the fsync calls")
    trace = tmp_path / "trace"
    cmd = [strace, "-f", "-y", "-e", "trace=pwrite64,write,fsync,fdatasync", "-o", str(trace),
           sys.executable, "-c", WRITER, str(tmp_path / "data"), "4"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["ACK", "0", "ACK", "1", "ACK", "2", "ACK", "3"]
    dirty: set[str] = set()  # WAL files written since their last completed fsync
    syncing: dict[str, str] = {}  # pid -> the WAL whose fsync has not returned yet
    acks = 0
    for line in trace.read_text().splitlines():
        pid = line.split(" ", 1)[0]
        wal = next((w for w in line.split("<")[1:2] if "-wal>" in w), None)
        wal = wal.split(">")[0] if wal else None
        if wal and ("pwrite64(" in line or "write(" in line):
            dirty.add(wal)
        elif wal and ("fdatasync(" in line or "fsync(" in line):
            if "unfinished" in line:
                syncing[pid] = wal
            elif line.rstrip().endswith("= 0"):
                dirty.discard(wal)
        elif "resumed>" in line and "sync" in line and pid in syncing and line.rstrip().endswith("= 0"):
            dirty.discard(syncing.pop(pid))
        elif "write(1<" in line and '"ACK ' in line:
            assert not dirty, f"ACK {acks} answered before an fsync of {sorted(dirty)}"
            acks += 1
    assert acks == 4, [line for line in trace.read_text().splitlines() if "ACK" in line]


def test_an_acknowledged_write_survives_a_killed_process(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "0"], stdout=subprocess.PIPE, text=True)
    try:
        acked = [int(child.stdout.readline().split()[1]) for _ in range(3)]
    finally:
        os.kill(child.pid, signal.SIGKILL)  # mid-way through the next batch, most likely
        child.wait(30)
    assert acked == [0, 1, 2]
    with opened(tmp_path) as m:
        c = m.get("crash")
        for b in acked:
            assert c.get(f"b{b}-99")[1] == {"b": b, "i": 99}
        count = c.info()["count"]
        # The batch in flight is per shard all there or not at all (one transaction each).
        assert 300 <= count <= 400, count


# ---- shards and auto ----


def test_three_shards_answer_like_one(manager, glove):
    one = manager.create("one", glove.dim, "cosine", "flat", {})
    three = manager.create("three", glove.dim, "cosine", "flat", {}, shards=3)
    for c in (one, three):
        fill(c, glove.base, range(3000))
        wait(manager.start_rebuild(c.name))
        fill(c, glove.base, range(3000, 4000))
        c.delete(ids_for(range(0, 4000, 7)))
    sizes = [s.counts().live for s in three._shards]
    assert sum(sizes) == one.info()["count"] and min(sizes) > 0.25 * sum(sizes)
    for exact in (True, False):
        a = one.search(glove.queries, K, exact=exact)
        b = three.search(glove.queries, K, exact=exact)
        assert [[i for i, _ in h] for h in a] == [[i for i, _ in h] for h in b]
        np.testing.assert_allclose([[s for _, s in h] for h in a], [[s for _, s in h] for h in b], atol=1e-5)


def test_auto_picks_flat_for_a_small_collection(manager, glove):
    c = manager.create("picky", glove.dim, "cosine", "auto", {})
    assert c.info()["index"]["built"] is None
    fill(c, glove.base, range(2000))
    wait(manager.start_rebuild("picky"))
    info = c.info()
    assert info["index"]["kind"] == "auto" and info["index"]["built"]["kind"] == "flat"
    assert info["index"]["built"]["recall_at_10"] == 1.0
    with pytest.raises(ValueError, match="'flat'"):
        c.search(glove.queries[:1], K, params={"ef": 50})  # checked against what auto built


def test_auto_picks_by_size_and_budget():
    from annserve.engine.auto import pick_kind

    assert pick_kind(99_999, 384, 0)[0] == "flat"
    assert pick_kind(1_000_000, 384, 0)[0] == "hnswlib"
    # 1.5 GB of vectors over a 1 GB budget: 8-bit re-ranking copies, not float32 ones.
    assert pick_kind(1_000_000, 384, 10**9) == ("ivf_pq", {"refine": "sq8"})


# ---- the manager and input checks ----


def test_collections_are_listed_found_and_deleted(manager, glove, tmp_path):
    manager.create("a", 4, "l2", "flat", {})
    manager.create("b", 4, "ip", "flat", {})
    with pytest.raises(Conflict):
        manager.create("a", 4, "l2", "flat", {})
    assert [c.name for c in manager.list()] == ["a", "b"]
    manager.delete("a")
    assert not (tmp_path / "collections" / "a").exists()
    with pytest.raises(NotFound):
        manager.get("a")
    with pytest.raises(NotFound):
        manager.delete("a")
    with pytest.raises(NotFound):
        manager.start_rebuild("a")


@pytest.mark.parametrize(
    "args, message",
    [
        (("../x", 4, "l2", "flat", {}), "name"),
        (("x", 0, "l2", "flat", {}), "from 1 to 4096, got 0"),
        (("x", 5000, "l2", "flat", {}), "from 1 to 4096, got 5000"),
        (("x", 4, "hamming", "flat", {}), "metric.*'hamming'"),
        (("x", 4, "l2", "kdtree", {}), "unknown index kind 'kdtree'"),
        (("x", 4, "l2", "hnswlib", {"ef": 3}), r"unknown build parameter\(s\) \['ef'\]"),
        (("x", 4, "l2", "auto", {"M": 3}), "auto"),
        (("x", 4, "l2", "flat", {}, 0), "shards: expected an integer >= 1, got 0"),
    ],
)
def test_bad_collection_specs(manager, args, message):
    with pytest.raises(ValueError, match=message):
        manager.create(*args)


def test_bad_items_and_queries(manager):
    c = manager.create("checks", 4, "cosine", "flat", {})
    ok = np.ones((2, 4), dtype=np.float32)
    cases = [
        (lambda: c.upsert(["a", "b"], np.ones((2, 3)), [None, None]), "collection 'checks' has dim 4, got 3"),
        (lambda: c.upsert(["a"], ok, [None]), "1 ids, 2 vectors, 1 payloads"),
        (lambda: c.upsert(["a", ""], ok, [None, None]), "position 1.*1 to 256 characters, got 0"),
        (lambda: c.upsert(["a", "x" * 257], ok, [None, None]), "got 257 characters"),
        (lambda: c.upsert(["a", "b"], np.array([[1, 2, np.nan, 4], [1, 1, 1, np.inf]]), [None, None]),
         "2 NaN/Inf values in 2 rows"),
        (lambda: c.upsert(["a", "b"], np.array([[1, 2, 3, 4], [0, 0, 0, 0]]), [None, None]),
         "1 all-zero rows"),
        (lambda: c.upsert(["a", "b"], ok, [None, [1]]), "payload at position 1"),
        (lambda: c.search(np.ones((1, 5)), 3), "has dim 4, got 5"),
        (lambda: c.search(ok, 0), "k: expected an integer >= 1, got 0"),
        (lambda: c.search(ok, 3, exclude=["a"]), "expected 2 entries.*got 1"),
        (lambda: c.search(ok, 3, params={"nprobe": 2}), r"unknown search parameter\(s\) \['nprobe'\]"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert c.info()["count"] == 0
    assert c.search(ok, 3) == [[], []]  # empty collection
    assert c.upsert(["a", "a"], np.array([[1, 0, 0, 0], [0, 1, 0, 0]]), [None, {"v": 2}]) == 1
    assert c.get("a")[1] == {"v": 2}  # last occurrence wins


def test_a_big_search_of_one_shard_is_split_over_threads_and_answers_row_by_row(mixed, glove, monkeypatch):
    import annserve.engine.collection as collection_module
    from annserve.engine.shard import Shard

    monkeypatch.setattr(collection_module, "CORES", 2)
    monkeypatch.setattr(collection_module, "SPLIT_ABOVE_SECONDS", 0.0)  # split whatever the machine's speed
    threads: set[str] = set()
    search = Shard.search

    def recording(self, *args, **kwargs):
        threads.add(threading.current_thread().name)
        return search(self, *args, **kwargs)

    monkeypatch.setattr(Shard, "search", recording)
    queries = glove.queries[:200]
    # Two queries in three leave out their nearest item, which each piece must do for its own rows.
    nearest = [mixed.search(queries[q : q + 1], 1)[0][0][0] for q in range(200)]
    exclude = [nearest[q] if q % 3 else None for q in range(200)]
    alone = [mixed.search(queries[q : q + 1], K, exclude=[exclude[q]], score_threshold=0.3)[0] for q in range(200)]
    threads.clear()
    together = mixed.search(queries, K, exclude=exclude, score_threshold=0.3)
    assert len(threads) == 2, threads  # this thread and a search thread, a piece each
    assert together == alone


def test_one_process_cuts_its_deaths_log_after_a_rebuild_and_serves_as_before(tmp_path, glove):
    import sqlite3

    def deaths_rows() -> int:
        with sqlite3.connect(tmp_path / "collections" / "cut" / "shard-0" / "store.sqlite") as conn:
            return conn.execute("SELECT count(*) FROM deaths").fetchone()[0]

    with opened(tmp_path) as m:
        c = m.create("cut", glove.dim, "cosine", "flat", {})
        fill(c, glove.base, range(5000))
        c.delete(ids_for(range(0, 1200)))
        c.upsert(ids_for(range(1200, 2400)), glove.base[6000:7200], [None] * 1200)  # replacements
        assert deaths_rows() == 2400
        wait(m.start_rebuild("cut"))
        assert deaths_rows() == 0
        c.delete(ids_for(range(2400, 2900)))  # below the cut's minimum: kept until there are more
        wait(m.start_rebuild("cut"))
        assert deaths_rows() == 500
        before = c.search(glove.queries[:50], K)
    with opened(tmp_path) as m:  # a restart needs none of it: the store holds the live items
        c = m.get("cut")
        assert c.info()["count"] == 5000 - 1200 - 500
        assert c.search(glove.queries[:50], K) == before
        hits = c.search(glove.base[6000:6001], 1)
        assert hits[0][0][0] == "g1200"

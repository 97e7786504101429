"""`annserve serve --workers 2`: real processes on one loopback port over one data directory.

Every check is made on each worker explicitly: a request goes out on new connections until
every worker (the `x-annserve-worker` header, its pid) has answered it.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import numpy as np
import pytest

from annserve.bench.server_process import ServeProcess
from conftest import wait_job

WORKERS = 2


@pytest.fixture()
def server(tmp_path):
    # The fresh limit is high: the test decides when a rebuild runs.
    proc = ServeProcess(tmp_path / "data", tmp_path / "server.log", {"ANNSERVE_FRESH_LIMIT": "100000"}, WORKERS)
    client = proc.start()
    try:
        yield proc
    finally:
        client.close()
        proc.stop()


def on_each_worker(url: str, method: str, path: str, tries: int = 400, **kwargs) -> dict[str, httpx.Response]:
    """The answer of every worker to one request: pid -> response."""
    answers: dict[str, httpx.Response] = {}
    for _ in range(tries):
        with httpx.Client(base_url=url, timeout=30) as c:  # a new connection: any worker may take it
            r = c.request(method, path, **kwargs)
        answers.setdefault(r.headers["x-annserve-worker"], r)
        if len(answers) == WORKERS:
            return answers
    raise AssertionError(f"only workers {sorted(answers)} answered {method} {path} in {tries} connections")


def upsert(url: str, ids, vectors) -> str:
    """Upsert on a new connection; the pid of the worker that acknowledged it."""
    items = [{"id": i, "vector": v.tolist()} for i, v in zip(ids, vectors)]
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/collections/w/vectors", json={"items": items})
    assert r.status_code == 200, r.text
    return r.headers["x-annserve-worker"]


def nearest(answers: dict[str, httpx.Response]) -> set[str]:
    """The top id each worker answered (one value when they agree)."""
    for r in answers.values():
        assert r.status_code == 200, r.text
    return {r.json()["results"][0]["id"] if r.json()["results"] else None for r in answers.values()}


def test_every_acknowledged_write_is_found_by_the_next_search_on_every_worker(server, glove):
    url = server.url
    r = httpx.post(f"{url}/collections", json={"name": "w", "dim": glove.dim, "metric": "cosine",
                                               "index": {"kind": "hnswlib"}})  # fmt: skip
    assert r.status_code == 201, r.text
    acked_by = set()
    for lo in range(0, 2000, 500):
        acked_by.add(upsert(url, [f"i{i}" for i in range(lo, lo + 500)], glove.base[lo : lo + 500]))
    # A main built by one worker, loaded by the other; then writes on top of it land in fresh.
    job = httpx.post(f"{url}/collections/w/rebuild").json()
    assert wait_job(httpx.Client(base_url=url), job["job_id"])["state"] == "succeeded"
    for round_no in range(12):
        row = 3000 + round_no
        # insert: a new id, searched by its own vector
        acked_by.add(upsert(url, [f"new{round_no}"], glove.base[row : row + 1]))
        body = {"vector": glove.base[row].tolist(), "k": 1}
        assert nearest(on_each_worker(url, "POST", "/collections/w/search", json=body)) == {f"new{round_no}"}
        # replace: an id of main gets another vector; its old vector no longer finds it
        old = glove.base[round_no]
        acked_by.add(upsert(url, [f"i{round_no}"], glove.base[row + 100 : row + 101]))
        body = {"vector": glove.base[row + 100].tolist(), "k": 1}
        assert nearest(on_each_worker(url, "POST", "/collections/w/search", json=body)) == {f"i{round_no}"}
        body = {"vector": old.tolist(), "k": 1}
        assert f"i{round_no}" not in nearest(on_each_worker(url, "POST", "/collections/w/search", json=body))
        # delete: gone from every worker's answers at once
        with httpx.Client(base_url=url, timeout=30) as c:
            d = c.post("/collections/w/vectors/delete", json={"ids": [f"new{round_no}"]})
        assert d.json() == {"deleted": 1}
        body = {"vector": glove.base[row].tolist(), "k": 1}
        assert f"new{round_no}" not in nearest(on_each_worker(url, "POST", "/collections/w/search", json=body))
    assert len(acked_by) == WORKERS, f"every write went to one worker ({acked_by}): the test proves nothing"
    counts = {pid: r.json()["count"] for pid, r in on_each_worker(url, "GET", "/collections/w").items()}
    assert set(counts.values()) == {2000}, counts


def test_collections_and_jobs_answer_the_same_on_every_worker(server, glove):
    url = server.url
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.post("/collections", json={"name": "w", "dim": glove.dim, "metric": "cosine",
                                            "index": {"kind": "hnswlib"}}).status_code == 201  # fmt: skip
    assert {r.status_code for r in on_each_worker(url, "GET", "/collections/w").values()} == {200}
    upsert(url, [f"i{i}" for i in range(3000)], glove.base[:3000])
    with httpx.Client(base_url=url, timeout=30) as c:
        job_id = c.post("/collections/w/rebuild").json()["job_id"]
        wait_job(c, job_id)
    answers = on_each_worker(url, "GET", f"/jobs/{job_id}")
    jobs = [r.json() for r in answers.values()]
    assert all(j["state"] == "succeeded" and j["id"] == job_id for j in jobs), jobs
    assert len({(j["state"], j["progress"], j["recall"], j["finished_at"]) for j in jobs}) == 1, jobs
    # Every worker serves the new main (loaded by the one that did not build it).
    deadline = time.monotonic() + 30
    while True:
        infos = [r.json() for r in on_each_worker(url, "GET", "/collections/w").values()]
        if all(i["main_count"] == 3000 and i["fresh_count"] == 0 for i in infos):
            break
        assert time.monotonic() < deadline, infos
        time.sleep(0.2)
    # Deleted on one worker: gone on every worker; created again: a new, empty collection on all.
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.delete("/collections/w").status_code == 200
    assert {r.status_code for r in on_each_worker(url, "GET", "/collections/w").values()} == {404}
    with httpx.Client(base_url=url, timeout=30) as c:
        assert c.post("/collections", json={"name": "w", "dim": 4, "metric": "l2"}).status_code == 201
    infos = [r.json() for r in on_each_worker(url, "GET", "/collections/w").values()]
    assert all(i["dim"] == 4 and i["count"] == 0 for i in infos), infos


def test_metrics_sum_every_worker(server, glove):
    url = server.url
    with httpx.Client(base_url=url, timeout=30) as c:
        c.post("/collections", json={"name": "w", "dim": glove.dim, "metric": "cosine"}).raise_for_status()
    upsert(url, ["a"], glove.base[:1])
    sent = 0
    for _ in range(40):
        with httpx.Client(base_url=url, timeout=30) as c:
            c.post("/collections/w/search", json={"vector": glove.base[0].tolist(), "k": 1}).raise_for_status()
            sent += 1
    for r in on_each_worker(url, "GET", "/metrics").values():
        line = next(x for x in r.text.splitlines() if x.startswith("annserve_requests_total{")
                    and 'route="/collections/{name}/search"' in x)  # fmt: skip
        assert float(line.rsplit(" ", 1)[1]) == sent, line


def test_kill_9_of_a_worker_loses_nothing_and_it_is_replaced(server, glove):
    url = server.url
    with httpx.Client(base_url=url, timeout=30) as c:
        c.post("/collections", json={"name": "w", "dim": glove.dim, "metric": "cosine"}).raise_for_status()
    acked = []
    for i in range(40):
        upsert(url, [f"i{i}"], glove.base[i : i + 1])
        acked.append(i)
    before = set(on_each_worker(url, "GET", "/healthz"))
    victim = int(sorted(before)[0])
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        try:
            now = set(on_each_worker(url, "GET", "/readyz", tries=100))
            if str(victim) not in now and len(now) == WORKERS:
                break
        except (AssertionError, httpx.HTTPError, KeyError):
            pass
        assert time.monotonic() < deadline, "the killed worker was not replaced within 60 s"
        time.sleep(0.2)
    for i in acked:
        body = {"vector": glove.base[i].tolist(), "k": 1}
        assert nearest(on_each_worker(url, "POST", "/collections/w/search", json=body)) == {f"i{i}"}
    assert np.isfinite(server.cpu_seconds())


# ---- one coherent set of engine figures, whatever worker answers (engine/worker_stats.py) ----


@pytest.fixture()
def sampled_server(tmp_path):
    """Two workers that sample every search for recall."""
    env = {"ANNSERVE_FRESH_LIMIT": "100000", "ANNSERVE_RECALL_SAMPLE_RATE": "1.0"}
    proc = ServeProcess(tmp_path / "data", tmp_path / "server.log", env, WORKERS)
    proc.start().close()
    try:
        yield proc
    finally:
        proc.stop()


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of the series `name` with exactly `labels` in a /metrics text (None if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{want}}} " if want else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return None


def until(check, seconds: float = 20.0):
    """Call `check()` until it returns without AssertionError (its last error after `seconds`)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def fill_and_build(url: str, glove, rows: int) -> None:
    """Collection `w` (hnswlib, ef 10 so that recall is well under 1) with `rows` GloVe rows,
    rebuilt, its main loaded by every worker."""
    with httpx.Client(base_url=url, timeout=60) as c:
        c.post("/collections", json={"name": "w", "dim": glove.dim, "metric": "cosine",
                                     "index": {"kind": "hnswlib"}}).raise_for_status()  # fmt: skip
    for lo in range(0, rows, 1000):
        upsert(url, [f"i{i}" for i in range(lo, min(lo + 1000, rows))], glove.base[lo : min(lo + 1000, rows)])
    with httpx.Client(base_url=url, timeout=60) as c:
        assert wait_job(c, c.post("/collections/w/rebuild").json()["job_id"])["state"] == "succeeded"
        c.patch("/collections/w", json={"search_params": {"ef": 10}}).raise_for_status()

    def every_worker_serves_the_main():
        infos = [r.json() for r in on_each_worker(url, "GET", "/collections/w").values()]
        assert all(i["main_count"] == rows and i["fresh_count"] == 0 for i in infos), infos

    until(every_worker_serves_the_main, 60)


def search_spread(url: str, glove, first: int, count: int) -> tuple[set[str], list[float]]:
    """Search queries first, first + 1, ... each on a new connection: `count` of them, and more
    until every worker answered one (which worker accepts a connection is the kernel's pick).
    The workers that answered, and each answer's recall@10 against the exact top 10
    (tests/data's ground truth over all 10K rows)."""
    answered_by, recalls = set(), []
    q = first
    while len(recalls) < count or len(answered_by) < WORKERS:
        assert len(recalls) < count + 400, f"only workers {answered_by} answered {len(recalls)} searches"
        with httpx.Client(base_url=url, timeout=30) as c:
            r = c.post("/collections/w/search", json={"vector": glove.queries[q].tolist(), "k": 10})
        assert r.status_code == 200, r.text
        answered_by.add(r.headers["x-annserve-worker"])
        got = {hit["id"] for hit in r.json()["results"]}
        recalls.append(len(got & {f"i{row}" for row in glove.truth[q]}) / 10)
        q = (q + 1) % len(glove.queries)
    return answered_by, recalls


def test_every_worker_answers_the_same_summed_counters_and_recall(sampled_server, glove):
    url = sampled_server.url
    rows = len(glove.base)
    fill_and_build(url, glove, rows)
    answered_by, recalls = search_spread(url, glove, 0, 200)
    sent = len(recalls)
    with httpx.Client(base_url=url, timeout=30) as c:
        deleted = c.post("/collections/w/vectors/delete", json={"ids": ["i0", "i1", "i2"]}).json()["deleted"]
    assert deleted == 3
    expected_recall = float(np.mean(recalls))
    assert expected_recall < 0.99, f"recall {expected_recall}: ef=10 should miss some, or the test proves little"

    def metrics_agree():
        texts = {pid: r.text for pid, r in on_each_worker(url, "GET", "/metrics").items()}
        for pid, text in texts.items():
            seen = {name: metric(text, name, collection="w") for name in (
                "annserve_searches_total", "annserve_search_queries_total", "annserve_upserted_items_total",
                "annserve_deleted_items_total", "annserve_rebuilds_total", "annserve_recall_samples_total",
                "annserve_recall_window_samples")}  # fmt: skip
            assert seen == {
                "annserve_searches_total": sent, "annserve_search_queries_total": sent,
                "annserve_upserted_items_total": rows, "annserve_deleted_items_total": 3,
                "annserve_rebuilds_total": 1, "annserve_recall_samples_total": sent,
                "annserve_recall_window_samples": sent,
            }, (pid, seen)
            assert metric(text, "annserve_recall_query_ratio_count", collection="w") == sent, pid
            # Gauges of the shard's state: the answering worker's, caught up with the delete.
            assert metric(text, "annserve_collection_items", collection="w", shard="0", part="main") == rows - 3
        figures = {pid: metric(text, "annserve_recall_ratio", collection="w") for pid, text in texts.items()}
        assert len(set(figures.values())) == 1, figures
        return next(iter(figures.values()))

    figure = until(metrics_agree)
    # Ties aside (the server counts an id tied with the 10th exact score), the same figure.
    assert abs(figure - expected_recall) < 0.01, (figure, expected_recall)
    answers = {pid: r.json() for pid, r in on_each_worker(url, "GET", "/collections/w/recall").items()}
    assert len({(a["recall_at_k"], a["samples"], a["samples_total"]) for a in answers.values()}) == 1, answers
    assert next(iter(answers.values()))["recall_at_k"] == pytest.approx(figure, abs=1e-6)


def test_memory_of_every_live_worker_is_listed(server):
    url = server.url
    # Every worker has joined once it is ready; before that the first to start may be alone.
    def every_worker_ready():
        assert {r.status_code for r in on_each_worker(url, "GET", "/readyz").values()} == {200}

    until(every_worker_ready)
    answers = on_each_worker(url, "GET", "/metrics")
    pids = set(answers)
    for pid, r in answers.items():
        listed = {p: metric(r.text, "annserve_worker_resident_memory_bytes", pid=p) for p in pids}
        assert all(v is not None and v > 20 * 2**20 for v in listed.values()), (pid, listed)
        assert r.text.count("annserve_worker_resident_memory_bytes{") == WORKERS, r.text
    for pid, r in on_each_worker(url, "GET", "/workers").items():
        body = r.json()
        assert body["answered_by"] == int(pid)
        assert {str(w["pid"]) for w in body["workers"]} == pids, body
        assert all(w["resident_memory_bytes"] > 20 * 2**20 for w in body["workers"]), body


def test_kill_9_of_a_worker_keeps_its_counts_and_a_restart_starts_at_zero(sampled_server, glove):
    url = sampled_server.url
    fill_and_build(url, glove, 2000)
    answered_by, recalls = search_spread(url, glove, 0, 60)
    sent = len(recalls)

    def counted(searches: int):
        def check():
            for pid, r in on_each_worker(sampled_server.url, "GET", "/metrics").items():
                assert metric(r.text, "annserve_searches_total", collection="w") == searches, pid
                assert metric(r.text, "annserve_recall_samples_total", collection="w") == searches, pid
        return check

    until(counted(sent))  # every worker published what it counted
    victim = int(sorted(answered_by)[0])
    os.kill(victim, signal.SIGKILL)

    def replaced():
        now = set(on_each_worker(url, "GET", "/readyz", tries=100))
        assert str(victim) not in now and len(now) == WORKERS, now

    until(replaced, 60)
    until(counted(sent))  # the dead worker's searches still count
    _, more = search_spread(url, glove, sent, 20)
    until(counted(sent + len(more)))
    workers = {w["pid"] for r in on_each_worker(url, "GET", "/workers").values() for w in r.json()["workers"]}
    assert victim not in workers and len(workers) == WORKERS, workers
    # The service restarted on the same data directory counts from zero.
    sampled_server.stop()
    sampled_server.start().close()
    until(counted(0))


def _hold_membership(data_dir, ready, done) -> None:
    """A worker that has started (locked its `.alive` file) but not joined yet."""
    from annserve.engine.coordination import Coordination

    coordination = Coordination(data_dir)
    ready.set()
    done.wait(30)
    coordination.close()


def test_the_first_worker_to_join_keeps_the_membership_of_one_started_with_it(tmp_path):
    """Two workers start at once: the one that joins first finds itself alone and clears what
    dead processes left, never the file of the one that has not joined yet (it would pass for
    dead: its jobs failed, its memory unlisted)."""
    import multiprocessing

    from annserve.engine.coordination import Coordination

    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    other = context.Process(target=_hold_membership, args=(tmp_path, ready, done))
    other.start()
    try:
        assert ready.wait(60)
        (tmp_path / "workers" / "999999999.alive").touch()  # a dead process's leftover
        first = Coordination(tmp_path)
        try:
            assert first.join() is True
            assert first.alive_pids() == sorted([first.pid, other.pid])
            assert not (tmp_path / "workers" / "999999999.alive").exists()
        finally:
            first.close()
    finally:
        done.set()
        other.join(30)


def deaths_rows(data_dir, collection: str = "w") -> int:
    """Rows of the deaths log of `collection`'s shard 0, read from the store file itself."""
    import sqlite3

    path = data_dir / "collections" / collection / "shard-0" / "store.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM deaths").fetchone()[0]


def test_the_deaths_log_is_cut_below_what_every_worker_applied(server, glove):
    url = server.url
    fill_and_build(url, glove, 4000)
    with httpx.Client(base_url=url, timeout=60) as c:
        # 1500 deletes and 1500 replacements, from whichever worker takes each request.
        for lo in range(0, 1500, 250):
            assert c.post("/collections/w/vectors/delete", json={"ids": [f"i{i}" for i in range(lo, lo + 250)]}
                          ).json() == {"deleted": 250}  # fmt: skip
    for lo in range(1500, 3000, 500):
        upsert(url, [f"i{i}" for i in range(lo, lo + 500)], glove.base[lo + 5000 : lo + 5500])
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/collections/w/rebuild")  # 409: the tombstones started one already
        assert r.status_code in (202, 409), r.text
        if r.status_code == 202:
            assert wait_job(c, r.json()["job_id"])["state"] == "succeeded"

    # A rebuild, or the follower every 30 s, cuts the log once every worker has said how far
    # it applied it (kept whole, it holds the 3000 deaths). A cut waits for PRUNE_MIN_DEATHS
    # rows: a rebuild the tombstones started midway may leave fewer than that behind it.
    from annserve.engine.shard import PRUNE_MIN_DEATHS

    def cut():
        assert deaths_rows(server.data_dir) < PRUNE_MIN_DEATHS

    until(cut, 90)
    # Every worker still answers as the writes left it: deleted and replaced ids are gone.
    for row, gone in ((0, "i0"), (1499, "i1499"), (1500, "i1500")):
        body = {"vector": glove.base[row].tolist(), "k": 3}
        for r in on_each_worker(url, "POST", "/collections/w/search", json=body).values():
            assert gone not in {h["id"] for h in r.json()["results"]}
    body = {"vector": glove.base[6500].tolist(), "k": 1}
    assert nearest(on_each_worker(url, "POST", "/collections/w/search", json=body)) == {"i1500"}
    counts = {pid: r.json()["count"] for pid, r in on_each_worker(url, "GET", "/collections/w").items()}
    assert set(counts.values()) == {2500}, counts


def test_a_live_process_that_has_not_said_how_far_it_applied_holds_the_cut(tmp_path):
    from annserve.engine.coordination import DeathFloors

    floors = DeathFloors(tmp_path / "followers", pid=100)
    other = DeathFloors(tmp_path / "followers", pid=200)
    (tmp_path / "followers" / "300").write_text("5")  # a dead process's file
    assert floors.lowest(lambda: [100, 200], own=50) is None  # 200 is alive and silent: loading
    other.publish(0)  # what a process says before it loads the shard
    assert floors.lowest(lambda: [100, 200], own=50) == 0
    other.publish(40)
    assert floors.lowest(lambda: [100, 200], own=50) == 40
    assert floors.lowest(lambda: [100, 200], own=30) == 30
    assert not (tmp_path / "followers" / "300").exists()  # dead: forgotten
    # The live processes are listed after the files are read: one that joins while the files
    # are read, and publishes, is either seen or had not loaded before the read.
    def join_during_the_read():
        DeathFloors(tmp_path / "followers", pid=400).publish(0)
        return [100, 200, 400]

    assert floors.lowest(join_during_the_read, own=50) is None  # 400's file came after the read
    assert floors.lowest(lambda: [100, 200, 400], own=50) == 0

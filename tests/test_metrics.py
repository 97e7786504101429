"""/metrics: what it holds after real traffic (searches, writes, a rebuild, a refused rebuild),
that `promtool check metrics` finds nothing wrong with it, that names and labels follow the
conventions, and what a scrape costs with 100 collections."""

from __future__ import annotations

import statistics
import time

import numpy as np
import orjson
import pytest
from conftest import wait_job, wait_ready
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_tools import promtool

from annserve.api.app import create_app
from annserve.settings import Settings

ALLOWED_LABELS = {"route", "method", "status", "collection", "shard", "part", "kind", "reason", "le"}
SCRAPE_BUDGET_SECONDS = 0.050  # one scrape with 100 collections
ENGINE_FAMILIES = {
    "annserve_collection_items", "annserve_collection_tombstones", "annserve_index_memory_bytes",
    "annserve_searches", "annserve_search_queries", "annserve_search_batch_queries",
    "annserve_upserted_items", "annserve_deleted_items", "annserve_rebuilds",
    "annserve_rebuild_failures", "annserve_rebuild_refusals", "annserve_rebuild_duration_seconds",
    "annserve_rebuild_last_success_timestamp_seconds", "annserve_recall_ratio",
    "annserve_recall_window_samples", "annserve_recall_query_ratio", "annserve_recall_samples",
    "annserve_recall_dropped", "annserve_recall_target_ratio", "annserve_recall_floor_ratio",
    "annserve_recall_last_sample_timestamp_seconds", "annserve_recall_queue_depth",
    "annserve_recall_queue_capacity_samples", "annserve_recall_sample_rate_ratio", "annserve_search_param_ef",
    "annserve_event_loop_lag_seconds", "annserve_requests", "annserve_request_duration_seconds",
}


@pytest.fixture()
def busy(tmp_path, glove):
    """An app after every kind of traffic: two collections (one of 2 shards), searches single
    and batch, upserts, deletes, a rebuild that went in and one the floor refused."""
    settings = Settings(data_dir=tmp_path / "data", recall_sample_rate=1.0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        for name, kind, shards in (("h", "hnswlib", 2), ("f", "flat", 1)):
            body = {"name": name, "dim": 50, "metric": "cosine", "index": {"kind": kind}, "shards": shards}
            assert client.post("/collections", json=body).status_code == 201
            items = [{"id": str(i), "vector": v.tolist()} for i, v in enumerate(glove.base[:2000])]
            for lo in range(0, 2000, 500):
                assert client.post(f"/collections/{name}/vectors", json={"items": items[lo : lo + 500]}).status_code == 200
        assert client.post("/collections/h/vectors/delete", json={"ids": ["1", "2", "3"]}).json() == {"deleted": 3}
        job = client.post("/collections/h/rebuild", json={}).json()["job_id"]
        assert wait_job(client, job)["state"] == "succeeded"
        for q in glove.queries[:30]:
            assert client.post("/collections/h/search", json={"vector": q.tolist()}).status_code == 200
        batch = {"vectors": glove.queries[:20].tolist(), "k": 5}
        assert client.post("/collections/f/search/batch", json=batch).status_code == 200
        # The sampler measures off the request path: wait for it before the rebuild below,
        # which may hold the shard's store while it snapshots and measures.
        for name, sampled in (("h", 30), ("f", 20)):
            deadline = time.monotonic() + 30
            while client.get(f"/collections/{name}/recall").json()["samples_total"] < sampled:
                assert time.monotonic() < deadline, client.get(f"/collections/{name}/recall").json()
                time.sleep(0.02)
        client.patch("/collections/h", json={"recall_target": 1.0, "recall_floor": 1.0, "search_params": {"ef": 10}})
        client.post("/collections/h/vectors", json={"items": items[:10]})
        job = client.post("/collections/h/rebuild", json={}).json()["job_id"]
        assert wait_job(client, job)["state"] == "failed"
        yield client


def test_metrics_pass_promtool_and_hold_the_engine_families(busy):
    text = busy.get("/metrics").text
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert not (checked.stdout + checked.stderr).strip(), checked.stdout + checked.stderr  # no lint warnings
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert ENGINE_FAMILIES <= set(families), ENGINE_FAMILIES - set(families)
    def value(name: str, **labels: str) -> float:
        family = name.removesuffix("_total").removesuffix("_count")
        found = [s.value for s in families[family].samples if s.name == name and s.labels == labels]
        assert len(found) == 1, (name, labels, found)
        return found[0]

    assert value("annserve_collection_items", collection="h", shard="1", part="main") > 0
    assert value("annserve_searches_total", collection="h") == 30
    assert value("annserve_search_queries_total", collection="f") == 20
    assert value("annserve_upserted_items_total", collection="h") == 2010
    assert value("annserve_deleted_items_total", collection="h") == 3
    assert value("annserve_rebuilds_total", collection="h") == 1
    assert value("annserve_rebuild_refusals_total", collection="h", reason="recall_floor") == 1
    assert value("annserve_rebuild_failures_total", collection="h", reason="build_error") == 0
    assert value("annserve_rebuild_duration_seconds_count", collection="h") == 2
    assert value("annserve_recall_target_ratio", collection="h") == 1.0
    assert value("annserve_search_param_ef", collection="h", kind="hnswlib") == 10
    assert value("annserve_collection_tombstones", collection="h", shard="0") >= 0
    assert value("annserve_index_memory_bytes", collection="h", shard="0", part="main") > 0
    assert value("annserve_recall_samples_total", collection="h") == 30


def test_names_and_labels_follow_the_conventions(busy):
    text = busy.get("/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("process_", "python_")):
            continue
        assert family.name.startswith("annserve_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, (family.name, sample.labels)
            # Label values never carry an item id (the ids here are "0".."1999").
            assert not any(v.isdigit() and len(v) > 1 for k, v in sample.labels.items() if k not in ("shard", "status")), sample


def test_a_scrape_with_100_collections_is_cheap(tmp_path, glove, capsys):
    settings = Settings(data_dir=tmp_path / "data", recall_sample_rate=1.0)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        manager = client.app.state.manager
        for i in range(100):
            collection = manager.create(f"c{i}", 50, "cosine", "hnswlib", {}, shards=2)
            collection.upsert([str(j) for j in range(100)], glove.base[:100], [None] * 100)
            collection.search(glove.queries[:5], 10)
        metrics = client.app.state.metrics
        metrics.exposition()  # warm: first-time work (e.g. index sizes) is not a scrape's
        # CPU time of this thread (the scrape runs on it): wall time on a shared, busy box
        # measures the other processes too.
        times, walls = [], []
        for _ in range(7):
            start, wall = time.thread_time(), time.perf_counter()
            text = metrics.exposition()
            times.append(time.thread_time() - start)
            walls.append(time.perf_counter() - wall)
        median = statistics.median(times)
        with capsys.disabled():
            print(f"\nscrape of 100 collections (2 shards each): median {median * 1000:.1f} ms CPU "
                  f"({statistics.median(walls) * 1000:.1f} ms wall), {len(text) / 1024:.0f} KiB, "
                  f"{len(text.splitlines())} lines")
        assert b'collection="c99"' in text
        assert median < SCRAPE_BUDGET_SECONDS, times


def test_a_scrape_merging_two_workers_full_recall_windows_of_100_collections_is_cheap(tmp_path, glove, capsys):
    """The worst case of `--workers`' merge (engine/worker_stats.py): 100 collections whose
    every count changed since the last scrape, each with a full recall window (1000 samples)
    in this worker and in another one's published file."""
    settings = Settings(data_dir=tmp_path / "data", recall_sample_rate=1.0, workers=2)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        manager = client.app.state.manager
        window = settings.recall_window
        for i in range(100):
            collection = manager.create(f"c{i}", 50, "cosine", "hnswlib", {}, shards=2)
            collection.upsert([str(j) for j in range(100)], glove.base[:100], [None] * 100)
            hits = collection.search(glove.queries[:1], 10)
            # A full window, as the sampler records it (the answer is its own exact truth: recall 1).
            collection.recall.record(np.repeat(glove.queries[:1], window, 0), 10, hits * window,
                                     hits * window, [True] * window)
        stats = manager.worker_stats
        other = stats.snapshot()
        other["pid"] = 2**22 + 1  # above any pid_max: a dead worker, whose counts still count
        (stats.dir / f"{other['pid']}.json").write_bytes(orjson.dumps(other))
        metrics = client.app.state.metrics
        metrics.exposition()
        times = []
        for _ in range(7):
            for collection in manager.list():  # every collection changed: no merge is reused
                collection.stats.wrote(upserted=1)
            start = time.thread_time()
            text = metrics.exposition()
            times.append(time.thread_time() - start)
        median = statistics.median(times)
        with capsys.disabled():
            print(f"\nscrape merging 2 workers' windows of 100 collections: median {median * 1000:.1f} ms CPU")
        line = next(x for x in text.decode().splitlines() if x.startswith('annserve_recall_window_samples{collection="c99"}'))
        assert line.endswith(f" {window}"), line  # the newest `window` of both workers' 2 x window
        samples = next(x for x in text.decode().splitlines() if x.startswith('annserve_recall_samples_total{collection="c99"}'))
        assert samples.endswith(f" {2 * window}"), samples
        assert median < SCRAPE_BUDGET_SECONDS, times

"""Online recall, the recall settings, the rebuild gate and tuning (engine/recall.py, tuning.py),
through the HTTP API in process, over real GloVe data; every figure is checked against recall
computed here from exact search."""

from __future__ import annotations

import time

import numpy as np
import pytest
from conftest import wait_job, wait_ready
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from annserve.api.app import create_app
from annserve.engine.recall import query_recall
from annserve.settings import Settings

AGREEMENT = 0.02  # exported recall vs recall computed outside the service, same queries
NQ = 300  # queries searched per agreement check
# Deliberately weak indexes (recall well under 1, so that agreement means something).
WEAK = {
    "hnswlib": ({"M": 4, "ef_construction": 20}, {"ef": 10}),
    "ivf_flat": ({"nlist": 64}, {"nprobe": 2}),
    "forest": ({"n_trees": 4}, {"search_k": 60}),
    "lsh": ({"n_tables": 4, "n_bits": 12}, {"probes": 1}),
}


def app_client(data_dir, **settings) -> TestClient:
    return TestClient(create_app(Settings(data_dir=data_dir, **settings)), raise_server_exceptions=False)


@pytest.fixture()
def sampled(tmp_path):
    """An app that samples every live query (rate 1.0)."""
    with app_client(tmp_path / "data", recall_sample_rate=1.0) as client:
        wait_ready(client)
        yield client


def create(client, name, kind, params=None, shards=1, expect=201, **extra):
    body = {"name": name, "dim": 50, "metric": "cosine", "index": {"kind": kind, "params": params or {}},
            "shards": shards, **extra}
    response = client.post("/collections", json=body)
    assert response.status_code == expect, response.text
    return response.json()


def load(client, name, vectors) -> None:
    for lo in range(0, len(vectors), 1000):
        items = [{"id": str(lo + i), "vector": v.tolist()} for i, v in enumerate(vectors[lo : lo + 1000])]
        assert client.post(f"/collections/{name}/vectors", json={"items": items}).status_code == 200


def rebuild(client, name) -> dict:
    response = client.post(f"/collections/{name}/rebuild", json={})
    assert response.status_code == 202, response.text
    return wait_job(client, response.json()["job_id"])


def wait_samples(client, name, n, timeout=60.0) -> dict:
    """GET /recall until `n` samples have been measured (or dropped)."""
    deadline = time.monotonic() + timeout
    while True:
        recall = client.get(f"/collections/{name}/recall").json()
        if recall["samples_total"] + recall["dropped_total"] >= n:
            return recall
        assert time.monotonic() < deadline, recall
        time.sleep(0.05)


def metric(client, name: str, **labels: str) -> float:
    """The value of the one sample `name{labels}` in /metrics."""
    found = [
        s.value for f in text_string_to_metric_families(client.get("/metrics").text)
        for s in f.samples if s.name == name and s.labels == labels
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def outside_recall(found: list[list[str]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & {str(t) for t in row}) / len(row) for f, row in zip(found, truth)]))


def search_all(client, name, queries, batch: bool) -> list[list[str]]:
    if batch:
        out = []
        for lo in range(0, len(queries), 100):
            body = {"vectors": queries[lo : lo + 100].tolist(), "k": 10}
            response = client.post(f"/collections/{name}/search/batch", json=body)
            assert response.status_code == 200, response.text
            out += [[h["id"] for h in row] for row in response.json()["results"]]
        return out
    found = []
    for q in queries:
        response = client.post(f"/collections/{name}/search", json={"vector": q.tolist(), "k": 10})
        assert response.status_code == 200, response.text
        found.append([h["id"] for h in response.json()["results"]])
    return found


# ---- online recall ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,shards,batch",
    [("hnswlib", 1, False), ("ivf_flat", 3, True), ("forest", 2, False), ("lsh", 1, True)],
)
def test_exported_recall_agrees_with_exact_search(sampled, glove, kind, shards, batch):
    build, search = WEAK[kind]
    create(sampled, "g", kind, build, shards=shards, search_params=search)
    load(sampled, "g", glove.base)
    assert rebuild(sampled, "g")["state"] == "succeeded"
    queries = glove.queries[:NQ]
    mine = outside_recall(search_all(sampled, "g", queries, batch), glove.truth[:NQ])
    assert mine < 0.97, f"{kind} is too good for the check to mean anything ({mine:.3f})"
    recall = wait_samples(sampled, "g", NQ)
    assert recall["dropped_total"] == 0 and recall["samples"] == NQ, recall
    assert recall["k"] == 10 and recall["window"] == 1000 and recall["target"] == 0.95
    assert abs(recall["recall_at_k"] - mine) <= AGREEMENT, (recall, mine)
    assert recall["last_sampled_at"] is not None
    assert metric(sampled, "annserve_recall_samples_total", collection="g") == NQ
    assert metric(sampled, "annserve_recall_ratio", collection="g") == recall["recall_at_k"]


def test_searches_by_id_are_sampled_without_their_own_item(sampled, glove):
    create(sampled, "g", "hnswlib", WEAK["hnswlib"][0])
    load(sampled, "g", glove.base[:2000])
    rebuild(sampled, "g")
    for i in range(50):
        assert sampled.post("/collections/g/search", json={"id": str(i), "k": 10}).status_code == 200
    recall = wait_samples(sampled, "g", 50)
    assert recall["samples"] == 50 and 0.0 < recall["recall_at_k"] <= 1.0


def test_rate_zero_samples_nothing(tmp_path, glove):
    with app_client(tmp_path / "data", recall_sample_rate=0.0) as client:
        wait_ready(client)
        create(client, "g", "flat")
        load(client, "g", glove.base[:500])
        search_all(client, "g", glove.queries[:20], batch=False)
        recall = client.get("/collections/g/recall").json()
        assert recall["samples"] == 0 and recall["recall_at_k"] is None and recall["sample_rate"] == 0.0


def test_a_full_queue_drops_samples_and_counts_them(tmp_path, glove):
    with app_client(tmp_path / "data", recall_sample_rate=1.0, recall_queue_size=1) as client:
        wait_ready(client)
        create(client, "g", "flat")
        load(client, "g", glove.base[:500])
        collection = client.app.state.manager.get("g")
        queries = glove.queries[:1]
        answer = collection.search(queries, 10)
        offered = 2000
        for _ in range(offered):  # far faster than the worker can take them off a queue of one
            collection.recall.offer(queries, 10, None, None, answer)
        recall = wait_samples(client, "g", offered)
        assert recall["dropped_total"] > 0
        assert recall["samples_total"] + recall["dropped_total"] == offered
        assert recall["recall_at_k"] == 1.0  # flat is exact
        assert metric(client, "annserve_recall_dropped_total", collection="g") == recall["dropped_total"]


class _SlowExactMonitor:
    """Stands for a collection's monitor whose exact re-run takes `seconds` (a large shard)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.reruns, self.recorded = seconds, 0, 0
        self.collection = self

    def search(self, queries, k, params, **_):
        self.reruns += 1
        time.sleep(self.seconds)
        return [[("0", 1.0)]] * len(queries)

    def record(self, queries, k, answers, truth, plain):
        self.recorded += len(queries)

    def count_dropped(self, n):
        raise AssertionError("no sample should be dropped")


def test_the_sampler_rests_to_keep_its_cpu_share():
    """After a re-run of t seconds the worker rests t / CPU_SHARE: samples arriving meanwhile
    wait and are re-run together, none is lost."""
    from annserve.engine.recall import CPU_SHARE, RecallSampler, _Sample

    monitor = _SlowExactMonitor(seconds=0.05)
    sampler = RecallSampler(rate=1.0, queue_size=1024, window=100, recent=10)
    try:
        query = np.zeros((1, 4), dtype=np.float32)
        offered, started = 0, time.monotonic()
        while time.monotonic() - started < 2.5:
            assert sampler.put(_Sample(monitor, query, 1, None, None, [[("0", 1.0)]]))
            offered += 1
            time.sleep(0.01)
        # Re-runs of 0.05 s every 0.05 / CPU_SHARE + 0.05 s: 3 in 2.5 s (the first at once).
        # Gathering for 0.25 s alone would have made about 8.
        assert 1 <= monitor.reruns <= 1 + 2.5 / (0.05 / CPU_SHARE), monitor.reruns
        deadline = time.monotonic() + 10
        while monitor.recorded < offered:
            assert time.monotonic() < deadline, (monitor.recorded, offered)
            time.sleep(0.05)
    finally:
        sampler.close()


def test_ties_with_the_kth_exact_score_count_as_hits():
    truth = [("a", 0.9), ("b", 0.8), ("c", 0.7)]
    assert query_recall([("a", 0.9), ("b", 0.8), ("c", 0.7)], truth) == 1.0
    assert query_recall([("a", 0.9), ("b", 0.8), ("x", 0.7)], truth) == 1.0  # x ties with c
    assert query_recall([("a", 0.9), ("b", 0.8), ("x", 0.6)], truth) == pytest.approx(2 / 3)
    assert query_recall([("a", 0.9)], truth) == pytest.approx(1 / 3)  # a short answer misses
    assert query_recall([], []) is None


# ---- recall settings ----------------------------------------------------------------------


def test_recall_settings_at_create_patch_and_restart(tmp_path):
    data = tmp_path / "data"
    with app_client(data) as client:
        wait_ready(client)
        info = create(client, "c", "hnswlib", recall_target=0.9, recall_floor=0.5, auto_tune=True,
                      search_params={"ef": 20})
        assert (info["recall_target"], info["recall_floor"], info["auto_tune"]) == (0.9, 0.5, True)
        assert info["index"]["search_params"] == {"ef": 20}
        default = create(client, "d", "flat")
        assert (default["recall_target"], default["recall_floor"], default["auto_tune"]) == (0.95, 0.0, False)
        patched = client.patch("/collections/c", json={"recall_floor": 0.6, "search_params": {"ef": 30}})
        assert patched.status_code == 200, patched.text
        assert patched.json()["recall_floor"] == 0.6 and patched.json()["recall_target"] == 0.9
        assert patched.json()["index"]["search_params"] == {"ef": 30}
        assert client.get("/collections/c/recall").json()["floor"] == 0.6
    with app_client(data) as client:  # persisted in collection.json
        wait_ready(client)
        info = client.get("/collections/c").json()
        assert (info["recall_target"], info["recall_floor"], info["auto_tune"]) == (0.9, 0.6, True)
        assert info["index"]["search_params"] == {"ef": 30}


@pytest.mark.parametrize(
    "body,fragment",
    [
        ({"recall_target": 0}, "recall_target"),
        ({"recall_target": 1.5}, "recall_target"),
        ({"recall_floor": -0.1}, "recall_floor"),
        ({"recall_floor": 0.99}, "at most recall_target"),
        ({"auto_tune": "yes"}, "auto_tune"),
        ({"search_params": {"nprobe": 4}}, "unknown search parameter"),
        ({"search_params": {"ef": 0}}, "ef"),
        ({"recall_target": None}, "null"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_recall_settings_are_422(tmp_path, body, fragment):
    with app_client(tmp_path / "data") as client:
        wait_ready(client)
        create(client, "c", "hnswlib")
        response = client.patch("/collections/c", json=body)
        assert response.status_code == 422, response.text
        assert fragment in response.json()["detail"], response.json()
        created = client.post("/collections", json={"name": "n", "dim": 4, "metric": "l2", "index": {"kind": "hnswlib"}, **body})
        assert created.status_code == 422, created.text
        assert client.patch("/collections/nope", json={}).status_code == 404


def test_auto_collections_take_no_search_params_at_create(tmp_path):
    with app_client(tmp_path / "data") as client:
        wait_ready(client)
        create(client, "a", "auto", search_params={"ef": 10}, expect=422)


# ---- the rebuild gate ---------------------------------------------------------------------


def test_a_rebuild_under_the_floor_is_refused_and_the_old_main_keeps_serving(sampled, glove):
    create(sampled, "g", "hnswlib")
    load(sampled, "g", glove.base)
    first = rebuild(sampled, "g")
    assert first["state"] == "succeeded" and 0.9 < first["recall"] <= 1.0, first  # own items, ef 64
    before = sampled.get("/collections/g").json()
    search_all(sampled, "g", glove.queries[:200], batch=True)
    wait_samples(sampled, "g", 200)
    # ef 10 makes the next main miss the floor; the gate measures it on the 200 real queries.
    assert sampled.patch("/collections/g", json={"recall_floor": 0.9, "search_params": {"ef": 10}}).status_code == 200
    load(sampled, "g", glove.base[:100])  # something new for the rebuild to take
    refused = rebuild(sampled, "g")
    assert refused["state"] == "failed", refused
    assert refused["recall"] is not None and refused["recall"] < 0.9
    assert f"{refused['recall']:.4f}" in refused["error"] and "0.9" in refused["error"]
    assert "200 recent queries" in refused["error"] and "refused" in refused["error"]
    after = sampled.get("/collections/g").json()
    assert after["last_rebuild_at"] == before["last_rebuild_at"]
    assert after["index"]["built"] == before["index"]["built"]
    assert after["fresh_count"] == 100  # still served, exactly, from fresh
    assert metric(sampled, "annserve_rebuild_refusals_total", collection="g", reason="recall_floor") == 1
    assert metric(sampled, "annserve_rebuilds_total", collection="g") == 1
    # Floor off: the same build goes in.
    assert sampled.patch("/collections/g", json={"recall_floor": 0}).status_code == 200
    assert rebuild(sampled, "g")["state"] == "succeeded"
    assert sampled.get("/collections/g").json()["fresh_count"] == 0


# ---- tuning -------------------------------------------------------------------------------


def test_tune_sets_the_smallest_ef_that_meets_the_target(sampled, glove, tmp_path):
    create(sampled, "g", "hnswlib", {"M": 4, "ef_construction": 20})
    load(sampled, "g", glove.base)
    rebuild(sampled, "g")
    search_all(sampled, "g", glove.queries[:NQ], batch=True)
    wait_samples(sampled, "g", NQ)
    response = sampled.post("/collections/g/tune", json={"target_recall": 0.9, "k": 10})
    assert response.status_code == 200, response.text
    tuned = response.json()
    ef = tuned["chosen"]["ef"]
    assert tuned["knob"] == "ef" and tuned["query_source"] == "recent queries" and tuned["queries"] == 256
    assert tuned["recall"] >= 0.9 and tuned["below"]["ef"] == ef - 1 and tuned["below"]["recall"] < 0.9
    assert tuned["latency_p50_ms"] > 0 and tuned["below"]["latency_p50_ms"] > 0
    assert sampled.get("/collections/g").json()["index"]["search_params"]["ef"] == ef
    assert metric(sampled, "annserve_search_param_ef", collection="g", kind="hnswlib") == ef
    # What the tuner promised holds outside it: searches without params now use ef, and
    # meet the target on the queries it measured (the last 256 sampled).
    queries = glove.queries[NQ - 256 : NQ]
    mine = outside_recall(search_all(sampled, "g", queries, batch=True), glove.truth[NQ - 256 : NQ])
    assert abs(mine - tuned["recall"]) <= AGREEMENT
    unreachable = sampled.post("/collections/g/tune", json={"target_recall": 1.0, "k": 10})
    assert unreachable.status_code == 422 and "at best" in unreachable.json()["detail"]
    assert sampled.get("/collections/g").json()["index"]["search_params"]["ef"] == ef  # unchanged


@pytest.mark.parametrize("kind,knob", [("ivf_flat", "nprobe"), ("ivf_pq", "nprobe"), ("forest", "search_k")])
def test_tune_on_stored_items_for_other_kinds(tmp_path, glove, kind, knob):
    with app_client(tmp_path / "data", recall_sample_rate=0.0) as client:
        wait_ready(client)
        create(client, "g", kind, {"n_trees": 5} if kind == "forest" else {"nlist": 32})
        load(client, "g", glove.base[:5000])
        rebuild(client, "g")
        response = client.post("/collections/g/tune", json={"target_recall": 0.85, "k": 10})
        assert response.status_code == 200, response.text
        tuned = response.json()
        assert tuned["knob"] == knob and tuned["query_source"] == "stored items"
        assert tuned["recall"] >= 0.85 and client.get("/collections/g").json()["index"]["search_params"][knob] == tuned["chosen"][knob]


def test_tune_answers_for_exact_and_unbuilt_collections(tmp_path, glove):
    with app_client(tmp_path / "data") as client:
        wait_ready(client)
        create(client, "f", "flat")
        load(client, "f", glove.base[:300])
        assert client.post("/collections/f/tune", json={}).status_code == 409  # no main yet
        rebuild(client, "f")
        exact = client.post("/collections/f/tune", json={"target_recall": 0.99})
        assert exact.status_code == 200 and exact.json()["knob"] is None and exact.json()["recall"] == 1.0
        assert client.post("/collections/f/tune", json={"target_recall": 2}).status_code == 422
        assert client.post("/collections/f/tune", json={"k": 100000}).status_code == 422


def test_auto_tune_retunes_after_every_rebuild(sampled, glove):
    create(sampled, "g", "hnswlib", {"M": 4, "ef_construction": 20}, recall_target=0.9, auto_tune=True)
    load(sampled, "g", glove.base)
    # Real queries first (answered exactly from fresh): the tuner measures on them.
    search_all(sampled, "g", glove.queries[:NQ], batch=True)
    wait_samples(sampled, "g", NQ)
    job = rebuild(sampled, "g")
    assert job["state"] == "succeeded"
    ef = sampled.get("/collections/g").json()["index"]["search_params"]["ef"]
    assert ef != 64  # the kind's default was replaced by the tuned value
    found = search_all(sampled, "g", glove.queries[:NQ], batch=True)
    assert outside_recall(found, glove.truth[:NQ]) >= 0.9 - AGREEMENT

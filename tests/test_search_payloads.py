"""Search with payloads, vectors, filters and score thresholds through the HTTP API in process
(TestClient over the real engine), on real GloVe vectors with synthetic payloads: every filter of
app/bench/synthetic_payloads.py against brute force over the items it admits, on every index kind and
several shard counts, with fresh items and deletes in the mix; recall floors per selectivity;
the 422s; the online recall sampler re-running a filtered query with its filter."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from conftest import wait_job, wait_ready
from fastapi.testclient import TestClient

from annserve.api.app import create_app
from annserve.bench.synthetic_payloads import FILTERS, id_filters, payloads
from annserve.engine.filters import matches, parse_filter
from annserve.indexes import brute_force_knn
from annserve.settings import Settings

N = 3000  # glove rows in the collections
K = 10
NQ = 40  # queries per filter


def app(tmp_path, **settings) -> TestClient:
    return TestClient(create_app(Settings(data_dir=tmp_path / "data", **settings)), raise_server_exceptions=False)


@pytest.fixture()
def client(tmp_path):
    with app(tmp_path, recall_sample_rate=0.0) as client:
        wait_ready(client)
        yield client


ITEMS = payloads(N + 500, seed=11)


def create(client, name, kind="flat", params=None, shards=1, metric="cosine", dim=50, **extra):
    body = {"name": name, "dim": dim, "metric": metric, "index": {"kind": kind, "params": params or {}},
            "shards": shards, **extra}
    response = client.post("/collections", json=body)
    assert response.status_code == 201, response.text


def load(client, name, vectors, start=0):
    for lo in range(0, len(vectors), 1000):
        items = [
            {"id": f"v{start + lo + i}", "vector": v.tolist(), "payload": ITEMS[start + lo + i]}
            for i, v in enumerate(vectors[lo : lo + 1000])
        ]
        response = client.post(f"/collections/{name}/vectors", json={"items": items})
        assert response.status_code == 200, response.text


def rebuild(client, name):
    response = client.post(f"/collections/{name}/rebuild", json={})
    assert response.status_code == 202, response.text
    job = wait_job(client, response.json()["job_id"])
    assert job["state"] == "succeeded", job


def search(client, name, query, **body):
    response = client.post(f"/collections/{name}/search", json={"vector": query.tolist(), "k": K, **body})
    assert response.status_code == 200, response.text
    return response.json()["results"]


def batch(client, name, queries, **body):
    response = client.post(
        f"/collections/{name}/search/batch", json={"vectors": queries.tolist(), "k": K, **body}
    )
    assert response.status_code == 200, response.text
    return response.json()["results"]


def truth_of(live: dict[str, tuple[np.ndarray, dict | None]], where, queries, metric="cosine"):
    """The exact top K ids per query among the live items `where` admits, and their count."""
    node = parse_filter(where)
    ids = [i for i, (_, p) in live.items() if matches(node, p, i)]
    if not ids:
        return [[] for _ in queries], 0
    vectors = np.stack([live[i][0] for i in ids])
    rows, _ = brute_force_knn(vectors, queries, min(K, len(ids)), metric)
    return [[ids[r] for r in row if r >= 0] for row in rows], len(ids)


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    hit = sum(len(set(f) & set(t)) for f, t in zip(found, truth))
    wanted = sum(len(t) for t in truth)
    return hit / wanted if wanted else 1.0  # nothing admitted: nothing to find


# ---- payloads, vectors, thresholds --------------------------------------------------------


def test_results_carry_payload_and_vector_only_when_asked(client, glove):
    create(client, "c")
    load(client, "c", glove.base[:200])
    q = glove.queries[0]
    plain = search(client, "c", q)
    assert all(set(hit) == {"id", "score"} for hit in plain)
    full = search(client, "c", q, with_payload=True, with_vector=True)
    assert [h["id"] for h in full] == [h["id"] for h in plain]
    for hit in full:
        row = int(hit["id"][1:])
        assert hit["payload"] == ITEMS[row]
        assert np.allclose(hit["vector"], glove.base[row], atol=1e-6)
    some = search(client, "c", q, with_payload=["category", "price", "absent"])
    for hit in some:
        stored = ITEMS[int(hit["id"][1:])]
        expected = None if stored is None else {f: stored[f] for f in ("category", "price") if f in stored}
        assert hit["payload"] == expected and "vector" not in hit
    rows = batch(client, "c", glove.queries[:3], with_payload=True)
    assert [[h["id"] for h in row] for row in rows] == [[h["id"] for h in search(client, "c", x)] for x in glove.queries[:3]]
    assert all(h["payload"] == ITEMS[int(h["id"][1:])] for row in rows for h in row)
    by_id = client.post("/collections/c/search", json={"id": "v7", "k": 5, "with_vector": True}).json()["results"]
    assert "v7" not in [h["id"] for h in by_id] and all(len(h["vector"]) == 50 for h in by_id)


def test_score_threshold_keeps_only_better_scores(client, glove):
    create(client, "cos")
    load(client, "cos", glove.base[:500])
    create(client, "l2", metric="l2")
    load(client, "l2", glove.base[:500])
    q = glove.queries[1]
    full = search(client, "cos", q)
    cut = full[4]["score"]
    kept = search(client, "cos", q, score_threshold=cut)
    assert kept == full[:5] and all(h["score"] >= cut for h in kept)
    far = search(client, "l2", q)
    cut = far[3]["score"]
    kept = search(client, "l2", q, score_threshold=cut)
    assert kept == far[:4] and all(h["score"] <= cut for h in kept)
    assert batch(client, "cos", glove.queries[:2], score_threshold=2.0) == [[], []]


@pytest.mark.parametrize(
    "body, fragments",
    [
        ({"filter": {"price": {"$lt": "cheap"}}}, ["filter.price.$lt", "expected a number", "cheap"]),
        ({"filter": {"price": {"$near": 3}}}, ["filter.price.$near", "unknown operator"]),
        ({"filter": {"$and": {"a": 1}}}, ["filter.$and", "non-empty list"]),
        ({"filter": [1, 2]}, ["filter", "expected a filter object"]),
        ({"filter": {"id": {"$in": [1]}}}, ["filter.id.$in[0]", "strings"]),
        ({"filter": {"a": {"$in": list(range(20_000))}}}, ["filter.a.$in", "values"]),
        ({"filter": {f"f{i}": 1 for i in range(300)}}, ["conditions"]),
        ({"with_payload": "yes"}, ["with_payload", "true, false or a list"]),
        ({"with_payload": [1]}, ["with_payload"]),
        ({"with_vector": 1}, ["with_vector", "true or false"]),
        ({"score_threshold": "high"}, ["score_threshold", "expected a number"]),
        ({"score_threshold": True}, ["score_threshold", "expected a number"]),
    ],
)
@pytest.mark.parametrize("route", ["search", "batch"])
def test_bad_options_are_422_naming_the_part(client, glove, body, fragments, route):
    create(client, "c")
    load(client, "c", glove.base[:20])
    if route == "search":
        request = {"vector": glove.queries[0].tolist(), **body}
        response = client.post("/collections/c/search", json=request)
    else:
        request = {"vectors": glove.queries[:2].tolist(), **body}
        response = client.post("/collections/c/search/batch", json=request)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str)
    for fragment in fragments:
        assert fragment in detail, (fragment, detail)


# ---- filters against brute force ------------------------------------------------------------

KINDS = {
    "flat": {},
    "hnswlib": {"M": 16, "ef_construction": 100},
    "hnsw": {"M": 16, "ef_construction": 100},
    "ivf_flat": {"nlist": 32},
    "ivf_pq": {"nlist": 16, "m": 10, "nbits": 8},
    "pq": {"m": 10, "nbits": 8},
    "forest": {"n_trees": 10},
    "lsh": {"n_tables": 8, "n_bits": 10},
}
# Recall@10 under a filter, over every filter, at least (the compressed and hashed kinds are
# approximate whatever the filter; the others find nearly everything).
FLOORS = {"flat": 0.999, "hnswlib": 0.9, "hnsw": 0.9, "ivf_flat": 0.85, "ivf_pq": 0.6, "pq": 0.6,
          "forest": 0.8, "lsh": 0.6}


def filtered_collection(client, glove, name, kind, shards):
    """`name` of `kind` over N glove rows: built, then 300 more in fresh, 200 replaced
    (new vectors and payloads), 150 deleted. Returns the live items: id -> (vector, payload)."""
    create(client, name, kind, KINDS[kind], shards=shards)
    load(client, name, glove.base[:N])
    rebuild(client, name)
    load(client, name, glove.base[N : N + 300], start=N)
    live = {f"v{i}": (glove.base[i], ITEMS[i]) for i in range(N + 300)}
    rng = random.Random(1)
    replaced = rng.sample(range(N), 200)
    items = [
        {"id": f"v{r}", "vector": glove.base[N + 300 + j].tolist(), "payload": ITEMS[N + 300 + j]}
        for j, r in enumerate(replaced)
    ]
    assert client.post(f"/collections/{name}/vectors", json={"items": items}).status_code == 200
    for j, r in enumerate(replaced):
        live[f"v{r}"] = (glove.base[N + 300 + j], ITEMS[N + 300 + j])
    gone = [f"v{i}" for i in rng.sample(range(N + 300), 150)]
    assert client.post(f"/collections/{name}/vectors/delete", json={"ids": gone}).json()["deleted"] == 150
    for item_id in gone:
        del live[item_id]
    return live


@pytest.mark.parametrize("kind, shards", [(k, 1) for k in KINDS] + [("hnswlib", 3), ("ivf_flat", 2), ("flat", 3)])
def test_every_filter_on_every_kind_against_brute_force(client, glove, kind, shards):
    live = filtered_collection(client, glove, "f", kind, shards)
    queries = glove.queries[:NQ]
    rng = random.Random(2)
    worst = 1.0
    for where in FILTERS + id_filters(list(live), rng):
        truth, admitted = truth_of(live, where, queries)
        node = parse_filter(where)
        rows = batch(client, "f", queries, filter=where, with_payload=True)
        found = [[h["id"] for h in row] for row in rows]
        for row in rows:
            for hit in row:  # every result is live and admitted
                assert hit["id"] in live and matches(node, hit["payload"], hit["id"]), (where, hit)
            assert len(row) == min(K, admitted), (where, len(row), admitted)
        exact = [[h["id"] for h in row] for row in batch(client, "f", queries, filter=where, exact=True)]
        assert recall(exact, truth) == 1.0, where  # exact search applies the filter exactly
        single = [[h["id"] for h in search(client, "f", q, filter=where)] for q in queries[:5]]
        assert single == found[:5], where  # one query at a time answers as the batch did
        worst = min(worst, recall(found, truth))
    assert worst >= FLOORS[kind], (kind, shards, worst)


SELECTIVITIES = [  # about this share of the items admitted
    (0.8, {"category": {"$ne": "books"}}),
    (0.2, {"category": "books"}),
    (0.05, {"price": {"$lt": 5}}),
    (0.01, {"category": "toys", "price": {"$lt": 5}}),
    (0.002, {"category": "toys", "price": {"$lt": 1}}),
]


@pytest.mark.parametrize("kind", ["hnswlib", "ivf_flat", "forest"])
def test_recall_floors_per_selectivity(client, glove, kind):
    live = filtered_collection(client, glove, "s", kind, 1)
    queries = glove.queries[:100]
    for share, where in SELECTIVITIES:
        truth, admitted = truth_of(live, where, queries)
        assert abs(admitted / len(live) - share) < share * 0.6 + 0.002, (where, admitted)
        found = [[h["id"] for h in row] for row in batch(client, "s", queries, filter=where)]
        assert recall(found, truth) >= 0.9, (kind, where, recall(found, truth))


def test_search_by_id_with_a_filter(client, glove):
    create(client, "c", "hnswlib", KINDS["hnswlib"])
    load(client, "c", glove.base[:N])
    rebuild(client, "c")
    where = {"category": "music", "id": {"$nin": ["v1", "v2", "v3"]}}
    response = client.post("/collections/c/search", json={"id": "v0", "k": K, "filter": where, "with_payload": True})
    assert response.status_code == 200, response.text
    hits = response.json()["results"]
    assert len(hits) == K
    assert all(h["payload"]["category"] == "music" and h["id"] not in ("v0", "v1", "v2", "v3") for h in hits)


def test_the_recall_sampler_reruns_with_the_filter(tmp_path, glove):
    with app(tmp_path, recall_sample_rate=1.0) as client:
        wait_ready(client)
        create(client, "r", "hnswlib", {"M": 8, "ef_construction": 40})
        load(client, "r", glove.base[:N])
        rebuild(client, "r")
        live = {f"v{i}": (glove.base[i], ITEMS[i]) for i in range(N)}
        where = {"category": "toys", "price": {"$lt": 20}}
        queries = glove.queries[:100]
        found = [[h["id"] for h in search(client, "r", q, filter=where)] for q in queries]
        truth, _ = truth_of(live, where, queries)
        deadline = time.monotonic() + 60
        while (summary := client.get("/collections/r/recall").json())["samples"] < len(queries):
            assert time.monotonic() < deadline, summary
            time.sleep(0.1)
        # Re-run without the filter, the exact answer would hold items the filter refuses and
        # the sampled figure would sit near the filter's share (~4%).
        assert abs(summary["recall_at_k"] - recall(found, truth)) <= 0.02, summary
        assert summary["recall_at_k"] > 0.9


# ---- the Python client against a real server ------------------------------------------------


def test_the_client_sends_and_reads_every_option(tmp_path, glove):
    import asyncio

    from annserve import AsyncClient, Client
    from annserve.bench.server_process import ServeProcess

    server = ServeProcess(tmp_path / "data", tmp_path / "server.log")
    try:
        server.start().close()
        with Client(server.url, timeout=60) as c:
            c.create_collection("c", dim=50, metric="cosine", index="hnswlib")
            c.upsert("c", [f"v{i}" for i in range(N)], glove.base[:N], payloads=ITEMS[:N])
            c.rebuild("c", wait=True)
            live = {f"v{i}": (glove.base[i], ITEMS[i]) for i in range(N)}
            where = {"category": "books", "price": {"$lt": 50}}
            truth, _ = truth_of(live, where, glove.queries[:1])
            hits = c.search("c", glove.queries[0], k=K, filter=where, with_payload=True, with_vector=True)
            assert recall([[h.id for h in hits]], truth) >= 0.9
            for h in hits:
                assert h.payload == live[h.id][1] and h.payload["category"] == "books"
                assert h.vector.dtype == np.float32 and np.allclose(h.vector, live[h.id][0], atol=1e-6)
            rows = c.search("c", glove.queries[:3], k=K, filter=where, with_payload=["price"], exact=True)
            assert [[h.id for h in row] for row in rows] == truth_of(live, where, glove.queries[:3])[0]
            assert all(set(h.payload) == {"price"} and h.vector is None for row in rows for h in row)
            cut = hits[2].score
            assert [h.id for h in c.search("c", glove.queries[0], k=K, filter=where, score_threshold=cut)] == [
                h.id for h in hits[:3]
            ]
            by_id = c.search_by_id("c", "v0", k=5, filter={"id": {"$nin": ["v1", "v2"]}}, with_payload=True)
            assert len(by_id) == 5 and not {"v0", "v1", "v2"} & {h.id for h in by_id}

        async def run():
            async with AsyncClient(server.url, timeout=60) as ac:
                return await ac.search("c", glove.queries[0], k=K, filter=where, with_vector=True)

        assert [h.id for h in asyncio.run(run())] == [h.id for h in hits]
    finally:
        server.stop()

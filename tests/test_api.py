"""The HTTP API in process (TestClient) over the real engine: every route, every 4xx.

Every error must be `{"detail": str}` naming the numbers; a 5xx is always a bug.
"""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest
from conftest import wait_job
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from annserve.api.transport import batching
from annserve.api.app import create_app
from annserve.settings import Settings
from annserve.indexes import brute_force_knn

MAX_BODY = 1024 * 1024
N = 2000  # glove rows loaded into the search tests' collection


READY_TIMEOUT = 30.0  # seconds for the app to open its collections


def wait_ready(client, timeout: float = READY_TIMEOUT) -> None:
    """Poll /readyz until it answers 200; fails the test with its last answer after `timeout` s."""
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.02)


@pytest.fixture()
def client(tmp_path):
    settings = Settings(
        data_dir=tmp_path / "data", max_body_bytes=MAX_BODY, max_k=100, max_batch=8, max_upsert_batch=1000
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


def create(client, name="c", dim=50, metric="cosine", kind="flat", params=None, expect=201):
    body = {"name": name, "dim": dim, "metric": metric, "index": {"kind": kind, "params": params or {}}}
    response = client.post("/collections", json=body)
    assert response.status_code == expect, response.text
    return response.json()


def upsert(client, name, vectors, start=0, payload=None):
    items = [
        {"id": f"v{start + i}", "vector": v.tolist(), "payload": payload} for i, v in enumerate(vectors)
    ]
    for lo in range(0, len(items), 500):
        response = client.post(f"/collections/{name}/vectors", json={"items": items[lo : lo + 500]})
        assert response.status_code == 200, response.text
        assert response.json() == {"upserted": len(items[lo : lo + 500])}


def error(response, status, *fragments):
    """Assert an error answer: the status, a string detail, and the fragments in it."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"} and isinstance(body["detail"], str), body
    for fragment in fragments:
        assert fragment in body["detail"], (fragment, body["detail"])
    return body["detail"]


@pytest.fixture()
def loaded(client, glove):
    """Collection `g` (flat, cosine) holding the first N glove rows as v0..v{N-1}."""
    create(client, "g")
    upsert(client, "g", glove.base[:N])
    return client


def b64(x: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode()


# ---- health, metrics, OpenAPI -------------------------------------------------------------


def test_health_ready_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    create(client, "m", dim=4)
    client.post("/collections/m/vectors", json={"items": [{"id": "secret-id", "vector": [1, 2, 3, 4]}]})
    client.get("/collections/m/vectors/secret-id")
    text = client.get("/metrics").text
    route = "/collections/{name}/vectors/{item_id:path}"
    assert f'annserve_requests_total{{method="GET",route="{route}",status="200"}}' in text
    assert "annserve_request_duration_seconds_bucket" in text
    items = _samples(text, "annserve_collection_items", "part", collection="m")
    assert items == {"fresh": 1.0, "main": 0.0}, items
    assert "annserve_event_loop_lag_seconds_count" in text
    assert "secret-id" not in text  # ids never become label values


def _samples(text: str, name: str, by: str, **labels: str) -> dict[str, float]:
    """{value of label `by`: sum of the samples of metric `name` with `labels`} in Prometheus text."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                found[sample.labels[by]] = found.get(sample.labels[by], 0.0) + sample.value
    return found


def test_openapi_describes_every_route(client):
    schema = client.get("/openapi.json").json()
    routes = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    assert routes >= {
        ("POST", "/collections"),
        ("GET", "/collections"),
        ("GET", "/collections/{name}"),
        ("DELETE", "/collections/{name}"),
        ("POST", "/collections/{name}/vectors"),
        ("GET", "/collections/{name}/vectors/{item_id}"),
        ("DELETE", "/collections/{name}/vectors/{item_id}"),
        ("POST", "/collections/{name}/vectors/delete"),
        ("POST", "/collections/{name}/search"),
        ("POST", "/collections/{name}/search/batch"),
        ("POST", "/collections/{name}/rebuild"),
        ("GET", "/jobs/{job_id}"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
    }
    components = schema["components"]["schemas"]
    search = schema["paths"]["/collections/{name}/search"]["post"]
    assert search["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SearchRequest")
    def response_ref(status: str) -> str:
        return search["responses"][status]["content"]["application/json"]["schema"]["$ref"]

    assert response_ref("200").endswith("/SearchResponse")
    fields = {"vector", "vector_b64", "id", "k", "params", "exact"}
    fields |= {"filter", "with_payload", "with_vector", "score_threshold"}  # CONTRACT section 3's optional fields
    assert set(components["SearchRequest"]["properties"]) == fields
    assert "UpsertRequest" in components and "BatchSearchRequest" in components
    # Our 422s are {"detail": str}, not FastAPI's list: the schema must say so.
    assert "HTTPValidationError" not in components
    assert response_ref("422").endswith("/ErrorDetail")
    # Every templated path parameter is declared (schemathesis: "Path parameter 'name' is not
    # defined" on the two search routes, which read their body raw).
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            templated = {part[1:-1] for part in path.split("/") if part.startswith("{")}
            assert declared == templated, (method, path, declared)


# ---- collections --------------------------------------------------------------------------


def test_collection_lifecycle(client):
    info = create(client, "docs", dim=8, metric="l2", kind="hnswlib", params={"M": 8})
    assert {"name", "dim", "metric", "index", "shards", "count", "main_count", "fresh_count",
            "last_rebuild_at"} <= set(info)
    assert (info["name"], info["dim"], info["metric"], info["count"]) == ("docs", 8, "l2", 0)
    assert info["index"]["kind"] == "hnswlib"
    error(client.post("/collections", json={"name": "docs", "dim": 8, "metric": "l2"}), 409, "docs")
    assert [c["name"] for c in client.get("/collections").json()["collections"]] == ["docs"]
    assert client.get("/collections/docs").json()["dim"] == 8
    assert client.delete("/collections/docs").status_code == 200
    error(client.get("/collections/docs"), 404, "docs")
    error(client.delete("/collections/docs"), 404, "docs")
    assert client.get("/collections").json() == {"collections": []}


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"name": "x", "dim": 0}, ["dim", "1", "got 0"]),
        ({"name": "x", "dim": 5000}, ["dim", "4096", "5000"]),
        ({"name": "x", "dim": 8, "metric": "hamming"}, ["metric", "hamming"]),
        ({"name": "x", "dim": 8, "metric": None}, ["metric", "None"]),
        ({"name": "x", "dim": 8, "colour": "red"}, ["colour"]),
        ({"name": "../etc", "dim": 8}, ["name"]),
        ({"dim": 8}, ["name"]),
        ({"name": "x", "dim": 8, "index": {"kind": "quantum"}}, ["quantum"]),
        ({"name": "x", "dim": 8, "index": {"kind": "hnswlib", "params": {"ef_search": 5}}}, ["ef_search"]),
        ({"name": "x", "dim": 8, "shards": 0}, ["shards", "got 0"]),
        # Beyond what the libraries take: hnswlib raised TypeError (a 500), FAISS overflowed.
        ({"name": "x", "dim": 8, "index": {"kind": "hnswlib", "params": {"M": 10**30}}}, ["M", "1024"]),
        ({"name": "x", "dim": 8, "index": {"kind": "hnsw", "params": {"M": 10**9}}}, ["M", "1024"]),
        ({"name": "x", "dim": 8, "index": {"kind": "ivf_flat", "params": {"nlist": 10**12}}},
         ["nlist", "2147483647"]),
    ],
)
def test_create_collection_rejects(client, body, fragments):
    # The metric is required: the bodies that test something else give one.
    error(client.post("/collections", json={"metric": "l2", **body}), 422, *fragments)
    assert client.get("/collections").json() == {"collections": []}


def test_create_collection_requires_the_metric(client):
    """The README says `metric` is required; the schema defaulted it to cosine (defect 10)."""
    error(client.post("/collections", json={"name": "x", "dim": 8}), 422, "metric", "required")


def test_invalid_json_is_422(client):
    create(client, "j", dim=2)
    for path in ("/collections", "/collections/j/search", "/collections/j/vectors"):
        response = client.post(path, content=b'{"name": ', headers={"content-type": "application/json"})
        error(response, 422, "JSON")
    error(client.post("/collections/j/search", content=b"[1, 2]"), 422, "object")


# ---- vectors ------------------------------------------------------------------------------


def test_upsert_get_replace_delete(client, glove):
    create(client, "v")
    upsert(client, "v", glove.base[:20], payload={"lang": "en"})
    got = client.get("/collections/v/vectors/v3").json()
    assert got["id"] == "v3" and got["payload"] == {"lang": "en"}
    np.testing.assert_allclose(got["vector"], glove.base[3], rtol=1e-6)
    assert client.get("/collections/v").json()["count"] == 20

    # Replace: same id, new vector (as base64) and payload.
    item = {"id": "v3", "vector_b64": b64(glove.base[100]), "payload": {"lang": "fr"}}
    assert client.post("/collections/v/vectors", json={"items": [item]}).json() == {"upserted": 1}
    got = client.get("/collections/v/vectors/v3").json()
    assert got["payload"] == {"lang": "fr"}
    np.testing.assert_allclose(got["vector"], glove.base[100], rtol=1e-6)
    assert client.get("/collections/v").json()["count"] == 20

    # One batch may mix JSON lists and base64.
    mixed = [
        {"id": "m0", "vector_b64": b64(glove.base[200])},
        {"id": "m1", "vector": glove.base[201].tolist()},
        {"id": "m2", "vector_b64": b64(glove.base[202])},
    ]
    assert client.post("/collections/v/vectors", json={"items": mixed}).json() == {"upserted": 3}
    for i, row in enumerate(glove.base[200:203]):
        got = client.get(f"/collections/v/vectors/m{i}").json()["vector"]
        np.testing.assert_allclose(got, row, rtol=1e-6)
    client.post("/collections/v/vectors/delete", json={"ids": ["m0", "m1", "m2"]})

    # Ids with slashes and spaces round-trip through the path.
    odd = {"id": "a/b c", "vector": glove.base[0].tolist()}
    client.post("/collections/v/vectors", json={"items": [odd]})
    assert client.get("/collections/v/vectors/a%2Fb%20c").json()["id"] == "a/b c"

    assert client.delete("/collections/v/vectors/v3").json() == {"deleted": 1}
    error(client.get("/collections/v/vectors/v3"), 404, "v3")
    error(client.delete("/collections/v/vectors/v3"), 404, "v3")
    response = client.post("/collections/v/vectors/delete", json={"ids": ["v1", "v2", "v3", "nope"]})
    assert response.json() == {"deleted": 2}
    assert client.get("/collections/v").json()["count"] == 21 - 3
    error(client.get("/collections/nope/vectors/v1"), 404, "nope")
    error(client.post("/collections/v/vectors/delete", json={"ids": "v1"}), 422, "ids")


@pytest.mark.parametrize(
    ("items", "fragments"),
    [
        ([{"id": "a", "vector": [0.5] * 49}], ["expected 50", "got 49"]),
        (
            [{"id": "a", "vector": [0.5] * 50}, {"id": "b", "vector": [0.5] * 51}],
            ["items[1]", "expected 50", "got 51"],
        ),
        ([{"id": "a", "vector": [0.5] * 49 + ["x"]}], ["numbers", "'x'"]),
        ([{"id": "a", "vector": [0.5] * 49 + ["NaN"]}], ["numbers", "'NaN'"]),
        ([{"id": "a", "vector": [0.5] * 49 + [None]}], ["numbers", "None"]),
        ([{"id": "a", "vector": [0.5] * 49 + [True]}], ["numbers only", "True", "boolean"]),
        ([{"id": "a", "vector": [0.5] * 49 + [1e39]}], ["finite", "1 NaN/Inf"]),
        ([{"id": "a", "vector": [[0.5]] * 50}], ["nested"]),
        ([{"id": "a", "vector": []}], ["expected 50", "got 0"]),
        ([{"id": "a"}], ["exactly one of vector, vector_b64"]),
        ([{"id": "a", "vector": [0.5] * 50, "vector_b64": "AAAA"}], ["exactly one", "both"]),
        ([{"id": "b", "vector_b64": b64(np.full(50, np.nan))}], ["finite"]),
        ([{"id": "a", "vector_b64": base64.b64encode(b"\0" * 196).decode()}], ["200 bytes", "got 196"]),
        ([{"id": "a", "vector_b64": "not base64!"}], ["base64"]),
        # Ids, values and payloads are checked once, by the engine, which names the position.
        ([{"id": 7, "vector": [0.5] * 50}], ["id at position 0", "a string", "got int"]),
        ([{"id": "", "vector": [0.5] * 50}], ["id at position 0", "got 0 characters"]),
        ([{"id": "b", "vector": [0.5] * 50}, {"vector": [0.5] * 50}], ["items[1]", "expected an id"]),
        ([{"id": "a", "vector": [0.5] * 50, "payload": [1]}], ["payload"]),
        ([{"id": "a", "vector": [0.5] * 50, "meta": {}}], ["unknown", "meta"]),
        ([], ["non-empty"]),
        ([{"id": f"i{i}", "vector": [0.5] * 50} for i in range(1001)], ["at most 1000", "got 1001"]),
    ],
)
def test_upsert_rejects(client, items, fragments):
    create(client, "u")
    error(client.post("/collections/u/vectors", json={"items": items}), 422, *fragments)
    assert client.get("/collections/u").json()["count"] == 0


def test_upsert_base64_rows_decoded_together_keep_their_bytes_and_errors(client, glove):
    # 48-d rows are 192 bytes, base64 without padding: the rows of a run are decoded in one call
    # (parsing.vectors_from_b64_rows). Each row must keep its own bytes, and a bad row must still
    # be named by its position, before any later item's error.
    dim, n = 48, 300  # about 80 KB of body: parsed and converted in pieces
    rows = np.ascontiguousarray(glove.base[:n, :dim])
    create(client, "p", dim=dim)
    items = [{"id": f"p{i}", "vector_b64": b64(row)} for i, row in enumerate(rows)]
    items[7] = {"id": "p7", "vector": rows[7].tolist()}  # JSON lists beside base64 in one run
    assert client.post("/collections/p/vectors", json={"items": items}).json() == {"upserted": n}
    for i in (0, 7, 150, n - 1):
        got = np.array(client.get(f"/collections/p/vectors/p{i}").json()["vector"], dtype=np.float32)
        assert np.array_equal(got, rows[i]), i

    good = b64(rows[0])
    bad_chars = "!" + good[1:]  # the right length, not base64
    cut_short = good[:-1] + "="  # the right length, one byte short
    cases = [
        ({250: bad_chars}, ["items[250].vector_b64", "invalid base64"]),
        ({120: cut_short}, ["items[120].vector_b64", "expected 192 bytes", "got 191 bytes"]),
        ({n - 1: cut_short}, [f"items[{n - 1}].vector_b64", "got 191 bytes"]),
        # A row one character short and the next one longer join into valid base64.
        ({5: good[:-4], 6: good + good[:4]}, ["items[5].vector_b64"]),
        ({10: bad_chars, 20: {"id": "p20", "vector_b64": good, "meta": 1}}, ["items[10].vector_b64", "invalid"]),
        # Not strings at all (these were a 500: the joined decode took their length).
        ({40: 5}, ["items[40].vector_b64", "expected a base64 string"]),
        ({41: None}, ["items[41].vector_b64", "expected a base64 string"]),
    ]
    for changes, fragments in cases:
        sent = [{"id": f"q{i}", "vector_b64": good} for i in range(n)]
        for at, change in changes.items():
            sent[at] = change if isinstance(change, dict) else {"id": f"q{at}", "vector_b64": change}
        error(client.post("/collections/p/vectors", json={"items": sent}), 422, *fragments)
    assert client.get("/collections/p").json()["count"] == n


def test_upsert_rejects_unknown_fields_and_collections(client):
    create(client, "u", dim=2)
    error(client.post("/collections/u/vectors", json={"items": [], "upsert": True}), 422, "upsert")
    infinite = b'{"items": [{"id": "a", "vector": [1, 1e999]}]}'
    error(client.post("/collections/u/vectors", content=infinite), 422)
    item = {"id": "a", "vector": [1, 2]}
    error(client.post("/collections/nope/vectors", json={"items": [item]}), 404, "nope")


# ---- search -------------------------------------------------------------------------------


def test_search_by_vector_matches_exact(loaded, glove):
    queries = glove.queries[:20]
    truth, _ = brute_force_knn(glove.base[:N], queries, 10, "cosine")
    for q, row in zip(queries, truth):
        hits = loaded.post("/collections/g/search", json={"vector": q.tolist(), "k": 10}).json()["results"]
        assert [h["id"] for h in hits] == [f"v{i}" for i in row]
        scores = [h["score"] for h in hits]
        assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0
    hits = loaded.post("/collections/g/search", json={"vector": queries[0].tolist(), "k": 3, "exact": True})
    assert [h["id"] for h in hits.json()["results"]] == [f"v{i}" for i in truth[0][:3]]


def test_search_by_id_leaves_the_item_out(loaded, glove):
    hits = loaded.post("/collections/g/search", json={"id": "v7", "k": 5}).json()["results"]
    assert len(hits) == 5 and "v7" not in [h["id"] for h in hits]
    truth, _ = brute_force_knn(glove.base[:N], glove.base[7:8], 6, "cosine")
    assert [h["id"] for h in hits] == [f"v{i}" for i in truth[0] if i != 7][:5]
    error(loaded.post("/collections/g/search", json={"id": "missing"}), 404, "missing")


def test_search_with_base64_and_batches(loaded, glove):
    q = glove.queries[:3]
    by_list = [loaded.post("/collections/g/search", json={"vector": v.tolist()}).json() for v in q]
    by_b64 = [loaded.post("/collections/g/search", json={"vector_b64": b64(v)}).json() for v in q]
    expected = [[h["id"] for h in r["results"]] for r in by_list]
    assert [[h["id"] for h in r["results"]] for r in by_b64] == expected
    batch = loaded.post("/collections/g/search/batch", json={"vectors": q.tolist(), "k": 10}).json()
    batch_b64 = loaded.post("/collections/g/search/batch", json={"vectors_b64": b64(q), "k": 10}).json()
    assert [[h["id"] for h in row] for row in batch["results"]] == expected
    assert [[h["id"] for h in row] for row in batch_b64["results"]] == expected


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"vector": [0.1] * 49}, ["expected 50", "got 49"]),
        ({"vector": []}, ["expected 50", "got 0"]),
        ({"vector": [0.1] * 49 + ["NaN"]}, ["numbers", "'NaN'"]),
        ({"vector": [0.1] * 49 + [3.5e38 * 10]}, ["finite"]),
        # numpy read a boolean beside numbers as 1 or 0 (an all-boolean list was already caught).
        ({"vector": [0.1] * 49 + [True]}, ["numbers only", "True", "boolean"]),
        ({"vector": [1] * 49 + [False]}, ["numbers only", "False", "boolean"]),
        ({"vector": "0.1,0.2"}, ["list of 50 numbers", "string"]),
        ({"vector": [0.1] * 50, "k": 0}, ["k", "1..100", "got 0"]),
        ({"vector": [0.1] * 50, "k": 101}, ["k", "1..100", "got 101"]),
        ({"vector": [0.1] * 50, "k": "10"}, ["k", "'10'"]),
        ({"vector": [0.1] * 50, "k": 2.5}, ["k", "2.5"]),
        ({"vector": [0.1] * 50, "params": {"nprobe": 4}}, ["nprobe"]),
        ({"vector": [0.1] * 50, "params": [1]}, ["params"]),
        ({"vector": [0.1] * 50, "exact": "yes"}, ["exact", "'yes'"]),
        ({"vector": [0.1] * 50, "top_k": 5}, ["unknown", "top_k"]),
        ({"vector": [0.1] * 50, "id": "v1"}, ["exactly one", "vector", "id"]),
        ({"k": 5}, ["exactly one"]),
        ({"id": 12}, ["id", "12"]),
        ({"vector_b64": b64(np.ones(49))}, ["200 bytes", "196"]),
    ],
)
def test_search_rejects(loaded, body, fragments):
    error(loaded.post("/collections/g/search", json=body), 422, *fragments)


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"vectors": [[0.1] * 50] * 9}, ["at most 8", "got 9"]),
        ({"vectors": [[0.1] * 50, [0.1] * 49]}, ["vectors[1]", "expected 50", "got 49"]),
        ({"vectors": [[0.1] * 50, [0.0] * 49 + [True]]}, ["numbers only", "True", "boolean"]),
        ({"vectors": []}, ["non-empty"]),
        ({"vectors": [[0.1] * 50], "vectors_b64": "AAAA"}, ["exactly one"]),
        ({"vectors_b64": b64(np.ones((9, 50)))}, ["at most 8", "got 9"]),
        ({"vectors_b64": b64(np.ones(75))}, ["multiple of 200 bytes", "300"]),
        ({"vectors": [[0.1] * 50], "k": 0}, ["1..100"]),
        ({"vector": [0.1] * 50}, ["unknown", "vector"]),
    ],
)
def test_batch_search_rejects(loaded, body, fragments):
    error(loaded.post("/collections/g/search/batch", json=body), 422, *fragments)


def test_search_unknown_collection_is_404(client):
    error(client.post("/collections/nope/search", json={"vector": [1.0]}), 404, "nope")
    error(client.post("/collections/nope/search/batch", json={"vectors": [[1.0]]}), 404, "nope")


def test_search_params_override_per_request(client, glove):
    create(client, "h", kind="hnswlib")
    upsert(client, "h", glove.base[:500])
    job = client.post("/collections/h/rebuild").json()["job_id"]
    wait_job(client, job)
    body = {"vector": glove.queries[0].tolist(), "k": 10, "params": {"ef": 64}}
    assert len(client.post("/collections/h/search", json=body).json()["results"]) == 10
    error(client.post("/collections/h/search", json={**body, "params": {"nprobe": 3}}), 422, "nprobe")
    error(client.post("/collections/h/search", json={**body, "params": {"ef": 2**40}}), 422, "ef", "2147483647")


def test_vectors_whose_scores_would_overflow_are_422(client):
    """float32 scores of vectors with huge norms overflowed to inf: answered as `"score": null`
    (ip), or the item silently left out (l2, and ip's -inf). Now such vectors are rejected."""
    for name, metric in (("ip4", "ip"), ("l24", "l2")):
        create(client, name, dim=4, metric=metric)
        body = {"items": [{"id": "a", "vector": [1, 2, 3, 4]}, {"id": "big", "vector": [1e30, 0, 0, 0]}]}
        error(client.post(f"/collections/{name}/vectors", json=body), 422, "norm", "1e+18", "row 1")
        upsert_ok = client.post(f"/collections/{name}/vectors", json={"items": body["items"][:1]})
        assert upsert_ok.status_code == 200, upsert_ok.text
        for query in ([1e30, 1, 1, 1], [-1e20, 0, 0, 0]):
            for exact in (False, True):
                response = client.post(f"/collections/{name}/search", json={"vector": query, "exact": exact})
                error(response, 422, "norm")
            error(client.post(f"/collections/{name}/search/batch", json={"vectors": [query]}), 422, "norm")
        hits = client.post(f"/collections/{name}/search", json={"vector": [1e17, 0, 0, 0]}).json()["results"]
        assert [h["id"] for h in hits] == ["a"] and all(isinstance(h["score"], float) for h in hits)


def test_cosine_handles_tiny_and_large_components(client):
    """The cosine norm was summed in float32: a row of 1e-30s was called all-zero (422) and a
    row with a 1e20 became all zeros (every score 0.0)."""
    create(client, "cos4", dim=4, metric="cosine")
    items = [{"id": "x", "vector": [1, 0, 0, 0]}, {"id": "y", "vector": [0, 1, 0, 0]}]
    assert client.post("/collections/cos4/vectors", json={"items": items}).status_code == 200
    for query in ([1e-30, 0, 0, 0], [1e17, 1, 1, 1]):
        hits = client.post("/collections/cos4/search", json={"vector": query, "k": 2}).json()["results"]
        assert hits[0]["id"] == "x" and hits[0]["score"] == pytest.approx(1.0, abs=1e-6), hits


# ---- limits -------------------------------------------------------------------------------


def test_body_too_large_is_413(client):
    create(client, "b", dim=2)
    big = b'{"items": [' + b" " * MAX_BODY + b"]}"
    detail = error(client.post("/collections/b/vectors", content=big), 413, str(MAX_BODY))
    assert str(len(big)) in detail

    def chunks():  # no Content-Length: the limit counts the streamed bytes
        yield b'{"items": ['
        for _ in range(MAX_BODY // 4096 + 2):
            yield b" " * 4096
        yield b"]}"

    error(client.post("/collections/b/vectors", content=chunks()), 413, str(MAX_BODY))
    error(client.post("/collections/b/search", content=chunks()), 413, str(MAX_BODY))
    assert client.get("/collections/b").json()["count"] == 0


# ---- rebuild and jobs ---------------------------------------------------------------------


def test_rebuild_job_and_conflict(client, glove):
    create(client, "r", kind="hnswlib", params={"M": 32, "ef_construction": 400})
    upsert(client, "r", glove.base)
    response = client.post("/collections/r/rebuild", json={})
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    error(client.post("/collections/r/rebuild"), 409, "r")
    job = wait_job(client, job_id)
    assert job["state"] == "succeeded" and job["progress"] == 1.0 and job["error"] is None, job
    info = client.get("/collections/r").json()
    assert info["main_count"] == len(glove.base) and info["index"]["built"]["kind"] == "hnswlib"
    error(client.get("/jobs/no-such-job"), 404, "no-such-job")
    error(client.post("/collections/nope/rebuild"), 404, "nope")
    error(client.post("/collections/r/rebuild", json={"force": True}), 422, "force")


def test_hot_path_and_router_answer_alike(tmp_path, glove):
    """The searches are answered from ASGI ahead of the router; the router's routes must agree."""
    bodies = [
        ("/collections/g/search", {"vector": glove.queries[0].tolist(), "k": 5}),
        ("/collections/g/search", {"id": "v3", "k": 3, "exact": True}),
        ("/collections/g/search/batch", {"vectors_b64": b64(glove.queries[:2]), "k": 2}),
        ("/collections/g/search", {"vector": [1.0] * 49}),
        ("/collections/g/search", {"vector": [1.0] * 50, "k": 0}),
        ("/collections/g/search", {"id": "nope"}),
        ("/collections/nope/search", {"vector": [1.0] * 50}),
        ("/collections/g/search/batch", {"vectors": [[1.0] * 50] * 9}),
    ]
    answers = []
    for hot_path in (True, False):
        settings = Settings(data_dir=tmp_path / f"d{hot_path}", max_batch=8)
        with TestClient(create_app(settings, hot_path=hot_path), raise_server_exceptions=False) as client:
            wait_ready(client)
            create(client, "g")
            upsert(client, "g", glove.base[:200])
            answers.append([(r.status_code, r.json()) for r in (client.post(p, json=b) for p, b in bodies)])
            metrics = client.get("/metrics").text
            assert 'route="/collections/{name}/search",status="200"' in metrics
            assert 'route="/collections/{name}/search",status="422"' in metrics
    assert answers[0] == answers[1]
    assert [status for status, _ in answers[0]] == [200, 200, 200, 422, 422, 404, 404, 422]


def test_concurrent_searches_are_batched_and_answered_alike(tmp_path, glove):
    """Concurrent searches share engine calls (micro-batching); each must get exactly the answer it
    gets alone, whatever its k, params, exactness or exclusion, and errors stay with their request."""
    import asyncio

    import httpx

    app = create_app(Settings(data_dir=tmp_path / "data"))
    requests = []
    for i in range(24):
        q = glove.queries[i].tolist()
        requests += [
            {"vector": q, "k": 3 + i % 4},
            {"vector": q, "k": 5, "params": {"ef": 20 + i}},
            {"id": f"v{i}", "k": 4},
            {"vector": q, "k": 2, "exact": True},
        ]
    requests += [{"vector": glove.queries[0].tolist(), "params": {"nprobe": 2}}] * 3
    batch_calls = []
    original_run = batching._run

    def answer(response: httpx.Response) -> tuple[int, dict]:
        return response.status_code, response.json()

    async def run() -> tuple[list, list]:
        async with app.router.lifespan_context(app):
            deadline = time.monotonic() + READY_TIMEOUT
            while not app.state.manager.is_ready:  # awaited, not wait_ready: the loop runs the startup
                assert time.monotonic() < deadline, f"not ready after {READY_TIMEOUT}s"
                await asyncio.sleep(0.01)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                body = {"name": "g", "dim": 50, "metric": "cosine", "index": {"kind": "hnswlib"}}
                assert (await client.post("/collections", json=body)).status_code == 201
                items = [{"id": f"v{i}", "vector": v.tolist()} for i, v in enumerate(glove.base[:1000])]
                assert (await client.post("/collections/g/vectors", json={"items": items})).status_code == 200
                alone = [(await client.post("/collections/g/search", json=r)) for r in requests]
                original = batching._run  # every engine call, on the loop or on a search thread

                def counting_run(batch):
                    batch_calls.append(len(batch))
                    return original(batch)

                batching._run = counting_run
                together = await asyncio.gather(
                    *(client.post("/collections/g/search", json=r) for r in requests)
                )
                return [answer(r) for r in alone], [answer(r) for r in together]

    try:
        alone, together = asyncio.run(run())
    finally:
        batching._run = original_run
    diff = [(i, a, t) for i, (a, t) in enumerate(zip(alone, together)) if a != t]
    assert together == alone, diff[:3]
    assert [status for status, _ in alone[-3:]] == [422] * 3 and "nprobe" in alone[-1][1]["detail"]
    assert all(status == 200 for status, _ in alone[:-3])
    assert max(batch_calls) > 1, batch_calls  # some engine calls did serve several requests


def test_not_ready_when_the_collections_cannot_be_opened(tmp_path):
    """/readyz (and every engine route) answers 503 with the reason; /healthz too, so a
    supervisor restarts the process instead of routing traffic to it."""
    not_a_directory = tmp_path / "data"
    not_a_directory.write_text("")
    with TestClient(create_app(Settings(data_dir=not_a_directory)), raise_server_exceptions=False) as client:
        deadline = time.monotonic() + 10
        while client.get("/healthz").status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        detail = error(client.get("/readyz"), 503, "opening the collections failed")
        assert error(client.get("/healthz"), 503) == detail
        error(client.get("/collections"), 503, "opening the collections failed")
        error(client.post("/collections/x/search", json={"vector": [1.0]}), 503)


@pytest.mark.parametrize("field, value", [("dim", True), ("dim", "4"), ("dim", 4.5), ("shards", True)])
def test_create_rejects_non_integer_dim_and_shards(client, field, value):
    body = {"name": "strict", "dim": 4, "metric": "l2", field: value}
    response = client.post("/collections", json=body)
    assert response.status_code == 422
    assert field in response.json()["detail"]


def test_a_bad_query_merged_into_a_batch_fails_only_its_own_request(tmp_path):
    """The batcher merges concurrent queries into one engine call; a query the engine rejects
    (an all-zero vector under cosine) must not fail the requests it was merged with."""
    import asyncio

    from annserve.api.transport.batching import _Request, _run
    from annserve.engine.manager import CollectionManager

    manager = CollectionManager(Settings(data_dir=tmp_path))
    manager.open()
    try:
        collection = manager.create("merged", 4, "cosine", "flat", {})
        collection.upsert(["a", "b"], np.eye(4, dtype=np.float32)[:2], [None, None])
        loop = asyncio.new_event_loop()
        good = _Request(collection, np.ones((1, 4), np.float32), 1, None, False, None, loop.create_future())
        bad = _Request(collection, np.zeros((1, 4), np.float32), 1, None, False, None, loop.create_future())
        (good_hits, good_error), (bad_hits, bad_error) = _run([good, bad])
        loop.close()
    finally:
        manager.close()
    assert good_error is None and len(good_hits[0]) == 1
    assert bad_hits is None and "all-zero" in str(bad_error)

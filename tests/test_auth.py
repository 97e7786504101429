"""API keys (CONTRACT section 4): roles, 401/403, rotation, both headers, the hot path, /metrics,
OpenAPI, and keys never in answers or logs."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from test_api import wait_ready

from annserve.api import auth
from annserve.api.app import create_app
from annserve.api.auth import KeyRing, required_role, warn_if_open
from annserve.settings import Settings

ADMIN = ("admin-key-one", "admin-key-two")  # two admin keys: a rotation in progress
READ = ("read-key-one",)
METRICS = "metrics-key"
ALL_KEYS = (*ADMIN, *READ, METRICS)

# Every route that a read key may use; everything else but the open ones needs an admin key.
READ_ROUTES = {
    ("GET", "/collections"),
    ("GET", "/collections/{name}"),
    ("GET", "/collections/{name}/vectors/{item_id}"),
    ("POST", "/collections/{name}/search"),
    ("POST", "/collections/{name}/search/batch"),
    ("GET", "/collections/{name}/recall"),
    ("GET", "/jobs/{job_id}"),
}
OPEN_ROUTES = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/openapi.json"), ("GET", "/docs")}


def keyed_settings(tmp_path, **extra) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        admin_api_key=" , ".join(ADMIN),  # blanks around the commas are ignored
        api_key=",".join(READ),
        **extra,
    )


@pytest.fixture(params=[True, False], ids=["hot-path", "router"])
def keyed(request, tmp_path):
    """A keyed app with collection `c` (dim 2) holding item `a`, with and without the hot path."""
    app = create_app(keyed_settings(tmp_path), hot_path=request.param)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        admin = {"X-API-Key": ADMIN[0]}
        body = {"name": "c", "dim": 2, "metric": "l2", "index": {"kind": "flat"}}
        assert client.post("/collections", json=body, headers=admin).status_code == 201
        items = {"items": [{"id": "a", "vector": [1.0, 2.0], "payload": {"p": 1}}]}
        assert client.post("/collections/c/vectors", json=items, headers=admin).status_code == 200
        yield client


# (method, path, body, status with the right key)
READ_CALLS = [
    ("GET", "/collections", None, 200),
    ("GET", "/collections/c", None, 200),
    ("GET", "/collections/c/vectors/a", None, 200),
    ("POST", "/collections/c/search", {"vector": [1.0, 2.0], "k": 1}, 200),
    ("POST", "/collections/c/search/batch", {"vectors": [[1.0, 2.0]], "k": 1}, 200),
    ("GET", "/jobs/nope", None, 404),
]
ADMIN_CALLS = [
    ("POST", "/collections", {"name": "d", "dim": 2, "metric": "l2", "index": {"kind": "flat"}}, 201),
    ("POST", "/collections/c/vectors", {"items": [{"id": "b", "vector": [3.0, 4.0]}]}, 200),
    ("POST", "/collections/c/vectors/delete", {"ids": ["zzz"]}, 200),
    ("DELETE", "/collections/c/vectors/zzz", None, 404),
    ("POST", "/collections/c/rebuild", {}, 202),
    ("DELETE", "/collections/nope", None, 404),
    ("POST", "/no/such/route", {}, 404),  # unknown routes are closed too, not probed for free
]


def call(client, method, path, body, headers=None):
    return client.request(method, path, json=body, headers=headers or {})


def assert_refused(response, status, *fragments):
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert set(response.json()) == {"detail"}
    for fragment in fragments:
        assert fragment in detail, (fragment, detail)
    for key in ALL_KEYS:
        assert key not in response.text, "a key leaked into an answer"
    return detail


@pytest.mark.parametrize("method,path,body,ok", READ_CALLS + ADMIN_CALLS)
def test_no_key_is_401(keyed, method, path, body, ok):
    response = call(keyed, method, path, body)
    assert_refused(response, 401, "missing API key", "X-API-Key")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("method,path,body,ok", READ_CALLS + ADMIN_CALLS)
@pytest.mark.parametrize("wrong", ["admin-key-on", "admin-key-one-", "x" * 300, "ADMIN-KEY-ONE"])
def test_wrong_key_is_403(keyed, method, path, body, ok, wrong):
    response = call(keyed, method, path, body, {"X-API-Key": wrong})
    assert_refused(response, 403, "not valid")
    assert wrong not in response.text


@pytest.mark.parametrize("method,path,body,ok", ADMIN_CALLS)
def test_read_key_on_an_admin_route_is_403(keyed, method, path, body, ok):
    response = call(keyed, method, path, body, {"X-API-Key": READ[0]})
    assert_refused(response, 403, "needs an admin key", "role")


@pytest.mark.parametrize("method,path,body,ok", READ_CALLS)
def test_read_key_reads(keyed, method, path, body, ok):
    assert call(keyed, method, path, body, {"X-API-Key": READ[0]}).status_code == ok
    assert call(keyed, method, path, body, {"Authorization": f"Bearer {READ[0]}"}).status_code == ok


@pytest.mark.parametrize("method,path,body,ok", READ_CALLS + ADMIN_CALLS)
@pytest.mark.parametrize("key", ADMIN)
def test_every_admin_key_does_everything(keyed, method, path, body, ok, key):
    header = {"Authorization": f"Bearer {key}"} if key == ADMIN[1] else {"X-API-Key": key}
    response = call(keyed, method, path, body, header)
    assert response.status_code == ok, response.text


def test_probes_and_docs_stay_open(keyed):
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
        assert keyed.get(path).status_code == 200, path


def test_search_answers_are_the_same_with_keys(keyed):
    hits = call(
        keyed, "POST", "/collections/c/search", {"vector": [1.0, 2.0], "k": 1}, {"X-API-Key": READ[0]}
    )
    assert hits.json() == {"results": [{"id": "a", "score": 0.0}]}


def test_no_key_configured_leaves_everything_open(tmp_path):
    with TestClient(create_app(Settings(data_dir=tmp_path / "d")), raise_server_exceptions=False) as client:
        wait_ready(client)
        assert client.get("/collections").status_code == 200
        body = {"name": "c", "dim": 2, "metric": "l2", "index": {"kind": "flat"}}
        assert client.post("/collections", json=body, headers={"X-API-Key": "anything"}).status_code == 201
        assert client.get("/metrics").status_code == 200


def test_read_key_alone_closes_the_admin_routes(tmp_path):
    """A read-only deployment: with no admin key the admin routes are closed, not open."""
    settings = Settings(data_dir=tmp_path / "d", api_key="r")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        assert client.get("/collections", headers={"X-API-Key": "r"}).status_code == 200
        body = {"name": "c", "dim": 2, "metric": "l2"}
        assert_refused(
            client.post("/collections", json=body, headers={"X-API-Key": "r"}), 403, "no admin key"
        )


def test_metrics_open_by_default_and_keyed_when_asked(tmp_path):
    with TestClient(create_app(keyed_settings(tmp_path / "a"))) as client:
        wait_ready(client)
        assert client.get("/metrics").status_code == 200  # the default: scrapers need no key
    settings = keyed_settings(tmp_path / "b", metrics_api_key=METRICS)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        assert_refused(client.get("/metrics"), 401, "ANNSERVE_METRICS_API_KEY")
        assert_refused(client.get("/metrics", headers={"X-API-Key": READ[0]}), 403)
        assert client.get("/metrics", headers={"X-API-Key": METRICS}).status_code == 200
        assert_refused(client.get("/workers"), 401, "ANNSERVE_METRICS_API_KEY")
        assert client.get("/workers", headers={"X-API-Key": METRICS}).status_code == 200
        assert client.get("/metrics", headers={"Authorization": f"bearer {ADMIN[1]}"}).status_code == 200
        # The metrics key is for metrics only.
        assert_refused(client.get("/collections", headers={"X-API-Key": METRICS}), 403)


def test_every_route_has_the_intended_role(tmp_path):
    """The read routes are exactly the listed ones; a route added later is admin unless listed."""
    app = create_app(Settings(data_dir=tmp_path / "d"))
    seen = set()
    for path, operations in app.openapi()["paths"].items():
        for method in (m.upper() for m in operations):
            role = required_role(method, path)
            seen.add((method, path))
            if (method, path) in READ_ROUTES:
                assert role == "read", (method, path, role)
            elif (method, path) in OPEN_ROUTES:
                assert role == "open", (method, path, role)
            elif path in ("/metrics", "/workers"):  # /workers: the processes' memory, as in /metrics
                assert role == "metrics", (method, path, role)
            else:
                assert role == "admin", (method, path, role)
    assert {("POST", "/collections/{name}/rebuild"), ("POST", "/collections/{name}/search")} <= seen
    # Concrete paths, including ids with slashes and look-alike paths.
    assert required_role("GET", "/collections/c/vectors/a/b/c") == "read"
    assert required_role("HEAD", "/collections/c") == "read"
    assert required_role("GET", "/collections/c/snapshots") == "admin"
    assert required_role("GET", "/collections/c/snapshots/s.tar") == "admin"
    assert required_role("POST", "/collections/c/search/batch/x") == "admin"
    assert required_role("POST", "/collections/c/vectors") == "admin"
    assert required_role("PATCH", "/collections/c") == "admin"
    assert required_role("POST", "/collections/c/tune") == "admin"
    assert required_role("GET", "/healthz/") == "admin"


def test_keys_are_compared_in_constant_time(monkeypatch):
    """Every configured key is compared (digests of one length), whichever one matches."""
    calls = []
    real = auth.hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    ring = KeyRing("k1,k2,k3", None, None)
    assert ring.check("POST", "/collections", b"k1") is None
    assert len(calls) == 3 and set(calls) == {(32, 32)}
    calls.clear()
    assert ring.check("POST", "/collections", b"a-much-longer-wrong-key")[0] == 403
    assert all(lengths == (32, 32) for lengths in calls) and len(calls) >= 3


def test_openapi_declares_the_security_scheme(keyed):
    schema = keyed.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["BearerKey"]["scheme"] == "bearer"
    assert schema["paths"]["/healthz"]["get"]["security"] == []
    search = schema["paths"]["/collections/{name}/search"]["post"]
    assert {"ApiKeyHeader": []} in search["security"] and {"401", "403"} <= set(search["responses"])


def test_keys_never_reach_the_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    settings = keyed_settings(tmp_path, host="0.0.0.0")
    warn_if_open(settings)
    assert repr(settings).count("**********") >= 2
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        for key in ("wrong", READ[0], ADMIN[0]):
            client.post("/collections", json={"name": "x", "dim": 0}, headers={"X-API-Key": key})
            client.post("/collections/x/search", content=b"{", headers={"X-API-Key": key})
    for key in ALL_KEYS:
        assert key not in caplog.text


@pytest.mark.parametrize(
    "host,keys,warned",
    [
        ("0.0.0.0", {}, True),
        ("10.1.2.3", {}, True),
        ("::", {}, True),
        ("myhost", {}, True),
        ("127.0.0.1", {}, False),
        ("localhost", {}, False),
        ("::1", {}, False),
        ("0.0.0.0", {"admin_api_key": "a"}, False),
    ],
)
def test_an_open_service_beyond_loopback_warns_at_start(tmp_path, caplog, host, keys, warned):
    caplog.set_level(logging.WARNING, logger="annserve")
    warn_if_open(Settings(data_dir=tmp_path, host=host, **keys))
    assert ("NO API KEY IS SET" in caplog.text) == warned

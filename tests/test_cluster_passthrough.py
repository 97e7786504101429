"""The router passes the search fields it does not use on to the nodes unchanged, and keeps what
the nodes put in each hit through its merge (CONTRACT section 3: `filter`, `with_payload`,
`with_vector`, `score_threshold`).

The nodes here are fakes that answer what a node answers and echo the request they got, so the
test sees exactly what the router sent, whatever the real nodes accept today. The router is the
real router app, served by uvicorn on a loopback port, as are the fakes.
"""

from __future__ import annotations

import base64
import socket
import threading
import time

import httpx
import numpy as np
import orjson
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from annserve.cluster.app import create_router_app
from annserve.cluster.ownership import shard_of
from annserve.settings import Settings

DIM = 4
N_SHARDS = 2
EXTRA = {
    "filter": {"$and": [{"genre": {"$in": ["jazz", "soul"]}}, {"year": {"$gte": 1960}}]},
    "with_payload": ["genre", "year"],
    "with_vector": True,
    "score_threshold": 0.25,
    "params": {"ef": 64},
}


class FakeNode:
    """Shard `index`: answers info, get and searches like a node (ip metric), records each body."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.bodies: list[dict] = []
        self.app = Starlette(routes=[
            Route("/readyz", lambda r: JSONResponse({"status": "ready"})),
            Route("/collections/{name}", self.info),
            Route("/collections/{name}/vectors/{item_id}", self.get_vector),
            Route("/collections/{name}/search", self.search, methods=["POST"]),
            Route("/collections/{name}/search/batch", self.batch, methods=["POST"]),
        ])  # fmt: skip

    async def info(self, request: Request) -> JSONResponse:
        return JSONResponse({"name": request.path_params["name"], "dim": DIM, "metric": "ip"})

    async def get_vector(self, request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"], "vector": [1.0] * DIM, "payload": None})

    def hits(self, body: dict, row: int) -> list[dict]:
        # Scores interleave across the shards: shard 0 has 0.9, 0.7, ...; shard 1 0.8, 0.6, ...
        out = []
        for rank in range(3):
            hit = {"id": f"s{self.index}-q{row}-{rank}", "score": round(0.9 - 0.1 * self.index - 0.2 * rank, 3)}
            if body.get("with_payload"):
                hit["payload"] = {"shard": self.index, "rank": rank}
            if body.get("with_vector"):
                hit["vector"] = [float(self.index)] * DIM
            out.append(hit)
        return out

    async def search(self, request: Request) -> JSONResponse:
        body = orjson.loads(await request.body())
        self.bodies.append(body)
        if "bogus" in body:
            return JSONResponse({"detail": "request body: unknown field(s) ['bogus']"}, status_code=422)
        return JSONResponse({"results": self.hits(body, 0)})

    async def batch(self, request: Request) -> JSONResponse:
        body = orjson.loads(await request.body())
        self.bodies.append(body)
        n = len(base64.b64decode(body["vectors_b64"])) // (4 * DIM)
        return JSONResponse({"results": [self.hits(body, row) for row in range(n)]})


class Served:
    """An ASGI app served by uvicorn in a thread on a free loopback port."""

    def __init__(self, app) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture()
def cluster():
    nodes = [FakeNode(i) for i in range(N_SHARDS)]
    served = [Served(node.app).start() for node in nodes]
    router = None
    try:
        settings = Settings(shard_urls=",".join(s.url for s in served), admin_api_key=None, api_key=None)
        router = Served(create_router_app(settings)).start()
        with httpx.Client(base_url=router.url, timeout=10) as client:
            yield client, nodes
    finally:
        for s in [*served, *([router] if router else [])]:
            s.stop()


def test_search_fields_reach_every_node_unchanged_and_hits_keep_theirs(cluster):
    client, nodes = cluster
    query = [0.5, -1.0, 2.0, 0.25]
    r = client.post("/collections/c/search", json={"vector": query, "k": 4, **EXTRA, "allow_partial": True})
    assert r.status_code == 200, r.text
    for node in nodes:
        sent = node.bodies[-1]
        assert {key: sent[key] for key in EXTRA} == EXTRA
        assert "allow_partial" not in sent and "vector" not in sent  # the router's own / sent as base64
        assert np.frombuffer(base64.b64decode(sent["vector_b64"]), "<f4").tolist() == query
    hits = r.json()["results"]
    assert [h["score"] for h in hits] == [0.9, 0.8, 0.7, 0.6]  # the global merge, best first
    assert [h["payload"]["shard"] for h in hits] == [0, 1, 0, 1]
    assert all(h["vector"] == [float(h["payload"]["shard"])] * DIM for h in hits)

    # Batch: the same, row by row.
    r = client.post("/collections/c/search/batch", json={"vectors": [query, query], "k": 2, **EXTRA})
    assert r.status_code == 200, r.text
    assert all({key: node.bodies[-1][key] for key in EXTRA} == EXTRA for node in nodes)
    rows = r.json()["results"]
    assert [[h["id"] for h in row] for row in rows] == [["s0-q0-0", "s1-q0-0"], ["s0-q1-0", "s1-q1-0"]]
    assert all("payload" in h and "vector" in h for row in rows for h in row)

    # Without the fields, the nodes get none of them and the hits carry only id and score.
    r = client.post("/collections/c/search", json={"vector": query, "k": 2})
    assert all(not (node.bodies[-1].keys() & EXTRA.keys()) for node in nodes)
    assert all(h.keys() == {"id", "score"} for h in r.json()["results"])


def test_search_by_id_carries_the_fields_to_owner_and_others(cluster):
    client, nodes = cluster
    item = "item-7"
    owner = shard_of(item, N_SHARDS)
    r = client.post("/collections/c/search", json={"id": item, "k": 3, **EXTRA})
    assert r.status_code == 200, r.text
    for node in nodes:
        sent = node.bodies[-1]
        assert {key: sent[key] for key in EXTRA} == EXTRA
        assert ("id" in sent) == (node.index == owner) and ("vector_b64" in sent) == (node.index != owner)


def test_a_field_the_nodes_refuse_is_their_422(cluster):
    client, _ = cluster
    r = client.post("/collections/c/search", json={"vector": [1.0] * DIM, "bogus": 1})
    assert r.status_code == 422 and "bogus" in r.json()["detail"], r.text
    # What the router itself reads is still checked there, before any node is asked.
    for body, words in (({"vector": [1.0] * DIM, "k": 0}, "k: expected"), (b"[1]", "JSON object"),
                        (b"{", "invalid JSON"), ({"vector": [1.0] * 3}, str(DIM))):  # fmt: skip
        sent = {"content": body} if isinstance(body, bytes) else {"json": body}
        r = client.post("/collections/c/search", **sent)
        assert r.status_code == 422 and words in r.json()["detail"], r.text

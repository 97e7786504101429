"""annserve itself as a peer: `annserve serve` (app/bench/server_process.py) with an hnswlib
collection; batches go in as base64 upserts, and it is index-ready when a rebuild has moved them
all into the main index (they are searchable at once, through the fresh index, before that)."""

from __future__ import annotations

import base64
import http.client
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import orjson

from ..http import REQUEST_TIMEOUT, b64_floats, rebuild_and_wait, search_bodies_b64
from ..server_process import ServeProcess
from .base import HNSW_EF_CONSTRUCTION, HNSW_M, Peer

COLLECTION = "bench"
REBUILD_TIMEOUT = 1800.0


class AnnservePeer(Peer):
    name = "annserve"
    http = True

    def __init__(self, kind: str = "hnswlib", workers: int = 1) -> None:
        """`workers`: `annserve serve --workers` (processes serving the port)."""
        super().__init__()
        self.kind = kind
        self.workers = workers
        self.server: ServeProcess | None = None
        self.client: httpx.Client | None = None

    def start(self, workdir: Path) -> None:
        # No automatic rebuild while the batches come in: the one rebuild is the time to ready.
        env = {"ANNSERVE_FRESH_LIMIT": str(10**8), "ANNSERVE_LOG_LEVEL": "warning"}
        self.server = ServeProcess(workdir / "data", workdir / "server.log", env, workers=self.workers)
        self.client = self.server.start(request_timeout=REQUEST_TIMEOUT)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.server is not None:
            self.server.stop()

    def server_pid(self) -> int:
        if self.server is None or self.server.proc is None or self.server.proc.poll() is not None:
            raise RuntimeError("annserve is not running")
        return self.server.proc.pid

    def version(self) -> str:
        workers = f", {self.workers} workers" if self.workers > 1 else ""
        return f"annserve {version('annserve')} ({self.kind}{workers})"

    def durability(self) -> str:
        return "yes (SQLite WAL, synchronous=FULL, committed before the answer)"

    def create(self, dim: int) -> None:
        index = {"kind": self.kind}
        if self.kind in ("hnswlib", "hnsw"):
            index["params"] = {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION}
        body = {"name": COLLECTION, "dim": dim, "metric": "cosine", "index": index}
        self.client.post("/collections", json=body).raise_for_status()

    def insert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        items = [
            {"id": str(i), "vector_b64": base64.b64encode(r.astype("<f4").tobytes()).decode()}
            for i, r in zip(ids.tolist(), vectors)
        ]
        r = self.client.post(f"/collections/{COLLECTION}/vectors", content=orjson.dumps({"items": items}))
        r.raise_for_status()

    def finish_ingest(self, n: int) -> None:
        rebuild_and_wait(self.client, COLLECTION, REBUILD_TIMEOUT)
        info = self.client.get(f"/collections/{COLLECTION}").json()
        if info["main_count"] != n:
            raise RuntimeError(f"annserve: expected {n} items in the main index after the rebuild, "
                               f"got {info['main_count']}")  # fmt: skip

    def _params(self) -> dict:
        return {"ef": self.ef} if self.kind in ("hnswlib", "hnsw") else {}

    def search_many(self, queries: np.ndarray, k: int) -> np.ndarray:
        found = np.full((len(queries), k), -1, dtype=np.int64)
        for lo in range(0, len(queries), 500):
            body = orjson.dumps({"vectors": queries[lo : lo + 500], "k": k, "params": self._params()},
                                option=orjson.OPT_SERIALIZE_NUMPY)  # fmt: skip
            r = self.client.post(f"/collections/{COLLECTION}/search/batch", content=body)
            r.raise_for_status()
            for row, hits in enumerate(r.json()["results"], start=lo):
                found[row, : len(hits)] = [int(h["id"]) for h in hits]
        return found

    def http_search(self, queries: np.ndarray, k: int) -> tuple[str, list[bytes]]:
        # Queries as float32 bytes in base64 (`vector_b64`), as the Redis client sends its blob.
        return f"{self.server.url}/collections/{COLLECTION}/search", search_bodies_b64(queries, k, self._params())

    def connect(self) -> Any:
        url = urlsplit(self.server.url)
        return http.client.HTTPConnection(url.hostname, url.port, timeout=REQUEST_TIMEOUT)

    def search(self, conn: Any, query: np.ndarray, k: int) -> list[int]:
        body = orjson.dumps({"vector_b64": b64_floats(query), "k": k, "params": self._params()})
        conn.request("POST", f"/collections/{COLLECTION}/search", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"annserve answered {response.status}: {data[:200]!r}")
        return [int(h["id"]) for h in orjson.loads(data)["results"]]


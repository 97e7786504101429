"""Chroma as a peer: `chroma run` (the chromadb package's server) on loopback, a collection with
an HNSW configuration (cosine, max_neighbors = 16, ef_construction = 200), batches added through
the chromadb client, searches through its REST query endpoint (by wrk, or http.client).

Chroma applies an `ef_search` change only when the collection is loaded again: `set_ef` modifies
the configuration and restarts the server on the same data."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .base import HNSW_EF_CONSTRUCTION, HNSW_M, Peer, PeerMissing, free_port, stop_process, wait_until

COLLECTION = "bench"
API = "/api/v2/tenants/default_tenant/databases/default_database/collections"
INSTALL = "pip install chromadb (or 'annserve[peers]')"
INITIAL_EF = 100  # Chroma's default ef_search until the first set_ef


class ChromaPeer(Peer):
    name = "chroma"
    http = True

    def __init__(self) -> None:
        super().__init__()
        self.ef = INITIAL_EF
        self.collection: Any = None
        self.collection_id = ""

    def check_installed(self) -> None:
        try:
            import chromadb  # noqa: F401
        except ImportError:
            raise PeerMissing(f"chroma: chromadb is not installed: {INSTALL}") from None

    def _chroma_exe(self) -> str:
        exe = Path(sys.executable).parent / "chroma"
        return str(exe) if exe.exists() else "chroma"

    def start(self, workdir: Path) -> None:
        self.workdir = workdir
        self._launch()

    def _launch(self) -> None:
        import chromadb
        from chromadb.config import Settings

        self.port = free_port()
        log = self.workdir / "chroma.log"
        command = [self._chroma_exe(), "run", "--path", str(self.workdir / "db"), "--host", "127.0.0.1",
                   "--port", str(self.port)]  # fmt: skip
        env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.workdir)  # fmt: skip

        def ready() -> bool:
            # The client checks the server when it is made: made once the server answers.
            self.client = chromadb.HttpClient(host="127.0.0.1", port=self.port,
                                              settings=Settings(anonymized_telemetry=False))  # fmt: skip
            return bool(self.client.heartbeat())

        wait_until(ready, self.proc, "chroma run", log)
        if self.collection_id:
            self.collection = self.client.get_collection(COLLECTION, embedding_function=None)

    def version(self) -> str:
        return f"Chroma {version('chromadb')} (server API {self.client.get_version()})"

    def durability(self) -> str:
        # Not a setting it reports: seen with `strace -f -e fsync` on `chroma run` (1.5.9), where
        # every add fsyncs its SQLite files (chroma.sqlite3 and its journal) before it answers.
        return "yes (SQLite, fsync before the answer)"

    def create(self, dim: int) -> None:
        hnsw = {"space": "cosine", "max_neighbors": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION,
                "ef_search": self.ef}  # fmt: skip
        self.collection = self.client.create_collection(
            COLLECTION, configuration={"hnsw": hnsw}, embedding_function=None
        )
        self.collection_id = str(self.collection.id)

    def insert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.collection.add(ids=[str(i) for i in ids.tolist()], embeddings=vectors)

    def finish_ingest(self, n: int) -> None:
        # The local server indexes an add before it answers; the count and one query confirm it.
        count = self.collection.count()
        if count != n:
            raise RuntimeError(f"chroma: expected {n} items, got {count}")

    def set_ef(self, ef: int) -> None:
        if ef == self.ef:
            return
        self.collection.modify(configuration={"hnsw": {"ef_search": int(ef)}})
        self.ef = ef
        stop_process(self.proc)  # the new ef_search takes effect when the collection is loaded
        self._launch()

    def _body(self, queries: np.ndarray, k: int) -> bytes:
        return orjson.dumps({"query_embeddings": queries, "n_results": k, "include": ["distances"]},
                            option=orjson.OPT_SERIALIZE_NUMPY)  # fmt: skip

    def http_search(self, queries: np.ndarray, k: int) -> tuple[str, list[bytes]]:
        url = f"http://127.0.0.1:{self.port}{API}/{self.collection_id}/query"
        return url, [self._body(q[None, :], k) for q in queries]

    def connect(self) -> Any:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)

    def _post(self, conn: Any, body: bytes) -> list[list[str]]:
        conn.request("POST", f"{API}/{self.collection_id}/query", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"chroma answered {response.status}: {data[:200]!r}")
        return orjson.loads(data)["ids"]

    def search(self, conn: Any, query: np.ndarray, k: int) -> list[int]:
        return [int(i) for i in self._post(conn, self._body(query[None, :], k))[0]]

    def search_many(self, queries: np.ndarray, k: int) -> np.ndarray:
        found = np.full((len(queries), k), -1, dtype=np.int64)
        conn = self.connect()
        try:
            for lo in range(0, len(queries), 100):
                for row, ids in enumerate(self._post(conn, self._body(queries[lo : lo + 100], k)), start=lo):
                    found[row, : len(ids)] = [int(i) for i in ids[:k]]
        finally:
            conn.close()
        return found

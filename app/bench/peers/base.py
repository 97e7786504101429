"""The one interface every service of the comparison implements (annserve itself included), so
that a single driver (driver.py) measures them all the same way.

A peer runs as a server on loopback, owned by the bench: `start` it in a directory of its own,
`stop` it always. It holds one collection of `dim`-d vectors whose ids are the base row numbers,
with an HNSW index built with M = 16 and ef_construction = 200, searched with knob `ef`."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HNSW_M = 16
HNSW_EF_CONSTRUCTION = 200
START_TIMEOUT = 120.0  # seconds a server may take to answer after its start


class PeerMissing(Exception):
    """The peer's package is not installed: the comparison goes on without it, saying so."""


class Peer:
    """One service under comparison. Subclasses set `name` and implement the methods below."""

    name = ""
    # An HTTP service is loaded by wrk (`http_search`); the others by the multi-process Python
    # client (`connect` and `search`), which every peer also supports.
    http = False

    def __init__(self) -> None:
        self.ef = 0
        self.proc: subprocess.Popen | None = None

    # ---- lifetime --------------------------------------------------------------------------

    def check_installed(self) -> None:
        """PeerMissing saying what to install when the peer cannot run here."""

    def start(self, workdir: Path) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server and reap it; idempotent, and a no-op before `start`."""
        stop_process(self.proc)

    def server_pid(self) -> int:
        """The pid whose process tree is the server (its CPU and memory are read from /proc)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} is not running")
        return self.proc.pid

    def version(self) -> str:
        raise NotImplementedError

    def durability(self) -> str:
        """'yes (...)' when a write is fsynced before it is acknowledged, else 'no (...)', with
        the setting read from the running server where it can be read."""
        raise NotImplementedError

    # ---- data ------------------------------------------------------------------------------

    def create(self, dim: int) -> None:
        """An empty cosine collection of `dim`-d vectors, HNSW M=16, ef_construction=200."""
        raise NotImplementedError

    def insert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Store one batch, (b,) int64 ids and (b, dim) float32 rows; returns when acknowledged."""
        raise NotImplementedError

    def finish_ingest(self, n: int) -> None:
        """Return once all `n` vectors are searchable through the full index (a rebuild, an index
        build or the end of background indexing, as the service does it)."""
        raise NotImplementedError

    # ---- search ----------------------------------------------------------------------------

    def set_ef(self, ef: int) -> None:
        """Search with HNSW ef `ef` from now on (connections made after this call)."""
        self.ef = ef

    def connect(self) -> Any:
        """A new connection for one client of the Python load generator (in its own process)."""
        raise NotImplementedError

    def search(self, conn: Any, query: np.ndarray, k: int) -> list[int]:
        """The ids of the `k` nearest neighbours of one (dim,) query through `conn`."""
        raise NotImplementedError

    def search_many(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(nq, k) int64 ids for (nq, dim) queries, -1 where fewer came back: for recall, so
        a peer with a batch call overrides this."""
        found = np.full((len(queries), k), -1, dtype=np.int64)
        conn = self.connect()
        try:
            for row, q in enumerate(queries):
                hits = self.search(conn, q, k)[:k]
                found[row, : len(hits)] = hits
        finally:
            close = getattr(conn, "close", None)
            if close is not None:
                close()
        return found

    def http_search(self, queries: np.ndarray, k: int) -> tuple[str, list[bytes]]:
        """For wrk (HTTP peers): the search URL and one JSON request body per query."""
        raise NotImplementedError


# ---- helpers the peers share --------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, what: str, log: Path,
               timeout: float = START_TIMEOUT) -> None:  # fmt: skip
    """Poll `ready()` (exceptions count as not yet) until it is true; RuntimeError with the log's
    tail if `proc` exits first or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            problem = f"{what} exited with code {proc.returncode}"
            break
        try:
            if ready():
                return
        except Exception:  # not listening yet, or still loading its data
            pass
        if time.monotonic() > deadline:
            problem = f"{what} did not answer within {timeout:.0f}s"
            break
        time.sleep(0.1)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""
    raise RuntimeError(f"{problem}; last lines of {log}:\n{tail}")


def stop_process(proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """SIGTERM, wait up to `timeout` s, then SIGKILL; always reaps."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(10)

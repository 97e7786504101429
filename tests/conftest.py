"""Shared fixtures and helpers: the committed real-data subsets with their exact ground truth,
and waiting for a rebuild job over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from annserve.bench.server_process import ServeProcess
from annserve.engine.manager import CollectionManager
from annserve.indexes import brute_force_knn
from annserve.settings import Settings

DATA = Path(__file__).parent / "data"
K = 10


@dataclass(frozen=True)
class Subset:
    name: str
    metric: str
    base: np.ndarray  # (n, dim) float32
    queries: np.ndarray  # (nq, dim) float32
    truth: np.ndarray  # (nq, K) int64 row positions in base, exact

    @property
    def dim(self) -> int:
        return self.base.shape[1]


@cache
def load_subset(name: str) -> Subset:
    if name == "glove":
        with np.load(DATA / "glove50_10k.npz") as f:
            base, queries, metric = f["base"], f["queries"], "cosine"
    elif name == "fashion":
        with np.load(DATA / "fashion784_6k.npz") as f:
            base = f["base"].astype(np.float32) / 255.0
            queries = f["queries"].astype(np.float32) / 255.0
            metric = "l2"
    else:
        raise KeyError(name)
    truth, _ = brute_force_knn(base, queries, K, metric)
    return Subset(name, metric, base, queries, truth)


@pytest.fixture(scope="session")
def glove() -> Subset:
    """10K x 50 GloVe rows, cosine, 500 queries (see tests/data/README.md)."""
    return load_subset("glove")


@pytest.fixture(scope="session")
def fashion() -> Subset:
    """6K x 784 Fashion-MNIST images scaled to [0, 1], l2, 200 queries."""
    return load_subset("fashion")


def wait_job(client, job_id: str, timeout: float = 120.0) -> dict:
    """Poll GET /jobs/{job_id} (an httpx or TestClient client) until the job has succeeded or
    failed, checking the job's shape on every answer; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        assert {"id", "state", "progress", "error"} <= set(job)
        assert 0.0 <= job["progress"] <= 1.0
        if job["state"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def wait_ready(client, timeout: float = 30.0) -> None:
    """Poll /readyz (an httpx or TestClient client) until it answers 200; fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").text
        time.sleep(0.02)


@contextmanager
def serving(tmp: Path, env: dict[str, str] | None = None) -> Iterator[ServeProcess]:
    """A real `annserve serve` process on a free loopback port with its data and log under
    `tmp`, ready when entered; stopped (and reaped) on the way out, whatever happened."""
    server = ServeProcess(tmp / "data", tmp / "server.log", env)
    try:
        server.start().close()
        yield server
    finally:
        server.stop()


@contextmanager
def opened(path: Path, **settings) -> Iterator[CollectionManager]:
    """An engine over the data directory `path` with these settings, opened, and closed on the
    way out whatever happens (close is idempotent)."""
    manager = CollectionManager(Settings(data_dir=path, **settings))
    manager.open()
    try:
        yield manager
    finally:
        manager.close()

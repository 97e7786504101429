"""Storage faults answered (CONTRACT section 4): a write that cannot be made durable is 507 when
the disk is full, 503 for other I/O errors, with the cause in `detail`, never 200 nor 500; the
same on the search hot path; writes go through again once the fault is gone.

The faults are real ones (SQLite's own "database or disk is full", an OSError EIO) passed through
the engine's translation (`errors.storage_error`) and raised where the engine writes. The whole
story on a real full disk is tests/test_disk_full.py."""

from __future__ import annotations

import errno
import sqlite3

import pytest
from fastapi.testclient import TestClient
from test_api import error, wait_ready

from annserve.api.app import create_app
from annserve.engine.errors import StorageError, storage_error
from annserve.settings import Settings

ITEM = {"id": "a", "vector": [1.0, 0.0, 0.0, 0.0]}


def sqlite_full(tmp_path) -> sqlite3.Error:
    """The error SQLite raises when its file cannot grow: a database capped at a few pages."""
    db = sqlite3.connect(tmp_path / "capped.sqlite")
    db.execute("PRAGMA max_page_count = 2")
    db.execute("CREATE TABLE t (x BLOB)")
    try:
        with pytest.raises(sqlite3.Error) as caught:
            for _ in range(100):
                db.execute("INSERT INTO t VALUES (?)", (b"\0" * 4096,))
    finally:
        db.close()
    return caught.value


@pytest.fixture()
def client(tmp_path):
    with TestClient(create_app(Settings(data_dir=tmp_path / "data")), raise_server_exceptions=False) as c:
        wait_ready(c)
        assert c.post("/collections", json={"name": "s", "dim": 4, "metric": "l2", "index": {"kind": "flat"}}).status_code == 201
        yield c


def failing(collection, method: str, fault: StorageError) -> None:
    """`collection.<method>` raises `fault` from now on (as the engine does when its store fails)."""

    def fail(*args, **kwargs):
        raise fault

    setattr(collection, method, fail)


def test_disk_full_is_507_with_the_cause(client, tmp_path):
    cause = sqlite_full(tmp_path)
    fault = storage_error(cause, "committing 1 items to store.sqlite")
    assert fault is not None and fault.disk_full
    collection = client.app.state.manager.get("s")
    failing(collection, "upsert", fault)
    detail = error(client.post("/collections/s/vectors", json={"items": [ITEM]}), 507, "full", "committing 1 items")
    assert str(cause) in detail  # SQLite's own words
    failing(collection, "delete", fault)
    error(client.post("/collections/s/vectors/delete", json={"ids": ["a"]}), 507, "full")
    error(client.delete("/collections/s/vectors/a"), 507, "full")
    del collection.upsert, collection.delete  # the fault is gone: writes resume
    assert client.post("/collections/s/vectors", json={"items": [ITEM]}).json() == {"upserted": 1}


def test_io_error_is_503_with_the_cause(client):
    fault = storage_error(OSError(errno.EIO, "Input/output error"), "committing 1 items to store.sqlite")
    assert fault is not None and not fault.disk_full
    collection = client.app.state.manager.get("s")
    failing(collection, "upsert", fault)
    error(client.post("/collections/s/vectors", json={"items": [ITEM]}), 503, "Input/output error", "EIO")
    # A read the store cannot serve, on the search hot path and through the router's route.
    failing(collection, "search", fault)
    error(client.post("/collections/s/search", json={"vector": [1, 0, 0, 0]}), 503, "Input/output error")
    error(client.post("/collections/s/search/batch", json={"vectors": [[1, 0, 0, 0]]}), 503, "Input/output error")
    failing(collection, "get", fault)
    error(client.get("/collections/s/vectors/a"), 503, "Input/output error")

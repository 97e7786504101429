"""Storage faults on a real full file system (a small tmpfs mounted for the test): a write that
cannot be made durable raises StorageError with the cause, changes nothing in memory or in the
store, and writes resume once space is free again, without a restart."""

from __future__ import annotations

import errno
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_engine import opened

from annserve.engine.errors import NotFound, StorageError

DIM = 64


@pytest.fixture()
def small_disk(tmp_path) -> Path:
    """A 4 MiB tmpfs at tmp_path/disk, unmounted at the end whatever happens."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for a full disk (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)  # busy: detach it anyway


def fill_up(path: Path) -> Path:
    """Write `path` until the file system is full; the file, to free the space again."""
    chunk = b"\0" * 65536
    with open(path, "wb") as f:
        while True:
            try:
                f.write(chunk)
                f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    return path


def items(prefix: str, n: int, seed: int) -> tuple[list[str], np.ndarray, list[dict]]:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return [f"{prefix}{i}" for i in range(n)], vectors, [{"n": i} for i in range(n)]


def test_a_full_disk_fails_the_upsert_with_its_cause_and_writes_resume_once_space_is_free(small_disk):
    data = small_disk / "data"
    a_ids, a_vectors, a_payloads = items("a", 100, 1)
    b_ids, b_vectors, b_payloads = items("b", 500, 2)
    with opened(data) as m:
        c = m.create("full", DIM, "l2", "flat", {})
        assert c.upsert(a_ids, a_vectors, a_payloads) == 100
        filler = fill_up(small_disk / "filler")

        for attempt in range(2):  # failing twice: the first failure left nothing open behind it
            with pytest.raises(StorageError) as caught:
                c.upsert(b_ids, b_vectors, b_payloads)
            fault = caught.value
            assert fault.errno == errno.ENOSPC and fault.disk_full
            assert isinstance(fault.cause, sqlite3.OperationalError) and fault.sqlite_errorname == "SQLITE_FULL"
            assert "SQLITE_FULL" in str(fault) and "store.sqlite" in str(fault)
            # Nothing of the failed write is served: not counted, not found, not searchable.
            assert c.info()["count"] == 100 and c.info()["fresh_count"] == 100
            with pytest.raises(NotFound):
                c.get("b0")
            assert all(hits[0][0].startswith("a") for hits in c.search(b_vectors[:20], 1))

        filler.unlink()  # the cause is gone: the same shard takes writes again, no restart
        assert c.upsert(b_ids, b_vectors, b_payloads) == 500
        assert c.info()["count"] == 600
        assert [hits[0][0] for hits in c.search(b_vectors[:20], 1)] == b_ids[:20]
        for item_id, vector, payload in zip(a_ids + b_ids, np.vstack([a_vectors, b_vectors]), a_payloads + b_payloads):
            stored, stored_payload = c.get(item_id)
            assert np.array_equal(stored, vector) and stored_payload == payload

    with opened(data) as m:  # and the store on disk says the same after a restart
        c = m.get("full")
        assert c.info()["count"] == 600 and c.get("b499")[1] == {"n": 499}


class _CommitFails:
    """A writer connection whose next COMMIT fails as an I/O error that SQLite did not roll
    back (it may or may not, by its documentation): the transaction is still open after it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn, self.armed = conn, True

    def execute(self, sql: str, *args):
        if sql == "COMMIT" and self.armed:
            self.armed = False
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorcode, error.sqlite_errorname = 778, "SQLITE_IOERR_WRITE"
            raise error
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str):
        return getattr(self._conn, name)


def test_a_commit_that_fails_with_its_transaction_open_is_rolled_back_and_the_shard_stays_writable(tmp_path):
    a_ids, a_vectors, a_payloads = items("a", 10, 1)
    b_ids, b_vectors, b_payloads = items("b", 10, 2)
    with opened(tmp_path) as m:
        c = m.create("ioerr", DIM, "l2", "flat", {})
        c.upsert(a_ids, a_vectors, a_payloads)
        store = c._shards[0].store
        real = store._writer
        store._writer = _CommitFails(real)
        with pytest.raises(StorageError) as caught:
            c.upsert(b_ids, b_vectors, b_payloads)
        assert caught.value.errno == errno.EIO and not caught.value.disk_full  # a 503, not a 507
        assert "SQLITE_IOERR_WRITE" in str(caught.value)
        assert not real.in_transaction  # rolled back, not left open
        assert c.info()["count"] == 10
        with pytest.raises(NotFound):
            c.get("b0")
        assert c.upsert(b_ids, b_vectors, b_payloads) == 10  # the next write starts clean
        assert c.info()["count"] == 20 and c.get("b9")[1] == {"n": 9}
    with opened(tmp_path) as m:
        assert m.get("ioerr").info()["count"] == 20

"""One shard's store of record: a SQLite file in WAL mode with synchronous=FULL.

Every acknowledged write is here before the answer goes out; index files are derived from it.
Table `items(label, id, vector, payload)`:
- `label` is an int64 that the shard gives each upsert; it only ever grows (AUTOINCREMENT keeps
  SQLite from reusing the label of a deleted last row), so a replaced item's old label, still
  inside a main index, is recognisably dead: it is no longer the current label of any id.
- `vector` is the float32 little-endian bytes of one row; `payload` is JSON text or NULL.

Threads: one writer connection behind a lock (SQLite has one writer anyway) and a pool of reader
connections; WAL lets readers run while a write commits, and a read transaction sees one
consistent snapshot however long it lasts (the rebuild and exact search rely on that).
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .errors import NotFound

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    label   INTEGER PRIMARY KEY AUTOINCREMENT,
    id      TEXT NOT NULL UNIQUE,
    vector  BLOB NOT NULL,
    payload TEXT
);
"""
LITTLE_F32 = np.dtype("<f4")


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly what we say.
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: the WAL is fsynced at every commit, so a committed write survives power loss, not
    # only a process crash (NORMAL would only promise the latter in WAL mode).
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class Snapshot:
    """A consistent read view of the store, open inside `ShardStore.snapshot()`.

    `max_label` is the largest label ever committed when the view opened: every label at or
    below it is either in this view (live) or was already dead.
    """

    def __init__(self, conn: sqlite3.Connection, dim: int) -> None:
        self._conn = conn
        self._dim = dim
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        self.max_label = int(row[0]) if row else 0

    def count(self, after: int = 0) -> int:
        """Live items with label in (after, max_label]."""
        sql = "SELECT count(*) FROM items WHERE label > ? AND label <= ?"
        return int(self._conn.execute(sql, (after, self.max_label)).fetchone()[0])

    def chunks(
        self, after: int = 0, rows: int = 50_000, vectors: bool = True
    ) -> Iterator[tuple[np.ndarray, list[str], np.ndarray | None]]:
        """Live items with label in (after, max_label], in label order, `rows` at a time.

        Yields labels (m,) int64, ids (m,) str and vectors (m, dim) float32 (None when
        `vectors` is False, which reads far less).
        """
        columns = "label, id, vector" if vectors else "label, id"
        sql = f"SELECT {columns} FROM items WHERE label > ? AND label <= ? ORDER BY label LIMIT ?"
        last = after
        while True:
            batch = self._conn.execute(sql, (last, self.max_label, rows)).fetchall()
            if not batch:
                return
            labels = np.fromiter((r[0] for r in batch), dtype=np.int64, count=len(batch))
            ids = [r[1] for r in batch]
            vecs = None
            if vectors:
                blob = b"".join(r[2] for r in batch)
                vecs = np.frombuffer(blob, dtype=LITTLE_F32).reshape(len(batch), self._dim)
                vecs = vecs.astype(np.float32, copy=False)
            yield labels, ids, vecs
            last = int(labels[-1])


class ShardStore:
    """The SQLite file of one shard; see the module docstring for the table and threads."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = dim
        self._write_lock = threading.Lock()
        self._writer = _connect(self.path)
        self._writer.executescript(SCHEMA)
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all_readers: list[sqlite3.Connection] = []
        self._closed = False

    # ---- writes: one transaction each, durable when they return ----

    def upsert(
        self, labels: np.ndarray, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[str | None]
    ) -> None:
        """Write n items in one transaction: labels (n,) int64 (new, increasing), ids (n,)
        distinct, vectors (n, dim) float32, payloads (n,) JSON text or None. An existing id's
        row is replaced (its old label disappears with it)."""
        blob = np.ascontiguousarray(vectors, dtype=LITTLE_F32)
        rows = ((int(labels[i]), ids[i], blob[i].tobytes(), payloads[i]) for i in range(len(ids)))
        with self._write_lock, self._transaction():
            self._writer.executemany(
                "INSERT OR REPLACE INTO items (label, id, vector, payload) VALUES (?, ?, ?, ?)", rows
            )

    def delete(self, ids: Sequence[str]) -> int:
        """Delete these ids in one transaction; returns how many existed."""
        with self._write_lock, self._transaction():
            cur = self._writer.executemany("DELETE FROM items WHERE id = ?", ((i,) for i in ids))
            return max(cur.rowcount, 0)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._check_open()
        # IMMEDIATE takes the write lock at BEGIN, so a busy reader can never make COMMIT fail.
        self._writer.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._writer.execute("ROLLBACK")
            raise
        self._writer.execute("COMMIT")

    # ---- reads ----

    def get(self, item_id: str) -> tuple[np.ndarray, dict[str, Any] | None] | None:
        """The vector (dim,) float32 and payload of `item_id`, or None if absent."""
        with self._reader() as conn:
            row = conn.execute("SELECT vector, payload FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            return None
        vector = np.frombuffer(row[0], dtype=LITTLE_F32).astype(np.float32)
        return vector, (orjson.loads(row[1]) if row[1] is not None else None)

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """A consistent read view (see `Snapshot`) that lasts until the block ends."""
        with self._reader() as conn:
            conn.execute("BEGIN")
            try:
                # The first read inside BEGIN fixes the WAL snapshot the rest of the block sees.
                yield Snapshot(conn, self.dim)
            finally:
                conn.execute("COMMIT")

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        self._check_open()
        try:
            conn = self._readers.get_nowait()
        except queue.Empty:
            conn = _connect(self.path)
            with self._write_lock:
                self._all_readers.append(conn)
        try:
            yield conn
        finally:
            self._readers.put(conn)

    def _check_open(self) -> None:
        # A store closes only when its collection is deleted (or the service stops): a request
        # that raced the delete gets the 404 it would have got a moment later.
        if self._closed:
            raise NotFound(f"the collection was deleted while this request ran (store {self.path} is closed)")

    def pragma(self, name: str) -> Any:
        """The writer connection's value of PRAGMA `name` (for tests and diagnostics)."""
        return self._writer.execute(f"PRAGMA {name}").fetchone()[0]

    def close(self) -> None:
        """Close every connection; idempotent. Callers must have stopped using the store."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            for conn in self._all_readers:
                conn.close()
            self._writer.close()

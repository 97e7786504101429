"""One shard's store of record: a SQLite file in WAL mode with synchronous=FULL.

Every acknowledged write is here before the answer goes out; index files are derived from it.
Table `items(label, id, vector, payload)`:
- `label` is an int64 that the shard gives each upsert; it only ever grows (AUTOINCREMENT keeps
  SQLite from reusing the label of a deleted last row), so a replaced item's old label, still
  inside a main index, is recognisably dead: it is no longer the current label of any id.
- `id` is UNIQUE: its index answers id -> label for the write path (the shard keeps only
  label -> id in memory).
- `vector` is the float32 little-endian bytes of one row; `payload` is JSON text or NULL.
Table `deaths(seq, label)`: every label that stopped being live (deleted, or its id replaced),
in commit order; `seq` only grows (AUTOINCREMENT). Table `meta(key, value)`: `main_max`, the
max label of the main index file installed last. With these, another process serving the same
file (`annserve serve --workers N`) catches its memory up from the store alone: new items are
the labels above the last one it applied, dead ones the deaths above the last seq it applied,
and a new main is the file named by `main_max` (see `Changes`, `Watch`, and shard.py).

Threads: one writer connection behind a lock (SQLite has one writer anyway) and a pool of reader
connections; WAL lets readers run while a write commits, and a read transaction sees one
consistent snapshot however long it lasts (the rebuild and exact search rely on that).

Checkpoints: SQLite's own (every 1000 WAL pages, inside the COMMIT that passes them) copied
every page a second time on the write path: 2.5 of 18 us a 384-d row of a base64 upsert's
wall time. The writer turns it off, and the process's checkpointer thread (`CHECKPOINTER`)
copies the WAL into the database file once about CHECKPOINT_PAGES were committed, PASSIVE
(it never waits for a writer or a reader, nor makes one wait). A commit is durable without
it (the WAL is fsynced at COMMIT), so it changes when pages reach the database file, not
what survives a crash. Should it fall behind by INLINE_CHECKPOINT_PAGES, the writer
checkpoints inline, as SQLite did, so the WAL stays bounded.

Faults: a write whose transaction fails (disk full, I/O error) is rolled back, in the store and
in the caller's memory (the caller applies a write only once `upsert`/`delete` returned), and
raises `StorageError` with the cause; the next write starts clean (on a new connection if the
rollback itself failed). `close` waits for the readers in use: it interrupts their statement,
and a reader whose store closed under it raises `NotFound`, as the deleted collection would.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .errors import NotFound, storage_error

log = logging.getLogger(__name__)

CHECKPOINT_PAGES = 1000  # SQLite's own default wal_autocheckpoint
INLINE_CHECKPOINT_PAGES = 16 * CHECKPOINT_PAGES  # 64 MiB of 4 KiB pages
ROW_OVERHEAD_BYTES = 64  # an items row beside its vector: header, label, id, its index entry (about)
# A deleted or replaced row dirties its own table page and id index page, wherever they are
# (at most: rows next to each other share them, and the WAL then grows slower than counted).
DEATH_PAGES = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    label   INTEGER PRIMARY KEY AUTOINCREMENT,
    id      TEXT NOT NULL UNIQUE,
    vector  BLOB NOT NULL,
    payload TEXT
);
CREATE TABLE IF NOT EXISTS deaths (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    label   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key     TEXT PRIMARY KEY,
    value   INTEGER NOT NULL
);
"""
# Where the store stands: the largest label and the largest death seq ever committed.
VERSION = "SELECT name, seq FROM sqlite_sequence WHERE name IN ('items', 'deaths')"
LITTLE_F32 = np.dtype("<f4")
# Many ids go into one statement as a JSON array (`json_each`): no limit on the number of SQL
# variables, and SQLite probes the UNIQUE index on id (or the primary key) once per element.
# SQLite's JSON functions end a string at a NUL character, so an id holding one goes into its
# own statement instead, with the condition ID_IN_JSON written `id = ?` (`_by_ids`).
ID_IN_JSON = "id IN (SELECT value FROM json_each(?))"
LABELS_OF_IDS = f"SELECT id, label FROM items WHERE {ID_IN_JSON}"
IDS_OF_LABELS = "SELECT label, id FROM items WHERE label IN (SELECT value FROM json_each(?))"
DELETE_IDS = f"DELETE FROM items WHERE {ID_IN_JSON} RETURNING label"
# A whole batch in one statement: row `key` of the JSON array takes label ?1 + key and bytes
# key * ?3 .. of the batch's vectors ?2, one row of ?3 bytes each. Against executemany over
# bound rows it costs a third of the CPU (1.6 against 4.4 us for a 384-d row on this box: the
# Python-side binding and stepping of each row were most of it). The array holds the ids
# (INSERT_IDS), or [id, payload text] pairs when a payload is present (INSERT_PAIRS, 2.4 us).
INSERT_IDS = (
    "INSERT OR REPLACE INTO items (label, id, vector, payload) "
    "SELECT ?1 + key, value, substr(?2, key * ?3 + 1, ?3), NULL FROM json_each(?4)"
)
INSERT_PAIRS = (
    "INSERT OR REPLACE INTO items (label, id, vector, payload) "
    "SELECT ?1 + key, value ->> 0, substr(?2, key * ?3 + 1, ?3), value ->> 1 FROM json_each(?4)"
)
LOG_DEATHS = "INSERT INTO deaths (label) SELECT value FROM json_each(?)"
INSERT_ROW = "INSERT OR REPLACE INTO items (label, id, vector, payload) VALUES (?, ?, ?, ?)"
_NUL_IN_JSON = "\\u0000"  # how orjson writes a NUL character inside a string


def _json_ids(ids: Sequence[str]) -> str | None:
    """`ids` as a JSON array for `json_each`, or None when one of them holds a NUL character
    (or a backslash before "u0000", which reads the same here: such ids just take the slow way)."""
    text = orjson.dumps(list(ids)).decode()
    return None if _NUL_IN_JSON in text else text


def _by_ids(conn: sqlite3.Connection, sql: str, ids: Sequence[str]) -> list[tuple]:
    """The rows of `sql`, whose one parameter is its ID_IN_JSON condition, for `ids`: one
    statement over their JSON array, or one statement per id when `_json_ids` cannot hold them."""
    text = _json_ids(ids)
    if text is not None:
        return conn.execute(sql, (text,)).fetchall()
    one = sql.replace(ID_IN_JSON, "id = ?")
    return [row for item_id in ids for row in conn.execute(one, (item_id,)).fetchall()]


@dataclass(frozen=True)
class Version:
    """How far a store's history goes: the largest label and death seq ever committed (labels
    and seqs only grow, so two versions compare field by field)."""

    items: int = 0
    deaths: int = 0


def _version(conn: sqlite3.Connection) -> Version:
    seqs = dict(conn.execute(VERSION).fetchall())
    return Version(int(seqs.get("items", 0)), int(seqs.get("deaths", 0)))


@dataclass(frozen=True)
class Commit:
    """What one write transaction did: the labels it gave (ascending; none for a delete), the
    labels that died in it, and the store's version just before and just after it."""

    labels: np.ndarray
    dead: np.ndarray
    before: Version
    after: Version


def _connect_writer(path: Path) -> sqlite3.Connection:
    conn = _connect(path)
    conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer's job (module docstring)
    return conn


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly what we say.
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60.0)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: the WAL is fsynced at every commit, so a committed write survives power loss, not
    # only a process crash (NORMAL would only promise the latter in WAL mode). Set on every
    # connection, readers included: a reader may run a checkpoint, which writes the database.
    conn.execute("PRAGMA synchronous=FULL")
    return conn


class Snapshot:
    """A consistent read view of the store, open inside `ShardStore.snapshot()`.

    `max_label` is the largest label ever committed when the view opened: every label at or
    below it is either in this view (live) or was already dead.
    """

    def __init__(self, store: ShardStore, conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn = conn
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        self.max_label = int(row[0]) if row else 0

    def count(self) -> int:
        """Live items in the view."""
        sql = "SELECT count(*) FROM items WHERE label <= ?"
        return int(self._conn.execute(sql, (self.max_label,)).fetchone()[0])

    def chunks(
        self, after: int = 0, rows: int = 50_000, vectors: bool = True, ids: bool = True
    ) -> Iterator[tuple[np.ndarray, list[str] | None, np.ndarray | None]]:
        """Live items with label in (after, max_label], in label order, `rows` at a time.

        Yields labels (m,) int64, ids (m,) str (None when `ids` is False: a scan that maps only
        its winners skips a string per row) and vectors (m, dim) float32 (None when `vectors`
        is False, which reads far less). NotFound once the store is closing.
        """
        columns = "label" + (", id" if ids else ", NULL") + (", vector" if vectors else "")
        sql = f"SELECT {columns} FROM items WHERE label > ? AND label <= ? ORDER BY label LIMIT ?"
        last = after
        while True:
            self._store._check_open()  # a delete must not wait for the whole iteration
            batch = self._conn.execute(sql, (last, self.max_label, rows)).fetchall()
            if not batch:
                return
            labels = np.fromiter((r[0] for r in batch), dtype=np.int64, count=len(batch))
            names = [r[1] for r in batch] if ids else None
            vecs = None
            if vectors:
                blob = b"".join(r[2] for r in batch)
                vecs = np.frombuffer(blob, dtype=LITTLE_F32).reshape(len(batch), self._store.dim)
                vecs = vecs.astype(np.float32, copy=False)
            yield labels, names, vecs
            last = int(labels[-1])

    def payload_chunks(
        self, rows: int = 50_000, after: int = 0, upto: int | None = None
    ) -> Iterator[tuple[np.ndarray, list[str]]]:
        """Labels (m,) int64 and payload JSON texts of the live items with label in (after,
        upto] (upto: max_label) that have a payload, in label order, `rows` at a time (the
        payload index is built from them at start-up, and follows other processes' writes)."""
        sql = (
            "SELECT label, payload FROM items WHERE label > ? AND label <= ? AND payload IS NOT NULL "
            "ORDER BY label LIMIT ?"
        )
        last, upto = after, self.max_label if upto is None else upto
        while True:
            self._store._check_open()
            batch = self._conn.execute(sql, (last, upto, rows)).fetchall()
            if not batch:
                return
            labels = np.fromiter((r[0] for r in batch), dtype=np.int64, count=len(batch))
            yield labels, [r[1] for r in batch]
            last = int(labels[-1])

    @property
    def version(self) -> Version:
        """The store's version in this view."""
        return _version(self._conn)

    def deaths(self, after: int) -> tuple[np.ndarray, int]:
        """Labels (int64) that died after death seq `after`, in order, and the last seq read."""
        rows = self._conn.execute(
            "SELECT seq, label FROM deaths WHERE seq > ? ORDER BY seq", (after,)
        ).fetchall()
        labels = np.fromiter((label for _, label in rows), dtype=np.int64, count=len(rows))
        return labels, (int(rows[-1][0]) if rows else after)

    def installed_main(self) -> int:
        """The max label of the main index file installed last (0: none yet)."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'main_max'").fetchone()
        return int(row[0]) if row else 0

    def ids_of(self, labels: np.ndarray) -> dict[int, str]:
        """label -> id for those of (m,) `labels` that are live in the view."""
        wanted = orjson.dumps(np.unique(labels[labels > 0]).tolist()).decode()
        return dict(self._conn.execute(IDS_OF_LABELS, (wanted,)).fetchall())


class ShardStore:
    """The SQLite file of one shard; see the module docstring for the table, threads and faults."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = Path(path)
        self.dim = dim
        self._write_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = _connect_writer(self.path)
        self._writer.executescript(SCHEMA)
        self._page_bytes = int(self._writer.execute("PRAGMA page_size").fetchone()[0])
        self._wal_pages = 0  # committed since the last checkpoint began, estimated (`_committed`)
        self._readers_cond = threading.Condition(threading.Lock())
        self._idle: list[sqlite3.Connection] = []
        self._busy: set[sqlite3.Connection] = set()
        self._closed = False

    # ---- writes: one transaction each, durable when they return ----

    def upsert(
        self, labels: np.ndarray | None, ids: Sequence[str], vectors: np.ndarray,
        payloads: Sequence[str | None],
    ) -> np.ndarray:
        """Write n items in one transaction: labels (n,) int64 (new, increasing; None: the
        store gives the next ones), ids (n,) distinct, vectors (n, dim) float32, payloads (n,)
        JSON text or None. An existing id's row is replaced (its old label disappears with it).
        Returns the replaced labels (int64)."""
        return self.write_items(ids, vectors, payloads, labels).dead

    def write_items(
        self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[str | None],
        labels: np.ndarray | None = None, above: int = 0,
    ) -> Commit:
        """`upsert`, answering the whole `Commit`. Without `labels`, the items take the next
        labels after the largest ever committed (and after `above`), read inside the
        transaction: another process writing the same file cannot take the same ones."""
        blob = np.ascontiguousarray(vectors, dtype=LITTLE_F32)
        n = len(ids)
        if blob.shape != (n, self.dim) or len(payloads) != n:
            raise ValueError(
                f"expected {n} vectors of dim {self.dim} and {n} payloads, got shape {blob.shape} "
                f"and {len(payloads)} payloads"
            )
        pages = math.ceil(n * (blob.shape[1] * blob.itemsize + ROW_OVERHEAD_BYTES) / self._page_bytes)
        with self._transaction(f"committing {n} items", pages) as conn:
            before = _version(conn)
            if labels is None:
                first = max(before.items, above) + 1
                labels = np.arange(first, first + n, dtype=np.int64)
            old = _by_ids(conn, LABELS_OF_IDS, ids)
            self._insert(conn, labels, ids, blob, payloads)
            dead = np.fromiter((label for _, label in old), dtype=np.int64, count=len(old))
            self._log_deaths(conn, dead)
            self._wal_pages += DEATH_PAGES * len(dead)
        after = Version(max(before.items, int(labels[-1])) if n else before.items, before.deaths + len(dead))
        return Commit(labels, dead, before, after)

    def delete(self, ids: Sequence[str]) -> np.ndarray:
        """Delete these ids in one transaction; returns the labels (int64) of those that
        existed. A transaction that deletes nothing writes nothing (no WAL frame, no fsync)."""
        return self.delete_items(ids).dead

    def delete_items(self, ids: Sequence[str]) -> Commit:
        """`delete`, answering the whole `Commit`."""
        with self._transaction(f"deleting {len(ids)} items") as conn:
            before = _version(conn)
            deleted = _by_ids(conn, DELETE_IDS, ids)
            dead = np.fromiter((label for (label,) in deleted), dtype=np.int64, count=len(deleted))
            self._log_deaths(conn, dead)
            self._wal_pages += DEATH_PAGES * len(dead)
        none = np.empty(0, dtype=np.int64)
        return Commit(none, dead, before, Version(before.items, before.deaths + len(dead)))

    @staticmethod
    def _insert(
        conn: sqlite3.Connection, labels: np.ndarray, ids: Sequence[str], blob: np.ndarray,
        payloads: Sequence[str | None],
    ) -> None:
        """INSERT OR REPLACE the rows (labels[i], ids[i], blob[i], payloads[i]): in one statement
        when the labels are consecutive and the ids fit a JSON array (always, from a shard),
        else row by row."""
        n, row_bytes = len(ids), blob.shape[1] * blob.itemsize
        rows = memoryview(blob).cast("B")  # the batch's bytes, bound once without a copy
        consecutive = n > 0 and int(labels[-1]) - int(labels[0]) == n - 1
        text = _json_ids(ids) if consecutive else None
        if text is not None:
            if any(p is not None for p in payloads):  # payload texts are JSON: no raw NUL in them
                pairs = orjson.dumps(list(zip(ids, payloads))).decode()
                conn.execute(INSERT_PAIRS, (int(labels[0]), rows, row_bytes, pairs))
            else:
                conn.execute(INSERT_IDS, (int(labels[0]), rows, row_bytes, text))
            return
        cut = [rows[i * row_bytes : (i + 1) * row_bytes] for i in range(n)]
        conn.executemany(INSERT_ROW, zip(labels.tolist(), ids, cut, payloads))

    @staticmethod
    def _log_deaths(conn: sqlite3.Connection, dead: np.ndarray) -> None:
        # One row per death, in the same transaction as the change: what another process
        # serving this file needs to drop them from its memory (Snapshot.deaths).
        if len(dead):
            conn.execute(LOG_DEATHS, (orjson.dumps(dead.tolist()).decode(),))

    def deaths_up_to(self, seq: int) -> int:
        """How many rows of the deaths log have seq <= `seq` (a range count on its key)."""
        conn = self._connection()
        return int(conn.execute("SELECT count(*) FROM deaths WHERE seq <= ?", (seq,)).fetchone()[0])

    def prune_deaths(self, upto: int) -> int:
        """Drop the deaths log's rows with seq <= `upto`, which every process serving this file
        has applied; returns how many. The seq counter (sqlite_sequence) stays, so versions
        keep growing."""
        with self._transaction(f"pruning the deaths log up to {upto}") as conn:
            return conn.execute("DELETE FROM deaths WHERE seq <= ?", (int(upto),)).rowcount

    def set_installed_main(self, max_label: int) -> None:
        """Record that the main index file of `max_label` is installed (durably, like a write)."""
        with self._transaction("recording the installed main index") as conn:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('main_max', ?)", (int(max_label),))

    def _connection(self) -> sqlite3.Connection:
        """The writer connection (the caller holds the write lock), opened again if a failed
        rollback had to drop it."""
        self._check_open()
        if self._writer is None:
            try:
                self._writer = _connect_writer(self.path)
            except sqlite3.Error as exc:
                raise (storage_error(exc, f"reopening {self.path}") or exc) from exc
        return self._writer

    @contextmanager
    def _transaction(self, doing: str, pages: int = 0) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed when the block ends; on any failure (the commit's
        included) rolled back and raised, a storage fault as StorageError with its cause.
        `pages`: about how many pages it adds to the WAL, beside the few every commit writes."""
        with self._write_lock:
            conn = self._connection()
            try:
                # IMMEDIATE takes the write lock at BEGIN, so a busy reader can never make COMMIT fail.
                conn.execute("BEGIN IMMEDIATE")
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                self._roll_back(conn)
                fault = storage_error(exc, f"{doing} to {self.path}")
                if fault is not None:
                    raise fault from exc
                raise
            self._committed(conn, pages + 2)  # + the table's last leaf and sqlite_sequence's

    def _committed(self, conn: sqlite3.Connection, pages: int) -> None:
        """Count a commit's WAL pages; ask the checkpointer past CHECKPOINT_PAGES, or checkpoint
        on the writer `conn` (the caller holds the write lock) past INLINE_CHECKPOINT_PAGES."""
        self._wal_pages += pages
        if self._wal_pages >= INLINE_CHECKPOINT_PAGES:
            self._wal_pages = 0
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # the commit stands: the next one tries again
                log.warning("checkpoint of %s failed: %s", self.path, exc)
        elif self._wal_pages >= CHECKPOINT_PAGES:
            CHECKPOINTER.request(self)

    def checkpoint(self) -> None:
        """Copy the WAL's committed pages into the database file, PASSIVE (see the module
        docstring); the checkpointer's work. A fault is logged: the next checkpoint tries again."""
        self._wal_pages = 0  # what commits add from now on counts toward the next one
        try:
            with self._reader() as conn:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except NotFound:
            return  # closed meanwhile: its connections checkpoint as they close
        except Exception as exc:  # noqa: BLE001 - a thread of its own: nobody else would see it
            log.warning("checkpoint of %s failed: %s", self.path, exc)

    def _roll_back(self, conn: sqlite3.Connection) -> None:
        """Leave no transaction open. SQLite may have rolled back itself (it does for some
        SQLITE_FULL and SQLITE_IOERR failures); if ROLLBACK fails too, the connection is
        dropped and the next write opens a new one, which recovers from the WAL."""
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            self._writer = None
            try:
                conn.close()
            except sqlite3.Error:
                pass

    # ---- reads ----

    def get(self, item_id: str) -> tuple[np.ndarray, dict[str, Any] | None] | None:
        """The vector (dim,) float32 and payload of `item_id`, or None if absent."""
        with self._reader() as conn:
            row = conn.execute("SELECT vector, payload FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            return None
        vector = np.frombuffer(row[0], dtype=LITTLE_F32).astype(np.float32)
        return vector, (orjson.loads(row[1]) if row[1] is not None else None)

    def labels_of(self, ids: Sequence[str]) -> dict[str, int]:
        """id -> current label of those of `ids` that exist (a filter on the reserved field `id`)."""
        if not ids:
            return {}
        with self._reader() as conn:
            return dict(_by_ids(conn, LABELS_OF_IDS, ids))

    def records(
        self, ids: Sequence[str], payloads: bool, vectors: bool
    ) -> dict[str, tuple[np.ndarray | None, dict[str, Any] | None]]:
        """id -> (vector (dim,) float32 or None, payload or None) of those of `ids` that exist,
        reading only the columns asked for (search answers with `with_payload`/`with_vector`)."""
        if not ids:
            return {}
        columns = ", ".join(["id", "vector" if vectors else "NULL", "payload" if payloads else "NULL"])
        sql = f"SELECT {columns} FROM items WHERE {ID_IN_JSON}"
        with self._reader() as conn:
            rows = _by_ids(conn, sql, ids)
        return {
            item_id: (
                np.frombuffer(vector, dtype=LITTLE_F32).astype(np.float32) if vector is not None else None,
                orjson.loads(payload) if payload is not None else None,
            )
            for item_id, vector, payload in rows
        }

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """A consistent read view (see `Snapshot`) that lasts until the block ends."""
        with self._reader() as conn:
            conn.execute("BEGIN")
            try:
                # The first read inside BEGIN fixes the WAL snapshot the rest of the block sees.
                yield Snapshot(self, conn)
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        """A reader connection, tracked as busy until the block ends (close waits for it)."""
        with self._readers_cond:
            self._check_open()
            conn = self._idle.pop() if self._idle else None
            if conn is not None:
                self._busy.add(conn)
        if conn is None:
            conn = _connect(self.path)
            with self._readers_cond:
                if self._closed:
                    conn.close()
                    self._check_open()
                self._busy.add(conn)
        try:
            yield conn
        except sqlite3.Error as exc:
            self._check_open()  # interrupted or failed because the store closed: NotFound
            fault = storage_error(exc, f"reading {self.path}")
            if fault is not None:
                raise fault from exc
            raise
        finally:
            with self._readers_cond:
                self._busy.discard(conn)
                if self._closed:
                    conn.close()
                else:
                    self._idle.append(conn)
                self._readers_cond.notify_all()

    def watch(self) -> Watch:
        """A change detector for this file (see `Watch`)."""
        self._check_open()
        return Watch(_connect(self.path))

    def _check_open(self) -> None:
        # A store closes only when its collection is deleted (or the service stops): a request
        # that raced the delete gets the 404 it would have got a moment later.
        if self._closed:
            raise NotFound(f"the collection was deleted while this request ran (store {self.path} is closed)")

    def pragma(self, name: str) -> list[Any]:
        """PRAGMA `name` on every open connection, writer first (for tests and diagnostics)."""
        with self._write_lock, self._readers_cond:
            conns = [c for c in (self._writer, *self._idle) if c is not None]
            return [conn.execute(f"PRAGMA {name}").fetchone()[0] for conn in conns]

    def close(self) -> None:
        """Refuse new reads and writes (NotFound), interrupt the reads in progress and wait for
        them to let go, wait for a write in progress, then close every connection. Idempotent."""
        with self._readers_cond:
            if self._closed:
                return
            self._closed = True
            for conn in self._busy:
                conn.interrupt()
            while self._busy:
                self._readers_cond.wait()
            for conn in self._idle:
                conn.close()
            self._idle.clear()
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None


class Checkpointer:
    """One thread for every store of the process, checkpointing the stores that asked
    (`ShardStore._committed`), one at a time, oldest request first."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._due: dict[int, ShardStore] = {}  # by id(store), in the order they asked
        self._thread: threading.Thread | None = None

    def request(self, store: ShardStore) -> None:
        """Checkpoint `store` soon (once, however often it asks before its turn)."""
        with self._cond:
            self._due.setdefault(id(store), store)
            if self._thread is None or not self._thread.is_alive():
                # Started here, not at import: a forked worker process starts its own.
                self._thread = threading.Thread(target=self._run, name="annserve-checkpointer", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due:
                    self._cond.wait()
                store = self._due.pop(next(iter(self._due)))
            store.checkpoint()


CHECKPOINTER = Checkpointer()


class Watch:
    """Tells cheaply (about 2 us) whether any other connection, in this process or another,
    committed to the store since the last look: SQLite's `PRAGMA data_version` on a connection
    of its own. Not thread-safe: its owner calls it under a lock."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._seen: int | None = None

    def changed(self) -> bool:
        """True at the first call and whenever a commit happened since the previous call."""
        now = self._conn.execute("PRAGMA data_version").fetchone()[0]
        changed, self._seen = now != self._seen, now
        return changed

    def close(self) -> None:
        self._conn.close()

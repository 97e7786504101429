"""One shard: its store of record, its `main` index (built from a snapshot) and its `fresh`
exact index (everything written since), and the maps between string ids and int64 labels.

Invariants, kept under `_state`'s write lock:
- `fresh` holds exactly the live labels above `main_max`.
- `main` (may be None) was built from the items live at a snapshot whose largest committed
  label was `main_max`; a label at or below `main_max` that is no longer live (deleted, or its
  id re-upserted under a new label) is a tombstone, filtered out of main's answers.
So live = (live labels <= main_max, all inside main) + fresh, and
tombstones = len(main) - (live - len(fresh)).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..indexes import Index, create_index, load_index
from ..indexes.base import higher_is_better

from .store import ShardStore

log = logging.getLogger(__name__)

MAIN_FILE = re.compile(r"^main-(\d{20})\.idx$")
TRAIN_SAMPLE = 100_000  # rows a kind trains on; more rarely changes a codebook or a quantizer
ADD_CHUNK = 20_000  # rows per add call, so progress moves and a stop request is seen
SNAPSHOT_CHUNK = 50_000  # rows per read from the store
RETRY_GROWTH = 4  # how much more main is asked for when tombstones ate a query's answers
RECALL_QUERIES = 200  # own items used as queries to measure a new main's recall@10
RECALL_K = 10

Hits = list[tuple[float, str]]  # (score, id) best first


def search_thread_init() -> None:
    """Initializer of the threads that run searches: FAISS gets one OpenMP thread there.

    A service's parallelism comes from concurrent requests (and shards); an OpenMP team per
    small search only fights them for the cores. Measured on 2 busy cores (load 7): a flat
    search of 1 query over 2,000 x 50 took 20 ms with the default team, 0.65 ms with one
    thread. The OpenMP setting is per OS thread, so rebuilds on the job thread keep every core.
    """
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss is a dependency; nothing to tune without it
        return
    faiss.omp_set_num_threads(1)


def shard_of(item_id: str, shards: int) -> int:
    """The shard that owns `item_id`: crc32 of its UTF-8 bytes, stable across processes and
    machines (Python's `hash` is salted per process)."""
    return zlib.crc32(item_id.encode()) % shards if shards > 1 else 0


def best_k(candidates: list[tuple[float, str]], k: int, metric: str) -> Hits:
    """The k best (score, id) pairs, best first; ties broken by id so the order is stable."""
    if higher_is_better(metric):
        candidates.sort(key=lambda c: (-c[0], c[1]))
    else:
        candidates.sort()
    return candidates[:k]


def brute_force(
    queries: np.ndarray, chunks: Iterable[tuple[Sequence[Any], np.ndarray]], k: int, dim: int, metric: str
) -> list[list[tuple[float, Any]]]:
    """Exact k best (score, key) per query of (nq, dim) `queries`, best first, over `chunks`
    of (keys (m,), vectors (m, dim)) - one FAISS flat per chunk, so memory stays bounded."""
    cands: list[list[tuple[float, Any]]] = [[] for _ in range(queries.shape[0])]
    for keys, vectors in chunks:
        flat = create_index("flat", dim, metric)
        flat.add(vectors, np.arange(len(keys), dtype=np.int64))
        rows, scores = flat.search(queries, min(k, len(keys)))
        for qi in range(queries.shape[0]):
            cands[qi] += [(sc, keys[r]) for r, sc in zip(rows[qi].tolist(), scores[qi].tolist()) if r >= 0]
            cands[qi] = best_k(cands[qi], k, metric)
    return cands


def build_recall(index: Index, vectors: np.ndarray, labels: np.ndarray, seed: int) -> float:
    """recall@10 of a freshly built `index` over (n, dim) `vectors` with (n,) `labels`: up to
    200 of its own items as queries, each one's own item left out of both answers, against
    exact search over the same vectors. An exact kind is 1.0 by construction."""
    n = len(labels)
    k = min(RECALL_K, n - 1)
    if k < 1 or index.kind == "flat":
        return 1.0
    pick = np.random.default_rng(seed).choice(n, min(RECALL_QUERIES, n), replace=False)
    queries = vectors[pick]
    chunks = (
        (labels[s : s + SNAPSHOT_CHUNK].tolist(), vectors[s : s + SNAPSHOT_CHUNK])
        for s in range(0, n, SNAPSHOT_CHUNK)
    )
    truth = brute_force(queries, chunks, k + 1, index.dim, index.metric)
    found, _ = index.search(queries, k + 1)
    hits = 0
    for qi, own in enumerate(labels[pick].tolist()):
        want = [label for _, label in truth[qi] if label != own][:k]
        got = [label for label in found[qi].tolist() if label != own and label >= 0][:k]
        hits += len(set(want) & set(got))
    return hits / (len(pick) * k)


class Cancelled(RuntimeError):
    """A rebuild stopped because the service is shutting down or the collection was deleted."""


class ReadWriteLock:
    """Many readers or one writer. A waiting writer holds back new readers so that a swap or a
    write is never starved by a stream of searches."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


@dataclass(frozen=True)
class Counts:
    live: int  # items that exist
    main: int  # live items served by main
    fresh: int  # items in fresh (all live)
    tombstones: int  # dead labels still inside main, filtered out of its answers


class _PendingWrite:
    """One caller's upsert, waiting for a group commit."""

    def __init__(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[str | None]) -> None:
        self.ids, self.vectors, self.payloads = ids, vectors, payloads
        self.done = threading.Event()
        self.error: BaseException | None = None


@dataclass
class NewMain:
    """A main index built off the request path, waiting to be installed."""

    index: Index | None  # None when the snapshot had no live items
    max_label: int
    path: Path | None
    recall: float | None = None  # recall@10 measured right after the build (build_recall)
    built_at: datetime | None = None


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (new, renamed or removed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def overfetch(k: int, main_len: int, tombstones: int) -> int:
    """How many results to ask main for so that about k survive the tombstone filter: k scaled
    by the share of main that is still live, with a margin; never more than k + tombstones
    (enough for an exact index) nor more than main holds."""
    if tombstones <= 0:
        return min(k, main_len)
    live_share = max(1.0 - tombstones / main_len, 0.05)
    want = math.ceil(k / live_share * 1.25) + 8
    return min(main_len, k + tombstones, want)


class Shard:
    """One shard of a collection, in directory `path` (store.sqlite, main-<label>.idx)."""

    def __init__(self, path: Path, dim: int, metric: str) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.dim, self.metric = dim, metric
        self.store = ShardStore(self.path / "store.sqlite", dim)
        # _write_lock orders writers (store commit + memory update as one step, in label order);
        # _state guards what searches read (main, fresh, the maps) and is held only briefly.
        self._write_lock = threading.Lock()
        self._pending_lock = threading.Lock()  # guards _pending, the writes waiting to commit
        self._pending: list[_PendingWrite] = []
        self._state = ReadWriteLock()
        self.main: Index | None = None
        self.main_max = 0
        self.main_built_at: datetime | None = None
        self.main_recall: float | None = None
        self.fresh = create_index("flat", dim, metric)
        self._fresh_labels: set[int] = set()
        self._id_of: dict[int, str] = {}  # live label -> id
        self._label_of: dict[str, int] = {}  # id -> its current (live) label
        self.index_lost = False  # an index file existed but could not be loaded
        self._load()

    # ---- start-up ----

    def _load(self) -> None:
        """Restore main from the newest index file and fresh from the store."""
        files = sorted(p for p in self.path.iterdir() if MAIN_FILE.match(p.name))
        if files:
            newest = files[-1]
            try:
                index = load_index(newest)
                if index.dim != self.dim or index.metric != self.metric:
                    raise ValueError(
                        f"index has dim {index.dim}, metric {index.metric!r}; "
                        f"the collection has dim {self.dim}, metric {self.metric!r}"
                    )
                self.main = index
                self.main_max = int(MAIN_FILE.match(newest.name).group(1))
                self.main_built_at, self.main_recall = _read_build_notes(newest)
            except Exception as exc:  # a derived file: whatever is wrong with it, rebuild it
                log.warning("ignoring unreadable index file %s (%s); serving from the store", newest, exc)
                self.index_lost = True
        with self.store.snapshot() as snap:
            self._next_label = max(snap.max_label, self.main_max) + 1
            for labels, ids, _ in snap.chunks(rows=SNAPSHOT_CHUNK, vectors=False):
                self._id_of.update(zip(labels.tolist(), ids))
                self._label_of.update(zip(ids, labels.tolist()))
            for labels, _, vectors in snap.chunks(after=self.main_max, rows=SNAPSHOT_CHUNK):
                self.fresh.add(vectors, labels)
                self._fresh_labels.update(labels.tolist())

    # ---- counts ----

    def counts(self) -> Counts:
        with self._state.read():
            live, fresh = len(self._id_of), len(self._fresh_labels)
            main_size = len(self.main) if self.main is not None else 0
        return Counts(live, live - fresh, fresh, main_size - (live - fresh))

    # ---- writes ----

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[str | None]) -> None:
        """Durably write n items (distinct ids, (n, dim) float32 checked by the caller, JSON
        payload texts), then make them searchable in fresh.

        Group commit: the fsync of a commit dominates a small write, so writes that queue up
        while one commits go out together in the next transaction (one fsync for all of them),
        in arrival order. Each caller returns only once its own items are durable."""
        mine = _PendingWrite(ids, vectors, payloads)
        with self._pending_lock:
            self._pending.append(mine)
        with self._write_lock:
            if not mine.done.is_set():  # nobody took it yet: lead a group with all that waits
                with self._pending_lock:
                    group, self._pending = self._pending, []
                self._write_group(group)
        mine.done.wait()
        if mine.error is not None:
            raise mine.error

    def _write_group(self, group: list[_PendingWrite]) -> None:
        """Commit the writes of `group` as one transaction, then apply them to memory (the
        caller holds the write lock). A failed commit fails every write of the group."""
        try:
            if len(group) == 1:
                ids, vectors, payloads = group[0].ids, group[0].vectors, group[0].payloads
            else:
                last: dict[str, tuple[int, int]] = {}  # an id in two writes: the later one wins
                for w, write in enumerate(group):
                    for pos, item_id in enumerate(write.ids):
                        last.pop(item_id, None)
                        last[item_id] = (w, pos)
                ids = list(last)
                vectors = np.stack([group[w].vectors[pos] for w, pos in last.values()])
                payloads = [group[w].payloads[pos] for w, pos in last.values()]
            n = len(ids)
            labels = np.arange(self._next_label, self._next_label + n, dtype=np.int64)
            self.store.upsert(labels, ids, vectors, payloads)
            self._next_label += n
            with self._state.write():
                self._forget([self._label_of.get(i) for i in ids])
                self.fresh.add(vectors, labels)
                label_list = labels.tolist()
                self._fresh_labels.update(label_list)
                self._id_of.update(zip(label_list, ids))
                self._label_of.update(zip(ids, label_list))
        except BaseException as exc:
            for write in group:
                write.error = exc
            raise
        finally:
            for write in group:
                write.done.set()

    def delete(self, ids: Sequence[str]) -> int:
        """Delete these ids; returns how many existed."""
        with self._write_lock:
            present = [i for i in ids if i in self._label_of]
            if not present:
                return 0
            self.store.delete(present)
            with self._state.write():
                self._forget([self._label_of.pop(i) for i in present])
        return len(present)

    def _forget(self, labels: list[int | None]) -> None:
        """Drop labels that are no longer live (caller holds the state write lock): out of
        fresh if they are there, else they become tombstones in main."""
        dead = [label for label in labels if label is not None]
        in_fresh = [label for label in dead if label in self._fresh_labels]
        if in_fresh:
            self.fresh.remove(np.asarray(in_fresh, dtype=np.int64))
            self._fresh_labels.difference_update(in_fresh)
        for label in dead:
            self._id_of.pop(label, None)

    def get(self, item_id: str) -> tuple[np.ndarray, dict[str, Any] | None] | None:
        return self.store.get(item_id)

    # ---- search ----

    def search(
        self, queries: np.ndarray, k: int, params: dict[str, Any], exclude: Sequence[str | None]
    ) -> list[Hits]:
        """Up to k (score, id) per query (nq, dim), best first, from main and fresh merged.
        `exclude[i]` is left out of query i's answers."""
        # One more candidate per query when an id may be excluded, so k still come back.
        fetch = k + (1 if any(e is not None for e in exclude) else 0)
        with self._state.read():
            # main and fresh are read as one consistent pair: a swap cannot fall between them.
            main, fresh_len = self.main, len(self._fresh_labels)
            main_live = len(self._id_of) - fresh_len
            fresh_hits = self._fresh_hits(queries, fetch) if fresh_len else None
        main_hits = None
        if main is not None and main_live > 0:
            # Searches never hold a lock while main runs: main is immutable once installed.
            main_hits = self._main_hits(main, queries, k, fetch, params, main_live, exclude)
        out = []
        for i in range(queries.shape[0]):
            cands = list(main_hits[i]) if main_hits else []
            if fresh_hits:
                cands += self._live(*fresh_hits[i], exclude[i])
            out.append(best_k(cands, k, self.metric))
        return out

    def _fresh_hits(self, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
        labels, scores = self.fresh.search(queries, min(k, len(self.fresh)))
        return list(zip(labels, scores))

    def _main_hits(
        self, main: Index, queries: np.ndarray, k: int, fetch: int, params: dict[str, Any],
        main_live: int, exclude: Sequence[str | None],
    ) -> list[Hits]:
        """Main's answers with tombstones filtered out; rows that lost too many to tombstones
        are asked again for more, until they have k or main has nothing more to give."""
        size = len(main)
        fetch = overfetch(fetch, size, size - main_live)
        hits: list[Hits] = [[] for _ in range(queries.shape[0])]
        todo = np.arange(queries.shape[0])
        while todo.size:
            labels, scores = main.search(queries[todo], fetch, **params)
            short = []
            for row, qi in enumerate(todo.tolist()):
                hits[qi] = self._live(labels[row], scores[row], exclude[qi])
                if len(hits[qi]) < k and len(hits[qi]) < main_live and fetch < size:
                    short.append(qi)
            todo = np.asarray(short, dtype=np.int64)
            fetch = min(size, fetch * RETRY_GROWTH)
        return hits

    def _live(self, labels: np.ndarray, scores: np.ndarray, excluded: str | None) -> Hits:
        """(score, id) of the labels that are still live, in the given order."""
        id_of = self._id_of
        out = []
        for label, score in zip(labels.tolist(), scores.tolist()):
            item_id = id_of.get(label)  # None for -1 padding and for tombstones
            if item_id is not None and item_id != excluded:
                out.append((score, item_id))
        return out

    def search_exact(self, queries: np.ndarray, k: int, exclude: Sequence[str | None]) -> list[Hits]:
        """Brute force over the live items in the store (one consistent snapshot), read in
        chunks so that memory stays bounded whatever the shard's size."""
        fetch = k + (1 if any(e is not None for e in exclude) else 0)
        with self.store.snapshot() as snap:
            chunks = ((ids, vectors) for _, ids, vectors in snap.chunks(rows=SNAPSHOT_CHUNK))
            found = brute_force(queries, chunks, fetch, self.dim, self.metric)
        return [
            best_k([h for h in hits if h[1] != exclude[qi]], k, self.metric) for qi, hits in enumerate(found)
        ]

    # ---- rebuild ----

    def build_main(
        self, kind: str, params: dict[str, Any], report: Callable[[float], None], stop: threading.Event
    ) -> NewMain:
        """Build a new main of `kind` from a snapshot of the live items and save it atomically.
        Progress goes to `report` (0..1): snapshot 0-0.15, train -0.3, add -0.9, save -1.
        Raises `Cancelled` when `stop` is set, ValueError when the kind cannot be built."""
        with ExitStack() as stack:
            with self._write_lock:
                # Under the write lock every committed write is also in memory, so fresh holds
                # every live label up to the snapshot's max label (install relies on it).
                snap = stack.enter_context(self.store.snapshot())
            n, max_label = snap.count(), snap.max_label
            vectors = np.empty((n, self.dim), dtype=np.float32)
            labels = np.empty(n, dtype=np.int64)
            done = 0
            for chunk_labels, _, chunk in snap.chunks(rows=SNAPSHOT_CHUNK):
                m = len(chunk_labels)
                labels[done : done + m], vectors[done : done + m] = chunk_labels, chunk
                done += m
                report(0.15 * done / max(n, 1))
                _check(stop)
        if n == 0:
            return NewMain(None, max_label, None)
        index = create_index(kind, self.dim, self.metric, **params)
        sample = vectors
        if n > TRAIN_SAMPLE:
            rng = np.random.default_rng(max_label)
            sample = vectors[np.sort(rng.choice(n, TRAIN_SAMPLE, replace=False))]
        index.train(sample)
        report(0.3)
        for start in range(0, n, ADD_CHUNK):
            _check(stop)
            index.add(vectors[start : start + ADD_CHUNK], labels[start : start + ADD_CHUNK])
            report(0.3 + 0.6 * min(start + ADD_CHUNK, n) / n)
        recall = build_recall(index, vectors, labels, seed=max_label)
        _check(stop)
        path = self.path / f"main-{max_label:020d}.idx"
        new = NewMain(index, max_label, path, recall, datetime.now(timezone.utc))
        # Notes first, index last: the index file's arrival is what makes the build count.
        write_durably(_notes_path(new.path), lambda tmp: tmp.write_text(json.dumps(
            {"built_at": new.built_at.isoformat(), "recall_at_10": recall, "items": n}
        )))
        write_durably(new.path, index.save)
        report(1.0)
        return new

    def install(self, new: NewMain) -> None:
        """Swap in a built main and drain from fresh exactly the labels it covers (<= its max
        label); writes that came after its snapshot stay in fresh."""
        with self._state.write():
            covered = [label for label in self._fresh_labels if label <= new.max_label]
            if covered:
                self.fresh.remove(np.asarray(covered, dtype=np.int64))
                self._fresh_labels.difference_update(covered)
            self.main, self.main_max = new.index, new.max_label
            self.main_built_at = new.built_at or datetime.now(timezone.utc)
            self.main_recall = new.recall
            self.index_lost = False
        # Older files are now stale; the newest (or, for an empty snapshot, none) is the truth.
        keep = {new.path, _notes_path(new.path)} if new.path else set()
        for old in self.path.iterdir():
            if old.name.startswith("main-") and old not in keep:
                old.unlink(missing_ok=True)

    def close(self) -> None:
        with self._write_lock:
            self.store.close()


def _notes_path(index_path: Path) -> Path:
    """The build notes beside an index file: when it was built and the recall it measured."""
    return index_path.with_suffix(".json")


def _read_build_notes(index_path: Path) -> tuple[datetime, float | None]:
    try:
        notes = json.loads(_notes_path(index_path).read_text())
        return datetime.fromisoformat(notes["built_at"]), notes.get("recall_at_10")
    except (OSError, ValueError, KeyError, TypeError):  # notes are a nicety; the index decides
        return datetime.fromtimestamp(index_path.stat().st_mtime, timezone.utc), None


def write_durably(path: Path, write: Callable[[Path], Any]) -> None:
    """Write `path` through `write(tmp)`, fsync it, rename it into place and fsync the
    directory: after a crash or power loss the file is the old one or the new one, whole."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _check(stop: threading.Event) -> None:
    if stop.is_set():
        raise Cancelled("rebuild stopped: the service is shutting down or the collection was deleted")

"""One coherent set of engine counters and one recall window across the worker processes
serving a data directory (`annserve serve --workers N`).

Each worker counts in its own memory (stats.py, recall.py) and answers a scrape or a
`GET /collections/{c}/recall` itself; without this, the answer depends on which worker took
the connection. So every worker publishes what it counted to `<data_dir>/workers/stats/<pid>.json`
(written to a temporary name and renamed: a reader sees a whole file or the previous one) from
a background thread, at most once a second and only when something changed, and a reader merges
every worker's file with its own figures taken fresh:
- counters (searches, queries, writes, rebuilds, failures, refusals, samples, drops) and
  histograms are summed over every file, a dead worker's included: counters never go back,
  as in prometheus-client's multiprocess mode. `annserve serve` empties the directory at start,
  so a restarted service counts from zero.
- the recall window: every worker publishes its window's samples with the time each was
  measured; the merged window is the newest `ANNSERVE_RECALL_WINDOW` of all of them, so every
  worker answers the same figure (within the second a publication may lag).
- a collection is known by its name and creation time: the counts of a deleted collection do
  not carry over to a new one of the same name.
- the resident memory of every live worker (/proc/<pid>/status; the published figure elsewhere).

The search path is not touched: publishing reads the counters under their own locks, off it.
A reader parses a file again only when it changed (size and mtime), so a scrape costs a stat per
worker and the merge.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from .recall import recall_summary
from .stats import Histogram, StatsCopy

if TYPE_CHECKING:
    from .collection import Collection
    from .coordination import Coordination

log = logging.getLogger(__name__)

DIRECTORY = "stats"  # under coordination.dir
PUBLISH_SECONDS = 1.0


def resident_memory_bytes(pid: int) -> int | None:
    """The resident set size of process `pid` (Linux /proc), None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024  # in kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _token(c: dict[str, Any]) -> tuple:
    """What changes when one worker's counts of one collection do (pid aside)."""
    stats, recall = c["stats"], c["recall"]
    return (c["created_at"], stats["searches"], stats["queries"], stats["upserted"], stats["deleted"],
            stats["rebuild_seconds"]["count"], recall["samples"], recall["dropped"])


def _stats_export(stats: StatsCopy) -> dict[str, Any]:
    return {
        "searches": stats.searches, "queries": stats.queries, "upserted": stats.upserted,
        "deleted": stats.deleted, "rebuilds": stats.rebuilds, "failures": stats.failures,
        "refusals": stats.refusals, "batch_queries": stats.batch_queries.export(),
        "rebuild_seconds": stats.rebuild_seconds.export(),
    }


def _stats_sum(exports: list[dict[str, Any]]) -> StatsCopy:
    failures: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    batch = rebuild = None
    for e in exports:
        failures.update(e["failures"])
        refusals.update(e["refusals"])
        b, r = Histogram.from_export(e["batch_queries"]), Histogram.from_export(e["rebuild_seconds"])
        batch = b if batch is None else batch.plus(b)
        rebuild = r if rebuild is None else rebuild.plus(r)
    return StatsCopy(
        sum(e["searches"] for e in exports), sum(e["queries"] for e in exports),
        sum(e["upserted"] for e in exports), sum(e["deleted"] for e in exports),
        sum(e["rebuilds"] for e in exports), dict(failures), dict(refusals), batch, rebuild,
    )


@dataclass
class MergedCollection:
    """One collection's figures summed over the workers."""

    stats: StatsCopy
    recall: dict[str, Any]  # as RecallMonitor.summary()
    recall_histogram: Histogram
    last_sampled_at: float | None


@dataclass
class MergedView:
    """Every worker's figures at one moment: `collections` by (name, created_at)."""

    collections: dict[tuple[str, str | None], MergedCollection] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)  # {"pid", "alive", "resident_memory_bytes"}

    def of(self, collection: Collection) -> MergedCollection | None:
        return self.collections.get((collection.name, collection.spec.created_at))


def figures_of(collection: Collection, view: MergedView | None) -> MergedCollection:
    """A collection's counters and recall as a reader reports them: every worker's merged when
    `view` (several workers) knows it, else this process's own (one worker, or a collection
    created a moment ago that no worker has published yet)."""
    merged = view.of(collection) if view is not None else None
    if merged is not None:
        return merged
    recall = collection.recall
    return MergedCollection(collection.stats.copy(), recall.summary(), recall.histogram_copy(), recall.last_sampled_at)


class WorkerStats:
    """This worker's publication, and the merge of every worker's. `start()`, then `close()`."""

    def __init__(self, coordination: Coordination, collections: Callable[[], Iterable[Collection]],
                 window: int, sample_rate: float) -> None:
        self._coordination = coordination
        self._collections = collections
        self._window, self._sample_rate = int(window), float(sample_rate)
        self.dir = coordination.dir / DIRECTORY
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pid = coordination.pid
        self._path = self.dir / f"{self.pid}.json"
        self._published: Any = None  # what changes when a counter does: unchanged, no write
        self._publish_lock = threading.Lock()
        self._cache: dict[Path, tuple[tuple[int, int], dict[str, Any]]] = {}  # path -> ((size, mtime), parsed)
        self._cache_lock = threading.Lock()
        # Exports and merges are redone only for a collection whose counts changed: a scrape of
        # many quiet collections then costs a comparison each, not a copy of their windows.
        self._recall_exports: dict[tuple[str, str | None], tuple[tuple, dict[str, Any]]] = {}
        self._merges: dict[tuple[str, str | None], tuple[tuple, MergedCollection]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- publishing ----

    def snapshot(self) -> dict[str, Any]:
        """This worker's figures now."""
        collections = {}
        exports = {}
        for collection in self._collections():
            key = (collection.name, collection.spec.created_at)
            recall = collection.recall
            token = (recall.samples, recall.dropped)  # read before the export: a race re-exports next time
            cached = self._recall_exports.get(key)
            if cached is None or cached[0] != token:
                cached = (token, recall.export())
            exports[key] = cached
            collections[collection.name] = {
                "created_at": collection.spec.created_at,
                "stats": _stats_export(collection.stats.copy()),
                "recall": cached[1],
            }
        self._recall_exports = exports
        return {"pid": self.pid, "published_at": time.time(),
                "resident_memory_bytes": resident_memory_bytes(self.pid), "collections": collections}

    def publish(self) -> dict[str, Any]:
        """Write this worker's figures when they changed since the last write; returns them."""
        with self._publish_lock:
            snap = self.snapshot()
            change = [(name, *_token(c)) for name, c in snap["collections"].items()]
            memory = (snap["resident_memory_bytes"] or 0) >> 20  # a MiB's change is worth a write
            if (change, memory) != self._published:
                temporary = self._path.with_suffix(".tmp")
                temporary.write_bytes(orjson.dumps(snap))
                os.replace(temporary, self._path)
                self._published = (change, memory)
            return snap

    def start(self) -> None:
        self.publish()
        self._thread = threading.Thread(target=self._run, name="annserve-worker-stats", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(PUBLISH_SECONDS):
            try:
                self.publish()
            except Exception:  # noqa: BLE001 - never let the publisher die; the next round retries
                log.exception("publishing this worker's figures failed")

    def close(self) -> None:
        """Stop publishing, after a last publication (the file stays: a stopped worker's counts count)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            try:
                self.publish()
            except Exception:  # noqa: BLE001
                log.exception("publishing this worker's last figures failed")

    # ---- merging ----

    def _read_others(self) -> list[dict[str, Any]]:
        out = []
        with self._cache_lock:
            seen = set()
            for path in self.dir.glob("*.json"):
                if path == self._path:
                    continue
                try:
                    st = path.stat()
                    key = (st.st_size, st.st_mtime_ns)
                    cached = self._cache.get(path)
                    if cached is None or cached[0] != key:
                        cached = self._cache[path] = (key, orjson.loads(path.read_bytes()))
                except (OSError, orjson.JSONDecodeError):
                    continue  # removed meanwhile; a torn file cannot be (renamed into place)
                seen.add(path)
                out.append(cached[1])
            for gone in set(self._cache) - seen:
                del self._cache[gone]
        return out

    def merged(self) -> MergedView:
        """Every worker's figures, this one's taken now (its file is the publisher thread's job)."""
        everyone = [self.snapshot(), *self._read_others()]
        # Every live worker is listed, also one that joined but has not published yet.
        published = {int(snap["pid"]): snap["resident_memory_bytes"] for snap in everyone}
        view = MergedView()
        for pid in self._coordination.alive_pids():
            memory = resident_memory_bytes(pid)
            view.workers.append({"pid": pid, "alive": True, "resident_memory_bytes":
                                 memory if memory is not None else published.get(pid)})
        grouped: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
        for snap in everyone:
            for name, c in snap["collections"].items():
                grouped.setdefault((name, c["created_at"]), []).append((int(snap["pid"]), c))
        merges = {}
        for key, parts in grouped.items():
            token = tuple((pid, *_token(c)) for pid, c in parts)
            cached = self._merges.get(key)
            if cached is None or cached[0] != token:
                cached = (token, self._merge([c for _, c in parts]))
            merges[key] = cached
        self._merges = merges
        view.collections = {key: merged for key, (_, merged) in merges.items()}
        return view

    def _merge(self, parts: list[dict[str, Any]]) -> MergedCollection:
        times = np.concatenate([np.asarray(p["recall"]["window_t"], dtype=np.float64) for p in parts])
        newest = np.argsort(times, kind="stable")[-self._window:]
        values = np.concatenate([np.asarray(p["recall"]["window"], dtype=np.float64) for p in parts])[newest]
        ks = np.concatenate([np.asarray(p["recall"]["window_k"], dtype=np.int64) for p in parts])[newest]
        n = len(newest)
        recall = math.fsum(values.tolist()) / n if n else None
        k = int(np.bincount(ks).argmax()) if n else None  # the most frequent k (the smallest of a tie)
        lasts = [p["recall"]["last_sampled_at"] for p in parts if p["recall"]["last_sampled_at"] is not None]
        last = max(lasts) if lasts else None
        histogram = None
        for p in parts:
            h = Histogram.from_export(p["recall"]["histogram"])
            histogram = h if histogram is None else histogram.plus(h)
        summary = recall_summary(
            recall, k, n, self._window, sum(p["recall"]["samples"] for p in parts),
            sum(p["recall"]["dropped"] for p in parts), self._sample_rate, last,
        )
        return MergedCollection(_stats_sum([p["stats"] for p in parts]), summary, histogram, last)

"""What the engine counts per collection for /metrics: searches, writes, rebuilds, and a look
at every shard's sizes taken at scrape time.

Plain numbers under one lock, read by the metrics collector (app/api/transport/engine_metrics.py)
when Prometheus scrapes: the engine imports no metrics library, and the request path pays one
uncontended lock per call, never a label lookup.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .build import Cancelled
from .errors import NotFound

if TYPE_CHECKING:
    from .collection import Collection

# Few buckets: every bucket is a series per collection, and a scrape's cost is its series.
# Queries per engine search call: the micro-batcher merges concurrent requests up to max_batch.
BATCH_BUCKETS = (1, 4, 16, 64, 256, 1024)
# A rebuild takes from a fraction of a second (10K items, flat) to an hour (10M, HNSW).
REBUILD_BUCKETS = (1, 10, 60, 300, 1800)
# Why a rebuild ended without a new main. Every reason is exported from the start (at 0), so
# that `increase()` sees the first one.
FAILURE_REASONS = ("build_error", "cancelled", "error")  # the kind could not be built; shut down; a bug
REFUSAL_REASONS = ("recall_floor",)  # built, measured under the collection's recall_floor


class RebuildRefused(RuntimeError):
    """A rebuilt main measured under the collection's recall floor: it was not swapped in."""

    def __init__(self, message: str, recall: float, floor: float) -> None:
        super().__init__(message)
        self.recall, self.floor = recall, floor
        self.reason = "recall_floor"


class Histogram:
    """Observation counts per upper bound (a value equal to a bound falls in its bucket), their
    sum and count. Not thread-safe: its owner holds a lock around it."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) for each bound and +Inf, as Prometheus wants them."""
        out, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self._counts):
            total += count
            out.append((bound, total))
        return out

    def plus(self, other: Histogram) -> Histogram:
        """A new histogram holding both (same bounds)."""
        both = self.copy()
        both._counts = [a + b for a, b in zip(both._counts, other._counts)]
        both.sum, both.count = both.sum + other.sum, both.count + other.count
        return both

    def export(self) -> dict:
        """Plain numbers (JSON), for `from_export`."""
        return {"bounds": list(self.bounds), "counts": list(self._counts), "sum": self.sum, "count": self.count}

    @classmethod
    def from_export(cls, data: dict) -> Histogram:
        histogram = cls(data["bounds"])
        if len(data["counts"]) != len(histogram._counts):
            raise ValueError(f"histogram counts: expected {len(histogram._counts)}, got {len(data['counts'])}")
        histogram._counts, histogram.sum, histogram.count = list(data["counts"]), data["sum"], data["count"]
        return histogram

    def copy(self) -> Histogram:
        twin = Histogram(self.bounds)
        twin._counts, twin.sum, twin.count = list(self._counts), self.sum, self.count
        return twin


class CollectionStats:
    """Counters of one collection since the process started."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.searches = 0  # search requests (a batch search is one)
        self.queries = 0  # query vectors searched
        self.upserted = 0  # items written (distinct ids per call)
        self.deleted = 0  # items that existed and were deleted
        self.batch_queries = Histogram(BATCH_BUCKETS)  # queries per engine call
        self.rebuilds = 0  # rebuilds that installed their new mains
        self.failures = dict.fromkeys(FAILURE_REASONS, 0)
        self.refusals = dict.fromkeys(REFUSAL_REASONS, 0)
        self.rebuild_seconds = Histogram(REBUILD_BUCKETS)  # every rebuild, whatever its outcome

    def searched(self, requests: int, queries: int) -> None:
        """One engine search call that answered `requests` requests with `queries` rows."""
        with self._lock:
            self.searches += requests
            self.queries += queries
            self.batch_queries.observe(queries)

    def wrote(self, upserted: int = 0, deleted: int = 0) -> None:
        with self._lock:
            self.upserted += upserted
            self.deleted += deleted

    @contextmanager
    def rebuilding(self) -> Iterator[None]:
        """Times the rebuild inside and counts its outcome (the exception passes through)."""
        start = time.monotonic()
        outcome: tuple[str, str] = ("failures", "error")
        try:
            yield
            outcome = ("rebuilds", "")
        except RebuildRefused as exc:
            outcome = ("refusals", exc.reason)
            raise
        except Cancelled:
            outcome = ("failures", "cancelled")
            raise
        except (ValueError, MemoryError):
            outcome = ("failures", "build_error")
            raise
        finally:
            with self._lock:
                self.rebuild_seconds.observe(time.monotonic() - start)
                if outcome[0] == "rebuilds":
                    self.rebuilds += 1
                else:
                    getattr(self, outcome[0])[outcome[1]] += 1

    def copy(self) -> StatsCopy:
        """A consistent copy, for one scrape."""
        with self._lock:
            return StatsCopy(
                self.searches, self.queries, self.upserted, self.deleted, self.rebuilds,
                dict(self.failures), dict(self.refusals), self.batch_queries.copy(), self.rebuild_seconds.copy(),
            )


@dataclass(frozen=True)
class StatsCopy:
    """CollectionStats' numbers at one moment."""

    searches: int
    queries: int
    upserted: int
    deleted: int
    rebuilds: int
    failures: dict[str, int]
    refusals: dict[str, int]
    batch_queries: Histogram
    rebuild_seconds: Histogram


@dataclass(frozen=True)
class ShardLook:
    """One shard's sizes at one moment."""

    main: int  # live items served by main
    fresh: int  # items in the exact fresh index
    tombstones: int  # dead items still inside main
    main_bytes: int  # memory of the main index (0 before the first build)
    fresh_bytes: int  # estimated: vectors and ids
    kind: str | None  # the main index's kind, None before the first build
    payload_bytes: int = 0  # the payload index (filters): its arrays and distinct strings


def look_at_shards(collection: Collection, catch_up: bool = False) -> list[ShardLook]:
    """Every shard's sizes now (the metrics collector's view of the engine's insides);
    `catch_up`: after applying what other processes committed (several workers)."""
    looks = []
    for shard in collection._shards:
        if catch_up:
            try:
                shard.catch_up()
            except NotFound:
                continue  # deleted by another worker a moment ago: the next scrape lists it no more
        counts = shard.counts()
        main = shard.main  # immutable once installed; read once
        looks.append(ShardLook(
            counts.main, counts.fresh, counts.tombstones,
            # main is immutable and caches its size; fresh changes with every write, and
            # FAISS measures by serialising, so fresh is estimated: vectors and int64 ids.
            main.memory_bytes() if main is not None else 0, counts.fresh * (collection.dim * 4 + 8),
            main.kind if main is not None else None, shard.payloads.memory_bytes(),
        ))
    return looks


def built_at_seconds(collection: Collection) -> float | None:
    """When the newest main of the collection was built (Unix seconds; None before any)."""
    built = [s.main_built_at for s in collection._shards if s.main_built_at is not None]
    return max(built).timestamp() if built else None

"""Online recall: a sampled share of live searches re-run exactly, off the request path.

`RecallSampler` (one per manager) owns a bounded queue and one worker thread. After a search
returns, `RecallMonitor.offer` (one monitor per collection) picks each query with probability
`ANNSERVE_RECALL_SAMPLE_RATE` and puts the picked rows, with the answer the caller got, on the
queue; a full queue drops them and counts the drop, so the caller never waits. The worker
re-runs them with `collection.search(..., exact=True)` (same k, params and exclusions, over the
same live data) and records each query's recall@k in the collection's monitor: a rolling
window of the last `ANNSERVE_RECALL_WINDOW` samples (the figure `GET /collections/{c}/recall`
and the `annserve_recall_ratio` gauge report), a histogram of per-query recall, counters of
samples and drops. The monitor also keeps the most recent sampled queries (a small reservoir):
the rebuild gate and the tuner measure on them, real traffic rather than stored items.

How a sample is counted:
- Recall@k of one query = (returned ids among the exact top k, plus returned ids whose score
  equals the k-th exact score: a tie is as good as the id it tied with) / the number of exact
  results (k, or fewer in a smaller collection). A query with no exact result is not counted.
- The exact re-run sees the data a moment later than the caller did (milliseconds to a
  second). A write that lands between the two can only make the caller's answer look worse:
  on a collection that is not changing the figure is exact, under heavy writes a little low.
- The worker waits up to `BATCH_WAIT_SECONDS` to gather samples and re-runs each collection's
  samples in one exact call: one pass over the store serves many samples.
- The worker keeps to `CPU_SHARE` of one core: after a round that took t seconds it rests
  t / CPU_SHARE before the next (samples queue meanwhile). An exact pass reads the whole shard
  from the store (50K x 384: about 0.15 s), so at 6,000 searches/s and 1% the rounds would
  otherwise take most of a core (and hold the GIL the searches need); with the rest, each
  round serves more samples and the figure comes a few seconds later.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from .search_options import NO_OPTIONS, SearchOptions
from .stats import Histogram

if TYPE_CHECKING:
    from .collection import Collection, Hits

log = logging.getLogger(__name__)

# Per-query recall buckets (at k=10 a query's recall is a multiple of 0.1; a perfect one falls
# in +Inf only). Few: each is a series per collection.
RECALL_BUCKETS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
# Two float32 scores from different code paths (a graph's distance, FAISS flat's) differ in
# their last bits; closer than this (relative) they are one score.
TIE_TOLERANCE = 1e-5
BATCH_WAIT_SECONDS = 0.25  # how long the worker gathers samples before an exact re-run
MAX_GATHER = 512  # samples taken off the queue for one round of exact re-runs
MIN_RECENT = 50  # fewer recent queries than this: the gate and the tuner use stored items
WORKER_NICENESS = 10  # as the rebuild jobs: searches win the cores
CPU_SHARE = 0.05  # of one core, at most, for the exact re-runs (see the module docstring)


@dataclass(eq=False)
class _Sample:
    monitor: RecallMonitor
    queries: np.ndarray  # (m, dim) float32, the picked rows
    k: int
    params: dict | None
    exclude: list[str | None] | None
    answers: list[Hits]  # what the callers got, one per row
    options: SearchOptions = NO_OPTIONS  # the filter and threshold are re-applied to the exact run

    def group(self) -> tuple:
        params = orjson.dumps(self.params, option=orjson.OPT_SORT_KEYS) if self.params else b""
        return (id(self.monitor), self.k, params, self.options.where, self.options.score_threshold)


def query_recall(got: Hits, truth: Hits) -> float | None:
    """Recall@k of one answer `got` against the exact answer `truth` (both (id, score), best
    first, truth of length min(k, items)); ties with the k-th exact score count as hits. None
    when there is no exact result to compare with."""
    if not truth:
        return None
    want = {item_id for item_id, _ in truth}
    kth = truth[-1][1]
    tolerance = TIE_TOLERANCE * max(1.0, abs(kth))
    hits = sum(1 for item_id, score in got if item_id in want or abs(score - kth) <= tolerance)
    return min(hits, len(truth)) / len(truth)


class RecallSampler:
    """The queue and the worker shared by every collection of a manager. `close()` at the end."""

    def __init__(self, rate: float, queue_size: int, window: int, recent: int) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"recall sample rate: expected a number in [0, 1], got {rate!r}")
        self.rate, self.window, self.recent = float(rate), int(window), int(recent)
        self.capacity = int(queue_size)
        self._queue: queue.Queue[_Sample | None] = queue.Queue(maxsize=self.capacity)
        self._closed = threading.Event()
        self._worker = threading.Thread(target=self._run, name="annserve-recall", daemon=True)
        self._worker.start()

    @property
    def depth(self) -> int:
        """Samples waiting for their exact re-run."""
        return self._queue.qsize()

    def put(self, sample: _Sample) -> bool:
        """Queue a sample without waiting; False when the queue is full (or closed)."""
        if self._closed.is_set():
            return False
        try:
            self._queue.put_nowait(sample)
            return True
        except queue.Full:
            return False

    def close(self) -> None:
        """Stop the worker (samples still queued are dropped). Idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        while True:  # make room for the stop signal
            try:
                self._queue.put_nowait(None)
                break
            except queue.Full:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
        self._worker.join()

    def _run(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)
        except (AttributeError, OSError):  # not Linux, or not permitted: normal priority
            pass
        rest_until = 0.0
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = max(time.monotonic() + BATCH_WAIT_SECONDS, rest_until)
            while len(batch) < MAX_GATHER:
                try:
                    item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
                except queue.Empty:
                    break
                if item is None:
                    return
                batch.append(item)
            if self._closed.wait(max(rest_until - time.monotonic(), 0.0)):  # a full gather came early
                return
            started = time.monotonic()
            self._rerun(batch)
            ended = time.monotonic()
            rest_until = ended + (ended - started) / CPU_SHARE

    def _rerun(self, batch: list[_Sample]) -> None:
        groups: dict[tuple, list[_Sample]] = {}
        for sample in batch:
            groups.setdefault(sample.group(), []).append(sample)
        for members in groups.values():
            first = members[0]
            queries = np.concatenate([m.queries for m in members]) if len(members) > 1 else first.queries
            exclude = None
            if any(m.exclude for m in members):
                exclude = [e for m in members for e in (m.exclude or [None] * len(m.queries))]
            try:
                truth = first.monitor.collection.search(
                    queries, first.k, first.params, exact=True, exclude=exclude,
                    filter=first.options.where, score_threshold=first.options.score_threshold,
                )
            except Exception as exc:  # noqa: BLE001 - a deleted or closed collection: drop the samples
                log.debug("recall re-run of %d samples failed: %s", len(queries), exc)
                first.monitor.count_dropped(len(queries))
                continue
            answers = [a for m in members for a in m.answers]
            # A filtered query measures the index under that filter: not a plain query for the
            # tuner and the rebuild gate, which search without one.
            unfiltered = first.options.where is None and first.options.score_threshold is None
            plain = [unfiltered and (exclude is None or exclude[row] is None) for row in range(len(queries))]
            first.monitor.record(queries, first.k, answers, truth, plain)


class RecallMonitor:
    """One collection's online recall: the rolling window, the per-query histogram, the counts,
    the recent queries. `offer` runs on the request path; everything else off it."""

    def __init__(self, collection: Collection, sampler: RecallSampler | None) -> None:
        self.collection = collection
        self.sampler = sampler
        window = sampler.window if sampler else 1
        self._lock = threading.Lock()
        self._window: deque[float] = deque(maxlen=window)
        self._window_k: deque[int] = deque(maxlen=window)
        # When each sample was measured: several workers' windows merge into one by time
        # (worker_stats.py).
        self._window_t: deque[float] = deque(maxlen=window)
        # Kept as they change, so that a scrape of many collections reads two numbers each.
        self._window_sum = 0.0
        self._k_counts: Counter[int] = Counter()
        self._appended = 0
        self.histogram = Histogram(RECALL_BUCKETS)
        self.samples = 0  # queries whose recall was recorded
        self.dropped = 0  # queries picked but not measured (queue full, re-run failed)
        self.last_sampled_at: float | None = None  # Unix seconds
        self._recent: deque[np.ndarray] = deque(maxlen=sampler.recent if sampler else 1)
        self.tune_lock = threading.Lock()  # one tuning at a time per collection (tuning.py)

    # ---- the request path ----

    def offer(
        self, queries: np.ndarray, k: int, params: dict | None, exclude: Sequence[str | None] | None,
        answers: list[Hits], options: SearchOptions = NO_OPTIONS,
    ) -> None:
        """After a search returned `answers` for (nq, dim) `queries` (with `options`' filter and
        threshold): pick each row with the sample rate and queue the picked ones. Never blocks."""
        sampler = self.sampler
        if sampler is None or sampler.rate <= 0.0:
            return
        nq = len(answers)
        if nq == 1:
            if random.random() >= sampler.rate:
                return
            rows: Any = [0]
        else:
            rows = np.flatnonzero(np.random.random(nq) < sampler.rate).tolist()
            if not rows:
                return
        sample = _Sample(
            self, np.array(queries[rows], dtype=np.float32), int(k), dict(params) if params else None,
            [exclude[r] for r in rows] if exclude is not None else None, [answers[r] for r in rows],
            options,
        )
        if not sampler.put(sample):
            self.count_dropped(len(rows))

    # ---- the worker ----

    def count_dropped(self, n: int) -> None:
        with self._lock:
            self.dropped += n

    def record(
        self, queries: np.ndarray, k: int, answers: list[Hits], truth: list[Hits], plain: list[bool]
    ) -> None:
        """Record the recall of each answer against its exact answer; `plain[i]`: query i had
        no exclusion, so its vector may serve as a recent query."""
        values = [query_recall(got, want) for got, want in zip(answers, truth)]
        now = time.time()
        with self._lock:
            for row, value in enumerate(values):
                if value is None:
                    continue
                if len(self._window) == self._window.maxlen:
                    self._window_sum -= self._window[0]
                    self._k_counts[self._window_k[0]] -= 1
                self._window.append(value)
                self._window_k.append(k)
                self._window_t.append(now)
                self._window_sum += value
                self._k_counts[k] += 1
                self._appended += 1
                if self._appended % self._window.maxlen == 0:  # no drift from float rounding
                    self._window_sum = math.fsum(self._window)
                self.histogram.observe(value)
                self.samples += 1
                if plain[row]:
                    self._recent.append(queries[row])
            self.last_sampled_at = now

    # ---- readers ----

    def summary(self) -> dict[str, Any]:
        """The rolling figure: mean recall@k over the last `window` samples (None before any);
        `k` is the k of those samples (the most frequent one when callers asked for several)."""
        with self._lock:
            n = len(self._window)
            recall = self._window_sum / n if n else None
            k = max(self._k_counts, key=self._k_counts.__getitem__) if n else None
            samples, dropped, last = self.samples, self.dropped, self.last_sampled_at
        return recall_summary(recall, k, n, self._window.maxlen, samples, dropped,
                              self.sampler.rate if self.sampler else 0.0, last)

    def export(self) -> dict[str, Any]:
        """Everything the monitor counts, as plain lists and numbers (for the other workers:
        worker_stats.py): the window as three columns, oldest first: when each sample was
        measured (Unix seconds), its recall, its k."""
        with self._lock:
            return {
                "window_t": list(self._window_t), "window": list(self._window), "window_k": list(self._window_k),
                "histogram": self.histogram.export(),
                "samples": self.samples,
                "dropped": self.dropped,
                "last_sampled_at": self.last_sampled_at,
            }

    def histogram_copy(self) -> Histogram:
        with self._lock:
            return self.histogram.copy()

    def recent_queries(self, minimum: int = MIN_RECENT) -> np.ndarray | None:
        """The most recent sampled queries, (m, dim) float32, or None when fewer than `minimum`."""
        with self._lock:
            if len(self._recent) < minimum:
                return None
            return np.stack(list(self._recent))


def recall_summary(
    recall: float | None, k: int | None, samples: int, window: int, samples_total: int, dropped_total: int,
    sample_rate: float, last_sampled_at: float | None,
) -> dict[str, Any]:
    """The answer of `GET /collections/{c}/recall` (without the collection's settings)."""
    return {
        "recall_at_k": None if recall is None else round(min(max(recall, 0.0), 1.0), 6),
        "k": k,
        "samples": samples,
        "window": window,
        "samples_total": samples_total,
        "dropped_total": dropped_total,
        "sample_rate": sample_rate,
        "last_sampled_at": (
            datetime.fromtimestamp(last_sampled_at, timezone.utc).isoformat() if last_sampled_at is not None else None
        ),
    }


def check_policy(recall_target: Any, recall_floor: Any, auto_tune: Any) -> None:
    """ValueError unless 0 < recall_target <= 1, 0 <= recall_floor <= recall_target and
    auto_tune is a boolean."""
    for name, value, low_open in (("recall_target", recall_target, True), ("recall_floor", recall_floor, False)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            (0.0 < value <= 1.0) if low_open else (0.0 <= value <= 1.0)
        ):
            interval = "(0, 1]" if low_open else "[0, 1] (0 turns the rebuild gate off)"
            raise ValueError(f"{name}: expected a number in {interval}, got {value!r}")
    if recall_floor > recall_target:
        raise ValueError(
            f"recall_floor: expected at most recall_target ({recall_target}), got {recall_floor}: "
            "a rebuild would be refused at a recall the collection is content to serve"
        )
    if not isinstance(auto_tune, bool):
        raise ValueError(f"auto_tune: expected true or false, got {auto_tune!r}")

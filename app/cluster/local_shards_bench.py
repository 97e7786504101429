"""Local shards: the latency of one collection split into `shards: 4` against the same items in
`shards: 1`, in one process (the engine, no HTTP), so that only the shard fan-out differs.

Target (issue 9): 4 shards within 1.3x the latency of 1 shard of the same total size, i.e. the
engine's fan-out (engine/collection.py `_on_every_shard`: the first shard on the caller's thread,
the others on the search threads) does not serialise. Both collections are loaded with the same
items and rebuilt, then asked the same queries in turn, query by query, so that a busy machine
weighs on each alike; single searches (1 query) and batches (`--batch` queries), p50 and p99.
The 4 shards are also searched in turn on one thread, and always in parallel (the engine picks
between the two by each search's expected size): what the fan-out saves, and what it costs.

    python -m annserve.cluster.local_shards_bench [--n 100000] [--kinds flat,ivf_flat,hnswlib]

What to expect. A flat (exact) search does the same work over 4 quarters as over the whole, so
with the quarters in parallel 4 shards may even be faster; a graph or IVF search costs about
the same per shard whatever its size (log n hops, nprobe lists), so 4 shards do nearly 4 times
the work of 1, and only as many cores as there are shards can hide it: on 2 cores the floor is
about 2x. The machine's core count and load are printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from ..bench.datasets import synthetic_clusters
from ..engine.manager import CollectionManager
from ..settings import Settings

UPSERT_BATCH = 5_000


def build(manager: CollectionManager, name: str, kind: str, shards: int, base: np.ndarray) -> None:
    collection = manager.create(name, base.shape[1], "cosine", kind, {}, shards=shards)
    ids = [str(i) for i in range(len(base))]
    for lo in range(0, len(base), UPSERT_BATCH):
        collection.upsert(ids[lo : lo + UPSERT_BATCH], base[lo : lo + UPSERT_BATCH], [None] * len(ids[lo : lo + UPSERT_BATCH]))
    job = manager.start_rebuild(name)
    while job.state in ("queued", "running"):
        time.sleep(0.1)
    if job.state != "succeeded":
        raise RuntimeError(f"rebuild of {name} {job.state}: {job.error}")


class InlineExecutor:
    """An executor that runs each task at once on the caller's thread: the same shards searched
    one after the other, the baseline that shows what the parallel fan-out saves."""

    def submit(self, fn, *args):
        future: Future = Future()
        future.set_result(fn(*args))
        return future


class Serial:
    """`collection` searched with its shards in turn (its executor swapped for the call)."""

    def __init__(self, collection) -> None:
        self.collection = collection

    def search(self, queries, k):
        pool, self.collection._executor = self.collection._executor, InlineExecutor()
        try:
            return self.collection.search(queries, k)
        finally:
            self.collection._executor = pool


class AlwaysParallel:
    """`collection` searched with every shard handed to the search threads whatever its size (the
    fan-out before small searches ran in turn): it is given no time estimate for the call."""

    def __init__(self, collection) -> None:
        self.collection = collection

    def search(self, queries, k):
        estimates, self.collection._shard_seconds = self.collection._shard_seconds, {}
        try:
            return self.collection.search(queries, k)
        finally:
            self.collection._shard_seconds = estimates


def timed(collections: dict, queries: list[np.ndarray], repeat: int) -> dict[str, np.ndarray]:
    """Seconds per call of each collection's search of each query block, taken in turn."""
    names = list(collections)
    for name in names:  # warm-up
        for q in queries[: max(len(queries) // 10, 1)]:
            collections[name].search(q, 10)
    out: dict[str, list[float]] = {name: [] for name in names}
    for i, q in enumerate(queries * repeat):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            collections[name].search(q, 10)
            out[name].append(time.perf_counter() - t0)
    return {name: np.array(v) for name, v in out.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="items (synthetic 50-d unit vectors)")
    parser.add_argument("--dim", type=int, default=50)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--batch", type=int, default=100, help="queries per batch search")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--kinds", default="flat,ivf_flat,hnswlib")
    args = parser.parse_args(argv)
    data = synthetic_clusters(args.n, args.queries, args.dim)
    singles = [data.queries[i : i + 1] for i in range(args.queries)]
    batches = [data.queries[lo : lo + args.batch] for lo in range(0, args.queries, args.batch)]
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # fresh_limit above n: one rebuild each, the one started here (no automatic one meanwhile).
        manager = CollectionManager(Settings(data_dir=Path(tmp), recall_sample_rate=0.0, fresh_limit=args.n + 1))
        manager.open()
        try:
            for kind in args.kinds.split(","):
                one, many = f"{kind}-1", f"{kind}-{args.shards}"
                build(manager, one, kind, 1, data.base)
                build(manager, many, kind, args.shards, data.base)
                collections = {"1": manager.get(one), str(args.shards): manager.get(many),
                               "serial": Serial(manager.get(many)), "parallel": AlwaysParallel(manager.get(many))}  # fmt: skip
                for what, blocks, repeat in (("1 query", singles, args.repeat), (f"{args.batch} queries", batches,
                                                                                 args.repeat * 3)):  # fmt: skip
                    runs = timed(collections, blocks, repeat)
                    p50 = {n: float(np.percentile(r, 50)) * 1e3 for n, r in runs.items()}
                    p99 = {n: float(np.percentile(r, 99)) * 1e3 for n, r in runs.items()}
                    a, b = "1", str(args.shards)
                    rows.append((kind, what, p50[a], p50[b], p50[b] / p50[a], p50["serial"], p50["parallel"], p99[a], p99[b]))
                    print(f"{kind:9} {what:12} p50 1 shard {p50[a]:8.3f} ms, {b} shards {p50[b]:8.3f} ms "
                          f"(x{p50[b] / p50[a]:.2f}), {b} shards in turn {p50['serial']:8.3f} ms, always in "
                          f"parallel {p50['parallel']:8.3f} ms; "
                          f"p99 {p99[a]:.3f} / {p99[b]:.3f} ms", flush=True)  # fmt: skip
                manager.delete(one)
                manager.delete(many)
        finally:
            manager.close()
    print(f"\n{args.n:,} x {args.dim} synthetic unit vectors, cosine; {os.cpu_count()} cores, load average "
          f"{load:.1f} at start, {os.getloadavg()[0]:.1f} at end; searches interleaved query by query\n")  # fmt: skip
    n = args.shards
    print(f"| kind | search | p50 1 shard (ms) | p50 {n} shards (ms) | ratio | {n} shards in turn (ms) | "
          f"{n} shards always in parallel (ms) | p99 1 / {n} (ms) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for kind, what, a, b, ratio, serial, parallel, pa, pb in rows:
        print(f"| {kind} | {what} | {a:.3f} | {b:.3f} | {ratio:.2f}x | {serial:.3f} | {parallel:.3f} | "
              f"{pa:.2f} / {pb:.2f} |")


if __name__ == "__main__":
    main()

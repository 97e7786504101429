"""What filters cost, in the engine (no HTTP): the payload index's upkeep per upserted item, its
memory per item, its rebuild at start-up, a filter's evaluation to admitted labels, and filtered
search latency and recall@10 per selectivity against brute force over the admitted items.

    python -m annserve.bench.filter_cost [--n 100000] [--kind hnswlib] [--queries 200]

Data: the GloVe 10K subset (tests/data) tiled to `--n` rows with small Gaussian noise, with the
synthetic payloads of `synthetic_payloads.py` (7-9 fields each: strings, numbers, booleans,
arrays, null, a nested object). Prints markdown tables; a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from ..engine.filters import admitted, matches, parse_filter
from ..engine.manager import CollectionManager
from ..engine.payload_index import PayloadIndex, ShardLookup
from ..indexes import brute_force_knn
from ..settings import Settings
from .synthetic_payloads import payloads

DATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "glove50_10k.npz"
K = 10
SELECTIVITIES = [
    ("none", None),
    ("80%", {"category": {"$ne": "books"}}),
    ("20%", {"category": "books"}),
    ("5%", {"price": {"$lt": 5}}),
    ("1%", {"category": "toys", "price": {"$lt": 5}}),
    ("0.2%", {"category": "toys", "price": {"$lt": 1}}),
    ("id $nin 1000", "nin"),
]


def tiled(n: int) -> tuple[np.ndarray, np.ndarray]:
    with np.load(DATA) as f:
        base, queries = f["base"], f["queries"]
    reps = -(-n // len(base))
    rng = np.random.default_rng(0)
    x = np.tile(base, (reps, 1))[:n] + rng.normal(0, 0.05, (n, base.shape[1])).astype(np.float32)
    return x.astype(np.float32), queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--kind", default="hnswlib")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    n = args.n
    x, queries = tiled(n)
    queries = queries[: args.queries]
    items = payloads(n, seed=1)
    ids = [f"v{i}" for i in range(n)]

    # ---- the index alone: upkeep per item, memory per item ----
    index, labels = PayloadIndex(), np.arange(1, n + 1, dtype=np.int64)
    always_live = lambda found: np.ones(len(found), dtype=bool)  # noqa: E731
    start = time.perf_counter()
    for lo in range(0, n, 1000):
        index.add(index.entries(labels[lo : lo + 1000], items[lo : lo + 1000]))
        index.seal(always_live)
    upkeep = (time.perf_counter() - start) / n
    index.seal(always_live, force=True)
    print(f"payload index, {n} items, {statistics.mean(len(p or {}) for p in items):.1f} fields each:")
    print(f"  upkeep {upkeep * 1e6:.1f} us per upserted item (batches of 1000), "
          f"memory {index.memory_bytes() / n:.0f} bytes per item")

    with tempfile.TemporaryDirectory(prefix="filter-cost-") as tmp:
        settings = Settings(data_dir=Path(tmp), recall_sample_rate=0.0, fresh_limit=10**9)  # one rebuild, ours
        manager = CollectionManager(settings)
        manager.open()
        try:
            for name, with_payloads in (("plain", False), ("payloads", True)):
                c = manager.create(name, x.shape[1], "cosine", args.kind, {})
                t = time.perf_counter()
                for lo in range(0, n, 1000):
                    c.upsert(ids[lo : lo + 1000], x[lo : lo + 1000],
                             items[lo : lo + 1000] if with_payloads else [None] * len(x[lo : lo + 1000]))
                print(f"  upsert of {n} items {'with' if with_payloads else 'without'} payloads: "
                      f"{(time.perf_counter() - t) / n * 1e6:.1f} us per item")
            job = manager.start_rebuild("payloads")
            while job.state in ("queued", "running"):
                time.sleep(0.2)
            assert job.state == "succeeded", job.error
        finally:
            manager.close()
        for name in ("plain", "payloads"):
            t = time.perf_counter()
            manager = CollectionManager(settings)
            manager.open()
            manager.get(name)
            print(f"  start-up (open) of collection {name!r}: {time.perf_counter() - t:.2f} s")
            manager.close()

        manager = CollectionManager(settings)
        manager.open()
        try:
            c = manager.get("payloads")
            shard = c._shards[0]
            seen = [f"v{i}" for i in range(0, n, max(n // 1000, 1))][:1000]
            rows = []
            for label, where in SELECTIVITIES:
                if where == "nin":
                    where = {"id": {"$nin": seen}}
                node = parse_filter(where) if where is not None else None
                share, evaluate_ms = 1.0, 0.0
                if node is not None:
                    id_labels = shard._id_labels(node)
                    times = []
                    for _ in range(20):
                        t = time.perf_counter()
                        found = admitted(node, ShardLookup(shard.payloads.view(), shard.labels.view(), id_labels))
                        times.append(time.perf_counter() - t)
                    evaluate_ms, share = statistics.median(times) * 1e3, len(found) / n
                keep = [i for i in range(n) if matches(node, items[i], ids[i])]
                truth, _ = brute_force_knn(x[keep], queries, K, "cosine")
                want = [{ids[keep[r]] for r in row if r >= 0} for row in truth]
                lat, got = [], []
                for q in queries:
                    t = time.perf_counter()
                    hits = c.search(q[None, :], K, filter=where)[0]
                    lat.append(time.perf_counter() - t)
                    got.append({h[0] for h in hits})
                recall = sum(len(g & w) for g, w in zip(got, want)) / max(sum(len(w) for w in want), 1)
                rows.append((label, share, evaluate_ms, statistics.median(lat) * 1e3, recall))
        finally:
            manager.close()
    print(f"\nfiltered search, {args.kind} (defaults), {n} items, one query at a time, {len(queries)} queries")
    print("| filter | admitted | evaluate filter ms | search p50 ms | recall@10 |")
    print("|---|---|---|---|---|")
    for label, share, evaluate_ms, p50, recall in rows:
        print(f"| {label} | {share:.2%} | {evaluate_ms:.2f} | {p50:.2f} | {recall:.3f} |")


if __name__ == "__main__":
    main()

"""Routing by cluster on paper: what a query loses when it asks only the shards nearest to it.

Hash routing (what the router does) spreads every neighbourhood over every shard, so a search
must ask all of them: asking p of n shards finds p/n of the true neighbours on average. Routing
by cluster (the seed's option B) trains coarse centroids, puts each item on the shard of its
nearest centroid, and asks only the `route_probes` shards whose centroids are nearest the query.

This measures that trade-off with exact search inside the probed shards, so that only the
routing loses anything: recall@10 against the exact top 10 over all the data, per number of
shards probed, for 4 and 8 shards, with FAISS k-means (spherical for cosine) on the committed
test subsets. It also reports how unevenly k-means fills the shards (largest / mean), the price
of routing by cluster that hash routing does not pay.

    python -m annserve.cluster.routing_study [--data-dir tests/data]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import faiss
import numpy as np

from ..indexes import brute_force_knn
from .ownership import shard_of

K = 10
SHARD_COUNTS = (4, 8)
SEED = 1234


def load(data_dir: Path) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """(name, metric, base, queries) of the committed subsets (tests/data/README.md)."""
    sets = []
    with np.load(data_dir / "glove50_10k.npz") as f:
        sets.append(("GloVe 50d 10K", "cosine", f["base"], f["queries"]))
    with np.load(data_dir / "fashion784_6k.npz") as f:
        sets.append(("Fashion-MNIST 784d 6K", "l2", f["base"] / np.float32(255), f["queries"] / np.float32(255)))
    with np.load(data_dir / "minilm384_3k.npz") as f:
        sets.append(("MiniLM 384d 3K", "cosine", f["base"], f["queries"]))
    return [(n, m, np.ascontiguousarray(b, dtype=np.float32), np.ascontiguousarray(q, dtype=np.float32))
            for n, m, b, q in sets]  # fmt: skip


def cluster_routing(base: np.ndarray, queries: np.ndarray, metric: str, n_shards: int) -> tuple[list[float], float]:
    """Recall@K for 1..n_shards probed shards, and the largest shard's size over the mean."""
    if metric == "cosine":
        base = base / np.linalg.norm(base, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    truth, _ = brute_force_knn(base, queries, K, metric)
    kmeans = faiss.Kmeans(base.shape[1], n_shards, niter=25, seed=SEED, spherical=metric == "cosine")
    kmeans.train(base)
    # cosine: the nearest centroid by inner product (spherical k-means); l2: by distance.
    index = faiss.IndexFlatIP(base.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(base.shape[1])
    index.add(kmeans.centroids)
    _, owner = index.search(base, 1)
    owner = owner[:, 0]
    _, nearest_shards = index.search(queries, n_shards)  # shards in the order a query would ask them
    sizes = np.bincount(owner, minlength=n_shards)
    recalls = []
    for probes in range(1, n_shards + 1):
        found = 0
        for q in range(len(queries)):
            members = np.flatnonzero(np.isin(owner, nearest_shards[q, :probes]))
            ids, _ = brute_force_knn(base[members], queries[q : q + 1], min(K, len(members)), metric)
            found += len(set(members[ids[0][ids[0] >= 0]]) & set(truth[q]))
        recalls.append(found / (len(queries) * K))
    return recalls, float(sizes.max() / sizes.mean())


def hash_routing(n_items: int, queries: np.ndarray, truth: np.ndarray, n_shards: int) -> tuple[list[float], float]:
    """Recall@K when p of n hash shards (the router's own hash of ids "0", "1", ...) are asked, a
    random p of them (hash routing has no nearest shard); and the largest shard over the mean."""
    rng = np.random.default_rng(SEED)
    owner = np.array([shard_of(str(i), n_shards) for i in range(n_items)])
    sizes = np.bincount(owner, minlength=n_shards)
    recalls = []
    for probes in range(1, n_shards + 1):
        asked = np.stack([rng.permutation(n_shards)[:probes] for _ in range(len(queries))])
        hit = (owner[truth][:, :, None] == asked[:, None, :]).any(axis=2)
        recalls.append(float(hit.mean()))
    return recalls, float(sizes.max() / sizes.mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).parents[2] / "tests" / "data")
    args = parser.parse_args(argv)
    print("| data | shards | routing | " + " | ".join(f"{p} probed" for p in range(1, 9)) + " | largest / mean shard |")
    print("|---|---:|---|" + "---:|" * 9)
    for name, metric, base, queries in load(args.data_dir):
        truth, _ = brute_force_knn(base, queries, K, metric)
        for n_shards in SHARD_COUNTS:
            by_cluster, skew = cluster_routing(base, queries, metric, n_shards)
            by_hash, hash_skew = hash_routing(len(base), queries, truth, n_shards)
            for label, values, size in (("cluster", by_cluster, skew), ("hash", by_hash, hash_skew)):
                cells = [f"{v:.3f}" for v in values] + [""] * (8 - n_shards)
                print(f"| {name} | {n_shards} | {label} | " + " | ".join(cells) + f" | {size:.2f} |")


if __name__ == "__main__":
    main()

"""`annserve bench filtered`: recall and latency of filtered search against exact filtered search.

Real embeddings (GloVe 6B 50d or Fashion-MNIST, as `annserve bench`) with synthetic payloads of
the shape real catalogues have: a `category` drawn from a Zipf law over 1,000 values (a few huge
categories, a long tail), a uniform numeric `price` in [0, 1000), and 0-4 `tags` from 200 with a
Zipf law too. Filters are built from those fields (an equality, a range, a tag, a conjunction)
and, for each target selectivity, the candidate filter closest to it is taken; the selectivity
reported is the one it has. Each kind is built once at its defaults and searched one query per
call on one thread with `allowed=` (the filter's admitted ids), then without a filter for
comparison. Recall@k is against the exact top-k among the admitted rows.

Writes `filtered.csv` and `filtered.png` (recall and p50 against selectivity per kind) to `--out`.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..indexes import brute_force_knn, create_index, recall_at_k
from .datasets import Dataset
from .report import console

TARGETS = (0.5, 0.1, 0.01, 0.001)
DEFAULT_KINDS = ("hnsw", "hnswlib", "ivf_flat", "forest")
N_CATEGORIES, N_TAGS, ZIPF = 1000, 200, 1.1


@dataclass(frozen=True)
class Payloads:
    category: np.ndarray  # (n,) int32, Zipf over N_CATEGORIES
    price: np.ndarray  # (n,) float32 in [0, 1000)
    tags: np.ndarray  # (n, N_TAGS) bool: item has tag t


def make_payloads(n: int, seed: int = 0) -> Payloads:
    rng = np.random.default_rng(seed)
    rank_p = 1.0 / np.arange(1, N_CATEGORIES + 1) ** ZIPF
    category = rng.choice(N_CATEGORIES, n, p=rank_p / rank_p.sum()).astype(np.int32)
    price = rng.uniform(0, 1000, n).astype(np.float32)
    tag_p = 1.0 / np.arange(1, N_TAGS + 1) ** ZIPF
    tags = np.zeros((n, N_TAGS), dtype=bool)
    counts = rng.integers(0, 5, n)
    for row in np.flatnonzero(counts):
        tags[row, rng.choice(N_TAGS, counts[row], replace=False, p=tag_p / tag_p.sum())] = True
    return Payloads(category, price, tags)


def candidate_filters(p: Payloads) -> list[tuple[str, np.ndarray]]:
    """(description, admitted mask (n,) bool) for filters of every shape over the payloads."""
    out = []
    for q in (0.5, 0.1, 0.01, 0.001):
        out.append((f"price < {1000 * q:g}", p.price < 1000 * q))
    for c in range(0, N_CATEGORIES, 7):
        out.append((f"category == {c}", p.category == c))
        out.append((f"category == {c} and price < 100", (p.category == c) & (p.price < 100)))
    for t in range(0, N_TAGS, 3):
        out.append((f"'{t}' in tags", p.tags[:, t]))
    out.append(("category in [0, 1, 2]", np.isin(p.category, [0, 1, 2])))
    out.append(("category != 0 and price >= 200", (p.category != 0) & (p.price >= 200)))
    return out


def pick_filter(candidates: list[tuple[str, np.ndarray]], target: float) -> tuple[str, np.ndarray]:
    """The candidate whose selectivity is closest to `target` (on a log scale)."""
    def distance(item: tuple[str, np.ndarray]) -> float:
        share = item[1].mean()
        return abs(np.log(max(share, 1e-9) / target))
    return min(candidates, key=distance)


def _timed_search(index, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """ids (nq, k) and per-query latencies (nq,) in seconds, one query per call."""
    ids = np.empty((queries.shape[0], k), dtype=np.int64)
    took = np.empty(queries.shape[0])
    for i in range(queries.shape[0]):
        start = time.perf_counter()
        found, _ = index.search(queries[i : i + 1], k, allowed=allowed)
        took[i] = time.perf_counter() - start
        ids[i] = found[0]
    return ids, took


def run_filtered(data: Dataset, kinds: list[str], k: int, out: Path, seed: int = 0) -> list[dict]:
    n = data.base.shape[0]
    payloads = make_payloads(n, seed)
    candidates = candidate_filters(payloads)
    levels = [("unfiltered", None, 1.0)]
    for target in TARGETS:
        name, mask = pick_filter(candidates, target)
        levels.append((name, np.flatnonzero(mask).astype(np.int64), float(mask.mean())))
    truths = {}
    with console.status("exact filtered ground truth"):
        for name, allowed, _ in levels:
            rows = np.arange(n) if allowed is None else allowed
            found, _ = brute_force_knn(data.base[rows], data.queries, k, data.metric)
            truths[name] = rows[found]
    results = []
    for kind in kinds:
        with console.status(f"building {kind} over {n} rows"):
            start = time.perf_counter()
            index = create_index(kind, data.dim, data.metric)
            index.train(data.base)
            index.add(data.base, np.arange(n, dtype=np.int64))
            index.search(data.queries[:1], k)  # lazy builds (forest) happen before timing
            built = time.perf_counter() - start
        console.print(f"{kind}: built in {built:.1f} s", highlight=False)
        for name, allowed, share in levels:
            _timed_search(index, data.queries[:20], k, allowed)  # warm caches and lookups
            ids, took = _timed_search(index, data.queries, k, allowed)
            admitted_ok = allowed is None or bool(np.isin(ids[ids >= 0], allowed).all())
            strategy = "ann" if allowed is None or not index.exact_filter_cheap(allowed.size) else "exact scan"
            results.append({
                "kind": kind, "filter": name, "selectivity": share, "admitted": n if allowed is None else allowed.size,
                "strategy": strategy, "recall": recall_at_k(ids, truths[name]),
                "p50_ms": float(np.median(took) * 1e3), "p99_ms": float(np.quantile(took, 0.99) * 1e3),
                "qps": float(1.0 / took.mean()), "only_admitted": admitted_ok,
            })
    _report(results, data, k, out)
    return results


def _report(results: list[dict], data: Dataset, k: int, out: Path) -> None:
    from rich.table import Table

    out.mkdir(parents=True, exist_ok=True)
    table = Table(title=f"filtered search, {data.name} {data.base.shape[0]} x {data.dim} {data.metric}, "
                        f"{data.queries.shape[0]} queries one per call, recall@{k} vs exact filtered")
    for column in ("kind", "filter", "selectivity", "strategy", f"recall@{k}", "p50 ms", "p99 ms", "QPS", "p50 / unfiltered"):
        table.add_column(column)
    base_p50 = {r["kind"]: r["p50_ms"] for r in results if r["filter"] == "unfiltered"}
    for r in results:
        table.add_row(
            r["kind"], r["filter"], f"{r['selectivity']:.4f}", r["strategy"], f"{r['recall']:.3f}",
            f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}", f"{r['qps']:.0f}", f"{r['p50_ms'] / base_p50[r['kind']]:.2f}x",
        )
    console.print(table)
    with open(out / "filtered.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(results[0]))
        writer.writeheader()
        writer.writerows(results)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind in dict.fromkeys(r["kind"] for r in results):
        rows = sorted((r for r in results if r["kind"] == kind), key=lambda r: r["selectivity"])
        shares = [r["selectivity"] for r in rows]
        left.plot(shares, [r["recall"] for r in rows], marker="o", label=kind)
        right.plot(shares, [r["p50_ms"] for r in rows], marker="o", label=kind)
    left.axhline(0.95, color="grey", linestyle=":", linewidth=1)
    for axis, label in ((left, f"recall@{k} vs exact filtered"), (right, "p50 latency, ms (one query per call)")):
        axis.set_xscale("log")
        axis.set_xlabel("filter selectivity (share admitted; 1 = unfiltered)")
        axis.set_ylabel(label)
        axis.grid(True, alpha=0.3)
    right.set_yscale("log")
    left.legend()
    fig.suptitle(f"filtered search: {data.name} {data.base.shape[0]} x {data.dim}")
    fig.tight_layout()
    fig.savefig(out / "filtered.png", dpi=110)
    console.print(f"wrote {out / 'filtered.csv'} and {out / 'filtered.png'}", highlight=False)

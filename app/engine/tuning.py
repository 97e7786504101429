"""Tuning: the smallest value of a kind's search knob that meets a recall target.

Measured on sampled queries - the collection's recent real queries (recall.py's reservoir),
else up to `TUNE_QUERIES` stored items, each left out of its own answer - as the callers see
it: `collection.search` over main and fresh, against `collection.search(..., exact=True)`,
with recall counted as online recall counts it (ties with the k-th exact score are hits).

The search assumes recall grows with the knob (it does, up to noise, for every kind here):
double from the smallest sensible value until the target is met, then bisect between the last
value that missed and the first that met it. The chosen value becomes the collection's search
default (persisted in collection.json); a request's own `params` still override it.
For ivf_pq the knobs are tried in order: nprobe at the current rerank, then, if even every cell
(nprobe = nlist) misses the target, rerank at that nprobe.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..indexes.base import MAX_INT_PARAM
from .errors import Conflict
from .recall import query_recall

if TYPE_CHECKING:
    from .collection import Collection

# The knobs of each kind, in the order they are tuned.
KNOBS: dict[str, tuple[str, ...]] = {
    "ivf_flat": ("nprobe",),
    "ivf_pq": ("nprobe", "rerank"),
    "pq": ("rerank",),
    "hnsw": ("ef",),
    "hnswlib": ("ef",),
    "lsh": ("probes",),
    "forest": ("search_k",),
}
TUNE_QUERIES = 200  # stored items used as queries when too few recent ones were sampled
MAX_EF = 16_384  # a beam wider than this costs more than exact search on any collection served
SEED = 0


class Unreachable(ValueError):
    """The kind cannot reach the target on these queries at any knob value (a 422)."""


def knob_range(knob: str, index: Any, live: int, k: int) -> tuple[int, int]:
    """(smallest, largest) value worth trying of `knob` for `index` (a main index) over `live`
    items at `k` results."""
    _, bound = index.param_bounds.get(knob, (1, MAX_INT_PARAM))
    bound = MAX_INT_PARAM if bound is None else bound
    if knob == "nprobe":
        return 1, max(1, int(index.build_params["nlist"]))
    if knob == "ef":  # a beam below k is raised to k by both HNSW kinds
        return k, max(k, min(live, MAX_EF))
    if knob == "search_k":  # inspecting every leaf of every tree is exact search
        return k, max(k, int(index.build_params["n_trees"]) * live)
    if knob == "rerank":  # k x rerank candidates; more than the collection holds is useless
        return 1, max(1, min(bound, -(-live // k)))
    return 1, bound  # probes


def smallest_meeting(
    evaluate: Callable[[int], float], lo: int, hi: int, target: float
) -> tuple[int | None, dict[int, float]]:
    """The smallest v in [lo, hi] with evaluate(v) >= target (None if hi misses it), and every
    value evaluated with its recall."""
    seen: dict[int, float] = {}

    def at(v: int) -> float:
        if v not in seen:
            seen[v] = evaluate(v)
        return seen[v]

    v, missed = lo, None
    while at(v) < target:
        if v >= hi:
            return None, seen
        missed, v = v, min(hi, v * 2)
    if missed is not None:
        while v - missed > 1:
            mid = (missed + v) // 2
            if at(mid) >= target:
                v = mid
            else:
                missed = mid
    return v, seen


def tuning_queries(collection: Collection) -> tuple[np.ndarray, list[str | None] | None, str]:
    """(queries (m, dim) float32, exclusions, where they came from): the recent real queries,
    else up to TUNE_QUERIES stored items picked at random, each excluded from its own answer."""
    recent = collection.recall.recent_queries()
    if recent is not None:
        return recent, None, "recent queries"
    ids: list[str] = []
    for shard in collection._shards:
        with shard.store.snapshot() as snap:
            for _, chunk_ids, _ in snap.chunks(vectors=False):
                ids += chunk_ids
    if not ids:
        raise Conflict(f"collection {collection.name!r} is empty: there is nothing to tune on")
    rng = np.random.default_rng(SEED)
    picked = [ids[i] for i in rng.choice(len(ids), min(TUNE_QUERIES, len(ids)), replace=False)]
    vectors = np.stack([collection.get(item_id)[0] for item_id in picked])
    return vectors, picked, "stored items"


def _p50_ms(collection: Collection, queries: np.ndarray, k: int, params: dict, exclude: list | None) -> float:
    """Median time of one-query searches (the engine's, no HTTP), in milliseconds."""
    times = []
    for row in range(len(queries)):
        start = time.perf_counter()
        collection.search(queries[row : row + 1], k, params, exclude=None if exclude is None else [exclude[row]])
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 4)


def tune(collection: Collection, target: float, k: int) -> dict[str, Any]:
    """Find and set the smallest knob value meeting recall@k >= `target`; returns what was
    chosen and measured. Unreachable (422) when no value does, Conflict (409) with no main
    index to tune or while another tuning of the collection runs."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0.0 < target <= 1.0:
        raise ValueError(f"target_recall: expected a number in (0, 1], got {target!r}")
    if not collection.recall.tune_lock.acquire(blocking=False):
        raise Conflict(f"collection {collection.name!r} is being tuned already")
    try:
        return _tune(collection, float(target), int(k))
    finally:
        collection.recall.tune_lock.release()


def _tune(collection: Collection, target: float, k: int) -> dict[str, Any]:
    main = collection._current_main()
    if main is None:
        raise Conflict(
            f"collection {collection.name!r} has no main index yet (everything is in the exact "
            "fresh index): rebuild it, then tune"
        )
    knobs = KNOBS.get(main.kind, ())
    queries, exclude, source = tuning_queries(collection)
    answer: dict[str, Any] = {
        "collection": collection.name, "kind": main.kind, "k": k, "target_recall": target,
        "queries": len(queries), "query_source": source,
    }
    truth = collection.search(queries, k, exact=True, exclude=exclude)
    if not knobs:  # an exact kind: nothing to trade
        return {**answer, "knob": None, "chosen": {}, "recall": 1.0, "below": None}
    live = collection.info()["count"]
    fixed: dict[str, Any] = {}
    evaluations = 0

    def recall_at(params: dict[str, Any]) -> float:
        nonlocal evaluations
        evaluations += 1
        found = collection.search(queries, k, params, exclude=exclude)
        values = [query_recall(got, want) for got, want in zip(found, truth)]
        measured = [v for v in values if v is not None]
        return float(np.mean(measured)) if measured else 1.0

    for position, knob in enumerate(knobs):
        lo, hi = knob_range(knob, main, live, k)
        chosen, seen = smallest_meeting(lambda v: recall_at({**fixed, knob: v}), lo, hi, target)
        if chosen is not None:
            break
        best = max(seen, key=lambda v: (seen[v], -v))
        if position + 1 < len(knobs):  # hold this knob at its best, try the next one
            fixed[knob] = best
            continue
        tried = ", ".join(f"{name}={value}" for name, value in {**fixed, knob: best}.items())
        raise Unreachable(
            f"index kind {main.kind!r} reaches recall@{k} {seen[best]:.4f} at best ({tried}, "
            f"{len(queries)} {source}), under the target {target}: rebuild with larger build "
            f"parameters (now {main.build_params}) or lower the target"
        )
    params = {**fixed, knob: chosen}
    below = None
    if chosen > lo:
        below_params = {**fixed, knob: chosen - 1}
        below_recall = seen[chosen - 1] if chosen - 1 in seen else recall_at(below_params)
        below = {
            **below_params,
            "recall": round(below_recall, 4),
            "latency_p50_ms": _p50_ms(collection, queries, k, below_params, exclude),
        }
    collection.configure(search_params={**collection.spec.search_params, **params})
    return {
        **answer,
        "knob": knob,
        "chosen": params,
        "recall": round(seen[chosen], 4),
        "latency_p50_ms": _p50_ms(collection, queries, k, params, exclude),
        "below": below,
        "evaluations": evaluations,
    }

"""Exact reference search and recall: the yardstick for tests, benchmarks and online recall."""

from __future__ import annotations

import numpy as np

from .base import METRICS, as_vectors, check_positive_int, higher_is_better, normalize_rows


def brute_force_knn(
    base: np.ndarray, queries: np.ndarray, k: int, metric: str, batch: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of `base` (n, dim) for `queries` (nq, dim), in plain numpy.

    Returns row positions (nq, k) int64 and scores (nq, k) float32, best first, in the
    contract's convention (cosine similarity, inner product, or squared L2 distance).
    Independent of FAISS on purpose, so that tests do not grade FAISS with FAISS.
    """
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    dim = np.asarray(base).shape[-1]
    base = as_vectors(base, dim, "base")
    queries = as_vectors(queries, dim, "queries")
    k = min(check_positive_int("k", k), base.shape[0])
    if metric == "cosine":
        base, queries = normalize_rows(base), normalize_rows(queries)
    base_sq = (base.astype(np.float64) ** 2).sum(axis=1)
    out_ids = np.empty((queries.shape[0], k), dtype=np.int64)
    out_scores = np.empty((queries.shape[0], k), dtype=np.float32)
    for start in range(0, queries.shape[0], batch):
        q = queries[start : start + batch].astype(np.float64)
        dots = q @ base.T.astype(np.float64)
        if metric == "l2":
            scores = (q**2).sum(axis=1, keepdims=True) - 2 * dots + base_sq
            order_key = scores
        else:
            scores = dots
            order_key = -scores
        top = np.argpartition(order_key, k - 1, axis=1)[:, :k]
        top_keys = np.take_along_axis(order_key, top, axis=1)
        top = np.take_along_axis(top, np.argsort(top_keys, axis=1, kind="stable"), axis=1)
        out_ids[start : start + batch] = top
        out_scores[start : start + batch] = np.take_along_axis(scores, top, axis=1)
    return out_ids, out_scores


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true k neighbours (nq, k) that appear in `found` (nq, >=k)."""
    found, truth = np.asarray(found), np.asarray(truth)
    if found.shape[0] != truth.shape[0]:
        raise ValueError(f"recall: expected {truth.shape[0]} result rows, got {found.shape[0]}")
    hits = sum(np.intersect1d(f, t).size for f, t in zip(found, truth))
    return hits / truth.size


def sorted_best_first(scores: np.ndarray, metric: str) -> bool:
    """Whether every row of `scores` is ordered best first under `metric`."""
    diffs = np.diff(scores, axis=1)
    return bool(np.all(diffs <= 1e-5) if higher_is_better(metric) else np.all(diffs >= -1e-5))

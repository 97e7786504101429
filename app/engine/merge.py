"""Merging answers as arrays: the top k of several (labels, scores) sources per query, and exact
brute force over chunks of vectors merged the same way.

A search gathers candidates from main and fresh of every shard; they are merged once, as numpy
arrays (FAISS merges shards with one `ResultHeap` over (distance, label) arrays in the same
spirit), and only the final k labels of each query become string ids, through the source's own
label -> id map. Ties on score are broken by id so that the answer does not depend on how items
fall into shards, indexes or chunks: the candidates tied with the k-th score are all mapped and
sorted by (score, id).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..indexes import create_index
from ..indexes.base import higher_is_better, worst_score

# One query's answer as the engine gives it out: (id, score) best first. Defined here, where
# answers are made; `collection` re-exports it for its callers (the HTTP batcher).
Hits = list[tuple[str, float]]


@dataclass(frozen=True)
class Candidates:
    """One source's answers to nq queries: labels (nq, m) int64 (-1 where there is none) and
    scores (nq, m) float32 (the metric's worst score where the label is -1); `ids` maps (r,)
    labels of this source to their string ids."""

    labels: np.ndarray
    scores: np.ndarray
    ids: Callable[[np.ndarray], list[str]]


def sort_keys(scores: np.ndarray, metric: str) -> np.ndarray:
    """Scores as ascending sort keys (best first); worst scores become +inf."""
    return -scores if higher_is_better(metric) else scores


def top_k(
    labels: Sequence[np.ndarray], scores: Sequence[np.ndarray], k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """The k best (labels, scores) per row over sources of (nq, m_i) labels and scores, best
    first, padded with -1 and the worst score; ties keep the order of the sources."""
    all_labels = labels[0] if len(labels) == 1 else np.concatenate(labels, axis=1)
    all_scores = scores[0] if len(scores) == 1 else np.concatenate(scores, axis=1)
    nq, m = all_labels.shape
    if m < k:
        pad = k - m
        all_labels = np.hstack([all_labels, np.full((nq, pad), -1, dtype=np.int64)])
        all_scores = np.hstack([all_scores, np.full((nq, pad), worst_score(metric), dtype=np.float32)])
    order = np.argsort(sort_keys(all_scores, metric), axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_labels, order, 1), np.take_along_axis(all_scores, order, 1)


def merge_hits(
    parts: Sequence[Candidates], k: int, metric: str, exclude: Sequence[str | None] | None = None
) -> list[Hits]:
    """The k best (id, score) per query over every source, best first, ties by id;
    `exclude[i]` (an id) is left out of query i's answer (sources then carry k + 1 per row)."""
    nq = parts[0].labels.shape[0]
    want = k + 1 if exclude is not None else k
    labels = np.concatenate([p.labels for p in parts], axis=1) if len(parts) > 1 else parts[0].labels
    scores = np.concatenate([p.scores for p in parts], axis=1) if len(parts) > 1 else parts[0].scores
    keys = sort_keys(scores, metric)
    order = np.argsort(keys, axis=1, kind="stable")
    sorted_keys = np.take_along_axis(keys, order, 1)
    # How many to map per row: the first `want` real candidates and every one tied with the
    # last of them, so that the id decides among equals.
    last = sorted_keys[:, min(want, sorted_keys.shape[1]) - 1 : min(want, sorted_keys.shape[1])]
    take = np.count_nonzero((sorted_keys <= last) & np.isfinite(sorted_keys), axis=1)
    width = int(take.max()) if nq else 0
    if width == 0:
        return [[] for _ in range(nq)]
    chosen = order[:, :width]
    chosen_labels = np.take_along_axis(labels, chosen, 1)
    chosen_scores = np.take_along_axis(scores, chosen, 1).tolist()
    mapped = np.arange(width) < take[:, None]
    names = np.empty((nq, width), dtype=object)
    if len(parts) == 1:
        names[mapped] = parts[0].ids(chosen_labels[mapped])
    else:
        bounds = np.cumsum([p.labels.shape[1] for p in parts])
        source = np.searchsorted(bounds, chosen, side="right")
        for s, part in enumerate(parts):
            mine = mapped & (source == s)
            if mine.any():
                names[mine] = part.ids(chosen_labels[mine])
    ties = width > 1 and bool((sorted_keys[:, 1:width] == sorted_keys[:, : width - 1]).any())
    higher = higher_is_better(metric)
    out: list[Hits] = []
    for qi in range(nq):
        row_names, row_scores, n = names[qi], chosen_scores[qi], int(take[qi])
        hits = [(row_names[j], row_scores[j]) for j in range(n)]
        if ties:
            hits.sort(key=(lambda h: (-h[1], h[0])) if higher else (lambda h: (h[1], h[0])))
        if exclude is not None and exclude[qi] is not None:
            hits = [h for h in hits if h[0] != exclude[qi]]
        out.append(hits[:k])
    return out


def brute_force(
    queries: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], k: int, dim: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k best (labels (nq, k) int64, scores (nq, k) float32) of prepared (nq, dim)
    `queries` over `chunks` of (labels (m,) int64, vectors (m, dim) float32 as stored), best
    first, padded with -1: one FAISS flat per chunk, so memory stays bounded."""
    nq = queries.shape[0]
    best_labels = np.full((nq, k), -1, dtype=np.int64)
    best_scores = np.full((nq, k), worst_score(metric), dtype=np.float32)
    for chunk_labels, vectors in chunks:
        flat = create_index("flat", dim, metric)
        flat.add(vectors, np.arange(len(chunk_labels), dtype=np.int64))
        rows, scores = flat.search_prepared(queries, min(k, len(chunk_labels)), {})
        found = np.where(rows >= 0, chunk_labels[np.maximum(rows, 0)], -1)
        best_labels, best_scores = top_k([best_labels, found], [best_scores, scores], k, metric)
    return best_labels, best_scores

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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..indexes.base import higher_is_better, normalize_rows, worst_score
from ..indexes.faiss_kinds import exact_knn

# One query's answer as the engine gives it out: (id, score) best first. Defined here, where
# answers are made; `collection` re-exports it for its callers (the HTTP batcher).
Hits = list[tuple[str, float]]


class Names(Protocol):
    """Where a source's labels get their string ids (a shard's `LabelView`, a snapshot's map)."""

    def ids(self, labels: np.ndarray) -> list[str]: ...


@dataclass(frozen=True)
class Candidates:
    """One source's answers to nq queries: labels (nq, m) int64 (-1 where there is none) and
    scores (nq, m) float32 (the metric's worst score where the label is -1); `names` maps
    labels of this source to their string ids (sources that share it share labels)."""

    labels: np.ndarray
    scores: np.ndarray
    names: Names


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
    `exclude[i]` (an id) is left out of query i's answer (sources then carry k + 1 per row).

    One pass over all queries at once: concatenate, argsort, gather the first k + 1 columns;
    ids are decoded for the final k only, one call per source. Rows tied on score at the
    k-th place (rare) are merged again one by one, with every tied candidate mapped."""
    want = k + 1 if exclude is not None else k
    labels = np.concatenate([p.labels for p in parts], axis=1) if len(parts) > 1 else parts[0].labels
    scores = np.concatenate([p.scores for p in parts], axis=1) if len(parts) > 1 else parts[0].scores
    nq = labels.shape[0]
    higher = higher_is_better(metric)
    keys = -scores if higher else scores
    order = keys.argsort(axis=1, kind="stable")[:, : want + 1]  # one more: a tie at the cut shows
    rows = np.arange(nq)[:, None]
    top_keys = keys[rows, order]
    boundary_tie = inner_tie = None
    equal = top_keys[:, 1:] == top_keys[:, :-1]
    if equal.any():  # rare: equal scores (or padding, whose keys are all +inf)
        finite = top_keys[:, 1:] != np.inf
        tied = equal & finite
        boundary_tie = tied[:, want - 1] if tied.shape[1] >= want else None
        inner_tie = tied[:, : want - 1].any(axis=1)
    order = order[:, :want]
    top_labels = labels[rows, order]
    live = top_labels >= 0  # a prefix of each row: padding and masked entries sort last
    counts = live.sum(axis=1).tolist()
    top_scores = scores[rows, order].tolist()
    if len(parts) == 1:
        names = parts[0].names.ids(top_labels[live])  # row-major: each row's prefix in turn
    else:
        source = np.searchsorted(np.cumsum([p.labels.shape[1] for p in parts]), order[live], side="right")
        found, names = top_labels[live], [""] * len(source)
        for s in np.flatnonzero(np.bincount(source, minlength=len(parts))).tolist():
            mine = np.flatnonzero(source == s)
            for j, name in zip(mine.tolist(), parts[s].names.ids(found[mine])):
                names[j] = name
    out: list[Hits] = []
    start = 0
    for qi, count in enumerate(counts):
        if boundary_tie is not None and boundary_tie[qi]:
            hits = _merge_tied_row(parts, labels[qi], keys[qi], scores[qi], want, higher)
        else:
            hits = list(zip(names[start : start + count], top_scores[qi][:count]))
            if inner_tie is not None and inner_tie[qi]:
                hits.sort(key=(lambda h: (-h[1], h[0])) if higher else (lambda h: (h[1], h[0])))
        start += count
        if exclude is not None and exclude[qi] is not None:
            hits = [h for h in hits if h[0] != exclude[qi]]
        out.append(hits[:k])
    return out


def over_threshold(rows: list[Hits], threshold: float, metric: str) -> list[Hits]:
    """Each row without the hits scored worse than `threshold`: below it where higher is
    better, above it for l2 (a distance). Rows are best first, so each keeps a prefix."""
    if higher_is_better(metric):
        return [[h for h in row if h[1] >= threshold] for row in rows]
    return [[h for h in row if h[1] <= threshold] for row in rows]


def _merge_tied_row(
    parts: Sequence[Candidates], labels: np.ndarray, keys: np.ndarray, scores: np.ndarray, want: int,
    higher: bool,
) -> Hits:
    """One row whose `want`-th score is tied: every candidate tied with it is mapped, and the
    id decides among them."""
    order = keys.argsort(kind="stable")
    last = keys[order[want - 1]]
    chosen = order[: int(np.count_nonzero(keys <= last))]
    bounds = np.cumsum([p.labels.shape[1] for p in parts])
    source = np.searchsorted(bounds, chosen, side="right").tolist()
    hits = [
        (parts[s].names.ids(labels[c : c + 1])[0], float(scores[c])) for s, c in zip(source, chosen.tolist())
    ]
    hits.sort(key=(lambda h: (-h[1], h[0])) if higher else (lambda h: (h[1], h[0])))
    return hits


def brute_force(
    queries: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], k: int, dim: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k best (labels (nq, k) int64, scores (nq, k) float32) of prepared (nq, dim)
    `queries` over `chunks` of (labels (m,) int64, vectors (m, dim) float32 as stored), best
    first, padded with -1: one matrix product per chunk, so memory stays bounded.

    FAISS's scan over the chunk as it is (`exact_knn`) rather than a flat index per chunk:
    building the index copied the chunk in, which made one pass over 50K x 384 with 15 queries
    cost 240-450 ms of CPU (the online recall sampler and `exact: true` both run it)."""
    nq = queries.shape[0]
    if dim != queries.shape[1]:
        raise ValueError(f"brute force: expected queries of dimension {dim}, got {queries.shape[1]}")
    space = "l2" if metric == "l2" else "ip"
    best_labels = np.full((nq, k), -1, dtype=np.int64)
    best_scores = np.full((nq, k), worst_score(metric), dtype=np.float32)
    for chunk_labels, vectors in chunks:
        if metric == "cosine":
            vectors = normalize_rows(vectors)  # as any index would hold them (indexes/base.py)
        rows, scores = exact_knn(queries, vectors, k, space)
        found = np.where(rows >= 0, chunk_labels[np.maximum(rows, 0)], -1)
        best_labels, best_scores = top_k([best_labels, found], [best_scores, scores], k, metric)
    return best_labels, best_scores

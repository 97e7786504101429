"""The global top-k of the shards' answers, in the engine's order (best score first, ties broken
by id), so a router orders results exactly as one node holding all the data would.

Each shard's list is already its best k; the router only picks the k best of n_shards * k hits
(FAISS's `ResultHeap` merges shards the same way).
"""

from __future__ import annotations

import heapq
from typing import Any

from ..indexes.base import higher_is_better

Hit = dict[str, Any]  # {"id", "score", and whatever else the node put in: payload, vector}


def merge_hits(per_shard: list[list[Hit]], k: int, metric: str) -> list[Hit]:
    """The k best hits of the shards' best-first lists (each id is owned by one shard)."""
    hits = [hit for shard_hits in per_shard for hit in shard_hits]
    if higher_is_better(metric):
        return heapq.nsmallest(k, hits, key=lambda h: (-h["score"], h["id"]))
    return heapq.nsmallest(k, hits, key=lambda h: (h["score"], h["id"]))

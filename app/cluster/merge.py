"""The global top-k of the shards' answers: the engine's own ordering rule (`best_k`: best score
first, ties broken by id), so a router orders results exactly as one node holding all the data.
"""

from __future__ import annotations

from typing import Any

try:  # the engine's merge rule may move out of shard.py when it is split
    from ..engine.routing import best_k
except ImportError:  # pragma: no cover
    from ..engine.shard import best_k

Hit = dict[str, Any]  # {"id", "score", and whatever else the node put in: payload, vector}


def merge_hits(per_shard: list[list[Hit]], k: int, metric: str) -> list[Hit]:
    """The k best hits of the shards' best-first lists (each id is owned by one shard)."""
    by_id: dict[str, Hit] = {}
    for hits in per_shard:
        for hit in hits:
            by_id[hit["id"]] = hit
    best = best_k([(hit["score"], item_id) for item_id, hit in by_id.items()], k, metric)
    return [by_id[item_id] for _, item_id in best]

"""Which shard owns an id: a stable hash, the same in every process and on every machine (the
routers of a cluster split writes with it too)."""

from __future__ import annotations

import zlib
from collections.abc import Iterable


def shard_of(item_id: str, shards: int) -> int:
    """The shard that owns `item_id`: crc32 of its UTF-8 bytes modulo `shards` (Python's
    `hash` is salted per process, so it cannot be used)."""
    return zlib.crc32(item_id.encode()) % shards if shards > 1 else 0


def positions_by_shard(ids: Iterable[str], shards: int) -> dict[int, list[int]]:
    """shard -> positions in `ids` of the ids it owns, in their order."""
    groups: dict[int, list[int]] = {}
    for pos, item_id in enumerate(ids):
        groups.setdefault(shard_of(item_id, shards), []).append(pos)
    return groups

"""Which shard owns an id, for routers (where to send it) and shard nodes (what to refuse).

The rule is the engine's own (engine/routing.py: crc32 of the UTF-8 id), imported, never
restated: a router and a node that disagreed on it would lose items.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.exceptions import HTTPException

from ..engine.routing import positions_by_shard, shard_of

# 421 Misdirected Request: the right answer comes from another node, and this one says which.
MISDIRECTED = 421

__all__ = ["MISDIRECTED", "check_owned", "positions_by_shard", "shard_of"]


def check_owned(ids: Sequence[str], shard_index: int | None, shard_count: int | None) -> None:
    """On a shard node (`ANNSERVE_SHARD_INDEX` of `ANNSERVE_SHARD_COUNT`): raise 421 naming the
    owner of the first id this node does not own. A node that does not know its place
    (either setting unset) accepts every id."""
    if shard_index is None or shard_count is None:
        return
    for pos, item_id in enumerate(ids):
        owner = shard_of(item_id, shard_count)
        if owner != shard_index:
            stray = sum(shard_of(i, shard_count) != shard_index for i in ids)
            raise HTTPException(
                MISDIRECTED,
                detail=(
                    f"items[{pos}].id {item_id!r} belongs to shard {owner} of {shard_count}, not to this "
                    f"node (shard {shard_index}); {stray} of {len(ids)} ids in this request are not "
                    f"this node's: send writes through the router (ANNSERVE_SHARD_URLS)"
                ),
            )

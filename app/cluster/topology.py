"""The cluster a router serves, read from `ANNSERVE_SHARD_URLS`.

Shards are separated by `,`, the replicas of one shard by `|`:
`http://a:8000|http://a2:8000,http://b:8000,http://c:8000` is 3 shards, the first with 2
replicas. Shard i owns the ids whose `shard_of(id, n_shards)` is i (ownership.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class ShardNodes:
    """Shard `index` and the base URLs of its replicas (no trailing slash), in the order given."""

    index: int
    replicas: tuple[str, ...]

    def describe(self) -> str:
        """`shard 1 (http://a:8000, http://b:8000)`, for error messages."""
        return f"shard {self.index} ({', '.join(self.replicas)})"


@dataclass(frozen=True)
class Topology:
    shards: tuple[ShardNodes, ...]

    @property
    def n_shards(self) -> int:
        return len(self.shards)

    @property
    def nodes(self) -> list[tuple[int, str]]:
        """Every (shard index, replica URL), shard by shard, replicas in order."""
        return [(shard.index, url) for shard in self.shards for url in shard.replicas]

    @classmethod
    def parse(cls, text: str) -> Topology:
        """`ANNSERVE_SHARD_URLS` -> Topology; ValueError naming the bad entry."""
        entries = [entry.strip() for entry in text.split(",")]
        if not text.strip() or not all(entries):
            raise ValueError(
                f"ANNSERVE_SHARD_URLS: expected shards separated by ',' (replicas of one shard by '|'), "
                f"none empty; got {text!r}"
            )
        shards, seen = [], set()
        for index, entry in enumerate(entries):
            replicas = tuple(_base_url(url.strip(), index) for url in entry.split("|"))
            for url in replicas:
                if url in seen:
                    raise ValueError(f"ANNSERVE_SHARD_URLS: {url} is listed twice; a node holds one shard")
                seen.add(url)
            shards.append(ShardNodes(index, replicas))
        return cls(tuple(shards))


def _base_url(url: str, shard: int) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(
            f"ANNSERVE_SHARD_URLS: shard {shard}: expected a base URL like http://host:8000, got {url!r}"
        )
    return url.rstrip("/")

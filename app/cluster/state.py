"""What a router holds while it runs: the topology, the node client, and a short-lived cache of
each collection's dim and metric (what it needs to convert vectors and merge results).

The router holds no data: the cache is refetched from a node after `SPEC_TTL_SECONDS`, and at
once after a node says the collection is gone, so a collection deleted and re-created through
another router is seen within seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import Request
from starlette.exceptions import HTTPException

from ..api.auth import forward_headers
from ..settings import Settings
from .fanout import NodeAnswer, NodeClient
from .topology import ShardNodes, Topology

SPEC_TTL_SECONDS = 5.0


@dataclass(frozen=True)
class Spec:
    dim: int
    metric: str


class RouterState:
    def __init__(self, settings: Settings, topology: Topology) -> None:
        self.settings, self.topology = settings, topology
        hedge = settings.hedge_after_ms / 1000 if settings.hedge_after_ms > 0 else None
        self.nodes: NodeClient | None = None  # made in the app's lifespan (it needs the event loop)
        # The router checks the client's key itself (api/auth.py) and calls the nodes with its own
        # admin key: a node trusts what its routers checked, and a client's key never travels on.
        headers = {"content-type": "application/json", **forward_headers(settings)}
        self.node_headers = headers
        self._node_args = (settings.shard_timeout_seconds, settings.shard_write_timeout_seconds, hedge, headers)
        self._specs: dict[str, tuple[Spec, float]] = {}

    def open(self, metrics) -> None:
        self.nodes = NodeClient(self.topology, metrics, *self._node_args)

    @property
    def shards(self) -> tuple[ShardNodes, ...]:
        return self.topology.shards

    async def spec(self, name: str) -> Spec:
        """dim and metric of collection `name` (cached); the node's 404 when it does not exist."""
        cached = self._specs.get(name)
        now = time.monotonic()
        if cached is not None and now - cached[1] < SPEC_TTL_SECONDS:
            return cached[0]
        answer = await self.nodes.read(self.shards[0], "GET", f"/collections/{quote(name, safe='')}", operation="info")
        if answer.status != 200:
            self.forget(name)
            raise passed_on(answer)
        info = answer.json()
        spec = Spec(int(info["dim"]), str(info["metric"]))
        self._specs[name] = (spec, now)
        return spec

    def forget(self, name: str) -> None:
        self._specs.pop(name, None)


def passed_on(answer: NodeAnswer) -> HTTPException:
    """A node's 4xx, answered to the client as the node said it."""
    return HTTPException(answer.status, detail=answer.detail)


def state_of(request: Request) -> RouterState:
    return request.app.state.router

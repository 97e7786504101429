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

from ..settings import Settings
from .fanout import NodeAnswer, NodeClient
from .topology import ShardNodes, Topology

SPEC_TTL_SECONDS = 5.0
# Headers passed on to the nodes: the client's key is checked by every node it reaches.
FORWARDED_HEADERS = ("x-api-key", "authorization")
JSON = {"content-type": "application/json"}


@dataclass(frozen=True)
class Spec:
    dim: int
    metric: str


class RouterState:
    def __init__(self, settings: Settings, topology: Topology) -> None:
        self.settings, self.topology = settings, topology
        hedge = settings.hedge_after_ms / 1000 if settings.hedge_after_ms > 0 else None
        self.nodes: NodeClient | None = None  # made in the app's lifespan (it needs the event loop)
        self._node_args = (settings.shard_timeout_seconds, settings.shard_write_timeout_seconds, hedge)
        self._specs: dict[str, tuple[Spec, float]] = {}

    def open(self, metrics) -> None:
        self.nodes = NodeClient(self.topology, metrics, *self._node_args)

    @property
    def shards(self) -> tuple[ShardNodes, ...]:
        return self.topology.shards

    async def spec(self, name: str, headers: dict[str, str]) -> Spec:
        """dim and metric of collection `name` (cached); the node's 404 when it does not exist."""
        cached = self._specs.get(name)
        now = time.monotonic()
        if cached is not None and now - cached[1] < SPEC_TTL_SECONDS:
            return cached[0]
        answer = await self.nodes.read(
            self.shards[0], "GET", f"/collections/{quote(name, safe='')}", headers=headers, operation="info"
        )
        if answer.status != 200:
            self.forget(name)
            raise passed_on(answer)
        info = answer.json()
        spec = Spec(int(info["dim"]), str(info["metric"]))
        self._specs[name] = (spec, now)
        return spec

    def forget(self, name: str) -> None:
        self._specs.pop(name, None)


def forwarded(request: Request, json_body: bool = True) -> dict[str, str]:
    """The headers of the node calls made for `request`."""
    headers = {name: request.headers[name] for name in FORWARDED_HEADERS if name in request.headers}
    if json_body:
        headers.update(JSON)
    return headers


def passed_on(answer: NodeAnswer) -> HTTPException:
    """A node's 4xx, answered to the client as the node said it."""
    return HTTPException(answer.status, detail=answer.detail)


def state_of(request: Request) -> RouterState:
    return request.app.state.router

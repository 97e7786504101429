"""The router's calls to the shard nodes: read-any with deadline, failover and hedging;
write-all; admin calls to every node. One pool of keep-alive connections (transport.py) carries
them all.

Reads (search, get, info). The shard call has one deadline, `ANNSERVE_SHARD_TIMEOUT_SECONDS`,
for all its attempts. The first replica is asked; the next one is asked
- at once when an attempt fails (refused, reset, 5xx: a *failover*),
- after `ANNSERVE_HEDGE_AFTER_MS` without an answer, when hedging is on (a *hedge*),
- after its share of the time left (time left / replicas not yet asked) without an answer,
  when hedging is off, so that a paused replica cannot eat the whole deadline (a failover too).
A slow attempt is not cancelled when the next replica is asked: whichever answers first wins.
At the deadline the shard is unavailable (`ShardUnavailable`, 503 naming it and its replicas).
A 4xx is an answer, not a failure: the client's mistake is the same on every replica.

Replicas that failed or timed out are *suspect* for `SUSPECT_SECONDS`: they are asked last, so
one paused node costs one timeout, not one per request. Healthy replicas take reads in turn.

Writes go to every replica of the shard concurrently and count only when every one of them has
acknowledged (write-all, read-any: see the README's "Scaling out").
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
import orjson
from starlette.exceptions import HTTPException

from .metrics import RouterMetrics
from .topology import ShardNodes, Topology
from .transport import NodePool

SUSPECT_SECONDS = 5.0
URL_CACHE = 4096  # parsed node URLs kept


@dataclass(frozen=True)
class NodeAnswer:
    """What one node answered (any status below 500)."""

    shard: int
    url: str
    status: int
    content: bytes

    def json(self):
        return orjson.loads(self.content)

    @property
    def detail(self) -> str:
        return node_detail(self.content)


class ShardUnavailable(HTTPException):
    """No replica of `shard` answered in time (or every one failed): 503 naming the shard, its
    replicas and what happened at each."""

    def __init__(self, shard: ShardNodes, errors: Mapping[str, str], operation: str) -> None:
        self.shard, self.errors, self.operation = shard, dict(errors), operation
        what = "; ".join(f"{url}: {errors.get(url, 'not asked')}" for url in shard.replicas)
        super().__init__(503, detail=f"{shard.describe()} unavailable for {operation}: {what}")


def node_detail(content: bytes) -> str:
    """The `detail` of a node's error body, or the body's start when it has none."""
    try:
        body = orjson.loads(content)
        if isinstance(body, dict) and "detail" in body:
            return str(body["detail"])
    except orjson.JSONDecodeError:
        pass
    return content[:300].decode(errors="replace")


@dataclass
class _Replicas:
    """Which replicas are suspect, and whose turn it is."""

    urls: tuple[str, ...]
    suspect_until: dict[str, float] = field(default_factory=dict)
    turn: itertools.count = field(default_factory=itertools.count)

    def order(self, now: float) -> list[str]:
        start = next(self.turn) % len(self.urls)
        turned = self.urls[start:] + self.urls[:start]
        healthy = [u for u in turned if self.suspect_until.get(u, 0.0) <= now]
        suspects = sorted((u for u in turned if u not in healthy), key=self.suspect_until.__getitem__)
        return healthy + suspects


class NodeClient:
    """Calls to the nodes of `topology`. Close with `aclose()`."""

    def __init__(
        self, topology: Topology, metrics: RouterMetrics, read_timeout: float, write_timeout: float,
        hedge_after: float | None, headers: Mapping[str, str],
    ) -> None:  # fmt: skip
        """`headers` go with every call (the content type, the router's own key for the nodes)."""
        self.topology, self.metrics = topology, metrics
        self.headers = list(headers.items())
        self.read_timeout, self.write_timeout, self.hedge_after = read_timeout, write_timeout, hedge_after
        self.pool = NodePool()
        self._replicas = {shard.index: _Replicas(shard.replicas) for shard in topology.shards}
        self._urls: dict[tuple[str, str], httpx.URL] = {}
        self._durations: dict[tuple[int, str], object] = {}
        for shard_index, url in topology.nodes:
            metrics.replica_up.labels(str(shard_index), url).set(1)

    async def aclose(self) -> None:
        self.pool.close()

    # ---- health bookkeeping ----

    def _suspect(self, shard: int, url: str, reason: str) -> None:
        self._replicas[shard].suspect_until[url] = time.monotonic() + SUSPECT_SECONDS
        self.metrics.shard_failures.labels(str(shard), reason).inc()
        self.metrics.replica_up.labels(str(shard), url).set(0)

    def _healthy(self, shard: int, url: str) -> None:
        if self._replicas[shard].suspect_until.pop(url, None) is not None:
            self.metrics.replica_up.labels(str(shard), url).set(1)

    # ---- one call ----

    async def _send(
        self, shard: int, url: str, method: str, path: str, content: bytes | None, timeout: float
    ) -> NodeAnswer:
        target = self._urls.get((url, path))
        if target is None:  # parsed once: search paths repeat (item paths are many: the cache is reset)
            if len(self._urls) >= URL_CACHE:
                self._urls.clear()
            target = self._urls[(url, path)] = httpx.URL(url + path)
        status, body = await self.pool.request(method, target, self.headers, content, timeout)
        return NodeAnswer(shard, url, status, body)

    def _failed(self, shard: int, url: str, outcome: BaseException | NodeAnswer, waited: float) -> str:
        """Mark `url` suspect and say what went wrong, for the 503's detail."""
        if isinstance(outcome, NodeAnswer):
            self._suspect(shard, url, "status_5xx")
            return f"answered {outcome.status}: {outcome.detail}"
        if isinstance(outcome, httpx.TimeoutException | asyncio.TimeoutError):
            self._suspect(shard, url, "timeout")
            return f"no answer within {waited:.2f} s"
        if isinstance(outcome, httpx.ConnectError):
            self._suspect(shard, url, "connect")
            return f"cannot connect ({outcome})"
        self._suspect(shard, url, "other")
        return f"{type(outcome).__name__}: {outcome}"

    # ---- reads: one replica of a shard ----

    async def read(
        self, shard: ShardNodes, method: str, path: str, content: bytes | None = None, operation: str = "search"
    ) -> NodeAnswer:
        """The first good answer of a replica of `shard` (see the module docstring), or
        ShardUnavailable at the deadline / when every replica failed."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        if len(shard.replicas) == 1:
            return await self._read_only_replica(shard, method, path, content, operation, start)
        deadline = start + self.read_timeout
        order = self._replicas[shard.index].order(time.monotonic())
        label = str(shard.index)
        errors: dict[str, str] = {}
        pending: dict[asyncio.Task, tuple[str, float]] = {}
        asked = 0

        def ask() -> None:
            nonlocal asked
            url = order[asked]
            asked += 1
            request = self._send(shard.index, url, method, path, content, deadline - loop.time())
            pending[asyncio.ensure_future(request)] = (url, loop.time())

        ask()
        try:
            while True:
                now = loop.time()
                if now >= deadline:
                    break
                wait = deadline - now
                if asked < len(order):  # when to ask the next replica if nobody has answered
                    if self.hedge_after is not None:
                        wait = min(wait, self.hedge_after)
                    else:
                        wait = min(wait, (deadline - now) / (len(order) - asked + 1))
                done, _ = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    url, asked_at = pending.pop(task)
                    outcome = task.exception() or task.result()
                    if isinstance(outcome, NodeAnswer) and outcome.status < 500:
                        self._healthy(shard.index, url)
                        self._observe(shard.index, operation, loop.time() - start)
                        return outcome
                    errors[url] = self._failed(shard.index, url, outcome, loop.time() - asked_at)
                if asked < len(order) and (not pending or not done):
                    if not pending:
                        self.metrics.failovers.labels(label).inc()
                    elif self.hedge_after is not None:
                        self.metrics.hedges.labels(label).inc()  # slow is not failed: nobody is suspect
                    else:
                        # Past its share of the deadline: suspect (asked last next time), though
                        # its answer is still taken if it comes first.
                        self.metrics.failovers.labels(label).inc()
                        for url, asked_at in pending.values():
                            errors[url] = self._failed(shard.index, url, asyncio.TimeoutError(), loop.time() - asked_at)
                    ask()
                elif not pending:
                    break  # every replica asked and failed
        finally:
            for task in pending:
                task.cancel()  # a winner answered, or the deadline passed
        for url, asked_at in pending.values():
            if url not in errors:
                errors[url] = self._failed(shard.index, url, asyncio.TimeoutError(), loop.time() - asked_at)
        self.metrics.shard_unavailable.labels(label, operation).inc()
        raise ShardUnavailable(shard, errors, operation)

    async def _read_only_replica(
        self, shard: ShardNodes, method: str, path: str, content: bytes | None, operation: str, start: float
    ) -> NodeAnswer:
        """`read` of a shard with one replica: nothing to fail over or hedge to, so the call is
        awaited in the caller's task under the deadline, without the task and the waits that
        `read` needs to ask a second replica while the first is still out. With `_observe`'s
        cached label lookups: the router's CPU per search over 3 one-replica shards 570 -> 520 us
        (2 cores, the same nodes behind both routers, asked in turn)."""
        url = shard.replicas[0]
        loop = asyncio.get_running_loop()
        try:
            outcome: BaseException | NodeAnswer = await self._send(
                shard.index, url, method, path, content, self.read_timeout
            )
        except Exception as exc:  # noqa: BLE001 - as `read` takes any failure of an attempt
            outcome = exc
        if isinstance(outcome, NodeAnswer) and outcome.status < 500:
            self._healthy(shard.index, url)
            self._observe(shard.index, operation, loop.time() - start)
            return outcome
        errors = {url: self._failed(shard.index, url, outcome, loop.time() - start)}
        self.metrics.shard_unavailable.labels(str(shard.index), operation).inc()
        raise ShardUnavailable(shard, errors, operation)

    def _observe(self, shard: int, operation: str, seconds: float) -> None:
        """shard_duration, its labelled child looked up once (labels() takes a lock and builds keys)."""
        child = self._durations.get((shard, operation))
        if child is None:
            child = self._durations[(shard, operation)] = self.metrics.shard_duration.labels(str(shard), operation)
        child.observe(seconds)

    async def read_shards(
        self, shards: list[ShardNodes], method: str, path: str, contents: list[bytes | None] | bytes | None,
        operation: str = "search",
    ) -> list[NodeAnswer | ShardUnavailable]:
        """`read` on each of `shards` concurrently (`contents`: one body for all, or one each);
        a shard that no replica answered comes back as its ShardUnavailable."""
        if not isinstance(contents, list):
            contents = [contents] * len(shards)
        calls = [self.read(s, method, path, c, operation) for s, c in zip(shards, contents)]
        out = await asyncio.gather(*calls, return_exceptions=True)
        for result in out:
            if isinstance(result, BaseException) and not isinstance(result, ShardUnavailable):
                raise result
        return out

    # ---- writes: every replica of a shard ----

    async def write(
        self, shard: ShardNodes, method: str, path: str, content: bytes | None = None, operation: str = "write"
    ) -> list[NodeAnswer]:
        """Every replica's answer (status < 500), in replica order; ShardUnavailable naming the
        replicas that did not acknowledge (the others may have applied the write)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        calls = [
            self._send(shard.index, url, method, path, content, self.write_timeout)
            for url in shard.replicas
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        answers, errors = [], {}
        for url, outcome in zip(shard.replicas, outcomes):
            if isinstance(outcome, NodeAnswer) and outcome.status < 500:
                self._healthy(shard.index, url)
                answers.append(outcome)
            else:
                errors[url] = self._failed(shard.index, url, outcome, loop.time() - start)
        self._observe(shard.index, operation, loop.time() - start)
        if errors:
            self.metrics.shard_unavailable.labels(str(shard.index), operation).inc()
            for url in shard.replicas:
                errors.setdefault(url, "acknowledged")
            raise ShardUnavailable(shard, errors, operation)
        return answers

    async def call(
        self, shard: int, url: str, method: str, path: str, content: bytes | None = None,
        timeout: float | None = None,
    ) -> NodeAnswer | str:  # fmt: skip
        """One call to one node (`write_timeout` unless given): its answer, or what went wrong."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        timeout = self.write_timeout if timeout is None else timeout
        try:
            outcome: BaseException | NodeAnswer = await self._send(shard, url, method, path, content, timeout)
        except (httpx.HTTPError, OSError) as exc:
            outcome = exc
        if isinstance(outcome, NodeAnswer) and outcome.status < 500:
            self._healthy(shard, url)
            return outcome
        return self._failed(shard, url, outcome, loop.time() - start)

    async def one_replica(
        self, shard: ShardNodes, method: str, path: str, content: bytes | None, timeout: float, operation: str
    ) -> NodeAnswer:
        """The answer of one replica of `shard` to a call that must be made once (a snapshot):
        the replicas are asked one after the other, healthy ones first, the next only when one
        failed (never hedged: two answers would be two snapshots); ShardUnavailable when none answered."""
        errors: dict[str, str] = {}
        for url in self._replicas[shard.index].order(time.monotonic()):
            if errors:
                self.metrics.failovers.labels(str(shard.index)).inc()
            outcome = await self.call(shard.index, url, method, path, content, timeout)
            if isinstance(outcome, NodeAnswer):
                return outcome
            errors[url] = outcome
        self.metrics.shard_unavailable.labels(str(shard.index), operation).inc()
        raise ShardUnavailable(shard, errors, operation)

    async def every_node(
        self, method: str, path: str, content: bytes | None = None, timeout: float | None = None
    ) -> list[tuple[int, str, NodeAnswer | str]]:
        """The same call to every node of every shard concurrently: (shard, url, answer or the
        error as text), in topology order. Nothing raises for a node that failed."""
        nodes = self.topology.nodes
        calls = [self.call(s, url, method, path, content, timeout) for s, url in nodes]
        return [(s, url, outcome) for (s, url), outcome in zip(nodes, await asyncio.gather(*calls))]

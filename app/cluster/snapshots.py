"""Snapshots at a router: one snapshot file per shard, taken together, listed and downloaded
through the router, restored node by node.

What a router's snapshot is. The router holds no data and no disk, and a cluster's data is on
many machines, so there is no one file: `POST /collections/{c}/snapshots` asks one replica of
every shard (the replicas of a shard hold the same items: writes go to all of them) to snapshot
its part, all shards at once, and answers each shard's file (`snapshots`: shard, node, name,
bytes, created_at). This is what Qdrant does in a distributed deployment (a snapshot per shard,
`/collections/{c}/shards/{id}/snapshots`, restored shard by shard) and what Elasticsearch does
in its own way (each shard's data copied by the node that holds it); a router that streamed
every shard into one tar would carry the whole collection through one process for nothing.

- Each shard's file is consistent in itself (the node's snapshot: one cut across its store);
  the shards' files are taken at about the same moment, not at one cut: a write acknowledged
  while they are taken may be in some shards' files and not others'. For one cut across the
  cluster, pause writes while the snapshot is taken.
- `GET /collections/{c}/snapshots` lists every node's files, each with its shard and node
  (oldest first); `GET /collections/{c}/snapshots/{name}` streams one of them from the node
  that holds it (node snapshot names are unique: they end in a random suffix), so a client
  needs no access to the nodes; `DELETE` deletes it there.
- Restore (offline, as on one node): stop the shard's nodes, `annserve restore FILE --data-dir
  DIR` with shard i's file into the data directory of every replica of shard i, start them.
  The file holds that shard's items only, which is what a node of shard i owns.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException

from ..api.routes.snapshots import SnapshotRequest
from ..api.transport.parsing import load_object
from .fanout import NodeAnswer, ShardUnavailable
from .state import RouterState, passed_on

# A snapshot copies a shard's store and index files: far longer than a search.
MIN_SNAPSHOT_TIMEOUT_SECONDS = 600.0
CONNECT_TIMEOUT_SECONDS = 5.0
# Headers of a node's file answer passed on to the client.
FILE_HEADERS = ("content-type", "content-length", "content-disposition", "etag", "last-modified")


def _path(name: str, snapshot: str | None = None) -> str:
    path = f"/collections/{quote(name, safe='')}/snapshots"
    return path if snapshot is None else f"{path}/{quote(snapshot, safe='')}"


def _timeout(state: RouterState) -> float:
    return max(state.settings.shard_write_timeout_seconds, MIN_SNAPSHOT_TIMEOUT_SECONDS)


async def create(state: RouterState, name: str, raw: bytes) -> dict:
    """One snapshot per shard, all at once: 201 with each shard's file (module docstring)."""
    body = load_object(raw or b"{}", frozenset(SnapshotRequest.model_fields))
    SnapshotRequest.model_validate(body)
    content, timeout = orjson.dumps(body), _timeout(state)
    outcomes = await asyncio.gather(
        *(state.nodes.one_replica(s, "POST", _path(name), content, timeout, "snapshot") for s in state.shards),
        return_exceptions=True,
    )
    taken, failures, refusals = [], [], []
    for shard, outcome in zip(state.shards, outcomes):
        if isinstance(outcome, ShardUnavailable):
            failures.append(outcome.detail)
        elif isinstance(outcome, BaseException):
            raise outcome
        elif outcome.status == 201:
            taken.append({"shard": shard.index, "node": outcome.url, **outcome.json()})
        else:
            refusals.append(outcome)
    if refusals and not taken and not failures:
        raise passed_on(refusals[0])  # the collection is missing, or the body is wrong: the same everywhere
    failures += [f"shard {a.shard} node {a.url} refused: {a.detail}" for a in refusals]
    if failures:
        made = ", ".join(f"shard {t['shard']}: {t['name']}" for t in taken) or "none"
        raise HTTPException(
            503,
            detail=f"snapshot of {name!r} not taken on every shard: {'; '.join(failures)}; taken: {made} "
            "(delete them or keep them); retry to take a whole set",
        )
    return {
        "collection": name,
        "shards": len(state.shards),
        "bytes": sum(t["bytes"] for t in taken),
        "created_at": max(t["created_at"] for t in taken),
        "snapshots": taken,
    }


async def list_all(state: RouterState, name: str) -> dict:
    """Every node's snapshots of `name`, each with its shard and node, oldest first; nodes that
    did not answer are named in `failed_nodes` (their files are not listed)."""
    outcomes = await state.nodes.every_node("GET", _path(name), timeout=state.settings.shard_timeout_seconds * 5)
    listed: list[dict[str, Any]] = []
    failed, missing, answered = [], [], 0
    for shard, url, outcome in outcomes:
        if isinstance(outcome, str):
            failed.append(f"shard {shard} node {url}: {outcome}")
        elif outcome.status == 200:
            answered += 1
            listed += [{**info, "shard": shard, "node": url} for info in outcome.json()["snapshots"]]
        elif outcome.status == 404:
            missing.append(outcome)
        else:
            raise passed_on(outcome)
    if not answered:
        if missing:
            raise passed_on(missing[0])
        raise HTTPException(503, detail=f"no node listed the snapshots of {name!r}: {'; '.join(failed)}")
    listed.sort(key=lambda info: (info["created_at"], info["shard"], info["name"]))
    out: dict[str, Any] = {"snapshots": listed}
    if failed:
        out["failed_nodes"] = failed
    return out


async def _holder(state: RouterState, name: str, snapshot: str, method: str) -> tuple[NodeAnswer | None, list[str]]:
    """The node whose answer to `method` on the snapshot is not a 404 (None when every node
    answered 404), and the nodes that did not answer."""
    outcomes = await state.nodes.every_node(method, _path(name, snapshot), timeout=state.settings.shard_timeout_seconds * 5)
    failed, holder = [], None
    for shard, url, outcome in outcomes:
        if isinstance(outcome, str):
            failed.append(f"shard {shard} node {url}: {outcome}")
        elif outcome.status != 404 and holder is None:
            holder = outcome
    return holder, failed


async def delete(state: RouterState, name: str, snapshot: str) -> dict:
    """Delete the file on the node that holds it; its info, with shard and node."""
    holder, failed = await _holder(state, name, snapshot, "DELETE")
    if holder is None:
        raise _not_found(name, snapshot, failed)
    if holder.status != 200:
        raise passed_on(holder)
    return {**holder.json(), "shard": holder.shard, "node": holder.url}


async def download(state: RouterState, name: str, snapshot: str) -> StreamingResponse:
    """The file, streamed from the node that holds it (asked in topology order, one at a time:
    a 404 is a small answer, a hit streams on)."""
    timeout = httpx.Timeout(_timeout(state), connect=CONNECT_TIMEOUT_SECONDS)
    client = httpx.AsyncClient(timeout=timeout, headers=state.node_headers)
    failed: list[str] = []
    try:
        for shard, url in state.topology.nodes:
            request = client.build_request("GET", url + _path(name, snapshot))
            try:
                answer = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                failed.append(f"shard {shard} node {url}: {type(exc).__name__}: {exc}")
                continue
            if answer.status_code == 200:
                headers = {k: v for k, v in answer.headers.items() if k.lower() in FILE_HEADERS}
                headers["x-annserve-shard"] = str(shard)
                return StreamingResponse(
                    answer.aiter_raw(), headers=headers, background=BackgroundTask(_close, answer, client)
                )
            content = await answer.aread()
            await answer.aclose()
            if answer.status_code >= 500:
                failed.append(f"shard {shard} node {url}: answered {answer.status_code}")
            elif answer.status_code != 404:
                raise passed_on(NodeAnswer(shard, url, answer.status_code, content))
    except BaseException:
        await client.aclose()
        raise
    await client.aclose()
    raise _not_found(name, snapshot, failed)


async def _close(answer: httpx.Response, client: httpx.AsyncClient) -> None:
    await answer.aclose()
    await client.aclose()


def _not_found(name: str, snapshot: str, failed: list[str]) -> HTTPException:
    if failed:
        return HTTPException(
            503, detail=f"snapshot {snapshot!r} of {name!r} is on no node that answered; these did not: {'; '.join(failed)}"
        )
    return HTTPException(404, detail=f"snapshot {snapshot!r} of collection {name!r} not found on any node")

"""Collections at a router: created and deleted on every node, described by summing the shards.

The router's collection has one shard per entry of `ANNSERVE_SHARD_URLS`; each node holds its
part as an ordinary 1-shard collection of the same name and spec.

Create and delete are not atomic across nodes: a node that fails makes the call fail (503 naming
it, and saying where it was done), and a retry converges: a create that finds the collection
already there *with the same spec* on some nodes counts it as done there (201 once every node
has it; 409 only when every node already had it), and a delete that finds it already gone on
some nodes counts it as deleted there.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson
from starlette.exceptions import HTTPException

from ..api.schemas import CollectionCreate
from ..api.transport.parsing import load_object
from .fanout import NodeAnswer, ShardUnavailable
from .state import RouterState, passed_on

# Summed over the shards in the router's collection info; the rest comes from shard 0.
COUNTS = ("count", "main_count", "fresh_count", "tombstone_count")


def _path(name: str) -> str:
    return f"/collections/{quote(name, safe='')}"


def _spec_of(info: dict[str, Any]) -> tuple:
    index = info.get("index") or {}
    return info.get("dim"), info.get("metric"), index.get("kind"), index.get("params") or {}


def _node(shard: int, url: str) -> str:
    return f"shard {shard} node {url}"


async def create(state: RouterState, raw: bytes) -> dict:
    """Create on every node; the aggregated info (see the module docstring for retries)."""
    body = load_object(raw, frozenset(CollectionCreate.model_fields))
    request = CollectionCreate.model_validate(body)  # the node's checks, before any node is asked
    n = len(state.shards)
    if "shards" in body and request.shards != n:
        raise ValueError(
            f"shards: a router's collection has one shard per entry of ANNSERVE_SHARD_URLS ({n}), "
            f"got {request.shards}"
        )
    body.pop("shards", None)  # each node holds its part as a 1-shard collection
    wanted = _spec_of(
        {"dim": request.dim, "metric": request.metric, "index": request.index.model_dump()}
    )
    outcomes = await state.nodes.every_node("POST", "/collections", orjson.dumps(body))
    created, existed, failures = [], [], []
    for shard, url, outcome in outcomes:
        if isinstance(outcome, str):
            failures.append(f"{_node(shard, url)}: {outcome}")
        elif outcome.status == 201:
            created.append(url)
        elif outcome.status == 409:
            existed.append((shard, url))
        else:
            raise passed_on(outcome)  # the client's mistake, the same on every node
    # A node that already has it: the same spec is a retry's success, another spec a conflict.
    for shard, url in existed:
        outcome = await state.nodes.call(shard, url, "GET", _path(request.name))
        if isinstance(outcome, str) or outcome.status != 200:
            text = outcome if isinstance(outcome, str) else outcome.detail
            failures.append(f"{_node(shard, url)}: it has collection {request.name!r} but cannot describe it: {text}")
        elif (spec := _spec_of(outcome.json())) != wanted:
            raise HTTPException(
                409,
                detail=f"collection {request.name!r} already exists on {_node(shard, url)} with another spec "
                f"(dim, metric, kind, params) = {spec}, asked {wanted}: delete it first",
            )
    if failures:
        raise HTTPException(
            503,
            detail=f"collection {request.name!r} is not on every node: {'; '.join(failures)}; it is on "
            f"{len(created) + len(existed)} of {len(outcomes)} nodes: retry the create to converge",
        )
    if not created:
        raise HTTPException(409, detail=f"collection {request.name!r} already exists (on every node)")
    state.forget(request.name)
    return await info(state, request.name)


async def delete(state: RouterState, name: str) -> dict:
    outcomes = await state.nodes.every_node("DELETE", _path(name))
    state.forget(name)
    deleted, failures, missing = 0, [], None
    for shard, url, outcome in outcomes:
        if isinstance(outcome, str):
            failures.append(f"{_node(shard, url)}: {outcome}")
        elif outcome.status == 200:
            deleted += 1
        elif outcome.status == 404:
            missing = outcome
        else:
            raise passed_on(outcome)
    if failures:
        raise HTTPException(
            503,
            detail=f"collection {name!r} is not deleted everywhere: {'; '.join(failures)}; deleted or absent "
            f"on {len(outcomes) - len(failures)} of {len(outcomes)} nodes: retry the delete to converge",
        )
    if not deleted:
        raise passed_on(missing)
    return {"name": name, "deleted": True}


def _partial(state: RouterState, failed: list[ShardUnavailable]) -> dict:
    if not state.settings.allow_partial:
        raise HTTPException(503, detail="; ".join(f.detail for f in failed))
    return {"partial": True, "failed_shards": [f.shard.index for f in failed]}


def aggregate(state: RouterState, parts: list[tuple[int, str, dict]]) -> dict:
    """The router's info from the nodes' (shard, url, info): counts summed, the rest from the
    first shard, one `shard_info` entry per shard."""
    first = parts[0][2]
    out = {key: value for key, value in first.items() if key not in COUNTS}
    out["shards"] = len(state.shards)
    for key in COUNTS:
        if all(key in info for _, _, info in parts):
            out[key] = sum(info[key] for _, _, info in parts)
    rebuilt = [info["last_rebuild_at"] for _, _, info in parts if info.get("last_rebuild_at")]
    out["last_rebuild_at"] = max(rebuilt) if rebuilt else None
    out["shard_info"] = [
        {
            "shard": shard,
            "node": url,
            **{key: info[key] for key in (*COUNTS, "last_rebuild_at") if key in info},
            "built": (info.get("index") or {}).get("built"),
            # Each node's own (a tuning sets them per shard).
            "search_params": (info.get("index") or {}).get("search_params"),
        }
        for shard, url, info in parts
    ]
    return out


async def info(state: RouterState, name: str) -> dict:
    answers = await state.nodes.read_shards(list(state.shards), "GET", _path(name), None, "info")
    failed = [a for a in answers if isinstance(a, ShardUnavailable)]
    good: list[NodeAnswer] = [a for a in answers if isinstance(a, NodeAnswer)]
    missing = [a for a in good if a.status == 404]
    if missing and len(missing) < len(good):
        raise HTTPException(
            404,
            detail=f"collection {name!r} is missing on shard(s) {[a.shard for a in missing]} but present on "
            f"others: a create or delete did not finish on every node; retry it",
        )
    for answer in good:
        if answer.status != 200:
            raise passed_on(answer)
    extra = _partial(state, failed) if failed else {}
    if not good:
        raise HTTPException(503, detail="; ".join(f.detail for f in failed))
    return {**aggregate(state, [(a.shard, a.url, a.json()) for a in good]), **extra}


async def list_all(state: RouterState) -> dict:
    answers = await state.nodes.read_shards(list(state.shards), "GET", "/collections", None, "info")
    failed = [a for a in answers if isinstance(a, ShardUnavailable)]
    good = [a for a in answers if isinstance(a, NodeAnswer)]
    for answer in good:
        if answer.status != 200:
            raise passed_on(answer)
    extra = _partial(state, failed) if failed else {}
    if not good:
        raise HTTPException(503, detail="; ".join(f.detail for f in failed))
    by_name: dict[str, list[tuple[int, str, dict]]] = {}
    for answer in good:
        for item in answer.json()["collections"]:
            by_name.setdefault(item["name"], []).append((answer.shard, answer.url, item))
    collections = []
    for name in sorted(by_name):
        described = aggregate(state, by_name[name])
        lacking = sorted({a.shard for a in good} - {shard for shard, _, _ in by_name[name]})
        if lacking:
            described["missing_shards"] = lacking
        collections.append(described)
    return {"collections": collections, **extra}

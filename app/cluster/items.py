"""Upsert, get and delete at a router: each id goes to the shard that owns it (`shard_of`);
writes to every replica of that shard (acknowledged when all of them acknowledged), reads to
one replica.

A request that spans shards is not atomic across them: when one shard fails, the items of the
others stay written, and the error says which shards wrote and which did not. Upserts and
deletes are idempotent, so resending the whole request converges.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import orjson
from starlette.exceptions import HTTPException

from ..api.routes.vectors import parse_items
from ..api.transport.parsing import load_object
from ..engine.inputs import check_ids, check_vectors
from .fanout import NodeAnswer, ShardUnavailable
from .ownership import positions_by_shard, shard_of
from .search import b64
from .state import RouterState, passed_on

UPSERT_FIELDS = frozenset({"items"})


def _vectors_path(name: str, item_id: str | None = None) -> str:
    path = f"/collections/{quote(name, safe='')}/vectors"
    return path if item_id is None else f"{path}/{quote(item_id, safe='')}"


async def upsert(state: RouterState, name: str, raw: bytes) -> dict:
    """`{"upserted": n}` once every replica of every owning shard has acknowledged."""
    body = load_object(raw, UPSERT_FIELDS)
    spec = await state.spec(name)
    ids, vectors, payloads = parse_items(body.get("items"), spec.dim, state.settings.max_upsert_batch)
    # The engine's own checks (ids: strings the shard hash can encode; norm cap, no all-zero cosine
    # rows) before any node writes or any id is hashed, so that a bad item fails the whole request,
    # with the node's 422, rather than the shards it belongs to (or the hash, with a 500).
    ids = check_ids(ids)
    check_vectors(vectors, spec.dim, spec.metric, name, "items[].vector")
    groups = positions_by_shard(ids, len(state.shards))
    bodies = {}
    for shard, positions in groups.items():
        items = []
        for p in positions:
            item = {"id": ids[p], "vector_b64": b64(vectors[p])}
            if payloads[p] is not None:
                item["payload"] = payloads[p]
            items.append(item)
        bodies[shard] = orjson.dumps({"items": items})
    path = _vectors_path(name)
    outcomes = await _per_shard(state, {s: ("POST", path, body) for s, body in bodies.items()})
    return {"upserted": sum(answers[0].json()["upserted"] for answers in outcomes.values())}


async def delete_many(state: RouterState, name: str, ids: list[str]) -> dict:
    """`{"deleted": n}`: ids that existed, counted on the replica that found most (replicas agree
    unless an earlier write failed half-way)."""
    unique = list(dict.fromkeys(ids))
    groups = positions_by_shard(unique, len(state.shards))
    path = f"{_vectors_path(name)}/delete"
    calls = {s: ("POST", path, orjson.dumps({"ids": [unique[p] for p in ps]})) for s, ps in groups.items()}
    outcomes = await _per_shard(state, calls)
    return {"deleted": sum(max(a.json()["deleted"] for a in answers) for answers in outcomes.values())}


async def delete_one(state: RouterState, name: str, item_id: str) -> dict:
    """`{"deleted": 1}` when any replica of the owner had the item, else its 404."""
    shard = state.shards[shard_of(item_id, len(state.shards))]
    answers = await state.nodes.write(shard, "DELETE", _vectors_path(name, item_id))
    if any(a.status == 200 for a in answers):
        return {"deleted": 1}
    raise passed_on(answers[0])


async def get(state: RouterState, name: str, item_id: str) -> bytes:
    """The owner's answer body (`{"id", "vector", "payload"}`), as the node wrote it."""
    shard = state.shards[shard_of(item_id, len(state.shards))]
    answer = await state.nodes.read(shard, "GET", _vectors_path(name, item_id), operation="get")
    if answer.status != 200:
        raise passed_on(answer)
    return answer.content


async def _per_shard(
    state: RouterState, calls: dict[int, tuple[str, str, bytes]]
) -> dict[int, list[NodeAnswer]]:
    """One write per shard, all shards at once: {shard: every replica's 200 answer}. When a
    shard failed or refused, the error names it and says which shards did write."""
    shards = list(calls)
    outcomes = await asyncio.gather(
        *(state.nodes.write(state.shards[s], *calls[s]) for s in shards),
        return_exceptions=True,
    )
    written, failures, refusals = {}, [], []
    for s, outcome in zip(shards, outcomes):
        if isinstance(outcome, ShardUnavailable):
            failures.append(outcome.detail)
        elif isinstance(outcome, BaseException):
            raise outcome
        elif refused := next((a for a in outcome if a.status != 200), None):
            failures.append(f"{state.shards[s].describe()} refused its part: {refused.detail}")
            refusals.append(refused.status)
        else:
            written[s] = outcome
    # A shard down is the service's state (503); a refusal alone is the client's mistake (its 4xx).
    status = refusals[0] if refusals and len(refusals) == len(failures) else 503
    if failures:
        done = (
            f"the items of shard(s) {sorted(written)} were written on every replica"
            if written else "no shard acknowledged its part"
        )
        raise HTTPException(
            status,
            detail=f"{'; '.join(failures)}; {done}; a failed shard's part may be on some of its replicas only: "
            "resend the request (upserts and deletes are idempotent)",
        )
    return written

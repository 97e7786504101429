"""Search and batch search at a router: one replica of every shard asked concurrently, vectors
sent to the nodes as base64 float32, the global top-k merged, and the partial-answer policy.

A shard that no replica answers within `ANNSERVE_SHARD_TIMEOUT_SECONDS` makes the search 503,
naming the shard and its replicas, unless partial answers are allowed (`"allow_partial": true`
in the request, or `ANNSERVE_ALLOW_PARTIAL=true` when the request does not say): then 200 with
`"partial": true, "failed_shards": [...]`. Never a partial answer without saying so; and with
every shard down, always 503.

Search by id: the vector comes from the item's owner; the owner is asked by id (so it leaves
the item out, as one node does), every other shard by that vector.

The request goes to the nodes as the client wrote it, but for what the router must handle
itself: `vector`/`vectors` (sent on as base64), `id` (above), `k` (read for the merge) and
`allow_partial` (the router's). Every other field (`params`, `exact`, and `filter`,
`with_payload`, `with_vector`, `score_threshold` of CONTRACT section 3) is passed on unchanged
and checked by the nodes, whose 422 for an unknown or wrong field comes back as they said it;
each hit comes back with whatever the node put in it (`payload`, `vector`) through the merge.
That is right for a field that acts on each hit or each shard's search alone (a filter, a
threshold, a projection, a search knob), which is what a shard's answer can do. A field whose
meaning spans the merged list (an offset into it, a grouping) would have to be handled here.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson
from starlette.exceptions import HTTPException

from ..api.transport.parsing import get_bool, get_k, load_object, vector_from_list, vectors_from_lists
from ..settings import Settings
from .fanout import NodeAnswer, ShardUnavailable
from .merge import merge_hits
from .ownership import shard_of
from .state import RouterState, passed_on

ALLOW_PARTIAL = "allow_partial"


def b64(rows: np.ndarray) -> str:
    """(dim,) or (n, dim) float32 -> base64 of little-endian float32, row-major."""
    return base64.b64encode(np.ascontiguousarray(rows, dtype="<f4").tobytes()).decode()


def load_search_body(raw: bytes) -> dict[str, Any]:
    """The request as a JSON object, with every field it has: the ones the router does not use
    are the nodes' to check (see the module docstring)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        load_object(raw, frozenset())  # raises the node's own words for an empty, invalid or non-object body
    return body


def allow_partial(body: dict[str, Any], settings: Settings) -> bool:
    """The request's `allow_partial` (removed from `body`: nodes do not know it), else the setting."""
    if ALLOW_PARTIAL not in body:
        return settings.allow_partial
    value = get_bool(body, ALLOW_PARTIAL)
    del body[ALLOW_PARTIAL]
    return value


async def answer_search(state: RouterState, name: str, raw: bytes) -> dict:
    body = load_search_body(raw)
    partial_ok = allow_partial(body, state.settings)
    k = get_k(body, state.settings.max_k)
    spec = await state.spec(name)
    if "vector" in body:
        body["vector_b64"] = b64(vector_from_list(body.pop("vector"), spec.dim))
    shards = state.shards
    if "id" in body and "vector_b64" not in body:
        item_id = body["id"]
        if not isinstance(item_id, str):
            raise ValueError(f"id: expected a string, got {item_id!r}")
        owner = shard_of(item_id, len(shards))
        got = await state.nodes.read(
            shards[owner], "GET", f"/collections/{quote(name, safe='')}/vectors/{quote(item_id, safe='')}",
            operation="get",
        )  # fmt: skip
        if got.status != 200:
            raise passed_on(got)
        by_vector = {**body, "vector_b64": b64(np.asarray(got.json()["vector"], dtype=np.float32))}
        del by_vector["id"]
        by_id, by_vector = orjson.dumps(body), orjson.dumps(by_vector)
        contents: list[bytes | None] | bytes = [by_id if s.index == owner else by_vector for s in shards]
    else:
        contents = orjson.dumps(body)
    path = f"/collections/{quote(name, safe='')}/search"
    answers = await state.nodes.read_shards(list(shards), "POST", path, contents)
    bodies, extra = shard_bodies(state, answers, partial_ok)
    return {"results": merge_hits([b["results"] for b in bodies], k, spec.metric), **extra}


async def answer_batch(state: RouterState, name: str, raw: bytes) -> dict:
    body = load_search_body(raw)
    partial_ok = allow_partial(body, state.settings)
    k = get_k(body, state.settings.max_k)
    spec = await state.spec(name)
    if "vectors" in body and "vectors_b64" not in body:
        body["vectors_b64"] = b64(vectors_from_lists(body.pop("vectors"), spec.dim))
    path = f"/collections/{quote(name, safe='')}/search/batch"
    answers = await state.nodes.read_shards(list(state.shards), "POST", path, orjson.dumps(body))
    bodies, extra = shard_bodies(state, answers, partial_ok)
    rows = zip(*(b["results"] for b in bodies))
    return {"results": [merge_hits(list(row), k, spec.metric) for row in rows], **extra}


def shard_bodies(
    state: RouterState, answers: list[NodeAnswer | ShardUnavailable], partial_ok: bool
) -> tuple[list[dict], dict]:
    """The shards' 200 bodies and the partial-answer fields; raises a node's 4xx as it is (the
    client's mistake, the same on every shard), or 503 when a shard failed and partial answers
    are not allowed, or when every shard failed."""
    failed = [a for a in answers if isinstance(a, ShardUnavailable)]
    good = [a for a in answers if isinstance(a, NodeAnswer)]
    for answer in good:
        if answer.status != 200:
            raise passed_on(answer)
    if not failed:
        return [a.json() for a in good], {}
    if not partial_ok or not good:
        hint = " (no shard answered)" if not good else '; "allow_partial": true answers from the other shards'
        raise HTTPException(503, detail="; ".join(f.detail for f in failed) + hint)
    state.nodes.metrics.partial_answers.inc()
    extra = {
        "partial": True,
        "failed_shards": [f.shard.index for f in failed],
        "shard_errors": [f.detail for f in failed],
    }
    return [a.json() for a in good], extra

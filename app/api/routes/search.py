"""Search: one query (by vector or by a stored item's id) or a batch of queries.

The hot path of the service. The raw body is parsed by orjson into one float32 array (see
`parsing.py`), the query joins the micro-batcher (`batching.py`), and orjson writes the answer:
no pydantic and no dependency injection per request. `hot_path.HotPathMiddleware` calls
`answer_search` / `answer_batch` straight from ASGI; the routes below are the same code reached
through the router, and document the API.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import State

from ..deps import CollectionName, ready_manager
from ..schemas import BatchSearchRequest, BatchSearchResponse, SearchRequest, SearchResponse, error_responses
from ..transport.parsing import (
    dumps,
    get_bool,
    get_k,
    get_params,
    load_object,
    vector_from_list,
    vectors_from_b64,
    vectors_from_lists,
)
from ..transport.raw_body import raw_body

router = APIRouter(prefix="/collections/{name}", tags=["search"])

_SEARCH_FIELDS = frozenset(SearchRequest.model_fields)
_BATCH_FIELDS = frozenset(BatchSearchRequest.model_fields)


@router.post(
    "/search",
    response_model=SearchResponse,
    responses=error_responses(404, 413, 422),
    openapi_extra=raw_body(SearchRequest),
)
async def search(request: Request, name: CollectionName):
    """The k nearest items to a vector, or to a stored item (which is left out of its own results)."""
    # `name` is declared so that OpenAPI documents the path parameter; the lookup is the
    # hot path's (no dependency solving).
    collection = ready_manager(request.app.state).get(name)
    return dumps(await answer_search(request.app.state, collection, await request.body()))


@router.post(
    "/search/batch",
    response_model=BatchSearchResponse,
    responses=error_responses(404, 413, 422),
    openapi_extra=raw_body(BatchSearchRequest),
)
async def search_batch(request: Request, name: CollectionName):
    """The k nearest items to each of many vectors, answered in one engine call."""
    # `name` is declared so that OpenAPI documents the path parameter; the lookup is the
    # hot path's (no dependency solving).
    collection = ready_manager(request.app.state).get(name)
    return dumps(await answer_batch(request.app.state, collection, await request.body()))


async def answer_search(state: State, collection: Any, raw: bytes) -> dict:
    """The `/search` answer for the raw body; ValueError / NotFound for the client's mistakes."""
    body = load_object(raw, _SEARCH_FIELDS)
    k, params, exact = get_k(body, state.settings.max_k), get_params(body), get_bool(body, "exact")
    given = [name for name in ("vector", "vector_b64", "id") if name in body]
    if len(given) != 1:
        raise ValueError(
            f"request body: expected exactly one of vector, vector_b64, id; got {given or 'none'}"
        )
    exclude = None
    if "vector" in body:
        query = vector_from_list(body["vector"], collection.dim).reshape(1, -1)
    elif "vector_b64" in body:
        query = vectors_from_b64(body["vector_b64"], collection.dim)
    else:
        item_id = body["id"]
        if not isinstance(item_id, str):
            raise ValueError(f"id: expected a string, got {item_id!r}")
        vector, _ = await run_in_threadpool(collection.get, item_id)  # NotFound -> 404
        query = vector.reshape(1, -1)
        exclude = [item_id]
    hits = await state.batcher.search(collection, query, k, params, exact, exclude)
    return {"results": [{"id": i, "score": s} for i, s in hits[0]]}


async def answer_batch(state: State, collection: Any, raw: bytes) -> dict:
    """The `/search/batch` answer for the raw body."""
    settings = state.settings
    body = load_object(raw, _BATCH_FIELDS)
    k, params, exact = get_k(body, settings.max_k), get_params(body), get_bool(body, "exact")
    if ("vectors" in body) == ("vectors_b64" in body):
        raise ValueError("request body: expected exactly one of vectors, vectors_b64")
    if "vectors" in body:
        vectors = body["vectors"]
        if isinstance(vectors, list) and len(vectors) > settings.max_batch:
            raise _too_many(len(vectors), settings.max_batch)
        queries = vectors_from_lists(vectors, collection.dim)
    else:
        queries = vectors_from_b64(body["vectors_b64"], collection.dim, "vectors_b64", rows=None)
        if len(queries) > settings.max_batch:
            raise _too_many(len(queries), settings.max_batch)
    hits = await state.batcher.search(collection, queries, k, params, exact, None)
    return {"results": [[{"id": i, "score": s} for i, s in row] for row in hits]}


def _too_many(n: int, cap: int) -> ValueError:
    return ValueError(f"vectors: expected at most {cap} queries per batch (ANNSERVE_MAX_BATCH), got {n}")

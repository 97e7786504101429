"""Search: one query (by vector or by a stored item's id) or a batch of queries.

The hot path of the service. The raw body is parsed by orjson into one float32 array (see
`parsing.py`), the query joins the micro-batcher (`batching.py`), and orjson writes the answer:
no pydantic and no dependency injection per request. `hot_path.HotPathMiddleware` calls
`answer_search` / `answer_batch` straight from ASGI; the routes below are the same code reached
through the router, and document the API.

Nothing here blocks the event loop for long: large bodies are parsed in a thread
(`parsing.parse_body`), every engine call runs off the loop, and answers of more than
INLINE_HITS hits are built and serialised in a thread too.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import State

from ...engine.collection import Hits
from ...engine.search_options import NO_OPTIONS, SearchOptions

from ..deps import CollectionName, ready_manager
from ..schemas import BatchSearchRequest, BatchSearchResponse, SearchRequest, SearchResponse, error_responses
from ..transport import simd_rows
from ..transport.json_pieces import Converted
from ..transport.parsing import (
    get_bool,
    get_k,
    get_options,
    get_params,
    joined,
    load_object,
    parse_body,
    vector_from_list,
    vectors_from_b64,
    vectors_from_lists,
)
from ..transport.raw_body import body_chunks, raw_body

router = APIRouter(prefix="/collections/{name}", tags=["search"])

_SEARCH_FIELDS = frozenset(SearchRequest.model_fields)
_BATCH_FIELDS = frozenset(BatchSearchRequest.model_fields)
# Hits an answer may hold and still be built and serialised on the event loop (~0.2 us each).
INLINE_HITS = 2048
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


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
    body = await answer_search(request.app.state, collection, await body_chunks(request.stream()))
    return Response(body, media_type="application/json")


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
    body = await answer_batch(request.app.state, collection, await body_chunks(request.stream()))
    return Response(body, media_type="application/json")


async def answer_search(state: State, collection: Any, chunks: list[bytes]) -> bytes:
    """The `/search` answer (JSON) for the body's chunks; ValueError / NotFound for the client's mistakes."""
    max_k = state.settings.max_k
    query, item_id, k, params, exact, options = await parse_body(
        chunks, lambda raw: _parse_search(raw, collection.dim, max_k)
    )
    exclude = None
    if item_id is not None:
        vector, _ = await run_in_threadpool(collection.get, item_id)  # NotFound -> 404
        query, exclude = vector.reshape(1, -1), [item_id]
    if options is None:  # the default path, as fast as it was
        hits = await state.batcher.search(collection, query, k, params, exact, exclude)
        return orjson.dumps({"results": [{"id": i, "score": s} for i, s in hits[0]]}, option=_NUMPY)
    rows = await state.batcher.search(collection, query, k, params, exact, exclude, options)
    return b'{"results":' + _row_json(rows[0], options) + b"}"


def _parse_search(
    raw: bytes | bytearray, dim: int, max_k: int
) -> tuple[np.ndarray | None, str | None, int, dict | None, bool, SearchOptions | None]:
    """(query (1, dim) or None, item id or None, k, params, exact, options) of a `/search` body."""
    body = load_object(raw, _SEARCH_FIELDS)
    k, params, exact = get_k(body, max_k), get_params(body), get_bool(body, "exact")
    options = get_options(body)
    given = [name for name in ("vector", "vector_b64", "id") if name in body]
    if len(given) != 1:
        raise ValueError(
            f"request body: expected exactly one of vector, vector_b64, id; got {given or 'none'}"
        )
    if "vector" in body:
        return vector_from_list(body["vector"], dim).reshape(1, -1), None, k, params, exact, options
    if "vector_b64" in body:
        return vectors_from_b64(body["vector_b64"], dim), None, k, params, exact, options
    item_id = body["id"]
    if not isinstance(item_id, str):
        raise ValueError(f"id: expected a string, got {item_id!r}")
    return None, item_id, k, params, exact, options


async def answer_batch(state: State, collection: Any, chunks: list[bytes]) -> bytes:
    """The `/search/batch` answer (JSON) for the body's chunks."""
    settings = state.settings
    queries, k, params, exact, options = await parse_body(
        chunks,
        lambda raw: _parse_batch(raw, collection.dim, settings.max_k, settings.max_batch, settings.json_fast_path),
    )
    hits = await state.batcher.search(collection, queries, k, params, exact, None, options or NO_OPTIONS)
    make = _batch_json if options is None else lambda rows: _batch_json(rows, options)
    if sum(len(row) for row in hits) <= INLINE_HITS:
        return make(hits)
    return await run_in_threadpool(make, hits)


def _parse_batch(
    raw: bytes | bytearray, dim: int, max_k: int, max_batch: int, fast: bool = True
) -> tuple[np.ndarray, int, dict | None, bool, SearchOptions | None]:
    """(queries (n, dim), k, params, exact, options) of a `/search/batch` body."""
    body = load_object(
        raw, _BATCH_FIELDS, "vectors", lambda run, first: vectors_from_lists(run, dim, first=first),
        simd_rows.query_rows(dim) if fast else None,
    )  # fmt: skip
    k, params, exact = get_k(body, max_k), get_params(body), get_bool(body, "exact")
    options = get_options(body)
    if ("vectors" in body) == ("vectors_b64" in body):
        raise ValueError("request body: expected exactly one of vectors, vectors_b64")
    if "vectors" in body:
        vectors = body["vectors"]
        if not isinstance(vectors, Converted) or not vectors.count:  # not a list, or empty:
            vectors_from_lists(vectors if not isinstance(vectors, Converted) else [], dim)  # raises
        if vectors.count > max_batch:
            raise _too_many(vectors.count, max_batch)
        queries = joined(vectors.results())
    else:
        queries = vectors_from_b64(body["vectors_b64"], dim, "vectors_b64", rows=None)
        if len(queries) > max_batch:
            raise _too_many(len(queries), max_batch)
    return queries, k, params, exact, options


def _row_json(row: Hits | list[dict], options: SearchOptions = NO_OPTIONS) -> bytes:
    """One query's results as a JSON list: result objects already made (with payload / vector,
    search_options.with_records) or (id, score) pairs."""
    if options.fetches:
        return orjson.dumps(row, option=_NUMPY)
    return orjson.dumps([{"id": i, "score": s} for i, s in row], option=_NUMPY)


def _batch_json(rows: list, options: SearchOptions = NO_OPTIONS) -> bytes:
    """`{"results": [[{"id", "score", ...}, ...], ...]}`, serialised a row at a time (a thread
    doing it for a large answer hands the GIL back between rows)."""
    return b'{"results":[' + b",".join(_row_json(row, options) for row in rows) + b"]}"


def _too_many(n: int, cap: int) -> ValueError:
    return ValueError(f"vectors: expected at most {cap} queries per batch (ANNSERVE_MAX_BATCH), got {n}")

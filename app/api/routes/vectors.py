"""Vectors of a collection: upsert in batches, get, delete."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool

from ...engine.collection import MAX_ID_CHARS
from ..deps import CollectionDep, SettingsDep
from ...engine.errors import NotFound
from ..schemas import (
    DeletedCount,
    DeleteIdsRequest,
    UpsertRequest,
    UpsertResponse,
    VectorRecord,
    error_responses,
)
from ..transport.parsing import decode_b64, dumps, load_object, vector_from_list, vectors_from_bytes, vectors_from_lists
from ..transport.raw_body import JsonBody, raw_body
from ...cluster.ownership import check_owned  # shard nodes (app/cluster/)

router = APIRouter(prefix="/collections/{name}/vectors", tags=["vectors"])
ItemId = Path(description="item id")

_UPSERT_FIELDS = frozenset({"items"})
_ITEM_FIELDS = frozenset({"id", "vector", "vector_b64", "payload"})


@router.post(
    "",
    response_model=UpsertResponse,
    responses=error_responses(404, 413, 422),
    openapi_extra=raw_body(UpsertRequest),
)
async def upsert_vectors(request: Request, collection: CollectionDep, settings: SettingsDep):
    """Insert or replace items; once the 200 is sent the write survives a crash."""
    body = load_object(await request.body(), _UPSERT_FIELDS)
    ids, vectors, payloads = parse_items(body.get("items"), collection.dim, settings.max_upsert_batch)
    check_owned(ids, settings.shard_index, settings.shard_count)  # cluster hook: 421 naming the owner
    # The engine writes to its store and syncs before returning: off the event loop.
    n = await run_in_threadpool(collection.upsert, ids, vectors, payloads)
    return dumps({"upserted": n})


def parse_items(items, dim: int, max_items: int) -> tuple[list[str], np.ndarray, list[dict | None]]:
    """`items` of the upsert body -> ids, (n, dim) float32 vectors, payloads."""
    if not isinstance(items, list) or not items:
        raise ValueError("items: expected a non-empty list of {id, vector, payload} objects")
    if len(items) > max_items:
        raise ValueError(
            f"items: expected at most {max_items} per request (ANNSERVE_MAX_UPSERT_BATCH), got {len(items)}"
        )
    ids: list[str] = []
    payloads: list[dict | None] = []
    # Rows given as JSON lists and as base64, by position; each kind is converted in one go.
    list_at: list[int] = []
    list_rows: list[list] = []
    b64_at: list[int] = []
    b64_rows: list[bytes] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"items[{i}]: expected an object with id, vector and payload")
        if not item.keys() <= _ITEM_FIELDS:
            raise ValueError(
                f"items[{i}]: unknown field(s) {sorted(item.keys() - _ITEM_FIELDS)}; "
                f"expected some of {sorted(_ITEM_FIELDS)}"
            )
        item_id = item.get("id")
        if not isinstance(item_id, str) or not 1 <= len(item_id) <= MAX_ID_CHARS:
            raise ValueError(
                f"items[{i}].id: expected a string of 1 to {MAX_ID_CHARS} characters, got {item_id!r}"
            )
        payload = item.get("payload")
        if payload is not None and not isinstance(payload, dict):
            raise ValueError(f"items[{i}].payload: expected an object or null, got {type(payload).__name__}")
        if "vector" in item:
            if "vector_b64" in item:
                raise ValueError(f"items[{i}]: expected exactly one of vector, vector_b64; got both")
            row = item["vector"]
            if not isinstance(row, list) or len(row) != dim:
                vector_from_list(row, dim, f"items[{i}].vector")  # raises, with the numbers
            list_at.append(i)
            list_rows.append(row)
        elif "vector_b64" in item:
            b64_at.append(i)
            b64_rows.append(decode_b64(item["vector_b64"], dim, f"items[{i}].vector_b64"))
        else:
            raise ValueError(f"items[{i}]: expected exactly one of vector, vector_b64; got neither")
        ids.append(item_id)
        payloads.append(payload)
    if not b64_rows:
        vectors = vectors_from_lists(list_rows, dim, "items[].vector")
    elif not list_rows:
        vectors = vectors_from_bytes(b"".join(b64_rows), dim, "items[].vector_b64")
    else:
        vectors = np.empty((len(items), dim), dtype=np.float32)
        vectors[list_at] = vectors_from_lists(list_rows, dim, "items[].vector")
        vectors[b64_at] = vectors_from_bytes(b"".join(b64_rows), dim, "items[].vector_b64")
    return ids, vectors, payloads


@router.get("/{item_id:path}", response_model=VectorRecord, responses=error_responses(404))
async def get_vector(collection: CollectionDep, item_id: str = ItemId):
    vector, payload = await run_in_threadpool(collection.get, item_id)  # NotFound -> 404
    return dumps({"id": item_id, "vector": vector, "payload": payload})


@router.delete("/{item_id:path}", response_model=DeletedCount, responses=error_responses(404))
async def delete_vector(collection: CollectionDep, item_id: str = ItemId):
    if await run_in_threadpool(collection.delete, [item_id]) == 0:
        raise NotFound(f"vector {item_id!r} not found in collection {collection.name!r}")
    return dumps({"deleted": 1})


# No clash with the id routes above: they answer GET and DELETE, this one POST.
@router.post(
    "/delete",
    response_model=DeletedCount,
    responses=error_responses(404, 413, 422),
    openapi_extra=raw_body(DeleteIdsRequest),
)
async def delete_vectors(
    body: Annotated[DeleteIdsRequest, JsonBody(DeleteIdsRequest)], collection: CollectionDep
):
    """Delete many items by id; unknown ids are skipped (`deleted` counts the rest)."""
    return dumps({"deleted": await run_in_threadpool(collection.delete, body.ids)})

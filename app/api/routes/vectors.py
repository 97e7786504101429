"""Vectors of a collection: upsert in batches, get, delete."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.concurrency import run_in_threadpool

from ...engine.collection import Collection
from ..deps import CollectionDep, SettingsDep
from ...settings import Settings
from ...engine.errors import NotFound
from ..schemas import (
    DeletedCount,
    DeleteIdsRequest,
    UpsertRequest,
    UpsertResponse,
    VectorRecord,
    error_responses,
)
from ..transport import simd_rows
from ..transport.json_pieces import Converted, convert_list
from ..transport.parsing import (
    decode_b64,
    dumps,
    joined,
    load_object,
    parse_body,
    vector_from_list,
    vectors_from_b64_rows,
    vectors_from_byte_rows,
    vectors_from_lists,
)
from ..transport.raw_body import JsonBody, body_chunks, raw_body
from ...cluster.ownership import check_owned  # shard nodes (app/cluster/)

router = APIRouter(prefix="/collections/{name}/vectors", tags=["vectors"])
ItemId = Path(description="item id")

_UPSERT_FIELDS = frozenset({"items"})
_ITEM_FIELDS = frozenset({"id", "vector", "vector_b64", "payload"})


@router.post(
    "",
    response_model=UpsertResponse,
    responses=error_responses(404, 413, 422, 503, 507),
    openapi_extra=raw_body(UpsertRequest),
)
async def upsert_vectors(request: Request, collection: CollectionDep, settings: SettingsDep):
    """Insert or replace items; once the 200 is sent the write survives a crash."""
    dim, cap = collection.dim, settings.max_upsert_batch
    chunks = await body_chunks(request.stream())
    fast = settings.json_fast_path
    ids, vectors, payloads = await parse_body(chunks, lambda raw: _parse_upsert(raw, dim, cap, fast))
    # The engine checks the items, writes them to its store and syncs: off the event loop.
    return dumps({"upserted": await run_in_threadpool(_write, collection, ids, vectors, payloads, settings)})


def _parse_upsert(
    raw: bytes | bytearray, dim: int, max_items: int, fast: bool = True
) -> tuple[list, np.ndarray, list]:  # fmt: skip
    body = load_object(
        raw, _UPSERT_FIELDS, "items", lambda run, first: item_run(run, first, dim),
        simd_rows.item_rows(dim) if fast else None,
    )  # fmt: skip
    return parse_items(body.get("items"), dim, max_items)


def _write(collection: Collection, ids: list, vectors: np.ndarray, payloads: list, settings: Settings) -> int:
    # Cluster hook: 421 naming the owner. An id that is not a string is the engine's to reject.
    if settings.shard_index is not None and all(isinstance(i, str) for i in ids):
        check_owned(ids, settings.shard_index, settings.shard_count)
    return collection.upsert(ids, vectors, payloads)


def parse_items(items, dim: int, max_items: int) -> tuple[list, np.ndarray, list]:
    """`items` of the upsert body (its JSON list, or that list as `load_object` converted it
    with `item_run`) -> ids, (n, dim) float32 vectors, payloads, by position.

    Only the structure is checked here (objects with an id and exactly one of vector and
    vector_b64, lists of `dim` numbers, base64 of `dim` float32); the ids, the values and the
    payloads are the engine's to check (`Collection.upsert`), once."""
    if isinstance(items, list):
        items = convert_list(items, lambda run, first: item_run(run, first, dim))
    if not isinstance(items, Converted) or not items.count:
        raise ValueError("items: expected a non-empty list of {id, vector, payload} objects")
    if items.count > max_items:
        raise ValueError(
            f"items: expected at most {max_items} per request (ANNSERVE_MAX_UPSERT_BATCH), got {items.count}"
        )
    runs = items.results()
    if len(runs) == 1:
        return runs[0]
    ids = [item_id for run in runs for item_id in run[0]]
    payloads = [payload for run in runs for payload in run[2]]
    return ids, joined([run[1] for run in runs]), payloads


def item_run(items: list, first: int, dim: int) -> tuple[list, np.ndarray, list]:
    """ids, (n, dim) float32 vectors and payloads of consecutive upsert items, `items[0]` being
    the request's item number `first` (for the messages)."""
    try:
        return _item_run(items, first, dim, b64_together=True)
    except ValueError:
        # Item by item, which raises the first error in the items' order, with its message.
        return _item_run(items, first, dim, b64_together=False)


def _item_run(items: list, first: int, dim: int, b64_together: bool) -> tuple[list, np.ndarray, list]:
    """`item_run`; base64 rows decoded all together after the structure checks when
    `b64_together` (any bad row raises then, unnamed), else each one where it comes."""
    ids: list = []
    payloads: list = []
    # Rows given as JSON lists and as base64, by position; each kind is converted together.
    list_at: list[int] = []
    list_rows: list[list] = []
    b64_at: list[int] = []
    b64_rows: list[bytes] = []
    for at, item in enumerate(items):
        i = first + at
        if not isinstance(item, dict):
            raise ValueError(f"items[{i}]: expected an object with id, vector and payload")
        if not item.keys() <= _ITEM_FIELDS:
            raise ValueError(
                f"items[{i}]: unknown field(s) {sorted(item.keys() - _ITEM_FIELDS)}; "
                f"expected some of {sorted(_ITEM_FIELDS)}"
            )
        if "id" not in item:
            raise ValueError(f"items[{i}]: expected an id, got the fields {sorted(item)}")
        if "vector" in item:
            if "vector_b64" in item:
                raise ValueError(f"items[{i}]: expected exactly one of vector, vector_b64; got both")
            row = item["vector"]
            if not isinstance(row, list) or len(row) != dim:
                vector_from_list(row, dim, f"items[{i}].vector")  # raises, with the numbers
            list_at.append(at)
            list_rows.append(row)
        elif "vector_b64" in item:
            b64_at.append(at)
            value = item["vector_b64"]
            b64_rows.append(value if b64_together else decode_b64(value, dim, f"items[{i}].vector_b64"))
        else:
            raise ValueError(f"items[{i}]: expected exactly one of vector, vector_b64; got neither")
        ids.append(item["id"])
        payloads.append(item.get("payload"))
    b64_vectors = vectors_from_b64_rows if b64_together else vectors_from_byte_rows
    if not b64_rows:
        vectors = vectors_from_lists(list_rows, dim, "items[].vector")
    elif not list_rows:
        vectors = b64_vectors(b64_rows, dim)
    else:
        vectors = np.empty((len(items), dim), dtype=np.float32)
        vectors[list_at] = vectors_from_lists(list_rows, dim, "items[].vector")
        vectors[b64_at] = b64_vectors(b64_rows, dim)
    return ids, vectors, payloads


@router.get("/{item_id:path}", response_model=VectorRecord, responses=error_responses(404))
async def get_vector(collection: CollectionDep, item_id: str = ItemId):
    vector, payload = await run_in_threadpool(collection.get, item_id)  # NotFound -> 404
    return dumps({"id": item_id, "vector": vector, "payload": payload})


@router.delete("/{item_id:path}", response_model=DeletedCount, responses=error_responses(404, 503, 507))
async def delete_vector(collection: CollectionDep, item_id: str = ItemId):
    if await run_in_threadpool(collection.delete, [item_id]) == 0:
        raise NotFound(f"vector {item_id!r} not found in collection {collection.name!r}")
    return dumps({"deleted": 1})


# No clash with the id routes above: they answer GET and DELETE, this one POST.
@router.post(
    "/delete",
    response_model=DeletedCount,
    responses=error_responses(404, 413, 422, 503, 507),
    openapi_extra=raw_body(DeleteIdsRequest),
)
async def delete_vectors(
    body: Annotated[DeleteIdsRequest, JsonBody(DeleteIdsRequest)], collection: CollectionDep
):
    """Delete many items by id; unknown ids are skipped (`deleted` counts the rest)."""
    return dumps({"deleted": await run_in_threadpool(collection.delete, body.ids)})

"""The router's HTTP API: the node's public API (CONTRACT section 3) over the whole cluster, plus
`allow_partial` on searches. Each route reads its raw body and hands it to the module that does
the work (collections, items, search, jobs); answers are serialised by orjson.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..api.routes.snapshots import SnapshotInfo, SnapshotList, SnapshotRequest
from ..api.schemas import (
    BatchSearchRequest,
    BatchSearchResponse,
    CollectionCreate,
    CollectionPatch,
    CollectionDeleted,
    CollectionInfo,
    CollectionList,
    DeletedCount,
    DeleteIdsRequest,
    JobInfo,
    RebuildAccepted,
    RecallInfo,
    SearchRequest,
    SearchResponse,
    Status,
    TuneAnswer,
    TuneRequest,
    UpsertRequest,
    UpsertResponse,
    VectorRecord,
    error_responses,
)
from ..api.transport.parsing import dumps
from ..api.transport.raw_body import JsonBody, raw_body
from . import collections, items, jobs, recall, search, snapshots
from .state import state_of

router = APIRouter()
Name = Annotated[str, Path(description="collection name")]
ItemId = Path(description="item id")
_SHARD_ERRORS = error_responses(404, 413, 422, 503)


# ---- search (hot: first) ------------------------------------------------------------------


@router.post(
    "/collections/{name}/search", tags=["search"], response_model=SearchResponse,
    responses=_SHARD_ERRORS, openapi_extra=raw_body(SearchRequest),
)  # fmt: skip
async def search_one(request: Request, name: Name):
    """The k nearest items over every shard; `"allow_partial": true` answers without a shard that
    is down (`partial`, `failed_shards`) instead of 503."""
    return dumps(await search.answer_search(state_of(request), name, await request.body()))


@router.post(
    "/collections/{name}/search/batch", tags=["search"], response_model=BatchSearchResponse,
    responses=_SHARD_ERRORS, openapi_extra=raw_body(BatchSearchRequest),
)  # fmt: skip
async def search_batch(request: Request, name: Name):
    return dumps(await search.answer_batch(state_of(request), name, await request.body()))


# ---- vectors ------------------------------------------------------------------------------


@router.post(
    "/collections/{name}/vectors", tags=["vectors"], response_model=UpsertResponse,
    responses=_SHARD_ERRORS, openapi_extra=raw_body(UpsertRequest),
)  # fmt: skip
async def upsert_vectors(request: Request, name: Name):
    """Each item to every replica of its owner shard; 200 once all of them acknowledged."""
    return dumps(await items.upsert(state_of(request), name, await request.body()))


@router.post(
    "/collections/{name}/vectors/delete", tags=["vectors"], response_model=DeletedCount,
    responses=_SHARD_ERRORS, openapi_extra=raw_body(DeleteIdsRequest),
)  # fmt: skip
async def delete_vectors(
    request: Request, name: Name, body: Annotated[DeleteIdsRequest, JsonBody(DeleteIdsRequest)]
):
    return dumps(await items.delete_many(state_of(request), name, body.ids))


@router.get(
    "/collections/{name}/vectors/{item_id:path}", tags=["vectors"], response_model=VectorRecord,
    responses=error_responses(404, 503),
)  # fmt: skip
async def get_vector(request: Request, name: Name, item_id: str = ItemId):
    content = await items.get(state_of(request), name, item_id)
    return Response(content, media_type="application/json")


@router.delete(
    "/collections/{name}/vectors/{item_id:path}", tags=["vectors"], response_model=DeletedCount,
    responses=error_responses(404, 503),
)  # fmt: skip
async def delete_vector(request: Request, name: Name, item_id: str = ItemId):
    return dumps(await items.delete_one(state_of(request), name, item_id))


# ---- collections and jobs -----------------------------------------------------------------


@router.post(
    "/collections", tags=["collections"], status_code=status.HTTP_201_CREATED, response_model=CollectionInfo,
    responses=error_responses(409, 413, 422, 503), openapi_extra=raw_body(CollectionCreate),
)  # fmt: skip
async def create_collection(request: Request):
    """Create the collection on every node (one shard per entry of ANNSERVE_SHARD_URLS)."""
    info = await collections.create(state_of(request), await request.body())
    return dumps(info, status_code=201)


@router.get("/collections", tags=["collections"], response_model=CollectionList, responses=error_responses(503))
async def list_collections(request: Request):
    return dumps(await collections.list_all(state_of(request)))


@router.get(
    "/collections/{name}", tags=["collections"], response_model=CollectionInfo, responses=error_responses(404, 503)
)
async def get_collection(request: Request, name: Name):
    """Counts summed over the shards; `shard_info` has each shard's."""
    return dumps(await collections.info(state_of(request), name))


@router.delete(
    "/collections/{name}", tags=["collections"], response_model=CollectionDeleted,
    responses=error_responses(404, 503),
)  # fmt: skip
async def delete_collection(request: Request, name: Name):
    return dumps(await collections.delete(state_of(request), name))


@router.post(
    "/collections/{name}/rebuild", tags=["collections"], status_code=status.HTTP_202_ACCEPTED,
    response_model=RebuildAccepted, responses=error_responses(404, 409, 503),
)  # fmt: skip
async def rebuild_collection(request: Request, name: Name):
    """Start a rebuild on every node; `GET /jobs/{job_id}` follows all of them as one job."""
    accepted = await jobs.start_rebuild(state_of(request), name)
    return dumps(accepted, status_code=202)


@router.patch(
    "/collections/{name}", tags=["collections"], response_model=CollectionInfo,
    responses=error_responses(404, 413, 422, 503), openapi_extra=raw_body(CollectionPatch),
)  # fmt: skip
async def patch_collection(request: Request, name: Name):
    """Change recall_target, recall_floor, auto_tune, search_params on every node (every replica);
    503 naming a node that failed (resend: it is idempotent)."""
    return dumps(await recall.patch(state_of(request), name, await request.body()))


@router.get(
    "/collections/{name}/recall", tags=["recall"], response_model=RecallInfo, responses=error_responses(404, 503)
)
async def get_recall(request: Request, name: Name):
    """Online recall@k: the samples-weighted mean of every node's (`shards`, `nodes`: theirs)."""
    return dumps(await recall.recall(state_of(request), name))


@router.post(
    "/collections/{name}/tune", tags=["recall"], response_model=TuneAnswer,
    responses=error_responses(404, 409, 413, 422, 503), openapi_extra=raw_body(TuneRequest, required=False),
)  # fmt: skip
async def tune_collection(request: Request, name: Name):
    """Every node tunes its shard to `target_recall`; what each chose (`nodes`), the lowest recall
    measured, the largest knob value chosen."""
    return dumps(await recall.tune(state_of(request), name, await request.body()))


@router.post(
    "/collections/{name}/snapshots", tags=["snapshots"], status_code=status.HTTP_201_CREATED,
    responses=error_responses(404, 413, 422, 503), openapi_extra=raw_body(SnapshotRequest, required=False),
)  # fmt: skip
async def create_snapshot(request: Request, name: Name):
    """One snapshot file per shard (on one replica of each), taken together: each shard's file in
    `snapshots`; restore each onto its shard's nodes (`annserve restore`)."""
    return dumps(await snapshots.create(state_of(request), name, await request.body()), status_code=201)


@router.get(
    "/collections/{name}/snapshots", tags=["snapshots"], response_model=SnapshotList,
    responses=error_responses(404, 503),
)  # fmt: skip
async def list_snapshots(request: Request, name: Name):
    """Every node's snapshot files of the collection, each with its `shard` and `node`, oldest first."""
    return dumps(await snapshots.list_all(state_of(request), name))


@router.get(
    "/collections/{name}/snapshots/{snapshot}", tags=["snapshots"], response_class=Response,
    responses={200: {"content": {"application/x-tar": {}}}, **error_responses(404, 422, 503)},
)  # fmt: skip
async def download_snapshot(request: Request, name: Name, snapshot: str):
    """The file, streamed from the node that holds it (header `x-annserve-shard`: its shard)."""
    return await snapshots.download(state_of(request), name, snapshot)


@router.delete(
    "/collections/{name}/snapshots/{snapshot}", tags=["snapshots"], response_model=SnapshotInfo,
    responses=error_responses(404, 422, 503),
)  # fmt: skip
async def delete_snapshot(request: Request, name: Name, snapshot: str):
    return dumps(await snapshots.delete(state_of(request), name, snapshot))


@router.get("/jobs/{job_id}", tags=["jobs"], response_model=JobInfo, responses=error_responses(404))
async def get_job(request: Request, job_id: str):
    return dumps(await jobs.job(state_of(request), job_id))


# ---- health -------------------------------------------------------------------------------


@router.get("/healthz", tags=["health"], response_model=Status)
async def healthz() -> dict:
    """200 while the router runs (it holds no data; the nodes are /readyz's business)."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], response_model=Status, responses=error_responses(503))
async def readyz(request: Request):
    """200 when every shard has a replica whose /readyz answers 200, else 503 naming the shards."""
    state = state_of(request)
    outcomes = await state.nodes.every_node("GET", "/readyz", timeout=state.settings.shard_timeout_seconds)
    ready = {shard for shard, _, outcome in outcomes if not isinstance(outcome, str) and outcome.status == 200}
    down = [s for s in state.shards if s.index not in ready]
    if down:
        said = {url: (o if isinstance(o, str) else f"{o.status}: {o.detail}") for _, url, o in outcomes}
        detail = "; ".join(
            f"{s.describe()} has no ready replica ({', '.join(f'{u}: {said[u]}' for u in s.replicas)})"
            for s in down
        )
        return JSONResponse({"detail": detail}, status_code=503)
    return {"status": "ready"}


@router.get("/metrics", tags=["health"], response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format, `annserve_router_*`."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

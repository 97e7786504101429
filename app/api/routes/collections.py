"""Collections: create, list, describe, delete, rebuild."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, status

from ..deps import CollectionDep, CollectionName, ManagerDep, SettingsDep
from ..schemas import (
    CollectionCreate,
    CollectionDeleted,
    CollectionInfo,
    CollectionList,
    RebuildAccepted,
    RebuildRequest,
    error_responses,
)
from ..transport.raw_body import JsonBody, raw_body

router = APIRouter(prefix="/collections", tags=["collections"])

# Plain `def` routes: the engine may touch the disk here, so FastAPI runs them in its threadpool.


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CollectionInfo,
    responses=error_responses(409, 413, 422),
    openapi_extra=raw_body(CollectionCreate),
)
def create_collection(
    body: Annotated[CollectionCreate, JsonBody(CollectionCreate)], manager: ManagerDep, settings: SettingsDep
) -> dict:
    """Create an empty collection; 409 if the name is taken."""
    if body.dim > settings.max_dim:
        raise ValueError(f"dim: expected at most {settings.max_dim} (ANNSERVE_MAX_DIM), got {body.dim}")
    collection = manager.create(
        body.name, body.dim, body.metric, body.index.kind, body.index.params, shards=body.shards,
        recall_target=body.recall_target, recall_floor=body.recall_floor, auto_tune=body.auto_tune,
        search_params=body.search_params,
    )
    return collection.info()


@router.get("", response_model=CollectionList)
def list_collections(manager: ManagerDep) -> dict:
    return {"collections": [c.info() for c in manager.list()]}


@router.get("/{name}", response_model=CollectionInfo, responses=error_responses(404))
def get_collection(collection: CollectionDep) -> dict:
    return collection.info()


@router.delete("/{name}", response_model=CollectionDeleted, responses=error_responses(404))
def delete_collection(name: CollectionName, manager: ManagerDep) -> dict:
    """Delete the collection and its data."""
    manager.delete(name)
    return {"name": name, "deleted": True}


@router.post(
    "/{name}/rebuild",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RebuildAccepted,
    responses=error_responses(404, 409, 422),
    openapi_extra=raw_body(RebuildRequest, required=False),
)
def rebuild_collection(
    name: CollectionName, manager: ManagerDep, body: Annotated[RebuildRequest, JsonBody(RebuildRequest, "{}")]
) -> dict:
    """Start building a new main index in the background; poll `GET /jobs/{job_id}`. 409 while one runs."""
    job = manager.start_rebuild(name)
    return {"job_id": job.id}

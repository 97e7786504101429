"""Snapshots of a collection (admin): take one while writes go on, list them, download one
(streamed), delete one. Restoring is offline: `annserve restore FILE --data-dir DIR [--as NAME]`.
See engine/snapshots.py for what a snapshot holds and how its shards are kept consistent."""

from __future__ import annotations

import errno
from typing import Annotated

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from ...engine import snapshots
from ..deps import CollectionDep, CollectionName, SettingsDep
from ..schemas import ErrorDetail, error_responses
from ..transport.raw_body import JsonBody, raw_body

router = APIRouter(prefix="/collections/{name}/snapshots", tags=["snapshots"])

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_STORAGE = {
    507: {"model": ErrorDetail, "description": "no space left to write the snapshot"},
    503: {"model": ErrorDetail, "description": "an I/O error while writing the snapshot"},
}


class SnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_index: bool = Field(
        True,
        description="also store the main index files, so a restored collection answers searches "
        "at once exactly as this one did; false makes a smaller file whose items are served "
        "exactly until the first rebuild",
    )


class SnapshotInfo(BaseModel):
    name: str = Field(description="file name, unique; use it to download")
    bytes: int
    created_at: str = Field(description="ISO 8601, UTC")


class SnapshotList(BaseModel):
    snapshots: list[SnapshotInfo] = Field(description="oldest first")


# Plain `def` routes: they read and write files, so FastAPI runs them in its threadpool.


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SnapshotInfo,
    responses={**error_responses(404, 422), **_STORAGE},
    openapi_extra=raw_body(SnapshotRequest, required=False),
)
def create_snapshot(
    collection: CollectionDep,
    settings: SettingsDep,
    body: Annotated[SnapshotRequest, JsonBody(SnapshotRequest, "{}")],
) -> dict:
    """Write a consistent snapshot file of the collection (all shards at one point in time)
    while writes and searches continue."""
    try:
        info = snapshots.create_snapshot(collection, settings.data_dir, include_index=body.include_index)
    except OSError as exc:
        code = 507 if exc.errno in _NO_SPACE else 503
        raise HTTPException(code, detail=f"snapshot of {collection.name!r} not written: {exc}") from exc
    return info.to_dict()


@router.get("", response_model=SnapshotList, responses=error_responses(404))
def list_snapshots(collection: CollectionDep, settings: SettingsDep) -> dict:
    return {"snapshots": [s.to_dict() for s in snapshots.list_snapshots(settings.data_dir, collection.name)]}


@router.get(
    "/{snapshot}",
    response_class=FileResponse,
    responses={200: {"content": {"application/x-tar": {}}}, **error_responses(404, 422)},
)
def download_snapshot(name: CollectionName, snapshot: str, settings: SettingsDep) -> FileResponse:
    """The snapshot file, streamed (a tar: manifest.json, collection.json, shard-<i>/...).
    Works for a collection deleted since: its snapshots stay."""
    path = snapshots.snapshot_path(settings.data_dir, name, snapshot)  # ValueError, NotFound
    return FileResponse(path, media_type="application/x-tar", filename=snapshot)


@router.delete("/{snapshot}", response_model=SnapshotInfo, responses=error_responses(404, 422))
def delete_snapshot(name: CollectionName, snapshot: str, settings: SettingsDep) -> dict:
    return snapshots.delete_snapshot(settings.data_dir, name, snapshot).to_dict()

"""Online recall of a collection, its recall settings, and the tuner (engine/recall.py, tuning.py).

`read_router` holds what a read key may see (the recall figure); `admin_router` what changes a
collection (PATCH, tune), so that a key gate can be put on the latter where it is included.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from ...engine.tuning import tune
from ...engine.worker_stats import figures_of
from ..deps import CollectionDep, ManagerDep, SettingsDep
from ..schemas import CollectionInfo, CollectionPatch, RecallInfo, TuneAnswer, TuneRequest, error_responses
from ..transport.raw_body import JsonBody, raw_body

read_router = APIRouter(prefix="/collections", tags=["recall"])
admin_router = APIRouter(prefix="/collections", tags=["recall"])

# Plain `def` routes: FastAPI runs them in its threadpool, off the event loop (a tuning runs
# hundreds of searches; a PATCH writes collection.json).


@read_router.get("/{name}/recall", response_model=RecallInfo, responses=error_responses(404))
def get_recall(collection: CollectionDep, manager: ManagerDep) -> dict:
    """Online recall@k: the mean over the last `window` sampled live searches, each re-run exactly
    (with several workers, the newest `window` samples of them all: the same figure from each)."""
    view = manager.worker_stats.merged() if manager.worker_stats is not None else None
    return {
        **figures_of(collection, view).recall,
        "target": collection.spec.recall_target,
        "floor": collection.spec.recall_floor,
    }


@admin_router.patch(
    "/{name}",
    response_model=CollectionInfo,
    responses=error_responses(404, 413, 422),
    openapi_extra=raw_body(CollectionPatch),
)
def patch_collection(
    collection: CollectionDep, body: Annotated[CollectionPatch, JsonBody(CollectionPatch)]
) -> dict:
    """Change recall_target, recall_floor, auto_tune, search_params (persisted); answers the info."""
    changes = body.model_dump(exclude_unset=True)
    for name, value in changes.items():
        if value is None:
            raise ValueError(f"{name}: expected a value, got null (leave the field out to keep it)")
    collection.configure(**changes)
    return collection.info()


@admin_router.post(
    "/{name}/tune",
    response_model=TuneAnswer,
    responses=error_responses(404, 409, 413, 422),
    openapi_extra=raw_body(TuneRequest, required=False),
)
def tune_collection(
    collection: CollectionDep, settings: SettingsDep, body: Annotated[TuneRequest, JsonBody(TuneRequest, "{}")]
) -> dict:
    """Set the smallest search knob that meets `target_recall` on sampled queries (recent real
    ones, else stored items) as the collection's default; 422 with the best recall found when
    no value does, 409 with no main index built yet."""
    if body.k > settings.max_k:
        raise ValueError(f"k: expected at most {settings.max_k} (ANNSERVE_MAX_K), got {body.k}")
    return tune(collection, body.target_recall, body.k)

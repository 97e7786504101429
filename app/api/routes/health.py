"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

import os

from ...engine.worker_stats import resident_memory_bytes
from ..schemas import Status, WorkersInfo, error_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Status, responses=error_responses(503))
async def healthz(request: Request) -> dict | JSONResponse:
    """200 while the process can serve; 503 if loading the collections failed (restart it)."""
    if request.app.state.open_error is not None:
        return JSONResponse({"detail": request.app.state.not_ready_reason()}, status_code=503)
    return {"status": "ok"}


@router.get("/readyz", response_model=Status, responses=error_responses(503))
async def readyz(request: Request) -> dict | JSONResponse:
    """200 once the collections are loaded and searches can be served, else 503."""
    manager = request.app.state.manager
    if manager is None or not manager.is_ready:
        return JSONResponse({"detail": request.app.state.not_ready_reason()}, status_code=503)
    return {"status": "ready"}


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics(request: Request) -> Response:
    """Prometheus text format: requests, latencies, items per collection."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/workers", response_model=WorkersInfo, responses=error_responses(503))
def workers(request: Request) -> dict | JSONResponse:
    """The processes serving this port and their resident memory (`annserve serve --workers N`;
    one entry with one process). A plain `def`: reading every worker's figures touches files."""
    manager = request.app.state.manager
    if manager is None or not manager.is_ready:
        return JSONResponse({"detail": request.app.state.not_ready_reason()}, status_code=503)
    pid = os.getpid()
    if manager.worker_stats is None:
        listed = [{"pid": pid, "resident_memory_bytes": resident_memory_bytes(pid)}]
    else:
        listed = [{"pid": w["pid"], "resident_memory_bytes": w["resident_memory_bytes"]}
                  for w in manager.worker_stats.merged().workers]
    return {"answered_by": pid, "workers": listed}

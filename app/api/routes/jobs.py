"""Background jobs (rebuilds): their state and progress."""

from __future__ import annotations

from fastapi import APIRouter

from ..deps import ManagerDep
from ..schemas import JobInfo, error_responses

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("/{job_id}", response_model=JobInfo, responses=error_responses(404))
async def get_job(job_id: str, manager: ManagerDep) -> dict:
    return manager.jobs.get(job_id).to_dict()  # NotFound -> 404

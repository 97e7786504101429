"""The HTTP API: one router per resource (CONTRACT section 3)."""

from fastapi import APIRouter

from . import collections, health, jobs, recall, search, snapshots, vectors

api_router = APIRouter()
# Routes are matched in order: the hot ones first.
api_router.include_router(search.router)
api_router.include_router(vectors.router)
api_router.include_router(collections.router)
api_router.include_router(jobs.router)
api_router.include_router(recall.read_router)
api_router.include_router(recall.admin_router)  # changes a collection: for admin keys
api_router.include_router(snapshots.router)
api_router.include_router(health.router)

__all__ = ["api_router"]

"""Dependencies the routes share, as `Annotated` aliases (the full-stack-fastapi-template habit).

They are `async def` on purpose: FastAPI runs a plain `def` dependency in the threadpool, which
would cost a thread hop per request for what is a dictionary lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Request
from starlette.datastructures import State

from ..engine.collection import Collection
from ..engine.manager import CollectionManager
from ..settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_manager(request: Request) -> CollectionManager:
    return ready_manager(request.app.state)


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[CollectionManager, Depends(get_manager)]
CollectionName = Annotated[str, Path(description="collection name")]


async def get_collection(name: CollectionName, manager: ManagerDep) -> Collection:
    return manager.get(name)  # NotFound -> 404


def ready_manager(state: State) -> CollectionManager:
    """The app's manager (`app.state`), or 503 while it is still loading the collections."""
    manager = state.manager
    if manager is None or not manager.is_ready:
        raise HTTPException(503, detail=state.not_ready_reason())
    return manager


CollectionDep = Annotated[Collection, Depends(get_collection)]

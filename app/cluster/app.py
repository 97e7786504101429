"""The router's FastAPI application (a node started with `ANNSERVE_SHARD_URLS`): no data, no
collection manager; the node client is opened in the lifespan and closed after it.

It shares the node's error mapping (`{"detail": ...}`, engine errors to 4xx), API keys (the
same roles, checked at the router; the nodes are called with the router's admin key), body limit
and request metrics middleware; the metrics object (RouterMetrics, `annserve_router_*`), the routes
and the search hot path (hot_path.py) are its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..api.app import _add_error_handlers, _version
from ..api.auth import AuthMiddleware, KeyRing
from ..api.transport.body_limit import BodyLimitMiddleware
from ..api.transport.metrics import MetricsMiddleware
from ..settings import Settings
from .hot_path import RouterHotPath
from .metrics import RouterMetrics
from .routes import router
from .state import RouterState
from .topology import Topology


def create_router_app(settings: Settings | None = None) -> FastAPI:
    """The router for `settings.shard_urls` (ValueError naming a bad entry)."""
    settings = settings or Settings()
    topology = Topology.parse(settings.shard_urls)
    state = RouterState(settings, topology)
    metrics = RouterMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.open(metrics)
        try:
            yield
        finally:
            await state.nodes.aclose()

    app = FastAPI(
        title="annserve router",
        version=_version(),
        summary=f"Scatter-gather over {topology.n_shards} annserve shards",
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.router = state
    app.state.metrics = metrics
    app.include_router(router)
    _add_error_handlers(app)
    # The last added runs first: metrics see every request, the hot path sits inside the body limit.
    app.add_middleware(RouterHotPath, state=state)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    # The client's key is checked here, as a node checks it; the nodes get the router's own key.
    app.add_middleware(AuthMiddleware, keys=KeyRing.from_settings(settings))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app

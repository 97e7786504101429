"""The FastAPI application: lifespan (the collection manager), error mapping, middleware."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException

from .auth import AuthMiddleware, KeyRing, add_security
from .routes import api_router
from .transport.batching import SearchBatcher
from .transport.body_limit import BodyLimitMiddleware
from .error_mapping import error_answer
from .transport.hot_path import HotPathMiddleware
from .transport.metrics import MetricsMiddleware, ServiceMetrics
from .transport.raw_body import RAW_BODY_MODELS
from ..engine.errors import Conflict, NotFound, StorageError
from ..engine.manager import CollectionManager
from ..engine.memory import limit_arenas
from .schemas import ErrorDetail
from ..settings import Settings

log = logging.getLogger("annserve")


def create_app(settings: Settings | None = None, hot_path: bool = True) -> FastAPI:
    """The service for `settings` (read from ANNSERVE_* when not given). `hot_path=False`
    leaves the searches to the router (same answers, more overhead; for tests)."""
    settings = settings or Settings()
    limit_arenas()  # before the service's threads start (engine/memory.py)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        manager = CollectionManager(settings)
        app.state.manager = manager
        app.state.batcher = SearchBatcher(max_rows=settings.max_batch, on_loop=settings.search_on_loop)
        # Opening loads every collection (indexes from disk, fresh items from the store), which
        # can take a while: do it in the background so /healthz answers at once and /readyz
        # says 503 until the manager is ready.
        opener = threading.Thread(target=_open, args=(app, manager), name="annserve-open", daemon=True)
        opener.start()
        interval = settings.loop_lag_interval_seconds
        probe = asyncio.create_task(app.state.metrics.probe_loop_lag(interval)) if interval else None
        try:
            yield
        finally:
            if probe is not None:
                probe.cancel()
            app.state.batcher.close()
            opener.join()
            if app.state.open_error is None:
                manager.close()
            app.state.manager = None

    app = FastAPI(
        title="annserve",
        version=_version(),
        summary="Vector search: FAISS, hnswlib and in-house indexes behind one HTTP API",
        lifespan=lifespan,
        # Prometheus is exported by us (api/metrics.py); FastAPI's native OpenTelemetry would
        # look up the global providers on every request for nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.manager = None
    app.state.open_error = None
    app.state.not_ready_reason = lambda: _not_ready_reason(app)
    app.state.metrics = ServiceMetrics(lambda: _live_collections(app), lambda: worker_view(app))
    app.include_router(api_router)
    _add_error_handlers(app)
    # Pure ASGI middleware (no BaseHTTPMiddleware: it would cost a task per request).
    # The last added runs first: metrics see every request, 413s included; the hot path sits
    # inside the body limit.
    if hot_path:
        app.add_middleware(HotPathMiddleware, state=app.state)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    # Keys are checked before a body byte is read, for every route the hot path included.
    app.add_middleware(AuthMiddleware, keys=KeyRing.from_settings(settings))
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics, worker_header=(settings.workers or 1) > 1)
    app.openapi = lambda: _openapi(app)
    return app


def _version() -> str:
    try:
        return importlib.metadata.version("annserve")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _open(app: FastAPI, manager: CollectionManager) -> None:
    try:
        manager.open()
    except Exception as exc:  # noqa: BLE001 - reported by /healthz and /readyz, and logged
        log.exception("opening the collections failed")
        app.state.open_error = exc


def _not_ready_reason(app: FastAPI) -> str:
    if app.state.open_error is not None:
        error = app.state.open_error
        return f"opening the collections failed: {type(error).__name__}: {error}"
    return "not ready: the collections are still being loaded"


def _live_collections(app: FastAPI) -> list:
    manager = app.state.manager
    return manager.list() if manager is not None and manager.is_ready else []


def worker_view(app: FastAPI):
    """Every worker's figures merged (engine/worker_stats.py); None with one process or while starting."""
    manager = app.state.manager
    if manager is None or not manager.is_ready or manager.worker_stats is None:
        return None
    return manager.worker_stats.merged()


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is `{"detail": "<what is wrong>"}`: engine errors map to 4xx by type."""

    async def client_or_bug(request: Request, exc: Exception) -> JSONResponse:
        status, detail = error_answer(exc, request.method, request.url.path)
        return JSONResponse({"detail": detail}, status_code=status, headers=getattr(exc, "headers", None))

    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_validation_errors(exc.errors())}, status_code=422)

    async def body_validation_error(request: Request, exc: ValidationError) -> JSONResponse:
        # From JsonBody: the same shape and wording as FastAPI's own request validation.
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        return JSONResponse({"detail": describe_validation_errors(errors)}, status_code=422)

    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ValidationError, body_validation_error)
    # StorageError gets its own entry: an error left to the `Exception` handler is answered by
    # Starlette's ServerErrorMiddleware, which re-raises after answering, and uvicorn then drops
    # the keep-alive connection (the client's next request on it fails: tests/test_disk_full.py).
    for kind in (StarletteHTTPException, NotFound, Conflict, ValueError, StorageError, Exception):
        app.add_exception_handler(kind, client_or_bug)


def describe_validation_errors(errors: list[dict]) -> str:
    """FastAPI's list of errors -> one readable line: `body.dim: Input should be ... (got 0)`."""
    parts = []
    for error in errors:
        loc = ".".join(str(part) for part in error.get("loc", ()))
        message = error.get("msg", "invalid")
        if error.get("type") == "json_invalid":
            message = f"invalid JSON ({error.get('ctx', {}).get('error', '')})"
            loc = "body"
        text = f"{loc}: {message}" if loc else message
        if "input" in error and error.get("type") not in ("missing", "json_invalid"):
            text += f" (got {_short(error['input'])})"
        parts.append(text)
    return "; ".join(parts) or "invalid request"


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema plus the bodies of the routes that parse their raw body themselves."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes
        )
        _, defs = models_json_schema(
            [(model, "validation") for model in RAW_BODY_MODELS],
            ref_template="#/components/schemas/{model}",
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs.get("$defs", {}))
        # Validation errors are answered as {"detail": str} (see describe_validation_errors),
        # not as FastAPI's list: say so wherever FastAPI documented its own 422 body.
        for operation in (op for path in schema["paths"].values() for op in path.values()):
            response = operation.get("responses", {}).get("422")
            if response and "HTTPValidationError" in str(response):
                schema_ref = {"$ref": "#/components/schemas/ErrorDetail"}
                response["content"]["application/json"]["schema"] = schema_ref
                components.setdefault("ErrorDetail", ErrorDetail.model_json_schema())
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = add_security(schema)
    return app.openapi_schema

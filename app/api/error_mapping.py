"""How errors become answers: engine exceptions to 4xx, all as `{"detail": "..."}`.

Shared by the app's exception handlers and the ASGI hot path, so both answer alike.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException

from ..engine.errors import Conflict, NotFound

log = logging.getLogger("annserve")

# Checked in order (subclasses before their bases).
ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = ((NotFound, 404), (Conflict, 409), (ValueError, 422))


def client_error(exc: Exception) -> tuple[int, str] | None:
    """(status, detail) when `exc` is the client's doing; None when it is a bug (500)."""
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail)
    for kind, status in ERROR_STATUS:
        if isinstance(exc, kind):
            return status, str(exc) or type(exc).__name__
    return None


def error_answer(exc: Exception, method: str, path: str) -> tuple[int, str]:
    """(status, detail) for any exception: the client's mistakes as 4xx; anything else is a
    bug, logged whole with its traceback and answered 500 in the contract's shape."""
    mapped = client_error(exc)
    if mapped is None:
        log.exception("unhandled error on %s %s", method, path, exc_info=exc)
        mapped = 500, f"internal error: {type(exc).__name__}: {exc}"
    return mapped

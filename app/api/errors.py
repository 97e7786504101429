"""How errors become answers: engine exceptions to 4xx, all as `{"detail": "..."}`.

Shared by the app's exception handlers and the ASGI hot path, so both answer alike.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException

from ..errors import Conflict, NotFound

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

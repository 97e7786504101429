"""How errors become answers, all as `{"detail": "..."}`: the client's mistakes to 4xx, storage
faults to 507 (the disk or a quota is full) or 503 (an I/O error, a read-only or damaged file),
anything else to 500 (a bug).

Shared by the app's exception handlers and the ASGI hot path, so both answer alike.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException

from ..engine.errors import Conflict, NotFound, StorageError

log = logging.getLogger("annserve")

# Checked in order (subclasses before their bases).
ERROR_STATUS: tuple[tuple[type[Exception], int], ...] = ((NotFound, 404), (Conflict, 409), (ValueError, 422))


def client_error(exc: Exception) -> tuple[int, str] | None:
    """(status, detail) when `exc` is no bug: the client's doing (4xx), or a storage fault
    (507/503, see `storage_fault`); None when it is a bug (500)."""
    if isinstance(exc, HTTPException):
        return exc.status_code, str(exc.detail)
    if isinstance(exc, StorageError):
        return storage_fault(exc)
    for kind, status in ERROR_STATUS:
        if isinstance(exc, kind):
            return status, str(exc) or type(exc).__name__
    return None


def storage_fault(exc: StorageError) -> tuple[int, str]:
    """A write the store could not make durable, or a read it could not serve (CONTRACT
    section 4): 507 Insufficient Storage when more space or quota would fix it, else 503; the
    detail names the cause. Nothing of a failed write was applied (the engine's promise), and
    writes resume once the cause is gone."""
    if exc.disk_full:
        return 507, f"insufficient storage: {exc}; writes resume once space is freed"
    return 503, f"storage unavailable: {exc}; retry once the fault is fixed"


def error_answer(exc: Exception, method: str, path: str) -> tuple[int, str]:
    """(status, detail) for any exception: the client's mistakes as 4xx; anything else is a
    bug, logged whole with its traceback and answered 500 in the contract's shape."""
    mapped = client_error(exc)
    if mapped is None:
        log.exception("unhandled error on %s %s", method, path, exc_info=exc)
        mapped = 500, f"internal error: {type(exc).__name__}: {exc}"
    elif isinstance(exc, StorageError):  # the operator's to fix: say so in the log too
        log.error("storage fault on %s %s, answered %d: %s", method, path, mapped[0], exc)
    return mapped

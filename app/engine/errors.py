"""Errors the engine raises, and the one translation of storage faults into `StorageError`.

The HTTP layer maps them by type: `ValueError` (bad input) -> 422, `NotFound` -> 404,
`Conflict` -> 409, `StorageError` -> 507 when the disk is full (`disk_full`), else 503.
Messages say what was expected and what came (or what failed), with the numbers.
"""

from __future__ import annotations

import errno
import sqlite3


class NotFound(LookupError):
    """A collection, vector or job that does not exist."""


class Conflict(RuntimeError):
    """A request that clashes with the current state (collection exists, rebuild running)."""


class StorageError(OSError):
    """A write that could not be made durable, or a read the store could not serve: the disk or
    a quota is full, an I/O error, a read-only file system. Nothing of a failed write was
    applied (neither in the store nor in memory), and writes resume once the cause is gone.

    `errno` is ENOSPC for a full disk or quota (SQLITE_FULL, ENOSPC, EDQUOT), EIO for I/O
    errors and damaged files (SQLITE_IOERR_*, SQLITE_CORRUPT, SQLITE_NOTADB, SQLITE_CANTOPEN,
    SQLITE_PROTOCOL), EROFS (SQLITE_READONLY), ENOMEM (SQLITE_NOMEM), EBUSY (SQLITE_BUSY,
    SQLITE_LOCKED: another process holds the file), or the errno of the failed system call.
    `cause` is the original exception; `sqlite_errorname` names SQLite's code when it reported it.
    """

    def __init__(self, message: str, code: int, cause: BaseException | None = None) -> None:
        super().__init__(code, message)
        self.cause = cause
        self.sqlite_errorname: str | None = getattr(cause, "sqlite_errorname", None)

    @property
    def disk_full(self) -> bool:
        """Whether more space (or quota) would fix it: 507 rather than 503."""
        return self.errno in (errno.ENOSPC, errno.EDQUOT)

    def __str__(self) -> str:
        return self.strerror or ""

    def __reduce__(self):  # picklable with its message, code and cause (OSError's own drops them)
        return type(self), (self.strerror, self.errno, self.cause)


# SQLite primary result codes (the low byte of an extended code) that mean a storage fault.
SQLITE_ERRNO = {
    5: errno.EBUSY,  # SQLITE_BUSY
    6: errno.EBUSY,  # SQLITE_LOCKED
    7: errno.ENOMEM,  # SQLITE_NOMEM
    8: errno.EROFS,  # SQLITE_READONLY
    10: errno.EIO,  # SQLITE_IOERR (and its extended codes: _WRITE, _FSYNC, _SHORT_READ, ...)
    11: errno.EIO,  # SQLITE_CORRUPT
    13: errno.ENOSPC,  # SQLITE_FULL
    14: errno.EIO,  # SQLITE_CANTOPEN
    15: errno.EIO,  # SQLITE_PROTOCOL
    26: errno.EIO,  # SQLITE_NOTADB
}


def storage_error(exc: BaseException, doing: str) -> StorageError | None:
    """`exc` as a StorageError if it is a storage fault (an OSError, or a SQLite error with a
    code of `SQLITE_ERRNO`), else None (a bug or a constraint, left as it is). `doing` says
    what failed, e.g. "committing 1000 items to /data/.../store.sqlite"."""
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        mapped = SQLITE_ERRNO.get(code & 0xFF) if isinstance(code, int) else None
        if mapped is None:
            return None
        name = getattr(exc, "sqlite_errorname", f"SQLite code {code}")
        return StorageError(f"{doing} failed: {exc} ({name})", mapped, exc)
    if isinstance(exc, OSError):
        code = exc.errno if exc.errno is not None else errno.EIO
        return StorageError(f"{doing} failed: {exc.strerror or exc} (errno {errno.errorcode.get(code, code)})", code, exc)
    return None

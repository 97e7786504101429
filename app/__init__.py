"""annserve: a vector-search service (collections, durable vectors, the dual main/fresh index), its
index library `annserve.indexes`, and `annserve.Client` / `annserve.AsyncClient` to talk to it.

`import annserve` stays cheap: the client (httpx, numpy) is imported on first use of one of its names,
and nothing here imports the server (FastAPI) or the indexes (FAISS, numba).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The names `from annserve import ...` gives, each from annserve.client.
_CLIENT_NAMES = (
    "AnnserveError",
    "ApiConnectionError",
    "ApiError",
    "AsyncClient",
    "AuthError",
    "Client",
    "ConflictError",
    "Hit",
    "InvalidRequestError",
    "JobFailedError",
    "NotFoundError",
    "Record",
)

__all__ = ["__version__", *_CLIENT_NAMES]

if TYPE_CHECKING:
    from .client import (
        AnnserveError,
        ApiConnectionError,
        ApiError,
        AsyncClient,
        AuthError,
        Client,
        ConflictError,
        Hit,
        InvalidRequestError,
        JobFailedError,
        NotFoundError,
        Record,
    )


def __getattr__(name: str) -> Any:
    if name == "__version__":  # one version, pyproject's, as installed
        from importlib.metadata import version

        return version("annserve")
    if name in _CLIENT_NAMES:
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'annserve' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

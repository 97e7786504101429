"""The router's two hottest routes answered straight from ASGI, ahead of FastAPI's routing.

As on a node (api/transport/hot_path.py), FastAPI's routing, dependency solving and request
objects cost a sizeable share of a search's CPU at the router; `POST /collections/{name}/search`
and `/search/batch` are matched here by string tests and answered by the very functions the
routes call (`search.answer_search`, `answer_batch`), with the same error mapping. Everything
else passes through; the FastAPI routes stay, and document the API.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from ..api.error_mapping import error_answer
from .search import answer_batch, answer_search
from .state import RouterState

_PREFIX = "/collections/"


class _Route(NamedTuple):
    path: str  # what MetricsMiddleware labels requests with


_ROUTES = {suffix: _Route("/collections/{name}" + suffix) for suffix in ("/search", "/search/batch")}
_ANSWERS = {"/search": answer_search, "/search/batch": answer_batch}


class _Disconnected(Exception):
    pass


class RouterHotPath:
    def __init__(self, app: ASGIApp, state: RouterState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith(_PREFIX):
            path: str = scope["path"]
            suffix = "/search/batch" if path.endswith("/search/batch") else "/search" if path.endswith("/search") else ""
            name = path[len(_PREFIX) : -len(suffix)] if suffix else ""
            if name and "/" not in name:
                scope["route"] = _ROUTES[suffix]
                await self._answer(suffix, name, scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, suffix: str, name: str, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            status, content = 200, await _ANSWERS[suffix](self.state, name, await _read_body(receive))
        except _Disconnected:
            return
        except Exception as exc:  # noqa: BLE001 - every error is answered, as the app's handlers do
            status, detail = error_answer(exc, "POST", scope["path"])
            content = {"detail": detail}
        body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)

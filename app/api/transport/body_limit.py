"""413 for request bodies above `max_body_bytes`, decided without reading the body whole.

Starlette ships a body-limit middleware, but its 413 is plain text without the numbers; the
contract wants `{"detail": ...}` naming the size and the limit, so this one is ours.
"""

from __future__ import annotations

import orjson
from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the limit.

    An `HTTPException`, so FastAPI's body reading lets it through and its handler answers 413.
    """

    def __init__(self, received: int, limit: int) -> None:
        super().__init__(
            413,
            detail=f"request body too large: {received} bytes received so far, the limit is {limit} "
            "bytes (ANNSERVE_MAX_BODY_BYTES)",
        )


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        content_length = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                content_length = int(value) if value.isdigit() else None
                break
        if content_length is not None:
            if content_length > self.limit:
                # Answer before a single body byte is read; the server discards the rest.
                detail = (
                    f"request body too large: {content_length} bytes, the limit is {self.limit} "
                    "bytes (ANNSERVE_MAX_BODY_BYTES)"
                )
                await _send_413(send, detail)
                return
            # The server frames the body by Content-Length: it cannot deliver more. No wrapping.
            await self.app(scope, receive, send)
            return

        # A chunked (or unsized) body: count the bytes as they stream in.
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(received, self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            # Raised where nothing caught it (e.g. a route that streams its body itself).
            if started:
                raise
            await _send_413(send, exc.detail)


async def _send_413(send: Send, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})

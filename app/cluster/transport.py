"""The router's HTTP/1.1 client for its nodes: pooled keep-alive connections on asyncio streams,
answers parsed by httptools (uvicorn's own C parser); errors are httpx's exception types.

Why not `httpx.AsyncClient`: on this service's shard calls its default transport (httpcore over
anyio) cost about 1.3-1.8 ms of client CPU per call, and its client layer (URL merging, header
normalisation, cookie extraction, response model) another 0.2-0.4 ms, against 0.12-0.2 ms for the
same exchange on plain asyncio streams (2 busy cores; a client posting one base64 search to a node
1000 times; httpx issue #3215 reports the same gap). A search fans out to every shard, so that
cost is paid n times per search, serially on the router's event loop: it was the router's whole
overhead, several times the 1 ms budget.

Scope: plain `http://` to annserve nodes; request bodies with Content-Length; answers with
Content-Length or chunked. A connection the node closed while idle (uvicorn closes keep-alive
connections after 5 s) is detected on reuse, before any byte of the answer, and the request is
sent again once on a fresh connection: safe, the node never saw it. `timeout` bounds the whole
exchange (connect, send, answer). A connection whose exchange failed, timed out or was cancelled
(a hedge that lost) is closed, never reused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import httptools
import httpx

MAX_IDLE_PER_NODE = 64


class _Answer:
    """httptools callbacks: the headers and body of one response."""

    __slots__ = ("headers", "body", "done")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


class _Stale(Exception):
    """A connection ended before any byte of the answer."""


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def exchange(self, request: bytes) -> tuple[int, bytes, bool]:
        """(status, body, keep-alive) of the answer to `request`."""
        self.writer.write(request)
        answer = _Answer()
        parser = httptools.HttpResponseParser(answer)
        first = True
        while not answer.done:
            data = await self.reader.read(65536)
            if not data:
                if first:
                    raise _Stale
                raise httpx.RemoteProtocolError("the node closed the connection in the middle of its answer")
            first = False
            try:
                parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise httpx.RemoteProtocolError(f"unreadable answer from the node: {exc}") from None
        # HTTP/1.1 keeps the connection unless the node says `connection: close` (httptools'
        # should_keep_alive() is reset once the message is complete, so it cannot tell).
        keep = not any(n.lower() == b"connection" and b"close" in v.lower() for n, v in answer.headers)
        return parser.get_status_code(), b"".join(answer.body), keep

    def close(self) -> None:
        self.writer.close()


class NodePool:
    """Keep-alive connections to any number of nodes, `max_idle_per_node` kept idle per node."""

    def __init__(self, max_idle_per_node: int = MAX_IDLE_PER_NODE) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._max_idle = max_idle_per_node

    async def request(
        self, method: str, url: httpx.URL, headers: Iterable[tuple[str, str]], body: bytes | None, timeout: float
    ) -> tuple[int, bytes]:
        """(status, body) of `method url`; httpx.TimeoutException after `timeout` s,
        httpx.ConnectError when the node cannot be reached, httpx.RemoteProtocolError when it
        answers nonsense or hangs up mid-answer."""
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"the router talks plain http to its nodes, got {url}")
        key = (url.host, url.port or 80)
        body = body or b""
        head = [f"{method} ".encode(), url.raw_path, b" HTTP/1.1\r\nhost: ", url.netloc, b"\r\n"]
        for name, value in headers:
            head += [name.encode(), b": ", value.encode(), b"\r\n"]
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        message = b"".join(head) + body
        try:
            async with asyncio.timeout(timeout):
                return await self._send(key, message)
        except TimeoutError:
            raise httpx.ReadTimeout(f"no answer from {url.netloc.decode()} within {timeout:.2f} s") from None
        except OSError as exc:
            raise httpx.ConnectError(f"{url.netloc.decode()}: {exc}") from None

    async def _send(self, key: tuple[str, int], message: bytes) -> tuple[int, bytes]:
        idle = self._idle.setdefault(key, [])
        while True:
            reused = bool(idle)
            connection = idle.pop() if reused else _Connection(*await asyncio.open_connection(*key))
            try:
                status, content, keep = await connection.exchange(message)
            except _Stale:
                connection.close()
                if reused:
                    continue  # the node had closed it while idle: the request never reached it
                raise httpx.RemoteProtocolError("the node closed a new connection without answering") from None
            except BaseException:  # an error, a timeout or a cancellation: the connection's state is unknown
                connection.close()
                raise
            if keep and len(idle) < self._max_idle:
                idle.append(connection)
            else:
                connection.close()
            return status, content

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

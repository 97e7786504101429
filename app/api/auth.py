"""API keys: which role a request needs, which role its key has, and the ASGI gate between them.

Roles (CONTRACT section 4):
- `admin`: `ANNSERVE_ADMIN_API_KEY`; everything.
- `read`: `ANNSERVE_API_KEY`; search, batch search, get, list, info, recall, job status.
- `metrics`: `/metrics` (and `/workers`, the same processes' memory per pid) needs `ANNSERVE_METRICS_API_KEY` (or an admin key) when that is set,
  and is open when it is not: Prometheus scrapers are usually set up without credentials, and
  the metrics hold counts and latencies labelled by collection, never an item, a vector or a key.
- open: `/healthz`, `/readyz` (probes carry no key) and the API's own description (`/docs`,
  `/openapi.json`), which holds no data.

Each variable may hold several keys separated by commas, so a key can be rotated without a gap.
Keys come as `X-API-Key: <key>` or `Authorization: Bearer <key>`. With no admin or read key
configured the data routes are open (the service warns when it listens beyond loopback so).

Every route not listed as read or open needs the admin key: a route added later is closed until
someone decides otherwise. The check is a pure ASGI middleware in front of everything, the
search hot path included, so it costs one call and a few string tests per request, no task.

Keys are compared as SHA-256 digests with `hmac.compare_digest`: constant time in the key's
content, and the fixed digest length hides the length of the configured keys too. A key is
never logged nor echoed in an answer.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Iterable
from typing import Literal

import orjson
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from ..settings import Settings

log = logging.getLogger("annserve")

Role = Literal["open", "read", "admin", "metrics"]

_OPEN_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
# The security schemes declared in OpenAPI (see `add_security`).
SECURITY_SCHEMES = {
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "BearerKey": {"type": "http", "scheme": "bearer"},
}
_SECURITY = [{"ApiKeyHeader": []}, {"BearerKey": []}]


def required_role(method: str, path: str) -> Role:
    """The role a request needs, from its method and path (a concrete path or an OpenAPI
    template such as `/collections/{name}/search`)."""
    if path in _OPEN_PATHS:
        return "open"
    if path in ("/metrics", "/workers"):  # /workers: the processes' pids and memory, as in /metrics
        return "metrics"
    parts = path.split("/")  # "/collections/c/search" -> ["", "collections", "c", "search"]
    n = len(parts)
    if method in ("GET", "HEAD"):
        if parts[1] == "collections":
            # GET /collections, /collections/{c}, /collections/{c}/recall, /collections/{c}/vectors/{id...}
            if n <= 3 or (n == 4 and parts[3] == "recall") or (n >= 5 and parts[3] == "vectors"):
                return "read"
        elif parts[1] == "jobs" and n == 3:
            return "read"
    elif method == "POST" and parts[1] == "collections" and n >= 4 and parts[3] == "search":
        if n == 4 or (n == 5 and parts[4] == "batch"):
            return "read"
    return "admin"


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key if isinstance(key, bytes) else key.encode()).digest()


def _split(secret: SecretStr | str | None) -> list[bytes]:
    """The digests of the comma-separated keys in `secret` (blanks ignored)."""
    if secret is None:
        return []
    text = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    return [_digest(key.strip()) for key in text.split(",") if key.strip()]


def _matches(digest: bytes, digests: Iterable[bytes]) -> bool:
    # Every configured key is compared, whichever matches: the time does not say which one did.
    found = False
    for known in digests:
        found |= hmac.compare_digest(digest, known)
    return found


class KeyRing:
    """The configured keys of each role, as digests. Importable by other tiers (the cluster
    router forwards `forward_headers(settings)` to its nodes and can gate with `check`)."""

    def __init__(
        self, admin: SecretStr | str | None, read: SecretStr | str | None, metrics: SecretStr | str | None
    ) -> None:
        self.admin, self.read, self.metrics = _split(admin), _split(read), _split(metrics)
        # Data routes are keyed once an admin or a read key exists.
        self.enabled = bool(self.admin or self.read)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls(settings.admin_api_key, settings.api_key, settings.metrics_api_key)

    def check(self, method: str, path: str, key: bytes | None) -> tuple[int, str] | None:
        """None when a request with `key` (None: no key sent) may go to `method path`, else
        (401 or 403, a detail that names the role needed and never the key)."""
        if not self.enabled and not self.metrics:
            return None  # no key configured: nothing to check
        role = required_role(method, path)
        if role == "open":
            return None
        if role == "metrics":
            if not self.metrics:
                return None
            accepted, needed = (self.metrics, self.admin), "a metrics or admin key (ANNSERVE_METRICS_API_KEY)"
        elif not self.enabled:
            return None
        elif role == "read":
            accepted, needed = (self.admin, self.read), "a read or admin key (ANNSERVE_API_KEY)"
        else:
            accepted, needed = (self.admin,), "an admin key (ANNSERVE_ADMIN_API_KEY)"
        if key is None:
            return (
                401,
                f"missing API key: {method} {path} needs {needed}, "
                "sent as X-API-Key or Authorization: Bearer",
            )
        digest = _digest(key)
        if any(_matches(digest, digests) for digests in accepted):
            return None
        # Says whether the key is known at all (a read key on an admin route) but not which one.
        known = any(_matches(digest, d) for d in (self.admin, self.read, self.metrics))
        why = "this key's role may not do that" if known else "the API key is not valid"
        if role == "admin" and not self.admin:
            why += "; no admin key is configured, so admin routes are closed"
        return 403, f"forbidden: {method} {path} needs {needed}; {why}"


def request_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key sent in ASGI `headers`: `x-api-key`, else `authorization: Bearer <key>`."""
    bearer = None
    for name, value in headers:
        if name == b"x-api-key":
            return value.strip()
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            bearer = value[7:].strip()
    return bearer


class AuthMiddleware:
    """401/403 for requests whose key does not allow what they ask; everything else passes.
    Sits in front of the hot path, so keyed searches cost the same few microseconds."""

    def __init__(self, app: ASGIApp, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            refused = self.keys.check(scope["method"], scope["path"], request_key(scope["headers"]))
            if refused is not None:
                await _refuse(send, *refused)
                return
        elif kind == "websocket" and self.keys.enabled:
            await send({"type": "websocket.close", "code": 1008})  # no websocket route is open
            return
        await self.app(scope, receive, send)


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="annserve"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def forward_headers(settings: Settings) -> dict[str, str]:
    """Headers that carry this node's admin key to another node (the router's shard calls):
    the first key of `ANNSERVE_ADMIN_API_KEY`, or nothing when none is set."""
    if settings.admin_api_key is None:
        return {}
    keys = [k.strip() for k in settings.admin_api_key.get_secret_value().split(",") if k.strip()]
    return {"X-API-Key": keys[0]} if keys else {}


def add_security(schema: dict) -> dict:
    """Declare the key schemes in an OpenAPI `schema` (in place): every operation that needs
    a key lists them and documents 401 and 403; the open ones say `security: []`."""
    from .schemas import ErrorDetail  # the app's error body; imported late to keep auth light

    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    components.setdefault("schemas", {}).setdefault("ErrorDetail", ErrorDetail.model_json_schema())
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDetail"}}}}
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            role = required_role(method.upper(), path)
            if role == "open":
                operation["security"] = []
                continue
            operation["security"] = _SECURITY
            responses = operation.setdefault("responses", {})
            responses.setdefault("401", {"description": "no API key", **error})
            responses.setdefault("403", {"description": "wrong API key, or a key of the wrong role", **error})
            if role == "metrics":
                operation["description"] = (
                    operation.get("description", "") + "\n\nOpen unless ANNSERVE_METRICS_API_KEY is set."
                ).strip()
    return schema


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def warn_if_open(settings: Settings) -> None:
    """Log loudly at start when the data routes are open to a non-loopback address."""
    keys = KeyRing.from_settings(settings)
    if not keys.enabled and not is_loopback(settings.host):
        log.warning(
            "\n%s\nNO API KEY IS SET and the service listens on %s: anyone who can reach this "
            "port can read, write and delete every collection.\nSet ANNSERVE_ADMIN_API_KEY (and "
            "ANNSERVE_API_KEY for read-only clients), or bind to 127.0.0.1.\n%s",
            "!" * 78,
            settings.host,
            "!" * 78,
        )
    elif keys.enabled and not keys.admin:
        log.warning(
            "ANNSERVE_API_KEY is set without ANNSERVE_ADMIN_API_KEY: admin routes (writes, "
            "rebuilds, snapshots) answer 403 to every request"
        )

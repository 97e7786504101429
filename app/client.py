"""The Python client of the annserve HTTP API: `Client` (blocking) and `AsyncClient` (asyncio), on httpx,
numpy in and out.

Each call is written once, as a generator that yields what it needs done (`_Send` a request, `_Sleep`
a while) and receives the outcome (an `httpx.Response`, or the `httpx.TransportError` the send raised).
Retries with backoff, error mapping, upsert batching and job polling all live in those generators;
`Client` runs them with a blocking `httpx.Client` and `time.sleep`, `AsyncClient` with an
`httpx.AsyncClient` and `asyncio.sleep`. So the two clients cannot drift apart.

Imports only httpx, numpy and the standard library (orjson when it is installed): no server code, so
`from annserve import Client` works on a machine that only talks to a service.

Return types, one rule: the shape of an answer follows the shape of the question, as the HTTP API does.
A 1-D query vector (or `search_by_id`) gives `list[Hit]`, best first; a 2-D matrix of queries gives
`list[list[Hit]]`, one list per row in order (a (1, dim) matrix gives a list holding one list).
Collections and jobs are the service's JSON objects as dicts; `get` gives a `Record` with a float32 vector.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import numpy as np

try:  # faster, and serialises numpy scalars in payloads; json is the fallback
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency of the server install
    orjson = None

__all__ = [
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
    "Progress",
    "Record",
]

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_UPSERT_BATCH = 1000  # 1000 x 1024-d float32 is ~5.5 MB of base64, well under the 32 MiB body cap
DEFAULT_SEARCH_BATCH = 1000  # the server's default ANNSERVE_MAX_BATCH
DEFAULT_DELETE_BATCH = 10_000
MAX_BACKOFF_SECONDS = 10.0

# `progress(done, total)`: vectors acknowledged of all given (upsert); the job's fraction of 1.0 (rebuild).
Progress = Callable[[float, float], None]
T = TypeVar("T")


# ---- errors -------------------------------------------------------------------------------------


class AnnserveError(Exception):
    """Base of every error this client raises."""


class ApiError(AnnserveError):
    """The service answered with an error status. `status` is the HTTP status, `detail` the service's
    `detail` (what is wrong, with the numbers; a list for some framework-level 422s)."""

    def __init__(self, status: int, detail: Any, method: str, path: str) -> None:
        self.status, self.detail, self.method, self.path = status, detail, method, path
        super().__init__(f"{method} {path} -> {status}: {detail}")


class AuthError(ApiError):
    """401 (no API key) or 403 (a wrong key, or a read key on an admin call)."""


class NotFoundError(ApiError):
    """404: an unknown collection, vector or job (or an endpoint this server does not have)."""


class ConflictError(ApiError):
    """409: the collection exists already, or a rebuild is running."""


class InvalidRequestError(ApiError):
    """422: the service rejected the input (shape, values, unknown field or parameter)."""


class ApiConnectionError(AnnserveError):
    """The service could not be reached (connection refused, reset, timed out), after the retries the call
    allows; the httpx error is the `__cause__`."""


class JobFailedError(AnnserveError):
    """A waited-for job ended in state `failed`; `job` is its last state from `GET /jobs/{id}`."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        super().__init__(f"job {job.get('id')} failed: {job.get('error')}")


_ERROR_CLASSES: dict[int, type[ApiError]] = {
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    422: InvalidRequestError,
}


# ---- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result. `score`: cosine similarity or inner product (higher is better), or squared L2
    distance (lower is better), as the collection's metric says. `payload` and `vector` ((dim,)
    float32) only when asked for."""

    id: str
    score: float
    payload: dict[str, Any] | None = None
    vector: np.ndarray | None = field(default=None, compare=False)  # arrays do not compare to a bool


@dataclass(frozen=True, slots=True, eq=False)  # eq would compare arrays
class Record:
    """A stored item: `vector` is (dim,) float32."""

    id: str
    vector: np.ndarray
    payload: dict[str, Any] | None


# ---- the calls, written once (sans-I/O) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Send:
    method: str
    path: str
    body: bytes | None


@dataclass(frozen=True, slots=True)
class _Sleep:
    seconds: float


_Outcome = httpx.Response | httpx.TransportError | None
_Call = Generator[_Send | _Sleep, _Outcome, T]


def _dumps(body: Any) -> bytes:
    if orjson is not None:
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(body, separators=(",", ":")).encode()


def _loads(response: httpx.Response) -> Any:
    if not response.content:
        return None
    return orjson.loads(response.content) if orjson is not None else response.json()


def _b64(rows: np.ndarray) -> str:
    return base64.b64encode(rows.tobytes()).decode("ascii")


def _path(*parts: str) -> str:
    # Ids may hold '/', '?', '#', '%' or spaces: every segment is quoted whole.
    return "/" + "/".join(quote(part, safe="") for part in parts)


@dataclass(frozen=True, slots=True)
class _Retry:
    retries: int
    backoff: float

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        """Seconds before retry number `attempt + 1`: exponential with jitter, or the server's Retry-After."""
        if response is not None:
            try:
                return min(MAX_BACKOFF_SECONDS, max(0.0, float(response.headers["retry-after"])))
            except (KeyError, ValueError):
                pass
        return min(MAX_BACKOFF_SECONDS, self.backoff * 2**attempt) * (0.5 + random.random() / 2)


def _exchange(retry: _Retry, method: str, path: str, body: Any = None, *, idempotent: bool) -> _Call[Any]:
    """One request, retried and decoded: the answer's JSON, or an `AnnserveError`.

    Retried with backoff: an idempotent call on any transport error (refused, reset, timed out) and on 503;
    any call on a failure to connect (the request never left). A 413 is not retried (see `_upsert`).
    """
    send = _Send(method, path, None if body is None else _dumps(body))
    attempt = 0
    while True:
        outcome = yield send
        if isinstance(outcome, httpx.TransportError):
            unsent = isinstance(outcome, (httpx.ConnectError, httpx.ConnectTimeout))
            if attempt < retry.retries and (idempotent or unsent):
                yield _Sleep(retry.delay(attempt, None))
                attempt += 1
                continue
            raise ApiConnectionError(
                f"{method} {path}: {type(outcome).__name__}: {outcome} (after {attempt + 1} attempt(s))"
            ) from outcome
        if outcome.status_code == 503 and idempotent and attempt < retry.retries:
            yield _Sleep(retry.delay(attempt, outcome))
            attempt += 1
            continue
        if outcome.status_code >= 400:
            raise _api_error(outcome, method, path)
        return _loads(outcome)


def _api_error(response: httpx.Response, method: str, path: str) -> ApiError:
    try:
        answer = _loads(response)
        detail = answer["detail"] if isinstance(answer, dict) and "detail" in answer else answer
    except ValueError:
        detail = response.text
    return _ERROR_CLASSES.get(response.status_code, ApiError)(response.status_code, detail, method, path)


def _as_ids(ids: Sequence[str | int] | np.ndarray) -> list[str]:
    """Ids as the service's strings; ints (Python or numpy) are written in decimal."""
    out = []
    for pos, item_id in enumerate(ids.tolist() if isinstance(ids, np.ndarray) else ids):
        if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
            raise ValueError(
                f"ids[{pos}]: expected a str or an int, got {type(item_id).__name__} {item_id!r}"
            )
        out.append(str(item_id))
    return out


def _as_queries(query: Any, what: str) -> np.ndarray:
    """A query vector (dim,) or matrix (n, dim) as little-endian float32, finite."""
    arr = np.asarray(query)
    if arr.ndim not in (1, 2) or arr.dtype.kind not in "iuf":
        raise ValueError(f"{what}: expected numbers of shape (dim,) or (n, dim), got {arr.dtype} {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype="<f4")
    _check_finite(arr, what)
    return arr


def _check_finite(arr: np.ndarray, what: str, first_row: int = 0) -> None:
    finite = np.isfinite(arr)
    if not finite.all():
        where = f"row {first_row + int(np.argwhere(~finite)[0][0])}" if arr.ndim == 2 else "the vector"
        raise ValueError(f"{what}: expected finite numbers, {where} holds NaN or Inf")


def _search_body(
    k: int, filter: Any, params: dict | None, with_payload: bool | list[str], exact: bool,
    with_vector: bool = False, score_threshold: float | None = None,
) -> dict:
    # Optional fields only when given: a server without them answers 422 only to those who use them.
    body: dict[str, Any] = {"k": k}
    if params is not None:
        body["params"] = params
    if filter is not None:
        body["filter"] = filter
    if with_payload is not False:
        body["with_payload"] = with_payload
    if with_vector:
        body["with_vector"] = True
    if score_threshold is not None:
        body["score_threshold"] = score_threshold
    if exact:
        body["exact"] = True
    return body


def _hits(rows: list[dict]) -> list[Hit]:
    return [
        Hit(row["id"], row["score"], row.get("payload"),
            np.asarray(row["vector"], dtype=np.float32) if row.get("vector") is not None else None)
        for row in rows
    ]


class _Calls:
    """Every API call as a generator, and the options; the client classes drive the calls."""

    _http_class: type[httpx.Client] | type[httpx.AsyncClient]

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = 30.0,
        retries: int = 3,
        backoff: float = 0.25,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self._retry = _Retry(retries, backoff)
        all_headers = {"accept": "application/json", "user-agent": "annserve-client", **(headers or {})}
        if api_key is not None:
            all_headers["x-api-key"] = api_key
        self._http = self._http_class(base_url=url, timeout=timeout, headers=all_headers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _do(self, method: str, path: str, body: Any = None, *, idempotent: bool) -> _Call[Any]:
        return _exchange(self._retry, method, path, body, idempotent=idempotent)

    # collections
    def _create_collection(
        self,
        name: str,
        dim: int,
        metric: str,
        index: str,
        params: dict | None,
        shards: int | None,
        options: dict,
    ) -> _Call[dict]:
        body: dict[str, Any] = {"name": name, "dim": dim, "metric": metric, "index": {"kind": index}}
        if params is not None:
            body["index"]["params"] = params
        if shards is not None:
            body["shards"] = shards
        body.update(options)
        return (yield from self._do("POST", "/collections", body, idempotent=False))

    def _list_collections(self) -> _Call[list[dict]]:
        return (yield from self._do("GET", "/collections", idempotent=True))["collections"]

    def _get_collection(self, name: str) -> _Call[dict]:
        return (yield from self._do("GET", _path("collections", name), idempotent=True))

    def _update_collection(self, name: str, fields: dict) -> _Call[dict]:
        return (yield from self._do("PATCH", _path("collections", name), fields, idempotent=True))

    def _delete_collection(self, name: str) -> _Call[None]:
        yield from self._do("DELETE", _path("collections", name), idempotent=True)

    # vectors
    def _upsert(
        self,
        collection: str,
        ids: Sequence[str | int] | np.ndarray,
        vectors: Any,
        payloads: Sequence[dict | None] | None,
        batch_size: int,
        progress: Progress | None,
    ) -> _Call[int]:
        id_list = _as_ids(ids)
        # No conversion of the whole input: a memory-mapped array is read one batch at a time.
        matrix = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors)
        if matrix.ndim != 2 or matrix.dtype.kind not in "iuf":
            raise ValueError(
                f"vectors: expected numbers of shape (n, dim), got {matrix.dtype} {matrix.shape}"
            )
        if len(matrix) != len(id_list):
            raise ValueError(f"vectors: expected one row per id ({len(id_list)} ids), got {len(matrix)} rows")
        if payloads is not None and len(payloads) != len(id_list):
            raise ValueError(f"payloads: expected one per id ({len(id_list)} ids), got {len(payloads)}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected at least 1, got {batch_size}")
        path = _path("collections", collection, "vectors")
        done = 0
        for lo in range(0, len(id_list), batch_size):
            hi = min(lo + batch_size, len(id_list))
            rows = np.ascontiguousarray(matrix[lo:hi], dtype="<f4")
            _check_finite(rows, "vectors", lo)
            items = []
            for pos, row in enumerate(rows, start=lo):
                item: dict[str, Any] = {"id": id_list[pos], "vector_b64": _b64(row)}
                if payloads is not None and payloads[pos] is not None:
                    item["payload"] = payloads[pos]
                items.append(item)
            done += yield from self._send_items(path, items)
            if progress is not None:
                progress(done, len(id_list))
        return done

    def _send_items(self, path: str, items: list[dict]) -> _Call[int]:
        # A body over the server's ANNSERVE_MAX_BODY_BYTES (large payloads) is sent again in halves.
        try:
            return (yield from self._do("POST", path, {"items": items}, idempotent=True))["upserted"]
        except ApiError as exc:
            if exc.status != 413 or len(items) == 1:
                raise
        half = len(items) // 2
        return (yield from self._send_items(path, items[:half])) + (
            yield from self._send_items(path, items[half:])
        )

    def _get(self, collection: str, item_id: str) -> _Call[Record]:
        answer = yield from self._do(
            "GET", _path("collections", collection, "vectors", item_id), idempotent=True
        )
        return Record(answer["id"], np.asarray(answer["vector"], dtype=np.float32), answer.get("payload"))

    def _delete(self, collection: str, ids: str | Sequence[str | int] | np.ndarray) -> _Call[int]:
        id_list = _as_ids([ids] if isinstance(ids, str) else ids)
        if not id_list:
            return 0
        path = _path("collections", collection, "vectors", "delete")
        deleted = 0
        for lo in range(0, len(id_list), DEFAULT_DELETE_BATCH):
            body = {"ids": id_list[lo : lo + DEFAULT_DELETE_BATCH]}
            deleted += (yield from self._do("POST", path, body, idempotent=True))["deleted"]
        return deleted

    # search
    def _search(
        self, collection: str, query: Any, body: dict[str, Any], batch_size: int
    ) -> _Call[list[Hit] | list[list[Hit]]]:
        arr = _as_queries(query, "query")
        if arr.ndim == 1:
            path = _path("collections", collection, "search")
            answer = yield from self._do("POST", path, {"vector_b64": _b64(arr), **body}, idempotent=True)
            return _hits(answer["results"])
        path = _path("collections", collection, "search", "batch")
        out: list[list[Hit]] = []
        for lo in range(0, len(arr), batch_size):
            chunk = {"vectors_b64": _b64(arr[lo : lo + batch_size]), **body}
            out += [
                _hits(row) for row in (yield from self._do("POST", path, chunk, idempotent=True))["results"]
            ]
        return out

    def _search_by_id(self, collection: str, item_id: str, body: dict[str, Any]) -> _Call[list[Hit]]:
        body = {"id": _as_ids([item_id])[0], **body}
        answer = yield from self._do(
            "POST", _path("collections", collection, "search"), body, idempotent=True
        )
        return _hits(answer["results"])

    # jobs, quality
    def _rebuild(
        self,
        collection: str,
        wait: bool,
        progress: Progress | None,
        poll_interval: float,
        timeout: float | None,
    ) -> _Call[dict]:
        path = _path("collections", collection, "rebuild")
        job_id = (yield from self._do("POST", path, {}, idempotent=False))["job_id"]
        if not wait:
            return (yield from self._job(job_id))
        return (yield from self._wait_job(job_id, progress, poll_interval, timeout))

    def _job(self, job_id: str) -> _Call[dict]:
        return (yield from self._do("GET", _path("jobs", job_id), idempotent=True))

    def _wait_job(
        self, job_id: str, progress: Progress | None, poll_interval: float, timeout: float | None
    ) -> _Call[dict]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = yield from self._job(job_id)
            if progress is not None:
                progress(float(job["progress"]), 1.0)
            if job["state"] == "succeeded":
                return job
            if job["state"] == "failed":
                raise JobFailedError(job)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} still {job['state']} after {timeout:g} s (progress {job['progress']:.2f})"
                )
            yield _Sleep(poll_interval)

    def _recall(self, collection: str) -> _Call[dict]:
        return (yield from self._do("GET", _path("collections", collection, "recall"), idempotent=True))

    def _tune(self, collection: str, target_recall: float, k: int) -> _Call[dict]:
        body = {"target_recall": target_recall, "k": k}
        # Not retried: a tuning run measures for a while, and a second one would start over.
        return (yield from self._do("POST", _path("collections", collection, "tune"), body, idempotent=False))

    def _ready(self) -> _Call[bool]:
        try:
            yield from _exchange(_Retry(0, 0.0), "GET", "/readyz", idempotent=True)
        except ApiError as exc:
            if exc.status == 503:
                return False
            raise
        return True


_JSON = {"content-type": "application/json"}


# ---- the blocking client ------------------------------------------------------------------------


class Client(_Calls):
    """A blocking client of one annserve service.

    `api_key` is sent as `X-API-Key`. `timeout`: seconds per request (or an `httpx.Timeout`).
    `retries`, `backoff`: idempotent calls (GET, search, get, delete, upsert: upsert is idempotent by id)
    are retried `retries` times on a transport error or a 503, after `backoff * 2**attempt` seconds with
    jitter (or the server's Retry-After), at most 10 s; other calls only when the connection failed.
    Errors raise `ApiError` (with `.status`, `.detail`; `NotFoundError`, `ConflictError`,
    `InvalidRequestError`, `AuthError` by status) or `ApiConnectionError`.
    Use as a context manager, or call `close()`.
    """

    _http_class = httpx.Client
    _http: httpx.Client

    def _run(self, call: _Call[T]) -> T:
        outcome: _Outcome = None
        try:
            while True:
                step = call.send(outcome)
                if isinstance(step, _Sleep):
                    time.sleep(step.seconds)
                    outcome = None
                    continue
                try:
                    outcome = self._http.request(
                        step.method, step.path, content=step.body, headers=_JSON if step.body else None
                    )
                except httpx.TransportError as exc:
                    outcome = exc
        except StopIteration as stop:
            return stop.value

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # collections
    def create_collection(
        self,
        name: str,
        dim: int,
        metric: str = "cosine",
        index: str = "auto",
        params: dict[str, Any] | None = None,
        shards: int | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Create an empty collection; `index` is a kind (`flat`, `hnswlib`, ..., `auto`) with build `params`;
        `options` are further create fields (`recall_target`, `recall_floor`, `auto_tune`). Returns its info.
        `ConflictError` if the name is taken."""
        return self._run(self._create_collection(name, dim, metric, index, params, shards, options))

    def list_collections(self) -> list[dict[str, Any]]:
        """Every collection's info (`name, dim, metric, index, shards, count, ...`)."""
        return self._run(self._list_collections())

    def get_collection(self, name: str) -> dict[str, Any]:
        """The collection's info; `NotFoundError` if there is none."""
        return self._run(self._get_collection(name))

    def update_collection(self, name: str, **fields: Any) -> dict[str, Any]:
        """`PATCH /collections/{name}` with `fields` (`recall_target`, `recall_floor`, `auto_tune`,
        `search_params`); returns the info."""
        return self._run(self._update_collection(name, fields))

    def delete_collection(self, name: str) -> None:
        """Delete the collection and its data."""
        self._run(self._delete_collection(name))

    # vectors
    def upsert(
        self,
        collection: str,
        ids: Sequence[str | int] | np.ndarray,
        vectors: Any,
        payloads: Sequence[dict[str, Any] | None] | None = None,
        batch_size: int = DEFAULT_UPSERT_BATCH,
        progress: Progress | None = None,
    ) -> int:
        """Insert or replace items: `ids` (n,) strings (ints are written in decimal), `vectors` (n, dim)
        numbers (sent as base64 little-endian float32), `payloads` None or one dict/None per id.
        Sent `batch_size` items per request (a request the server finds too large is split in halves);
        `progress(done, total)` after each acknowledged batch. A memory-mapped array is read a batch at a
        time. Returns how many were upserted; each acknowledged batch is durable."""
        return self._run(self._upsert(collection, ids, vectors, payloads, batch_size, progress))

    def get(self, collection: str, id: str) -> Record:
        """The stored item; `NotFoundError` if there is none."""
        return self._run(self._get(collection, id))

    def delete(self, collection: str, ids: str | Sequence[str | int] | np.ndarray) -> int:
        """Delete one id or many; unknown ids are skipped. Returns how many were deleted."""
        return self._run(self._delete(collection, ids))

    # search
    def search(
        self,
        collection: str,
        vector_or_matrix: Any,
        k: int = 10,
        filter: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        with_payload: bool | list[str] = False,
        *,
        exact: bool = False,
        batch_size: int = DEFAULT_SEARCH_BATCH,
        with_vector: bool = False,
        score_threshold: float | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """The k nearest items. A (dim,) vector gives `list[Hit]`, best first; an (n, dim) matrix gives
        `list[list[Hit]]`, one list per row in order (sent `batch_size` queries per request).
        `params`: the index kind's search parameters for this call (`ef`, `nprobe`, ...); `exact`: brute
        force. `filter` (payload conditions, e.g. `{"category": "books", "price": {"$lt": 10}}`), `with_payload`
        (True or a list of fields), `with_vector` (results carry their float32 vector) and `score_threshold`
        (leave out results scored worse) are sent only when given; a server without them answers 422
        (`InvalidRequestError`)."""
        return self._run(
            self._search(
                collection, vector_or_matrix,
                _search_body(k, filter, params, with_payload, exact, with_vector, score_threshold), batch_size,
            )
        )

    def search_by_id(
        self,
        collection: str,
        id: str,
        k: int = 10,
        filter: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        with_payload: bool | list[str] = False,
        *,
        exact: bool = False,
        with_vector: bool = False,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        """The k nearest items to a stored item ("more like this"), itself left out; `list[Hit]`."""
        return self._run(self._search_by_id(
            collection, id, _search_body(k, filter, params, with_payload, exact, with_vector, score_threshold)
        ))

    # jobs, quality
    def rebuild(
        self,
        collection: str,
        wait: bool = False,
        progress: Progress | None = None,
        poll_interval: float = 0.5,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Start building a new main index; returns the job (`id, state, progress, error, ...`): as queued,
        or with `wait=True` once it has succeeded, calling `progress(fraction, 1.0)` on each poll.
        `JobFailedError` if it failed, `TimeoutError` after `timeout` s, `ConflictError` while one runs."""
        return self._run(self._rebuild(collection, wait, progress, poll_interval, timeout))

    def job(self, job_id: str) -> dict[str, Any]:
        """A job's state (`GET /jobs/{job_id}`)."""
        return self._run(self._job(job_id))

    def wait_job(
        self,
        job_id: str,
        progress: Progress | None = None,
        poll_interval: float = 0.5,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Poll a job until it has succeeded (returned) or failed (`JobFailedError`)."""
        return self._run(self._wait_job(job_id, progress, poll_interval, timeout))

    def recall(self, collection: str) -> dict[str, Any]:
        """The online recall estimate (`GET /collections/{c}/recall`): `recall_at_k, k, samples, ...`."""
        return self._run(self._recall(collection))

    def tune(self, collection: str, target_recall: float = 0.95, k: int = 10) -> dict[str, Any]:
        """Set the smallest search knob that meets `target_recall` (`POST /collections/{c}/tune`, admin);
        returns what the service chose and measured."""
        return self._run(self._tune(collection, target_recall, k))

    def ready(self) -> bool:
        """True when the service is ready to serve (`/readyz` 200), False while it is not (503)."""
        return self._run(self._ready())


# ---- the asyncio client -------------------------------------------------------------------------


class AsyncClient(_Calls):
    """The asyncio twin of `Client`: the same methods, options and errors, each a coroutine.
    Progress callbacks are plain functions. Use `async with`, or `await aclose()`."""

    _http_class = httpx.AsyncClient
    _http: httpx.AsyncClient

    async def _run(self, call: _Call[T]) -> T:
        outcome: _Outcome = None
        try:
            while True:
                step = call.send(outcome)
                if isinstance(step, _Sleep):
                    await asyncio.sleep(step.seconds)
                    outcome = None
                    continue
                try:
                    outcome = await self._http.request(
                        step.method, step.path, content=step.body, headers=_JSON if step.body else None
                    )
                except httpx.TransportError as exc:
                    outcome = exc
        except StopIteration as stop:
            return stop.value

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def create_collection(
        self,
        name: str,
        dim: int,
        metric: str = "cosine",
        index: str = "auto",
        params: dict[str, Any] | None = None,
        shards: int | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """See `Client.create_collection`."""
        return await self._run(self._create_collection(name, dim, metric, index, params, shards, options))

    async def list_collections(self) -> list[dict[str, Any]]:
        return await self._run(self._list_collections())

    async def get_collection(self, name: str) -> dict[str, Any]:
        return await self._run(self._get_collection(name))

    async def update_collection(self, name: str, **fields: Any) -> dict[str, Any]:
        return await self._run(self._update_collection(name, fields))

    async def delete_collection(self, name: str) -> None:
        await self._run(self._delete_collection(name))

    async def upsert(
        self,
        collection: str,
        ids: Sequence[str | int] | np.ndarray,
        vectors: Any,
        payloads: Sequence[dict[str, Any] | None] | None = None,
        batch_size: int = DEFAULT_UPSERT_BATCH,
        progress: Progress | None = None,
    ) -> int:
        """See `Client.upsert`."""
        return await self._run(self._upsert(collection, ids, vectors, payloads, batch_size, progress))

    async def get(self, collection: str, id: str) -> Record:
        return await self._run(self._get(collection, id))

    async def delete(self, collection: str, ids: str | Sequence[str | int] | np.ndarray) -> int:
        return await self._run(self._delete(collection, ids))

    async def search(
        self,
        collection: str,
        vector_or_matrix: Any,
        k: int = 10,
        filter: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        with_payload: bool | list[str] = False,
        *,
        exact: bool = False,
        batch_size: int = DEFAULT_SEARCH_BATCH,
        with_vector: bool = False,
        score_threshold: float | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """See `Client.search`: (dim,) gives `list[Hit]`, (n, dim) gives `list[list[Hit]]`."""
        return await self._run(
            self._search(
                collection, vector_or_matrix,
                _search_body(k, filter, params, with_payload, exact, with_vector, score_threshold), batch_size,
            )
        )

    async def search_by_id(
        self,
        collection: str,
        id: str,
        k: int = 10,
        filter: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        with_payload: bool | list[str] = False,
        *,
        exact: bool = False,
        with_vector: bool = False,
        score_threshold: float | None = None,
    ) -> list[Hit]:
        return await self._run(self._search_by_id(
            collection, id, _search_body(k, filter, params, with_payload, exact, with_vector, score_threshold)
        ))

    async def rebuild(
        self,
        collection: str,
        wait: bool = False,
        progress: Progress | None = None,
        poll_interval: float = 0.5,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """See `Client.rebuild`."""
        return await self._run(self._rebuild(collection, wait, progress, poll_interval, timeout))

    async def job(self, job_id: str) -> dict[str, Any]:
        return await self._run(self._job(job_id))

    async def wait_job(
        self,
        job_id: str,
        progress: Progress | None = None,
        poll_interval: float = 0.5,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        return await self._run(self._wait_job(job_id, progress, poll_interval, timeout))

    async def recall(self, collection: str) -> dict[str, Any]:
        return await self._run(self._recall(collection))

    async def tune(self, collection: str, target_recall: float = 0.95, k: int = 10) -> dict[str, Any]:
        return await self._run(self._tune(collection, target_recall, k))

    async def ready(self) -> bool:
        return await self._run(self._ready())

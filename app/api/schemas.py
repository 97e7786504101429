"""The HTTP API's request and response bodies (CONTRACT section 3), as pydantic models.

Most routes validate with these models. The three hot routes (search, batch search, upsert)
parse their raw body with orjson instead (see `app/api/parsing.py`) and use these models only
to describe themselves in the OpenAPI schema: the checks there mirror the models below, field
for field, and the extra caps that depend on settings (`max_k`, `max_batch`, ...) are stated
in the field descriptions.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..engine.collection import MAX_ID_CHARS
from ..engine.manager import NAME_PATTERN

Metric = Literal["cosine", "ip", "l2"]


class _Request(BaseModel):
    # An unknown field is an error, not ignored (a typo in "params" must not pass silently).
    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    # The engine may add fields (e.g. what `auto` picked); pass them through.
    model_config = ConfigDict(extra="allow")


# ---- errors -------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    detail: str = Field(description="what is wrong, with the numbers")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status documented with the `{"detail": str}` body."""
    text = {
        404: "unknown collection, vector or job",
        409: "conflicts with the current state",
        413: "request body above the configured limit",
        422: "invalid input",
        503: "not ready, or a storage fault (an I/O error, a read-only or damaged file)",
        507: "the disk or a quota is full: the write was not made durable",
    }
    return {code: {"model": ErrorDetail, "description": text[code]} for code in codes}


# ---- collections --------------------------------------------------------------------------


class IndexSpec(_Request):
    kind: str = Field(
        "auto",
        description="an index kind (flat, ivf_flat, ivf_pq, pq, hnsw, hnswlib, lsh, forest) or "
        "`auto` (picked from the collection's size at each rebuild)",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="build parameters of the kind")


# Online recall settings of a collection (engine/recall.py, engine/tuning.py).
_RECALL_TARGET = Field(0.95, gt=0, le=1, description="the recall@k the collection should serve (tuning aims at it)")
_RECALL_FLOOR = Field(
    0.0, ge=0, le=1,
    description="a rebuilt main index measured below this recall@10 is not swapped in; 0 turns the gate off",
)
_AUTO_TUNE = Field(False, strict=True, description="re-tune the search knob to recall_target after every rebuild")
_SEARCH_DEFAULTS = Field(
    default_factory=dict,
    description="search parameters of the kind (ef, nprobe, ...) used when a request gives none",
)


class CollectionCreate(_Request):
    name: str = Field(pattern=NAME_PATTERN, description="letters, digits, `_`, `-`, `.`; 1-64 chars")
    # strict: `true` or "4" is a client mistake, not a dimension (pydantic would coerce it).
    dim: int = Field(ge=1, strict=True, description="vector dimension (capped by ANNSERVE_MAX_DIM)")
    metric: Metric = Field(
        description="cosine, ip or l2; scores are cosine similarity, inner product (higher is better) "
        "or squared Euclidean distance (lower is better)"
    )
    index: IndexSpec = Field(default_factory=IndexSpec)
    shards: int = Field(1, ge=1, le=256, strict=True, description="hash shards of the collection")
    recall_target: float = _RECALL_TARGET
    recall_floor: float = _RECALL_FLOOR
    auto_tune: bool = _AUTO_TUNE
    search_params: dict[str, Any] = _SEARCH_DEFAULTS


class IndexInfo(_Response):
    kind: str
    params: dict[str, Any]
    search_params: dict[str, Any]
    built: dict[str, Any] | None = Field(
        description="kind and build parameters of the main index in use; null before the first build"
    )


class CollectionInfo(_Response):
    name: str
    dim: int
    metric: Metric
    index: IndexInfo
    shards: int
    count: int
    main_count: int
    fresh_count: int
    last_rebuild_at: str | None = Field(description="when the main index was last built (ISO 8601, UTC)")
    recall_target: float | None = None
    recall_floor: float | None = None
    auto_tune: bool | None = None


class CollectionList(BaseModel):
    collections: list[CollectionInfo]


class CollectionDeleted(BaseModel):
    name: str
    deleted: bool = True


# ---- vectors ------------------------------------------------------------------------------


class UpsertItem(_Request):
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    vector: list[float] | None = Field(None, description="`dim` finite numbers; or give vector_b64")
    vector_b64: str | None = Field(None, description="base64 of `dim` little-endian float32")
    payload: dict[str, Any] | None = None


class UpsertRequest(_Request):
    items: list[UpsertItem] = Field(
        min_length=1, description="at most ANNSERVE_MAX_UPSERT_BATCH items; an existing id is replaced"
    )


class UpsertResponse(BaseModel):
    upserted: int


class VectorRecord(BaseModel):
    id: str
    vector: list[float]
    payload: dict[str, Any] | None


class DeleteIdsRequest(_Request):
    ids: list[str] = Field(max_length=100_000)


class DeletedCount(BaseModel):
    deleted: int


# ---- search -------------------------------------------------------------------------------

_K = Field(10, ge=1, description="results per query, at most ANNSERVE_MAX_K")
_PARAMS = Field(
    default_factory=dict,
    description="search parameters of the collection's index kind (ef, nprobe, ...); "
    "override the collection's defaults for this request only; unknown names are an error",
)
_EXACT = Field(False, description="answer by brute force over the same live data")
_FILTER = Field(
    None,
    description="payload conditions, Chroma/Pinecone style: {\"field\": value}, {\"field\": {\"$lt\": 10}}, "
    "operators $eq $ne $gt $gte $lt $lte $in $nin $exists, combinators $and $or $not, the reserved field `id`; "
    "only the items it admits are searched",
    examples=[{"category": "books", "price": {"$lt": 10}}, {"id": {"$nin": ["seen-1", "seen-2"]}}],
)
_WITH_PAYLOAD = Field(False, description="results carry `payload`: true for the whole payload, or a list of its fields")
_WITH_VECTOR = Field(False, description="results carry the stored `vector`")
_SCORE_THRESHOLD = Field(
    None, description="leave out results scored worse: below it (cosine, ip), above it (l2, a distance)"
)


class SearchRequest(_Request):
    """Exactly one of `vector`, `vector_b64`, `id` (search by a stored item, left out of its results)."""

    vector: list[float] | None = None
    vector_b64: str | None = Field(None, description="base64 of `dim` little-endian float32")
    id: str | None = Field(None, description="search with the stored vector of this item")
    k: int = _K
    params: dict[str, Any] = _PARAMS
    exact: bool = _EXACT
    filter: dict[str, Any] | None = _FILTER
    with_payload: bool | list[str] = _WITH_PAYLOAD
    with_vector: bool = _WITH_VECTOR
    score_threshold: float | None = _SCORE_THRESHOLD


class BatchSearchRequest(_Request):
    """Exactly one of `vectors`, `vectors_b64`; at most ANNSERVE_MAX_BATCH queries."""

    vectors: list[list[float]] | None = None
    vectors_b64: str | None = Field(None, description="base64 of (n, dim) little-endian float32, row-major")
    k: int = _K
    params: dict[str, Any] = _PARAMS
    exact: bool = _EXACT
    filter: dict[str, Any] | None = Field(None, description="as for /search: applies to every query")
    with_payload: bool | list[str] = _WITH_PAYLOAD
    with_vector: bool = _WITH_VECTOR
    score_threshold: float | None = _SCORE_THRESHOLD


class SearchHit(BaseModel):
    id: str
    score: float = Field(description="cosine similarity / inner product (higher is better) or squared L2")
    payload: dict[str, Any] | None = Field(None, description="only with `with_payload`")
    vector: list[float] | None = Field(None, description="only with `with_vector`")


class SearchResponse(BaseModel):
    results: list[SearchHit] = Field(description="best first")


class BatchSearchResponse(BaseModel):
    results: list[list[SearchHit]] = Field(description="one list per query, in order, best first")


# ---- jobs, health -------------------------------------------------------------------------


class RebuildRequest(_Request):
    pass


class RebuildAccepted(BaseModel):
    job_id: str


class JobInfo(_Response):
    id: str
    state: Literal["queued", "running", "succeeded", "failed"]
    progress: float = Field(ge=0, le=1)
    error: str | None
    recall: float | None = Field(
        None, description="a rebuild's recall@10 of the new main index as measured before the swap"
    )
    collection: str | None = None
    created_at: str | None = Field(None, description="ISO 8601, UTC")
    finished_at: str | None = Field(None, description="ISO 8601, UTC")


class Status(BaseModel):
    status: str


class WorkerInfo(BaseModel):
    pid: int
    resident_memory_bytes: int | None = Field(None, description="RSS (Linux /proc); null where unreadable")


class WorkersInfo(BaseModel):
    answered_by: int = Field(description="The pid of the worker that answered")
    workers: list[WorkerInfo] = Field(description="Every live worker process, by pid")


# ---- recall, tuning -----------------------------------------------------------------------


class CollectionPatch(_Request):
    """Any subset; `search_params` replaces the collection's search defaults (`{}`: the kind's own)."""

    recall_target: float | None = Field(None, gt=0, le=1)
    recall_floor: float | None = Field(None, ge=0, le=1)
    auto_tune: bool | None = Field(None, strict=True)
    search_params: dict[str, Any] | None = None


class RecallInfo(_Response):
    recall_at_k: float | None = Field(description="mean recall@k over the last `samples` sampled searches")
    k: int | None = Field(description="k of those searches (the most frequent one if they differ)")
    samples: int = Field(description="sampled queries behind the figure (at most `window`)")
    window: int = Field(description="the rolling window: the last this many samples")
    target: float
    floor: float
    last_sampled_at: str | None = Field(description="ISO 8601, UTC")


class TuneRequest(_Request):
    target_recall: float = Field(0.95, gt=0, le=1)
    k: int = Field(10, ge=1, strict=True, description="results per query, at most ANNSERVE_MAX_K")


class TuneAnswer(_Response):
    kind: str
    knob: str | None = Field(description="the search parameter tuned; null for an exact kind")
    chosen: dict[str, Any] = Field(description="the values set as the collection's search defaults")
    recall: float
    latency_p50_ms: float | None = None
    below: dict[str, Any] | None = Field(
        None, description="the next smaller value of the knob, with its recall and p50 latency"
    )

"""The one protocol every index kind implements, and the input checks they all share.

A kind subclasses `Index` and fills in the underscore hooks (`_train`, `_add`, `_search`,
`_state`, `_restore`, `__len__`, `memory_bytes`, and `_admitted_vectors` for filtered search;
`_search_admitted` where the kind can filter inside its own search). Everything a user can get wrong (shapes,
dtypes, NaN, unknown parameters, untrained or empty indexes) is checked here, once, so that
every kind raises the same `ValueError` with the same wording.

Metric convention, fixed by the contract:
- `cosine`: vectors are L2-normalised here before they reach a kind, which then only ever
  sees inner product on unit vectors; the score is the cosine similarity (higher is better).
- `ip`: raw inner product (higher is better).
- `l2`: squared Euclidean distance (lower is better).
Kinds see `self.space`, which is `"ip"` for cosine and ip, `"l2"` for l2.
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

import numpy as np

METRICS = ("cosine", "ip", "l2")
FORMAT_VERSION = 1


class NotReadyError(ValueError):
    """The index cannot answer yet: it is untrained or empty."""


def higher_is_better(metric: str) -> bool:
    return metric != "l2"


def worst_score(metric: str) -> float:
    """The score that pads missing results, so that padding always sorts last."""
    return float("-inf") if higher_is_better(metric) else float("inf")


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is not None:
        return f"array of shape {tuple(shape)} and dtype {dtype}"
    return f"{type(value).__name__}"


def as_vectors(x: Any, dim: int, what: str = "vectors") -> np.ndarray:
    """Check and convert `x` to a C-contiguous float32 array of shape (n, dim).

    A single 1-D vector of length dim is accepted as one row.
    """
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{what}: expected numbers convertible to float32 with shape (n, {dim}), "
            f"got {_describe(x)} ({exc})"
        ) from None
    if arr.ndim == 1 and arr.shape[0] == dim:
        arr = arr.reshape(1, dim)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{what}: expected shape (n, {dim}), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{what}: expected at least one row of shape (n, {dim}), got 0 rows")
    check_finite(arr, what)
    return np.ascontiguousarray(arr)


def check_finite(arr: np.ndarray, what: str) -> np.ndarray:
    """`arr` ((dim,) or (n, dim)) unchanged, or a ValueError naming the NaN/Inf count and the
    first bad row. Numbers beyond float32's range became inf on conversion: they count too."""
    finite = np.isfinite(arr)
    if not finite.all():
        bad_rows = np.flatnonzero(~np.atleast_2d(finite).all(axis=1))
        raise ValueError(
            f"{what}: expected finite values, got {int((~finite).sum())} NaN/Inf values "
            f"in {bad_rows.size} rows (first bad row: {int(bad_rows[0])}; "
            "numbers beyond float32's range count too)"
        )
    return arr


def prepare_vectors(x: Any, dim: int, metric: str, what: str = "vectors") -> np.ndarray:
    """The one check and normalisation of vectors: `x` as C-contiguous (n, dim) float32 of
    finite values, rows unit-normalised for cosine; ValueError naming what came otherwise.
    What it returns can go to `Index.search_prepared` of any index of this dim and metric."""
    vectors = as_vectors(x, dim, what)
    return normalize_rows(vectors) if metric == "cosine" else vectors


def as_ids(ids: Any, n: int) -> np.ndarray:
    """Check and convert `ids` to an int64 array of shape (n,) with non-negative values."""
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"ids: expected an integer array of shape ({n},), got {_describe(ids)}")
    if arr.shape != (n,):
        raise ValueError(f"ids: expected shape ({n},) to match the vectors, got shape {arr.shape}")
    if n and (arr.min() < 0 or (arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max)):
        raise ValueError(f"ids: expected values in [0, 2**63), got min {arr.min()}, max {arr.max()}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def as_allowed(allowed: Any) -> np.ndarray:
    """Check and convert a filter's admitted ids to a sorted, unique (m,) int64 array.

    Ids that are not in an index are allowed (they are simply never returned)."""
    arr = np.asarray(allowed)
    if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
        raise ValueError(f"allowed: expected a sorted, unique int64 array of ids, got {_describe(allowed)}")
    if arr.ndim != 1:
        raise ValueError(f"allowed: expected a 1-D array of ids (m,), got shape {arr.shape}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"allowed: expected ids below 2**63, got max {arr.max()}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size and arr[0] < 0:
        raise ValueError(f"allowed: expected ids >= 0 (the ids given to add), got {arr[0]}")
    if arr.size > 1:
        steps = np.diff(arr)
        if not (steps > 0).all():
            at = int(np.flatnonzero(steps <= 0)[0])
            problem = "repeated" if steps[at] == 0 else "out of order"
            raise ValueError(
                f"allowed: expected ids sorted ascending without repeats, got {arr[at]} then "
                f"{arr[at + 1]} at positions {at}, {at + 1} ({problem}; np.unique sorts and dedupes)"
            )
    return arr


def normalize_rows(x: np.ndarray, squared_norms: np.ndarray | None = None) -> np.ndarray:
    """Unit-normalise rows for cosine; a zero row cannot be compared by angle. `squared_norms`:
    the rows' float64 sums of squares (einsum as below), when the caller has them already."""
    # einsum avoids np.linalg.norm's temporaries: this runs on every single-query search.
    # The sum of squares is taken in float64: in float32 it overflows to inf for components
    # above ~1e19 (the row would silently become all zeros) and underflows to 0 below ~1e-19
    # (a non-zero row would be called all-zero). The norm itself fits float32 unless the
    # components come near float32's own limit (the service caps norms far below it).
    if squared_norms is None:
        squared_norms = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    norms = np.sqrt(squared_norms).astype(x.dtype)
    if not norms.all():
        zero = np.flatnonzero(norms == 0)
        raise ValueError(
            f"cosine metric: expected non-zero vectors, got {zero.size} all-zero rows "
            f"(first: row {int(zero[0])})"
        )
    return x / norms[:, None]


# The largest value an integer parameter may take unless a kind says otherwise: the index
# libraries take their knobs as C ints (FAISS) or size_t (hnswlib), and a Python int beyond
# them raises TypeError or OverflowError deep inside the library instead of a ValueError.
MAX_INT_PARAM = 2**31 - 1
# Links per node of the HNSW kinds (`M`): layer 0 holds 2M links of 4 bytes per vector, and
# hnswlib preallocates them; hnswlib itself silently lowers a larger M to 10,000. Typical
# values are 8-64.
MAX_M = 1024
# Seeds of the in-house kinds: numba computes per-tree seeds in int64, so keep them 32-bit.
MAX_SEED = 2**32 - 1


def check_positive_int(name: str, value: Any, minimum: int = 1, maximum: int | None = MAX_INT_PARAM) -> int:
    """`value` as an int in [minimum, maximum] (maximum None: unbounded), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: expected an integer in [{minimum}, {maximum}], got {value}")
    return int(value)


# Filtered ANN search widens the kind's knob by 1 / selectivity ** FILTER_WIDENING (capped):
# a filter admitting a share s of the rows leaves about s of the visited rows as candidates.
# The square root (not 1 / s) held recall@10 >= 0.95 on the test subsets at every share that
# does not go to the exact scan (see tests/test_filtered_search.py), at a fraction of the cost.
FILTER_WIDENING = 0.5
MAX_FILTERED_EF = 4096


def widened(value: int, share: float, cap: int, power: float = FILTER_WIDENING) -> int:
    """A search knob raised for a filter that admits `share` (0 < share <= 1) of the rows."""
    return int(min(cap, max(value, np.ceil(value / share**power))))



class Index:
    """Base class of every index kind. See the module docstring for the metric convention.

    Class attributes a kind sets:
    - `kind`: the registry name.
    - `metrics`: the metrics it serves (others raise ValueError naming the pair).
    - `build_defaults`: build parameter -> default; `None` means "computed from the data at
      train time" (the kind records the value it chose in `self.build_params`).
    - `search_defaults`: search parameter -> default; a kind may refine them at train time.
    - `needs_training`: whether `add` requires a prior `train`.
    - `param_bounds`: integer parameter -> (min, max) where it differs from [1, 2**31 - 1];
      the default `_check_param` enforces it, so a kind overrides `_check_param` only for rules
      that are not a range (a choice of strings, "divides dim").
    """

    kind: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = METRICS
    build_defaults: ClassVar[dict[str, Any]] = {}
    search_defaults: ClassVar[dict[str, Any]] = {}
    needs_training: ClassVar[bool] = False
    param_bounds: ClassVar[dict[str, tuple[int, int | None]]] = {}
    # Filters admitting vectors of at most this many floats get the exact scan (see
    # EXACT_FILTER_FLOATS); an instance may set its own (0: always the kind's filtered search).
    exact_filter_floats: int | None = None

    def __init__(self, dim: int, metric: str = "l2", **build_params: Any) -> None:
        self.dim = check_positive_int("dim", dim)
        if metric not in METRICS:
            raise ValueError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")
        if metric not in self.metrics:
            raise ValueError(
                f"index kind {self.kind!r} cannot serve metric {metric!r} "
                f"(it serves: {', '.join(self.metrics)})"
            )
        self.metric = metric
        self.space = "l2" if metric == "l2" else "ip"
        unknown = sorted(set(build_params) - set(self.build_defaults))
        if unknown:
            raise ValueError(
                f"unknown build parameter(s) {unknown} for index kind {self.kind!r}; "
                f"expected some of {sorted(self.build_defaults) or 'none'}"
            )
        self.build_params: dict[str, Any] = {**self.build_defaults, **build_params}
        for name, value in build_params.items():
            # None means "computed at train time" only where that is the default.
            if value is not None or self.build_defaults[name] is not None:
                self.build_params[name] = self._check_param(name, value)
        self.search_params: dict[str, Any] = dict(self.search_defaults)
        self.is_trained = not self.needs_training

    # ---- public API (the contract); kinds implement the underscore hooks ----

    def train(self, x: Any) -> None:
        """Learn the data-dependent structure from (n, dim) float32 `x`; a no-op for kinds
        that need none. Resolves the size-dependent default parameters."""
        self._train(self.prepare(x, "train"))
        self.is_trained = True

    def add(self, x: Any, ids: Any) -> None:
        """Add (n, dim) float32 vectors with (n,) int64 ids (>= 0). Ids should be unique: what a
        repeated id does depends on the kind (hnswlib replaces the vector, the others keep
        both), so callers that replace items remove or tombstone the old one, as the service
        does."""
        vectors = self.prepare(x, "add")
        labels = as_ids(ids, vectors.shape[0])
        if not self.is_trained:
            raise NotReadyError(
                f"index kind {self.kind!r} must be trained before add: call train(x) first"
            )
        self._add(vectors, labels)

    def search(
        self, q: Any, k: int, *, allowed: Any = None, **params: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of (nq, dim) queries.

        Returns ids (nq, k) int64 and scores (nq, k) float32, best first; where fewer than k
        results exist the rows are padded with id -1 and the worst possible score.
        `allowed`: None (every id), or the ids that may be returned, a sorted unique (m,)
        int64 array (a filter's answer); the search then looks among those ids only (see
        `search_prepared`), it does not filter a fixed-k answer afterwards.
        """
        k = check_positive_int("k", k)
        if allowed is not None:
            allowed = as_allowed(allowed)
        return self.search_prepared(self.prepare(q, "queries"), k, self.resolve_search_params(params), allowed)

    def prepare(self, x: Any, what: str = "queries") -> np.ndarray:
        """`x` checked and normalised once (see `prepare_vectors`), ready for `search_prepared`."""
        return prepare_vectors(x, self.dim, self.metric, what)

    def search_would_wait(self, params: dict[str, Any]) -> bool:
        """Whether a search with these resolved `params` would now wait for other callers of
        this index (a read of its state, not a promise: one may start meanwhile). No kind but
        hnswlib makes a search wait; the service asks before searching on its event loop."""
        return False

    def search_prepared(
        self, queries: np.ndarray, k: int, params: dict[str, Any], allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search` without the input checks, for callers that checked once at their edge (the
        service checks a query once, then searches several shards and indexes with it):
        `queries` come from `prepare` (or `prepare_vectors` with this dim and metric), `k` is
        an int >= 1, `params` come from `resolve_search_params` and `allowed` is None or a
        sorted unique (m,) int64 array (`as_allowed`), trusted as it is.

        With `allowed`, the strategy is chosen per call from the admitted count (see
        `_search_filtered`): an exact scan of the admitted vectors when that is cheap, else
        the kind's own filtered search.
        """
        if not self.is_trained:
            raise NotReadyError(f"index kind {self.kind!r} is not trained: call train(x) first")
        if len(self) == 0:
            raise NotReadyError(f"index kind {self.kind!r} is empty: add vectors before searching")
        if allowed is None:
            ids, scores = self._search(queries, min(k, len(self)), params)
        else:
            ids, scores = self._search_filtered(queries, k, params, allowed)
        return self._pad(np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32), k)

    def resolve_search_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Defaults overridden by `params`; unknown names and bad values raise ValueError."""
        unknown = sorted(set(params) - set(self.search_defaults))
        if unknown:
            raise ValueError(
                f"unknown search parameter(s) {unknown} for index kind {self.kind!r}; "
                f"expected some of {sorted(self.search_defaults) or 'none'}"
            )
        merged = dict(self.search_params)
        for name, value in params.items():
            merged[name] = self._check_param(name, value)
        return merged

    def save(self, path: str | os.PathLike) -> None:
        """Write the whole index to one file (an uncompressed .npz archive, no pickles)."""
        meta = {
            "format": FORMAT_VERSION,
            "kind": self.kind,
            "dim": self.dim,
            "metric": self.metric,
            "build_params": self.build_params,
            "search_params": self.search_params,
            "is_trained": self.is_trained,
        }
        arrays = self._state() if self.is_trained else {}
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    def __len__(self) -> int:
        raise NotImplementedError

    def memory_bytes(self) -> int:
        """Bytes the index holds in memory (vectors, codes, graph or trees)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(dim={self.dim}, metric={self.metric!r}, "
            f"build={self.build_params}, search={self.search_params}, n={len(self)})"
        )

    # ---- hooks for the kinds ----

    def _train(self, x: np.ndarray) -> None:
        """x is (n, dim) float32, already normalised for cosine."""

    def _add(self, x: np.ndarray, ids: np.ndarray) -> None:
        raise NotImplementedError

    def _search(self, q: np.ndarray, k: int, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """q is (nq, dim) float32 (normalised for cosine), 1 <= k <= len(self).
        Return ids and scores of shape (nq, <=k), best first, in the contract's score
        convention (similarity for ip/cosine, squared distance for l2); -1 ids may pad."""
        raise NotImplementedError

    def _state(self) -> dict[str, np.ndarray]:
        """Everything needed to restore the trained index, as plain numpy arrays."""
        raise NotImplementedError

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _admitted_vectors(self, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The admitted ids that are in the index, (m',) int64, and their vectors (m', dim)
        float32 as the kind scores them (unit rows for cosine), for the exact scan of a
        selective filter. `allowed` is sorted and unique; the order returned is free."""
        raise NotImplementedError

    def _search_admitted(
        self, q: np.ndarray, k: int, params: dict[str, Any], allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The kind's approximate search among `allowed` (too many ids for an exact scan);
        k may exceed the admitted count. This default over-fetches and filters afterwards
        (`overfetch_filtered`); kinds that can skip non-admitted ids while they search
        override it."""
        return self.overfetch_filtered(q, k, params, allowed)

    def _check_param(self, name: str, value: Any) -> Any:
        """Validate one build or search parameter: an integer within `param_bounds`."""
        minimum, maximum = self.param_bounds.get(name, (1, MAX_INT_PARAM))
        return check_positive_int(name, value, minimum, maximum)

    # ---- filtered search (shared) ----

    def _search_filtered(
        self, q: np.ndarray, k: int, params: dict[str, Any], allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact among the admitted vectors when that scan is cheap (`exact_filter_cheap`),
        else the kind's filtered search."""
        if allowed.size == 0:
            return np.full((q.shape[0], 0), -1, dtype=np.int64), np.empty((q.shape[0], 0), np.float32)
        if self.exact_filter_cheap(allowed.size):
            return self._exact_filtered(q, k, allowed)
        ids, scores = self._search_admitted(q, k, params, allowed)
        ids, scores = self._pad(np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32), k)
        # A graph or bucket search can fail to reach k admitted items that exist (a small
        # admitted set far from the query): those rows get the exact scan, which is complete.
        # (Admitted ids absent from the index can send a full row here too: exact, only slower.)
        short = np.flatnonzero(ids[:, min(k, allowed.size) - 1] < 0)
        if short.size:
            more_ids, more_scores = self._pad(*self._exact_filtered(q[short], k, allowed), k)
            ids[short], scores[short] = more_ids, more_scores
        return ids, scores

    def _exact_filtered(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among the admitted vectors (from `_admitted_vectors`)."""
        ids, vectors = self._admitted_vectors(allowed)
        return exact_among(q, k, ids, vectors, self.space)

    def exact_filter_cheap(self, admitted: int) -> bool:
        """Whether an exact scan of `admitted` vectors is the strategy for a filter (see
        EXACT_FILTER_FLOATS): it then also gives exact answers. `exact_filter_floats`, where
        an instance sets it, replaces both limits."""
        if self.exact_filter_floats is not None:
            return admitted * self.dim <= self.exact_filter_floats
        return admitted * self.dim <= EXACT_FILTER_FLOATS and admitted <= EXACT_FILTER_MAX_SHARE * len(self)

    def overfetch_filtered(
        self, q: np.ndarray, k: int, params: dict[str, Any], allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Unfiltered searches for a growing number of results, filtered afterwards, until
        every row has k admitted results or the search returned all it can reach. The first
        fetch expects the admitted share of the index among the results (k / selectivity,
        doubled for the spread)."""
        n = len(self)
        nq = q.shape[0]
        want = min(k, allowed.size)
        out_ids = np.full((nq, want), -1, dtype=np.int64)
        out_scores = np.full((nq, want), worst_score(self.metric), dtype=np.float32)
        rows = np.arange(nq)
        fetch = min(n, max(2 * k, int(np.ceil(2 * k * n / allowed.size))))
        while rows.size:
            ids, scores = self._search(q[rows], fetch, params)
            ids = np.asarray(ids, dtype=np.int64)
            admitted = is_admitted(ids, allowed) & (ids >= 0)
            got = admitted.sum(axis=1)
            done = (got >= want) | (fetch >= n)
            for r in np.flatnonzero(done):  # stable: admitted results keep their order
                keep = np.flatnonzero(admitted[r])[:want]
                out_ids[rows[r], : keep.size] = ids[r, keep]
                out_scores[rows[r], : keep.size] = scores[r, keep]
            rows = rows[~done]
            fetch = min(n, 2 * fetch)
        return out_ids, out_scores

    # ---- shared helpers ----

    def _pad(self, ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        nq, got = ids.shape
        missing = ids < 0
        if missing.any():  # libraries pad short rows with -1 ids but arbitrary scores
            scores = np.where(missing, np.float32(worst_score(self.metric)), scores)
        if got >= k:
            return ids[:, :k], scores[:, :k]
        pad_ids = np.full((nq, k - got), -1, dtype=np.int64)
        pad_scores = np.full((nq, k - got), worst_score(self.metric), dtype=np.float32)
        return np.hstack([ids, pad_ids]), np.hstack([scores, pad_scores])


# The exact scan answers a filter whose admitted vectors hold at most EXACT_FILTER_FLOATS floats
# (2 MiB of float32: 10K rows of 50 dims, 670 of 784) and that admits at most
# EXACT_FILTER_MAX_SHARE of the index. Its cost is the admitted count (a gather and one matrix
# product), while a graph or IVF search under a filter costs about its unfiltered work divided
# by the share admitted (the knob is widened by 1 / share): selective filters are cheap to scan
# and expensive to search, broad ones the reverse. Measured on GloVe 20K (hnsw, one query per
# call): the scan of 10K rows (50%) took 0.66 ms against 0.06 ms unfiltered, of 2K rows (10%)
# 0.23 ms, of 200 rows 0.07 ms. Qdrant's full_scan_threshold (10 MB of vectors) and Lucene's
# switch on the filter's cardinality are the same idea.
EXACT_FILTER_FLOATS = 1 << 19
EXACT_FILTER_MAX_SHARE = 0.2


def exact_among(
    q: np.ndarray, k: int, ids: np.ndarray, vectors: np.ndarray, space: str
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of (nq, dim) queries among `vectors` (m, dim) float32 with their `ids`
    (m,): ids (nq, min(k, m)) and scores in the contract's convention, best first."""
    nq = q.shape[0]
    m = ids.shape[0]
    take = min(k, m)
    if take == 0:
        return np.full((nq, 0), -1, dtype=np.int64), np.empty((nq, 0), dtype=np.float32)
    dots = q @ vectors.T  # (nq, m) float32 by BLAS
    if space == "l2":
        scores = np.einsum("ij,ij->i", q, q)[:, None] - 2 * dots + np.einsum("ij,ij->i", vectors, vectors)[None, :]
        np.maximum(scores, 0, out=scores)  # rounding can dip below an exact 0
        keys = scores
    else:
        scores = dots
        keys = -dots
    if take < m:
        top = np.argpartition(keys, take - 1, axis=1)[:, :take]
    else:
        top = np.broadcast_to(np.arange(m), (nq, m))
    order = np.argsort(np.take_along_axis(keys, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    return ids[top], np.take_along_axis(scores, top, axis=1).astype(np.float32, copy=False)


def is_admitted(ids: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Boolean array of ids' shape: which ids are in the sorted (m,) int64 `allowed` (m > 0)."""
    at = np.searchsorted(allowed, ids).clip(max=allowed.size - 1)
    return allowed[at] == ids


def rows_of(allowed: np.ndarray, lookup: tuple[np.ndarray, np.ndarray | None]) -> np.ndarray:
    """Row positions of the admitted ids present in an index, from its `id_lookup`."""
    table, order = lookup
    if table.size == 0 or allowed.size == 0:
        return np.empty(0, dtype=np.int64)
    if order is None:  # dense: table[id] is the id's row, -1 where absent
        rows = table[allowed[: np.searchsorted(allowed, table.size)]]
        return rows[rows >= 0]
    at = np.searchsorted(table, allowed).clip(max=table.size - 1)
    return order[at[table[at] == allowed]]


def id_lookup(ids_by_row: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The id -> row lookup of an (n,) int64 id-per-row array for `rows_of`, built once per
    change of the rows: ids below 4n (the service's labels) get a direct table, (4n,) int64,
    read in O(m) for m admitted ids; sparser ids get (sorted ids, their rows), O(m log n).
    (A searchsorted of 50K admitted ids took ~2 ms, the table's gather ~0.1 ms.) A repeated
    id maps to its last row."""
    n = ids_by_row.size
    if n and int(ids_by_row.max()) < 4 * n:
        table = np.full(int(ids_by_row.max()) + 1, -1, dtype=np.int64)
        table[ids_by_row] = np.arange(n)
        return table, None
    order = np.argsort(ids_by_row, kind="stable")
    return ids_by_row[order], order


def read_index_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read the meta dict and the arrays of a file written by `Index.save`."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except FileNotFoundError:
        raise
    except Exception as exc:  # zip, json and key errors all mean the same thing to a caller
        raise ValueError(f"{path}: not a readable annserve index file ({exc})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: expected index format {FORMAT_VERSION}, got {meta.get('format')!r}")
    return meta, arrays


def serialize_bytes(blob: bytes) -> np.ndarray:
    """Wrap opaque library bytes (a FAISS or hnswlib index) as an array for `_state`."""
    return np.frombuffer(blob, dtype=np.uint8)

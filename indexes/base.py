"""The one protocol every index kind implements, and the input checks they all share.

A kind subclasses `Index` and fills in the underscore hooks (`_train`, `_add`, `_search`,
`_state`, `_restore`, `__len__`, `memory_bytes`). Everything a user can get wrong (shapes,
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


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Unit-normalise rows for cosine; a zero row cannot be compared by angle."""
    # einsum avoids np.linalg.norm's temporaries: this runs on every single-query search.
    # The sum of squares is taken in float64: in float32 it overflows to inf for components
    # above ~1e19 (the row would silently become all zeros) and underflows to 0 below ~1e-19
    # (a non-zero row would be called all-zero). The norm itself fits float32 unless the
    # components come near float32's own limit (the service caps norms far below it).
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(x.dtype)
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

    def search(self, q: Any, k: int, **params: Any) -> tuple[np.ndarray, np.ndarray]:
        """k nearest neighbours of (nq, dim) queries.

        Returns ids (nq, k) int64 and scores (nq, k) float32, best first; where fewer than k
        results exist the rows are padded with id -1 and the worst possible score.
        """
        k = check_positive_int("k", k)
        return self.search_prepared(self.prepare(q, "queries"), k, self.resolve_search_params(params))

    def prepare(self, x: Any, what: str = "queries") -> np.ndarray:
        """`x` checked and normalised once (see `prepare_vectors`), ready for `search_prepared`."""
        return prepare_vectors(x, self.dim, self.metric, what)

    def search_prepared(
        self, queries: np.ndarray, k: int, params: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search` without the input checks, for callers that checked once at their edge (the
        service checks a query once, then searches several shards and indexes with it):
        `queries` come from `prepare` (or `prepare_vectors` with this dim and metric), `k` is
        an int >= 1 and `params` come from `resolve_search_params`."""
        if not self.is_trained:
            raise NotReadyError(f"index kind {self.kind!r} is not trained: call train(x) first")
        if len(self) == 0:
            raise NotReadyError(f"index kind {self.kind!r} is empty: add vectors before searching")
        ids, scores = self._search(queries, min(k, len(self)), params)
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

    def _check_param(self, name: str, value: Any) -> Any:
        """Validate one build or search parameter: an integer within `param_bounds`."""
        minimum, maximum = self.param_bounds.get(name, (1, MAX_INT_PARAM))
        return check_positive_int(name, value, minimum, maximum)

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

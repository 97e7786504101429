"""The FAISS-backed kinds: flat, ivf_flat, ivf_pq, pq and hnsw.

Each kind is a thin wrapper: it builds one FAISS index (`library_index`), hands it the
vectors and queries that `base.Index` has already checked, and turns the search knobs into
a FAISS `SearchParameters` object *per call*. The index itself is never mutated by a
search, so concurrent searches with different knobs cannot race.

User ids reach FAISS either natively (IVF) or through `IndexIDMap`/`IndexIDMap2`. The two
compressed kinds re-score k x `rerank` PQ candidates from a second copy of the vectors, chosen
by the build parameter `refine` (bytes per vector on top of the m-byte codes and the ids):
- `"flat"` (default): raw float32 copies (`IndexRefineFlat`), dim x 4 bytes; exact scores.
  This makes the "compressed" index larger than `flat` itself.
- `"sq8"`: 8-bit scalar-quantised copies (`IndexRefine` over `IndexScalarQuantizer`), dim
  bytes; near-exact (GloVe-50 test subset: recall@10 0.946 vs 0.956 for ivf_pq, 0.965 vs
  0.978 for pq; cosine scores off by 1e-3 on average, 4e-3 at most).
- `"none"`: no copy; results and scores are the PQ approximations, and `rerank` must be 1
  (any other value raises: there is nothing to re-score from).

Not safe: `add`, `train` or `FlatIndex.remove` concurrently with a search on the same
object (FAISS reallocates its arrays); callers serialise writes against reads.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from .base import MAX_FILTERED_EF, MAX_M, Index, as_ids, id_lookup, rows_of, serialize_bytes, widened

# FAISS k-means wants this many training points per centroid before it stops warning.
MIN_POINTS_PER_CENTROID = 39
# Values of the `refine` build parameter of ivf_pq and pq (see the module docstring).
REFINE_CHOICES = ("flat", "sq8", "none")
# k-means iterations per PQ sub-quantizer (FAISS default 25). Measured on the test subsets,
# 10 changes recall@10 after rerank by < 0.01 and trains 2.5-4x faster; m k-means runs
# per training make this the dominant build cost of pq and ivf_pq.
PQ_TRAIN_ITERATIONS = 10


def default_nlist(n: int) -> int:
    """~4 sqrt(n) inverted lists, but never so many that a list has < 39 training points."""
    return max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_CENTROID))


def default_nprobe(nlist: int, metric: str) -> int:
    """Lists visited per query: 3 sqrt(nlist) (6 sqrt(nlist) for raw inner product), >= 8.

    Visited work then grows like n^0.75, not like n. Measured on the test subsets (nlist
    256 and 153): recall@10 0.965 on GloVe cosine, 1.0 on Fashion l2, and 0.947 on raw
    GloVe inner product, where vector norms vary and the best match often lies in a cell
    whose centroid scores poorly, so twice the lists are needed for the same recall.
    """
    factor = 6 if metric == "ip" else 3
    return min(nlist, max(8, round(factor * math.sqrt(nlist))))


def default_m(dim: int) -> int:
    """Sub-quantizers: dim / dsub for the largest dsub in 8..2 that divides dim.

    Sub-vectors of up to 8 dims keep codes small (dim/8 bytes at 8 bits) and training
    affordable (one k-means per sub-quantizer: dsub 2 took 16 s on GloVe-50 and minutes on
    Fashion-784 on a shared 2-core box, dsub 8 a few seconds), while `rerank` recovers the
    precision that coarser codes lose. Dims with no divisor in 2..8 fall back to the largest
    divisor <= dim / 2 (1 for a prime dim: one code per vector, poor recall).
    """
    dsub = next((d for d in range(8, 1, -1) if dim % d == 0), None)
    if dsub is not None:
        return dim // dsub
    return next((m for m in range(dim // 2, 0, -1) if dim % m == 0), 1)


def default_nbits(n: int) -> int:
    """8 bits per code (256 centroids), fewer when n cannot give 2^nbits centroids 39
    training points each (Fashion's 6K rows get 7); at least 1."""
    if n < 2 * MIN_POINTS_PER_CENTROID:
        return 1
    return min(8, int(math.log2(n / MIN_POINTS_PER_CENTROID)))


MAX_RERANK = 1024


def exact_knn(queries: np.ndarray, vectors: np.ndarray, k: int, space: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact k best rows of (m, dim) float32 `vectors` (already normalised for cosine) for
    (nq, dim) `queries` in `space` (`ip` or `l2`): rows (nq, min(k, m)) int64 and scores in the
    contract's convention, best first; FAISS's flat scan over the caller's array, no copy.
    A flat index would copy the rows in; a plain numpy product is cheaper still but its sums
    change order with the number of queries, so a query's scores would depend on its company."""
    take = min(k, vectors.shape[0])
    if take == 0:
        return np.full((len(queries), 0), -1, dtype=np.int64), np.empty((len(queries), 0), dtype=np.float32)
    metric = faiss.METRIC_L2 if space == "l2" else faiss.METRIC_INNER_PRODUCT
    scores, rows = faiss.knn(queries, vectors, take, metric=metric)
    return rows, scores


def id_selector(ids: np.ndarray, n: int | None = None) -> tuple[faiss.IDSelector, Any]:
    """A FAISS selector admitting the (m,) int64 `ids`, and what must stay alive while it is
    used. With `n` (the ids are positions below n) a bitmap of n bits (one bit test per row
    checked), else FAISS's hash set of the ids (`IDSelectorBatch`, with its Bloom filter)."""
    if n is None:
        return faiss.IDSelectorBatch(ids), ids
    mask = np.zeros(n, dtype=bool)
    mask[ids] = True
    bits = np.packbits(mask, bitorder="little")  # FAISS tests bit (i & 7) of byte i >> 3
    return faiss.IDSelectorBitmap(bits.size, faiss.swig_ptr(bits)), bits  # size in bytes


class _FaissIndex(Index):
    """Shared plumbing: one FAISS index in `library_index`, searched with per-call params.

    A kind implements `_build(x)` (a new, trained, empty FAISS index that maps user ids;
    x is None for kinds that need no training) and `_search_parameters(params, k)`.
    """

    # M: HNSW links per node (see MAX_M). nbits: PQ codebooks of 2**nbits entries. rerank: k x
    # rerank candidates are re-scored, and FAISS allocates them all at once.
    param_bounds = {"M": (2, MAX_M), "nbits": (1, 16), "rerank": (1, MAX_RERANK)}

    def __init__(self, dim: int, metric: str = "l2", **build_params: Any) -> None:
        super().__init__(dim, metric, **build_params)
        if self.build_params.get("refine") == "none":
            self.search_params["rerank"] = 1  # the only value it accepts
        self.library_index: faiss.Index | None = None if self.needs_training else self._build(None)
        self._memory = (-1, 0)  # (ntotal, bytes): serialising again only when the size changed
        # Bumped whenever the stored rows change (add, remove, train, load): the id -> row
        # lookup of filtered search is cached per value.
        self._rows_version = 0
        self._lookup: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def _faiss_metric(self) -> int:
        return faiss.METRIC_L2 if self.space == "l2" else faiss.METRIC_INNER_PRODUCT

    def _build(self, x: np.ndarray | None) -> faiss.Index:
        raise NotImplementedError

    def _search_parameters(self, params: dict[str, Any], k: int) -> faiss.SearchParameters | None:
        return None

    def _check_param(self, name: str, value: Any) -> Any:
        if name == "refine":
            if value not in REFINE_CHOICES:
                choices = ", ".join(repr(c) for c in REFINE_CHOICES)
                raise ValueError(f"refine: expected one of {choices}, got {value!r}")
            return value
        value = super()._check_param(name, value)
        if name == "m" and self.dim % value:
            raise ValueError(
                f"m: expected a divisor of dim={self.dim} (sub-vectors of equal length), got {value}"
            )
        if name == "rerank" and value != 1 and self.build_params.get("refine") == "none":
            raise ValueError(
                f"rerank: expected 1 for an index built with refine='none' (it keeps no copy "
                f"of the vectors to re-score from), got {value}"
            )
        return value

    def _pq_shape(self, n: int) -> tuple[int, int]:
        """Resolve m and nbits for n training vectors; 2^nbits centroids need >= 2^nbits points."""
        if self.build_params["m"] is None:
            self.build_params["m"] = default_m(self.dim)
        if self.build_params["nbits"] is None:
            self.build_params["nbits"] = default_nbits(n)
        m, nbits = self.build_params["m"], self.build_params["nbits"]
        if n < 2**nbits:
            raise ValueError(
                f"{self.kind}: nbits={nbits} needs at least {2**nbits} training vectors "
                f"(ideally {MIN_POINTS_PER_CENTROID * 2**nbits}), got {n}"
            )
        return m, nbits

    def _refined(self, index: faiss.Index, x: np.ndarray) -> faiss.Index:
        """Wrap a trained code index (trained on x) in the `refine` stage that `rerank`
        re-scores from, and in IndexIDMap so that user ids come back (the refine stage
        addresses vectors by position, so the ids must live outside it)."""
        refine = self.build_params["refine"]
        if refine == "flat":
            index = faiss.IndexRefineFlat(index)
        elif refine == "sq8":
            copies = faiss.IndexScalarQuantizer(self.dim, faiss.ScalarQuantizer.QT_8bit, self._faiss_metric)
            copies.train(x)  # per-dimension min and range: one pass over x
            index = faiss.IndexRefine(index, copies)
        elif isinstance(index, faiss.IndexIVF):
            return index  # IVF lists store user ids themselves
        return faiss.IndexIDMap(index)

    def _refine_parameters(
        self, params: dict[str, Any], base: faiss.SearchParameters | None = None
    ) -> faiss.SearchParameters | None:
        """The per-call parameters of a `_refined` index: `base` for its code index, and
        k x rerank candidates for its refine stage (which refine="none" does not have)."""
        if self.build_params["refine"] == "none":
            return base
        if base is None:
            return faiss.IndexRefineSearchParameters(k_factor=float(params["rerank"]))
        return faiss.IndexRefineSearchParameters(k_factor=float(params["rerank"]), base_index_params=base)

    def _train(self, x: np.ndarray) -> None:
        # Training a trained kind starts over: the new index is empty.
        if self.needs_training:
            self.library_index = self._build(x)
            self._rows_version += 1

    def _add(self, x: np.ndarray, ids: np.ndarray) -> None:
        self.library_index.add_with_ids(x, ids)
        self._rows_version += 1

    # ---- filtered search

    def _id_lookup(self) -> tuple[np.ndarray, np.ndarray]:
        """The IndexIDMap's id -> position lookup (`id_lookup`), cached until the rows change."""
        return self._id_map_cached()[1]

    def _id_map(self) -> np.ndarray:
        """The IndexIDMap's position -> id array, (ntotal,) int64, cached until the rows change
        (FAISS hands out a copy: 400K ids per call cost more than an exact scan of 400 rows)."""
        return self._id_map_cached()[0]

    def _id_map_cached(self) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        cached = self._lookup
        version = self._rows_version
        if cached is None or cached[0] != version:
            id_map = faiss.vector_to_array(self.library_index.id_map)
            cached = (version, (id_map, id_lookup(id_map)))
            self._lookup = cached
        return cached[1]

    def _admitted_vectors(self, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Every IDMap kind: positions from the id map, vectors from the inner index's
        # full-precision storage where it has one (flat, hnsw, refine="flat"), else decoded
        # (refine="sq8": near-exact; refine="none": the PQ codes, so the "exact" scan is only
        # as exact as the codes).
        positions = rows_of(allowed, self._id_lookup())
        ids = self._id_map()[positions]
        return ids, self._vectors_at(faiss.downcast_index(self.library_index.index), positions)

    def _vectors_at(self, inner: faiss.Index, positions: np.ndarray) -> np.ndarray:
        """(len(positions), dim) float32 vectors of the rows at `positions` of `inner`."""
        if isinstance(inner, faiss.IndexHNSW):
            inner = faiss.downcast_index(inner.storage)
        elif isinstance(inner, faiss.IndexRefine):
            inner = faiss.downcast_index(inner.refine_index)
        if isinstance(inner, faiss.IndexFlat):
            stored = faiss.rev_swig_ptr(inner.get_xb(), inner.ntotal * self.dim)
            return np.asarray(stored).reshape(inner.ntotal, self.dim)[positions]
        if positions.size == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return inner.reconstruct_batch(positions)

    def _search_admitted(
        self, q: np.ndarray, k: int, params: dict[str, Any], allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        # The inner index is searched directly with a bitmap over its positions: IndexIDMap
        # would translate a selector of user ids itself (IDSelectorTranslated), but the refine
        # stage of pq and ivf_pq does not pass a top-level selector on to its code index.
        positions = rows_of(allowed, self._id_lookup())
        n = int(self.library_index.ntotal)
        if positions.size == 0:
            return np.full((q.shape[0], 0), -1, dtype=np.int64), np.empty((q.shape[0], 0), np.float32)
        selector, keep_alive = id_selector(positions, n)
        inner = faiss.downcast_index(self.library_index.index)
        take = min(k, positions.size)
        scores, found = inner.search(q, take, params=self._filtered_parameters(params, take, selector, positions.size / n))
        del keep_alive  # the search is over: the bitmap may go
        return np.where(found >= 0, self._id_map()[np.maximum(found, 0)], -1), scores

    def _filtered_parameters(
        self, params: dict[str, Any], k: int, selector: faiss.IDSelector, share: float
    ) -> faiss.SearchParameters:
        """The per-call parameters of a filtered search: the kind's, its knob widened for a
        filter admitting `share` of the rows, the selector where the code index reads it."""
        found = self._search_parameters(params, k)
        if found is None:
            found = faiss.SearchParameters()
        target = found.base_index_params if isinstance(found, faiss.IndexRefineSearchParameters) else found
        if target is None:
            target = found.base_index_params = faiss.SearchParameters()
        target.sel = selector
        return found

    def _search(self, q: np.ndarray, k: int, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        # FAISS returns squared L2 for METRIC_L2 and the raw inner product for
        # METRIC_INNER_PRODUCT, best first: the contract's convention as is.
        scores, ids = self.library_index.search(q, k, params=self._search_parameters(params, k))
        return ids, scores

    def __len__(self) -> int:
        return 0 if self.library_index is None else int(self.library_index.ntotal)

    def memory_bytes(self) -> int:
        """Size of the serialised FAISS index: vectors or codes, ids, centroids, graph.

        A close approximation of the resident size (it leaves out allocator slack and
        FAISS's id hash maps); cached until the number of vectors changes.
        """
        if self.library_index is None:
            return 0
        n, size = self._memory
        if n != self.library_index.ntotal:
            n, size = self.library_index.ntotal, int(faiss.serialize_index(self.library_index).size)
            self._memory = (n, size)
        return size

    def _state(self) -> dict[str, np.ndarray]:
        return {"faiss": serialize_bytes(faiss.serialize_index(self.library_index))}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.library_index = faiss.deserialize_index(np.ascontiguousarray(arrays["faiss"]))
        self._rows_version += 1


class FlatIndex(_FaissIndex):
    """Exact search (`IndexFlat` behind `IndexIDMap2`); no parameters, no training.

    Also the service's "fresh" buffer: `remove(ids)` drops vectors by id, so new writes
    can be drained into the main index at rebuild time.
    """

    kind = "flat"

    def _build(self, x: np.ndarray | None) -> faiss.Index:
        # IDMap2 (not IDMap) also keeps id -> position, so `library_index.reconstruct(id)`
        # reads a buffered vector back by id.
        return faiss.IndexIDMap2(faiss.IndexFlat(self.dim, self._faiss_metric))

    def remove(self, ids: Any) -> int:
        """Remove the vectors with these (n,) int64 ids; unknown ids are ignored.

        Returns how many vectors were removed. Cost is O(len(self)) per call (the flat
        array is compacted), so remove in batches.
        """
        labels = as_ids(ids, int(np.size(ids)))
        if labels.size == 0:
            return 0
        removed = int(self.library_index.remove_ids(faiss.IDSelectorBatch(labels)))
        self._rows_version += 1
        return removed


class IVFFlatIndex(_FaissIndex):
    """Inverted lists of raw vectors (`IndexIVFFlat`): k-means into `nlist` cells, each
    query scans the `nprobe` nearest cells exactly."""

    kind = "ivf_flat"
    build_defaults = {"nlist": None}
    search_defaults = {"nprobe": None}
    needs_training = True

    def _coarse(self, x: np.ndarray) -> tuple[faiss.Index, int]:
        """The coarse quantizer and the nlist for training data x (n, dim); resolves the
        size-dependent defaults of nlist and nprobe."""
        n = x.shape[0]
        if self.build_params["nlist"] is None:
            self.build_params["nlist"] = default_nlist(n)
        nlist = self.build_params["nlist"]
        if n < nlist:
            raise ValueError(
                f"{self.kind}: nlist={nlist} needs at least {nlist} training vectors "
                f"(ideally {MIN_POINTS_PER_CENTROID * nlist}), got {n}"
            )
        self.search_params["nprobe"] = default_nprobe(nlist, self.metric)
        return faiss.IndexFlat(self.dim, self._faiss_metric), nlist

    def _build(self, x: np.ndarray | None) -> faiss.Index:
        quantizer, nlist = self._coarse(x)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, self._faiss_metric)
        index.train(x)
        return index

    def _search_parameters(self, params: dict[str, Any], k: int) -> faiss.SearchParameters:
        return faiss.SearchParametersIVF(nprobe=params["nprobe"])

    def _exact_filtered(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(self.library_index, faiss.IndexIVF):
            return super()._exact_filtered(q, k, allowed)  # ivf_pq behind its refine stage
        # The lists hold the ids themselves (no id map to read positions from): the lists that
        # hold an admitted id are scanned, the other rows skipped by a selector. That is the
        # exact scan here (for ivf_pq with refine="none" as exact as its codes), reading a few
        # lists where a full scan read all (GloVe 100K at 0.1%: 0.41 ms for every list).
        index = self.library_index
        lists = np.unique(self._list_of_id(allowed))
        if lists.size == 0:
            return np.full((q.shape[0], 0), -1, dtype=np.int64), np.empty((q.shape[0], 0), np.float32)
        centroids = index.quantizer.reconstruct_batch(lists)
        dots = q @ centroids.T
        if self.space == "l2":  # the coarse distances a residual scanner adds its terms to
            coarse = np.einsum("ij,ij->i", q, q)[:, None] - 2 * dots + np.einsum("ij,ij->i", centroids, centroids)
        else:
            coarse = dots
        assign = np.ascontiguousarray(np.broadcast_to(lists, (q.shape[0], lists.size)), dtype=np.int64)
        selector, keep_alive = self._ivf_selector(allowed)
        take = min(k, allowed.size)
        coarse = np.ascontiguousarray(coarse, dtype=np.float32)
        scores = np.empty((q.shape[0], take), dtype=np.float32)
        found = np.empty((q.shape[0], take), dtype=np.int64)
        params = faiss.SearchParametersIVF(nprobe=int(lists.size), sel=selector)
        # The C++ call: FAISS's Python wrapper of search_preassigned refuses search parameters.
        index.search_preassigned_c(
            q.shape[0], faiss.swig_ptr(q), take, faiss.swig_ptr(assign), faiss.swig_ptr(coarse),
            faiss.swig_ptr(scores), faiss.swig_ptr(found), False, params, None,
        )
        del keep_alive
        return found, scores

    def _list_of_id(self, allowed: np.ndarray) -> np.ndarray:
        """The inverted list of each admitted id in the index, from a lookup over every list's
        ids built once per change of the rows."""
        cached = self._lookup
        version = self._rows_version
        if cached is None or cached[0] != version:
            invlists = self.library_index.invlists
            ids, owners = [], []
            for number in range(self.library_index.nlist):
                size = invlists.list_size(number)
                if size:
                    ids.append(faiss.rev_swig_ptr(invlists.get_ids(number), size).copy())
                    owners.append(np.full(size, number, dtype=np.int64))
            all_ids = np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)
            owner = np.concatenate(owners) if owners else np.empty(0, dtype=np.int64)
            cached = self._lookup = (version, (id_lookup(all_ids), owner))
        lookup, owner = cached[1]
        return owner[rows_of(allowed, lookup)]

    def _ivf_selector(self, allowed: np.ndarray) -> tuple[faiss.IDSelector, Any]:
        """A selector of user ids: a bitmap when they are dense enough (the service's labels)."""
        top = int(allowed[-1]) + 1
        return id_selector(allowed, top if top <= 64 * max(len(self), allowed.size) else None)

    def _search_admitted(
        self, q: np.ndarray, k: int, params: dict[str, Any], allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(self.library_index, faiss.IndexIVF):
            return super()._search_admitted(q, k, params, allowed)
        share = min(1.0, allowed.size / len(self))
        return self._search_ivf_filtered(q, k, widened(params["nprobe"], share, self.library_index.nlist), allowed)

    def _search_ivf_filtered(
        self, q: np.ndarray, k: int, nprobe: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """A bare IVF index searched at `nprobe` under a selector of the user ids `allowed`
        (a bitmap when they are dense enough, as the service's labels are)."""
        selector, keep_alive = self._ivf_selector(allowed)
        scores, found = self.library_index.search(
            q, min(k, allowed.size), params=faiss.SearchParametersIVF(nprobe=nprobe, sel=selector)
        )
        del keep_alive
        return found, scores

    def _filtered_parameters(
        self, params: dict[str, Any], k: int, selector: faiss.IDSelector, share: float
    ) -> faiss.SearchParameters:
        nlist = self.build_params["nlist"]
        return super()._filtered_parameters({**params, "nprobe": widened(params["nprobe"], share, nlist)}, k, selector, share)


class IVFPQIndex(IVFFlatIndex):
    """Inverted lists of PQ codes (`IndexIVFPQ`, m codes of nbits per vector, residuals to
    the cell centroid), with re-scoring of k x `rerank` candidates from the `refine` copy."""

    kind = "ivf_pq"
    build_defaults = {"nlist": None, "m": None, "nbits": None, "refine": "flat"}
    search_defaults = {"nprobe": None, "rerank": 8}

    def _build(self, x: np.ndarray | None) -> faiss.Index:
        quantizer, nlist = self._coarse(x)
        m, nbits = self._pq_shape(x.shape[0])
        index = faiss.IndexIVFPQ(quantizer, self.dim, nlist, m, nbits, self._faiss_metric)
        index.pq.cp.niter = PQ_TRAIN_ITERATIONS
        index.train(x)
        return self._refined(index, x)

    def _search_parameters(self, params: dict[str, Any], k: int) -> faiss.SearchParameters:
        return self._refine_parameters(params, faiss.SearchParametersIVF(nprobe=params["nprobe"]))


class PQIndex(_FaissIndex):
    """Product quantisation without inverted lists (`IndexPQ`): every query scans all
    codes, then re-scores k x `rerank` candidates from the `refine` copy."""

    kind = "pq"
    build_defaults = {"m": None, "nbits": None, "refine": "flat"}
    search_defaults = {"rerank": 10}
    needs_training = True

    def _build(self, x: np.ndarray | None) -> faiss.Index:
        chosen_m = self.build_params["m"] is not None
        m, nbits = self._pq_shape(x.shape[0])
        if self.dim // m == 2 and nbits < 3:
            # IndexPQ scores 2-d sub-vectors with a SIMD kernel that fails at search time
            # unless 2**nbits is a multiple of 8 (`ksub % 8 == 0`); 1-d sub-vectors have no such
            # kernel. Only small sets get nbits < 3 by default.
            if chosen_m:
                raise ValueError(
                    f"pq: m={m} makes sub-vectors of 2 dims, which FAISS's IndexPQ can search only "
                    f"with nbits >= 3, got nbits={nbits}: choose another m or nbits >= 3"
                )
            m = self.build_params["m"] = self.dim
        index = faiss.IndexPQ(self.dim, m, nbits, self._faiss_metric)
        index.pq.cp.niter = PQ_TRAIN_ITERATIONS
        index.train(x)
        return self._refined(index, x)

    def _search_parameters(self, params: dict[str, Any], k: int) -> faiss.SearchParameters | None:
        return self._refine_parameters(params)

    def _search_admitted(
        self, q: np.ndarray, k: int, params: dict[str, Any], allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        # FAISS's IndexPQ takes no search parameters at all ("invalid search params"), so no
        # selector: it scans every code anyway, and over-fetching k / selectivity costs only
        # the larger re-scoring.
        return self.overfetch_filtered(q, k, params, allowed)


class HNSWIndex(_FaissIndex):
    """FAISS's HNSW graph over raw vectors (`IndexHNSWFlat` behind `IndexIDMap`).

    `M` neighbours per node (2M on the bottom layer) and `ef_construction` set recall
    ceiling, memory and build time; `ef` (the search beam, at least k) trades speed for
    recall per query. No training; vectors cannot be removed.
    """

    kind = "hnsw"
    build_defaults = {"M": 16, "ef_construction": 200}
    search_defaults = {"ef": 64}

    def _build(self, x: np.ndarray | None) -> faiss.Index:
        graph = faiss.IndexHNSWFlat(self.dim, self.build_params["M"], self._faiss_metric)
        graph.hnsw.efConstruction = self.build_params["ef_construction"]
        return faiss.IndexIDMap(graph)

    def _search_parameters(self, params: dict[str, Any], k: int) -> faiss.SearchParameters:
        # FAISS returns fewer than k results when efSearch < k; hnswlib raises the beam to
        # k itself, and so do we, so that ef means the same thing in both kinds.
        return faiss.SearchParametersHNSW(efSearch=max(params["ef"], k))

    def _filtered_parameters(
        self, params: dict[str, Any], k: int, selector: faiss.IDSelector, share: float
    ) -> faiss.SearchParameters:
        # Non-admitted nodes are still walked through but never enter the beam's results, so
        # the beam must grow as the filter gets more selective to keep as many admitted ones:
        # by 1 / share, not its square root, which left correlated filters (an admitted
        # cluster away from the query) at recall 0.4-0.5 on Fashion.
        ef = widened(max(params["ef"], k), share, MAX_FILTERED_EF, power=1.0)
        return super()._filtered_parameters({**params, "ef": ef}, k, selector, share)

"""In-house LSH: random-hyperplane (SimHash) tables with query-directed multi-probe search.

Structure (all flat numpy arrays, as in pynndescent's trees):
- `planes` (n_tables * n_bits, dim + 1) float32 and `bias` (n_tables * n_bits,) float32:
  bit b of table t is `planes[t*n_bits + b] . lift(x) > bias[...]`.
- per table, a CSR bucket list: `bucket_keys` (sorted unique keys of each table, concatenated),
  `table_start` (n_tables + 1,) into `bucket_keys`, `bucket_ptr` (n_buckets + 1,) into
  `members` (n_tables * n,) int32 row positions. A derived `directory` (n_tables, 2**p + 1)
  maps the top p key bits to a range of `bucket_keys`, so a lookup reads about one cache line
  instead of binary-searching.
- `vectors` (n, dim) float32 and `ids` (n,) int64, for exact re-scoring of the candidates.

Search: the query's projections give its key in every table and its margin to every
hyperplane; each table is probed at `probes` buckets in order of increasing sum of squared
margins of the flipped bits (Lv et al. 2007, query-directed multi-probe LSH: the
least-confident bits are flipped first). The union of the visited buckets is de-duplicated
with a visited-marker array (a generation counter, so nothing is cleared per query) and
re-scored exactly; the best k are returned.

Metrics, and why all three are served:
- `cosine`: base.py hands us unit vectors; hyperplanes are offset to the median projection
  of the training data (GloVe is far from centred: hyperplanes through the origin would put
  most points on one side and make a few huge buckets).
- `ip`: the Simple-LSH lift of Neyshabur & Srebro (2015): x -> [x / M, sqrt(1 - |x|^2/M^2)]
  with M the largest training norm, q -> [q / |q|, 0]; on the lifted unit sphere the
  nearest neighbour in angle is the maximum inner product. Rows added later with a norm above
  M are lifted with a zero last coordinate (hashed by direction only); re-scoring is exact.
- `l2`: a hyperplane with a data-dependent offset is itself a locality-sensitive partition
  for Euclidean distance (two points are separated with a probability that grows with their
  distance along the hyperplane's normal), so the same tables serve l2 without a separate
  p-stable (E2LSH) scheme; re-scoring is exact squared distance.

Knobs: `n_tables` (L) and `n_bits` (K) at build, `probes` at search. More tables raise
recall and memory (4 bytes per row per table); more bits make smaller buckets (faster,
lower recall per probe); more probes raise recall at the cost of candidates to re-score.
The default K gives about 8 rows per bucket; see `_train`.
"""

from __future__ import annotations

import threading
from typing import Any

import numba
import numpy as np

from .base import Index, check_positive_int

_MAX_BITS = 30  # keys are int64 in the kernels, uint32 when stored
_GEN_LIMIT = 255  # visited markers are uint8 generations
_PROJECT_CHUNK = 16384
import os
_ORTHOGONAL = os.environ.get("LSH_ORTHO", "1") == "1"


# ---------------------------------------------------------------- numba kernels


@numba.njit(nogil=True, cache=True, fastmath=True)
def _pack_keys(proj, bias, n_tables, n_bits, out, row0):
    """Bits of (rows, n_tables*n_bits) projections -> keys out[t, row0 + i] (uint32)."""
    rows = proj.shape[0]
    for i in range(rows):
        for t in range(n_tables):
            key = 0
            base = t * n_bits
            for b in range(n_bits):
                if proj[i, base + b] > bias[base + b]:
                    key |= 1 << b
            out[t, row0 + i] = key


@numba.njit(nogil=True, cache=True)
def _expand_keys(bucket_keys, table_start, bucket_ptr, members, n_tables, n, out):
    """Inverse of the CSR build: out[t, row] = key of row in table t."""
    for t in range(n_tables):
        for b in range(table_start[t], table_start[t + 1]):
            key = bucket_keys[b]
            for j in range(bucket_ptr[b], bucket_ptr[b + 1]):
                out[t, members[j]] = key


@numba.njit(nogil=True, cache=True)
def _build_directory(bucket_keys, table_start, n_bits, dir_bits, out):
    """out[t, p] = first bucket of table t whose key's top dir_bits bits are >= p."""
    n_tables = table_start.shape[0] - 1
    size = 1 << dir_bits
    shift = n_bits - dir_bits
    for t in range(n_tables):
        b = table_start[t]
        end = table_start[t + 1]
        for p in range(size + 1):
            while b < end and (np.int64(bucket_keys[b]) >> shift) < p:
                b += 1
            out[t, p] = b


@numba.njit(nogil=True, cache=True, fastmath=True)
def _heap_push(hs, ht, hf, hl, size, score, table, flip, last):
    """Min-heap on hs of probe perturbations (table, flipped-bit mask, last sorted bit)."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if hs[parent] <= score:
            break
        hs[i] = hs[parent]
        ht[i] = ht[parent]
        hf[i] = hf[parent]
        hl[i] = hl[parent]
        i = parent
    hs[i] = score
    ht[i] = table
    hf[i] = flip
    hl[i] = last
    return size + 1


@numba.njit(nogil=True, cache=True, fastmath=True)
def _heap_pop(hs, ht, hf, hl, size):
    """Remove the root (the caller has read it); returns the new size."""
    size -= 1
    score, table, flip, last = hs[size], ht[size], hf[size], hl[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and hs[child + 1] < hs[child]:
            child += 1
        if score <= hs[child]:
            break
        hs[i] = hs[child]
        ht[i] = ht[child]
        hf[i] = hf[child]
        hl[i] = hl[child]
        i = child
    hs[i] = score
    ht[i] = table
    hf[i] = flip
    hl[i] = last
    return size


@numba.njit(nogil=True, cache=True, fastmath=True)
def _scan_bucket(
    t, key, q, l2, k, bucket_keys, bucket_ptr, members, directory, shift, vectors,
    marker, gen, out_pos, out_score, found,
):
    """Re-score the unseen members of bucket `key` of table t into the top-k min-heap.

    Returns (found, newly scored)."""
    lo = directory[t, key >> shift]
    hi = directory[t, (key >> shift) + 1]
    bucket = -1
    for b in range(lo, hi):
        bk = np.int64(bucket_keys[b])
        if bk == key:
            bucket = b
            break
        if bk > key:
            break
    if bucket < 0:
        return found, 0
    dim = vectors.shape[1]
    scored = 0
    for j in range(bucket_ptr[bucket], bucket_ptr[bucket + 1]):
        pos = members[j]
        if marker[pos] == gen:
            continue
        marker[pos] = gen
        scored += 1
        s = 0.0
        if l2:
            for d in range(dim):
                diff = vectors[pos, d] - q[d]
                s += diff * diff
            s = -s
        else:
            for d in range(dim):
                s += vectors[pos, d] * q[d]
        if found < k:  # sift a new leaf up
            i = found
            found += 1
            while i > 0:
                parent = (i - 1) >> 1
                if out_score[parent] <= s:
                    break
                out_score[i] = out_score[parent]
                out_pos[i] = out_pos[parent]
                i = parent
            out_score[i] = s
            out_pos[i] = pos
        elif s > out_score[0]:  # replace the worst and sift it down
            i = 0
            while True:
                child = 2 * i + 1
                if child >= k:
                    break
                if child + 1 < k and out_score[child + 1] < out_score[child]:
                    child += 1
                if s <= out_score[child]:
                    break
                out_score[i] = out_score[child]
                out_pos[i] = out_pos[child]
                i = child
            out_score[i] = s
            out_pos[i] = pos
    return found, scored


@numba.njit(nogil=True, cache=True, fastmath=True)
def _query(
    q, qscale, planes_t, bias, n_tables, n_bits, probes, k, l2,
    bucket_keys, bucket_ptr, members, directory, dir_bits,
    vectors, marker, gen, out_pos, out_score, z, order, margin, hs, ht, hf, hl,
):
    """One query: probe the tables, re-score the union exactly, keep the best k.

    In every table the query's own bucket is visited, then probes - 1 more in order of
    increasing perturbation score (sum of the squared margins of the flipped bits).
    (Spending the same budget across tables by one global score was tried: on GloVe it
    re-scored as many rows for clearly lower recall.) Writes row positions and scores (higher is better;
    -squared distance for l2) best first; -1 positions pad. Returns the number of
    distinct rows re-scored.
    """
    dim = vectors.shape[1]
    m = n_tables * n_bits
    # Projections of the query on every hyperplane (planes_t is (dim, m): vectorises).
    for r in range(m):
        z[r] = 0.0
    for d in range(dim):
        qd = q[d] * qscale
        for r in range(m):
            z[r] += qd * planes_t[d, r]
    shift = n_bits - dir_bits
    found = 0
    scored = 0
    for t in range(n_tables):
        base = t * n_bits
        key = 0
        for b in range(n_bits):
            v = z[base + b] - bias[base + b]
            if v > 0:
                key |= 1 << b
            margin[base + b] = v * v
        found, got = _scan_bucket(
            t, key, q, l2, k, bucket_keys, bucket_ptr, members, directory, shift, vectors,
            marker, gen, out_pos, out_score, found,
        )
        scored += got
        if probes > 1:
            # bits of this table by increasing margin (insertion sort: n_bits is small)
            for i in range(n_bits):
                mv = margin[base + i]
                j = i - 1
                while j >= 0 and margin[base + order[base + j]] > mv:
                    order[base + j + 1] = order[base + j]
                    j -= 1
                order[base + j + 1] = i
            first = order[base]
            hsize = _heap_push(hs, ht, hf, hl, 0, margin[base + first], t, 1 << first, 0)
            for _ in range(probes - 1):
                if hsize == 0:
                    break
                score, flip, last = hs[0], hf[0], hl[0]
                hsize = _heap_pop(hs, ht, hf, hl, hsize)
                if last + 1 < n_bits:
                    cur = order[base + last]
                    nxt = order[base + last + 1]
                    # shift: flip the next bit instead of the last one; expand: flip both
                    hsize = _heap_push(
                        hs, ht, hf, hl, hsize, score - margin[base + cur] + margin[base + nxt],
                        t, (flip ^ (1 << cur)) | (1 << nxt), last + 1,
                    )
                    hsize = _heap_push(
                        hs, ht, hf, hl, hsize, score + margin[base + nxt], t, flip | (1 << nxt),
                        last + 1,
                    )
                found, got = _scan_bucket(
                    t, key ^ flip, q, l2, k, bucket_keys, bucket_ptr, members, directory,
                    shift, vectors, marker, gen, out_pos, out_score, found,
                )
                scored += got
    # min-heap -> best first (k is small: insertion sort)
    for i in range(1, found):
        s = out_score[i]
        pos = out_pos[i]
        j = i - 1
        while j >= 0 and out_score[j] < s:
            out_score[j + 1] = out_score[j]
            out_pos[j + 1] = out_pos[j]
            j -= 1
        out_score[j + 1] = s
        out_pos[j + 1] = pos
    for i in range(found, k):
        out_pos[i] = -1
        out_score[i] = -np.inf
    return scored


@numba.njit(nogil=True, cache=True, fastmath=True)
def _search_serial(
    queries, qscale, planes_t, bias, n_tables, n_bits, probes, k, l2,
    bucket_keys, bucket_ptr, members, directory, dir_bits, vectors, marker, gen,
    out_pos, out_score, counts,
):
    """Queries one after another on the caller's thread; returns the next generation.

    counts[i] receives the number of distinct candidates re-scored for query i."""
    m = n_tables * n_bits
    z = np.empty(m, dtype=np.float32)
    order = np.empty(m, dtype=np.int64)
    margin = np.empty(m, dtype=np.float32)
    hcap = probes + 2  # each pop pushes at most two
    hs = np.empty(hcap, dtype=np.float32)
    ht = np.empty(hcap, dtype=np.int64)
    hf = np.empty(hcap, dtype=np.int64)
    hl = np.empty(hcap, dtype=np.int64)
    for i in range(queries.shape[0]):
        if gen > _GEN_LIMIT:  # the uint8 marker wraps: clear it once every 255 queries
            marker[:] = 0
            gen = 1
        counts[i] = _query(
            queries[i], qscale[i], planes_t, bias, n_tables, n_bits, probes, k, l2,
            bucket_keys, bucket_ptr, members, directory, dir_bits, vectors, marker, gen,
            out_pos[i], out_score[i], z, order, margin, hs, ht, hf, hl,
        )
        gen += 1
    return gen


@numba.njit(nogil=True, cache=True, fastmath=True, parallel=True)
def _search_parallel(
    queries, qscale, planes_t, bias, n_tables, n_bits, probes, k, l2,
    bucket_keys, bucket_ptr, members, directory, dir_bits, vectors, n_chunks,
    out_pos, out_score, counts,
):
    """A batch split into n_chunks contiguous runs, one marker array per run."""
    nq = queries.shape[0]
    n = vectors.shape[0]
    for c in numba.prange(n_chunks):
        start = c * nq // n_chunks
        stop = (c + 1) * nq // n_chunks
        marker = np.zeros(n, dtype=np.uint8)
        _search_serial(
            queries[start:stop], qscale[start:stop], planes_t, bias, n_tables, n_bits,
            probes, k, l2, bucket_keys, bucket_ptr, members, directory, dir_bits, vectors,
            marker, 1, out_pos[start:stop], out_score[start:stop], counts[start:stop],
        )


# ---------------------------------------------------------------- the index


class LSHIndex(Index):
    """Random-hyperplane LSH with query-directed multi-probe search and exact re-scoring."""

    kind = "lsh"
    metrics = ("cosine", "ip", "l2")
    # None: computed from the training size in _train (and recorded in build_params).
    build_defaults = {"n_tables": 32, "n_bits": None, "seed": 20261121}
    search_defaults = {"probes": 32}
    needs_training = True

    # rows per bucket the default n_bits aims at
    TARGET_BUCKET = 8

    def __init__(self, dim: int, metric: str = "l2", **build_params: Any) -> None:
        super().__init__(dim, metric, **build_params)
        self._tls = threading.local()
        self._empty()

    def _empty(self) -> None:
        self._vectors = np.empty((0, self.dim), dtype=np.float32)
        self._ids = np.empty(0, dtype=np.int64)
        self._bucket_keys = np.empty(0, dtype=np.uint32)
        self._table_start = np.zeros(1, dtype=np.int64)
        self._bucket_ptr = np.zeros(1, dtype=np.int64)
        self._members = np.empty(0, dtype=np.int32)
        self._directory = np.zeros((0, 2), dtype=np.int64)
        self._dir_bits = 1

    def _check_param(self, name: str, value: Any) -> Any:
        if name == "seed":
            return check_positive_int(name, value, minimum=0)
        value = check_positive_int(name, value)
        if name == "n_bits" and value > _MAX_BITS:
            raise ValueError(f"n_bits: expected an integer in [1, {_MAX_BITS}], got {value}")
        return value

    # ---- build

    def _train(self, x: np.ndarray) -> None:
        n = x.shape[0]
        if self.build_params["n_bits"] is None:
            # About TARGET_BUCKET rows per bucket; at least 4 bits so probing has choices.
            bits = int(round(np.log2(max(n, 2) / self.TARGET_BUCKET)))
            self.build_params["n_bits"] = int(min(max(bits, 4), 24))
        n_tables = self.build_params["n_tables"]
        n_bits = self.build_params["n_bits"]
        rng = np.random.default_rng(self.build_params["seed"])
        planes = rng.standard_normal((n_tables, n_bits, self.dim + 1))
        if _ORTHOGONAL and n_bits <= self.dim + 1:
            # Orthogonal normals within a table: no two bits of a key measure the same thing.
            planes = np.linalg.qr(planes.transpose(0, 2, 1))[0].transpose(0, 2, 1)
        planes = planes.reshape(n_tables * n_bits, self.dim + 1).astype(np.float32)
        self._lift_norm = float(np.sqrt((x.astype(np.float64) ** 2).sum(axis=1).max()))
        if self._lift_norm == 0.0:
            self._lift_norm = 1.0
        self._planes = planes
        # Offsets at the median projection of (a sample of) the training rows: balanced bits.
        sample = x if n <= 20000 else x[rng.choice(n, 20000, replace=False)]
        proj = self._project(sample)
        self._bias = np.ascontiguousarray(np.median(proj, axis=0), dtype=np.float32)
        self._planes_t = np.ascontiguousarray(planes[:, : self.dim].T)
        self._empty()

    def _lift(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-row scale and extra coordinate of the metric's lift (see module docstring)."""
        n = x.shape[0]
        if self.metric != "ip":
            return np.ones(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
        sq = (x.astype(np.float64) ** 2).sum(axis=1) / self._lift_norm**2
        extra = np.sqrt(np.clip(1.0 - sq, 0.0, None))
        return np.full(n, 1.0 / self._lift_norm, dtype=np.float32), extra.astype(np.float32)

    def _project(self, x: np.ndarray) -> np.ndarray:
        scale, extra = self._lift(x)
        proj = x @ self._planes[:, : self.dim].T
        proj *= scale[:, None]
        proj += extra[:, None] * self._planes[:, self.dim][None, :]
        return proj

    def _add(self, x: np.ndarray, ids: np.ndarray) -> None:
        n_tables = self.build_params["n_tables"]
        n_bits = self.build_params["n_bits"]
        n_old = self._vectors.shape[0]
        n = n_old + x.shape[0]
        keys = np.empty((n_tables, n), dtype=np.uint32)
        if n_old:
            _expand_keys(
                self._bucket_keys, self._table_start, self._bucket_ptr, self._members,
                n_tables, n_old, keys,
            )
        for start in range(0, x.shape[0], _PROJECT_CHUNK):
            chunk = x[start : start + _PROJECT_CHUNK]
            _pack_keys(self._project(chunk), self._bias, n_tables, n_bits, keys, n_old + start)
        self._vectors = np.ascontiguousarray(np.vstack([self._vectors, x]), dtype=np.float32)
        self._ids = np.concatenate([self._ids, ids])
        self._build_tables(keys)

    def _build_tables(self, keys: np.ndarray) -> None:
        """CSR per table from keys (n_tables, n) uint32."""
        n_tables, n = keys.shape
        all_keys, starts, ptrs, members = [], [0], [], []
        for t in range(n_tables):
            order = np.argsort(keys[t], kind="stable")
            sorted_keys = keys[t][order]
            first = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
            all_keys.append(sorted_keys[first])
            starts.append(starts[-1] + first.size)
            ptrs.append(first + t * n)
            members.append(order.astype(np.int32))
        self._bucket_keys = np.concatenate(all_keys)
        self._table_start = np.asarray(starts, dtype=np.int64)
        self._bucket_ptr = np.concatenate(ptrs + [np.array([n_tables * n])]).astype(np.int64)
        self._members = np.concatenate(members)
        self._make_directory()

    def _make_directory(self) -> None:
        n_bits = self.build_params["n_bits"]
        n_buckets = max(1, self._bucket_keys.size // max(1, self.build_params["n_tables"]))
        self._dir_bits = int(min(n_bits, max(1, int(np.log2(n_buckets)))))
        self._directory = np.empty(
            (self.build_params["n_tables"], (1 << self._dir_bits) + 1), dtype=np.int64
        )
        _build_directory(
            self._bucket_keys, self._table_start, n_bits, self._dir_bits, self._directory
        )

    # ---- search

    def _marker(self) -> tuple[np.ndarray, int]:
        """This thread's visited-marker array and next generation (no clearing per query)."""
        n = self._vectors.shape[0]
        marker = getattr(self._tls, "marker", None)
        if marker is None or marker.shape[0] < n:
            marker = self._tls.marker = np.zeros(n, dtype=np.uint8)
            self._tls.gen = 1
        return marker, self._tls.gen

    def _search(self, q: np.ndarray, k: int, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        ids, scores, _ = self._run(q, k, params["probes"])
        return ids, scores

    def candidate_counts(self, q: np.ndarray, probes: int) -> np.ndarray:
        """Distinct candidates re-scored per query (nq,) int64 at `probes`: the cost knob.

        `q` must already be prepared as `search` would (normalised for cosine)."""
        return self._run(np.ascontiguousarray(q, dtype=np.float32), 1, probes)[2]

    def _run(self, q: np.ndarray, k: int, probes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        nq = q.shape[0]
        if self.metric == "ip":
            qscale = (1.0 / np.linalg.norm(q, axis=1)).astype(np.float32)
            qscale[~np.isfinite(qscale)] = 0.0
        else:
            qscale = np.ones(nq, dtype=np.float32)
        out_pos = np.empty((nq, k), dtype=np.int64)
        out_score = np.empty((nq, k), dtype=np.float32)
        counts = np.empty(nq, dtype=np.int64)
        args = (
            q, qscale, self._planes_t, self._bias, self.build_params["n_tables"],
            self.build_params["n_bits"], probes, k, self.metric == "l2",
            self._bucket_keys, self._bucket_ptr, self._members, self._directory,
            self._dir_bits, self._vectors,
        )
        threads = numba.get_num_threads()
        if nq >= 4 * threads and threads > 1:
            _search_parallel(*args, min(nq, 4 * threads), out_pos, out_score, counts)
        else:
            marker, gen = self._marker()
            self._tls.gen = _search_serial(*args, marker, gen, out_pos, out_score, counts)
        ids = np.where(out_pos >= 0, self._ids[np.maximum(out_pos, 0)], -1)
        if self.metric == "l2":
            out_score = -out_score
        return ids, out_score, counts

    # ---- persistence and size

    def _state(self) -> dict[str, np.ndarray]:
        return {
            "vectors": self._vectors,
            "ids": self._ids,
            "planes": self._planes,
            "bias": self._bias,
            "lift_norm": np.array([self._lift_norm]),
            "bucket_keys": self._bucket_keys,
            "table_start": self._table_start,
            "bucket_ptr": self._bucket_ptr,
            "members": self._members,
        }

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self._vectors = np.ascontiguousarray(arrays["vectors"], dtype=np.float32)
        self._ids = arrays["ids"].astype(np.int64)
        self._planes = np.ascontiguousarray(arrays["planes"], dtype=np.float32)
        self._planes_t = np.ascontiguousarray(self._planes[:, : self.dim].T)
        self._bias = arrays["bias"].astype(np.float32)
        self._lift_norm = float(arrays["lift_norm"][0])
        self._bucket_keys = arrays["bucket_keys"].astype(np.uint32)
        self._table_start = arrays["table_start"].astype(np.int64)
        self._bucket_ptr = arrays["bucket_ptr"].astype(np.int64)
        self._members = arrays["members"].astype(np.int32)
        self._make_directory()

    def __len__(self) -> int:
        return int(self._vectors.shape[0])

    def memory_bytes(self) -> int:
        arrays = (
            self._vectors, self._ids, self._bucket_keys, self._table_start, self._bucket_ptr,
            self._members, self._directory,
            *(getattr(self, name) for name in ("_planes", "_planes_t", "_bias") if hasattr(self, name)),
        )
        return int(sum(a.nbytes for a in arrays))

"""In-house LSH: random-hyperplane (SimHash) tables with query-directed multi-probe search.

Structure (all flat numpy arrays, as in pynndescent's trees):
- `planes` (n_tables * n_bits, dim + 1) float32 and `bias` (n_tables * n_bits,) float32:
  bit b of table t is `planes[t*n_bits + b] . lift(x) > bias[t*n_bits + b]`. The normals of
  one table are drawn orthogonal in the lifted (dim + 1)-space (when n_bits <= dim + 1), so
  that no two bits measure the same thing; for cosine and l2 the lift coordinate is unused,
  and their first dim parts are only nearly orthogonal.
- per table a CSR bucket list over all 2**n_bits keys: `offsets` (n_tables, 2**n_bits + 1)
  int32, nondecreasing, and `members` (n_tables * n,) int32 row positions; the rows of
  bucket `key` of table t are `members[t*n + offsets[t, key] : t*n + offsets[t, key + 1]]`.
  The keys are implicit (the column), so a lookup is one read, not a search; with the
  default n_bits (about 3 rows per bucket) this costs less memory than sorted keys plus
  bucket pointers would. `n_bits` is capped at 24 for that reason.
- `vectors` (n, dim) float32 and `ids` (n,) int64, for exact re-scoring of the candidates.

Search: the query's projections give its key in every table and its margin to every
hyperplane; each table is probed at `probes` buckets in order of increasing sum of the
absolute margins of the flipped bits (Lv et al. 2007, query-directed multi-probe LSH: the
least-confident bits are flipped first; |margin| ranked a little better than margin**2 on
GloVe, as the chance that a neighbour lies across a hyperplane falls about linearly in a
small margin). The union of the visited buckets is de-duplicated
with a visited-marker array (uint8 generations, cleared once every 255 queries) and
re-scored exactly; the best k are returned. The kernel runs in stages (all probe keys, then
all bucket bounds, then the candidates, then the scores) and prefetches one stage ahead:
the cost on a large index is memory latency, and independent loads overlap where a
bucket-by-bucket loop would wait on each one in turn.

Metrics, and why all three are served:
- `cosine`: base.py hands us unit vectors; hyperplanes are offset to the median projection
  of the training data (GloVe is far from centred: hyperplanes through the origin would put
  most points on one side and make a few huge buckets).
- `ip`: the Simple-LSH lift of Neyshabur & Srebro (2015): x -> [x / M, sqrt(1 - |x|^2/M^2)]
  with M the largest training norm, q -> [q / |q|, 0]; on the lifted unit sphere the
  nearest neighbour in angle is the maximum inner product. Rows added later with a norm above
  M are lifted with a zero last coordinate (hashed by direction only); re-scoring is exact.
  Honest figures: raw GloVe (norms spread over 10x) is a hard MIPS case. At 10K rows the
  defaults give recall@10 0.97; at 399K rows 0.53 (probes=24), 0.70 (48), 0.86 (96, about
  15K rows re-scored). Norm-ranging the lift (one M per norm quantile, Yan et al. 2018)
  was tried and was worse here (0.14-0.31 at 24 probes): the true answers are the long
  rows, and short rows of every range crowd the probed buckets. Normalise and use
  `cosine` where the norm carries no meaning; use a graph or IVF kind for large ip sets.
- `l2`: a hyperplane with a data-dependent offset is itself a locality-sensitive partition
  for Euclidean distance (two points are separated with a probability that grows with their
  distance along the normal), so the same tables serve l2 without a separate p-stable
  (E2LSH) scheme; re-scoring is exact squared distance.

Knobs: `n_tables` (L) and `n_bits` (K) at build, `probes` at search. More tables raise
recall per re-scored row and memory (4 bytes per row per table, plus 2**K * 4 bytes);
more bits make smaller buckets (fewer candidates per probe, lower recall per probe); more
probes raise recall at the cost of candidates to re-score.

Measured on GloVe 6B 50d (399K rows, cosine, 1000 held-out queries, one query per call
through `search`, one thread, shared 2-core box), defaults n_tables=64, n_bits=17
(resolved), 209 MiB in all; FAISS IndexFlatIP took 3.5-3.9 ms of CPU per query in the same
run (/tmp script, interleaved rounds, medians):

    probes  recall@10  rows re-scored  CPU ms/query  vs flat
       8      0.784        2623            0.25        x14.6
      12      0.865        3763            0.37        x10.7
      16      0.907        4846            0.42        x8.6
      20      0.933        5891            0.55        x6.8
      24      0.949        6904            0.58        x6.0   <- default
      32      0.968        8846            0.78        x4.6
      48      0.986       12495            1.16        x3.3

Fewer tables (32) needed about twice the probes for the same recall; more bits (19-20)
re-scored fewer rows (0.90 at ~3000-3700) but visited so many more buckets that they were
not faster in these runs, and cost more memory (2**n_bits offsets per table). On small
collections (10K rows) the defaults re-score a quarter of the rows: exact search is as
fast there, and `probes=8` is enough for recall 0.95.

What it cannot do: memory grows with n_tables (4 bytes per row per table plus the
vectors); deletions are not supported (rebuild); the hyperplanes are fixed at train
time, so data that drifts far from the training sample gets unbalanced buckets; each
`add` rebuilds every table over all rows (add in bulk).

Threads: any number of concurrent searches (per-thread scratch, GIL released); `train` and
`add` must not run while another thread searches the same index (the service keeps writes
and searches apart with a readers-writer lock).
"""

from __future__ import annotations

import threading
from typing import Any

import numba
import numpy as np

from .base import MAX_SEED, Index
from .prefetch import prefetch

_MAX_BITS = 24  # offsets hold 2**n_bits + 1 entries per table
_GEN_LIMIT = 255  # visited markers are uint8 generations
_PROJECT_CHUNK = 16384
_PREFETCH_AHEAD = 8  # candidates whose rows are requested before they are scored


# ---------------------------------------------------------------- numba kernels




@numba.njit(nogil=True, cache=True, fastmath=True)
def _pack_keys(proj, bias, n_tables, n_bits, out, row0):
    """Bits of (rows, n_tables*n_bits) projections -> keys out[t, row0 + i]."""
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
def _bucket_rows(keys, n_keys, offsets, members):
    """Counting sort of each table's rows by key: the CSR offsets (n_tables, n_keys + 1)
    and members (n_tables * n,), rows in increasing order within a bucket."""
    n_tables, n = keys.shape
    for t in range(n_tables):
        fill = np.zeros(n_keys + 1, dtype=np.int64)
        for i in range(n):
            fill[keys[t, i] + 1] += 1
        for key in range(n_keys):
            fill[key + 1] += fill[key]
            offsets[t, key + 1] = fill[key + 1]
        for i in range(n):
            key = keys[t, i]
            members[t * n + fill[key]] = i
            fill[key] += 1


@numba.njit(nogil=True, cache=True)
def _expand_keys(offsets, members, n, out):
    """Inverse of the CSR build: out[t, row] = key of row in table t."""
    n_tables, n_keys = offsets.shape[0], offsets.shape[1] - 1
    for t in range(n_tables):
        for key in range(n_keys):
            for j in range(offsets[t, key], offsets[t, key + 1]):
                out[t, members[t * n + j]] = key


@numba.njit(nogil=True, cache=True, fastmath=True)
def _heap_push(hs, hf, hl, size, score, flip, last):
    """Min-heap on hs of probe perturbations (flipped-bit mask, last bit in margin order)."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if hs[parent] <= score:
            break
        hs[i] = hs[parent]
        hf[i] = hf[parent]
        hl[i] = hl[parent]
        i = parent
    hs[i] = score
    hf[i] = flip
    hl[i] = last
    return size + 1


@numba.njit(nogil=True, cache=True, fastmath=True)
def _heap_pop(hs, hf, hl, size):
    """Remove the root (the caller has read it); returns the new size."""
    size -= 1
    score, flip, last = hs[size], hf[size], hl[size]
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
        hf[i] = hf[child]
        hl[i] = hl[child]
        i = child
    hs[i] = score
    hf[i] = flip
    hl[i] = last
    return size


@numba.njit(nogil=True, cache=True, fastmath=True)
def _probe_keys(z, bias, t, n_bits, probes, margin, order, hs, hf, hl, out, o):
    """The `probes` keys of table t, best first, into out[o : o + probes] (-1 when the
    table has fewer distinct keys). Query-directed: the next probe flips the set of bits
    with the smallest sum of |margins| not yet used (Lv et al.'s shift/expand heap)."""
    base = t * n_bits
    key = 0
    for b in range(n_bits):
        v = z[base + b] - bias[base + b]
        if v > 0:
            key |= 1 << b
        margin[b] = abs(v)
    out[o] = key
    if probes == 1:
        return
    for i in range(n_bits):  # bits by increasing margin (insertion sort: n_bits is small)
        mv = margin[i]
        j = i - 1
        while j >= 0 and margin[order[j]] > mv:
            order[j + 1] = order[j]
            j -= 1
        order[j + 1] = i
    hsize = _heap_push(hs, hf, hl, 0, margin[order[0]], 1 << order[0], 0)
    for p in range(1, probes):
        if hsize == 0:
            out[o + p] = -1
            continue
        score, flip, last = hs[0], hf[0], hl[0]
        hsize = _heap_pop(hs, hf, hl, hsize)
        if last + 1 < n_bits:
            cur = order[last]
            nxt = order[last + 1]
            # shift: flip the next bit instead of the last one; expand: flip both
            hsize = _heap_push(
                hs, hf, hl, hsize, score - margin[cur] + margin[nxt],
                (flip ^ (1 << cur)) | (1 << nxt), last + 1,
            )
            hsize = _heap_push(hs, hf, hl, hsize, score + margin[nxt], flip | (1 << nxt), last + 1)
        out[o + p] = key ^ flip


@numba.njit(nogil=True, cache=True, fastmath=True)
def _query(
    q, qscale, planes_t, bias, n_tables, n_bits, probes, k, l2, offsets, members, vectors,
    marker, gen, out_pos, out_score, z, margin, order, hs, hf, hl, pkeys, plo, phi, cand,
):
    """One query: probe every table, re-score the union exactly, keep the best k.

    Writes row positions and scores (higher is better; -squared distance for l2) to
    out_pos/out_score best first; positions are -1 where fewer than k rows were seen.
    Returns the number of distinct rows re-scored.
    """
    n, dim = vectors.shape
    m = n_tables * n_bits
    # Projections of the query on every hyperplane (planes_t is (dim, m): vectorises).
    for r in range(m):
        z[r] = 0.0
    for d in range(dim):
        qd = q[d] * qscale
        for r in range(m):
            z[r] += qd * planes_t[d, r]
    # 1. every probe's key; request its bucket bounds
    n_probes = n_tables * probes
    for t in range(n_tables):
        _probe_keys(z, bias, t, n_bits, probes, margin, order, hs, hf, hl, pkeys, t * probes)
    for i in range(n_probes):
        if pkeys[i] >= 0:
            prefetch(offsets, i // probes, pkeys[i])
    # 2. bucket bounds; request the first members of each bucket
    for i in range(n_probes):
        key = pkeys[i]
        if key < 0:
            plo[i] = 0
            phi[i] = 0
            continue
        t = i // probes
        lo = t * n + offsets[t, key]
        hi = t * n + offsets[t, key + 1]
        plo[i] = lo
        phi[i] = hi
        if hi > lo:
            prefetch(members.reshape(1, -1), 0, lo)
    # 3. the union of the buckets, each row once
    n_cand = 0
    for i in range(n_probes):
        for j in range(plo[i], phi[i]):
            pos = members[j]
            if marker[pos] != gen:
                marker[pos] = gen
                cand[n_cand] = pos
                n_cand += 1
    # 4. exact scores into a top-k min-heap, rows requested a few candidates ahead
    found = 0
    for c in range(min(_PREFETCH_AHEAD, n_cand)):
        for d in range(0, dim, 16):
            prefetch(vectors, cand[c], d)
    for c in range(n_cand):
        if c + _PREFETCH_AHEAD < n_cand:
            ahead = cand[c + _PREFETCH_AHEAD]
            for d in range(0, dim, 16):
                prefetch(vectors, ahead, d)
        pos = cand[c]
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
    return n_cand


_COSINE, _IP, _L2 = 0, 1, 2  # metric codes of the kernels


@numba.njit(nogil=True, cache=True, fastmath=True)
def _search_serial(
    queries, planes_t, bias, n_tables, n_bits, probes, k, metric, offsets, members, vectors,
    ids, marker, cand, gen,
):
    """Queries one after another on the caller's thread.

    marker (n,) uint8 and cand (n,) int32 are scratch owned by the caller's thread.
    Returns ids (nq, k) int64 (-1 pads), scores (nq, k) float32 in the contract's
    convention, the distinct rows re-scored per query (nq,) int64, and the next generation.
    """
    nq = queries.shape[0]
    out_ids = np.empty((nq, k), dtype=np.int64)
    out_score = np.empty((nq, k), dtype=np.float32)
    counts = np.empty(nq, dtype=np.int64)
    m = n_tables * n_bits
    z = np.empty(m, dtype=np.float32)
    margin = np.empty(n_bits, dtype=np.float32)
    order = np.empty(n_bits, dtype=np.int64)
    hs = np.empty(probes + 2, dtype=np.float32)  # each pop pushes at most two
    hf = np.empty(probes + 2, dtype=np.int64)
    hl = np.empty(probes + 2, dtype=np.int64)
    pkeys = np.empty(n_tables * probes, dtype=np.int64)
    plo = np.empty(n_tables * probes, dtype=np.int64)
    phi = np.empty(n_tables * probes, dtype=np.int64)
    for i in range(nq):
        if gen > _GEN_LIMIT:  # the uint8 generations wrap: clear once every 255 queries
            marker[:] = 0
            gen = 1
        qscale = 1.0
        if metric == _IP:  # the query's side of the Simple-LSH lift: unit length
            sq = 0.0
            for d in range(queries.shape[1]):
                sq += queries[i, d] * queries[i, d]
            qscale = 1.0 / np.sqrt(sq) if sq > 0 else 0.0
        counts[i] = _query(
            queries[i], qscale, planes_t, bias, n_tables, n_bits, probes, k, metric == _L2,
            offsets, members, vectors, marker, gen, out_ids[i], out_score[i], z, margin,
            order, hs, hf, hl, pkeys, plo, phi, cand,
        )
        gen += 1
        for j in range(k):  # row positions -> user ids; l2 scores back to distances
            if out_ids[i, j] >= 0:
                out_ids[i, j] = ids[out_ids[i, j]]
            if metric == _L2:
                out_score[i, j] = -out_score[i, j]
    return out_ids, out_score, counts, gen


@numba.njit(nogil=True, cache=True, fastmath=True, parallel=True)
def _search_parallel(
    queries, planes_t, bias, n_tables, n_bits, probes, k, metric, offsets, members, vectors,
    ids, n_chunks,
):
    """A batch split into n_chunks contiguous runs, each with its own scratch arrays."""
    nq = queries.shape[0]
    n = vectors.shape[0]
    out_ids = np.empty((nq, k), dtype=np.int64)
    out_score = np.empty((nq, k), dtype=np.float32)
    counts = np.empty(nq, dtype=np.int64)
    for c in numba.prange(n_chunks):
        start = c * nq // n_chunks
        stop = (c + 1) * nq // n_chunks
        marker = np.zeros(n, dtype=np.uint8)
        cand = np.empty(n, dtype=np.int32)
        got_ids, got_score, got_counts, _ = _search_serial(
            queries[start:stop], planes_t, bias, n_tables, n_bits, probes, k, metric,
            offsets, members, vectors, ids, marker, cand, 1,
        )
        out_ids[start:stop] = got_ids
        out_score[start:stop] = got_score
        counts[start:stop] = got_counts
    return out_ids, out_score, counts


# ---------------------------------------------------------------- the index


class LSHIndex(Index):
    """Random-hyperplane LSH with query-directed multi-probe search and exact re-scoring."""

    kind = "lsh"
    metrics = ("cosine", "ip", "l2")
    # n_bits None: computed from the training size in _train (recorded in build_params).
    build_defaults = {"n_tables": 64, "n_bits": None, "seed": 20261121}
    search_defaults = {"probes": 24}
    needs_training = True

    # rows per bucket the default n_bits aims at (GloVe 400K: 17 bits)
    TARGET_BUCKET = 3

    def __init__(self, dim: int, metric: str = "l2", **build_params: Any) -> None:
        super().__init__(dim, metric, **build_params)
        self._tls = threading.local()  # per-thread search scratch, see _run
        self._metric_code = {"cosine": _COSINE, "ip": _IP, "l2": _L2}[metric]
        self._offsets = np.zeros((0, 2), dtype=np.int32)
        self._empty()

    def _empty(self) -> None:
        n_tables = self.build_params["n_tables"]
        n_bits = self.build_params["n_bits"] or 1
        self._vectors = np.empty((0, self.dim), dtype=np.float32)
        self._ids = np.empty(0, dtype=np.int64)
        self._members = np.empty(0, dtype=np.int32)
        if self.is_trained:
            self._offsets = np.zeros((n_tables, (1 << n_bits) + 1), dtype=np.int32)

    param_bounds = {"seed": (0, MAX_SEED), "n_bits": (1, _MAX_BITS)}

    # ---- build

    def _train(self, x: np.ndarray) -> None:
        n = x.shape[0]
        if self.build_params["n_bits"] is None:
            # About TARGET_BUCKET rows per bucket; at least 4 bits so probing has choices.
            bits = int(round(np.log2(max(n, 2) / self.TARGET_BUCKET)))
            self.build_params["n_bits"] = int(min(max(bits, 4), 20))
        n_tables = self.build_params["n_tables"]
        n_bits = self.build_params["n_bits"]
        rng = np.random.default_rng(self.build_params["seed"])
        planes = rng.standard_normal((n_tables, n_bits, self.dim + 1))
        if n_bits <= self.dim + 1:
            planes = np.linalg.qr(planes.transpose(0, 2, 1))[0].transpose(0, 2, 1)
        self._planes = np.ascontiguousarray(
            planes.reshape(n_tables * n_bits, self.dim + 1), dtype=np.float32
        )
        self._planes_t = np.ascontiguousarray(self._planes[:, : self.dim].T)
        norm = float(np.sqrt((x.astype(np.float64) ** 2).sum(axis=1).max()))
        self._lift_norm = norm if norm > 0 else 1.0
        # Offsets at the median projection of (a sample of) the training rows: balanced bits.
        sample = x if n <= 20000 else x[rng.choice(n, 20000, replace=False)]
        median = np.median(self._project(sample), axis=0)
        self._bias = np.ascontiguousarray(median, dtype=np.float32)
        self.is_trained = True
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
        """(rows, n_tables*n_bits) float32 projections of the lifted rows of x."""
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
            _expand_keys(self._offsets, self._members, n_old, keys)
        for start in range(0, x.shape[0], _PROJECT_CHUNK):
            chunk = x[start : start + _PROJECT_CHUNK]
            _pack_keys(self._project(chunk), self._bias, n_tables, n_bits, keys, n_old + start)
        self._vectors = np.ascontiguousarray(np.vstack([self._vectors, x]), dtype=np.float32)
        self._ids = np.concatenate([self._ids, ids])
        self._build_tables(keys)

    def _build_tables(self, keys: np.ndarray) -> None:
        """CSR per table from keys (n_tables, n) uint32."""
        n_tables, n = keys.shape
        n_keys = 1 << self.build_params["n_bits"]
        members = np.empty(n_tables * n, dtype=np.int32)
        offsets = np.zeros((n_tables, n_keys + 1), dtype=np.int32)
        _bucket_rows(keys, n_keys, offsets, members)
        self._members, self._offsets = members, offsets

    # ---- search

    def _search(
        self, q: np.ndarray, k: int, params: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        ids, scores, _ = self._run(q, k, params["probes"])
        return ids, scores

    def candidate_counts(self, q: np.ndarray, probes: int) -> np.ndarray:
        """Distinct rows re-scored per query, (nq,) int64, at `probes`: the cost of a search
        of (nq, dim) queries `q`, checked and prepared as `search` does."""
        return self._run(self.prepare(q, "queries"), 1, self._check_param("probes", probes))[2]

    def _run(self, q: np.ndarray, k: int, probes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # One kernel call per search and nothing else on the Python side: single-query
        # latency is what a service sees. A table has only 2**n_bits buckets to visit.
        probes = min(probes, 1 << self.build_params["n_bits"])
        args = (
            q, self._planes_t, self._bias, self.build_params["n_tables"],
            self.build_params["n_bits"], probes, k, self._metric_code, self._offsets,
            self._members, self._vectors, self._ids,
        )
        threads = numba.get_num_threads()
        if threads > 1 and q.shape[0] >= 4 * threads:
            return _search_parallel(*args, 4 * threads)
        tls = self._tls
        marker = getattr(tls, "marker", None)
        if marker is None or marker.shape[0] < self._vectors.shape[0]:
            marker = tls.marker = np.zeros(self._vectors.shape[0], dtype=np.uint8)
            tls.cand = np.empty(self._vectors.shape[0], dtype=np.int32)
            tls.gen = 1
        ids, scores, counts, tls.gen = _search_serial(*args, marker, tls.cand, tls.gen)
        return ids, scores, counts

    # ---- persistence and size

    def _state(self) -> dict[str, np.ndarray]:
        return {
            "vectors": self._vectors,
            "ids": self._ids,
            "planes": self._planes,
            "bias": self._bias,
            "lift_norm": np.array([self._lift_norm]),
            "offsets": self._offsets,
            "members": self._members,
        }

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self._vectors = np.ascontiguousarray(arrays["vectors"], dtype=np.float32)
        self._ids = np.ascontiguousarray(arrays["ids"], dtype=np.int64)
        self._planes = np.ascontiguousarray(arrays["planes"], dtype=np.float32)
        self._planes_t = np.ascontiguousarray(self._planes[:, : self.dim].T)
        self._bias = np.ascontiguousarray(arrays["bias"], dtype=np.float32)
        self._lift_norm = float(arrays["lift_norm"][0])
        self._offsets = np.ascontiguousarray(arrays["offsets"], dtype=np.int32)
        self._members = np.ascontiguousarray(arrays["members"], dtype=np.int32)

    def __len__(self) -> int:
        return int(self._vectors.shape[0])

    def memory_bytes(self) -> int:
        names = ("_vectors", "_ids", "_offsets", "_members", "_planes", "_planes_t", "_bias")
        return int(sum(getattr(self, name).nbytes for name in names if hasattr(self, name)))

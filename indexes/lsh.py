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
all bucket bounds, then the candidates in blocks of `_CAND_BLOCK`, each block scored before
the next is gathered) and prefetches one stage ahead: the cost on a large index is memory
latency, and independent loads overlap where a bucket-by-bucket loop would wait on each one
in turn.

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

Knobs: `n_tables` (L) and `n_bits` (K) at build, `probes` at search (1 to MAX_PROBES = 1024;
past 2**K a table has no more buckets to visit). More tables raise recall per re-scored row
and memory (4 bytes per row per table, plus 2**K * 4 bytes); more bits make smaller buckets
(fewer candidates per probe, lower recall per probe); more probes raise recall at the cost of
candidates to re-score.

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

`add` hashes only the rows it is given and keeps them, with their keys, beside the tables;
they are merged into the CSR arrays once, before the next search (or save): adding n rows in
chunks costs the same as one add of all of them. An add between every two searches still
merges each time, O(n * n_tables) per merge.

Memory a search uses besides its answers: the probe keys and bucket bounds (3 x n_tables x
probes int64), one candidate block, and per calling thread one visited byte per row, kept
between calls (a batch split over numba's threads keeps one row of markers per numba thread).

What it cannot do: memory grows with n_tables (4 bytes per row per table plus the
vectors); deletions are not supported (rebuild); the hyperplanes are fixed at train
time, so data that drifts far from the training sample gets unbalanced buckets.

Threads: any number of concurrent searches (per-thread scratch, GIL released), and `add` may
run beside them (a search reads one immutable snapshot of the tables); `train` must not run
while another thread searches the same index.
"""

from __future__ import annotations

import threading
from typing import Any

import numba
import numpy as np
from numba import types as nt

from .base import MAX_SEED, Index, id_lookup, rows_of
from .kernels import JIT, deheap_sort, heap_push, heap_sift_down, prefetch, score_rows

# Probes grow as 1 / selectivity ** this under a filter (see LSHIndex._search_admitted).
FILTER_WIDENING = 1.0
_MAX_BITS = 24  # offsets hold 2**n_bits + 1 entries per table
# Buckets a search may visit per table: a search holds 3 x n_tables x probes int64 of probe
# keys and bucket bounds (1.5 MB at the default 64 tables). Recall on GloVe 400K is 0.99 at
# 48 probes; exact search is faster than a few hundred.
MAX_PROBES = 1024
_GEN_LIMIT = 255  # visited markers are uint8 generations
_PROJECT_CHUNK = 16384
_CAND_BLOCK = 4096  # candidates gathered, then scored, at a time (16 KB: stays in L1/L2)
_COSINE, _IP, _L2 = 0, 1, 2  # metric codes of the kernels
_FLIP_BITS = 32  # a probe-heap payload is flip | (last << _FLIP_BITS); flip has n_bits <= 24 bits


# ---------------------------------------------------------------- numba kernels: build


@numba.njit(**JIT)
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
def _merge_buckets(old_offsets, old_members, n_old, keys, offsets, members):
    """The CSR tables over n_old + m rows: the old tables (old_offsets (n_tables, n_keys + 1),
    old_members (n_tables * n_old,)) with m new rows n_old.. whose keys are keys (n_tables, m),
    into offsets and members (n_tables * (n_old + m),). Within a bucket rows stay in increasing
    order (old ones first), so merging in chunks gives the arrays one add of all rows gives."""
    n_tables, m = keys.shape
    n_keys = offsets.shape[1] - 1
    n = n_old + m
    fill = np.empty(n_keys + 1, dtype=np.int64)
    for t in range(n_tables):
        fill[:] = 0
        for i in range(m):
            fill[keys[t, i] + 1] += 1
        # Bucket by bucket: the old members, then room for the new ones (fill[key] becomes
        # where they go; it held the count of the bucket before, already used).
        at = 0
        offsets[t, 0] = 0
        for key in range(n_keys):
            for j in range(old_offsets[t, key], old_offsets[t, key + 1]):
                members[t * n + at] = old_members[t * n_old + j]
                at += 1
            added = fill[key + 1]
            fill[key] = at
            at += added
            offsets[t, key + 1] = at
        for i in range(m):
            key = keys[t, i]
            members[t * n + fill[key]] = n_old + i
            fill[key] += 1


# ---------------------------------------------------------------- numba kernels: search


@numba.njit(**JIT)
def _probe_keys(z, bias, t, n_bits, probes, margin, order, hkeys, hvals, out, o):
    """The `probes` keys of table t, best first, into out[o : o + probes] (-1 when the
    table has fewer distinct keys). Query-directed: the next probe flips the set of bits
    with the smallest sum of |margins| not yet used (Lv et al.'s shift/expand heap).

    The perturbations wait in the shared max-heap (kernels.heap_*) keyed by minus their sum of
    margins; its one payload packs the two a perturbation has, the flipped-bit mask and the
    position in margin order of its last bit: flip | (last << _FLIP_BITS)."""
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
    low = (1 << _FLIP_BITS) - 1
    hsize = heap_push(hkeys, hvals, 0, -margin[order[0]], np.int64(1) << order[0])
    for p in range(1, probes):
        if hsize == 0:
            out[o + p] = -1
            continue
        score, packed = -hkeys[0], hvals[0]
        hsize -= 1
        heap_sift_down(hkeys, hvals, hsize, hkeys[hsize], hvals[hsize])
        flip, last = packed & low, packed >> _FLIP_BITS
        if last + 1 < n_bits:
            cur = order[last]
            nxt = order[last + 1]
            after = (last + 1) << _FLIP_BITS
            # shift: flip the next bit instead of the last one; expand: flip both
            hsize = heap_push(
                hkeys, hvals, hsize, -(score - margin[cur] + margin[nxt]),
                ((flip ^ (1 << cur)) | (1 << nxt)) | after,
            )
            hsize = heap_push(hkeys, hvals, hsize, -(score + margin[nxt]), (flip | (1 << nxt)) | after)
        out[o + p] = key ^ flip


@numba.njit(**JIT)
def _query(
    q, qscale, planes_t, bias, n_tables, n_bits, probes, l2, offsets, members, vectors,
    marker, gen, best_d, best_i, z, margin, order, hkeys, hvals, pkeys, plo, phi, cand,
):
    """One query: probe every table, re-score the union exactly, keep the best len(best_d).

    Leaves best_d[:found] (squared distance for l2, minus the inner product otherwise) and
    best_i[:found] row positions in increasing distance. Returns (found, distinct rows
    re-scored).
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
        _probe_keys(z, bias, t, n_bits, probes, margin, order, hkeys, hvals, pkeys, t * probes)
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
            prefetch(members, lo, 0)
    # 3. the union of the buckets, each row once, a block at a time; 4. each block's exact
    # scores into the top-k heap (the block bounds the scratch, whatever the bucket sizes)
    block = cand.shape[0]
    found = 0
    seen = 0
    n_cand = 0
    for i in range(n_probes):
        for j in range(plo[i], phi[i]):
            pos = members[j]
            if marker[pos] != gen:
                marker[pos] = gen
                cand[n_cand] = pos
                n_cand += 1
                if n_cand == block:
                    found = score_rows(q, vectors, cand, n_cand, l2, best_d, best_i, found)
                    seen += n_cand
                    n_cand = 0
    found = score_rows(q, vectors, cand, n_cand, l2, best_d, best_i, found)
    seen += n_cand
    deheap_sort(best_d, best_i, found)
    return found, seen


@numba.njit(**JIT)
def _search_rows(
    queries, planes_t, bias, n_tables, n_bits, probes, k, metric, offsets, members, vectors,
    ids, marker, cand, gen, out_ids, out_score, counts,
):
    """Queries one after another into out_ids (nq, k) int64 (-1 pads), out_score (nq, k)
    float32 in the contract's convention and counts (nq,) int64 (distinct rows re-scored).
    marker (n,) uint8, cand (_CAND_BLOCK,) int32 and the generation `gen` are the caller's
    scratch; returns the next generation."""
    nq = queries.shape[0]
    z = np.empty(n_tables * n_bits, dtype=np.float32)
    margin = np.empty(n_bits, dtype=np.float32)
    order = np.empty(n_bits, dtype=np.int64)
    hkeys = np.empty(probes + 2, dtype=np.float32)  # each pop pushes at most two
    hvals = np.empty(probes + 2, dtype=np.int64)
    pkeys = np.empty(n_tables * probes, dtype=np.int64)
    plo = np.empty(n_tables * probes, dtype=np.int64)
    phi = np.empty(n_tables * probes, dtype=np.int64)
    best_d = np.empty(k, dtype=np.float32)
    best_i = np.empty(k, dtype=np.int32)
    l2 = metric == _L2
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
        found, seen = _query(
            queries[i], qscale, planes_t, bias, n_tables, n_bits, probes, l2, offsets, members,
            vectors, marker, gen, best_d, best_i, z, margin, order, hkeys, hvals, pkeys, plo,
            phi, cand,
        )
        counts[i] = seen
        gen += 1
        for j in range(found):  # row positions -> user ids; distances -> the contract's scores
            out_ids[i, j] = ids[best_i[j]]
            out_score[i, j] = best_d[j] if l2 else -best_d[j]
        for j in range(found, k):
            out_ids[i, j] = -1
            out_score[i, j] = np.inf if l2 else -np.inf
    return gen


# Eager signatures for the two entry points a search calls: they are compiled (or loaded from
# numba's cache) at import, not on the first request.
_F32_2D, _F32_1D = nt.float32[:, ::1], nt.float32[::1]
_SHARED_ARGS = (
    _F32_2D, _F32_2D, _F32_1D, nt.int64, nt.int64, nt.int64, nt.int64, nt.int64,
    nt.int32[:, ::1], nt.int32[::1], _F32_2D, nt.int64[::1],
)


@numba.njit((*_SHARED_ARGS, nt.uint8[::1], nt.int32[::1], nt.int64), **JIT)
def _search_serial(
    queries, planes_t, bias, n_tables, n_bits, probes, k, metric, offsets, members, vectors,
    ids, marker, cand, gen,
):
    """Queries one after another on the caller's thread, with its scratch (see _search_rows).
    Returns ids (nq, k), scores (nq, k), counts (nq,) and the next generation."""
    nq = queries.shape[0]
    out_ids = np.empty((nq, k), dtype=np.int64)
    out_score = np.empty((nq, k), dtype=np.float32)
    counts = np.empty(nq, dtype=np.int64)
    gen = _search_rows(
        queries, planes_t, bias, n_tables, n_bits, probes, k, metric, offsets, members,
        vectors, ids, marker, cand, gen, out_ids, out_score, counts,
    )
    return out_ids, out_score, counts, gen


@numba.njit((*_SHARED_ARGS, nt.uint8[:, ::1], nt.int32[:, ::1], nt.int64[::1], nt.int64),
            parallel=True, **JIT)
def _search_parallel(
    queries, planes_t, bias, n_tables, n_bits, probes, k, metric, offsets, members, vectors,
    ids, markers, cands, gens, n_chunks,
):
    """A batch split into n_chunks contiguous runs over numba's threads; each run uses the
    scratch row of the thread it runs on (markers (threads, n), cands (threads, block), gens
    (threads,), kept by the caller between calls)."""
    nq = queries.shape[0]
    out_ids = np.empty((nq, k), dtype=np.int64)
    out_score = np.empty((nq, k), dtype=np.float32)
    counts = np.empty(nq, dtype=np.int64)
    for c in numba.prange(n_chunks):
        start = c * nq // n_chunks
        stop = (c + 1) * nq // n_chunks
        slot = numba.get_thread_id()
        gens[slot] = _search_rows(
            queries[start:stop], planes_t, bias, n_tables, n_bits, probes, k, metric, offsets,
            members, vectors, ids, markers[slot], cands[slot], gens[slot],
            out_ids[start:stop], out_score[start:stop], counts[start:stop],
        )
    return out_ids, out_score, counts


# ---------------------------------------------------------------- the index


# Tables a build may ask for: each costs 4 bytes per row plus its bucket offsets, so beyond
# this a build is a MemoryError waiting to happen, not a better index (64 is the default).
MAX_TABLES = 1024

class LSHIndex(Index):
    """Random-hyperplane LSH with query-directed multi-probe search and exact re-scoring."""

    kind = "lsh"
    metrics = ("cosine", "ip", "l2")
    # n_bits None: computed from the training size in _train (recorded in build_params).
    build_defaults = {"n_tables": 64, "n_bits": None, "seed": 20261121}
    search_defaults = {"probes": 24}
    needs_training = True
    param_bounds = {
        "seed": (0, MAX_SEED), "n_bits": (1, _MAX_BITS), "probes": (1, MAX_PROBES), "n_tables": (1, MAX_TABLES),
    }

    # rows per bucket the default n_bits aims at (GloVe 400K: 17 bits)
    TARGET_BUCKET = 3

    def __init__(self, dim: int, metric: str = "l2", **build_params: Any) -> None:
        super().__init__(dim, metric, **build_params)
        self._tls = threading.local()  # per-thread search scratch, see _scratch
        self._lock = threading.Lock()  # one merge of the pending rows at a time
        self._metric_code = {"cosine": _COSINE, "ip": _IP, "l2": _L2}[metric]
        # (the ids array it was made from, its id -> row lookup) for filtered search
        self._lookup: tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None = None
        self._empty()

    def _empty(self) -> None:
        n_tables = self.build_params["n_tables"]
        n_bits = self.build_params["n_bits"] or 1
        offsets = np.zeros((n_tables if self.is_trained else 0, (1 << n_bits) + 1), dtype=np.int32)
        # What a search reads, replaced whole by a merge: (vectors (n, dim) float32, ids (n,)
        # int64, offsets, members); see the module docstring.
        self._tables = (
            np.empty((0, self.dim), dtype=np.float32), np.empty(0, dtype=np.int64),
            offsets, np.empty(0, dtype=np.int32),
        )
        # Rows added since the last merge: (vectors, ids, keys (n_tables, rows) uint32) each.
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

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
        # Only the new rows are hashed; the tables are merged lazily (see _merged).
        n_tables, n_bits = self.build_params["n_tables"], self.build_params["n_bits"]
        keys = np.empty((n_tables, x.shape[0]), dtype=np.uint32)
        for start in range(0, x.shape[0], _PROJECT_CHUNK):
            chunk = x[start : start + _PROJECT_CHUNK]
            _pack_keys(self._project(chunk), self._bias, n_tables, n_bits, keys, start)
        with self._lock:
            self._pending.append((x.copy(), ids.copy(), keys))

    def _merged(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The tables with every added row in them, merging the pending rows first."""
        if self._pending:
            with self._lock:
                if self._pending:
                    self._merge()
        return self._tables

    def _merge(self) -> None:
        """Merge the pending rows into new CSR tables (called under the lock)."""
        vectors, ids, offsets, members = self._tables
        pending = self._pending
        keys = pending[0][2] if len(pending) == 1 else np.concatenate([p[2] for p in pending], axis=1)
        new_vectors = np.concatenate([vectors] + [p[0] for p in pending])
        new_ids = np.concatenate([ids] + [p[1] for p in pending])
        n_tables, n = offsets.shape[0], new_vectors.shape[0]
        new_offsets = np.empty_like(offsets)
        new_members = np.empty(n_tables * n, dtype=np.int32)
        _merge_buckets(offsets, members, vectors.shape[0], keys, new_offsets, new_members)
        self._tables = (new_vectors, new_ids, new_offsets, new_members)
        self._pending = []

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

    def _scratch(self, n: int, slots: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This thread's visited markers (slots, >= n) uint8, candidate blocks (slots,
        _CAND_BLOCK) int32 and generations (slots,) int64, kept between calls: the memory a
        search allocates does not grow with the index. A marker row goes with its generation:
        marks older than the row's generation mean "not seen"."""
        scratch = getattr(self._tls, "scratch", None)
        if scratch is None or scratch[0].shape[0] < slots or scratch[0].shape[1] < n:
            slots = max(slots, scratch[0].shape[0] if scratch is not None else 1)
            scratch = self._tls.scratch = (
                np.zeros((slots, n), dtype=np.uint8),
                np.empty((slots, _CAND_BLOCK), dtype=np.int32),
                np.ones(slots, dtype=np.int64),
            )
        return scratch

    def _run(self, q: np.ndarray, k: int, probes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # One kernel call per search and nothing else on the Python side: single-query
        # latency is what a service sees. A table has only 2**n_bits buckets to visit.
        vectors, ids, offsets, members = self._merged()
        n_bits = self.build_params["n_bits"]
        args = (
            np.ascontiguousarray(q, dtype=np.float32), self._planes_t, self._bias,
            self.build_params["n_tables"], n_bits, min(probes, 1 << n_bits), k,
            self._metric_code, offsets, members, vectors, ids,
        )
        threads = numba.get_num_threads()
        n = vectors.shape[0]
        if threads > 1 and q.shape[0] >= 4 * threads:
            markers, cands, gens = self._scratch(n, numba.config.NUMBA_NUM_THREADS)
            return _search_parallel(*args, markers, cands, gens, 4 * threads)
        markers, cands, gens = self._scratch(n, 1)
        ids_out, scores, counts, gens[0] = _search_serial(*args, markers[0], cands[0], gens[0])
        return ids_out, scores, counts

    # ---- filtered search

    def _admitted_rows(self, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vectors, ids) of the merged tables and the row positions of the admitted ids."""
        vectors, ids, _, _ = self._merged()
        cached = self._lookup
        if cached is None or cached[0] is not ids:  # a merge replaces the ids array
            cached = self._lookup = (ids, id_lookup(ids))
        return vectors, ids, rows_of(allowed, cached[1])

    def _admitted_vectors(self, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vectors, ids, rows = self._admitted_rows(allowed)
        return ids[rows], vectors[rows]

    def _search_admitted(
        self, q: np.ndarray, k: int, params: dict[str, Any], allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        # Over-fetching alone does not help here: the candidates are the union of the probed
        # buckets whatever k is, and a share s of them is admitted. The probes grow with
        # 1 / s ** FILTER_WIDENING, so that about as many admitted rows are re-scored as
        # an unfiltered search re-scores rows (a bucket's rows hold fewer and fewer true
        # neighbours further out, hence less than 1 / s).
        share = min(1.0, allowed.size / len(self))
        probes = int(min(MAX_PROBES, np.ceil(params["probes"] / share**FILTER_WIDENING)))
        return self.overfetch_filtered(q, k, {**params, "probes": probes}, allowed)

    # ---- persistence and size

    def _state(self) -> dict[str, np.ndarray]:
        vectors, ids, offsets, members = self._merged()
        return {
            "vectors": vectors,
            "ids": ids,
            "planes": self._planes,
            "bias": self._bias,
            "lift_norm": np.array([self._lift_norm]),
            "offsets": offsets,
            "members": members,
        }

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self._planes = np.ascontiguousarray(arrays["planes"], dtype=np.float32)
        self._planes_t = np.ascontiguousarray(self._planes[:, : self.dim].T)
        self._bias = np.ascontiguousarray(arrays["bias"], dtype=np.float32)
        self._lift_norm = float(arrays["lift_norm"][0])
        self._tables = (
            np.ascontiguousarray(arrays["vectors"], dtype=np.float32),
            np.ascontiguousarray(arrays["ids"], dtype=np.int64),
            np.ascontiguousarray(arrays["offsets"], dtype=np.int32),
            np.ascontiguousarray(arrays["members"], dtype=np.int32),
        )
        self._pending = []

    def __len__(self) -> int:
        return int(self._tables[0].shape[0] + sum(p[0].shape[0] for p in self._pending))

    def memory_bytes(self) -> int:
        held = [*self._tables, *(a for p in self._pending for a in p)]
        held += [getattr(self, name) for name in ("_planes", "_planes_t", "_bias") if hasattr(self, name)]
        return int(sum(a.nbytes for a in held))

"""Annoy-style forest of random-projection trees, written in-house in numba.

Build: each of `n_trees` trees splits its node's points by the perpendicular bisector of two
centroids found by a short 2-means run over sampled points (Annoy's `two_means`), until a node
holds at most `leaf_size` points. Every kind of space uses Euclidean splits (a hyperplane plus
an offset):
- `l2` splits the raw vectors;
- `cosine` vectors arrive unit-normalised, where Euclidean order is cosine order, and an offset
  lets a split cut off a cap of the sphere instead of always passing through the origin;
- `ip` (maximum inner product) uses the reduction Annoy's `dot` metric uses: every vector gets
  one extra coordinate sqrt(M^2 - |x|^2), M the largest norm, so that all of them lie on the
  sphere of radius M, where the nearest in l2 is the largest inner product. A query is scaled
  to norm M (which does not change its ranking) and its extra coordinate is 0, so the trees
  only keep the first `dim` components of each hyperplane.

Each split is rounded to an 8-bit normal (per-node scale) before the points are split by it,
so the search routes exactly as the build split while reading a quarter of the bytes.

Search: one priority queue across all trees, keyed by the smallest margin along the path
(Annoy), until `search_k` leaf entries have been collected. Each new point (a visited marker
with a generation counter drops duplicates) is first ranked by an 8-bit scalar code of its
vector (one cache line at dim <= 64, against four for float32); the best 4 * k of those are
then re-scored exactly on the float32 vectors, and the best k returned with exact scores.
Search is bound by memory latency, not arithmetic: rows of codes are fetched for a whole
leaf before they are scored (one leaf later), and the hyperplanes of both children are
fetched while a node's margin is computed. The whole batch is answered in one numba call.

Flat storage for the whole forest (node codes: an internal node is its row `>= 0`, a leaf is
`-(leaf + 1)`):
- `hyperplanes` (n_internal, >=dim) int8 (rows padded to 64 bytes), `scales` and `offsets`
  (n_internal,) float32: a point goes to `children[node, 1]` when
  `scales[node] * (hyperplanes[node, :dim] . x) + offsets[node] > 0`, else `children[node, 0]`;
- `children` (n_internal, 2) int32 node codes; `roots` (n_trees,) int32 node codes;
- `indices` (n_trees * n,) int32 row numbers, tree after tree, each tree's leaves in order;
  leaf j holds `indices[leaf_offsets[j]:leaf_offsets[j + 1]]`.
The vectors are kept in float32 for the exact scores; the 8-bit codes are derived from them
when the index is built or loaded, and not saved.

Measured (GloVe 6B 50d, 399K rows cosine, 1000 held-out queries, one query per call through
`Index.search`, one core, CPU time on a shared machine; Annoy 1.17 angular with 50 trees, fed
Python lists): at recall@10 >= 0.90 Annoy's best is 926 QPS (search_k 6000, recall 0.903),
this forest's 2012 QPS (50 trees, search_k 6000, recall 0.905); near 0.95, 628 QPS (Annoy,
10000, 0.946) against 1227 QPS (12000, 0.958). Build of 50 trees: about 50 s on one core;
memory 237 MB against Annoy's 348 MB file. With the shared kernels (kernels.py: the candidate
offer written out in the scoring loop), an interleaved CPU-time comparison on a heavily loaded
box measured 1,410 QPS at search_k 6000 (recall 0.910) and 888 at 12000 (0.959), against
Annoy's 615 (6000, 0.903) and 333 (12000, 0.957): 2.4x and 2.7x, up from 1.9x for the code
before.

`add` appends vectors; the forest is (re)built over all points lazily, before the next search
or save. Adding in many small batches between searches therefore rebuilds each time: for a
growing collection, add in bulk (the service buffers fresh writes and rebuilds in the
background).

Threads: any number of concurrent searches (per-thread scratch, GIL released); `add` and
`save` may run beside them (searches use an immutable snapshot of the forest).
"""

from __future__ import annotations

import threading
from typing import Any

import numba
import numpy as np
from numba import types as nt

from .base import MAX_INT_PARAM, MAX_SEED, Index, id_lookup, rows_of
from .kernels import JIT, deheap_sort, heap_push, heap_sift_down, prefetch, score_rows

_TWO_MEANS_STEPS = 200  # Annoy's ITERATION_STEPS
_SPLIT_TRIES = 3  # re-draws of an unbalanced split before a blind half-half split (Annoy)
_MAX_IMBALANCE = 0.95
_SEARCH_K_PER_TREE_AND_K = 8  # default search_k = this * n_trees * k at 10K points (Annoy: 1)
_RERANK_PER_K = 4  # candidates re-scored exactly, per result asked for
# The forest's arrays as saved, and their dtypes (see the module docstring).
_FOREST_DTYPES = {
    "hyperplanes": np.int8, "scales": np.float32, "offsets": np.float32, "children": np.int32,
    "roots": np.int32, "indices": np.int32, "leaf_offsets": np.int64, "sphere_radius": np.float32,
}


# ---------------------------------------------------------------- randomness (explicit state)


@numba.njit(**JIT)
def _rand_below(state, bound):
    """Uniform integer in [0, bound) from a xorshift64* generator; `state` is uint64 (1,)."""
    x = state[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    state[0] = x
    return np.int64((x * np.uint64(2685821657736338717)) >> np.uint64(33)) % bound


# ------------------------------------------------------------------------------ build


@numba.njit(**JIT)
def _sq_dist(a, b):
    acc = np.float32(0.0)
    for z in range(a.shape[0]):
        diff = a[z] - b[z]
        acc += diff * diff
    return acc


@numba.njit(**JIT)
def _two_means_split(data, perm, start, end, state, p, q, normal, normal8):
    """The bisector of two 2-means centroids: fill `normal8` (dim,) int8 with its unit normal
    in 8 bits and `normal` (dim,) float32 with the same normal as searches will see it
    (normal8 * scale); return (offset, scale), offset NaN when the centroids coincide."""
    count = end - start
    i = _rand_below(state, count)
    j = _rand_below(state, count - 1)
    if j >= i:
        j += 1
    p[:] = data[perm[start + i]]
    q[:] = data[perm[start + j]]
    ic = np.float32(1.0)
    jc = np.float32(1.0)
    for _ in range(_TWO_MEANS_STEPS):
        x = data[perm[start + _rand_below(state, count)]]
        di = ic * _sq_dist(p, x)
        dj = jc * _sq_dist(q, x)
        if di < dj:
            for z in range(p.shape[0]):
                p[z] = (p[z] * ic + x[z]) / (ic + 1)
            ic += 1
        elif dj < di:
            for z in range(q.shape[0]):
                q[z] = (q[z] * jc + x[z]) / (jc + 1)
            jc += 1
    norm = np.float32(0.0)
    for z in range(normal.shape[0]):
        normal[z] = p[z] - q[z]
        norm += normal[z] * normal[z]
    if norm <= 0:
        return np.float32(np.nan), np.float32(0.0)
    top = np.float32(0.0)
    for z in range(normal.shape[0]):
        top = max(top, abs(normal[z]))
    # 8-bit hyperplanes: a quarter of the memory a search walks through. The points are split
    # by the rounded normal itself, so the search routes exactly as the build did.
    scale = top / np.float32(127.0)
    offset = np.float32(0.0)
    for z in range(normal.shape[0]):
        level = np.int8(np.rint(normal[z] / scale))
        normal8[z] = level
        normal[z] = np.float32(level) * scale
        offset -= normal[z] * (p[z] + q[z]) * np.float32(0.5)
    return offset, scale


@numba.njit(**JIT)
def _partition(data, perm, start, end, normal, offset, state):
    """Reorder perm[start:end] so points with positive margin come last; return the split."""
    lo = start
    hi = end - 1
    while lo <= hi:
        x = data[perm[lo]]
        m = offset
        for z in range(normal.shape[0]):
            m += normal[z] * x[z]
        if m > 0 or (m == 0 and _rand_below(state, 2) == 1):
            tmp = perm[lo]
            perm[lo] = perm[hi]
            perm[hi] = tmp
            hi -= 1
        else:
            lo += 1
    return lo


@numba.njit(**JIT)
def _grow_nodes(hyperplanes, scales, offsets, children):
    cap = hyperplanes.shape[0] * 2
    h = np.zeros((cap, hyperplanes.shape[1]), dtype=np.int8)
    s = np.zeros(cap, dtype=np.float32)
    o = np.zeros(cap, dtype=np.float32)
    c = np.zeros((cap, 2), dtype=np.int32)
    h[: hyperplanes.shape[0]] = hyperplanes
    s[: scales.shape[0]] = scales
    o[: offsets.shape[0]] = offsets
    c[: children.shape[0]] = children
    return h, s, o, c


@numba.njit(**JIT)
def _build_tree(data, leaf_size, keep_dim, seed):
    """One tree over all rows of `data` (n, d) float32.

    Returns hyperplanes (n_internal, keep_dim) int8, scales and offsets (n_internal,) float32,
    children (n_internal, 2) int32 node codes, perm (n,) int32 rows in leaf order,
    leaf_starts (n_leaves,) int64 positions in perm, and the root's node code.
    """
    n, d = data.shape
    state = np.empty(1, dtype=np.uint64)
    state[0] = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019)
    if state[0] == 0:
        state[0] = np.uint64(1)
    perm = np.arange(n).astype(np.int32)
    cap = max(16, 4 * n // max(leaf_size, 1) + 16)
    hyperplanes = np.zeros((cap, d), dtype=np.int8)
    scales = np.zeros(cap, dtype=np.float32)
    offsets = np.zeros(cap, dtype=np.float32)
    children = np.zeros((cap, 2), dtype=np.int32)
    leaf_starts = np.empty(n, dtype=np.int64)
    n_internal = 0
    n_leaves = 0
    root = np.int32(0)
    p = np.empty(d, dtype=np.float32)
    q = np.empty(d, dtype=np.float32)
    normal = np.empty(d, dtype=np.float32)
    normal8 = np.empty(d, dtype=np.int8)
    # Explicit depth-first stack; the left child is taken first so leaves come out in the
    # order of their positions in perm.
    s_start = np.empty(n + 1, dtype=np.int64)
    s_end = np.empty(n + 1, dtype=np.int64)
    s_parent = np.empty(n + 1, dtype=np.int64)
    s_side = np.empty(n + 1, dtype=np.int64)
    s_start[0], s_end[0], s_parent[0], s_side[0] = 0, n, -1, 0
    top = 1
    while top > 0:
        top -= 1
        start, end, parent, side = s_start[top], s_end[top], s_parent[top], s_side[top]
        if end - start <= leaf_size:
            leaf_starts[n_leaves] = start
            code = np.int32(-(n_leaves + 1))
            n_leaves += 1
        else:
            mid = start
            offset = np.float32(0.0)
            scale = np.float32(0.0)
            for _ in range(_SPLIT_TRIES):
                offset, scale = _two_means_split(data, perm, start, end, state, p, q, normal, normal8)
                if np.isnan(offset):
                    continue
                mid = _partition(data, perm, start, end, normal, offset, state)
                left = (mid - start) / (end - start)
                if max(left, 1.0 - left) <= _MAX_IMBALANCE:
                    break
            left = (mid - start) / (end - start)
            if np.isnan(offset) or max(left, 1.0 - left) > _MAX_IMBALANCE:
                # Duplicates or a degenerate cloud: a blind half-half split. A zero
                # hyperplane gives both sides the same priority at search time.
                normal8[:] = 0
                scale = np.float32(0.0)
                offset = np.float32(0.0)
                mid = (start + end) // 2
            if n_internal == hyperplanes.shape[0]:
                hyperplanes, scales, offsets, children = _grow_nodes(
                    hyperplanes, scales, offsets, children
                )
            hyperplanes[n_internal] = normal8
            scales[n_internal] = scale
            offsets[n_internal] = offset
            code = np.int32(n_internal)
            n_internal += 1
            s_start[top], s_end[top], s_parent[top], s_side[top] = mid, end, code, 1
            s_start[top + 1], s_end[top + 1], s_parent[top + 1], s_side[top + 1] = start, mid, code, 0
            top += 2
        if parent < 0:
            root = code
        else:
            children[parent, side] = code
    return (
        np.ascontiguousarray(hyperplanes[:n_internal, :keep_dim]),
        scales[:n_internal].copy(),
        offsets[:n_internal].copy(),
        children[:n_internal].copy(),
        perm,
        leaf_starts[:n_leaves].copy(),
        root,
    )


# ----------------------------------------------------------------------------- search


@numba.njit(**JIT)
def _prefetch_node(node, dim, hyperplanes, children, scales, offsets, leaf_offsets):
    """Start fetching what the descent reads at `node`: an internal node's hyperplane, children,
    scale and offset, or a leaf's bounds (node codes as in the module docstring)."""
    if node >= 0:
        for z in range(0, dim, 64):
            prefetch(hyperplanes, node, z)
        prefetch(children, node, 0)
        prefetch(scales, node, 0)
        prefetch(offsets, node, 0)
    else:
        prefetch(leaf_offsets, -node - 1, 0)


@numba.njit(**JIT)
def _score_codes(rows, count, codes, code_query, code_bias, code_scale, is_l2, cand_d, cand_i, n_cand):
    """Offer rows[:count] to the candidate heap by their approximate distance from the 8-bit
    codes; returns the new heap size."""
    dim = code_query.shape[0]
    for b in range(count):
        row = rows[b]
        c = codes[row]
        approx = np.float32(0.0)
        if is_l2:
            for z in range(dim):
                diff = code_scale[z] * np.float32(c[z]) - code_query[z]
                approx += diff * diff
        else:
            for z in range(dim):
                approx -= code_query[z] * np.float32(c[z])
            approx -= code_bias
        if n_cand < cand_d.shape[0]:  # the bounded-heap offer (kernels' docstring)
            n_cand = heap_push(cand_d, cand_i, n_cand, approx, row)
        elif approx < cand_d[0]:
            heap_sift_down(cand_d, cand_i, n_cand, approx, row)
    return n_cand


@numba.njit(**JIT)
def _search_one(
    query, tree_query, code_query, code_bias, search_k, data, codes, code_scale, is_l2,
    hyperplanes, scales, offsets, children, roots, leaf_offsets, indices,
    visited, generation, pq_keys, pq_codes, cand_d, cand_i, best_d, best_i, batch,
):
    """Fill best_d[:found], best_i[:found] (a max-heap by exact distance, lower is better;
    minus the inner product for ip) with the best len(best_d) rows; return found."""
    dim = query.shape[0]
    n_cand = 0
    current = 0  # batch[current] takes the next leaf's rows
    waiting = 0  # rows in batch[1 - current] not scored yet
    collected = 0
    pq_size = 0
    n_trees = roots.shape[0]
    t = 0
    while collected < search_k:
        # The next subtree: every tree's root first (priority +inf), then the queue.
        if t < n_trees:
            code = roots[t]
            key = np.float32(np.inf)
            t += 1
        elif pq_size > 0:
            code = pq_codes[0]
            key = pq_keys[0]
            pq_size -= 1
            if pq_size > 0:
                heap_sift_down(pq_keys, pq_codes, pq_size, pq_keys[pq_size], pq_codes[pq_size])
                # The next subtree to pop is known now: start fetching its top.
                # Lighter than _prefetch_node on purpose: a pop happens per leaf, and fetching
                # the whole next node here measured slower on GloVe (1,759 -> 1,487 QPS).
                following = pq_codes[0]
                if following >= 0:
                    prefetch(hyperplanes, following, 0)
                    prefetch(children, following, 0)
                else:
                    prefetch(leaf_offsets, -following - 1, 0)
        else:
            break
        # Descend to a leaf along the near side, queueing each far side. This visits leaves in
        # the same order as a pure best-first queue: the near child's key never drops below
        # what the far sides just queued.
        while code >= 0:
            left = children[code, 0]
            right = children[code, 1]
            # Start fetching both children while this margin is computed: the walk down is a
            # chain of dependent loads otherwise.
            _prefetch_node(left, dim, hyperplanes, children, scales, offsets, leaf_offsets)
            _prefetch_node(right, dim, hyperplanes, children, scales, offsets, leaf_offsets)
            h = hyperplanes[code]
            m = np.float32(0.0)
            for z in range(dim):
                m += np.float32(h[z]) * tree_query[z]
            m = m * scales[code] + offsets[code]
            if m > 0:
                near = right
                far = left
            else:
                near = left
                far = right
                m = -m
            pq_size = heap_push(pq_keys, pq_codes, pq_size, min(key, -m), far)
            key = min(key, m)
            code = near
        leaf = -code - 1
        lo = leaf_offsets[leaf]
        hi = leaf_offsets[leaf + 1]
        collected += hi - lo
        # Keep this leaf's unseen rows and start fetching their codes, then score the previous
        # leaf's rows, whose codes were fetched while this leaf was being reached.
        rows = batch[current]
        fresh = 0
        for pos in range(lo, hi):
            row = indices[pos]
            if visited[row] != generation:
                visited[row] = generation
                for z in range(0, dim, 64):
                    prefetch(codes, row, z)
                rows[fresh] = row
                fresh += 1
        current = 1 - current
        n_cand = _score_codes(
            batch[current], waiting, codes, code_query, code_bias, code_scale, is_l2,
            cand_d, cand_i, n_cand,
        )
        waiting = fresh
    n_cand = _score_codes(
        batch[1 - current], waiting, codes, code_query, code_bias, code_scale, is_l2,
        cand_d, cand_i, n_cand,
    )
    # Exact re-scoring of the best candidates by their 8-bit codes.
    return score_rows(query, data, cand_i, n_cand, is_l2, best_d, best_i, 0)


# An eager signature: the search kernel is compiled (or loaded from numba's cache) at import,
# not on the first request.
_F32_1D, _F32_2D = nt.float32[::1], nt.float32[:, ::1]
_SEARCH_BATCH_SIG = (
    _F32_2D, nt.int64, nt.int64, nt.int64,  # queries, k, rerank, search_k
    _F32_2D, nt.uint8[:, ::1], _F32_1D, _F32_1D, nt.int64[::1],  # data, codes, code_min, code_scale, ids
    nt.boolean, nt.float32, nt.int64,  # is_l2, sphere_radius, max_leaf
    nt.int8[:, ::1], _F32_1D, _F32_1D, nt.int32[:, ::1], nt.int32[::1],  # hyperplanes .. roots
    nt.int64[::1], nt.int32[::1],  # leaf_offsets, indices
    nt.uint8[::1], nt.uint8[::1], _F32_1D, nt.int32[::1],  # visited, generation, pq_keys, pq_codes
    nt.int64[:, ::1], _F32_2D,  # out_ids, out_scores
)


@numba.njit(_SEARCH_BATCH_SIG, **JIT)
def _search_batch(
    queries, k, rerank, search_k, data, codes, code_min, code_scale, ids, is_l2,
    sphere_radius, max_leaf, hyperplanes, scales, offsets, children, roots, leaf_offsets,
    indices, visited, generation, pq_keys, pq_codes, out_ids, out_scores,
):
    """Answer (nq, dim) queries into out_ids (nq, k) int64 and out_scores (nq, k) float32.

    Candidates are ranked by their 8-bit codes `codes` (n, >=dim) uint8 (x ~ code_min +
    code_scale * code) and the best `rerank` of them re-scored exactly on `data` (n, dim).
    `visited` (n,) uint8 and `generation` (1,) uint8 are the caller's scratch: a row counts
    as seen for this query when visited[row] == the query's generation, so the markers are
    cleared only once every 255 queries (one byte a row keeps them in the L2 cache).
    `pq_*` is the caller's preallocated priority queue.
    """
    nq, dim = queries.shape
    tree_query = np.empty(dim, dtype=np.float32)
    code_query = np.empty(dim, dtype=np.float32)
    cand_d = np.empty(max(rerank, k), dtype=np.float32)
    cand_i = np.empty(max(rerank, k), dtype=np.int32)
    best_d = np.empty(k, dtype=np.float32)
    best_i = np.empty(k, dtype=np.int32)
    batch = np.empty((2, max_leaf), dtype=np.int32)
    for qi in range(nq):
        query = queries[qi]
        code_bias = np.float32(0.0)
        if is_l2:
            tree_query[:] = query
            for z in range(dim):
                code_query[z] = query[z] - code_min[z]
        else:
            # ip: the trees live on the sphere of radius `sphere_radius`; scaling the query
            # onto it keeps its inner-product ranking.
            norm = np.float32(0.0)
            for z in range(dim):
                norm += query[z] * query[z]
                code_query[z] = query[z] * code_scale[z]
                code_bias += query[z] * code_min[z]
            scale = sphere_radius / np.sqrt(norm) if norm > 0 else np.float32(1.0)
            for z in range(dim):
                tree_query[z] = query[z] * scale
        generation[0] += np.uint8(1)
        if generation[0] == 0:
            visited[:] = 0
            generation[0] = np.uint8(1)
        found = _search_one(
            query, tree_query, code_query, code_bias, search_k, data, codes, code_scale, is_l2,
            hyperplanes, scales, offsets, children, roots, leaf_offsets, indices,
            visited, generation[0], pq_keys, pq_codes, cand_d, cand_i, best_d, best_i, batch,
        )
        deheap_sort(best_d, best_i, found)
        for r in range(found):
            out_ids[qi, r] = ids[best_i[r]]
            out_scores[qi, r] = best_d[r] if is_l2 else -best_d[r]
        for r in range(found, k):
            out_ids[qi, r] = -1
            out_scores[qi, r] = np.inf if is_l2 else -np.inf


def _encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-bit scalar codes of (n, dim) float32 rows: codes (n, >=dim) uint8 (`_cache_aligned`),
    per-dimension min and step (dim,) float32; x ~ min + step * code."""
    n, dim = x.shape
    lo = x.min(axis=0) if n else np.zeros(dim, np.float32)
    hi = x.max(axis=0) if n else np.zeros(dim, np.float32)
    step = ((hi - lo) / 255).astype(np.float32)
    safe = np.where(step > 0, step, 1)
    codes = _cache_aligned(np.clip(np.rint((x - lo) / safe), 0, 255).astype(np.uint8))
    return codes, lo.astype(np.float32), step


def _cache_aligned(rows: np.ndarray) -> np.ndarray:
    """A copy of the 1-byte (n, d) `rows` whose rows start on 64-byte cache lines: rows
    zero-padded to whole lines, the buffer aligned. A row of up to 64 bytes is then one
    memory fetch. Already padded rows keep their width."""
    n, d = rows.shape
    width = -(-d // 64) * 64
    buf = np.zeros(n * width + 64, dtype=rows.dtype)
    skip = -buf.ctypes.data % 64
    out = buf[skip : skip + n * width].reshape(n, width)
    out[:, :d] = rows
    return out


# ------------------------------------------------------------------------------ class


# Trees a build may ask for: each holds about 2n/leaf_size nodes and a copy of every row
# position, so beyond this a build exhausts memory rather than adding recall (Annoy users
# stay below a few hundred).
MAX_TREES = 4096

class ForestIndex(Index):
    """In-house Annoy-style random-projection forest (all metrics).

    Build: `n_trees` (more trees: better recall per candidate, more memory and build time),
    `leaf_size` (points per leaf at most; default from the dimension as in Annoy), `seed`.
    Search: `search_k`, leaf entries collected before the exact re-scoring (default
    8 * n_trees * k, times (n / 10K) ** 0.3 above 10K points); the one knob for speed
    against recall.
    """

    kind = "forest"
    build_defaults = {"n_trees": 50, "leaf_size": None, "seed": 0}
    search_defaults = {"search_k": None}

    def __init__(self, dim: int, metric: str = "l2", **build_params: Any) -> None:
        super().__init__(dim, metric, **build_params)
        self._vectors = np.empty((0, dim), dtype=np.float32)
        self._ids = np.empty(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._forest: dict[str, np.ndarray] | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._version = 0
        self._codes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        # (version, the forest's internal node count, the kernel's index arguments)
        self._snapshot: tuple[int, int, tuple] | None = None
        # (the ids array it was made from, its id -> row lookup) for filtered search
        self._lookup: tuple[np.ndarray, tuple[np.ndarray, np.ndarray]] | None = None

    # ---- parameters

    param_bounds = {"seed": (0, MAX_SEED), "leaf_size": (2, MAX_INT_PARAM), "n_trees": (1, MAX_TREES)}

    def _leaf_size(self) -> int:
        leaf_size = self.build_params.get("leaf_size")
        if leaf_size is None:
            # Annoy's leaves hold as many ids as fit in a node's hyperplane, about dim + 2;
            # that keeps the hyperplanes' memory near the vectors' own, per tree.
            leaf_size = self.build_params["leaf_size"] = max(32, min(self.dim + 2, 256))
        return int(leaf_size)

    def default_search_k(self, k: int) -> int:
        """Annoy's default is n_trees * k; recall at a fixed search_k falls as the collection
        grows, so this one grows slowly with n (fitted on GloVe: recall@10 about 0.95-0.97 at
        10K and 400K points)."""
        growth = max(1.0, len(self) / 10_000) ** 0.3
        return int(_SEARCH_K_PER_TREE_AND_K * int(self.build_params["n_trees"]) * k * growth)

    # ---- data

    def __len__(self) -> int:
        return self._vectors.shape[0] + sum(v.shape[0] for v, _ in self._pending)

    def _add(self, x: np.ndarray, ids: np.ndarray) -> None:
        with self._lock:
            self._pending.append((x.copy(), ids.copy()))
            self._forest = None

    def _ensure_built(self) -> tuple[int, int, tuple]:
        """The current search snapshot, (re)building the forest first if vectors were added."""
        snapshot = self._snapshot
        if snapshot is not None and self._forest is not None:
            return snapshot
        with self._lock:
            if self._forest is None:
                if self._pending:
                    self._vectors = np.ascontiguousarray(
                        np.concatenate([self._vectors] + [v for v, _ in self._pending])
                    )
                    self._ids = np.concatenate([self._ids] + [i for _, i in self._pending])
                    self._pending = []
                self._forest = self._build(self._vectors)
                self._on_new_forest()
            return self._snapshot

    def _build(self, x: np.ndarray) -> dict[str, np.ndarray]:
        n_trees = int(self.build_params["n_trees"])
        leaf_size = self._leaf_size()
        seed = int(self.build_params["seed"])
        radius = np.float32(1.0)
        data = x
        if self.metric == "ip":
            sq = np.einsum("ij,ij->i", x, x, dtype=np.float64)
            radius = np.float32(np.sqrt(sq.max())) if sq.max() > 0 else np.float32(1.0)
            extra = np.sqrt(np.maximum(float(radius) ** 2 - sq, 0.0)).astype(np.float32)
            data = np.ascontiguousarray(np.hstack([x, extra[:, None]]))
        trees = [_build_tree(data, leaf_size, self.dim, seed * 7919 + t) for t in range(n_trees)]
        planes, scales, offsets, children, perms, leaf_starts, roots = zip(*trees)
        n = x.shape[0]
        # Node codes are per tree; shift them into the forest's numbering.
        internal_base = np.cumsum([0] + [c.shape[0] for c in children])
        leaf_base = np.cumsum([0] + [s.shape[0] for s in leaf_starts])

        def shift(codes: np.ndarray, t: int) -> np.ndarray:
            return np.where(codes >= 0, codes + internal_base[t], codes - leaf_base[t]).astype(np.int32)

        return {
            "hyperplanes": np.concatenate(planes),
            "scales": np.concatenate(scales),
            "offsets": np.concatenate(offsets),
            "children": np.concatenate([shift(c, t) for t, c in enumerate(children)]),
            "roots": np.concatenate([shift(np.array([r]), t) for t, r in enumerate(roots)]),
            "indices": np.concatenate(perms),
            "leaf_offsets": np.concatenate(
                [s + t * n for t, s in enumerate(leaf_starts)] + [np.array([n_trees * n])]
            ).astype(np.int64),
            "sphere_radius": np.array([radius], dtype=np.float32),
        }

    # ---- search

    def _scratch(self, version: int, n: int, n_internal: int) -> tuple[np.ndarray, ...]:
        """This thread's visited markers and queue, kept between calls."""
        local = self._local
        if getattr(local, "version", None) != version:
            # Each internal node is queued at most once per query: this bound never overflows,
            # and only the pages a query touches are ever committed.
            local.scratch = (
                np.zeros(n, dtype=np.uint8),
                np.zeros(1, dtype=np.uint8),
                np.empty(n_internal + 1, dtype=np.float32),
                np.empty(n_internal + 1, dtype=np.int32),
            )
            local.version = version
        return local.scratch

    def _search(self, q: np.ndarray, k: int, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        version, n_internal, args = self._ensure_built()
        search_k = params["search_k"] or self.default_search_k(k)
        scratch = self._scratch(version, args[0].shape[0], n_internal)
        out_ids = np.empty((q.shape[0], k), dtype=np.int64)
        out_scores = np.empty((q.shape[0], k), dtype=np.float32)
        queries = np.ascontiguousarray(q, dtype=np.float32)
        _search_batch(queries, k, _RERANK_PER_K * k, search_k, *args, *scratch, out_ids, out_scores)
        return out_ids, out_scores

    # ---- filtered search

    def _admitted_rows(self, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vectors, ids) of the current snapshot and the row positions of the admitted ids."""
        _, _, args = self._ensure_built()
        vectors, ids = args[0], args[4]  # see _on_new_forest
        cached = self._lookup
        if cached is None or cached[0] is not ids:  # a rebuild or load replaces the ids array
            cached = self._lookup = (ids, id_lookup(ids))
        return vectors, ids, rows_of(allowed, cached[1])

    def _admitted_vectors(self, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        vectors, ids, rows = self._admitted_rows(allowed)
        return ids[rows], vectors[rows]

    # ---- persistence

    def _state(self) -> dict[str, np.ndarray]:
        while True:
            if len(self):
                self._ensure_built()
            with self._lock:
                # An add that slipped in after the build would leave vectors without trees in
                # the file: read trees and vectors together, building again if that happened.
                if self._forest is not None or not len(self):
                    return {"vectors": self._vectors, "ids": self._ids, **(self._forest or {})}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self._vectors = np.ascontiguousarray(arrays["vectors"], dtype=np.float32)
        self._ids = np.ascontiguousarray(arrays["ids"], dtype=np.int64)
        self._pending = []
        if self._vectors.shape[0]:
            # The dtypes the search kernel's signature fixes (a file from elsewhere may differ).
            self._forest = {
                name: np.ascontiguousarray(arrays[name], dtype=dtype)
                for name, dtype in _FOREST_DTYPES.items()
            }
        else:
            self._forest = None
        self._on_new_forest()

    def _on_new_forest(self) -> None:
        """Derive what search needs from the vectors and the forest, as one snapshot that a
        concurrent search reads whole."""
        forest = self._forest
        self._version += 1  # a new snapshot invalidates every thread's scratch
        if not forest:
            self._codes = None
            self._snapshot = None
            return
        # 8-bit codes rank the candidates (one cache line per row at dim <= 64, a quarter of
        # the float32 row); they are derived, not saved.
        self._codes = _encode(self._vectors)
        forest["hyperplanes"] = _cache_aligned(forest["hyperplanes"])
        args = (
            self._vectors, *self._codes, self._ids, self.space == "l2",
            forest["sphere_radius"][0], int(np.diff(forest["leaf_offsets"]).max()),
            forest["hyperplanes"], forest["scales"], forest["offsets"], forest["children"],
            forest["roots"],
            forest["leaf_offsets"], forest["indices"],
        )
        self._snapshot = (self._version, forest["children"].shape[0], args)

    def memory_bytes(self) -> int:
        forest = self._forest or {}
        held = [self._vectors, self._ids, *forest.values(), *(self._codes or ())]
        held += [a for pair in self._pending for a in pair]
        return int(sum(a.nbytes for a in held))

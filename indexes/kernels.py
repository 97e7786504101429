"""Numba primitives shared by the in-house kinds (lsh, forest), written once.

- `prefetch`: a cache-prefetch hint (LLVM's `llvm.prefetch`). The in-house kernels are bound
  by memory latency: they score rows scattered over a large array, and asking for the next
  rows' cache lines while the current ones are scored overlaps those misses (on GloVe 400K it
  roughly halved single-query latency). The hint never changes a result.
- A max-heap over two parallel arrays, `keys` (float32) and `vals` (any integer payload):
  `heap_push`, `heap_sift_down` (replace the root; also how a pop is written) and
  `deheap_sort` (the heap's entries in increasing key order, in place). The bounded heap that
  keeps the `keys.shape[0]` smallest keys (a top-k by distance) is offered a candidate by

      if size < keys.shape[0]:
          size = heap_push(keys, vals, size, key, val)
      elif key < keys[0]:
          heap_sift_down(keys, vals, size, key, val)

  written out in the loop that offers the candidates (`score_rows`, forest's code scoring):
  most candidates fail the second test, and one numba call per candidate for the whole offer
  cost lsh 7-10% of its QPS on GloVe 400K (numba's inline="always" recovered a third of it).
- `score_rows`: exact distances of a list of rows to a query (squared l2, or minus the inner
  product, so that lower is better for every space), offered to a bounded heap.

Every kernel works on plain arrays passed in by the caller, as pynndescent's `utils.py` does;
none allocates.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

JIT = {"nogil": True, "cache": True, "fastmath": True}
# Rows whose cache lines `score_rows` requests before it scores them: enough loads in flight
# to cover a miss, few enough that they stay in the line-fill buffers.
PREFETCH_AHEAD = 8


@intrinsic
def prefetch(typingctx, array, row, col):
    """Hint the CPU to fetch the cache line of array[row, col] (2-D) or array[row] (1-D, col
    ignored); no effect on results."""
    sig = types.void(array, row, col)

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        ary = context.make_array(array_type)(context, builder, args[0])
        at = [context.cast(builder, a, t, types.intp) for a, t in zip(args[1:], signature.args[1:])]
        ptr = cgutils.get_item_pointer(context, builder, array_type, ary, at[: array_type.ndim])
        byte_ptr = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # read access, high temporal locality, data cache
        builder.call(fn, [builder.bitcast(ptr, byte_ptr), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(**JIT)
def heap_push(keys, vals, size, key, val):
    """Push (key, val) onto the max-heap keys[:size]; returns the new size (the push is
    dropped when the arrays are full)."""
    if size == keys.shape[0]:
        return size
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if keys[parent] >= key:
            break
        keys[i] = keys[parent]
        vals[i] = vals[parent]
        i = parent
    keys[i] = key
    vals[i] = val
    return size + 1


@numba.njit(**JIT)
def heap_sift_down(keys, vals, size, key, val):
    """Put (key, val) at the root of the max-heap keys[:size] and restore the order. A pop is
    `heap_sift_down(keys, vals, size - 1, keys[size - 1], vals[size - 1])` after reading the
    root."""
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and keys[child + 1] > keys[child]:
            child += 1
        if keys[child] <= key:
            break
        keys[i] = keys[child]
        vals[i] = vals[child]
        i = child
    keys[i] = key
    vals[i] = val


@numba.njit(**JIT)
def deheap_sort(keys, vals, size):
    """Sort the max-heap keys[:size] (with its vals) into increasing key order, in place."""
    for end in range(size - 1, 0, -1):
        key, val = keys[end], vals[end]
        keys[end], vals[end] = keys[0], vals[0]
        heap_sift_down(keys, vals, end, key, val)


@numba.njit(**JIT)
def score_rows(query, data, rows, count, is_l2, keys, vals, size):
    """Offer rows[:count] of `data` (n, dim) float32 to the bounded heap (keys, vals) by their
    exact distance to `query` (dim,) float32: squared l2 if is_l2, else minus the inner product.
    Returns the new heap size. Rows are requested PREFETCH_AHEAD rows before they are scored."""
    dim = query.shape[0]
    for b in range(min(PREFETCH_AHEAD, count)):
        for z in range(0, dim, 16):
            prefetch(data, rows[b], z)
        prefetch(data, rows[b], dim - 1)
    for b in range(count):
        if b + PREFETCH_AHEAD < count:
            ahead = rows[b + PREFETCH_AHEAD]
            for z in range(0, dim, 16):
                prefetch(data, ahead, z)
            prefetch(data, ahead, dim - 1)
        row = rows[b]
        dist = np.float32(0.0)
        # data[row, z], not a row view: the view measured 10% slower on lsh at GloVe 400K.
        if is_l2:
            for z in range(dim):
                diff = data[row, z] - query[z]
                dist += diff * diff
        else:
            for z in range(dim):
                dist -= data[row, z] * query[z]
        if size < keys.shape[0]:  # the bounded-heap offer (module docstring)
            size = heap_push(keys, vals, size, dist, row)
        elif dist < keys[0]:
            heap_sift_down(keys, vals, size, dist, row)
    return size

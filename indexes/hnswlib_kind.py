"""The `hnswlib` kind: nmslib's HNSW graph, with user ids as hnswlib labels.

hnswlib keeps the search beam `ef` in the index object (`set_ef`), not per call. A per-call
`ef` therefore has to change shared state, and a search running meanwhile would silently use
the other caller's ef. `_EfGate` makes that race-free without serialising the common case:
searches that want the index's current ef run together; one that wants another ef waits
until they drain, switches, and then lets its own kind run together. Adds are exclusive,
because growing the index (`resize_index`) reallocates under running searches.

Threads: a search runs on its caller's thread (`num_threads=1`): the service's own threads give
the parallelism, and hnswlib would otherwise start a new pool for every micro-batch of more
than 4 x cores rows. `add` uses hnswlib's threads (one per core by default).

Saved state: hnswlib's own in-memory serialisation (`Index.__getstate__`, the dict its pickling
support builds), stored as plain arrays in the index file: the graph and vectors as
`hnswlib_<name>` arrays and the scalar parameters as JSON (`hnswlib_params`). No temporary
file and no second copy of the index on disk; files of the earlier format (one `hnswlib` blob
written by `save_index`) still load.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import hnswlib
import numpy as np

from .base import MAX_FILTERED_EF, MAX_M, Index, id_lookup, rows_of, widened

INITIAL_CAPACITY = 1024
# hnswlib's per-element extras besides vector and links: the level-0 link count (4 bytes),
# the label (8), the element's level (4), its upper-link pointer (8) and its slot in the
# label -> id hash map (~32 with the node), rounded.
PER_ELEMENT_OVERHEAD = 56
# The arrays of hnswlib's state dict (`Index.__getstate__()[0]`); every other entry is a scalar.
STATE_ARRAYS = ("label_lookup_external", "label_lookup_internal", "element_levels", "data_level0", "link_lists")
PARAMS_KEY = "hnswlib_params"
LEGACY_KEY = "hnswlib"
SEARCH_THREADS = 1  # the earlier format: the bytes hnswlib's save_index wrote


class _EfGate:
    """A lock that admits any number of holders of the same mode, or one exclusive holder.

    Modes are ef values for searches; `exclusive()` is for writers. A newcomer whose mode is
    current still waits while others are queued, so the running group drains and a queued
    override gets its turn under a steady stream of default-ef searches (which waiter wins
    once the group has drained is up to the scheduler).
    """

    def __init__(self, set_ef: Any, ef: int) -> None:
        self._cond = threading.Condition()
        self._set_ef = set_ef
        set_ef(ef)
        self._ef = ef  # the ef the hnswlib index holds now
        self._mode: Any = ef
        self._active = 0
        self._waiting = 0

    def rebind(self, set_ef: Any, ef: int) -> None:
        """Point the gate at a new hnswlib index (after load); call with no search running."""
        with self._cond:
            self._set_ef = set_ef
            set_ef(ef)
            self._ef = self._mode = ef

    def would_wait(self, ef: int) -> bool:
        """Whether `searching(ef)` would wait now: others are queued, or hold another mode (a
        read without the lock, as `Index.search_would_wait` allows)."""
        return self._waiting > 0 or (self._active > 0 and self._mode != ef)

    @contextmanager
    def searching(self, ef: int) -> Iterator[None]:
        with self._enter(ef, exclusive=False):
            yield

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._enter(object(), exclusive=True):
            yield

    @contextmanager
    def _enter(self, mode: Any, exclusive: bool) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._active and (exclusive or self._mode != mode or self._waiting > 1):
                self._cond.wait()
            self._waiting -= 1
            self._mode = mode
            if not exclusive and self._ef != mode:
                self._set_ef(mode)
                self._ef = mode
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()


class HnswlibIndex(Index):
    """hnswlib HNSW graph (vectors kept in full precision). `library_index` is the
    `hnswlib.Index`.

    Build: `M` links per node (2M on layer 0), `ef_construction` build beam. Search: `ef`,
    the beam, at least k (hnswlib uses max(ef, k)). Capacity doubles automatically on add.
    An id added again replaces the stored vector.
    """

    kind = "hnswlib"
    build_defaults = {"M": 16, "ef_construction": 200}
    search_defaults = {"ef": 64}

    def __init__(self, dim: int, metric: str = "l2", **build_params: Any) -> None:
        super().__init__(dim, metric, **build_params)
        self.library_index = hnswlib.Index(space=self.space, dim=self.dim)
        self.library_index.init_index(
            max_elements=INITIAL_CAPACITY,
            M=self.build_params["M"],
            ef_construction=self.build_params["ef_construction"],
        )
        self._gate = _EfGate(self.library_index.set_ef, self.search_params["ef"])
        # The sorted labels of filtered search, cached per count of adds and loads.
        self._rows_version = 0
        self._lookup: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None

    # hnswlib needs at least two links per node to build a connected graph.
    param_bounds = {"M": (2, MAX_M)}

    def _add(self, x: np.ndarray, ids: np.ndarray) -> None:
        with self._gate.exclusive():
            index = self.library_index
            needed = index.element_count + x.shape[0]
            if needed > index.max_elements:
                index.resize_index(max(needed, 2 * index.max_elements))
            index.add_items(x, ids)
            self._rows_version += 1
            self._extend_copy(x, ids)

    def search_would_wait(self, params: dict[str, Any]) -> bool:
        return self._gate.would_wait(params["ef"])

    def _search(self, q: np.ndarray, k: int, params: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        # One thread per call (see the module docstring).
        with self._gate.searching(params["ef"]):
            try:
                labels, distances = self.library_index.knn_query(q, k=k, num_threads=SEARCH_THREADS)
            except RuntimeError:
                # hnswlib cannot pad: a graph built too sparse to reach k items raises this.
                raise ValueError(
                    f"hnswlib reached fewer than k={k} of its {len(self)} items at ef={params['ef']}: "
                    f"search with a larger ef, or rebuild with a larger M (now {self.build_params['M']}) "
                    f"or ef_construction (now {self.build_params['ef_construction']})"
                ) from None
        # hnswlib's "ip" space returns the distance 1 - <q, x>; the contract wants <q, x>.
        # Its "l2" space is already the squared Euclidean distance.
        scores = 1.0 - distances if self.space == "ip" else distances
        return labels.astype(np.int64, copy=False), scores

    def __len__(self) -> int:
        return int(self.library_index.element_count)

    def memory_bytes(self) -> int:
        """Estimate: capacity x (vector + 2M level-0 links + overhead) + upper layers.

        hnswlib allocates level 0 for the whole capacity up front; an element reaches the
        upper layers with probability ~1/M, each such element holding M links per layer.
        """
        index, m = self.library_index, self.build_params["M"]
        level0 = self.dim * 4 + (2 * m + 1) * 4 + PER_ELEMENT_OVERHEAD
        upper = (m + 1) * 4 * index.element_count // max(m - 1, 1)
        return int(index.max_elements * level0 + upper)

    def _state(self) -> dict[str, np.ndarray]:
        with self._gate.exclusive():  # hnswlib's own copy is not safe beside add_items
            (state,) = self.library_index.__getstate__()
        params = {name: value for name, value in state.items() if name not in STATE_ARRAYS}
        arrays = {f"hnswlib_{name}": np.ascontiguousarray(state[name]) for name in STATE_ARRAYS}
        arrays[PARAMS_KEY] = np.frombuffer(json.dumps(params).encode(), dtype=np.uint8)
        return arrays

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        if LEGACY_KEY in arrays:
            index = _load_legacy(self.space, self.dim, arrays[LEGACY_KEY])
        else:
            state = json.loads(arrays[PARAMS_KEY].tobytes().decode())
            state.update({name: arrays[f"hnswlib_{name}"] for name in STATE_ARRAYS})
            _check_state(state, self.space, self.dim)
            # The saving machine's thread count is not this one's: take hnswlib's default here.
            state["num_threads"] = hnswlib.Index(space=self.space, dim=self.dim).num_threads
            index = hnswlib.Index.__new__(hnswlib.Index)
            try:
                index.__setstate__((state,))
            except (RuntimeError, TypeError, ValueError) as exc:  # hnswlib's own consistency checks
                raise ValueError(f"hnswlib state does not match its parameters ({exc})") from None
        self.library_index = index
        self._gate.rebind(index.set_ef, self.search_params["ef"])
        self._rows_version += 1

    # ---- filtered search

    def _vector_copy(self) -> tuple[tuple[np.ndarray, np.ndarray | None], np.ndarray, np.ndarray]:
        """(id -> row lookup, ids (n,), vectors (n, dim) float32): a copy of the stored vectors
        for the exact scan of selective filters, made on the first such search (hnswlib's
        get_items costs ~3.5 us per item, 12 ms for 5K ids, where a numpy gather costs 0.1 ms)
        and kept up to date by add. It costs dim x 4 bytes per item, only once filters are used."""
        cached = self._lookup
        version = self._rows_version
        if cached is None or cached[0] != version:
            with self._gate.searching(self.search_params["ef"]):  # not beside an add
                labels = np.asarray(self.library_index.get_ids_list(), dtype=np.int64)
                vectors = self.library_index.get_items(labels, return_type="numpy") if labels.size else None
            vectors = np.ascontiguousarray(vectors if vectors is not None else np.empty((0, self.dim)), dtype=np.float32)
            cached = (version, (id_lookup(labels), labels, vectors))
            self._lookup = cached
        return cached[1]

    def _extend_copy(self, x: np.ndarray, ids: np.ndarray) -> None:
        """Keep an existing vector copy in step with an add (an id added again replaces its
        vector, as in hnswlib), so that filtered search need not copy every vector again."""
        cached = self._lookup
        if cached is None or cached[0] != self._rows_version - 1:
            return
        _, labels, vectors = cached[1]
        keep = ~np.isin(labels, ids)
        labels = np.concatenate([labels[keep], ids])
        vectors = np.concatenate([vectors[keep], x])
        self._lookup = (self._rows_version, (id_lookup(labels), labels, vectors))

    def _search_admitted(
        self, q: np.ndarray, k: int, params: dict[str, Any], allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        # Over-fetch, not hnswlib's `filter=` callable: that calls Python for every node the
        # search visits, under the GIL. Measured on GloVe 10K, one query per call: at 50%
        # admitted, filter= 0.26 ms (recall 0.995) vs over-fetch 0.16 ms (0.969); at 10%,
        # 0.97 ms vs 0.17 ms (1.000 vs 0.995); at 1%, 3.8 ms vs 1.0 ms. hnswlib raises its
        # beam to the k asked for, so the over-fetch widens the search too; the beam is also
        # widened by 1 / share, as FAISS HNSW's is: with the default ef=64 a 50% filter kept
        # only the recall of an unfiltered ef=64 search (0.88 on GloVe 400K).
        share = allowed.size / len(self)
        params = {**params, "ef": widened(params["ef"], share, MAX_FILTERED_EF, power=1.0)}
        try:
            return self.overfetch_filtered(q, k, params, allowed)
        except ValueError:
            # The graph cannot reach as many items as the over-fetch asked for: exact is the
            # answer that is sure to be complete.
            return self._exact_filtered(q, k, allowed)

    def _admitted_vectors(self, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lookup, labels, vectors = self._vector_copy()
        rows = rows_of(allowed, lookup)
        # The stored vectors as given (the "ip" space stores them as is: unit rows for cosine).
        return labels[rows], vectors[rows]


def _check_state(state: dict[str, Any], space: str, dim: int) -> None:
    """ValueError unless hnswlib's state dict is consistent enough for `__setstate__`, which
    copies the arrays by the sizes its scalars give and would read or write past a short one."""
    try:
        count, capacity = int(state["cur_element_count"]), int(state["max_elements"])
        per_element, per_links = int(state["size_data_per_element"]), int(state["size_links_per_element"])
        levels = np.asarray(state["element_levels"])
        problems = [
            f"space {state['space']!r} / dim {state['dim']} for an index of {space!r} / {dim}"
            if (state["space"], int(state["dim"])) != (space, dim) else "",
            f"{count} elements for a capacity of {capacity}" if not 0 <= count <= capacity else "",
            f"element_levels of {levels.size} entries, expected {capacity}" if levels.size != capacity else "",
        ]
        if not any(problems):
            expected = {
                "label_lookup_external": count,
                "label_lookup_internal": count,
                "data_level0": count * per_element,
                "link_lists": per_links * int(levels[levels > 0].astype(np.int64).sum()),
            }
            problems += [
                f"{name} of {np.asarray(state[name]).size} entries, expected {size}"
                for name, size in expected.items() if np.asarray(state[name]).size != size
            ]
            internal = np.asarray(state["label_lookup_internal"]).astype(np.int64)
            if internal.size and (internal.min() < 0 or internal.max() >= count):
                problems.append(f"internal ids outside [0, {count})")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"hnswlib state is incomplete ({exc!r})") from None
    problems = [p for p in problems if p]
    if problems:
        raise ValueError("hnswlib state is inconsistent: " + "; ".join(problems))


def _load_legacy(space: str, dim: int, blob: np.ndarray) -> Any:
    """An index from the earlier file format (the bytes of `save_index`), which hnswlib reads
    only from a path."""
    index = hnswlib.Index(space=space, dim=dim)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "hnswlib.bin")
        blob.tofile(path)
        index.load_index(path)
    return index

"""A collection: its spec (collection.json), its shards, input checks, and the fan-out of writes
and searches to the shards with a top-k merge.

Layout on disk: `<data_dir>/collections/<name>/collection.json` and `shard-<i>/` per shard
(see app/shard.py for what a shard directory holds).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..indexes import Index, create_index
from ..indexes.base import check_finite

from .auto import AUTO, EMPTY_KIND, pick_kind
from .errors import NotFound
from ..settings import Settings
from .shard import NewMain, Shard, best_k, shard_of, write_durably

# One query's answer as the engine gives it out: (id, score) best first.
Hits = list[tuple[str, float]]

SPEC_FILE = "collection.json"
SPEC_FORMAT = 1
MAX_ID_CHARS = 256
# Largest Euclidean norm of a stored or query vector. Scores are float32: with both vectors
# under this norm an inner product stays below 1e36 and a squared L2 distance below 4e36, far
# from float32's 3.4e38. Above it a score overflows to inf, which JSON cannot carry and which
# the indexes treat as "no result".
MAX_NORM = 1e18
# A rebuild compacts deleted items away once tombstones pass this share of main (and this
# count): past it, main spends memory and over-fetch work on items that no longer exist.
TOMBSTONE_SHARE = 0.25
MIN_TOMBSTONES = 1000


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection was created with; persisted as collection.json."""

    name: str
    dim: int
    metric: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    shards: int = 1
    created_at: str = ""

    def save(self, directory: Path) -> None:
        """Write collection.json atomically and durably."""
        text = json.dumps({"format": SPEC_FORMAT, **asdict(self)}, indent=2)
        write_durably(directory / SPEC_FILE, lambda tmp: tmp.write_text(text))

    @classmethod
    def load(cls, directory: Path) -> CollectionSpec:
        data = json.loads((directory / SPEC_FILE).read_text())
        if data.pop("format", None) != SPEC_FORMAT:
            raise ValueError(f"{directory / SPEC_FILE}: expected format {SPEC_FORMAT}")
        return cls(**data)


def check_vectors(x: Any, dim: int, collection: str, what: str = "vectors") -> np.ndarray:
    """`x` as a C-contiguous (n, dim) float32 array of finite values (n may be 0), or a
    ValueError that says what was expected and what came."""
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"{what}: expected numbers with shape (n, {dim}), got {type(x).__name__} ({exc})"
        ) from None
    if arr.ndim == 1 and arr.shape[0] in (0, dim):
        arr = arr.reshape(-1, dim)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected shape (n, {dim}), got shape {arr.shape}")
    if arr.shape[1] != dim:
        raise ValueError(
            f"dimension mismatch: collection {collection!r} has dim {dim}, got {arr.shape[1]}"
        )
    check_finite(arr, what)
    squared_norms = np.einsum("ij,ij->i", arr, arr, dtype=np.float64)
    if arr.size and squared_norms.max() > MAX_NORM**2:
        big = np.flatnonzero(squared_norms > MAX_NORM**2)
        raise ValueError(
            f"{what}: expected vectors of Euclidean norm at most {MAX_NORM:.0e} (so that scores "
            f"stay finite in float32), got {big.size} rows above it (first: row {int(big[0])}, "
            f"norm {float(np.sqrt(squared_norms[big[0]])):.3g})"
        )
    return np.ascontiguousarray(arr)


def _check_ids(ids: Sequence[Any]) -> None:
    for pos, item_id in enumerate(ids):
        if not isinstance(item_id, str) or not 1 <= len(item_id) <= MAX_ID_CHARS:
            got = f"{len(item_id)} characters" if isinstance(item_id, str) else type(item_id).__name__
            raise ValueError(
                f"id at position {pos}: expected a string of 1 to {MAX_ID_CHARS} characters, got {got}"
            )


def _payload_json(pos: int, payload: Any) -> str | None:
    if payload is None:
        return None
    if not isinstance(payload, dict):
        raise ValueError(
            f"payload at position {pos}: expected an object or null, got {type(payload).__name__}"
        )
    try:
        # orjson: ~10x faster than json.dumps, which was a quarter of an upsert's time. JSON has
        # no NaN: a non-finite float in a payload is stored as null (the HTTP parser rejects
        # them before they get here).
        return orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError as exc:
        raise ValueError(f"payload at position {pos}: not representable as JSON ({exc})") from None


class Collection:
    """A named set of items split over `shards` shards. Built by CollectionManager."""

    def __init__(
        self, path: Path, spec: CollectionSpec, settings: Settings, executor: Executor,
        on_needs_rebuild: Callable[[str], None],
    ) -> None:
        self.path, self.spec, self.settings = path, spec, settings
        self.name, self.dim, self.metric, self.shards = spec.name, spec.dim, spec.metric, spec.shards
        self._executor = executor
        self._on_needs_rebuild = on_needs_rebuild
        self._shards = [Shard(path / f"shard-{i}", spec.dim, spec.metric) for i in range(spec.shards)]
        # Validates search params while no main is built (the kind `auto` starts as).
        self._spec_index = create_index(EMPTY_KIND if spec.kind == AUTO else spec.kind, spec.dim, spec.metric)
        self._rebuild_lock = threading.Lock()  # held for a whole rebuild; close() waits on it
        self._stop = threading.Event()

    @property
    def needs_rebuild(self) -> bool:
        """Whether a shard lost its index file at start-up, fresh has outgrown its limit, or
        main is so full of tombstones that it wastes memory and over-fetch work (deleted items
        are only compacted away by a rebuild)."""
        if any(s.index_lost for s in self._shards):
            return True
        counts = [s.counts() for s in self._shards]
        fresh, dead = sum(c.fresh for c in counts), sum(c.tombstones for c in counts)
        main_size = sum(c.main + c.tombstones for c in counts)
        return fresh > self.settings.fresh_limit or dead > max(TOMBSTONE_SHARE * main_size, MIN_TOMBSTONES)

    # ---- info ----

    def _current_main(self) -> Index | None:
        return next((s.main for s in self._shards if s.main is not None), None)

    def _param_index(self) -> Index:
        """The index whose kind judges search params: the built main, else the configured kind."""
        main = self._current_main()
        return main if main is not None else self._spec_index

    @property
    def fresh_count(self) -> int:
        return sum(s.counts().fresh for s in self._shards)

    def _built(self, main: Index | None) -> dict[str, Any] | None:
        """Kind and params of the current main, and its recall@10 measured at build time
        (mean over shards weighted by their main size; None if no shard measured one)."""
        if main is None:
            return None
        mains = [(s.main, s.main_recall) for s in self._shards if s.main is not None]
        measured = [(recall, len(index)) for index, recall in mains if recall is not None]
        weight = sum(size for _, size in measured)
        recall = round(sum(r * size for r, size in measured) / weight, 4) if weight else None
        return {"kind": main.kind, "params": dict(main.build_params), "recall_at_10": recall}

    def info(self) -> dict[str, Any]:
        counts = [s.counts() for s in self._shards]
        main = self._current_main()
        built_at = [s.main_built_at for s in self._shards if s.main_built_at is not None]
        return {
            "name": self.name,
            "dim": self.dim,
            "metric": self.metric,
            "index": {
                "kind": self.spec.kind,
                "params": dict(self.spec.params),
                "search_params": dict(self._param_index().search_params),
                "built": self._built(main),
            },
            "shards": self.shards,
            "count": sum(c.live for c in counts),
            "main_count": sum(c.main for c in counts),
            "fresh_count": sum(c.fresh for c in counts),
            "tombstone_count": sum(c.tombstones for c in counts),
            "last_rebuild_at": max(built_at).isoformat() if built_at else None,
        }

    def _check_nonzero_for_cosine(self, vectors: np.ndarray, what: str) -> None:
        """An all-zero vector has no direction: cosine similarity is undefined for it."""
        if self.metric != "cosine":
            return
        zero = np.flatnonzero(~vectors.any(axis=1))
        if zero.size:
            raise ValueError(
                f"{what}: cosine collection {self.name!r} expects non-zero vectors, got {zero.size} "
                f"all-zero rows (cosine similarity is undefined for them; first: row {int(zero[0])})"
            )

    # ---- writes ----

    def upsert(self, ids: list[str], vectors: np.ndarray, payloads: list[dict | None]) -> int:
        """Write n items: ids (n,) str, vectors (n, dim) float32, payloads (n,) dict or None.
        Durable (committed and fsynced) when it returns; an existing id is replaced; within one
        call the last occurrence of a repeated id wins. Returns the number of distinct ids."""
        vectors = check_vectors(vectors, self.dim, self.name)
        if not len(ids) == vectors.shape[0] == len(payloads):
            raise ValueError(
                f"length mismatch: {len(ids)} ids, {vectors.shape[0]} vectors, {len(payloads)} payloads"
            )
        _check_ids(ids)
        self._check_nonzero_for_cosine(vectors, "vectors")
        texts = [_payload_json(pos, p) for pos, p in enumerate(payloads)]
        last = {item_id: pos for pos, item_id in enumerate(ids)}  # repeated id: last one wins
        for shard_no, positions in self._by_shard(list(last.keys()), list(last.values())).items():
            self._shards[shard_no].upsert(
                [ids[p] for p in positions], vectors[positions], [texts[p] for p in positions]
            )
        if self.needs_rebuild:
            self._on_needs_rebuild(self.name)
        return len(last)

    def delete(self, ids: list[str]) -> int:
        """Delete these ids; returns how many existed."""
        unique = list(dict.fromkeys(ids))
        groups = self._by_shard(unique, unique)
        deleted = sum(self._shards[s].delete(group) for s, group in groups.items())
        if deleted and self.needs_rebuild:
            self._on_needs_rebuild(self.name)
        return deleted

    def _by_shard(self, ids: list[str], values: list[Any]) -> dict[int, list[Any]]:
        groups: dict[int, list[Any]] = {}
        for item_id, value in zip(ids, values):
            groups.setdefault(shard_of(item_id, self.shards), []).append(value)
        return groups

    def get(self, item_id: str) -> tuple[np.ndarray, dict | None]:
        """The vector (dim,) float32 and payload of `item_id`; NotFound if absent."""
        found = self._shards[shard_of(item_id, self.shards)].get(item_id)
        if found is None:
            raise NotFound(f"item {item_id!r} not found in collection {self.name!r}")
        return found

    # ---- search ----

    def search(
        self, queries: np.ndarray, k: int, params: dict | None = None, exact: bool = False,
        exclude: list[str | None] | None = None,
    ) -> list[Hits]:
        """Up to k (id, score) per query of (nq, dim) float32 `queries`, best first, merged
        over main and fresh of every shard. `params` override the main index's search
        defaults for this call (unknown names raise ValueError); `exact` brute-forces the same
        live data; `exclude[i]` is left out of query i's results."""
        queries = check_vectors(queries, self.dim, self.name, "queries")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k: expected an integer >= 1, got {k!r}")
        nq = queries.shape[0]
        exclude = list(exclude) if exclude is not None else [None] * nq
        if len(exclude) != nq:
            raise ValueError(f"exclude: expected {nq} entries (one per query), got {len(exclude)}")
        self._check_nonzero_for_cosine(queries, "queries")
        params = dict(params or {})
        # Checked even for exact search (which needs none), so a misspelt knob is never ignored.
        self._param_index().resolve_search_params(params)
        if nq == 0:
            return []

        def one(shard: Shard) -> list[list[tuple[float, str]]]:
            if exact:
                return shard.search_exact(queries, int(k), exclude)
            return shard.search(queries, int(k), params, exclude)

        # Even one shard runs on the search threads: they are set up for it (search_thread_init).
        per_shard = list(self._executor.map(one, self._shards))
        results = []
        for qi in range(nq):
            merged = best_k([hit for hits in per_shard for hit in hits[qi]], int(k), self.metric)
            results.append([(item_id, score) for score, item_id in merged])
        return results

    # ---- rebuild ----

    def rebuild(self, report: Callable[[float], None]) -> None:
        """Build and swap in a new main index for every shard in turn (a job's work).
        For `auto`, the kind is picked from the live count now. Raises ValueError when the
        kind cannot be built (e.g. too few points to train): the shards keep serving, with
        the unindexed items in their exact fresh index."""
        with self._rebuild_lock:
            if self._stop.is_set():
                raise RuntimeError(f"collection {self.name!r} is closed")
            kind, params = self.spec.kind, self.spec.params
            if kind == AUTO:
                count = sum(s.counts().live for s in self._shards)
                kind, params = pick_kind(count, self.dim, self.settings.memory_budget_bytes)
            n_shards = len(self._shards)
            for i, shard in enumerate(self._shards):
                def shard_report(p: float, i: int = i) -> None:
                    report((i + p) / n_shards)

                try:
                    new: NewMain = shard.build_main(kind, params, shard_report, self._stop)
                except (ValueError, MemoryError) as exc:
                    live = shard.counts().live
                    raise ValueError(
                        f"rebuild of collection {self.name!r} shard {i} failed building {kind!r} "
                        f"on {live} items: {exc}; its items stay searchable (exactly) in fresh"
                    ) from exc
                shard.install(new)

    # ---- snapshots ----

    @contextmanager
    def writes_paused(self) -> Iterator[list[Path]]:
        """Every shard's write lock, taken in shard order and held together for the block: no
        write commits on any shard inside it, so read views opened there form one cut across
        the shards (engine/snapshots.py). Yields each shard's directory. Keep it short:
        writers wait; searches do not."""
        with ExitStack() as stack:
            for shard in self._shards:
                stack.enter_context(shard._write_lock)
            yield [shard.path for shard in self._shards]

    # ---- lifetime ----

    def stop(self) -> None:
        """Ask a running rebuild to stop (it notices between chunks) and refuse new ones."""
        self._stop.set()

    def close(self) -> None:
        """Stop a running rebuild, wait for it, close the stores."""
        self.stop()
        with self._rebuild_lock:
            for shard in self._shards:
                shard.close()

"""A collection: its spec (collection.json), its shards, and the fan-out of writes and searches
to the shards, with one merge of every shard's candidates.

A search is checked and normalised once here (inputs.prepare_queries), its parameters resolved
once against the collection's index kind, and the prepared array goes as it is to main and
fresh of every shard; their label arrays are merged once (merge.merge_hits), and only the final
k labels per query become ids.

Layout on disk: `<data_dir>/collections/<name>/collection.json` and `shard-<i>/` per shard
(see shard.py for what a shard directory holds).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..indexes import Index, create_index
from ..settings import Settings

from .auto import AUTO, EMPTY_KIND, pick_kind
from .build import check_stop
from .errors import NotFound
from .files import write_durably
from .filters import as_filter
from .inputs import (  # noqa: F401 - MAX_ID_CHARS: the HTTP layer's schemas import it from here
    MAX_ID_CHARS, check_exclude, check_ids, check_k, check_vectors, is_storable_id, payload_texts,
    prepare_queries,
)
from .memory import release_freed_memory
from .merge import Candidates, Hits, merge_hits, over_threshold
from .payload_limits import check_payload_limits
from .recall import RecallMonitor, RecallSampler, check_policy
from .routing import positions_by_shard, shard_of
from .shard import SearchParams, Shard, install_together, swap_together
from .stats import CollectionStats, RebuildRefused
from .threads import as_search_thread, available_cores

__all__ = ["Collection", "CollectionSpec", "Hits", "SPEC_FILE"]

log = logging.getLogger(__name__)

SPEC_FILE = "collection.json"
SPEC_FORMAT = 1
# A search whose part on each shard is expected to take less than this runs the shards in turn on
# the caller's thread (see Collection._on_every_shard); the weight of a new time in the average.
INLINE_BELOW_SECONDS = 0.0002
SHARD_TIME_WEIGHT = 0.1
# A search of one shard expected to take longer than this is split by rows over the cores (see
# Collection._row_pieces); each piece keeps at least SPLIT_MIN_ROWS queries.
SPLIT_ABOVE_SECONDS = 0.004
SPLIT_MIN_ROWS = 16
CORES = available_cores()
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
    # Online recall (recall.py, tuning.py): the figure to meet, the floor a rebuilt main must
    # reach to be swapped in (0: no gate), whether to re-tune after every rebuild, and the
    # search parameters in force (tuned or set; a request's own params override them).
    recall_target: float = 0.95
    recall_floor: float = 0.0
    auto_tune: bool = False
    search_params: dict[str, Any] = field(default_factory=dict)

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


def weighted_recall(measured: Sequence[tuple[float, int]]) -> float | None:
    """Mean of shards' (recall, main size) weighted by size, to 4 places; None without any."""
    weight = sum(size for _, size in measured)
    return round(sum(r * size for r, size in measured) / weight, 4) if weight else None


class Collection:
    """A named set of items split over `shards` shards. Built by CollectionManager."""

    def __init__(
        self, path: Path, spec: CollectionSpec, settings: Settings, executor: Executor,
        on_needs_rebuild: Callable[[str], None], sampler: RecallSampler | None = None,
        processes_lock: Callable[[], AbstractContextManager] | None = None,
        alive_pids: Callable[[], Iterable[int]] | None = None,
    ) -> None:
        """`processes_lock`: with several processes on the data directory (`shared` shards),
        a lock across them that a main install holds (coordination.Coordination.catalog_lock)."""
        self.path, self.spec, self.settings = path, spec, settings
        self.name, self.dim, self.metric, self.shards = spec.name, spec.dim, spec.metric, spec.shards
        self._executor = executor
        self._shard_seconds: dict[str, float] = {}  # moving average of one shard's search time per query
        self._last_resolved: tuple[Index, CollectionSpec, dict | None, SearchParams] | None = None
        self._on_needs_rebuild = on_needs_rebuild
        self._processes_lock = processes_lock
        self._alive_pids = alive_pids  # the processes serving the directory (several: cut the deaths log)
        shared = processes_lock is not None
        self._shards = [Shard(path / f"shard-{i}", spec.dim, spec.metric, shared) for i in range(spec.shards)]
        # Validates search params while no main is built (the kind `auto` starts as).
        self._spec_index = create_index(EMPTY_KIND if spec.kind == AUTO else spec.kind, spec.dim, spec.metric)
        self._rebuild_lock = threading.Lock()  # held for a whole rebuild; close() waits on it
        # Held while a rebuild moves files into the shard directories and installs, and while a
        # delete stops the collection and renames its directory: a rebuild either installs
        # before the delete or sees its stop, never writes into a removed (or re-created) path.
        self._files_lock = threading.Lock()
        self._stop = threading.Event()
        self._retired = False  # deleted: the directory was renamed away (retire)
        self.stats = CollectionStats()
        self.recall = RecallMonitor(self, sampler)
        self._spec_lock = threading.Lock()  # configure(): one spec change at a time
        self._one_kind_of_main()

    def _one_kind_of_main(self) -> None:
        """Start with one kind of main in every shard. Mains are installed in all shards at once,
        but a crash between moving the shards' files can leave two kinds on disk: the newest
        build's kind is kept, the other shards serve exactly from fresh until a rebuild."""
        built = [s for s in self._shards if s.main is not None]
        if len({s.main.kind for s in built}) < 2:
            return
        newest = max(built, key=lambda s: s.main_built_at or datetime.min.replace(tzinfo=timezone.utc))
        for shard in built:
            if shard.main.kind != newest.main.kind:
                shard.drop_main(f"its kind {shard.main.kind!r} is not the collection's {newest.main.kind!r}")

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
        """The index whose kind judges search params: the built main (every shard's is of one
        kind), else the configured kind."""
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
        recall = weighted_recall([(recall, len(index)) for index, recall in mains if recall is not None])
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
                "search_params": self.search_params_in_force(),
                "built": self._built(main),
            },
            "shards": self.shards,
            "count": sum(c.live for c in counts),
            "main_count": sum(c.main for c in counts),
            "fresh_count": sum(c.fresh for c in counts),
            "tombstone_count": sum(c.tombstones for c in counts),
            "last_rebuild_at": max(built_at).isoformat() if built_at else None,
            "recall_target": self.spec.recall_target,
            "recall_floor": self.spec.recall_floor,
            "auto_tune": self.spec.auto_tune,
        }

    def search_params_in_force(self) -> dict[str, Any]:
        """What a search without params uses: the kind's defaults, overridden by the collection's."""
        return {**self._param_index().search_params, **self.search_defaults()}

    def search_defaults(self) -> dict[str, Any]:
        """The collection's search parameters that the current main's kind knows (an `auto`
        collection may have moved to another kind since they were set)."""
        known = self._param_index().search_defaults
        return {name: value for name, value in self.spec.search_params.items() if name in known}

    def configure(self, **changes: Any) -> None:
        """Change recall_target, recall_floor, auto_tune and/or search_params (validated
        against the current index kind, then persisted in collection.json)."""
        allowed = {"recall_target", "recall_floor", "auto_tune", "search_params"}
        unknown = sorted(set(changes) - allowed)
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; expected some of {sorted(allowed)}")
        with self._spec_lock:
            spec = dataclasses.replace(self.spec, **changes)
            check_policy(spec.recall_target, spec.recall_floor, spec.auto_tune)
            if not isinstance(spec.search_params, dict):
                raise ValueError(f"search_params: expected an object, got {spec.search_params!r}")
            self._param_index().resolve_search_params(spec.search_params)
            spec = dataclasses.replace(spec, search_params=dict(spec.search_params))
            spec.save(self.path)
            self.spec = spec

    # ---- writes ----

    def upsert(self, ids: Sequence[str], vectors: Any, payloads: Sequence[dict | None]) -> int:
        """Write n items: ids (n,) str, vectors (n, dim) numbers, payloads (n,) dict or None;
        the one place they are checked (ValueError says what was expected, what came, where).
        Durable (committed and fsynced) when it returns; an existing id is replaced; within one
        call the last occurrence of a repeated id wins. Returns the number of distinct ids.
        StorageError when the store cannot make it durable (nothing of it is applied then)."""
        vectors = check_vectors(vectors, self.dim, self.metric, self.name)
        ids = check_ids(ids)
        texts = payload_texts(payloads)
        if not len(ids) == vectors.shape[0] == len(texts):
            raise ValueError(
                f"length mismatch: {len(ids)} ids, {vectors.shape[0]} vectors, {len(texts)} payloads"
            )
        check_payload_limits(texts, payloads, self.settings.max_payload_bytes, self.settings.max_payload_depth)
        last = {item_id: pos for pos, item_id in enumerate(ids)}  # repeated id: last one wins
        keep = list(last.values())
        for shard_no, positions in self._split(list(last), keep).items():
            if len(positions) == len(ids):  # one shard, no repeats: the arrays as they came
                self._shards[shard_no].upsert(ids, vectors, texts)
            else:
                self._shards[shard_no].upsert(
                    [ids[p] for p in positions], vectors[positions], [texts[p] for p in positions]
                )
        self.stats.wrote(upserted=len(last))
        if self.needs_rebuild:
            self._on_needs_rebuild(self.name)
        return len(last)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete these ids; returns how many existed (an id that cannot exist counts as absent)."""
        unique = [i for i in dict.fromkeys(ids) if is_storable_id(i)]
        groups = self._split(unique, unique)
        deleted = sum(self._shards[s].delete(group) for s, group in groups.items())
        self.stats.wrote(deleted=deleted)
        if deleted and self.needs_rebuild:
            self._on_needs_rebuild(self.name)
        return deleted

    def _split(self, ids: list[str], values: list[Any]) -> dict[int, list[Any]]:
        """shard -> the values of the ids it owns (values[i] belongs to ids[i])."""
        if self.shards == 1:
            return {0: values} if values else {}
        return {s: [values[p] for p in pos] for s, pos in positions_by_shard(ids, self.shards).items()}

    def get(self, item_id: str) -> tuple[np.ndarray, dict | None]:
        """The vector (dim,) float32 and payload of `item_id`; NotFound if absent."""
        found = self._shards[shard_of(item_id, self.shards)].get(item_id) if is_storable_id(item_id) else None
        if found is None:
            raise NotFound(f"item {item_id!r} not found in collection {self.name!r}")
        return found

    # ---- search ----

    def search(
        self, queries: Any, k: int, params: dict | None = None, exact: bool = False,
        exclude: Sequence[str | None] | None = None, filter: Any = None,
        score_threshold: float | None = None,
    ) -> list[Hits]:
        """Up to k (id, score) per query of (nq, dim) `queries`, best first, merged over main
        and fresh of every shard. `params` override the main index's search defaults for this
        call (unknown names raise ValueError); `exact` brute-forces the same live data;
        `exclude[i]` is left out of query i's results. `filter` (a filter object, or a tree
        from filters.parse_filter) admits the items searched, for every query;
        `score_threshold` drops results scored worse than it (below it, or above it for l2)."""
        queries = prepare_queries(queries, self.dim, self.metric, self.name)
        k = check_k(k)
        where = as_filter(filter)
        nq = queries.shape[0]
        exclude = check_exclude(exclude, nq)
        # Checked even for exact search (which needs none), so a misspelt knob is never ignored.
        resolved = self._resolve(params)
        if nq == 0:
            return []
        fetch = k + 1 if exclude is not None else k  # one more, so that k remain without it
        what = "exact" if exact else "index"

        def rows(lo: int, hi: int) -> list[Hits]:
            part = queries[lo:hi]

            def one(shard: Shard) -> list[Candidates]:
                if exact:
                    return shard.search_exact(part, fetch, where)
                return shard.search(part, fetch, resolved, where)

            parts = self._on_every_shard(one, hi - lo, what)
            if not parts:
                return [[] for _ in range(hi - lo)]
            hits = merge_hits(parts, k, self.metric, None if exclude is None else exclude[lo:hi])
            return hits if score_threshold is None else over_threshold(hits, score_threshold, self.metric)

        pieces = self._row_pieces(nq, what)
        if pieces == 1:
            return rows(0, nq)
        bounds = np.linspace(0, nq, pieces + 1).astype(int).tolist()
        others = [self._executor.submit(rows, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
        hits = rows(bounds[0], bounds[1])  # should it raise, the others just finish on their own
        for future in others:
            hits += future.result()
        return hits

    def _row_pieces(self, nq: int, what: str) -> int:
        """Into how many pieces of rows to split a search of `nq` queries, each searched on its
        own thread: one, unless the collection has one shard (several already run in parallel)
        and the search is expected to take longer than SPLIT_ABOVE_SECONDS.

        Why: a search thread runs its library single-threaded (threads.py), so a big batch over
        one shard used one core while the others idled; every kind answers each query on its
        own, so pieces searched apart give the same rows. Concurrent small searches never reach
        the threshold: they keep the micro-batcher's single call."""
        per_query = self._shard_seconds.get(what)
        if len(self._shards) != 1 or CORES == 1 or per_query is None or per_query * nq < SPLIT_ABOVE_SECONDS:
            return 1
        return max(1, min(CORES, nq // SPLIT_MIN_ROWS))

    def _resolve(self, params: dict | None) -> SearchParams:
        """The search parameters in force for a request's `params` (ValueError for a bad one).
        The last answer is kept for the same judge, spec and params: resolving took ~3 us, and
        concurrent searches mostly ask the same (a PATCH or a new main changes the key)."""
        judge, spec, last = self._param_index(), self.spec, self._last_resolved
        if last is not None and last[0] is judge and last[1] is spec and last[2] == params:
            return last[3]
        given = {**self.search_defaults(), **(params or {})}  # the request's own win
        resolved = SearchParams(judge.kind, judge.resolve_search_params(given), given)
        self._last_resolved = (judge, spec, dict(params) if params else params, resolved)
        return resolved

    def can_search_at_once(self, params: dict | None = None) -> bool:
        """Whether an unfiltered approximate search with `params` would start now without
        waiting for a writer, a catch-up, hnswlib's ef gate or search threads: one shard, which
        can (`Shard.can_search_at_once`). Bad params: True, the search raises at once."""
        shards = self._shards
        if len(shards) != 1:
            return False
        try:
            resolved = self._resolve(params)
        except ValueError:
            return True
        return shards[0].can_search_at_once(resolved)

    def records(
        self, ids: Sequence[str], payloads: bool, vectors: bool
    ) -> dict[str, tuple[np.ndarray | None, dict | None]]:
        """id -> (vector (dim,) float32 or None, payload or None) of those of `ids` that exist
        (an id deleted since its search found it is left out), one store read per shard."""
        found: dict[str, tuple[np.ndarray | None, dict | None]] = {}
        unique = list(dict.fromkeys(ids))
        for shard_no, group in self._split(unique, unique).items():
            found.update(self._shards[shard_no].store.records(group, payloads, vectors))
        return found

    def _on_every_shard(self, work: Callable[[Shard], list[Candidates]], nq: int, what: str) -> list[Candidates]:
        """`work` on every shard: the first shard on this thread (no hand-off for a single shard),
        the others on the search threads, in parallel; or, when a shard's part of this search is
        expected to take less than INLINE_BELOW_SECONDS, every shard in turn on this thread.

        Why in turn: handing a shard to a search thread and waking that thread cost about 0.1 ms
        on 2 busy cores, more than a small search saves by running in parallel (a 1-query hnswlib
        search over 4 shards of 25K: 0.58 ms in parallel, 0.48 ms in turn). The expectation is
        each shard's measured time per query of the same `what` (exact or index), a moving
        average (`_shard_seconds`), so that big searches keep the parallel fan-out."""
        as_search_thread()
        shards = self._shards
        if len(shards) == 1:
            start = time.perf_counter()
            parts = work(shards[0])
            self._observe_shard_time(what, (time.perf_counter() - start) / max(nq, 1))
            return parts
        per_query = self._shard_seconds.get(what)
        if per_query is not None and per_query * nq < INLINE_BELOW_SECONDS:
            start = time.perf_counter()
            parts = []
            for shard in shards:
                parts += work(shard)
            self._observe_shard_time(what, (time.perf_counter() - start) / (len(shards) * nq))
            return parts
        others = [self._executor.submit(work, shard) for shard in shards[1:]]
        start = time.perf_counter()
        parts = work(shards[0])  # should it raise, the others just finish on their own
        self._observe_shard_time(what, (time.perf_counter() - start) / nq)
        for future in others:
            parts += future.result()
        return parts

    def _observe_shard_time(self, what: str, seconds_per_query: float) -> None:
        # A plain dict write: a lost update between threads only delays the average a little.
        before = self._shard_seconds.get(what)
        self._shard_seconds[what] = (
            seconds_per_query if before is None else before + SHARD_TIME_WEIGHT * (seconds_per_query - before)
        )

    # ---- rebuild ----

    def rebuild(self, report: Callable[[float], None]) -> float | None:
        """A job's work: `_rebuild`, counted in `stats`, then a re-tune when `auto_tune` is on.
        Returns the new mains' recall@10 as measured before the swap (see `_rebuild`)."""
        with self.stats.rebuilding():
            try:
                recall = self._rebuild(report)
            finally:
                # The snapshot's copies, the old main and the build's scratch are freed now,
                # but glibc's arenas keep their pages: without this, RSS after a build of GloVe
                # 50K stayed at 2.65x index + vectors (1.0x after a restart).
                release_freed_memory()
        self.prune_deaths()
        if self.spec.auto_tune:
            from .tuning import tune  # tuning searches through this class

            try:
                tune(self, self.spec.recall_target, self.recall.summary()["k"] or 10)
            except Exception as exc:  # noqa: BLE001 - the rebuild stands; the knob stays as it was
                log.warning("auto-tune of collection %r after its rebuild: %s", self.name, exc)
        return recall

    def prune_deaths(self) -> int:
        """Cut every shard's deaths log below what every serving process has applied
        (Shard.prune_deaths); returns the rows removed. A failure (a full disk, say) is only
        logged: the log is kept whole until the next try."""
        removed = 0
        for shard in self._shards:
            try:
                removed += shard.prune_deaths(self._alive_pids)
            except NotFound:
                raise
            except Exception as exc:  # noqa: BLE001 - an optimisation of disk space, never a failure
                log.warning("collection %r: cutting the deaths log of %s failed: %s", self.name, shard.path, exc)
        return removed

    def _rebuild(self, report: Callable[[float], None]) -> float | None:
        """Build a new main index for every shard, then install them all at once: if any
        shard's build fails, none is installed, so the collection never serves
        two kinds of main. For `auto`, the kind is picked from the live count now. Raises
        ValueError when the kind cannot be built (e.g. too few points to train): the shards
        keep serving as they were. Cancelled once the collection is deleted or closing.
        The rebuild gate: the new mains' recall@10 (mean over shards weighted by size) is
        measured on the collection's recent real queries when enough were sampled, else on
        their own items, with the search params in force; under `recall_floor` nothing is
        installed and RebuildRefused says why. Returns that recall (None: nothing built)."""
        with self._rebuild_lock:
            if self._stop.is_set():
                raise RuntimeError(f"collection {self.name!r} is closed")
            kind, params = self.spec.kind, self.spec.params
            if kind == AUTO:
                count = sum(s.counts().live for s in self._shards)
                kind, params = pick_kind(count, self.dim, self.settings.memory_budget_bytes)
            staging = self.path.parent / f".build-{self.name}-{uuid.uuid4().hex[:8]}"
            n_shards = len(self._shards)
            queries = self.recall.recent_queries()
            try:
                news = []
                for i, shard in enumerate(self._shards):
                    def shard_report(p: float, i: int = i) -> None:
                        report((i + p) / n_shards)

                    try:
                        news.append(shard.build_main(
                            kind, params, shard_report, self._stop, staging / f"shard-{i}",
                            queries, self.spec.search_params,
                        ))
                    except (ValueError, MemoryError) as exc:
                        live = shard.counts().live
                        raise ValueError(
                            f"rebuild of collection {self.name!r} shard {i} failed building {kind!r} "
                            f"on {live} items: {exc}; no shard changed (items not in a main index "
                            f"stay searchable, exactly, in fresh)"
                        ) from exc
                recall = self._gate(kind, news, queries)
                with self._files_lock, (self._processes_lock or nullcontext)():
                    check_stop(self._stop)
                    self._check_still_on_disk()
                    install_together(self._shards, news)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return recall

    def _gate(self, kind: str, news: Sequence[Any], queries: np.ndarray | None) -> float | None:
        """The new mains' recall@10 (weighted by size); RebuildRefused under `recall_floor`."""
        recall = weighted_recall(
            [(new.recall, len(new.index)) for new in news if new.index is not None and new.recall is not None]
        )
        floor = self.spec.recall_floor
        if recall is not None and floor > 0 and recall < floor:
            source = f"{len(queries)} recent queries" if queries is not None else "their own items"
            raise RebuildRefused(
                f"rebuild of collection {self.name!r} refused: the new {kind!r} main indexes measured "
                f"recall@10 {recall:.4f} on {source}, under the recall_floor {floor}; the old main "
                "keeps serving (rebuild with larger build parameters, or lower the floor)",
                recall, floor,
            )
        return recall

    # ---- several processes on one data directory ----

    def _check_still_on_disk(self) -> None:
        """Cancelled when another process deleted this collection (and perhaps created one of
        the same name) since this one was opened: its files are not ours to install into."""
        if self._processes_lock is None:
            return
        try:
            same = CollectionSpec.load(self.path).created_at == self.spec.created_at
        except (OSError, ValueError):
            same = False
        if not same:
            self._stop.set()
            check_stop(self._stop)

    @property
    def main_outdated(self) -> bool:
        """Whether another process installed newer mains than those serving here (they are
        being loaded: a rebuild triggered by what this process sees would be one too many)."""
        return self._processes_lock is not None and any(s.newer_main_installed for s in self._shards)

    def follow_store(self) -> bool:
        """Catch every shard up with the store, and load and swap in the mains another process
        installed once every shard has its new one (so no search sees two kinds of main).
        Runs off the request path (the manager's follower thread); True if mains changed."""
        for shard in self._shards:
            shard.catch_up()
            shard.publish_floor()
        if not all(s.newer_main_installed for s in self._shards):
            return False
        news = [shard.load_installed_main() for shard in self._shards]
        if any(new is None for new in news):
            return False  # replaced by an even newer install meanwhile: the next look loads it
        kinds = {new.kind for new in news if new.index is not None}
        if len(kinds) > 1:
            return False  # caught between two installs: the next look sees one
        with self._files_lock:
            if any(new.max_label <= s.main_max for s, new in zip(self._shards, news)):
                return False
            swap_together(self._shards, news)
        log.info("collection %r: loaded the main indexes another worker built (%s)", self.name, kinds or "empty")
        return True

    # ---- snapshots ----

    @contextmanager
    def writes_paused(self) -> Iterator[list[Path]]:
        """Every shard's write lock, taken in shard order and held together for the block: no
        write commits on any shard inside it, so read views opened there form one cut across
        the shards (engine/snapshots.py). Yields each shard's directory. Keep it short:
        writers wait; searches do not. NotFound once the collection is deleted (a delete
        waits for the block to end before it renames the directory)."""
        with ExitStack() as stack:
            for shard in self._shards:
                stack.enter_context(shard._write_lock)
            if self._retired:
                raise NotFound(f"collection {self.name!r} was deleted")
            yield [shard.path for shard in self._shards]

    # ---- lifetime ----

    def stop(self) -> None:
        """Ask a running rebuild to stop (at its next safe point) and refuse new ones."""
        self._stop.set()

    def retire(self, to: Path) -> None:
        """For a delete, without waiting for a running rebuild: stop it, close the stores
        (requests still running get NotFound) and rename the directory to `to`. The rebuild,
        when it notices the stop, installs nothing and leaves no file behind."""
        self.stop()
        with self._files_lock:
            for shard in self._shards:
                shard.close()  # waits for a write or a writes_paused block in progress
            self._retired = True
            os.replace(self.path, to)
            self.path = to

    def close(self) -> None:
        """Stop a running rebuild, wait for it, close the stores."""
        self.stop()
        with self._rebuild_lock:
            for shard in self._shards:
                shard.close()

"""One shard: its store of record, its `main` index (built from a snapshot), its `fresh` exact
index (everything written since), and its live labels with their ids (`labels.LabelMap`).

Invariants, kept under `_state`'s write lock:
- `fresh` holds exactly the live labels above `main_max`.
- `main` (may be None) was built from the items live at a snapshot whose largest committed
  label was `main_max`; a label at or below `main_max` that is no longer live (deleted, or its
  id re-upserted under a new label) is a tombstone, filtered out of main's answers.
So live = (live labels <= main_max, all inside main) + fresh, and
tombstones = len(main) - (live - len(fresh)).

A write reaches memory only after its transaction committed: a failed commit leaves main,
fresh and the labels as they were, so nothing that is not durable is ever served.

Several processes on one store (`shared=True`, `annserve serve --workers N`): the store gives
the labels inside each write transaction, and memory follows the store's history (store.py:
labels above `_applied.items` are new, deaths above `_applied.deaths` dead). A process applies
its own commit straight from memory when nothing else committed in between (always, with one
process); otherwise, and before every search (`catch_up`, about 2 us when nothing changed:
`Watch`), it reads what it has not applied from the store. A new main installed by another
process is announced in the store (`installed_main`) and loaded off the search path
(`Collection.load_installed_mains`); until then the old main and fresh serve everything, and
items that arrive at or below main's max label go to the label map only (main holds them).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..indexes import Index, create_index, load_index
from ..indexes.base import worst_score

from .build import (
    MAIN_FILE, SNAPSHOT_CHUNK, NewMain, build_index, build_recall, check_stop, notes_path,
    read_build_notes, read_snapshot, stage,
)
from .coordination import DeathFloors
from .errors import NotFound
from .filters import Node, admitted, referenced_ids
from .group_commit import GroupCommit
from .labels import LabelMap, LabelView
from .merge import Candidates, brute_force
from .payload_index import PayloadIndex, ShardLookup
from .rwlock import ReadWriteLock
from .store import Commit, ShardStore, Version

log = logging.getLogger(__name__)

RETRY_GROWTH = 4  # how much more main is asked for when tombstones ate a query's answers
FOLLOWERS_DIR = "followers"  # coordination.DeathFloors' files, in the shard's directory
PRUNE_MIN_DEATHS = 1000  # fewer rows of the deaths log are not worth a write (an fsync) to cut


@dataclass(frozen=True)
class Counts:
    live: int  # items that exist
    main: int  # live items served by main
    fresh: int  # items in fresh (all live)
    tombstones: int  # dead labels still inside main, filtered out of its answers


@dataclass(frozen=True)
class SearchParams:
    """A search's parameters: as given, and resolved against an index of `kind` (the
    collection's). A main of another kind (a rebuild swapped it in after the resolution)
    resolves `given` itself."""

    kind: str
    values: dict[str, Any]
    given: dict[str, Any]

    def for_index(self, index: Index) -> dict[str, Any]:
        return self.values if index.kind == self.kind else index.resolve_search_params(self.given)


@dataclass(frozen=True)
class _Write:
    """One caller's upsert, waiting for a group commit."""

    ids: Sequence[str]
    vectors: np.ndarray
    payloads: Sequence[str | None]


class SnapshotNames:
    """label -> id of an exact search's candidates, read from the snapshot it searched."""

    def __init__(self, names: dict[int, str]) -> None:
        self._names = names

    def ids(self, labels: np.ndarray) -> list[str]:
        names = self._names
        return [names[label] for label in labels.tolist()]


def overfetch(k: int, main_len: int, tombstones: int) -> int:
    """How many results to ask main for so that about k survive the tombstone filter: k scaled
    by the share of main that is still live, with a margin; never more than k + tombstones
    (enough for an exact index) nor more than main holds."""
    if tombstones <= 0:
        return min(k, main_len)
    live_share = max(1.0 - tombstones / main_len, 0.05)
    want = math.ceil(k / live_share * 1.25) + 8
    return min(main_len, k + tombstones, want)


class Shard:
    """One shard of a collection, in directory `path` (store.sqlite, main-<label>.idx)."""

    def __init__(self, path: Path, dim: int, metric: str, shared: bool = False) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.dim, self.metric = dim, metric
        self.store = ShardStore(self.path / "store.sqlite", dim)
        # _write_lock orders writers (store commit + memory update as one step, in label order);
        # _state guards what searches read (main, fresh, the labels) and is held only briefly.
        self._write_lock = threading.Lock()
        self._commits: GroupCommit[_Write] = GroupCommit(self._write_lock, self._write_group)
        self._state = ReadWriteLock()
        self.main: Index | None = None
        self.main_max = 0
        self.main_built_at: datetime | None = None
        self.main_recall: float | None = None
        self.fresh = create_index("flat", dim, metric)
        self.labels = LabelMap()
        self.payloads = PayloadIndex()  # filters: which labels hold which payload values
        self.index_lost = False  # an index file existed but could not be loaded (or was dropped)
        # How far memory follows the store's history; advanced under _catchup_lock, which
        # orders every change of memory coming from a commit (this process's or another's).
        self._applied = Version()
        self._catchup_lock = threading.Lock()
        self._behind = False  # a commit seen by can_search_at_once, not yet caught up
        self.installed_main = 0  # the main the store says is installed (may be newer than ours)
        self._unreadable_main = 0  # the newest installed main that could not be loaded here
        # Several processes: how far each has applied the deaths log, published before the load.
        self._floors = DeathFloors(self.path / FOLLOWERS_DIR) if shared else None
        if self._floors is not None:
            try:
                self._floors.publish(0)
            except OSError:  # a full disk, say: no file at all (silent: nobody cuts) is as safe
                self._floors.withdraw()
        self._pruned = 0  # the deaths log holds no row at or below this seq
        self._load()
        self._watch = self.store.watch() if shared else None

    # ---- start-up ----

    def _load(self) -> None:
        """Restore main from the newest index file, the labels and fresh from the store."""
        files = sorted(p for p in self.path.iterdir() if MAIN_FILE.match(p.name))
        if files:
            newest = files[-1]
            try:
                index = load_index(newest)
                if index.dim != self.dim or index.metric != self.metric:
                    raise ValueError(
                        f"index has dim {index.dim}, metric {index.metric!r}; "
                        f"the collection has dim {self.dim}, metric {self.metric!r}"
                    )
                self.main = index
                self.main_max = int(MAIN_FILE.match(newest.name).group(1))
                self.main_built_at, self.main_recall = read_build_notes(newest)
            except Exception as exc:  # a derived file: whatever is wrong with it, rebuild it
                log.warning("ignoring unreadable index file %s (%s); serving from the store", newest, exc)
                self.index_lost = True
                self._unreadable_main = int(MAIN_FILE.match(newest.name).group(1))
        with self.store.snapshot() as snap:
            self._applied = snap.version
            self.installed_main = snap.installed_main()
            for labels, ids, _ in snap.chunks(rows=SNAPSHOT_CHUNK, vectors=False):
                self.labels.append(labels, ids)
            for labels, texts in snap.payload_chunks(rows=SNAPSHOT_CHUNK):
                self.payloads.add(self.payloads.entries(labels, [orjson.loads(t) for t in texts]))
            self.payloads.seal(self.labels.view().is_live, force=True)
            self._load_fresh(snap)

    def _load_fresh(self, snap: Any) -> None:
        for labels, _, vectors in snap.chunks(after=self.main_max, rows=SNAPSHOT_CHUNK, ids=False):
            self.fresh.add(vectors, labels)

    def drop_main(self, why: str) -> None:
        """Serve without main (every item exactly, from fresh) until the next rebuild: for a
        start-up that found this shard's main of another kind than the collection's others."""
        log.warning("shard %s: not serving its main index (%s); a rebuild replaces it", self.path, why)
        with self._state.write():
            self.main, self.main_max, self.main_built_at, self.main_recall = None, 0, None, None
            self.fresh = create_index("flat", self.dim, self.metric)
            with self.store.snapshot() as snap:
                self._load_fresh(snap)
            self.index_lost = True

    # ---- counts ----

    def counts(self) -> Counts:
        self.catch_up()
        with self._state.read():
            live, fresh = self.labels.live, len(self.fresh)
            main_size = len(self.main) if self.main is not None else 0
        return Counts(live, live - fresh, fresh, main_size - (live - fresh))

    # ---- writes ----

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, payloads: Sequence[str | None]) -> None:
        """Durably write n items (distinct ids, (n, dim) float32 and JSON payload texts, all
        checked by the caller), then make them searchable in fresh. Writes that queue up while
        one commits go out together (group_commit). StorageError when the store cannot commit."""
        self._commits.submit(_Write(ids, vectors, payloads))

    def _write_group(self, group: list[_Write]) -> None:
        """Commit the writes of `group` as one transaction, then apply them to memory (the
        caller holds the write lock)."""
        if len(group) == 1:
            ids, vectors, payloads = group[0].ids, group[0].vectors, group[0].payloads
        else:
            last: dict[str, tuple[int, int]] = {}  # an id in two writes: the later one wins
            for w, write in enumerate(group):
                for pos, item_id in enumerate(write.ids):
                    last.pop(item_id, None)
                    last[item_id] = (w, pos)
            ids = list(last)
            vectors = np.stack([group[w].vectors[pos] for w, pos in last.values()])
            payloads = [group[w].payloads[pos] for w, pos in last.values()]
        # Labels above main's too: a main restored or built elsewhere never shares one.
        commit = self.store.write_items(ids, vectors, payloads, above=self.main_max)  # raises: nothing applied
        self._apply(commit, ids, vectors, payloads)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete these (distinct) ids; returns how many existed."""
        with self._write_lock:
            commit = self.store.delete_items(ids)
            if len(commit.dead):
                self._apply(commit, (), None)
        return len(commit.dead)

    def _apply(
        self, commit: Commit, ids: Sequence[str], vectors: np.ndarray | None,
        payloads: Sequence[str | None] = (),
    ) -> None:
        """Bring this process's own `commit` into memory: from the caller's arrays when memory
        stood exactly where the commit started, from the store when another process committed
        in between (or nothing, when a catch-up already brought it). The payload index changes
        under `_catchup_lock` only, whichever process wrote."""
        with self._catchup_lock:
            if self._applied.items >= commit.after.items and self._applied.deaths >= commit.after.deaths:
                return
            if self._applied != commit.before:
                self._catch_up_locked()
                return
            entries = None
            if len(payloads) and len(commit.labels):  # built before the state lock: searches wait only for the appends
                entries = self.payloads.entries(
                    commit.labels, [orjson.loads(t) if t is not None else None for t in payloads]
                )
            with self._state.write():
                self._forget(commit.dead)
                if vectors is not None and len(commit.labels):
                    self.fresh.add(vectors, commit.labels)
                    self.labels.append(commit.labels, ids)
                if entries is not None:
                    self.payloads.add(entries)
                self._applied = commit.after
            # Sorting a grown column again builds new arrays: readers keep the old ones meanwhile.
            self.payloads.seal(self.labels.view().is_live)

    # ---- following the store (several processes) ----

    def catch_up(self) -> None:
        """Apply what other processes committed to the store since memory last followed it;
        a no-op for a shard that is not shared. Before a search: once it returns, every write
        acknowledged before the call is in memory."""
        if self._watch is None:
            return
        with self._catchup_lock:
            self.store._check_open()  # a closed (deleted) store: NotFound, as for a read
            if self._behind or self._watch.changed():
                self._catch_up_locked()
                self._behind = False

    def can_search_at_once(self, params: SearchParams | None = None) -> bool:
        """Whether a search (with `params`) could start now without waiting: no writer at the
        state lock, main would not make it wait (hnswlib's ef gate), and, for a shard shared
        between processes, nothing to catch up on and nobody catching up. (A commit landing
        right after the answer still gets caught up by that search.)"""
        if self._state.contended():
            return False
        main = self.main
        if params is not None and main is not None and main.search_would_wait(params.for_index(main)):
            return False
        if self._watch is None:
            return True
        if not self._catchup_lock.acquire(blocking=False):
            return False
        try:
            self.store._check_open()  # deleted meanwhile: the search that waits says NotFound
            if not self._behind and self._watch.changed():
                self._behind = True  # seen here: the next catch_up applies it
            return not self._behind
        except NotFound:
            return False
        finally:
            self._catchup_lock.release()

    def _catch_up_locked(self) -> None:
        """Read everything past `_applied` from one store snapshot and apply it, chunk by chunk
        (searches wait only for each chunk's short apply). Caller holds _catchup_lock."""
        with self.store.snapshot() as snap:
            version = snap.version
            self.installed_main = snap.installed_main()
            if version == self._applied:
                return
            for labels, ids, vectors in snap.chunks(after=self._applied.items, rows=SNAPSHOT_CHUNK):
                with self._state.write():
                    # Checked under the state lock: a main swapped in meanwhile holds the
                    # labels at or below its max label, so they must not go into fresh.
                    into_fresh = labels > self.main_max
                    if into_fresh.all():
                        self.fresh.add(vectors, labels)
                    elif into_fresh.any():
                        self.fresh.add(vectors[into_fresh], labels[into_fresh])
                    self.labels.append(labels, ids)
                for payload_labels, texts in snap.payload_chunks(
                    rows=SNAPSHOT_CHUNK, after=int(labels[0]) - 1, upto=int(labels[-1])
                ):
                    self.payloads.add(self.payloads.entries(payload_labels, [orjson.loads(t) for t in texts]))
            dead, _ = snap.deaths(after=self._applied.deaths)
            with self._state.write():
                self._forget(dead)
                self._applied = version
            self.payloads.seal(self.labels.view().is_live)

    def publish_floor(self) -> None:
        """Several processes: tell the others how far this one has applied the deaths log."""
        if self._floors is not None:
            try:
                self._floors.publish(self._applied.deaths)
            except OSError:
                pass  # the floor published before is lower: still safe, only less is cut

    def prune_deaths(self, alive_pids: Callable[[], Iterable[int]] | None = None) -> int:
        """Cut the deaths log (store.py) below what every process serving this shard has
        applied (this one alone when not shared; `alive_pids` lists them when shared), once at
        least PRUNE_MIN_DEATHS rows can go. Returns the rows removed. Off the request path.

        Why: the log is read only to follow another process's deletes and replacements; kept
        whole it grew by ~30 bytes per delete or replace forever, and memory after a restart
        does not need it (the snapshot a process loads holds only the live items)."""
        own = self._applied.deaths
        if self._floors is None:
            upto = own
        elif alive_pids is None:
            return 0
        else:
            upto = self._floors.lowest(alive_pids, own)
        if upto is None or upto - self._pruned < PRUNE_MIN_DEATHS:
            return 0
        with self._write_lock:
            if self.store.deaths_up_to(upto) < PRUNE_MIN_DEATHS:
                return 0  # not worth a write transaction (an fsync) yet
            removed = self.store.prune_deaths(upto)
            self._pruned = upto
        return removed

    def _forget(self, dead: np.ndarray) -> None:
        """Drop (m,) labels that are no longer live (caller holds the state write lock): out of
        fresh if they are there, else they become tombstones in main."""
        in_fresh = dead[dead > self.main_max]
        if len(in_fresh):
            self.fresh.remove(in_fresh)
        self.labels.kill(dead)

    def get(self, item_id: str) -> tuple[np.ndarray, dict[str, Any] | None] | None:
        return self.store.get(item_id)

    # ---- search ----

    def search(
        self, queries: np.ndarray, fetch: int, params: SearchParams, where: Node | None = None
    ) -> list[Candidates]:
        """Up to `fetch` live candidates per prepared (nq, dim) query from main (tombstones
        masked out) and from fresh, side by side in one label array (one label space: merging
        them needs no bookkeeping) with this shard's label -> id map; [] when it is empty.
        With a filter `where`, only the live labels it admits are searched: they go to main
        and to fresh as the library's `allowed` (so no tombstone can come back)."""
        self.catch_up()  # several processes: every write acknowledged anywhere is in memory now
        id_labels = self._id_labels(where)
        with self._state.read():
            # main, fresh and the labels are read as one consistent set: a swap cannot fall between.
            main, view = self.main, self.labels.view()
            fresh_len = len(self.fresh)
            if where is None:
                main_allowed = None
                main_live = self.labels.live - fresh_len
                fresh = self.fresh.search_prepared(queries, fetch, {}) if fresh_len else None
            else:
                allowed = admitted(where, ShardLookup(self.payloads.view(), view, id_labels))
                split = int(allowed.searchsorted(self.main_max, "right"))
                main_allowed, fresh_allowed = allowed[:split], allowed[split:]
                main_live = len(main_allowed)
                fresh = None
                if len(fresh_allowed):
                    fresh = self.fresh.search_prepared(queries, fetch, {}, allowed=fresh_allowed)
        if main is None or main_live <= 0:
            return [Candidates(*fresh, view)] if fresh is not None else []
        # Searches never hold a lock while main runs: main is immutable once installed.
        if main_allowed is None:
            labels, scores = self._main_search(main, queries, fetch, params.for_index(main), main_live, view)
        else:  # only live labels are admitted: no tombstone to mask
            labels, scores = main.search_prepared(queries, fetch, params.for_index(main), allowed=main_allowed)
        if fresh is not None:
            labels, scores = np.hstack([labels, fresh[0]]), np.hstack([scores, fresh[1]])
        return [Candidates(labels, scores, view)]

    def _main_search(
        self, main: Index, queries: np.ndarray, fetch: int, values: dict[str, Any], main_live: int,
        view: LabelView,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Main's answers with tombstones masked out (label -1, the worst score; the order of
        the rest is main's, best first); rows that lost too many to tombstones are asked again
        for more, until they have `fetch` or main has no more."""
        size = len(main)
        tombstones = size - main_live
        n = overfetch(fetch, size, tombstones)
        labels, scores = main.search_prepared(queries, n, values)
        if tombstones <= 0:
            return labels, scores
        worst = worst_score(self.metric)

        def mask_dead(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
            """Mask dead labels in place; how many live ones each row kept."""
            dead = ~view.is_live(labels)
            labels[dead], scores[dead] = -1, worst
            return labels.shape[1] - np.count_nonzero(dead, axis=1)

        found = mask_dead(labels, scores)
        short = np.flatnonzero((found < fetch) & (found < main_live))
        while short.size and n < size:
            n = min(size, n * RETRY_GROWTH)
            more_labels, more_scores = main.search_prepared(queries[short], n, values)
            found = mask_dead(more_labels, more_scores)
            wider = np.full((len(labels), n), -1, dtype=np.int64)  # rows that were not short stay as they were
            wider_scores = np.full((len(labels), n), worst, dtype=np.float32)
            wider[:, : labels.shape[1]], wider_scores[:, : labels.shape[1]] = labels, scores
            wider[short], wider_scores[short] = more_labels, more_scores
            labels, scores = wider, wider_scores
            short = short[(found < fetch) & (found < main_live)]
        return labels, scores

    def search_exact(self, queries: np.ndarray, fetch: int, where: Node | None = None) -> list[Candidates]:
        """Brute force over the live items in the store (one consistent snapshot), read in
        chunks so that memory stays bounded whatever the shard's size; with a filter `where`,
        over the items it admits (as the payload index answers it)."""
        allowed = None
        if where is not None:
            id_labels = self._id_labels(where)
            with self._state.read():
                allowed = admitted(where, ShardLookup(self.payloads.view(), self.labels.view(), id_labels))
        with self.store.snapshot() as snap:
            chunks = ((labels, vectors) for labels, _, vectors in snap.chunks(rows=SNAPSHOT_CHUNK, ids=False))
            if allowed is not None:
                chunks = _admitted_rows(chunks, allowed)
            labels, scores = brute_force(queries, chunks, fetch, self.dim, self.metric)
            names = snap.ids_of(labels.ravel())  # the same view's ids: deleted since or not
        return [Candidates(labels, scores, SnapshotNames(names))]

    def _id_labels(self, where: Node | None) -> dict[str, int]:
        """The current labels of the ids a filter names, read from the store before a search
        takes its view. (An id re-upserted between the two reads has a label the view does not
        know yet: for that moment `{"id": X}` misses X and `$nin` lets X's previous version
        through; a race with a write of X itself, as any read racing a write.)"""
        ids = referenced_ids(where)
        return self.store.labels_of(ids) if ids else {}

    # ---- rebuild ----

    def build_main(
        self, kind: str, params: dict[str, Any], report: Callable[[float], None], stop: threading.Event,
        staging: Path, queries: np.ndarray | None = None, search_params: dict[str, Any] | None = None,
    ) -> NewMain:
        """Build a new main of `kind` from a snapshot of the live items and stage it in the
        `staging` directory (see build.py); `install_together` puts it in place.
        Progress goes to `report` (0..1): snapshot 0-0.15, train -0.3, add -0.9, save -1.
        Raises `Cancelled` when `stop` is set, ValueError when the kind cannot be built."""
        try:
            with ExitStack() as stack:
                with self._write_lock:
                    # Under the write lock every committed write is also in memory, so fresh holds
                    # every live label up to the snapshot's max label (install relies on it).
                    snap = stack.enter_context(self.store.snapshot())
                max_label = snap.max_label
                labels, vectors = read_snapshot(snap, self.dim, report, stop)
        except NotFound:
            check_stop(stop)  # the store closed because the collection was deleted: a stop
            raise
        if not len(labels):
            return NewMain(None, max_label, None)
        index = build_index(kind, self.dim, self.metric, params, labels, vectors, max_label, report, stop)
        # Measured on `queries` (recent real ones) when given, else own items (build_recall).
        recall = build_recall(index, vectors, labels, max_label, queries, search_params)
        check_stop(stop)
        new = stage(index, max_label, recall, len(labels), staging)
        report(1.0)
        return new

    def _swap(self, new: NewMain) -> None:
        """Put a built main in place and drain from fresh exactly the labels it covers (<= its
        max label); writes that came after its snapshot stay in fresh. Caller holds `_state`
        for writing."""
        covered = self.labels.view().live_labels(after=self.main_max, upto=new.max_label)
        if len(covered):
            self.fresh.remove(covered)
        if len(covered) and not len(self.fresh):
            # FAISS's remove_ids shrinks its vectors' size, never their capacity (nor the id
            # map's hash table): a drained fresh would keep every ingested vector's bytes.
            self.fresh = create_index("flat", self.dim, self.metric)
        self.main, self.main_max = new.index, new.max_label
        self.main_built_at = new.built_at or datetime.now(timezone.utc)
        self.main_recall = new.recall
        self.index_lost = False

    def _remove_stale_files(self, current: Path | None) -> None:
        """Older index files are stale once a new main is in; the newest (or, for an empty
        snapshot, none) is the truth."""
        keep = {current, notes_path(current)} if current is not None else set()
        for old in self.path.iterdir():
            if old.name.startswith("main-") and old not in keep:
                old.unlink(missing_ok=True)

    @property
    def newer_main_installed(self) -> bool:
        """Whether the store names an installed main newer than this one (and readable)."""
        return self.installed_main > max(self.main_max, self._unreadable_main)

    def load_installed_main(self) -> NewMain | None:
        """The main index file the store says is installed, loaded (off the search path), when
        it is newer than the one serving; None when there is none newer (or it cannot be read
        yet: an even newer one replaced it, and the next look finds that one)."""
        wanted = self.installed_main
        if not self.newer_main_installed:
            return None
        files = sorted(p for p in self.path.iterdir() if MAIN_FILE.match(p.name))
        newest = files[-1] if files else None
        if newest is None or int(MAIN_FILE.match(newest.name).group(1)) < wanted:
            return NewMain(None, wanted, None)  # the rebuild found no live item: no file
        try:
            index = load_index(newest)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - a derived file: the next rebuild replaces it
            log.warning("shard %s: cannot load the installed index file %s (%s)", self.path, newest, exc)
            self._unreadable_main = wanted
            return None
        built_at, recall = read_build_notes(newest)
        return NewMain(index, int(MAIN_FILE.match(newest.name).group(1)), None, recall, built_at)

    def close(self) -> None:
        """Close the store: reads and writes from now on raise NotFound (the collection is
        gone); reads in progress are interrupted and waited for, as is a write in progress (or
        a `Collection.writes_paused` block: the write lock)."""
        with self._write_lock:
            self.store.close()
        with self._catchup_lock:
            if self._watch is not None:
                self._watch.close()


def swap_together(shards: Sequence[Shard], news: Sequence[NewMain | None]) -> None:
    """Swap in new mains (None: keep that shard's) under every shard's state lock at once."""
    with ExitStack() as stack:
        for shard in shards:  # always in shard order, and a search holds one at a time: no deadlock
            stack.enter_context(shard._state.write())
        for shard, new in zip(shards, news):
            if new is not None:
                shard._swap(new)


def _admitted_rows(
    chunks: Iterator[tuple[np.ndarray, np.ndarray]], allowed: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The (labels, vectors) chunks cut down to the rows whose label is in sorted `allowed`;
    chunks left empty are skipped."""
    for labels, vectors in chunks:
        pos = allowed.searchsorted(labels).clip(max=max(len(allowed) - 1, 0))
        keep = allowed[pos] == labels if len(allowed) else np.zeros(len(labels), dtype=bool)
        if keep.any():
            yield labels[keep], vectors[keep]


def install_together(shards: Sequence[Shard], news: Sequence[NewMain]) -> None:
    """Install a new main in every shard at once: the staged files move into the shard
    directories, then every shard swaps under its state lock, all held together, so that no
    search ever sees two kinds of main in one collection. The caller holds the collection's
    file lock (a delete renames the directory under it)."""
    finals = [new.move_into(shard.path) for shard, new in zip(shards, news)]
    swap_together(shards, news)
    for shard, new in zip(shards, news):
        # Announced in the store: processes serving the same files load the new main from it.
        try:
            shard.store.set_installed_main(new.max_label)
            shard.installed_main = max(shard.installed_main, new.max_label)
        except Exception as exc:  # noqa: BLE001 - served here already; the others load it at start
            log.warning("shard %s: could not record its new main in the store: %s", shard.path, exc)
    for shard, final in zip(shards, finals):
        shard._remove_stale_files(final)

"""The collection engine's front door: creates, opens, lists and deletes collections under
`<data_dir>/collections/`, runs their rebuilds as jobs, and triggers rebuilds on its own when a
fresh index outgrows `fresh_limit` or deletes leave main full of tombstones, every
`rebuild_interval_seconds`, and after a start-up that found an unreadable index file.

With `settings.workers` above 1 the data directory is served by that many processes, each with
its own manager (`annserve serve --workers N`): the shards follow their stores (shard.py), the
list of collections follows the catalog counter (coordination.py: a create or delete in any
process is seen by the next request in every other), jobs live on a shared board
(job_board.py), a follower thread loads the mains other processes installed, and the rebuild
timer runs only in the leading process."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..indexes import METRICS, create_index

from .auto import AUTO
from .collection import SPEC_FILE, Collection, CollectionSpec
from .coordination import Coordination
from .worker_stats import WorkerStats
from .errors import Conflict, NotFound, storage_error
from .files import fsync_dir
from .job_board import JobBoard
from .jobs import Job, JobRegistry
from .recall import RecallSampler, check_policy
from ..settings import Settings
from .threads import search_thread_init

log = logging.getLogger(__name__)

# Collection names become directory names and URL path segments; schemas.py documents this rule.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
NAME = re.compile(NAME_PATTERN)
AUTO_RETRY_SECONDS = 60.0  # after a failed automatic rebuild, wait this long before the next
SEARCH_THREADS = 8  # shard fan-out; the index libraries release the GIL while they search
# Several processes: how often each cuts its shards' deaths logs below what all have applied
# (a rebuild cuts them too; one process alone cuts them only after a rebuild).
PRUNE_SECONDS = 30.0
FOLLOW_SECONDS = 0.2  # several processes: how often a manager loads mains installed elsewhere


class CollectionManager:
    """Every collection of one data directory. `open()` before use, `close()` at the end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = Path(settings.data_dir) / "collections"
        # Several processes on this data directory: what they share (see the module docstring).
        self.coordination = Coordination(Path(settings.data_dir)) if (settings.workers or 1) > 1 else None
        self.jobs = JobRegistry(JobBoard(self.coordination) if self.coordination else None)
        self.recall = RecallSampler(
            settings.recall_sample_rate, settings.recall_queue_size, settings.recall_window,
            settings.recall_recent_queries,
        )
        # Several processes: one coherent set of counters and one recall window (worker_stats.py).
        self.worker_stats = (
            WorkerStats(self.coordination, self.list, settings.recall_window, settings.recall_sample_rate)
            if self.coordination is not None else None
        )
        self.is_ready = False
        self._collections: dict[str, Collection] = {}
        self._lock = threading.RLock()  # create/delete/open; lookups read the dict without it
        self._executor = ThreadPoolExecutor(
            SEARCH_THREADS, thread_name_prefix="annserve-search", initializer=search_thread_init
        )
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._follower: threading.Thread | None = None
        self._auto_failed_at: dict[str, float] = {}
        self._closed = False

    # ---- lifetime ----

    def open(self) -> None:
        """Load every collection under data_dir and start the rebuild triggers."""
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            # Another live process may be using its staging directories: only one alone clears.
            alone = self.coordination.join() if self.coordination else True
            for path in sorted(self.root.iterdir()):
                if path.name.startswith("."):
                    # A create or delete that a crash interrupted: never a live collection.
                    if alone:
                        shutil.rmtree(path, ignore_errors=True)
                    continue
                if not (path / SPEC_FILE).is_file():
                    continue
                try:
                    collection = self._open_collection(path, CollectionSpec.load(path))
                except Exception:
                    log.exception("cannot open collection in %s; it is not served", path)
                    continue
                self._collections[collection.name] = collection
                if collection.needs_rebuild:
                    self._auto_rebuild(collection.name)
        if self.settings.rebuild_interval_seconds > 0:
            self._ticker = threading.Thread(target=self._tick, name="annserve-rebuild-timer", daemon=True)
            self._ticker.start()
        if self.coordination is not None:
            self._follower = threading.Thread(target=self._follow, name="annserve-follower", daemon=True)
            self._follower.start()
        if self.worker_stats is not None:
            self.worker_stats.start()
        self.is_ready = True

    def close(self) -> None:
        """Stop the triggers, let a running rebuild stop, close every store. Idempotent."""
        if self.worker_stats is not None and not self._closed:
            self.worker_stats.close()  # a last publication, while the collections still count
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.is_ready = False
            self._stop.set()
            collections = list(self._collections.values())
            self._collections.clear()
        for collection in collections:
            collection.stop()
        self.recall.close()
        self.jobs.close()
        for collection in collections:
            collection.close()
        for thread in (self._ticker, self._follower):
            if thread is not None:
                thread.join()
        self._executor.shutdown(wait=True)
        if self.coordination is not None:
            self.coordination.close()

    # ---- collections ----

    def create(
        self, name: str, dim: int, metric: str, index_kind: str, index_params: dict, shards: int = 1,
        recall_target: float = 0.95, recall_floor: float = 0.0, auto_tune: bool = False,
        search_params: dict | None = None,
    ) -> Collection:
        """A new, empty collection. ValueError for a bad name, dim, metric, kind, build params,
        shard count, recall target or floor, or search params; Conflict if `name` exists."""
        index_params = dict(index_params or {})
        search_params = dict(search_params or {})
        self._check_spec(name, dim, metric, index_kind, index_params, shards)
        check_policy(recall_target, recall_floor, auto_tune)
        if search_params:
            if index_kind == AUTO:
                raise ValueError(
                    f"index kind 'auto' picks its own kind; got search parameter(s) {sorted(search_params)} "
                    "(set them with PATCH once it has built a main, or tune it)"
                )
            create_index(index_kind, dim, metric, **index_params).resolve_search_params(search_params)
        spec = CollectionSpec(
            name, int(dim), metric, index_kind, index_params, int(shards),
            datetime.now(timezone.utc).isoformat(),
            float(recall_target), float(recall_floor), auto_tune, search_params,
        )
        with self._lock, self._processes_lock():
            self._check_open()
            final = self.root / name
            if name in self._collections or final.exists():
                raise Conflict(f"collection {name!r} already exists")
            # Built under a hidden name and renamed: a crash never leaves half a collection.
            staging = self.root / f".new-{name}-{uuid.uuid4().hex[:8]}"
            try:
                staging.mkdir(parents=True)
                spec.save(staging)
                os.replace(staging, final)
                collection = self._open_collection(final, spec)
                # The new files' directory entries must survive power loss like the writes in them.
                for directory in [*final.iterdir(), final, self.root]:
                    if directory.is_dir():
                        fsync_dir(directory)
            except Exception as exc:
                shutil.rmtree(staging, ignore_errors=True)
                if final.exists() and name not in self._collections:
                    shutil.rmtree(final, ignore_errors=True)
                fault = storage_error(exc, f"creating collection {name!r} in {self.root}")
                if fault is not None and not isinstance(exc, ValueError):
                    raise fault from exc
                raise
            self._collections[name] = collection
            if self.coordination is not None:
                self.coordination.catalog_changed()
        return collection

    def _check_spec(
        self, name: Any, dim: Any, metric: Any, kind: Any, params: dict, shards: Any
    ) -> None:
        if not isinstance(name, str) or not NAME.match(name):
            raise ValueError(
                f"name: expected 1 to 64 characters from A-Z a-z 0-9 _ . - starting with a letter "
                f"or digit, got {name!r}"
            )
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= self.settings.max_dim:
            raise ValueError(f"dim: expected an integer from 1 to {self.settings.max_dim}, got {dim!r}")
        if metric not in METRICS:
            raise ValueError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ValueError(f"shards: expected an integer >= 1, got {shards!r}")
        if kind == AUTO:
            if params:
                raise ValueError(
                    f"index kind 'auto' picks its own parameters; got build parameter(s) {sorted(params)}"
                )
            return
        # The kind itself checks the kind name, the kind/metric pair and every build parameter.
        create_index(kind, dim, metric, **params)

    def get(self, name: str) -> Collection:
        if self.coordination is not None:
            self._follow_catalog()
        collection = self._collections.get(name)
        if collection is None:
            raise NotFound(f"collection {name!r} not found")
        return collection

    def list(self) -> list[Collection]:
        if self.coordination is not None:
            self._follow_catalog()
        return sorted(self._collections.values(), key=lambda c: c.name)

    @staticmethod
    def _still_on_disk(collection: Collection) -> bool:
        try:
            return CollectionSpec.load(collection.path).created_at == collection.spec.created_at
        except (OSError, ValueError):
            return False

    def _processes_lock(self) -> Any:
        """The lock across the processes serving the data directory (none with one process)."""
        return self.coordination.catalog_lock() if self.coordination is not None else contextlib.nullcontext()

    def _follow_catalog(self) -> None:
        """Several processes: when a create or delete committed anywhere since the last look,
        open what appeared on disk and drop what went (or was deleted and created again). The
        check and the rescan sit under one lock, so no request passes a rescan in progress."""
        coordination = self.coordination
        if not self.is_ready:
            return  # open() is still scanning the directory; it sees what is there
        with coordination.catalog_sync:
            if not coordination.catalog_stale():
                return
            with self._lock:
                if self._closed:
                    return
                on_disk: dict[str, CollectionSpec] = {}
                for path in self.root.iterdir():
                    if path.name.startswith(".") or not (path / SPEC_FILE).is_file():
                        continue
                    try:
                        on_disk[path.name] = CollectionSpec.load(path)
                    except (OSError, ValueError):
                        continue  # being renamed away right now
                gone = []
                for name, collection in list(self._collections.items()):
                    spec = on_disk.get(name)
                    if spec is None or spec.created_at != collection.spec.created_at:
                        del self._collections[name]
                        gone.append(collection)
                for name, spec in on_disk.items():
                    if name not in self._collections:
                        try:
                            self._collections[name] = self._open_collection(self.root / name, spec)
                        except Exception:  # noqa: BLE001 - deleted again meanwhile, or unreadable
                            log.exception("cannot open collection %r created by another worker", name)
        for collection in gone:
            collection.stop()
            # Closing waits for a running rebuild of it to notice the stop: not on a request.
            threading.Thread(target=collection.close, name="annserve-close", daemon=True).start()

    def _follow(self) -> None:
        """Several processes: load the mains that another process installed, off the request
        path, and keep memory close to the stores even for collections nobody searches here."""
        pruned_at = time.monotonic()
        while not self._stop.wait(FOLLOW_SECONDS):
            try:
                self._follow_catalog()
            except Exception:  # noqa: BLE001 - never let the follower die; the next round retries
                log.exception("following the catalog failed")
            prune = time.monotonic() - pruned_at >= PRUNE_SECONDS
            for collection in self.list():
                try:
                    collection.follow_store()
                    if prune:
                        collection.prune_deaths()
                except NotFound:
                    pass  # deleted meanwhile
                except Exception:  # noqa: BLE001
                    log.exception("collection %r: following its stores failed", collection.name)
            if prune:
                pruned_at = time.monotonic()

    def delete(self, name: str) -> None:
        """Delete the collection and its files; NotFound if absent. Answers without waiting for
        a running rebuild of it (which stops at its next safe point and installs nothing): the
        manager lock is held only to stop the collection, close its stores and rename its
        directory away, so creates and deletes of other collections never wait for a rebuild."""
        if self.coordination is not None:
            self._follow_catalog()  # before the locks: it takes them in its own order
        with self._lock, self._processes_lock():
            collection = self._collections.get(name)
            if collection is not None and self.coordination is not None and not self._still_on_disk(collection):
                del self._collections[name]  # another process deleted it a moment ago
                collection.close()
                collection = None
            if collection is None:
                raise NotFound(f"collection {name!r} not found")
            del self._collections[name]
            self._auto_failed_at.pop(name, None)
            # Renamed first, so a crash during the removal cannot resurrect half a collection.
            doomed = self.root / f".deleted-{name}-{uuid.uuid4().hex[:8]}"
            collection.retire(doomed)
            fsync_dir(self.root)  # an acknowledged delete must not come back after power loss
            if self.coordination is not None:
                self.coordination.catalog_changed()
        shutil.rmtree(doomed, ignore_errors=True)

    def _open_collection(self, path: Path, spec: CollectionSpec) -> Collection:
        processes_lock = self._processes_lock if self.coordination is not None else None
        return Collection(
            path, spec, self.settings, self._executor, self._auto_rebuild, self.recall, processes_lock,
            self.coordination.alive_pids if self.coordination is not None else None,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise Conflict("the collection manager is closed")

    # ---- rebuilds ----

    def start_rebuild(self, name: str) -> Job:
        """Queue a rebuild of `name`; NotFound if absent, Conflict while one is queued/running."""
        collection = self.get(name)
        return self.jobs.submit(name, collection.rebuild)

    def _auto_rebuild(self, name: str) -> None:
        """Start a rebuild unless one is active or an automatic one failed recently (a kind
        that cannot be built from this data should not be retried on every write)."""
        if self.jobs.active(name) is not None or self._closed:
            return
        collection = self._collections.get(name)
        if collection is not None and collection.main_outdated:
            return  # another process rebuilt it; its mains are being loaded here
        failed_at = self._auto_failed_at.get(name)
        if failed_at is not None and time.monotonic() - failed_at < AUTO_RETRY_SECONDS:
            return
        try:
            collection = self.get(name)
            self.jobs.submit(name, lambda report: self._run_auto(collection, report))
        except (Conflict, NotFound):
            pass  # another trigger won the race, or the collection went away meanwhile

    def _run_auto(self, collection: Collection, report: Any) -> float | None:
        if self.coordination is not None:
            collection.follow_store()  # another process may have rebuilt it since the trigger
            if not collection.needs_rebuild:
                return None
        try:
            recall = collection.rebuild(report)
        except Exception:
            self._auto_failed_at[collection.name] = time.monotonic()
            raise
        self._auto_failed_at.pop(collection.name, None)
        return recall

    def _tick(self) -> None:
        while not self._stop.wait(self.settings.rebuild_interval_seconds):
            if self.coordination is not None and not self.coordination.try_lead():
                continue  # one timer for all the processes: the leader's
            for collection in self.list():
                if collection.fresh_count > 0:
                    self._auto_rebuild(collection.name)

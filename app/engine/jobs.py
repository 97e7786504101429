"""Background jobs (index rebuilds): a registry that runs them one at a time on a worker thread
and remembers their state for `GET /jobs/{id}`.

One worker, not one per collection: a rebuild already uses every core (FAISS and hnswlib add in
parallel), so running two at once would only make both slower and double the peak memory.

With several processes on one data directory (`annserve serve --workers N`), a `JobBoard`
(job_board.py) holds every job's state for all of them: a job still runs where it was
accepted, but another process's job answers `get`, and counts for `active` and the one-per-
collection rule.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .errors import Conflict, NotFound

if TYPE_CHECKING:
    from .job_board import JobBoard

log = logging.getLogger(__name__)

# Rebuilds run at a lower CPU priority (nice +10) so that searches win the cores while one runs:
# p99 during a rebuild went from 6.5-9.3x to 2.8-3.5x the idle p99 on 2 cores (bench-http A/B).
# Linux nice values are per thread and inherited, so hnswlib's and FAISS's build threads follow.
JOB_NICENESS = 10
KEEP_FINISHED = 1000  # finished jobs remembered for GET /jobs/{id}; older ones are forgotten
ACTIVE = ("queued", "running")
PROGRESS_EVERY_SECONDS = 0.5  # how often a shared job's progress is written to its board

# A job's work: called with a progress callback taking 0..1; raises to fail the job. A rebuild
# returns the recall it measured (or raises with a `recall` attribute when it refused its swap).
Work = Callable[[Callable[[float], None]], Any]


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


class Job:
    """One background job. Fields are written by the worker and read by anyone."""

    def __init__(self, collection: str) -> None:
        self.id = uuid.uuid4().hex
        self.collection = collection
        self.state = "queued"
        self.progress = 0.0
        self.error: str | None = None
        self.recall: float | None = None  # a rebuild's recall@10 of the new main, as measured
        self.created_at = datetime.now(timezone.utc)
        self.finished_at: datetime | None = None
        self.board: JobBoard | None = None  # where its state is shared (several processes)
        self._saved_at = 0.0

    def report(self, progress: float) -> None:
        self.progress = min(max(float(progress), 0.0), 1.0)
        if self.board is not None and time.monotonic() - self._saved_at >= PROGRESS_EVERY_SECONDS:
            self.save()

    def save(self) -> None:
        """Share the state (no-op without a board); a failure to write it never fails the job."""
        if self.board is None:
            return
        self._saved_at = time.monotonic()
        try:
            self.board.save(self)
        except Exception as exc:  # noqa: BLE001 - the job's work matters more than its record
            log.warning("could not record the state of job %s: %s", self.id, exc)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "progress": round(self.progress, 4),
            "error": self.error,
            "recall": self.recall,
            "collection": self.collection,
            "created_at": _iso(self.created_at),
            "finished_at": _iso(self.finished_at),
        }


class JobRegistry:
    """Queue of jobs run in order by one worker thread; at most one active job per collection."""

    def __init__(self, board: JobBoard | None = None) -> None:
        self._board = board
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._active: dict[str, Job] = {}  # collection -> its queued or running job
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[Job, Work] | None] = queue.SimpleQueue()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="annserve-jobs", daemon=True)
        self._worker.start()

    def submit(self, collection: str, work: Work) -> Job:
        """Queue `work` for `collection`; Conflict while that collection has an active job."""
        with self._lock:
            if self._closed:
                raise Conflict("the service is shutting down; no new jobs are accepted")
            current = self._active.get(collection)
            if current is not None:
                raise Conflict(
                    f"collection {collection!r} already has a rebuild {current.state} "
                    f"(job {current.id}, progress {current.progress:.0%})"
                )
            job = Job(collection)
            if self._board is not None:
                self._board.claim(job)  # Conflict while another process runs one for it
                job.board = self._board
            self._jobs[job.id] = job
            self._active[collection] = job
            while len(self._jobs) > KEEP_FINISHED + len(self._active):
                oldest = next(j for j in self._jobs.values() if j.state not in ACTIVE)
                del self._jobs[oldest.id]
        self._queue.put((job, work))
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None and self._board is not None:
            job = self._board.get(job_id)  # another process's
        if job is None:
            raise NotFound(f"job {job_id!r} not found")
        return job

    def active(self, collection: str) -> Job | None:
        """The queued or running job of `collection`, if any."""
        with self._lock:
            mine = self._active.get(collection)
        if mine is None and self._board is not None:
            return self._board.active(collection)
        return mine

    def _run(self) -> None:
        _lower_priority_of_this_thread(JOB_NICENESS)
        while True:
            item = self._queue.get()
            if item is None:
                return
            job, work = item
            if self._closed:
                self._finish(job, "failed", "the service shut down before the job ran")
                continue
            job.state = "running"
            job.save()
            try:
                outcome = work(job.report)
            except Exception as exc:  # a failed job is reported, never fatal to the service
                log.warning("job %s (%s) failed: %s", job.id, job.collection, exc)
                job.recall = getattr(exc, "recall", None)
                self._finish(job, "failed", str(exc) or type(exc).__name__)
            else:
                job.recall = outcome if isinstance(outcome, float) else None
                job.report(1.0)
                self._finish(job, "succeeded", None)

    def _finish(self, job: Job, state: str, error: str | None) -> None:
        with self._lock:
            job.error, job.finished_at, job.state = error, datetime.now(timezone.utc), state
            job.save()
            if self._active.get(job.collection) is job:
                del self._active[job.collection]

    def close(self, timeout: float | None = None) -> None:
        """Accept no more jobs, fail the queued ones, and wait for the running one (its work
        is expected to notice its own stop signal). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._worker.join(timeout)
        if self._board is not None:
            self._board.close()


def _lower_priority_of_this_thread(niceness: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
    except (AttributeError, OSError) as exc:  # not Linux, or not permitted: run at normal priority
        log.info("could not lower the job thread's priority: %s", exc)

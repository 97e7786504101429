"""The jobs of every process serving one data directory, in one SQLite file
(`<data_dir>/workers/jobs.sqlite`): so that `GET /jobs/{id}` answers the same on every worker,
and a collection has one active rebuild whichever worker was asked for it.

A job runs in the process that accepted it; that process writes its state here when it changes
(progress at most every `PROGRESS_EVERY_SECONDS`). A queued or running job whose process died
(its `.alive` lock is free: coordination.py) is failed by whoever looks at it next, so that a
kill -9 never leaves a collection unable to rebuild.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import Conflict

if TYPE_CHECKING:
    from .coordination import Coordination
    from .jobs import Job

PROGRESS_EVERY_SECONDS = 0.5
KEEP_FINISHED = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    collection  TEXT NOT NULL,
    state       TEXT NOT NULL,
    progress    REAL NOT NULL,
    error       TEXT,
    recall      REAL,
    created_at  TEXT NOT NULL,
    finished_at TEXT,
    owner       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_active ON jobs (collection, state);
"""
COLUMNS = "id, collection, state, progress, error, recall, created_at, finished_at, owner"


class JobBoard:
    """Job states shared through `<coordination.dir>/jobs.sqlite`."""

    def __init__(self, coordination: Coordination) -> None:
        self._coordination = coordination
        self._conn = sqlite3.connect(
            coordination.dir / "jobs.sqlite", isolation_level=None, timeout=60.0, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        # A job's record is not data: losing its last update to a power cut costs nothing.
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    def claim(self, job: Job) -> None:
        """Record a new queued `job` owned by this process; Conflict while another job of its
        collection is queued or running in a live process (a dead one's is failed here)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for row in self._conn.execute(
                    f"SELECT {COLUMNS} FROM jobs WHERE collection = ? AND state IN ('queued', 'running')",
                    (job.collection,),
                ).fetchall():
                    other = self._job(row)
                    if self._coordination.is_alive(row[8]):
                        raise Conflict(
                            f"collection {job.collection!r} already has a rebuild {other.state} "
                            f"(job {other.id}, progress {other.progress:.0%})"
                        )
                    self._fail_orphan(row)
                self._conn.execute(
                    f"INSERT INTO jobs ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job.id, job.collection, job.state, job.progress, job.error, job.recall,
                     job.created_at.isoformat(), None, self._coordination.pid),
                )
                self._conn.execute(
                    "DELETE FROM jobs WHERE state NOT IN ('queued', 'running') AND id NOT IN "
                    "(SELECT id FROM jobs WHERE finished_at IS NOT NULL ORDER BY finished_at DESC LIMIT ?)",
                    (KEEP_FINISHED,),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def save(self, job: Job) -> None:
        """Write `job`'s state, progress and outcome."""
        with self._lock:
            self._conn.execute(
                "UPDATE jobs SET state = ?, progress = ?, error = ?, recall = ?, finished_at = ? WHERE id = ?",
                (job.state, job.progress, job.error, job.recall,
                 job.finished_at.isoformat() if job.finished_at else None, job.id),
            )

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            if row[2] in ("queued", "running") and not self._coordination.is_alive(row[8]):
                self._fail_orphan(row)
                row = self._conn.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row)

    def active(self, collection: str) -> Job | None:
        """The queued or running job of `collection` in a live process, if any."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {COLUMNS} FROM jobs WHERE collection = ? AND state IN ('queued', 'running')",
                (collection,),
            ).fetchall()
            for row in rows:
                if self._coordination.is_alive(row[8]):
                    return self._job(row)
                self._fail_orphan(row)
        return None

    def _fail_orphan(self, row: tuple) -> None:
        self._conn.execute(
            "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE id = ?",
            (f"the worker process (pid {row[8]}) running this job died before it finished",
             datetime.now().astimezone().isoformat(), row[0]),
        )

    @staticmethod
    def _job(row: tuple) -> Job:
        from .jobs import Job

        job = Job(row[1])
        job.id, job.state, job.progress, job.error, job.recall = row[0], row[2], row[3], row[4], row[5]
        job.created_at = datetime.fromisoformat(row[6])
        job.finished_at = datetime.fromisoformat(row[7]) if row[7] else None
        return job

    def close(self) -> None:
        with self._lock:
            self._conn.close()

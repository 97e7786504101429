"""What the processes serving one data directory share besides the stores (`annserve serve
--workers N`): who is alive, who leads, the catalog's change counter, and a lock across them.

All of it lives in `<data_dir>/workers/`:
- `<pid>.alive`: each process holds an exclusive `flock` on its own file for its whole life. The
  kernel drops the lock when the process dies, kill -9 included, so "can I lock it?" answers
  "is it dead?" without trusting pids (a job whose owner died is failed, not waited for).
- `serving.lock`: every process holds it shared; one that can take it exclusively at start is
  alone, and only then clears what a crash left behind (staging directories of creates,
  deletes and builds that another, live process might still be using).
- `leader.lock`: the periodic rebuild timer runs only in the process that holds it.
- `catalog.lock`: held around a collection's create, delete and main install, so that two
  processes never create one name twice nor install into a directory deleted meanwhile.
- `catalog.sqlite`: a counter bumped after every create and delete; `PRAGMA data_version` on it
  tells every other process, in about 2 us per request, that its list of collections is stale.

And in each shard's directory, `followers/<pid>`: how far each process has followed that shard's
deaths log (`DeathFloors`), so that the log is cut below the slowest and does not grow forever.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .store import Watch

DIRECTORY = "workers"


def _open_lock_file(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


class Coordination:
    """This process's membership among the processes serving `data_dir`. `close()` at the end."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = Path(data_dir) / DIRECTORY
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        self._alive = _open_lock_file(self.dir / f"{self.pid}.alive")
        fcntl.flock(self._alive, fcntl.LOCK_EX)
        self._serving = _open_lock_file(self.dir / "serving.lock")
        self._leader: int | None = None
        self._catalog = sqlite3.connect(self.dir / "catalog.sqlite", isolation_level=None, timeout=60.0,
                                        check_same_thread=False)
        self._catalog.execute("PRAGMA journal_mode=WAL")
        self._catalog.execute("CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT)")
        self._catalog_lock = threading.RLock()  # catalog_changed runs inside catalog_lock
        self._catalog_watch = Watch(sqlite3.connect(self.dir / "catalog.sqlite", check_same_thread=False))
        self._catalog_watch.changed()  # what this process loads at start is its starting point
        self.catalog_sync = threading.Lock()  # held over a check and the rescan it triggers

    # ---- membership ----

    def join(self) -> bool:
        """Count this process among the serving ones; True when it is the only one (so what
        a crash left behind may be cleared)."""
        try:
            fcntl.flock(self._serving, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        fcntl.flock(self._serving, fcntl.LOCK_SH)  # from exclusive (if alone) to shared
        if alone:
            # Only the files of dead processes: a worker started at the same moment may have
            # locked its own file before this one took serving.lock (it joins right after).
            for stale in self.dir.glob("*.alive"):
                if stale.stem.isdigit():
                    self.is_alive(int(stale.stem))  # unlinks a dead process's file
        return alone

    def is_alive(self, pid: int) -> bool:
        """Whether process `pid` (one of the serving processes) is still running."""
        if pid == self.pid:
            return True
        path = self.dir / f"{pid}.alive"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock we took: the file is a dead process's
        path.unlink(missing_ok=True)
        return False

    def alive_pids(self) -> list[int]:
        """The serving processes alive now, this one included."""
        pids = [int(p.stem) for p in self.dir.glob("*.alive") if p.stem.isdigit()]
        return sorted(pid for pid in pids if self.is_alive(pid))

    def try_lead(self) -> bool:
        """Whether this process leads (holds `leader.lock`); takes it when it is free."""
        if self._leader is not None:
            return True
        fd = _open_lock_file(self.dir / "leader.lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._leader = fd
        return True

    @contextmanager
    def catalog_lock(self) -> Iterator[None]:
        """Exclusive across the processes (and, through a thread lock, across this one's threads)."""
        with self._catalog_lock:
            fd = _open_lock_file(self.dir / "catalog.lock")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # released with the descriptor
                yield
            finally:
                os.close(fd)

    # ---- the catalog's change counter ----

    def catalog_changed(self) -> None:
        """Tell the other processes that a collection was created or deleted."""
        with self._catalog_lock:
            self._catalog.execute("INSERT INTO changes DEFAULT VALUES")
            self._catalog.execute("DELETE FROM changes WHERE seq < (SELECT max(seq) FROM changes)")

    def catalog_stale(self) -> bool:
        """Whether a create or delete committed since the last call (caller holds catalog_sync)."""
        return self._catalog_watch.changed()

    def close(self) -> None:
        for fd in (self._alive, self._serving, self._leader):
            if fd is not None:
                os.close(fd)
        (self.dir / f"{self.pid}.alive").unlink(missing_ok=True)
        self._catalog.close()
        self._catalog_watch.close()


class DeathFloors:
    """How far each process serving one shard has applied the shard's deaths log (store.py), so
    that the log can be cut below the slowest of them: one small file per process, named by its
    pid and holding the last death seq it applied, in `directory` (the shard's `followers/`).

    Why it is safe to cut up to `lowest()`: a process writes its file (0: "everything") before
    it loads the shard, and is alive (its `.alive` lock) before that. `lowest` reads the files
    first and the live processes after, so a live process without a file answers None (it may
    be loading), and one that started after the files were read took its snapshot after them,
    at or past every seq they name; such a process needs only deaths above its snapshot."""

    def __init__(self, directory: Path, pid: int | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid() if pid is None else pid
        self._published: int | None = None

    def publish(self, seq: int) -> None:
        """Say that this process has applied every death up to `seq` (a no-op when unchanged)."""
        if seq == self._published:
            return
        path = self.dir / str(self.pid)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(str(int(seq)))
        os.replace(temporary, path)  # readers see the old floor or the new one, never a part
        self._published = seq

    def withdraw(self) -> None:
        """Remove this process's file (a file left by an earlier process with the same pid
        must not speak for this one)."""
        (self.dir / str(self.pid)).unlink(missing_ok=True)
        self._published = None

    def lowest(self, alive_pids: Callable[[], Iterable[int]], own: int) -> int | None:
        """The lowest death seq that every live process has applied (this one: `own`); None
        while a live process has not published one. Forgets the files of dead processes."""
        floors: dict[int, int] = {}
        for path in self.dir.iterdir():
            if path.name.isdigit():
                try:
                    floors[int(path.name)] = int(path.read_text())
                except (OSError, ValueError):
                    pass  # replaced or removed meanwhile: that process counts as silent
        alive = set(alive_pids())  # after the files: see the class docstring
        lowest = own
        for pid in alive - {self.pid}:
            if pid not in floors:
                return None
            lowest = min(lowest, floors[pid])
        for pid in floors.keys() - alive - {self.pid}:
            (self.dir / str(pid)).unlink(missing_ok=True)
        return lowest

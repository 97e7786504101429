"""Group commit: writes that queue up while one commits go out together in the next transaction.

The fsync of a commit dominates a small write, so one fsync for every write that waited is the
difference between hundreds and tens of thousands of small upserts per second. Writes commit in
arrival order; each caller returns only once its own write is durable, and a failed commit fails
every write of its group (none of them was applied).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Pending(Generic[T]):
    __slots__ = ("item", "done", "error")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = threading.Event()
        self.error: BaseException | None = None


class GroupCommit(Generic[T]):
    """Runs `commit(items)` for groups of submitted items, under `lock` (the writers' lock,
    which others may hold too: a group forms while they do)."""

    def __init__(self, lock: threading.Lock, commit: Callable[[list[T]], None]) -> None:
        self._lock = lock
        self._commit = commit
        self._pending_lock = threading.Lock()  # guards _pending, the writes waiting to commit
        self._pending: list[_Pending[T]] = []

    def submit(self, item: T) -> None:
        """Commit `item` (with whatever else waits); raises what its group's commit raised."""
        mine = _Pending(item)
        with self._pending_lock:
            self._pending.append(mine)
        with self._lock:
            if not mine.done.is_set():  # nobody took it yet: lead a group with all that waits
                with self._pending_lock:
                    group, self._pending = self._pending, []
                try:
                    self._commit([pending.item for pending in group])
                except BaseException as exc:
                    for pending in group:
                        pending.error = exc
                finally:
                    for pending in group:
                        pending.done.set()
        mine.done.wait()  # set before the leader let go of the lock
        if mine.error is not None:
            raise mine.error

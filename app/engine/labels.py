"""A shard's live labels and their ids, in compact numpy form: which labels are live, and the
string id of a label for the final results of a search.

Why not two dicts: a Python dict entry with its str and int objects costs about 225 bytes per
item (more than a 50-d float32 vector). Labels only ever grow (every upsert takes new ones), so
they are kept as an append-only sorted int64 array with a live flag per entry, and the ids as
one UTF-8 byte string with int64 offsets: 8 + 8 + 1 bytes per item plus the id's bytes, with
growth slack. Dead entries (deleted or replaced items) are compacted away once they outnumber
the live ones. The other direction, id -> label, is only needed by writes and is answered by
the store's UNIQUE index on `id` inside the write transaction.

Threads: one writer at a time (the shard's write path), any number of readers without a lock.
A reader takes a `LabelView` and reads only what it covers: appends go past its end or into new
arrays, compaction builds new arrays, and a kill only clears flags (a reader may see an item
die a moment earlier than its view was taken, never an item that was not there).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

GROWTH = 1.5  # capacity grows by this factor: amortised O(1) appends, at most 50% slack
MIN_CAPACITY = 1024
MIN_DEAD_TO_COMPACT = 4096  # below this many dead entries compaction is not worth a copy


class LabelView:
    """A consistent read view of a `LabelMap`: its first `n` entries."""

    __slots__ = ("labels", "alive", "offsets", "blob", "n")

    def __init__(self, labels: np.ndarray, alive: np.ndarray, offsets: np.ndarray, blob: bytearray, n: int):
        self.labels, self.alive, self.offsets, self.blob, self.n = labels, alive, offsets, blob, n

    def _positions(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of `labels` (any shape, int64) in the view and whether each is there."""
        if self.n == 0:
            return np.zeros(labels.shape, dtype=np.int64), np.zeros(labels.shape, dtype=bool)
        known = self.labels[: self.n]
        pos = known.searchsorted(labels)  # the array methods: numpy's module wrappers cost more
        pos.clip(max=self.n - 1, out=pos)
        return pos, known[pos] == labels

    def is_live(self, labels: np.ndarray) -> np.ndarray:
        """Bool array shaped like `labels` (int64): live in this shard (padding -1 is not)."""
        pos, found = self._positions(labels)
        found &= self.alive[pos]
        return found

    def ids(self, labels: np.ndarray) -> list[str]:
        """The ids of (m,) int64 `labels`, which must be in the view (live or dead since)."""
        pos, found = self._positions(labels)
        if not found.all():
            raise KeyError(f"labels {labels[~found][:5].tolist()} are not in this shard")
        offsets, blob = self.offsets, self.blob
        starts, ends = offsets[pos].tolist(), offsets[pos + 1].tolist()
        return [blob[s:e].decode() for s, e in zip(starts, ends)]

    def live_ids(self) -> list[str]:
        """The ids of every live label of the view, in label order."""
        return self.ids(self.live_labels())

    def live_labels(self, after: int = 0, upto: int | None = None) -> np.ndarray:
        """(m,) int64 live labels in (after, upto], ascending."""
        known = self.labels[: self.n]
        lo = int(np.searchsorted(known, after, side="right"))
        hi = self.n if upto is None else int(np.searchsorted(known, upto, side="right"))
        # The flags are copied first: boolean indexing counts the True flags, then fills that
        # many places, with the GIL released in between; a kill landing between the two left
        # the tail of the answer uninitialised (garbage labels). A copy is read once.
        return known[lo:hi][self.alive[lo:hi].copy()]


class LabelMap:
    """Live labels -> ids of one shard; see the module docstring. Not thread-safe for writers:
    the shard calls `append` and `kill` from its write path only."""

    def __init__(self) -> None:
        self._labels = np.empty(MIN_CAPACITY, dtype=np.int64)
        self._alive = np.zeros(MIN_CAPACITY, dtype=bool)
        self._offsets = np.zeros(MIN_CAPACITY + 1, dtype=np.int64)
        self._blob = bytearray()
        self._n = 0
        self.live = 0  # live entries
        self._view = LabelView(self._labels, self._alive, self._offsets, self._blob, 0)

    def view(self) -> LabelView:
        return self._view

    def __len__(self) -> int:
        return self.live

    def memory_bytes(self) -> int:
        """Bytes held: the arrays at their capacity and the id bytes."""
        return self._labels.nbytes + self._alive.nbytes + self._offsets.nbytes + len(self._blob)

    def append(self, labels: np.ndarray, ids: Sequence[str]) -> None:
        """Add live (m,) int64 `labels` (ascending, above every label already here) with their ids."""
        m = len(ids)
        if not m:
            return
        if self._n and labels[0] <= self._labels[self._n - 1]:
            raise ValueError(f"labels must grow: got {int(labels[0])} after {int(self._labels[self._n - 1])}")
        encoded = [i.encode() for i in ids]
        if self._n + m > len(self._labels):
            self._grow(self._n + m)
        n, lengths = self._n, np.fromiter(map(len, encoded), dtype=np.int64, count=m)
        self._labels[n : n + m] = labels
        self._alive[n : n + m] = True
        np.cumsum(lengths, out=self._offsets[n + 1 : n + m + 1])
        self._offsets[n + 1 : n + m + 1] += self._offsets[n]
        self._blob += b"".join(encoded)  # in place: readers of older views only read a prefix
        self._n += m
        self.live += m
        self._view = LabelView(self._labels, self._alive, self._offsets, self._blob, self._n)

    def kill(self, labels: np.ndarray) -> int:
        """Mark (m,) `labels` dead; labels that are absent or dead already are ignored. Returns
        how many died."""
        if not len(labels) or not self._n:
            return 0
        pos, found = self._view._positions(np.asarray(labels, dtype=np.int64))
        pos = pos[found]
        pos = pos[self._alive[pos]]
        self._alive[pos] = False
        died = len(np.unique(pos))
        self.live -= died
        dead = self._n - self.live
        if dead > max(self.live, MIN_DEAD_TO_COMPACT):
            self._compact()
        return died

    def _grow(self, needed: int) -> None:
        capacity = max(needed, int(len(self._labels) * GROWTH), MIN_CAPACITY)
        n = self._n
        labels = np.empty(capacity, dtype=np.int64)
        alive = np.zeros(capacity, dtype=bool)
        offsets = np.zeros(capacity + 1, dtype=np.int64)
        labels[:n], alive[:n], offsets[: n + 1] = self._labels[:n], self._alive[:n], self._offsets[: n + 1]
        self._labels, self._alive, self._offsets = labels, alive, offsets

    def _compact(self) -> None:
        """Keep only the live entries, in new arrays (views taken before keep the old ones)."""
        n, keep = self._n, self._alive[: self._n].copy()
        lengths = np.diff(self._offsets[: n + 1])
        blob = np.frombuffer(self._blob, dtype=np.uint8)
        kept_bytes = blob[np.repeat(keep, lengths)].tobytes()
        del blob  # release the buffer export, or the bytearray could not grow again
        live_lengths = lengths[keep]
        capacity = max(int(self.live * GROWTH), MIN_CAPACITY)
        labels = np.empty(capacity, dtype=np.int64)
        alive = np.zeros(capacity, dtype=bool)
        offsets = np.zeros(capacity + 1, dtype=np.int64)
        labels[: self.live] = self._labels[:n][keep]
        alive[: self.live] = True
        np.cumsum(live_lengths, out=offsets[1 : self.live + 1])
        self._labels, self._alive, self._offsets, self._blob = labels, alive, offsets, bytearray(kept_bytes)
        self._n = self.live
        self._view = LabelView(self._labels, self._alive, self._offsets, self._blob, self._n)

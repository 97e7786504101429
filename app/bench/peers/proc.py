"""What a server's processes used, read from Linux /proc: CPU seconds and proportional memory of
a process and all its descendants (Postgres serves each connection from a child process; Chroma,
Redis and annserve use threads, which /proc/<pid>/stat already counts)."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (field 3 on, so index 0 is the
    state). The name in field 2 may hold spaces or ')': the split is after its last ')'."""
    return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def process_tree(root: int) -> list[int]:
    """`root` and every live descendant of it (by parent pid, one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(stat_fields(int(entry.name))[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue  # it exited while we looked
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU time (user + system) of `root` and its descendants, all threads, including the reaped
    children each of them waited for (cutime, cstime): a backend that exited still counts. A
    process that exits between the listing and the reading is left out."""
    ticks = 0
    for pid in process_tree(root):
        try:
            fields = stat_fields(pid)
        except (FileNotFoundError, ProcessLookupError):
            if pid == root:
                raise ProcessLookupError(f"process {root} is gone") from None
            continue
        # Fields 14-17 of stat (utime, stime, cutime, cstime): indexes 11-14 after the name.
        ticks += sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_pss_bytes(root: int) -> int:
    """Proportional set size of `root` and its descendants, summed: memory shared between them
    (Postgres's shared buffers) counts once in total, not once per process as RSS would."""
    total = 0
    for pid in process_tree(root):
        try:
            text = (PROC / str(pid) / "smaps_rollup").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in text.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
                break
    return total

"""release_freed_memory: the freed heap a rebuild leaves behind goes back to the OS."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

# In a fresh interpreter: 400 MiB in 4 KiB blocks (malloc'd, below the mmap threshold), one block
# kept after them so that free() cannot trim the heap's top by itself, then all the others freed.
SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from annserve.engine.memory import release_freed_memory

    def rss():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

    blocks = [bytes(4096) for _ in range(100_000)]
    pin = bytes(4096)
    del blocks
    before = rss()
    trimmed = release_freed_memory()
    print(trimmed, before, rss())
""")


def test_freed_heap_leaves_rss_after_release():
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    trimmed, before, after = run.stdout.split()
    assert trimmed == "True"  # glibc (the service's platform)
    assert int(before) - int(after) > 300 * 2**20, (before, after)


# Threads alive at once (the cap and six more), each allocating: glibc gives each a heap of its
# own up to its limit (8 per core); malloc_stats() then lists one "Arena N:" per heap on stderr.
ARENAS = textwrap.dedent("""
    import ctypes, sys, threading
    from annserve.engine.memory import limit_arenas

    if sys.argv[1] == "limit":
        assert limit_arenas()
    n = int(sys.argv[2])
    hold, go = [], threading.Barrier(n)

    def work():
        go.wait()
        hold.append([bytes(1000) for _ in range(2000)])
        go.wait()

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctypes.CDLL(None).malloc_stats()
""")


def arenas(mode: str, threads: int) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    command = [sys.executable, "-c", ARENAS, mode, str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return sum(1 for line in done.stderr.splitlines() if line.startswith("Arena "))


def test_the_service_keeps_glibc_to_a_heap_per_core():
    cap = max(2, len(os.sched_getaffinity(0)))
    assert arenas("limit", cap + 6) <= cap
    assert arenas("default", cap + 6) > cap  # without the cap the same threads take more

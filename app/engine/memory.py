"""Giving freed heap back to the OS after a rebuild, and fewer heaps to keep it in.

A rebuild allocates a snapshot of every live vector, the new index and its graph in many
threads; once the old main and those copies are gone, glibc keeps most of the freed pages in
its per-thread arenas (they count in RSS until reused). `malloc_trim(0)` returns the free pages
of every arena. GloVe 400K x 50 (hnswlib): see README "Scaling with the data" for the figures.
Not glibc (musl, macOS): nothing to do, and nothing is done.

Arenas: glibc gives threads up to 8 heaps per core (16 here), and the service runs many threads
(the event loop, search, batch, write and job threads, the checkpointer, the sampler). Pages a
thread freed stay in its heap until that thread allocates again, so RSS crept up in steps of
tens of MiB under mixed load after a rebuild (bench-load, 60 s, 32 clients: the slope after the
rebuild 7-97 MiB/min over 5 runs, 97 failing the suite's leak check; with MALLOC_ARENA_MAX=2 -4
and +8, and with this cap built in +11 and +13, at the same request count). `limit_arenas` caps
them at the cores (at least 2) unless MALLOC_ARENA_MAX is set.
Side by side under wrk (16 connections, base64 searches): 171-181 against 162-180 us per search,
within the noise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from functools import cache

from .threads import available_cores

log = logging.getLogger(__name__)


@cache
def _libc_function(name: str):
    """glibc's function `name` (malloc_trim, mallopt), or None where the C library has none."""
    library = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(library), name) if library else None
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Hand the C heap's free pages back to the OS; True when malloc_trim ran (glibc). Takes
    milliseconds to tens of ms on a big heap, without the GIL (ctypes releases it), so the event
    loop runs meanwhile; no gc.collect() here: it would hold the GIL, and the build's copies are
    numpy arrays that go with their last reference. Call it after a rebuild, never on a search's
    path."""
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def limit_arenas() -> bool:
    """Cap glibc's heaps at the cores (at least 2), before the threads start; True when set.
    Left alone when MALLOC_ARENA_MAX is set (glibc read it at start) or the C library is not glibc."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(M_ARENA_MAX, max(2, available_cores())))

"""Giving freed heap back to the OS after a rebuild.

A rebuild allocates a snapshot of every live vector, the new index and its graph in many
threads; once the old main and those copies are gone, glibc keeps most of the freed pages in
its per-thread arenas (they count in RSS until reused). `malloc_trim(0)` returns the free pages
of every arena. GloVe 400K x 50 (hnswlib): see README "Scaling with the data" for the figures.
Not glibc (musl, macOS): nothing to do, and nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

log = logging.getLogger(__name__)


@cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim") if name else None
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Hand the C heap's free pages back to the OS; True when malloc_trim ran (glibc). Takes
    milliseconds to tens of ms on a big heap, without the GIL (ctypes releases it), so the event
    loop runs meanwhile; no gc.collect() here: it would hold the GIL, and the build's copies are
    numpy arrays that go with their last reference. Call it after a rebuild, never on a search's
    path."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True

"""Files that must survive power loss whole: write to a temporary name, fsync, rename, fsync the
directory. Used for collection.json and the index files (derived, but a half-written one would
cost a rebuild at the next start)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (new, renamed or removed files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, write: Callable[[Path], Any]) -> None:
    """Write `path` through `write(tmp)`, fsync it, rename it into place and fsync the
    directory: after a crash or power loss the file is the old one or the new one, whole."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def move_durably(src: Path, dst: Path) -> None:
    """Rename a durable file `src` to `dst` (same file system) and fsync `dst`'s directory."""
    os.replace(src, dst)
    fsync_dir(dst.parent)

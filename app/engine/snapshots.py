"""Snapshots of a collection: one self-contained tar file, taken while writes and searches go on,
and restored offline into a data directory.

A snapshot file holds, in this order:
- `manifest.json`: format, collection, created_at, the spec, and per shard its files with their
  sizes and SHA-256, its item count and largest label;
- `collection.json`: the spec, as the collection directory holds it;
- `shard-<i>/store.sqlite` per shard: a copy made with SQLite's online backup API from a read
  view (WAL readers never block writers, so writes continue during the copy);
- `shard-<i>/main-<label>.idx` (+ its `.json` build notes) when the index is included: the main
  index that matches the store copy, so a restored collection answers searches exactly as the
  original did at the cut, without a rebuild.

Consistency: every shard's write lock is held together (`Collection.writes_paused`) while each
shard's read view is opened and its index file linked; the locks are released before the
copies. So all shards are at one point in time: every write acknowledged before the snapshot
began is in it, no write that began after the locks were released is. A multi-shard upsert still
in flight at the cut may be in some shards and not others; it was not acknowledged yet.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .build import MAIN_FILE
from .collection import SPEC_FILE, Collection, CollectionSpec
from .errors import Conflict, NotFound
from .files import fsync_dir
from .manager import NAME

FORMAT = "annserve-snapshot"
VERSION = 1
MANIFEST = "manifest.json"
SUFFIX = ".tar"
# A snapshot's file name: what `create_snapshot` makes, and all that the routes accept, so a
# name from a URL can never leave the snapshot directory (no `/`, no leading `.`).
SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,191}\.tar$")
STORE_FILE = "store.sqlite"
_SHARD_FILE = re.compile(r"^shard-(\d{1,4})/(store\.sqlite|main-\d{20}\.(?:idx|json))$")
_COPY = 1 << 20
_SQLITE_FULL = 13  # SQLite's primary result code for "database or disk is full"


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    bytes: int
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def snapshot_dir(data_dir: Path, collection: str) -> Path:
    """Where the snapshots of `collection` live: `<data_dir>/snapshots/<collection>/` (outside
    `collections/`, so they outlive a deleted collection). ValueError for a name that is not a
    collection name (`..` from a URL must not reach the file system)."""
    if not isinstance(collection, str) or not NAME.match(collection):
        raise ValueError(f"collection name: expected a collection name, got {collection!r}")
    return Path(data_dir) / "snapshots" / collection


def snapshot_path(data_dir: Path, collection: str, name: str) -> Path:
    """The file of snapshot `name`; ValueError for a name that is not a snapshot name, NotFound
    when there is no such snapshot."""
    if not isinstance(name, str) or not SNAPSHOT_NAME.match(name):
        raise ValueError(
            f"snapshot name: expected letters, digits, '_', '-', '.' ending in {SUFFIX} (as listed "
            f"by GET /collections/{collection}/snapshots), got {name!r}"
        )
    path = snapshot_dir(data_dir, collection) / name
    if not path.is_file():
        raise NotFound(f"snapshot {name!r} of collection {collection!r} not found")
    return path


def list_snapshots(data_dir: Path, collection: str) -> list[SnapshotInfo]:
    """The snapshots of `collection`, oldest first (an empty list when there are none)."""
    directory = snapshot_dir(data_dir, collection)
    if not directory.is_dir():
        return []
    infos = [_info(p) for p in directory.iterdir() if SNAPSHOT_NAME.match(p.name) and p.is_file()]
    return sorted(infos, key=lambda s: (s.created_at, s.name))


def delete_snapshot(data_dir: Path, collection: str, name: str) -> SnapshotInfo:
    """Delete snapshot `name`; what it was. ValueError / NotFound as `snapshot_path`."""
    path = snapshot_path(data_dir, collection, name)
    info = _info(path)
    path.unlink()
    fsync_dir(path.parent)
    return info


def _info(path: Path) -> SnapshotInfo:
    stat = path.stat()
    return SnapshotInfo(
        path.name, stat.st_size, datetime.fromtimestamp(stat.st_mtime, timezone.utc).isoformat()
    )


# ---- taking a snapshot --------------------------------------------------------------------


def create_snapshot(collection: Collection, data_dir: Path, include_index: bool = True) -> SnapshotInfo:
    """Write a snapshot file of `collection` (see the module docstring) and return its name,
    size and time. Writes and searches go on meanwhile; writers wait only while the read views
    open. OSError (e.g. disk full) leaves no partial file behind."""
    directory = snapshot_dir(data_dir, collection.name)
    directory.mkdir(parents=True, exist_ok=True)
    created = datetime.now(timezone.utc)
    name = f"{collection.name}-{created:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}{SUFFIX}"
    with _active_lock:
        _sweep(directory)
        _active.add(name)
    staging = directory / f".staging-{name}"
    readers: list[sqlite3.Connection] = []
    try:
        staging.mkdir()
        return _create(collection, directory, name, created, staging, readers, include_index)
    except sqlite3.Error as exc:  # the copy's writes: a full disk comes back as SQLITE_FULL
        code = errno.ENOSPC if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_FULL else errno.EIO
        raise OSError(code, f"{exc} (SQLite, writing the snapshot)") from exc
    finally:
        for reader in readers:
            reader.close()
        shutil.rmtree(staging, ignore_errors=True)
        with _active_lock:
            _active.discard(name)


# Snapshots being written by this process. One service owns a data directory, so a hidden
# `.staging-` or `.partial-` entry of any other name was left by a process that died mid-way.
_active: set[str] = set()
_active_lock = threading.Lock()


def _sweep(directory: Path) -> None:
    """Remove what snapshots interrupted by a crash left in `directory` (caller holds the lock)."""
    for path in directory.iterdir():
        for prefix in (".staging-", ".partial-"):
            if path.name.startswith(prefix) and path.name[len(prefix) :] not in _active:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


def _create(
    collection: Collection,
    directory: Path,
    name: str,
    created: datetime,
    staging: Path,
    readers: list[sqlite3.Connection],
    include_index: bool,
) -> SnapshotInfo:
    """The work of `create_snapshot` (which cleans up whatever happens)."""
    shards = []
    with collection.writes_paused() as shard_dirs:
        for i, shard_dir in enumerate(shard_dirs):
            reader = sqlite3.connect(shard_dir / STORE_FILE, isolation_level=None, check_same_thread=False)
            readers.append(reader)
            reader.execute("BEGIN")
            # The first read fixes the WAL snapshot this connection sees until COMMIT.
            row = reader.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
            max_label = int(row[0]) if row else 0
            index_files = _link_index(shard_dir, staging / f"shard-{i}", max_label) if include_index else []
            shards.append({"shard": i, "max_label": max_label, "index_files": index_files})
    # The cut is made; copy each store from its read view while writers carry on.
    for i, (reader, shard) in enumerate(zip(readers, shards)):
        shard["items"] = int(reader.execute("SELECT count(*) FROM items").fetchone()[0])
        target = staging / f"shard-{i}" / STORE_FILE
        target.parent.mkdir(exist_ok=True)
        copy = sqlite3.connect(target)
        try:
            reader.backup(copy)  # one step: the whole file from this read view
        finally:
            copy.close()
        reader.execute("COMMIT")
    manifest = _manifest(collection, created, shards, staging)
    final = directory / name
    partial = directory / f".partial-{name}"
    try:
        _write_tar(partial, manifest, staging)
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    fsync_dir(directory)
    return SnapshotInfo(name, final.stat().st_size, created.isoformat())


def _link_index(shard_dir: Path, target: Path, max_label: int) -> list[str]:
    """Hard-link into `target` the newest main index file of `shard_dir` that the store's read
    view covers (label <= max_label), with its build notes; the file names linked. Runs under
    the write locks: a rebuild may install (and delete) files meanwhile, hence the retry."""
    target.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        mains = sorted(
            p for p in shard_dir.iterdir() if (m := MAIN_FILE.match(p.name)) and int(m.group(1)) <= max_label
        )
        if not mains:
            return []
        newest = mains[-1]
        linked = []
        try:
            for source in (newest, newest.with_suffix(".json")):
                if source.suffix == ".json" and not source.exists():
                    continue
                _link_or_copy(source, target / source.name)
                linked.append(source.name)
            return linked
        except FileNotFoundError:  # installed over and deleted between the listing and the link
            for name in linked:
                (target / name).unlink(missing_ok=True)
    return []


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        shutil.copyfile(source, target)  # another file system (or no hard links there)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_COPY):
            digest.update(block)
    return digest.hexdigest()


def _manifest(collection: Collection, created: datetime, shards: list[dict], staging: Path) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        annserve_version = version("annserve")
    except PackageNotFoundError:
        annserve_version = "unknown"
    files = []
    for shard in shards:
        i = shard["shard"]
        names = [STORE_FILE, *shard.pop("index_files")]
        shard["files"] = [f"shard-{i}/{n}" for n in names]
        for member in shard["files"]:
            path = staging / member
            files.append({"path": member, "bytes": path.stat().st_size, "sha256": _sha256(path)})
    return {
        "format": FORMAT,
        "version": VERSION,
        "annserve_version": annserve_version,
        "collection": collection.name,
        "created_at": created.isoformat(),
        "spec": dataclasses.asdict(collection.spec),
        "consistency": "one cut: every shard's write lock held together while its read view opened",
        "shards": shards,
        "files": files,
    }


def _write_tar(path: Path, manifest: dict, staging: Path) -> None:
    spec_text = json.dumps({"format": 1, **manifest["spec"]}, indent=2).encode()
    with open(path, "wb") as out:
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=2).encode())
            _add_bytes(tar, SPEC_FILE, spec_text)
            for entry in manifest["files"]:
                tar.add(staging / entry["path"], arcname=entry["path"], recursive=False)
        out.flush()
        os.fsync(out.fileno())


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


# ---- restoring --------------------------------------------------------------------------


class SnapshotError(ValueError):
    """A file that is not a valid, whole snapshot (wrong format, missing or corrupt member)."""


def read_manifest(tar: tarfile.TarFile, source: Path) -> dict:
    try:
        member = tar.getmember(MANIFEST)
        manifest = json.loads(tar.extractfile(member).read())
    except (KeyError, AttributeError, ValueError) as exc:
        raise SnapshotError(f"{source}: not an annserve snapshot (no readable {MANIFEST}: {exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise SnapshotError(
            f"{source}: expected format {FORMAT!r} version {VERSION}, got "
            f"{manifest.get('format')!r} version {manifest.get('version')!r}"
        )
    return manifest


def restore_snapshot(source: Path, data_dir: Path, as_name: str | None = None) -> CollectionSpec:
    """Restore the snapshot file `source` into `data_dir` as a collection named `as_name` (the
    snapshot's own name by default); returns its spec. Offline: the service reads the new
    collection when it next starts. Every member is checked against the manifest's SHA-256
    and every store with SQLite's integrity check before the collection appears (it is
    staged under a hidden name and renamed). Conflict when the name exists, SnapshotError
    (a ValueError) for a bad file or name."""
    source = Path(source)
    root = Path(data_dir) / "collections"
    with tarfile.open(source, mode="r:") as tar:
        manifest = read_manifest(tar, source)
        name = as_name if as_name is not None else manifest["collection"]
        if not isinstance(name, str) or not NAME.match(name):
            raise SnapshotError(
                f"collection name: expected 1 to 64 characters from A-Z a-z 0-9 _ . - starting with a "
                f"letter or digit, got {name!r}"
            )
        spec = dataclasses.replace(CollectionSpec(**manifest["spec"]), name=name)
        root.mkdir(parents=True, exist_ok=True)
        final = root / name
        if final.exists():
            raise Conflict(f"collection {name!r} already exists in {root}; restore it --as another name")
        staging = root / f".restore-{name}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            wanted = {entry["path"]: entry for entry in manifest["files"]}
            for member_name, entry in wanted.items():
                match = _SHARD_FILE.match(member_name)
                if match is None or int(match.group(1)) >= spec.shards:
                    raise SnapshotError(f"{source}: unexpected member {member_name!r} in the manifest")
                _extract(
                    tar, source, member_name, entry, staging / f"shard-{int(match.group(1))}" / match.group(2)
                )
            for i in range(spec.shards):
                store = staging / f"shard-{i}" / STORE_FILE
                if not store.is_file():
                    raise SnapshotError(f"{source}: shard {i} has no {STORE_FILE}")
                _check_store(store, source, i)
            spec.save(staging)
            for directory in [*staging.iterdir(), staging]:
                if directory.is_dir():
                    fsync_dir(directory)
            os.replace(staging, final)
            fsync_dir(root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return spec


def _extract(tar: tarfile.TarFile, source: Path, member_name: str, entry: dict, target: Path) -> None:
    """Copy one member to `target` (a path we built, never one from the archive), checking its
    size and SHA-256 against the manifest."""
    try:
        member = tar.getmember(member_name)
    except KeyError:
        raise SnapshotError(f"{source}: member {member_name!r} is missing (truncated file?)") from None
    if not member.isfile():
        raise SnapshotError(f"{source}: member {member_name!r} is not a regular file")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with tar.extractfile(member) as src, open(target, "wb") as out:
        while block := src.read(_COPY):
            digest.update(block)
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    size = target.stat().st_size
    if size != entry["bytes"] or digest.hexdigest() != entry["sha256"]:
        raise SnapshotError(
            f"{source}: member {member_name!r} is corrupt: expected {entry['bytes']} bytes with "
            f"sha256 {entry['sha256'][:16]}..., got {size} bytes with {digest.hexdigest()[:16]}..."
        )


def _check_store(path: Path, source: Path, shard: int) -> None:
    conn = sqlite3.connect(path)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        result = str(exc)
    finally:
        conn.close()
    if result != "ok":
        raise SnapshotError(f"{source}: shard {shard}'s store failed SQLite's integrity check: {result}")

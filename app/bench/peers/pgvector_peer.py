"""pgvector as a peer: Postgres 16 with the pgvector extension, from the `pgserver` wheel's
binaries, driven directly (initdb, then `postgres` in the foreground, so that its pid is the root
of the process tree whose CPU is read). Postgres refuses to run as root: when the bench runs as
root, the server runs as `nobody` in a data directory owned by it.

Loading as a user would: rows by binary COPY in batches of 1000 (each its own committed
transaction), then `CREATE INDEX ... USING hnsw` (m = 16, ef_construction = 200), which is the
time to index-ready. Searches: `ORDER BY embedding <=> $1 LIMIT k` (cosine distance) with
`hnsw.ef_search` set per connection."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from .base import HNSW_EF_CONSTRUCTION, HNSW_M, Peer, PeerMissing, free_port, wait_until

INSTALL = "pip install pgserver 'psycopg[binary]' pgvector (or 'annserve[peers]')"
# In memory, as the other services are: the table and its index are ~200 MB at 50K x 384.
SERVER_SETTINGS = {"shared_buffers": "1GB", "maintenance_work_mem": "1GB", "max_connections": "64"}


class PgvectorPeer(Peer):
    name = "pgvector"

    def __init__(self) -> None:
        super().__init__()
        self.home: Path | None = None
        self.admin: Any = None

    def check_installed(self) -> None:
        try:
            import pgserver  # noqa: F401
            import pgvector.psycopg  # noqa: F401
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise PeerMissing(f"pgvector: {exc.name} is not installed: {INSTALL}") from None

    def start(self, workdir: Path) -> None:
        import pgserver

        bin_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
        # A folder of its own under /tmp that `nobody` can reach (the bench's own is root's, 0700).
        self.home = Path(tempfile.mkdtemp(prefix="annserve-peers-pg-"))
        self.home.chmod(0o755)
        user: dict[str, Any] = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.home, nobody.pw_uid, nobody.pw_gid)
            user = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
            if not _reachable_by_others(bin_dir):  # pgserver installed under /root (0700), say
                # 40 MB, a second's copy, laid out as installed: the binaries find their
                # libraries at $ORIGIN/../../../pgserver.libs.
                package = bin_dir.parent.parent
                copied = self.home / "site" / package.name
                shutil.copytree(bin_dir.parent, copied / "pginstall", symlinks=True)
                shutil.copytree(package.parent / "pgserver.libs", copied.parent / "pgserver.libs", symlinks=True)
                bin_dir = copied / "pginstall" / "bin"
        data, log = self.home / "data", workdir / "postgres.log"
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        subprocess.run(initdb, check=True, capture_output=True, cwd=self.home, **user)
        self.port = free_port()
        command = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.home),
                   "-c", "listen_addresses=127.0.0.1"]  # fmt: skip
        for key, value in SERVER_SETTINGS.items():
            command += ["-c", f"{key}={value}"]
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=self.home, **user)

        def ready() -> bool:
            self.admin = self._connect_raw()
            return True

        wait_until(ready, self.proc, "postgres", log)
        self.admin.execute("CREATE EXTENSION IF NOT EXISTS vector")

    def _connect_raw(self) -> Any:
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                               autocommit=True)  # fmt: skip

    def stop(self) -> None:
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        super().stop()  # SIGTERM: Postgres's "smart" shutdown, which waits for no one here
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None

    def version(self) -> str:
        pg = self.admin.execute("SHOW server_version").fetchone()[0]
        vec = self.admin.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
        return f"Postgres {pg} + pgvector {vec} (pgserver {version('pgserver')})"

    def durability(self) -> str:
        fsync, commit = (self.admin.execute(f"SHOW {name}").fetchone()[0]
                         for name in ("fsync", "synchronous_commit"))  # fmt: skip
        ok = fsync == "on" and commit in ("on", "remote_write", "remote_apply", "local")
        return f"{'yes' if ok else 'no'} (fsync {fsync}, synchronous_commit {commit})"

    def create(self, dim: int) -> None:
        self.admin.execute(f"CREATE TABLE items (id bigint PRIMARY KEY, embedding vector({dim}))")

    def insert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        from pgvector.psycopg import register_vector

        register_vector(self.admin)
        with self.admin.cursor().copy("COPY items (id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "vector"])
            for i, row in zip(ids.tolist(), vectors):
                copy.write_row((i, row))

    def finish_ingest(self, n: int) -> None:
        self.admin.execute(
            f"CREATE INDEX items_hnsw ON items USING hnsw (embedding vector_cosine_ops) "
            f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
        )
        self.admin.execute("ANALYZE items")
        count = self.admin.execute("SELECT count(*) FROM items").fetchone()[0]
        if count != n:
            raise RuntimeError(f"pgvector: expected {n} rows, got {count}")
        # A full scan would be exact and slow: the figures are the index's only if the plan is.
        sample = self._vector(self.admin.execute("SELECT embedding FROM items LIMIT 1").fetchone()[0])
        if not self.uses_index(sample, 10):
            raise RuntimeError("pgvector: the planner does not use the HNSW index for the search")

    def connect(self) -> Any:
        from pgvector.psycopg import register_vector

        conn = self._connect_raw()
        register_vector(conn)
        conn.execute(f"SET hnsw.ef_search = {int(self.ef)}")
        return conn

    def search(self, conn: Any, query: np.ndarray, k: int) -> list[int]:
        rows = conn.execute("SELECT id FROM items ORDER BY embedding <=> %s LIMIT %s", (query, k),
                            prepare=True).fetchall()  # fmt: skip
        return [r[0] for r in rows]

    @staticmethod
    def _vector(value: Any) -> np.ndarray:
        return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)

    def uses_index(self, query: np.ndarray, k: int) -> bool:
        """Whether the planner answers the search through the HNSW index (not a full scan)."""
        conn = self.connect()
        try:
            plan = conn.execute("EXPLAIN SELECT id FROM items ORDER BY embedding <=> %s LIMIT %s", (query, k))
            return any("items_hnsw" in row[0] for row in plan.fetchall())
        finally:
            conn.close()


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner may walk down to `path` (every folder above it o+x)."""
    return all(os.stat(folder).st_mode & 0o001 for folder in [path, *path.parents])

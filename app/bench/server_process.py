"""`annserve serve` as a child process on a free loopback port: started, waited for, stopped.

The one place that runs the real server in its own process, for `annserve bench-http` and the
integration test (tests/test_server_process.py).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from ..cli import own_command

LOG_TAIL_LINES = 40


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`annserve serve --data-dir data_dir` on a new free port per `start()`; stdout and stderr
    are appended to `log_path`, so a restart keeps the earlier runs' lines. `env` is added to
    this process's environment. Call `stop()` when done: it always reaps the process."""

    def __init__(
        self, data_dir: Path, log_path: Path, env: dict[str, str] | None = None, workers: int = 1
    ) -> None:
        """`workers`: `annserve serve --workers`, always given (the service's default is one per
        core): 1 unless asked, one process, as tests expect (a kill -9 of uvicorn's supervisor
        would orphan its workers, who keep the port)."""
        self.data_dir, self.log_path = Path(data_dir), Path(log_path)
        self.env = dict(env or {})
        self.workers = workers
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 60.0, request_timeout: float = 30.0) -> httpx.Client:
        """Start the server and wait until `/readyz` answers 200; returns a client on its URL
        (the caller closes it). RuntimeError with the log's last lines if the process exits or
        is not ready within `timeout` seconds; the process is stopped first."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"the server is already running (pid {self.proc.pid}); stop or kill it first")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        command = own_command()
        command += ["serve", "--port", str(port), "--data-dir", str(self.data_dir), "--workers", str(self.workers)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
            )
        client = httpx.Client(base_url=self.url, timeout=request_timeout)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                problem = f"the server exited with code {self.proc.returncode} before it was ready"
                break
            try:
                if client.get("/readyz").status_code == 200:
                    return client
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                problem = f"the server was not ready after {timeout:.0f}s"
                break
            time.sleep(0.1)
        client.close()
        self.stop()
        raise RuntimeError(f"{problem}; last lines of {self.log_path}:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL and reap: no shutdown code runs, as in a crash."""
        if self.proc is None:
            raise RuntimeError("the server was never started")
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM and wait up to `timeout` s for a clean shutdown, then SIGKILL; always reaps.
        Idempotent, and a no-op before `start()`."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
                return
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(10)

    def pids(self) -> list[int]:
        """The server's processes: the one started and, with workers, its descendants."""
        if self.proc is None:
            raise RuntimeError("the server was never started")
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            for children in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    todo += [int(c) for c in children.read_text().split()]
                except OSError:
                    pass  # the thread ended meanwhile
        return found

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server's live processes, all their
        threads (Linux /proc): with workers, the supervisor and every worker."""
        total = 0.0
        for pid in self.pids():
            try:
                # The command name in field 2 may hold spaces or ')': split after its closing ')'.
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # it exited meanwhile
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last `lines` lines of the server's log ('' before anything was written)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

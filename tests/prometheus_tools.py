"""Prometheus and promtool for the tests: found (or, in CI, demanded) and run on loopback.

In CI (`CI=true`) a missing tool fails the test: .ci/run installs Debian's `prometheus` package
(which brings promtool). On a developer's machine without it the test is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from annserve.bench.server_process import free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def require_tool(name: str) -> str:
    """The path of `name`; fails the test in CI when it is missing, else skips it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found: apt-get install -y prometheus (Debian's package brings promtool)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_tool("promtool"), *args], input=stdin, capture_output=True, text=True, timeout=120
    )


class PrometheusProcess:
    """A real Prometheus on a free loopback port scraping `target` (host:port) every second,
    with annserve's alert rules loaded. `stop()` always reaps it."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.workdir = Path(workdir)
        self.target = target
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 60.0) -> httpx.Client:
        binary = require_tool("prometheus")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: [{(DEPLOY / 'prometheus' / 'alerts.yml').as_posix()!r}]\n"
            "scrape_configs:\n  - job_name: annserve\n    metrics_path: /metrics\n"
            f"    static_configs:\n      - targets: [{self.target!r}]\n"
        )
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        log = open(self.workdir / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        client = httpx.Client(base_url=self.url, timeout=10)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if client.get("/-/ready").status_code == 200:
                    return client
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus not ready after {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
                return
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        path = self.workdir / "prometheus.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

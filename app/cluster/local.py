"""A whole cluster as child processes on loopback: shard nodes (each `annserve serve` knowing its
place) and routers over them, every one a `ServeProcess` (app/bench/server_process.py).

Used by `annserve bench-cluster` and tests/test_cluster.py. Nodes get a new free port at each
start, so the routers are (re)started after the nodes, with the nodes' current URLs.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from ..bench.server_process import ServeProcess

START_TIMEOUT = 180.0  # seconds for a process to be ready (a loaded 2-core machine is slow to start)
# Processes started at once: each start is mostly imports (CPU); more at once only makes each wait longer.
PARALLEL_STARTS = 4


class LocalCluster:
    """`layout[i]` replicas of shard i under `root` (a data directory each), and routers named
    by `routers` ({name: extra environment}); `node_env` is added to every node's environment.
    `stop()` always stops every process."""

    def __init__(
        self, root: Path, layout: tuple[int, ...], routers: dict[str, dict[str, str]] | None = None,
        node_env: dict[str, str] | None = None, client_headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.root, self.layout = Path(root), tuple(layout)
        self.client_headers = dict(client_headers or {})  # e.g. the API key the routers' clients send
        count = len(layout)
        self.nodes: list[list[ServeProcess]] = [
            [
                ServeProcess(
                    self.root / f"shard-{s}-{r}", self.root / f"shard-{s}-{r}.log",
                    env={"ANNSERVE_SHARD_INDEX": str(s), "ANNSERVE_SHARD_COUNT": str(count), **(node_env or {})},
                )  # fmt: skip
                for r in range(replicas)
            ]
            for s, replicas in enumerate(layout)
        ]
        self.router_env = dict(routers or {"router": {}})
        self.routers: dict[str, ServeProcess] = {
            name: ServeProcess(self.root / f"{name}-data", self.root / f"{name}.log", env=dict(env))
            for name, env in self.router_env.items()
        }
        self.clients: dict[str, httpx.Client] = {}

    # ---- processes ----

    @property
    def all_nodes(self) -> list[ServeProcess]:
        return [node for replicas in self.nodes for node in replicas]

    def shard_urls(self) -> str:
        """ANNSERVE_SHARD_URLS for the nodes as they run now."""
        return ",".join("|".join(node.url for node in replicas) for replicas in self.nodes)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start every node that is not running, then (re)start every router over them."""
        self._start([n for n in self.all_nodes if not running(n)], timeout)
        self.restart_routers(timeout)

    def restart_routers(self, timeout: float = START_TIMEOUT) -> None:
        urls = self.shard_urls()
        for name, router in self.routers.items():
            self._close_client(name)
            router.stop()
            router.env["ANNSERVE_SHARD_URLS"] = urls
        self._start(list(self.routers.values()), timeout)

    def _start(self, processes: list[ServeProcess], timeout: float) -> None:
        # Starting is mostly waiting (imports, /readyz): in parallel. Two processes started at
        # once can be handed the same free port; the loser fails to bind, but its /readyz poll
        # may reach the winner. So every process on a shared port is restarted, one at a time.
        with ThreadPoolExecutor(min(max(len(processes), 1), PARALLEL_STARTS)) as pool:
            clients = dict(zip(processes, pool.map(lambda p: p.start(timeout=timeout), processes)))
        everyone = [*self.all_nodes, *self.routers.values()]
        shared = [p for p in processes if any(o is not p and o.url == p.url for o in everyone)]
        for process in shared:
            clients.pop(process).close()
            process.stop()
        for process in shared:  # one at a time: each gets a port no running process holds
            clients[process] = process.start(timeout=timeout)
        for process, client in clients.items():
            name = next((n for n, r in self.routers.items() if r is process), None)
            if name is not None:
                client.headers.update(self.client_headers)
                self.clients[name] = client
            else:
                client.close()

    def client(self, name: str = "router") -> httpx.Client:
        """A client on router `name` (started)."""
        return self.clients[name]

    def kill(self, node: ServeProcess) -> None:
        node.kill()

    def pause(self, node: ServeProcess) -> None:
        """SIGSTOP: the process keeps its sockets (connections are accepted) but answers nothing."""
        node.proc.send_signal(signal.SIGSTOP)

    def resume(self, node: ServeProcess) -> None:
        if running(node):
            node.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Resume anything paused, then stop every process (SIGTERM, SIGKILL after a while)."""
        for name in list(self.clients):
            self._close_client(name)
        processes = [*self.routers.values(), *self.all_nodes]
        for process in processes:
            self.resume(process)
        with ThreadPoolExecutor(max(len(processes), 1)) as pool:
            list(pool.map(lambda p: p.stop(), processes))

    def kill_all(self) -> None:
        """SIGKILL everything, as a power cut would (no shutdown code runs)."""
        for name in list(self.clients):
            self._close_client(name)
        for process in [*self.routers.values(), *self.all_nodes]:
            if running(process):
                self.resume(process)
                process.kill()

    def _close_client(self, name: str) -> None:
        client = self.clients.pop(name, None)
        if client is not None:
            client.close()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def running(process: ServeProcess) -> bool:
    return process.proc is not None and process.proc.poll() is None

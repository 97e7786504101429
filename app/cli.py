"""The `annserve` command: `serve` runs the HTTP service, `bench` the index benchmark harness,
`bench-http` measures the running service over real HTTP (ingest, recall, latency, throughput);
`import`, `collections`, `search`, `rebuild` talk to a running service (app/commands/)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

cli = typer.Typer(add_completion=False, no_args_is_help=True, help="annserve: vector search service")


@cli.command()
def serve(
    host: Optional[str] = typer.Option(None, help="bind address [env ANNSERVE_HOST, default 127.0.0.1]"),
    port: Optional[int] = typer.Option(None, help="TCP port [env ANNSERVE_PORT, default 8000]"),
    data_dir: Optional[Path] = typer.Option(None, help="data directory [env ANNSERVE_DATA_DIR, default ./data]"),
) -> None:
    """Start the HTTP service with its embedded store (nothing else to start)."""
    from .serve import run

    overrides = {"host": host, "port": port, "data_dir": data_dir}
    run({name: value for name, value in overrides.items() if value is not None})


def _register_bench() -> None:
    from .bench import bench
    from .bench.http import bench_http

    cli.command(name="bench")(bench)
    cli.command(name="bench-http")(bench_http)


_register_bench()


def _register_client_commands() -> None:
    from .commands import register

    register(cli)


_register_client_commands()

from .restore import restore  # noqa: E402 - `annserve restore FILE --data-dir DIR [--as NAME]`

cli.command(name="restore")(restore)
from .bench.load import bench_load  # noqa: E402 - `annserve bench-load`: mixed traffic, errors, RSS, percentiles
cli.command(name="bench-load")(bench_load)


def main() -> None:
    cli()

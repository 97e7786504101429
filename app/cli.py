"""The `annserve` command: `serve` runs the HTTP service, `bench` the index benchmark harness,
`bench-http` measures the running service over real HTTP (ingest, recall, latency, throughput),
`bench-load` a mixed load, `restore` a snapshot into a data directory (offline);
`import`, `collections`, `search`, `rebuild` talk to a running service (app/commands/)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperGroup

# Commands whose modules are imported only when the command runs (or `--help` lists it): they pull in
# FAISS and numba (seconds to import, and a numba compile after a fresh install), which `serve` and the
# commands that only talk HTTP (import, search, ...) do not need at start. name -> (module, function).
LAZY_COMMANDS = {
    "bench": ("annserve.bench", "bench"),
    "bench-http": ("annserve.bench.http", "bench_http"),
    "bench-load": ("annserve.bench.load", "bench_load"),
    "bench-scaling": ("annserve.bench.scaling", "bench_scaling"),  # p50, RSS per item, restart by size
    "bench-cluster": ("annserve.cluster.bench", "bench_cluster"),  # router overhead and fan-out
    "restore": ("annserve.restore", "restore"),
}


class _LazyGroup(TyperGroup):
    def list_commands(self, ctx: typer.Context) -> list[str]:
        return [*super().list_commands(ctx), *(name for name in LAZY_COMMANDS if name not in self.commands)]

    def get_command(self, ctx: typer.Context, name: str) -> Any:
        if name in LAZY_COMMANDS and name not in self.commands:
            module, function = LAZY_COMMANDS[name]
            one = typer.Typer(add_completion=False)
            one.command(name=name)(getattr(importlib.import_module(module), function))
            self.commands[name] = typer.main.get_command(one)
        return super().get_command(ctx, name)


cli = typer.Typer(
    cls=_LazyGroup, add_completion=False, no_args_is_help=True, help="annserve: vector search service"
)


@cli.command()
def serve(
    host: Optional[str] = typer.Option(None, help="bind address [env ANNSERVE_HOST, default 127.0.0.1]"),
    port: Optional[int] = typer.Option(None, help="TCP port [env ANNSERVE_PORT, default 8000]"),
    data_dir: Optional[Path] = typer.Option(
        None, help="data directory [env ANNSERVE_DATA_DIR, default ./data]"
    ),
    workers: Optional[int] = typer.Option(
        None, min=0, max=256,
        help="processes serving the data directory on the port [env ANNSERVE_WORKERS, default 0: "
        "one per core available (a router: 1)]",
    ),
) -> None:
    """Start the HTTP service with its embedded store (nothing else to start)."""
    from pydantic import ValidationError

    from .serve import run

    overrides = {"host": host, "port": port, "data_dir": data_dir, "workers": workers}
    try:
        run({name: value for name, value in overrides.items() if value is not None})
    except ValidationError as exc:  # a bad ANNSERVE_* value: say which and why, not a traceback
        typer.echo(f"error: {settings_problems(exc)}", err=True)
        raise typer.Exit(2) from None


def settings_problems(exc: Any) -> str:
    """A pydantic ValidationError of `Settings` as one line naming each variable, its problem
    and the value that came."""
    parts = []
    for error in exc.errors():
        name = "ANNSERVE_" + "_".join(str(part) for part in error["loc"]).upper()
        parts.append(f"{name}: {error['msg']}, got {error.get('input')!r}")
    return "; ".join(parts)


def _register_client_commands() -> None:
    from .commands import register

    register(cli)


_register_client_commands()


def main() -> None:
    cli()


def own_command() -> list[str]:
    """The command that runs this very installation's `annserve`, for starting it as a child
    process: this interpreter with the CLI module, never whatever `annserve` is first on PATH
    (a venv or git worktree would otherwise start another checkout's code)."""
    return [sys.executable, "-m", "annserve.cli"]


if __name__ == "__main__":
    main()

"""What every client-side command shares: the `--url` and `--api-key` options (also from ANNSERVE_URL,
ANNSERVE_API_KEY), the client they make, and one way to report a failure (a line on stderr, exit 1)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from ..client import Client

Url = Annotated[
    str, typer.Option("--url", envvar="ANNSERVE_URL", help="the service's base URL", show_envvar=True)
]
ApiKey = Annotated[
    Optional[str],
    typer.Option(
        "--api-key", envvar="ANNSERVE_API_KEY", help="sent as X-API-Key", show_envvar=True, show_default=False
    ),
]
DEFAULT_URL = "http://127.0.0.1:8000"

# Progress bars and errors on stderr; results (tables, the final line) on stdout.
err_console = Console(stderr=True)
out_console = Console()


def connect(url: str, api_key: str | None) -> Client:
    from ..client import Client

    return Client(url, api_key=api_key)


@contextmanager
def reported_errors() -> Iterator[None]:
    """A client or input error becomes one line on stderr and exit code 1 (no traceback)."""
    from ..client import AnnserveError

    try:
        yield
    except (AnnserveError, ValueError, OSError) as exc:
        fail(str(exc))


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)

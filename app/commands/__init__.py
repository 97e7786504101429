"""The client-side commands of `annserve`: they talk to a running service over HTTP with `annserve.Client`.

`import` (importer.py, reading files through sources.py), `collections`, `search`, `rebuild` (remote.py);
the shared `--url` / `--api-key` options in options.py.
"""

from __future__ import annotations

import typer


def register(cli: typer.Typer) -> None:
    """Add the client-side commands to the `annserve` app."""
    from .importer import import_vectors
    from .remote import collections, rebuild, search

    cli.command(name="import")(import_vectors)
    cli.command(name="collections")(collections)
    cli.command(name="search")(search)
    cli.command(name="rebuild")(rebuild)

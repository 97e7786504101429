"""`annserve restore FILE --data-dir DIR [--as NAME]`: a snapshot file back into a data directory,
offline (CONTRACT section 1). Start (or restart) `annserve serve --data-dir DIR` afterwards."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def restore(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="a snapshot file (.tar)"),
    data_dir: Optional[Path] = typer.Option(
        None, "--data-dir", help="data directory [env ANNSERVE_DATA_DIR, default ./data]"
    ),
    as_name: Optional[str] = typer.Option(None, "--as", help="collection name [default: the snapshot's]"),
) -> None:
    """Restore a snapshot into a data directory, offline (the service picks it up when it starts).
    Every file is checked against the snapshot's checksums first; an existing collection of the
    same name is never overwritten."""
    from .engine.errors import Conflict
    from .engine.snapshots import restore_snapshot
    from .settings import Settings

    directory = data_dir if data_dir is not None else Settings().data_dir
    try:
        spec = restore_snapshot(file, directory, as_name)
    except (ValueError, Conflict, OSError) as exc:
        typer.echo(f"annserve restore: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(
        f"restored collection {spec.name!r} (dim {spec.dim}, {spec.metric}, {spec.shards} shard(s)) "
        f"into {Path(directory) / 'collections' / spec.name}"
    )

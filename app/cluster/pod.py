"""What a container runs besides `annserve serve`: the shard node's entrypoint, which derives the
node's place from its pod name, and the image's health check.

In a Kubernetes StatefulSet the pods are named `<statefulset>-<ordinal>` (`annserve-shard-2`)
and the hostname is the pod name, so the ordinal *is* the shard index:

    python -m annserve.cluster.pod serve      # ANNSERVE_SHARD_INDEX from $HOSTNAME, then `annserve serve`
    python -m annserve.cluster.pod health     # exit 0 when /healthz answers 200 (Docker HEALTHCHECK)

`ANNSERVE_SHARD_COUNT` comes from the ConfigMap and must equal the StatefulSet's replicas (and
the number of shards in the routers' `ANNSERVE_SHARD_URLS`); an `ANNSERVE_SHARD_INDEX` already
set is kept (a node outside a StatefulSet, docker-compose).
"""

from __future__ import annotations

import os
import re
import socket
import sys
import urllib.request
from collections.abc import Mapping

from ..cli import own_command

_ORDINAL = re.compile(r"^(?P<set>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<ordinal>\d+)$")
HEALTH_TIMEOUT_SECONDS = 2.0


def ordinal(hostname: str) -> int:
    """The StatefulSet ordinal at the end of a pod name: `annserve-shard-2` -> 2."""
    found = _ORDINAL.match(hostname.split(".")[0])
    if found is None:
        raise ValueError(
            f"hostname {hostname!r}: expected a StatefulSet pod name <name>-<ordinal> (e.g. annserve-shard-2); "
            "set ANNSERVE_SHARD_INDEX yourself outside a StatefulSet"
        )
    return int(found.group("ordinal"))


def node_environment(env: Mapping[str, str], hostname: str | None = None) -> dict[str, str]:
    """`env` with ANNSERVE_SHARD_INDEX set from the pod name unless it is set already;
    ValueError when ANNSERVE_SHARD_COUNT is missing or the ordinal is not below it."""
    out = dict(env)
    count = out.get("ANNSERVE_SHARD_COUNT", "")
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"ANNSERVE_SHARD_COUNT: expected the number of shards (>= 1), got {count!r}")
    if not out.get("ANNSERVE_SHARD_INDEX"):
        host = hostname or out.get("HOSTNAME") or socket.gethostname()
        index = ordinal(host)
        if index >= int(count):
            raise ValueError(
                f"pod {host!r} has ordinal {index}, but ANNSERVE_SHARD_COUNT is {count}: the StatefulSet's "
                "replicas and ANNSERVE_SHARD_COUNT must be equal"
            )
        out["ANNSERVE_SHARD_INDEX"] = str(index)
    return out


def health(port: int, timeout: float = HEALTH_TIMEOUT_SECONDS) -> bool:
    """Whether `GET /healthz` on 127.0.0.1:`port` answers 200 within `timeout` s."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as answer:
            return answer.status == 200
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["health"]:
        return 0 if health(int(os.environ.get("ANNSERVE_PORT", "8000"))) else 1
    if args[:1] == ["serve"]:
        try:
            env = node_environment(os.environ)
        except ValueError as exc:
            print(f"annserve shard node: {exc}", file=sys.stderr)
            return 2
        print(f"annserve shard node: shard {env['ANNSERVE_SHARD_INDEX']} of {env['ANNSERVE_SHARD_COUNT']}",
              file=sys.stderr, flush=True)  # fmt: skip
        command = own_command()
        os.execvpe(command[0], [*command, "serve", *args[1:]], env)  # replaces this process: signals reach uvicorn
    print("usage: python -m annserve.cluster.pod serve [annserve serve flags] | health", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

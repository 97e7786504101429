"""`annserve bench-http --peers redis,chroma,pgvector`: annserve against other vector services on
the same machine, the same data and the same load (command.py runs it; driver.py measures one
peer; loadgen.py holds the load generators; table.py the outputs; one module per service)."""

from __future__ import annotations

from .base import Peer, PeerMissing


def peer_classes() -> dict[str, type[Peer]]:
    """Every service by its --peers name (annserve is always run: it is the baseline)."""
    from .annserve_peer import AnnservePeer
    from .chroma_peer import ChromaPeer
    from .pgvector_peer import PgvectorPeer
    from .redis_peer import RedisPeer

    return {"annserve": AnnservePeer, "redis": RedisPeer, "pgvector": PgvectorPeer, "chroma": ChromaPeer}


def parse_peers(text: str) -> list[str]:
    """'redis,chroma' -> ['redis', 'chroma']; 'none' -> [] (annserve alone); 'all' -> every peer.
    ValueError naming the unknown ones."""
    known = [name for name in peer_classes() if name != "annserve"]
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if names == ["none"]:
        return []
    if names == ["all"]:
        return known
    unknown = [n for n in names if n not in known and n != "annserve"]
    if unknown or not names:
        raise ValueError(f"--peers: expected a comma list of {', '.join(known)} (or 'all', 'none'), "
                         f"got {text!r}")  # fmt: skip
    return [n for n in dict.fromkeys(names) if n != "annserve"]


__all__ = ["Peer", "PeerMissing", "parse_peers", "peer_classes"]

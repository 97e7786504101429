"""What a benchmark run explores: the SWEEPS table of knob values, the knobs each contender
accepts, and the grid of settings they give after `--sweep` overrides."""

from __future__ import annotations

import itertools
from typing import Any

from ..indexes import index_class

from .contenders import PEERS

POWERS_OF_2 = [2**i for i in range(9)]  # 1 .. 256
EF_VALUES = [10, 20, 40, 80, 120, 200, 400]
SEARCH_K_VALUES = [500, 1000, 2000, 3000, 4000, 6000, 8000, 12_000, 20_000, 40_000]

# The knob values swept per contender: parameter -> values; several parameters are crossed.
# Edit freely: this table is the one place that decides what a benchmark run explores.
SWEEPS: dict[str, dict[str, list[Any]]] = {
    "flat": {},
    "ivf_flat": {"nprobe": POWERS_OF_2},
    "ivf_pq": {"nprobe": POWERS_OF_2, "rerank": [1, 4, 16]},
    "pq": {"rerank": [1, 2, 4, 8, 16, 32, 64]},
    "hnsw": {"ef": EF_VALUES},
    "hnswlib": {"ef": EF_VALUES},
    # From the lsh and forest authors' GloVe 400K tuning: these bracket recall 0.8 to 0.99.
    "lsh": {"probes": [4, 8, 12, 16, 20, 24, 32, 48, 64]},
    "forest": {"search_k": SEARCH_K_VALUES},
    # Peers.
    "annoy": {"search_k": SEARCH_K_VALUES},
    "faiss_lsh": {"nbits_per_dim": [2, 4, 8, 16]},  # a build knob: one index per value
}


def known_knobs(kind: str) -> tuple[set[str], set[str]]:
    """(build, search) parameter names a contender accepts."""
    if kind in PEERS:
        return set(PEERS[kind].build_defaults), set(SWEEPS[kind]) - PEERS[kind].build_knobs
    cls = index_class(kind)
    return set(cls.build_defaults), set(cls.search_defaults)


def plan_grid(
    kind: str, overrides: dict[str, list[Any]]
) -> tuple[dict[str, list[Any]], list[str]]:
    """The knob grid for `kind`: SWEEPS with user overrides. Default knobs the kind does not know
    (yet) are dropped with a note; an unknown knob the user asked for is an error."""
    _, search_names = known_knobs(kind)
    accepted = search_names | (PEERS[kind].build_knobs if kind in PEERS else set())
    for name in overrides:
        if name not in accepted:
            raise ValueError(f"--sweep: {kind} has no knob {name!r}; expected one of {_listing(accepted)}")
    grid, notes = {}, []
    for name, values in {**SWEEPS.get(kind, {}), **overrides}.items():
        if name in accepted:
            grid[name] = values
        else:
            notes.append(f"{kind}: no search parameter {name!r} (it has {_listing(accepted)}), not swept")
    return grid, notes


def check_build_params(kind: str, params: dict[str, Any]) -> None:
    """Reject `--build-params` names the contender does not take, before anything is built."""
    build_names, _ = known_knobs(kind)
    unknown = sorted(set(params) - build_names)
    if unknown:
        raise ValueError(
            f"--build-params: unknown parameter(s) {unknown} for {kind}; "
            f"expected some of {_listing(build_names)}"
        )


def expand(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """All combinations of a knob grid; `{}` gives the single empty setting."""
    names = list(grid)
    return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def clamp_to_build(settings: list[dict[str, Any]], build: dict[str, Any]) -> list[dict[str, Any]]:
    """Cap nprobe at nlist and drop the duplicates: past nlist every list is already probed."""
    nlist = build.get("nlist")
    out: list[dict[str, Any]] = []
    for setting in settings:
        if isinstance(nlist, int) and setting.get("nprobe", 0) > nlist:
            setting = {**setting, "nprobe": nlist}
        if setting not in out:
            out.append(setting)
    return out


def _listing(names: set[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def compact(params: dict[str, Any]) -> str:
    """{"ef": 40, "M": 16} -> 'ef=40,M=16'; '-' for no parameters: one setting on one line."""
    return ",".join(f"{n}={v}" for n, v in params.items()) or "-"

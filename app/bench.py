"""Placeholder: the benchmark harness is being written (a helper replaces this file)."""


def bench() -> None:
    """Benchmark harness (not written yet)."""
    raise SystemExit("not written yet")

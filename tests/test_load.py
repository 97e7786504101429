"""`annserve bench-load` for 60 s: 32 concurrent clients of mixed traffic (searches, batch
searches, gets, upserts, deletes, a rebuild midway) against a real server with keys on. Zero
errors; the server's memory does not run away; the figure and the summary are written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from annserve.bench.load import WARMUP_SHARE, slope_per_minute, warmup_share

pytestmark = pytest.mark.integration

DURATION = 60
# A minute is short for a slope (the rebuild midway holds two main indexes for a while, a step
# up of ~10 MiB here): these bounds catch a gross leak; the 10-minute run measures the slope.
MAX_RSS_SLOPE_MIB_PER_MIN = 60.0
MAX_RSS_GROWTH_MIB = 200.0


def test_warmup_lasts_at_least_until_the_rebuild_midway_has_ended():
    assert warmup_share(60.0, None) == WARMUP_SHARE
    assert warmup_share(60.0, (34.0, 39.0)) == pytest.approx(39.0 / 60.0)
    assert warmup_share(600.0, (10.0, 20.0)) == WARMUP_SHARE  # an early rebuild: the share rules
    assert warmup_share(60.0, (50.0, 59.0)) == 0.8  # a late one: some of the run is left to fit


def test_slope_ignores_the_warmup_and_fits_a_line():
    samples = [(t, 100.0 + (50.0 if t < 20 else 0.0) + 0.5 * t) for t in range(0, 100)]
    assert abs(slope_per_minute(samples, 0.2) - 30.0) < 1e-6
    assert slope_per_minute(samples[:2], 0.2) == 0.0


def test_bench_load_for_a_minute(tmp_path):
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-c",
        "from annserve.cli import main; main()",
        "bench-load",
        "--duration",
        str(DURATION),
        "--clients",
        "32",
        "--out",
        str(out),
        "--keep",
        str(tmp_path / "work"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=DURATION + 600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "load_summary.json").read_text())
    assert summary["errors"] == 0, summary["first_errors"]
    assert summary["clients"] == 32 and summary["requests"] > 32 * 10
    assert summary["rebuild_seconds"] is not None, "no rebuild ran in the middle"
    assert {"search", "batch", "get", "upsert", "delete"} <= {op for op, p in summary["per_op"].items() if p}
    assert summary["rss_slope_mib_per_min_after_warmup"] < MAX_RSS_SLOPE_MIB_PER_MIN, summary
    assert summary["rss_mib_max"] - summary["rss_mib_first"] < MAX_RSS_GROWTH_MIB, summary
    assert (out / "load_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""The gateway capacity benchmark still measures something: a small run of it, end to end.

Its figures are recorded by hand (benchmarks/results/gateway*.md), so a change that breaks the
harness would otherwise go unnoticed until the next recording: one did (a type-checking assert
that uvloop's transport fails made every client connection count as a failure).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_small_run_holds_its_connections_and_times_every_session(tmp_path: Path) -> None:
    out = tmp_path / "gateway-small"
    subprocess.run(
        [
            sys.executable,
            "-P",
            str(ROOT / "benchmarks" / "bench_gateway.py"),
            "--connections",
            "50",
            "--sessions",
            "2",
            "--browser-sessions",
            "1",
            "--seconds",
            "2",
            "--replicas",
            "2",
            "--log-sessions",
            "3",
            "--name",
            str(out),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["hold"]["sessions_held"] == 50 and result["hold"]["failures"] == 0
    rows = {(r["gateway"], r["sessions"], r["sample_rate"]): r for r in result["latency"]}
    assert set(rows) == {
        (g, n, rate) for g in ("current", "current, 2 replicas") for n, rate in ((2, 16000), (1, 48000))
    }
    for row in rows.values():
        assert row["failures"] == 0 and row["frames"] > 0 and row["samples"] > 0
        assert row["undelivered_finals"] == 0
    # Two replicas: the client spread its sessions over both, and both gateways' CPU is counted.
    assert rows[("current, 2 replicas", 2, 16000)]["sessions_per_gateway"] == [1, 1]
    assert {"gateway-0", "gateway-1"} <= set(rows[("current, 2 replicas", 2, 16000)]["cores"])
    # Each final's round trip is split at the stand-in into the gateway's way in and way out.
    for row in rows.values():
        assert 0 <= row["in_p50_ms"] <= row["p50_ms"] and 0 <= row["out_p50_ms"] <= row["p50_ms"]
    # Full session logs in the in-memory store: objects the garbage collector walks, and its pause.
    (logs,) = result["store_gc"]
    assert logs["sessions"] == 3 and logs["tracked_objects_added"] < 100 and logs["full_collection_ms"] >= 0

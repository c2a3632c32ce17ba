"""The translation benchmark's session driver still measures what it says: warm-up segments are
sent but not timed, and the timed window starts once every session has warmed up."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from livetranslate.procs import stop
from tests.reliability.conftest import load_benchmark

bench_translate = load_benchmark("bench_translate")


@pytest.mark.timeout(300)
def test_warm_up_segments_are_sent_but_not_timed(tmp_path: Path) -> None:
    # The real offline engine behind the real service, as the benchmark runs it.
    proc, base = bench_translate.serve_translate({"LT_TRANSLATE_BACKEND": "apertium"}, tmp_path, "apertium")
    try:
        cold = asyncio.run(bench_translate.run_sessions(base, 3, 2, ["es"]))
        warm = asyncio.run(bench_translate.run_sessions(base, 3, 2, ["es"], warmup=2))
    finally:
        stop(proc)
    assert cold["segments"] == 6 and cold["quality"] == {"ok": 6}
    # 12 segments translated, only the last 2 of each session timed and counted.
    assert warm["segments"] == 6 and warm["quality"] == {"ok": 6}
    assert warm["throughput_per_s"] == pytest.approx(6 / warm["wall_s"], rel=0.01)

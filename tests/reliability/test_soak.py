"""A short soak through `livetranslate up` (benchmarks/bench_soak.py with small numbers): two
real-time sessions of real speech, the audio service and then the translation service SIGKILLed
mid-way. What a user would notice: no utterance goes without a final, no final comes twice, every
final gets its translation, the sessions end cleanly, captions come back after the restart, and
`up` leaves no orphaned process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from livetranslate_testing.speech import require_tools

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

DURATION = 40.0
KILL_AT = 12.0  # audio; translation 12 s later


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    require_tools()
    out = tmp_path_factory.mktemp("soak")
    cmd = [
        sys.executable,
        "-P",
        str(ROOT / "benchmarks" / "bench_soak.py"),
        "--sessions",
        "2",
        "--duration",
        str(DURATION),
        "--first-restart",
        str(KILL_AT),
        "--restart-every",
        str(KILL_AT),
        "--restart-stages",
        "audio,translation",
        "--max-restarts",
        "2",
        "--sample-every",
        "2",
        "--bucket",
        "10",
        "--results-dir",
        str(out),
        "--name",
        "soak-test",
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads((out / "soak-test.json").read_text())
    return result


def test_no_final_lost_or_duplicated_across_upstream_restarts(soak: dict[str, Any]) -> None:
    t = soak["totals"]
    assert [k["stage"] for k in soak["restarts"]] == ["audio", "translation"]
    kill = soak["restarts"][0]
    assert t["lost"] == 0, [s["lost_utterances"] for s in soak["sessions"]]
    assert t["duplicate_segment_ids"] == 0 and t["duplicate_texts"] == 0, soak["sessions"]
    assert t["sessions_failed"] == 0, soak["sessions"]
    assert t["translations_missing"] == 0 and t["translations_duplicated"] == 0
    # The restart happened while people were talking, and they kept talking after it.
    assert t["utterances"] >= 2 * 6
    assert all(s["audio_seconds"] > kill["t"] + 10 for s in soak["sessions"])


def test_the_gateway_recovers_and_up_restarts_both_services(soak: dict[str, Any]) -> None:
    for kill in soak["restarts"]:
        assert kill["ready_after_s"] is not None, f"up never reported {kill['stage']} ready again"
    kill = soak["restarts"][0]
    # Captions for speech begun after the kill arrived (the replayed audio and the new speech).
    assert kill["first_final_after_s"] is not None, soak["sessions"]
    # The killed translation service's apertium-apy was adopted and ended by up, not leaked.
    assert soak["orphans_ended_by_up"] >= 1
    assert soak["orphans_at_end"] == 0
    assert soak["rss"]["translation helpers"]["incarnations"] == 2
    assert soak["rss"]["gateway"]["incarnations"] == 1 and soak["rss"]["up"]["incarnations"] == 1

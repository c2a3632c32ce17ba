"""RELIABILITY.md: the generator turns recorded reliability rows into one table, and the committed
document is exactly what the generator makes from the committed results (as for the CRD)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.conftest import load_benchmark

ROOT = Path(__file__).resolve().parents[2]

report = load_benchmark("reliability_report")


def _write(path: Path, rows: list[dict[str, object]], **extra: object) -> None:
    path.write_text(
        json.dumps(
            {
                "time": "2026-11-21T22:00:00Z",
                "machine": {"cpus": 2, "cpu_model": "test", "loadavg": [1.5, 2.0, 2.25]},
                "reliability": rows,
                **extra,
            }
        )
    )


def test_table_from_sample_rows(tmp_path: Path) -> None:
    _write(
        tmp_path / "soak.json",
        [
            {
                "item": "5 Soak and load",
                "figure": "finals lost",
                "value": 0,
                "unit": "utterances",
                "target": "0",
                "met": True,
            },
            {
                "item": "5 Soak and load",
                "figure": "p95 | latency",
                "value": 1.23456,
                "unit": "s",
                "target": "",
                "met": None,
            },
        ],
        command="python -P benchmarks/bench_soak.py",
    )
    _write(
        tmp_path / "chaos.json",
        [
            {
                "item": "1 Operator chaos",
                "figure": "orphaned children",
                "value": 3,
                "unit": "",
                "target": "0",
                "met": False,
            },
        ],
    )
    (tmp_path / "audio.json").write_text(json.dumps({"runs": []}))  # not a reliability result

    text = report.render(report.load_sources(tmp_path))

    table = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert table[0] == "| item | figure | value | target | met | source |"
    # Ordered by issue item, whatever the file names.
    assert table[1] == (
        "| 1 Operator chaos | orphaned children | 3 | 0 | **no** | [chaos](benchmarks/results/chaos.md) |"
    )
    assert table[2] == (
        "| 5 Soak and load | finals lost | 0 utterances | 0 | yes | [soak](benchmarks/results/soak.md) |"
    )
    assert table[3].startswith("| 5 Soak and load | p95 \\| latency | 1.23 s | – | – |")
    assert "3 figures: 1 meet their target, 1 do not, 1 are recorded without a target." in text
    assert "Not measured yet: 2 API faults; 3 Resource fuzzing; 4 Gateway fuzzing; 6 Security." in text
    # Where and when, with the command to re-run each source (a default when none is recorded).
    assert "| soak | 2026-11-21T22:00:00Z | 1.50, 2.00, 2.25 | `python -P benchmarks/bench_soak.py` |" in text
    assert "`python -P benchmarks/bench_chaos.py`" in text
    assert "audio" not in [line.split(" | ")[0].strip("| ") for line in table]


def test_a_malformed_row_names_its_file(tmp_path: Path) -> None:
    _write(tmp_path / "security.json", [{"item": "6 Security", "value": 1}])
    with pytest.raises(report.ReportError, match=r"security\.json: reliability\[0\] needs item, figure"):
        report.load_sources(tmp_path)
    _write(tmp_path / "security.json", [{"item": "6 Security", "figure": "x", "value": 1, "met": "yes"}])
    with pytest.raises(report.ReportError, match="met must be true, false or null"):
        report.load_sources(tmp_path)


def test_committed_reliability_md_is_current() -> None:
    """What scripts/reliability.sh --table-only would write now is what is committed."""
    expected = report.render(report.load_sources(ROOT / "benchmarks" / "results"))
    assert (ROOT / "RELIABILITY.md").read_text() == expected, (
        "RELIABILITY.md is stale: run scripts/reliability.sh --table-only and commit it"
    )


def test_command_line_writes_the_file(tmp_path: Path) -> None:
    _write(tmp_path / "soak.json", [{"item": "5 Soak and load", "figure": "f", "value": 0, "met": True}])
    out = tmp_path / "RELIABILITY.md"
    done = subprocess.run(
        [
            sys.executable,
            "-P",
            str(ROOT / "benchmarks" / "reliability_report.py"),
            "--results-dir",
            str(tmp_path),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| 5 Soak and load | f | 0 | – | yes |" in out.read_text()

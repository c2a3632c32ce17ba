"""One percentile for every results file: numpy's default (linear between closest ranks); and one
provenance block at the top of every results file, so each says which benchmark, when, on what
machine and at which commit in the same keys."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from livetranslate_testing.figures import (
    PROVENANCE_KEYS,
    cpu_model,
    loadavg,
    percentile,
    provenance,
    provenance_line,
    rounded_percentile,
    write_result,
)

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
UTC_SECOND = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.mark.parametrize("q", [0.0, 0.5, 0.9, 0.95, 0.99, 1.0])
def test_percentile_matches_numpys_default(q: float) -> None:
    values = list(np.random.default_rng(3).exponential(1.0, 37))
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q * 100)))


def test_no_values_is_nan_or_null_and_a_bad_quantile_is_refused() -> None:
    assert math.isnan(percentile([], 0.5))
    assert rounded_percentile([], 0.95) is None
    assert rounded_percentile([1.23456], 0.95, digits=2) == 1.23
    with pytest.raises(ValueError, match="quantile"):
        percentile([1.0], 95)  # a percent where a fraction belongs


def test_loadavg_is_three_rounded_figures() -> None:
    load = loadavg()
    assert len(load) == 3 and all(x == round(x, 2) for x in load)


def test_cpu_model_names_the_processor_or_says_unknown() -> None:
    model = cpu_model()
    assert model and model == model.strip()
    if Path("/proc/cpuinfo").exists() and "model name" in Path("/proc/cpuinfo").read_text():
        assert model != "unknown"


def test_a_result_starts_with_its_provenance_and_a_writer_cannot_leave_it_out(tmp_path: Path) -> None:
    block = provenance("example", "python -P benchmarks/bench_example.py --fast", gpu=None)
    assert tuple(block) == PROVENANCE_KEYS and UTC_SECOND.fullmatch(block["time"])
    assert block["machine"]["gpu"] is None and len(block["machine"]["loadavg"]) == 3
    assert set(block["commit"]) == {"sha", "dirty"}  # a checkout here: the sha, and whether it is dirty
    write_result(tmp_path / "example.json", {"figures": [1, 2], **block})
    assert list(json.loads((tmp_path / "example.json").read_text())) == [*PROVENANCE_KEYS, "figures"]
    assert provenance_line(block).startswith(f"Measured {block['time']} at commit ")
    with pytest.raises(ValueError, match="provenance"):
        write_result(tmp_path / "bare.json", {"figures": [1, 2]})


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_every_recorded_result_carries_the_same_provenance_keys(path: Path) -> None:
    result = json.loads(path.read_text())
    assert tuple(result)[: len(PROVENANCE_KEYS)] == PROVENANCE_KEYS
    assert UTC_SECOND.fullmatch(result["time"]), result["time"]
    assert {"cpus", "cpu_model", "loadavg"} <= result["machine"].keys()
    assert {"sha", "dirty"} <= result["commit"].keys()
    # A file migrated to the block names the commit that recorded it, never as the measured one.
    assert result["commit"]["sha"] or result["commit"].get("recorded_in")
    assert not {"measured_at", "when", "cpus", "cpu_model", "loadavg_before"} & result.keys()

"""One percentile for every results file: numpy's default (linear between closest ranks)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from livetranslate_testing.figures import cpu_model, loadavg, percentile, rounded_percentile


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

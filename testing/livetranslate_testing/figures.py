"""The figures every benchmark and reliability run records: percentiles and the machine's load.

One definition of a percentile for all of them (linear interpolation between the closest ranks,
numpy's default), so a p95 in one results file means what it means in another.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0 <= q <= 1) of ``values``; NaN when there are none."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be within [0, 1], got {q}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def rounded_percentile(values: Sequence[float], q: float, digits: int = 3) -> float | None:
    """``percentile`` rounded for a results file; None (JSON null) when there are no values."""
    return round(percentile(values, q), digits) if values else None


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded: recorded beside every measured figure."""
    return [round(x, 2) for x in os.getloadavg()]


def cpu_model() -> str:
    """The processor's model name (Linux ``/proc/cpuinfo``), recorded beside figures that depend
    on it: the same benchmark on another machine of the fleet can differ by half."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return "unknown"

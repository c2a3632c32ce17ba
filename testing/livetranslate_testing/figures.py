"""The figures every benchmark and reliability run records: percentiles, the machine's load, and
the provenance block every results file starts with.

One definition of a percentile for all of them (linear interpolation between the closest ranks,
numpy's default), so a p95 in one results file means what it means in another. One provenance
block for all of them (``provenance``, written by ``write_result``), so every
``benchmarks/results/*.json`` says in the same keys which benchmark, when, on what machine and at
which commit it was measured: the results folder holds each benchmark's current result and git
holds the earlier ones, which only works if a file can be told apart from its predecessors.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# The keys every results file starts with, in this order (``provenance``).
PROVENANCE_KEYS = ("benchmark", "time", "machine", "commit", "command")


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


def utc_now() -> str:
    """The time in the one format every results file uses: ISO 8601, UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def commit() -> dict[str, Any]:
    """The checkout's commit and whether tracked files differ from it (untracked files do not
    count); both None outside a git checkout, rather than a guess."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if sha else None
    return {"sha": sha or None, "dirty": None if status is None else bool(status)}


def invocation() -> str:
    """How this process was started, as a command to paste: ``python -P`` and the script's path
    from the repository root, then its arguments quoted for a shell (an empty argument stays one)."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(ROOT))
    except ValueError:
        shown = sys.argv[0]
    return "python -P " + shlex.join([shown, *sys.argv[1:]])


def provenance(benchmark: str, command: str | None = None, **machine: Any) -> dict[str, Any]:
    """The block every results file starts with, taken when a run starts: the commit and the load
    that matter are the ones the figures were measured under, and a run can outlast both (the tree
    is shared). ``benchmark`` is the script's short name (``bench_<benchmark>.py``); ``command``
    re-runs it (default: this process's own command line); keyword arguments add to ``machine``
    what else the figures depend on (a GPU, a platform string).

    ``machine.loadavg`` is the 1, 5 and 15 minute load average at the start; a benchmark that also
    records it at another moment keeps its own key for that (``loadavg_after``, a row's
    ``loadavg``)."""
    return {
        "benchmark": benchmark,
        "time": utc_now(),
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "loadavg": loadavg(), **machine},
        "commit": commit(),
        "command": command if command is not None else invocation(),
    }


def write_result(path: Path, result: Mapping[str, Any], *, indent: int = 2) -> None:
    """Write a results file: the provenance block first (refused when a key of it is missing, so
    no writer can leave it out), then the benchmark's own keys in the order it built them."""
    missing = [k for k in PROVENANCE_KEYS if k not in result]
    if missing:
        raise ValueError(f"{path}: results lack the provenance keys {missing}: build them on provenance()")
    ordered = {k: result[k] for k in PROVENANCE_KEYS} | {
        k: v for k, v in result.items() if k not in PROVENANCE_KEYS
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ordered, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def provenance_line(result: Mapping[str, Any]) -> str:
    """The provenance block as the first sentence of a results report (the .md beside the JSON):
    when, at which commit, on what machine, and the load at the start."""
    m, c = result.get("machine") or {}, result.get("commit") or {}
    if c.get("sha"):
        at = f"commit {c['sha'][:10]}" + (" (dirty tree)" if c.get("dirty") else "")
    elif c.get("recorded_in"):  # a file given the block after its run (see its provenance_note)
        at = f"a commit not recorded (the file was recorded in {c['recorded_in'][:10]})"
    else:
        at = "a commit not recorded"
    cores = f"{m['cpus']} cores" if m.get("cpus") else "cores not recorded"
    if m.get("cpu_model"):
        cores += f" ({m['cpu_model']})"
    load = m.get("loadavg")
    shown = f", load average {', '.join(f'{x:.2f}' for x in load)} at the start" if load else ""
    return f"Measured {result.get('time', '?')} at {at} on {cores}{shown}"

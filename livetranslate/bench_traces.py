"""Load traces for ``livetranslate bench autoscaling``: the four built-in traces, a user's CSV,
and trace families for ``--families``: many draws, not one.

A policy tuned on four traces can hold on those four and lose on the next shape it meets. Each
family here is a generator of concurrent-session traces (one value per second) whose shape
parameters are drawn from a seed: the benchmark replays every policy on N seeds per family and
reports the distribution of the ratios against HPA and KEDA (median and 90th percentile), so one
lucky draw cannot carry a headline figure.

Seeds are split: ``DEV_SEEDS`` are the ones to look at while changing a policy, ``REPORT_SEEDS``
the ones a recorded result uses. A figure measured on the seeds a policy was developed against is
a fit, not a result.

The families (durations and ranges are the generator's; each draw picks within them):

* ``ramp``: a linear climb from a low to a high level over 10-30 min, a hold, and a ramp down;
* ``flash_crowd``: a steady base, then a jump within 10-30 s (a link shared, a keynote starts)
  decaying over 5-15 min;
* ``working_day``: six hours compressed from a working day: a morning rise, meetings starting on
  the hour, a lunch dip, an afternoon plateau and an evening decline, with noise;
* ``back_to_back``: two to four events (webinars) one after another: each fills in 1-3 min, holds
  15-25 min and empties in under a minute, the next starting 1-5 min later;
* ``bursts``: a base with bursts arriving at random (one per 5 min on average), each 1-4 min long;
* ``noisy_plateau``: a level that wanders (a random walk) with 15% multiplicative noise;
* ``quiet_night``: six hours of almost nobody (a handful of sessions, rare small spikes), then the
  morning arriving in the last hour.
"""

from __future__ import annotations

import csv
import math
import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

Trace = list[float]

DEV_SEEDS = tuple(range(30))
REPORT_SEEDS = tuple(range(1000, 1030))


# The four built-in traces of the headline figure, and a user's own trace from a CSV.


def builtin_traces(seed: int = 7) -> dict[str, list[float]]:
    """step, burst, diurnal and noisy traces of concurrent sessions, one value per second."""
    rng = random.Random(seed)
    step = [40.0 if t < 300 or t >= 1500 else 240.0 for t in range(2400)]
    burst = []
    for t in range(2400):
        phase = t % 600
        burst.append(300.0 if 200 <= phase < 320 else 60.0)
    diurnal = [20.0 + 280.0 * (0.5 - 0.5 * math.cos(2 * math.pi * t / 3600.0)) for t in range(3600)]
    noisy = []
    level = 150.0
    for _ in range(2400):
        level = min(260.0, max(60.0, level + rng.gauss(0.0, 3.0)))
        noisy.append(max(0.0, level * (1.0 + rng.gauss(0.0, 0.15))))
    return {"step": step, "burst": burst, "diurnal": diurnal, "noisy": noisy}


def load_trace(path: str) -> list[float]:
    """Read a CSV with header ``t_seconds,active_sessions`` into one value per second."""
    points: list[tuple[float, float]] = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"t_seconds", "active_sessions"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a header t_seconds,active_sessions")
        for row in reader:
            points.append((float(row["t_seconds"]), float(row["active_sessions"])))
    if not points:
        raise ValueError(f"{path}: no rows")
    points.sort()
    end = math.ceil(points[-1][0]) + 1
    out: list[float] = []
    j = 0
    for t in range(end):
        while j + 1 < len(points) and points[j + 1][0] <= t:
            j += 1
        out.append(max(0.0, points[j][1]) if points[0][0] <= t else max(0.0, points[0][1]))
    return out


# The families.


def _noisy(level: float, sd: float, rng: random.Random, course: Trace | None) -> float:
    """``level`` with multiplicative per-second noise; ``course`` (where given) records the level."""
    if course is not None:
        course.append(level)
    return max(0.0, level * (1.0 + rng.gauss(0.0, sd)))


def ramp(rng: random.Random) -> Trace:
    low, high = rng.uniform(10, 60), rng.uniform(150, 350)
    start, climb, hold = rng.uniform(120, 600), rng.uniform(600, 1800), rng.uniform(300, 900)
    fall = rng.uniform(300, 900)
    out: Trace = []
    for t in range(int(start + climb + hold + fall + 300)):
        if t < start:
            v = low
        elif t < start + climb:
            v = low + (high - low) * (t - start) / climb
        elif t < start + climb + hold:
            v = high
        else:
            v = max(low, high - (high - low) * (t - start - climb - hold) / fall)
        out.append(v)
    return out


def flash_crowd(rng: random.Random) -> Trace:
    base, jump = rng.uniform(20, 80), rng.uniform(150, 300)
    at, rise, tau = rng.uniform(300, 900), rng.uniform(10, 30), rng.uniform(300, 900)
    out: Trace = []
    for t in range(3600):
        if t < at:
            v = base
        elif t < at + rise:
            v = base + jump * (t - at) / rise
        else:
            v = base + jump * math.exp(-(t - at - rise) / tau)
        out.append(v)
    return out


def working_day(rng: random.Random, course: Trace | None = None) -> Trace:
    hours = 6
    peak = rng.uniform(120, 250)
    meetings = {h: rng.uniform(0.1, 0.5) * peak for h in range(hours) if rng.random() < 0.6}
    level = 0.0
    out: Trace = []
    for t in range(hours * 3600):
        h, minute = divmod(t / 60.0, 60.0)
        day = t / (hours * 3600)  # 0 = 8:00, 1 = 18:00
        shape = math.sin(math.pi * min(1.0, day * 1.15)) ** 0.7  # rise, plateau, decline
        if 0.4 <= day <= 0.5:
            shape *= 0.6  # lunch
        target = peak * shape + (meetings.get(int(h), 0.0) if minute < 50 else 0.0)
        level += (target - level) / 60.0  # sessions join and leave over about a minute
        out.append(_noisy(level, 0.05, rng, course))
    return out


def back_to_back(rng: random.Random, course: Trace | None = None) -> Trace:
    out: Trace = [0.0] * int(rng.uniform(60, 300))
    steady = course if course is not None else []
    for _ in range(rng.randint(2, 4)):
        level = rng.uniform(100, 300)
        fill, hold, empty = rng.uniform(60, 180), rng.uniform(900, 1500), rng.uniform(30, 60)
        out += [level * (t / fill) for t in range(int(fill))]
        steady += out[len(steady) :]
        out += [_noisy(level, 0.03, rng, steady) for _ in range(int(hold))]
        out += [level * (1.0 - t / empty) for t in range(int(empty))]
        out += [rng.uniform(0, 5)] * int(rng.uniform(60, 300))
        steady += out[len(steady) :]
    return out


def bursts(rng: random.Random) -> Trace:
    base = rng.uniform(40, 100)
    out = [base] * 3600
    t = rng.expovariate(1 / 300)
    while t < 3600:
        size, length = rng.uniform(100, 250), int(rng.uniform(60, 240))
        for k in range(int(t), min(3600, int(t) + length)):
            out[k] += size
        t += length + rng.expovariate(1 / 300)
    return out


def noisy_plateau(rng: random.Random, course: Trace | None = None) -> Trace:
    level, lo, hi = rng.uniform(100, 250), 50.0, 300.0
    out: Trace = []
    for _ in range(3600):
        level = min(hi, max(lo, level + rng.gauss(0.0, 3.0)))
        out.append(_noisy(level, 0.15, rng, course))
    return out


def quiet_night(rng: random.Random) -> Trace:
    out: Trace = []
    morning = rng.uniform(100, 200)
    for t in range(6 * 3600):
        if t < 5 * 3600:
            v = rng.uniform(0, 4) + (rng.uniform(10, 30) if rng.random() < 1 / 1800 else 0.0)
        else:
            v = morning * (t - 5 * 3600) / 3600
        out.append(v)
    return out


# The families whose draws add per-second noise to a course; the others are their own course.
NOISY = ("working_day", "back_to_back", "noisy_plateau")

FAMILIES: dict[str, Callable[[random.Random], Trace]] = {
    "ramp": ramp,
    "flash_crowd": flash_crowd,
    "working_day": working_day,
    "back_to_back": back_to_back,
    "bursts": bursts,
    "noisy_plateau": noisy_plateau,
    "quiet_night": quiet_night,
}


def generate(family: str, seed: int) -> Trace:
    """One draw of ``family``: the same seed gives the same trace."""
    return FAMILIES[family](random.Random(f"{family}:{seed}"))


def generate_with_course(family: str, seed: int) -> tuple[Trace, Trace]:
    """The draw ``generate`` gives and its course: the demand without its per-second noise (what
    no policy can forecast), for the frontier in ``frontier``."""
    rng = random.Random(f"{family}:{seed}")
    if family not in NOISY:
        trace = FAMILIES[family](rng)
        return trace, list(trace)
    course: Trace = []
    trace = FAMILIES[family](rng, course)  # type: ignore[call-arg]
    return trace, course


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs; 0 when neither violated, infinite when only we did."""
    if theirs > 0:
        return ours / theirs
    return 0.0 if ours == 0 else math.inf


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile, nearest rank (an infinite ratio stays infinite)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def distribution(family: str, seeds: Sequence[int], params: Any, noise_offset: int = 0) -> dict[str, Any]:
    """Every policy on ``family`` for each seed: the ratios of ours to HPA's and KEDA's SLO-violation
    seconds and replica-seconds, their median and 90th percentile."""
    from livetranslate import bench

    per_seed: list[dict[str, Any]] = []
    for seed in seeds:
        trace = generate(family, seed)
        spec = bench.sized_spec(params, max(trace))
        results = {
            r.policy: r for r in bench.run({family: trace}, params, spec, noise_offset=noise_offset + seed)
        }
        ours = results["livetranslate"]
        per_seed.append(
            {
                "seed": seed,
                "seconds": len(trace),
                "peak_sessions": round(max(trace), 1),
                **{f"{p}_slo_violation_s": round(r.slo_violation_s, 1) for p, r in results.items()},
                **{f"{p}_replica_seconds": round(r.replica_seconds) for p, r in results.items()},
                "slo_vs_hpa": ratio(ours.slo_violation_s, results["hpa"].slo_violation_s),
                "slo_vs_keda": ratio(ours.slo_violation_s, results["keda"].slo_violation_s),
                "replicas_vs_hpa": ratio(ours.replica_seconds, results["hpa"].replica_seconds),
                "replicas_vs_keda": ratio(ours.replica_seconds, results["keda"].replica_seconds),
            }
        )
    summary = {}
    for key in ("slo_vs_hpa", "slo_vs_keda", "replicas_vs_hpa", "replicas_vs_keda"):
        values = [s[key] for s in per_seed]
        summary[key] = {"median": statistics.median(values), "p90": quantile(values, 0.9)}
    met = (
        summary["slo_vs_hpa"]["median"] <= 0.5
        and summary["slo_vs_hpa"]["p90"] <= 0.8
        and summary["replicas_vs_hpa"]["median"] <= 1.0
    )
    return {"family": family, "seeds": list(seeds), "summary": summary, "met": met, "per_seed": per_seed}


# What perfect measurement reaches.

FRONTIER_HEADROOMS = tuple(round(0.1 * k, 1) for k in range(8))  # 0 .. 70% above the course


def frontier(
    family: str, seeds: Sequence[int], params: Any, headrooms: Sequence[float] = FRONTIER_HEADROOMS
) -> dict[str, Any]:
    """The reactive oracle (``bench_policies.ReactiveOracle``) on ``family`` at each headroom,
    against HPA on the same draws and metric noise as ``distribution``: per headroom, the median
    and 90th percentile of its SLO-violation ratio and the median replica-seconds ratio, and the
    cheapest headroom that meets the target, if one does. A family it cannot meet at <= 1.0x
    HPA's replica-seconds cannot be met by any policy that reacts to demand as it stands."""
    from livetranslate import bench
    from livetranslate.bench_model import simulate
    from livetranslate.bench_policies import HpaPolicy, ReactiveOracle

    ratios: dict[float, list[tuple[float, float]]] = {h: [] for h in headrooms}
    for seed in seeds:
        trace, course = generate_with_course(family, seed)
        spec = bench.sized_spec(params, max(trace))
        noise_seed = 1000 + seed  # what ``distribution`` gives its first trace
        hpa = simulate(trace, HpaPolicy(spec), params, spec, noise_seed=noise_seed)
        for h in headrooms:
            oracle = simulate(
                trace, ReactiveOracle(spec, params, course, h), params, spec, noise_seed=noise_seed
            )
            ratios[h].append(
                (
                    ratio(oracle.slo_violation_s, hpa.slo_violation_s),
                    ratio(oracle.replica_seconds, hpa.replica_seconds),
                )
            )
    rows: list[dict[str, Any]] = []
    for h in headrooms:
        slo, cost = [r[0] for r in ratios[h]], [r[1] for r in ratios[h]]
        median, p90 = statistics.median(slo), quantile(slo, 0.9)
        rows.append(
            {
                "headroom": h,
                "slo_vs_hpa": {"median": median, "p90": p90},
                "replicas_vs_hpa": {"median": statistics.median(cost)},
                "slo_met": median <= 0.5 and p90 <= 0.8,
            }
        )
    cheapest = next((r for r in rows if r["slo_met"]), None)
    return {
        "family": family,
        "seeds": list(seeds),
        "rows": rows,
        "cheapest_slo_met": cheapest,
        "met": cheapest is not None and cheapest["replicas_vs_hpa"]["median"] <= 1.0,
    }

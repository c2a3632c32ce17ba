"""``livetranslate bench autoscaling``: our autoscaling policy against the incumbents.

Load traces (concurrent real-time sessions over time; bench_traces.py) are replayed through a
discrete-time (1 s) fluid queueing model of the pipeline, once per policy (bench_policies.py):

* **livetranslate**: the operator's own pure decision function
  (``livetranslate.operator.scaling.policy.decide``), fed Signals built from the simulated metrics;
* **hpa**: Kubernetes' HorizontalPodAutoscaler algorithm on CPU utilisation per stage:
  desired = ceil(current x metric / target), 10% tolerance, 15 s sync, 300 s scale-down
  stabilization (largest recommendation of the window), scale-up at most max(4 pods, 100%) per
  15 s (Kubernetes' defaults.go; the 60 s in the API field comment is stale), not-yet-ready
  pods counted at 0% when scaling up (as the HPA controller does);
* **keda**: a KEDA-style Prometheus scaler: the stage's demand (offered work in replica units,
  a rate query that does not saturate) polled every 30 s, desired = ceil(value / threshold),
  scale-down only after a 300 s cooldown, through the same HPA scale-up limits KEDA's HPA has.

The model, its metrics and the simulator are in bench_model.py; this module runs every policy on
every trace and reports the comparison (a table, a plot, JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from livetranslate.api import TranslationPipelineSpec, parse_spec
from livetranslate.bench_model import (
    ModelParams,
    RunResult,
    StageModel,
    _measured_rates,
    default_params,
    simulate,
)
from livetranslate.bench_policies import STAGES, HpaPolicy, KedaPolicy, LiveTranslatePolicy, Policy
from livetranslate.bench_traces import builtin_traces, load_trace

log = logging.getLogger(__name__)


def bench_spec(
    audio_max: int = 40, translation_max: int = 24, gateway_max: int = 4
) -> TranslationPipelineSpec:
    """The pipeline the benchmark scales: wide replica ranges so bounds do not decide the result."""
    return parse_spec(
        {
            "targetLanguages": ["es"],
            "audio": {"replicas": {"min": 1, "max": audio_max}},
            "translation": {"replicas": {"min": 1, "max": translation_max}, "fallbackModels": []},
            "gateway": {"replicas": {"min": 1, "max": gateway_max}},
            "scaling": {
                "interval": "15s",
                "scaleDownStabilization": "300s",
                "latencySLO": {"p95Seconds": 1.5},
            },
        }
    )


def sized_spec(params: ModelParams, peak_sessions: float) -> TranslationPipelineSpec:
    """``bench_spec`` with each max at least twice what the peak needs at full utilisation, so
    measured (possibly small) per-replica rates never pin every policy at its max."""

    def need(stage: StageModel) -> int:
        return math.ceil(2 * peak_sessions * stage.work_per_session / stage.capacity_per_replica)

    return bench_spec(
        max(40, need(params.audio)), max(24, need(params.translation)), max(4, need(params.gateway))
    )


def run(
    traces: dict[str, list[float]], params: ModelParams, spec: TranslationPipelineSpec, noise_offset: int = 0
) -> list[RunResult]:
    """Every policy on every trace; ``noise_offset`` draws another metric-noise series."""
    results = []
    for i, (name, trace) in enumerate(traces.items()):
        for factory in (lambda: LiveTranslatePolicy(spec), lambda: HpaPolicy(spec), lambda: KedaPolicy(spec)):
            policy: Policy = factory()
            res = simulate(trace, policy, params, spec, noise_seed=1000 + i + noise_offset)
            res.trace = name
            results.append(res)
    return results


def summary(results: list[RunResult]) -> tuple[float, float]:
    ours = [r for r in results if r.policy == "livetranslate"]
    hpa = [r for r in results if r.policy == "hpa"]
    v_ours, v_hpa = sum(r.slo_violation_s for r in ours), sum(r.slo_violation_s for r in hpa)
    rs_ours, rs_hpa = sum(r.replica_seconds for r in ours), sum(r.replica_seconds for r in hpa)
    return (
        v_ours / v_hpa if v_hpa else (0.0 if v_ours == 0 else float("inf")),
        rs_ours / rs_hpa if rs_hpa else float("inf"),
    )


def table(results: list[RunResult]) -> str:
    lines = [f"{'trace':<10} {'policy':<14} {'slo_violation_s':>16} {'replica_seconds':>16} {'actions':>8}"]
    for r in results:
        lines.append(
            f"{r.trace:<10} {r.policy:<14} {r.slo_violation_s:>16.0f} {r.replica_seconds:>16.0f} "
            f"{r.actions:>8d}"
        )
    return "\n".join(lines)


def plot(results: list[RunResult], path: str, slo: float) -> None:
    """Replicas (all stages) and caption p95 over time, one column per trace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(dict.fromkeys(r.trace for r in results))
    fig, axes = plt.subplots(2, len(traces), figsize=(4.2 * len(traces), 6.5), squeeze=False, sharex="col")
    colours = {"livetranslate": "tab:green", "hpa": "tab:blue", "keda": "tab:orange"}
    for col, trace in enumerate(traces):
        top, bottom = axes[0][col], axes[1][col]
        for r in (r for r in results if r.trace == trace):
            total = [sum(v) for v in zip(*(r.series[f"replicas_{s}"] for s in STAGES), strict=True)]
            top.plot(r.series["t"], total, label=r.policy, color=colours.get(r.policy), lw=1.2)
            bottom.plot(
                r.series["t"],
                [min(v, 10.0) for v in r.series["latency"]],
                color=colours.get(r.policy),
                lw=1.0,
            )
        first = next(r for r in results if r.trace == trace)
        twin = top.twinx()
        twin.plot(first.series["t"], first.series["sessions"], color="grey", lw=0.8, ls=":")
        twin.set_ylabel("sessions", color="grey")
        bottom.axhline(slo, color="red", ls="--", lw=0.8)
        top.set_title(trace)
        top.set_ylabel("replicas (all stages)")
        bottom.set_ylabel("caption p95 (s, capped at 10)")
        bottom.set_xlabel("time (s)")
        bottom.set_yscale("log")
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _autoscaling(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="livetranslate bench autoscaling",
        description="Replay load traces under our policy, HPA and KEDA.",
    )
    parser.add_argument("--trace", help="CSV with header t_seconds,active_sessions (replaces the built-ins)")
    parser.add_argument(
        "--plot", default="docs/img/autoscaling.png", help="where to write the PNG ('' = none)"
    )
    parser.add_argument(
        "--results-dir",
        default="benchmarks/results",
        help="workload benchmark results to read service rates from",
    )
    parser.add_argument("--json", default="", help="also write the figures as JSON here")
    parser.add_argument(
        "--families",
        type=int,
        default=0,
        metavar="N",
        help="also replay N seeds of every trace family (ramps, flash crowds, working "
        "days, ...) and report the distribution of the ratios (0 = off)",
    )
    parser.add_argument(
        "--dev-seeds",
        action="store_true",
        help="with --families: the seeds to develop a policy against, not the reported ones",
    )
    parser.add_argument(
        "--frontier",
        action="store_true",
        help="with --families: also sweep a reactive oracle (exact demand, no foresight) over its "
        "headroom: the cost/SLO frontier no reactive policy gets past",
    )
    args = parser.parse_args(argv)
    params = _measured_rates(default_params(bench_spec()), Path(args.results_dir))
    traces = {Path(args.trace).stem: load_trace(args.trace)} if args.trace else builtin_traces()
    spec = sized_spec(params, max(max(t) for t in traces.values()))
    results = run(traces, params, spec)
    x, y = summary(results)
    print(
        f"service rates per replica: audio {params.audio.capacity_per_replica:g} sessions, "
        f"translation {params.translation.capacity_per_replica:g} req/s, gateway "
        f"{params.gateway.capacity_per_replica:g} sessions ({params.source}); SLO p95 {params.slo_p95_s}s"
    )
    print(table(results))
    if args.plot:
        try:
            plot(results, args.plot, params.slo_p95_s)
            print(f"plot: {args.plot}")
        except ImportError:
            # matplotlib comes with the dev extra; the table and figures do not need it.
            print("plot: skipped (matplotlib is not installed)")
    families = _families(params, args.families, args.dev_seeds) if args.families > 0 else []
    frontier = _frontier(params, args.families, args.dev_seeds) if args.families > 0 and args.frontier else []
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "params": asdict(params),
                    "loadavg": list(os.getloadavg()),
                    "results": [{k: v for k, v in asdict(r).items() if k != "series"} for r in results],
                    "slo_violation_ratio_vs_hpa": x,
                    "replica_seconds_ratio_vs_hpa": y,
                    "families": families,
                    "frontier": frontier,
                },
                indent=2,
            )
        )
    print(f"slo_violation_ratio_vs_hpa={x:.3f} replica_seconds_ratio_vs_hpa={y:.3f}")
    return 0


def _families(params: ModelParams, n: int, dev: bool) -> list[dict[str, Any]]:
    from livetranslate import bench_traces

    seeds = (bench_traces.DEV_SEEDS if dev else bench_traces.REPORT_SEEDS)[:n]
    out = []
    print(
        f"trace families, {len(seeds)} {'development' if dev else 'report'} seeds each "
        "(ratios of ours to HPA / KEDA: median and 90th percentile)"
    )
    print(f"{'family':<14} {'SLO vs HPA':>14} {'SLO vs KEDA':>14} {'replica-s vs HPA':>17} {'target':>7}")
    for family in bench_traces.FAMILIES:
        d = bench_traces.distribution(family, seeds, params)
        s = d["summary"]
        cell = {k: f"{v['median']:.2f} / {v['p90']:.2f}" for k, v in s.items()}
        print(
            f"{family:<14} {cell['slo_vs_hpa']:>14} {cell['slo_vs_keda']:>14} {cell['replicas_vs_hpa']:>17} "
            f"{'met' if d['met'] else 'MISS':>7}"
        )
        out.append(d)
    return out


def _frontier(params: ModelParams, n: int, dev: bool) -> list[dict[str, Any]]:
    from livetranslate import bench_traces

    seeds = (bench_traces.DEV_SEEDS if dev else bench_traces.REPORT_SEEDS)[:n]
    print("reactive oracle (exact demand, no foresight): cheapest headroom meeting the SLO side")
    out = []
    for family in bench_traces.FAMILIES:
        f = bench_traces.frontier(family, seeds, params)
        best = f["cheapest_slo_met"]
        where = (
            f"+{best['headroom']:.0%}: replica-s {best['replicas_vs_hpa']['median']:.2f} x HPA"
            if best
            else "not within the sweep"
        )
        print(f"{family:<14} {where:<32} {'met' if f['met'] else 'MISS':>7}")
        out.append(f)
    return out


BENCHMARKS: dict[str, Callable[[list[str]], int]] = {"autoscaling": _autoscaling}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: livetranslate bench NAME [options]\n\nbenchmarks: " + ", ".join(BENCHMARKS))
        return 0 if argv else 2
    bench = BENCHMARKS.get(argv[0])
    if bench is None:
        print(
            f"livetranslate bench: unknown benchmark {argv[0]!r} (have: {', '.join(BENCHMARKS)})",
            file=sys.stderr,
        )
        return 2
    return bench(argv[1:])

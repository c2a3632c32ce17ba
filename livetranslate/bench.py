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

The model is the same for every policy, and so are its metrics: every signal a policy reads is
what Prometheus would hold (scraped every 15 s, a 30 s rate window, the same multiplicative noise
series per trace for all policies). New replicas serve only after a start-up delay per stage
(model load). Per-replica service rates come from ``benchmarks/results/*.json`` of the workload
benchmarks when present (keys named in ``_measured_rates``), else from the documented defaults.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import random
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from livetranslate.api import TranslationPipelineSpec, parse_spec
from livetranslate.bench_policies import (
    STAGES,
    HpaPolicy,
    KedaPolicy,
    LiveTranslatePolicy,
    Observed,
    Policy,
    bounds,
    clamp,
)
from livetranslate.bench_traces import builtin_traces, load_trace

log = logging.getLogger(__name__)

SCRAPE_S = 15
RATE_WINDOW_S = 30
LATENCY_WINDOW_S = 60  # the autoscaler's histogram rate window at a 15 s interval (4 x 15 s)


# ------------------------------------------------------------------------------------- the model


@dataclass
class StageModel:
    """One stage as a pool of identical replicas serving a fluid of work."""

    capacity_per_replica: float  # work units per second one ready replica serves at saturation
    base_latency_s: float  # latency of one item on an idle replica
    startup_s: float  # from scale-up to serving (image pull, model load)
    work_per_session: float  # work units per second one active session offers


@dataclass
class ModelParams:
    audio: StageModel
    translation: StageModel
    gateway: StageModel
    slo_p95_s: float = 1.5
    noise: float = 0.08  # standard deviation of the multiplicative metric noise
    source: str = "defaults"

    def stage(self, name: str) -> StageModel:
        return {"audio": self.audio, "translation": self.translation, "gateway": self.gateway}[name]


def default_params(spec: TranslationPipelineSpec) -> ModelParams:
    """Documented defaults (docs/scaling.md): what one replica of each stage sustains.

    audio: streaming Whisper re-decodes a growing window, so a 2-core replica with RTF about 0.03
    per pass keeps up with about 16 concurrent sessions; translation: a final segment every ~3 s
    per session and target language, one vLLM replica (7B, continuous batching) about 12
    requests/s; gateway: maxSessionsPerReplica sessions (refusing beyond).
    """
    targets = len(spec.targetLanguages)
    return ModelParams(
        audio=StageModel(
            capacity_per_replica=16.0, base_latency_s=0.45, startup_s=30.0, work_per_session=1.0
        ),
        translation=StageModel(
            capacity_per_replica=12.0, base_latency_s=0.30, startup_s=90.0, work_per_session=targets / 3.0
        ),
        gateway=StageModel(
            capacity_per_replica=float(spec.gateway.maxSessionsPerReplica),
            base_latency_s=0.05,
            startup_s=5.0,
            work_per_session=1.0,
        ),
        slo_p95_s=spec.scaling.latencySLO.p95Seconds,
    )


def _measured_rates(params: ModelParams, results_dir: Path) -> ModelParams:
    """Take per-replica rates from the workload benchmarks' JSON results where they exist.

    Recognised keys (first found wins): ``sessions_per_replica`` or ``realtime_sessions`` in an
    audio result; ``requests_per_second`` or ``throughput_rps`` in a translation result.
    """
    sources = []
    for path in sorted(glob.glob(str(results_dir / "*.json"))):
        name = Path(path).name
        if name.startswith("autoscaling"):
            continue
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        flat = _flatten(data)
        if name.startswith("audio"):
            for key in ("sessions_per_replica", "realtime_sessions"):
                if isinstance(flat.get(key), int | float) and flat[key] > 0:
                    params.audio.capacity_per_replica = float(flat[key])
                    sources.append(f"{name}:{key}")
                    break
        if name.startswith("translat"):
            for key in ("requests_per_second", "throughput_rps"):
                if isinstance(flat.get(key), int | float) and flat[key] > 0:
                    params.translation.capacity_per_replica = float(flat[key])
                    sources.append(f"{name}:{key}")
                    break
    if sources:
        params.source = "measured (" + ", ".join(sources) + "), others defaults"
    return params


def _flatten(data: Mapping[str, Any], out: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {} if out is None else out
    for key, value in data.items():
        if isinstance(value, Mapping):
            _flatten(value, out)
        else:
            out.setdefault(key, value)
    return out


def _queueing_factor(rho: float) -> float:
    """p95 inflation of a stage's latency with its utilisation (an M/M/c-like knee)."""
    rho = min(max(rho, 0.0), 0.95)
    return 1.0 + 0.3 * rho / (1.0 - rho)


@dataclass
class StageState:
    replicas: int
    ready_at: list[float] = field(default_factory=list)  # one entry per replica
    backlog: float = 0.0

    def ready(self, t: float) -> int:
        return sum(1 for r in self.ready_at if r <= t)

    def set_replicas(self, n: int, t: float, startup: float) -> None:
        if n > self.replicas:
            self.ready_at += [t + startup] * (n - self.replicas)
        elif n < self.replicas:
            # Kubernetes removes not-ready pods first, then the newest.
            self.ready_at.sort()
            self.ready_at = self.ready_at[:n]
        self.replicas = n


@dataclass
class Truth:
    """The true per-second state of the simulated pipeline (what metrics are scraped from)."""

    caption_p95: float
    translation_p95: float
    queue: dict[str, float]
    util: dict[str, float]  # offered / ready capacity, uncapped
    sessions: float
    refused: bool
    served: dict[str, float] = field(default_factory=dict)  # work units completed this second


# --------------------------------------------------------------------------------- the simulator


@dataclass
class RunResult:
    policy: str
    trace: str
    slo_violation_s: float
    replica_seconds: float
    actions: int
    series: dict[str, list[float]]


def simulate(
    trace: list[float], policy: Policy, params: ModelParams, spec: TranslationPipelineSpec, noise_seed: int
) -> RunResult:
    """Replay ``trace`` (sessions per second) under ``policy``; metrics lag and noise are shared."""
    rng = random.Random(noise_seed)
    n_scrapes = len(trace) // SCRAPE_S + 2
    noise = [
        {k: 1.0 + rng.gauss(0.0, params.noise) for k in ("cap", "tr", "qa", "qt", "ua", "ut", "ug", "s")}
        for _ in range(n_scrapes)
    ]
    state = {s: StageState(0) for s in STAGES}
    for s in STAGES:
        lo, _ = bounds(spec, s)
        start = clamp(
            max(
                1,
                math.ceil(
                    trace[0] * params.stage(s).work_per_session / (params.stage(s).capacity_per_replica * 0.7)
                ),
            ),
            lo,
            bounds(spec, s)[1],
        )
        state[s].set_replicas(start, -1e9, 0.0)
    history: list[Truth] = []
    obs: Observed | None = None
    violation = 0.0
    replica_s = 0.0
    actions = 0
    series: dict[str, list[float]] = {
        "t": [],
        "sessions": [],
        "latency": [],
        **{f"replicas_{s}": [] for s in STAGES},
    }
    for t, sessions in enumerate(trace):
        ready = {s: state[s].ready(t) for s in STAGES}
        latency = 0.05
        util: dict[str, float] = {}
        queue: dict[str, float] = {}
        per_stage: dict[str, float] = {}
        served: dict[str, float] = {}
        for s in STAGES:
            m = params.stage(s)
            offered = sessions * m.work_per_session
            cap = ready[s] * m.capacity_per_replica
            st = state[s]
            if s == "gateway":
                util[s] = offered / cap if cap else float("inf")
                queue[s] = 0.0
                per_stage[s] = m.base_latency_s
                continue
            served[s] = min(st.backlog + offered, cap)
            st.backlog = max(0.0, st.backlog + offered - cap)
            rho = offered / cap if cap else float("inf")
            util[s] = rho
            queue[s] = st.backlog
            drain = st.backlog / cap if cap else 30.0
            per_stage[s] = m.base_latency_s * _queueing_factor(rho) + drain
        refused = sessions > ready["gateway"] * params.gateway.capacity_per_replica
        latency = per_stage["audio"] + per_stage["translation"] + per_stage["gateway"]
        truth = Truth(
            caption_p95=latency,
            translation_p95=per_stage["translation"],
            queue=queue,
            util=util,
            sessions=sessions,
            refused=refused,
            served=served,
        )
        history.append(truth)
        if latency > params.slo_p95_s or refused:
            violation += 1.0
        replica_s += sum(state[s].replicas for s in STAGES)
        if t % SCRAPE_S == 0:
            obs = _observe(t, history[-LATENCY_WINDOW_S:], noise[t // SCRAPE_S], params)
        wanted = policy.decide(float(t), obs, {s: state[s].replicas for s in STAGES}, ready)
        for s in STAGES:
            if wanted[s] != state[s].replicas:
                actions += 1
                state[s].set_replicas(wanted[s], float(t), params.stage(s).startup_s)
        if t % 5 == 0:
            series["t"].append(float(t))
            series["sessions"].append(sessions)
            series["latency"].append(latency)
            for s in STAGES:
                series[f"replicas_{s}"].append(float(state[s].replicas))
    return RunResult(policy.name, "", violation, replica_s, actions, series)


def _observe(t: int, history: list[Truth], nz: dict[str, float], params: ModelParams) -> Observed:
    """What each kind of metric shows at a scrape (the same for every policy).

    Gauges (queue depth, sessions, real-time factor, KV-cache use) are the value at the scrape;
    CPU utilisation (metrics-server) and a KEDA rate query average the last RATE_WINDOW_S;
    latency percentiles come from histograms over the LATENCY_WINDOW_S rate window.
    """
    now = history[-1]
    rate_w = history[-RATE_WINDOW_S:]
    latency_w = history[-LATENCY_WINDOW_S:]

    def avg(window: list[Truth], f: Callable[[Truth], float]) -> float:
        return sum(min(f(w), 1e6) for w in window) / len(window)

    cpu_util = {s: avg(rate_w, lambda w, s=s: w.util[s]) for s in STAGES}  # type: ignore[misc]
    sessions_rate = avg(rate_w, lambda w: w.sessions)
    demand = {
        s: sessions_rate * params.stage(s).work_per_session / params.stage(s).capacity_per_replica
        for s in STAGES
    }
    return Observed(
        time=float(t),
        caption_p95=avg(latency_w, lambda w: w.caption_p95) * nz["cap"],
        translation_p95=avg(latency_w, lambda w: w.translation_p95) * nz["tr"],
        queue={
            "audio": now.queue["audio"] * nz["qa"],
            "translation": now.queue["translation"] * nz["qt"],
            "gateway": 0.0,
        },
        util={s: min(now.util[s], 1e6) * nz["u" + s[0]] for s in STAGES},
        cpu={s: min(1.0, cpu_util[s] * nz["u" + s[0]]) for s in STAGES},
        demand={s: demand[s] * nz["u" + s[0]] for s in STAGES},
        sessions=now.sessions * nz["s"],
        throughput={
            s: avg(rate_w, lambda w, s=s: w.served.get(s, 0.0)) * nz["u" + s[0]]  # type: ignore[misc]
            for s in ("audio", "translation")
        },
    )


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

"""The pipeline model ``livetranslate bench autoscaling`` replays load traces through: a
discrete-time (1 s) fluid queueing model, and the simulator that runs one policy on one trace.

The model is the same for every policy, and so are its metrics: every signal a policy reads is
what Prometheus would hold (scraped every 15 s, a 30 s rate window, the same multiplicative noise
series per trace for all policies). New replicas serve only after a start-up delay per stage
(model load). Per-replica service rates come from ``benchmarks/results/*.json`` of the workload
benchmarks when present (keys named in ``_measured_rates``), else from the documented defaults.
"""

from __future__ import annotations

import glob
import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from livetranslate.api import TranslationPipelineSpec
from livetranslate.bench_policies import STAGES, Observed, Policy, bounds, clamp

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


# (result file name prefix, stage, the keys that give its rate per replica, first found wins)
_RATE_KEYS = (
    ("audio", "audio", ("sessions_per_replica", "realtime_sessions")),
    ("translat", "translation", ("requests_per_second", "throughput_rps")),
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
        for prefix, stage, keys in _RATE_KEYS:
            if not name.startswith(prefix):
                continue
            for key in keys:
                if isinstance(flat.get(key), int | float) and flat[key] > 0:
                    params.stage(stage).capacity_per_replica = float(flat[key])
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

"""The first steps of ``decide()``: how loaded each stage is, as a ratio to its target.

Each step takes what the steps before it returned and gives back a new value; none changes its
inputs, so ``decide()`` reads top to bottom as the order in which the estimate is built.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist

from livetranslate.api import TranslationPipelineSpec
from livetranslate.operator.scaling import capacity, demand
from livetranslate.operator.scaling.capacity import Plan
from livetranslate.operator.scaling.config import PolicyConfig
from livetranslate.operator.scaling.demand import Forecast, Learned, Trend
from livetranslate.operator.scaling.signals import MISSING, STAGES, Sample, Signals
from livetranslate.operator.scaling.state import Current, History

Why = tuple[str, str]  # (reason: the low-cardinality metric label, message: in words)

SLO_PERCENTILE = 0.95
"""The percentile ``spec.scaling.latencySLO.p95Seconds`` bounds: capacity covers demand up to
this percentile of its scatter (the headroom), so the SLO's own percentile sizes the headroom."""


@dataclass(frozen=True)
class Interval:
    """What every step reads: the spec, the clock, what the policy remembers, and its tuning."""

    spec: TranslationPipelineSpec
    history: History
    now: float
    cfg: PolicyConfig

    @property
    def started(self) -> float:
        return self.history.started if self.history.started is not None else self.now

    @property
    def slo(self) -> float:
        return self.spec.scaling.latencySLO.p95Seconds

    @property
    def stabilization(self) -> float:
        return self.spec.scaling.scale_down_stabilization_seconds

    @property
    def interval_s(self) -> float:
        return self.spec.scaling.interval_seconds

    @property
    def targets(self) -> dict[str, float]:
        """The utilisation each stage with a cost per session is sized for (its plan's target)."""
        tu = self.spec.scaling.targetUtilization
        return {"audio": tu.audio, "translation": tu.translation}

    @property
    def z(self) -> float:
        """Standard normal deviates of headroom: the SLO's percentile (1.645 for a p95)."""
        return NormalDist().inv_cdf(SLO_PERCENTILE)

    def range(self, stage: str) -> tuple[int, int]:
        spec = self.spec
        r = {
            "audio": spec.audio.replicas,
            "translation": spec.translation.replicas,
            "gateway": spec.gateway.replicas,
        }
        return r[stage].min, r[stage].max


@dataclass(frozen=True)
class Observed:
    """The interval's signals, read once, and the replicas they came from."""

    caption: float  # caption p95 (0 when nobody talked)
    translation_p95: float
    sessions: float
    waiting: float  # vLLM requests waiting
    rtf: float | None
    kv: float | None
    mem: float | None  # GPU memory fraction
    replicas: Mapping[str, int]  # asked for
    ready: Mapping[str, int]  # ready now
    # The replicas the signals came from: ready now and in the last ``settle_intervals`` intervals
    # (rate windows lag). Sizing from these, not from the replica count just set, keeps the
    # policy from adding replicas again while the ones it added are starting or not yet measured.
    source: Mapping[str, int]
    depths: Mapping[str, float]  # queued items per stage (translation: its queue + vLLM's waiting)
    backed_up: Mapping[str, bool]  # over ``queue_per_replica`` items per replica
    trend: Trend  # the sessions over the trend window, now included
    samples: Trend  # the sessions over the longer of the trend and stabilization windows
    forecast: Forecast  # the sessions' level, trend and scatter (demand.forecast)


@dataclass(frozen=True)
class Loads:
    """Load per stage as a ratio to its target (1.0 = at target), and why."""

    ratio: Mapping[str, float]
    why: Mapping[str, Why]


@dataclass(frozen=True)
class Demand:
    """The per-stage demand estimate: the load to size for, and the steady-state part of it (no
    queues, breaches or trends) that scale-down recommends."""

    loads: Loads
    steady: Mapping[str, float]


@dataclass(frozen=True)
class Breach:
    """The load after the SLO pressure, and the stage blamed for a caption-latency breach."""

    loads: Loads
    bottleneck: str | None


@dataclass(frozen=True)
class Outlook:
    """The load with the demand trend, and where each stage counts as over target."""

    loads: Loads
    rising: Mapping[str, bool]  # the sessions rise significantly for this stage's lookahead
    threshold: Mapping[str, float]  # a load above this is over target


def _value(sample: Sample) -> float | None:
    return sample.value if sample.ok else None


def observe(ctx: Interval, signals: Signals, current: Current) -> Observed:
    """The signals, the replicas they came from, and the session trend (history plus now)."""
    cfg, history = ctx.cfg, ctx.history
    sessions = signals.sessions_active.value or 0.0
    waiting = (signals.vllm_requests_waiting.value if signals.vllm_requests_waiting.ok else 0.0) or 0.0
    replicas: dict[str, int] = {s: max(0, int(current.replicas.get(s, 0))) for s in STAGES}
    ready: dict[str, int] = {
        s: replicas[s]
        if current.ready is None
        else max(0, min(replicas[s], int(current.ready.get(s, replicas[s]))))
        for s in STAGES
    }
    depths = {
        "audio": signals.queue("audio").value or 0.0,
        "translation": (signals.queue("translation").value or 0.0) + waiting,
    }
    # The trend is fitted over the trend window; the scatter is measured over the stabilization
    # window too (a steadier figure: the window keeps the largest need it saw).
    memory = max(cfg.trend_window_s, ctx.stabilization)
    samples = tuple((t, v) for t, v in history.sessions if ctx.now - t <= memory) + ((ctx.now, sessions),)
    trend = tuple((t, v) for t, v in samples if ctx.now - t <= cfg.trend_window_s)
    return Observed(
        caption=signals.caption_p95.or_zero_if_idle() or 0.0,
        translation_p95=signals.translation_p95.or_zero_if_idle() or 0.0,
        sessions=sessions,
        waiting=waiting,
        rtf=_value(signals.audio_rtf),
        kv=_value(signals.kv_cache_usage),
        mem=_value(signals.gpu_memory_fraction),
        replicas=replicas,
        ready=ready,
        source={s: min([ready[s], *(r.get(s, ready[s]) for r in history.ready)]) for s in STAGES},
        depths=depths,
        backed_up={s: depths.get(s, 0.0) > cfg.queue_per_replica * max(1, replicas[s]) for s in STAGES},
        trend=trend,
        samples=samples,
        forecast=demand.forecast(trend, samples, ctx.z, cfg),
    )


def signal_loads(ctx: Interval, obs: Observed) -> Loads:
    """Load per stage from signals that do not saturate: gateway sessions per slot, audio
    real-time factor, translation KV-cache use (its p95 against its latency budget without one)."""
    cfg, tu = ctx.cfg, ctx.spec.scaling.targetUtilization
    capacity = ctx.spec.gateway.maxSessionsPerReplica * max(1, obs.replicas["gateway"])
    rtf = obs.rtf or 0.0
    budget = ctx.slo * cfg.translation_budget_share
    translation = obs.translation_p95 / budget
    why = ("translation_latency", f"translation p95 {obs.translation_p95:.2f}s > budget {budget:.2f}s")
    if obs.kv is not None:
        # vLLM's KV-cache use grows with concurrent sequences: the translation stage's
        # utilisation. Where it is known it sizes the stage; latency (not linear in replicas)
        # only counts when it is over budget.
        kv_load = obs.kv / tu.translation
        translation = max(kv_load, translation if translation > 1.0 else 0.0)
        if kv_load >= translation:
            waiting = f" with {obs.waiting:.0f} requests waiting" if obs.waiting else ""
            why = ("kv_cache", f"KV cache {obs.kv:.0%} > target {tu.translation:.0%}{waiting}")
    return Loads(
        ratio={
            "gateway": obs.sessions / (capacity * tu.gateway),
            "audio": rtf / tu.audio,
            "translation": translation,
        },
        why={
            "gateway": ("capacity", f"{obs.sessions:.0f} sessions on {capacity} session slots"),
            "audio": ("realtime_factor", f"audio real-time factor {rtf:.2f} > {tu.audio}"),
            "translation": why,
        },
    )


def _startup(
    ctx: Interval, obs: Observed
) -> tuple[dict[str, float], dict[str, tuple[tuple[float, int], ...]]]:
    """Start-up per stage, measured from our own scale-ups to their replicas being ready."""
    startup = dict(ctx.history.startup)
    pending_up: dict[str, tuple[tuple[float, int], ...]] = {}
    for stage, batches in ctx.history.pending_up.items():
        waiting_for: list[tuple[float, int]] = []
        for asked_at, asked in batches:
            if obs.replicas[stage] < asked:
                continue  # scaled down (or bounded) before they were ready
            if obs.ready[stage] >= asked:
                took = ctx.now - asked_at
                old = startup.get(stage)
                startup[stage] = took if old is None else old + ctx.cfg.startup_learn_rate * (took - old)
                continue
            waiting_for.append((asked_at, asked))
        if waiting_for:
            pending_up[stage] = tuple(waiting_for)
    return startup, pending_up


def learn(ctx: Interval, obs: Observed, signals: Signals) -> Learned:
    """The demand model, throughput and start-up, learned where the signals allow.

    Replica-utilisation per session is learned while utilisation is in its linear range. When a
    stage saturates (the KV cache tops out at 100%, a queue grows) it bounds how many replicas
    the current sessions need, so a backlog cannot inflate the step beyond what draining it
    takes. Throughput per replica is learned while the replica count is settled (the rate window
    then covers the replicas it came from).
    """
    cfg = ctx.cfg
    per_session, per_replica = dict(ctx.history.per_session), dict(ctx.history.per_replica)
    learned = dict(ctx.history.learned)
    demand_load: dict[str, float] = {}
    for stage, u in {"audio": obs.rtf, "translation": obs.kv}.items():
        ready, sessions = obs.ready[stage], obs.sessions
        steady = ready == obs.replicas[stage] and ready > 0
        if u is not None and sessions >= 1 and steady and cfg.learn_min_util <= u <= cfg.learn_max_util:
            per_session[stage], learned[stage] = demand.learn(
                per_session.get(stage), learned.get(stage, 0), u * ready / sessions, cfg
            )
        if stage in per_session and sessions > 0:
            demand_load[stage] = (
                sessions * per_session[stage] / (max(1, obs.source[stage]) * ctx.targets[stage])
            )
        rate = _value(signals.rate(stage))
        settled = ready == obs.replicas[stage] == obs.source[stage] > 0
        if rate is not None and rate > 0 and u is not None and u >= cfg.learn_min_util and settled:
            key = "rate:" + stage
            sample = rate / (ready * min(1.0, u))
            per_replica[stage], learned[key] = demand.learn(
                per_replica.get(stage), learned.get(key, 0), sample, cfg
            )
    startup, pending_up = _startup(ctx, obs)
    return Learned(startup, pending_up, per_session, per_replica, learned, demand_load)


def plan(ctx: Interval, obs: Observed, learned: Learned) -> dict[str, Plan]:
    """Replicas planned from capacity, for stages whose cost and throughput are known."""
    return capacity.plans(
        ctx.history, ctx.now, obs.forecast, obs.depths, learned, ctx.targets, ctx.interval_s, ctx.cfg
    )


def _sized(ctx: Interval, f: Forecast, p: Plan) -> str:
    """The sessions a plan is sized for, in words: level, the rise over the horizon, headroom."""
    words = f"{f.level:.0f} sessions"
    if f.slope > 0:
        warm_up = p.horizon_s - ctx.interval_s
        words += (
            f" rising {f.slope * 60:.1f}/min ({f.at(p.horizon_s):.0f} in {p.horizon_s:.0f}s: "
            f"warm-up {warm_up:.0f}s + one interval)"
        )
    if f.headroom >= 0.5:
        words += f" +{f.headroom:.0f} for their scatter at p{SLO_PERCENTILE * 100:.0f}"
    return words


def stage_demand(
    ctx: Interval, obs: Observed, learned: Learned, plans: Mapping[str, Plan], loads: Loads
) -> Demand:
    """Per-stage demand: the plan where there is one, queues bounded by the demand model."""
    cfg, history = ctx.cfg, ctx.history
    ratio, why = dict(loads.ratio), dict(loads.why)
    bound = learned.demand_load.get("translation")
    latency = why["translation"][0] == "translation_latency"
    if latency and bound is not None and ratio["translation"] > bound * cfg.queue_drain_headroom:
        # Latency over budget that the demand does not explain is a backlog draining (it lags in
        # the rate window): it gets the same bound as a queue.
        ratio["translation"] = max(1.0 + 2 * cfg.tolerance, bound * cfg.queue_drain_headroom)
    # Planned stages: the sessions' need, plus catch-up replicas while a backlog would not drain.
    for stage, p in plans.items():
        ratio[stage] = max(p.need, p.demand + p.catch_up) / max(1, obs.source[stage])
        need = f"{_sized(ctx, obs.forecast, p)} need {p.need:.1f}"
        why[stage] = ("demand", f"{need} {stage} replicas of {p.capacity:.1f} sessions each")
        if p.catch_up > 0:
            backlog = f"{p.backlog:.0f} queued {stage} items would take {p.drain_s:.0f}s to drain"
            catch_up = f"plus {p.catch_up:.1f} to catch up within {cfg.plan_drain_s:.0f}s"
            why[stage] = ("backlog", f"{backlog}: {need} replicas {catch_up}")
    steady = {**ratio, **{s: p.steady / max(1, obs.source[s]) for s, p in plans.items()}}
    # Backed-up queues: a stage with more than queue_per_replica items per replica is over target
    # in proportion, whatever its other signals say (they lag; a queue does not) -- unless the
    # queue is already draining fast enough (capacity added earlier has caught up with demand).
    for stage, depth in obs.depths.items():
        if stage in plans:
            continue  # the plan sizes this stage's backlog from its throughput
        drain_rate = -(demand.queue_rate(history, stage, depth, ctx.now) or 0.0)
        if drain_rate > 0 and depth / drain_rate <= cfg.drain_target_s:
            continue
        qload = depth / (cfg.queue_per_replica * max(1, obs.replicas[stage]))
        if stage in learned.demand_load:
            qload = min(qload, learned.demand_load[stage] * cfg.queue_drain_headroom)
        if qload > ratio[stage] and qload > 1.0:
            ratio[stage] = qload
            why[stage] = ("queue", f"{depth:.0f} queued {stage} items on {obs.replicas[stage]} replicas")
    return Demand(Loads(ratio, why), steady)


def refused_sessions(ctx: Interval, obs: Observed, signals: Signals, demand: Demand) -> Demand:
    """Sessions a stage refused at its measured capacity are demand it did not carry.

    The sessions refused over one interval join the live ones, against what all the stage's
    replicas sustain together (their published capacity); without a published capacity a stage
    that refuses is at least over target. Refusals count in the steady part too, so scale-down
    never takes away the replicas that would have carried them.

    Translation refuses requests, not sessions, and each comes from a session the gateway already
    counts as live: its refusals do not join the live sessions (that would count their askers
    twice), which are sized against its capacity as they are. The reason reports the requests in
    sessions at the rate one session sends them (translations per second over the target languages
    and the live sessions); the gateway's retries make that an upper bound, so it is capped at the
    live sessions.
    """
    ratio, why, steady = dict(demand.loads.ratio), dict(demand.loads.why), dict(demand.steady)
    for stage in ("gateway", "audio", "translation"):
        refused_per_s = _value(signals.refusals.get(stage, MISSING)) or 0.0
        if refused_per_s <= 0:
            continue
        refused = refused_per_s * ctx.interval_s
        capacity = _value(signals.capacity.get(stage, MISSING))
        wanted, what = obs.sessions + refused, f"{refused:.0f} sessions"
        if stage == "translation":
            wanted, what = obs.sessions, f"{refused:.0f} requests"
            served_per_s = _value(signals.rate(stage))
            if served_per_s and served_per_s > 0 and obs.sessions > 0:
                per_session = served_per_s / (max(1, len(ctx.spec.targetLanguages)) * obs.sessions)
                sessions = min(obs.sessions, refused_per_s / per_session)
                what += f" (the work of about {sessions:.0f} of {obs.sessions:.0f} sessions)"
        if capacity and capacity > 0:
            load = wanted / capacity
        else:
            load = 1.0 + 2 * ctx.cfg.tolerance
        load = max(load, 1.0 + 2 * ctx.cfg.tolerance)
        if load > ratio[stage]:
            ratio[stage] = load
            why[stage] = (
                "admission_refused",
                f"{stage} refused {what} in {ctx.interval_s:.0f}s at its measured capacity",
            )
        steady[stage] = max(steady.get(stage, 0.0), load)
    return Demand(Loads(ratio, why), steady)


def slo_pressure(ctx: Interval, obs: Observed, plans: Mapping[str, Plan], loads: Loads) -> Breach:
    """A caption-latency breach is blamed on the bottleneck, not on every stage.

    The stage nearest to (or over) its own target explains the breach; ties go to the one with
    the larger share of the latency. Latency is not linear in replicas, so a breach that the
    stage's own load does not already explain adds a modest step (+20%, at least one replica).
    """
    breach = obs.caption / ctx.slo if ctx.slo > 0 else 0.0
    if breach <= 1.0:
        return Breach(loads, None)
    t_share = min(1.0, obs.translation_p95 / obs.caption) if obs.caption > 0 else 0.0
    t_score = loads.ratio["translation"] + t_share
    a_score = loads.ratio["audio"] + (1.0 - t_share)
    bottleneck = "translation" if t_score >= a_score else "audio"
    bump = min(breach, 1.0 + 2 * ctx.cfg.tolerance)
    # A breach within the latency window of a planned stage's backlog is that backlog's (the
    # histogram still holds its delays): the plan already drains it.
    seen = ctx.history.backlog_at.get(bottleneck)
    recent_backlog = bottleneck in plans and (
        obs.backed_up[bottleneck]
        or (seen is not None and ctx.now - seen <= ctx.cfg.backlog_blame_intervals * ctx.interval_s)
    )
    if bump <= loads.ratio[bottleneck] or recent_backlog:
        return Breach(loads, bottleneck)
    message = f"caption p95 {obs.caption:.2f}s > SLO {ctx.slo:.2f}s, {bottleneck} is the bottleneck"
    return Breach(
        Loads({**loads.ratio, bottleneck: bump}, {**loads.why, bottleneck: ("latency_slo", message)}),
        bottleneck,
    )


def demand_trend(ctx: Interval, obs: Observed, plans: Mapping[str, Plan], loads: Loads) -> Outlook:
    """Size for where the sessions will be when new replicas are ready, and say where a stage
    counts as over target.

    A planned stage's need already holds the forecast (the rise over its warm-up, and headroom);
    a rise is named as the reason where the sessions as they stand would not have grown the stage.
    A stage without a plan is sized from its load ratio: the rise over its warm-up multiplies it,
    but only ahead of a breach (a stage already over target is sized from what it sees now).
    """
    cfg, history, f = ctx.cfg, ctx.history, obs.forecast
    ratio, why = dict(loads.ratio), dict(loads.why)
    rising: dict[str, bool] = {}
    threshold: dict[str, float] = {}
    for s in STAGES:
        ahead = capacity.horizon(history, s, ctx.interval_s, cfg)
        rising[s] = f.slope > 0
        # A planned stage grows as soon as its need exceeds what runs, except within a
        # stabilization window of shrinking: coming back up then takes a rise beyond the
        # tolerance band (a need on a replica boundary, 4.0 +- noise, must not go 5, 4, 5 window
        # after window).
        shrunk = ctx.now - history.last_down.get(s, -math.inf) < ctx.stabilization
        p = plans.get(s)
        if p is not None:
            threshold[s] = 1.0 + (cfg.tolerance if shrunk else 0.0)
            if (
                f.slope > 0
                and ratio[s] > threshold[s] >= p.steady / max(1, obs.source[s])
                and why[s][0] == "demand"
            ):
                why[s] = ("demand_trend", why[s][1])
            continue
        threshold[s] = 1.0 + cfg.tolerance
        growth = demand.growth(obs.trend, obs.sessions, ahead, cfg)
        if growth > 1.0 and ratio[s] <= threshold[s] < ratio[s] * growth:
            why[s] = (
                "demand_trend",
                f"sessions rising ({obs.sessions:.0f}, x{growth:.2f} in {ahead:.0f}s)",
            )
            ratio[s] *= growth
    return Outlook(Loads(ratio, why), rising, threshold)

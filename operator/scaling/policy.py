"""The autoscaler's decision: a pure function of (spec, signals, current state, history, clock).

No I/O and no clock reads here, so the same function runs in the operator's timer, in unit tests
on hand-made signal histories and in ``livetranslate bench autoscaling`` against the incumbents.

How it decides, per interval:

1. **No data, no action.** If a signal the decision needs is missing, stale or Prometheus is
   unreachable, nothing changes and ``ScalingActive=False`` says which signal and why.
2. **Load per stage**, as a ratio to its target (1.0 = at target), from signals that do not
   saturate: gateway = sessions / (maxSessionsPerReplica x replicas x 0.8); audio = real-time
   factor / AUDIO_TARGET_RTF; translation = KV-cache use / KV_CACHE_TARGET (the translation p95
   over its latency budget where there is no KV cache, and whenever it is over that budget).
   Queues on a stage add to its ratio.
3. **The plan: sessions lead.** Sessions arrive before latency rises. Where the stage's cost per
   session (replica-utilisation per session, learned while utilisation is in its linear range)
   and its throughput per replica are known, its replicas are planned: need = session level x
   cost / target, the level being the session count with scrape noise averaged out (a step is
   followed at once). A backlog gets catch-up replicas: enough to drain what will be queued by
   the time they are ready (one measured start-up) within PLAN_DRAIN_S, or by when the slowest
   backlogged stage can have drained, whichever is later; they are released once the backlog
   has drained and are never held by the stabilization window. A significant rise of sessions
   (not a step that already happened) is planned for one start-up plus settling ahead.
4. **The bottleneck.** When caption p95 breaches the SLO, the stage whose own load and latency
   share explain it gets the breach (+20%, at least one replica) unless a backlog of that stage,
   being drained by the plan, explains it; the other stage is not scaled for it.
5. **Up fast, down slow.** A planned stage grows as soon as its need exceeds what runs (the need
   is already smoothed), other stages when over 1 + tolerance for UP_SUSTAIN intervals or 1.5x
   over at once. Scale-down goes to the largest need recommended during
   ``scaleDownStabilization``, only after a full window, while caption p95 is within the SLO and
   sessions are not trending up; within a window of a scale-down, coming back up takes a rise
   beyond the tolerance band. Always clamped to the stage's [min, max].
6. **Model placement.** GPU memory over ``highWatermark`` (or the KV cache saturated with
   requests waiting) for ``UP_SUSTAIN`` intervals moves translation to the next
   ``fallbackModels`` entry *instead of* adding translation replicas that would not fit; GPU
   memory below ``lowWatermark`` for the whole stabilization window moves it one step back
   towards the primary model. With no fallback left, replicas are added (they land on other
   GPUs, where the scheduler finds ``nvidia.com/gpu`` free).
7. **NPU exhaustion.** Audio on NPU needing more replicas while the cluster has no allocatable
   NPU left moves audio to the next entry of ``audio.devices`` (GPU or CPU).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from livetranslate.api import Device, Stage, TranslationPipelineSpec
from livetranslate.operator.scaling.signals import STAGES, Signals

Direction = Literal["up", "down", "none"]

# Targets the load ratios are measured against (documented in docs/scaling.md).
GATEWAY_TARGET_UTILISATION = 0.8  # headroom for reconnect storms before sessions are refused
# Audio runs hotter than translation: it has most of the replicas, and its decoder batches keep
# up to about RTF 0.8; translation's KV cache needs room for long segments. (Both chosen on the
# benchmark's traces; see docs/scaling.md.)
AUDIO_TARGET_RTF = 0.75  # decoder time per audio second that still absorbs bursts
KV_CACHE_SATURATED = 0.9  # vLLM preempts requests close to a full KV cache
KV_CACHE_TARGET = 0.68  # KV-cache use a translation replica is sized for
TRANSLATION_BUDGET_SHARE = 0.5  # translation's share of the caption-latency SLO
QUEUE_PER_REPLICA = 4.0  # queued items per replica above which a stage is backed up
TOLERANCE = 0.1  # no action while load is within 1 +- TOLERANCE of target
UP_SUSTAIN = 2  # consecutive intervals over target before scaling up
IMMEDIATE_LOAD = 1.5  # ...unless this far over: no noise explains 50% (act at once)
MAX_STEP_FACTOR = 4.0  # at most x4 in one step (stages without a plan)
DRAIN_TARGET_S = 60.0  # a backlog that drains within this needs no more replicas
TREND_WINDOW_S = 180.0  # sessions history the demand slope is fitted over
MIN_TREND_POINTS = 4
TREND_SIGNIFICANCE = 2.5  # standard errors a slope must clear to count as a trend
LOOKAHEAD_S = 60.0  # trend lookahead until a start-up has been measured
MAX_GROWTH = 1.5  # the trend never more than x1.5 a stage's need
MODEL_SETTLE_INTERVALS = 4  # intervals after a model change before translation is resized
SETTLE_INTERVALS = 2  # intervals before a newly ready replica shows in rate windows
LEARN_MIN_UTIL, LEARN_MAX_UTIL = 0.1, 0.9  # where utilisation is linear in sessions
LEARN_RATE = 0.05  # learned figures: a moving average over the last ~20 samples
QUEUE_DRAIN_HEADROOM = 1.25  # a backlog may add this much over the demand model's need
DOWN_CALM = 1.0  # caption p95 must stay under this share of the SLO to shrink
LEVEL_WINDOW_S = 90.0  # session samples averaged into the demand level
STEP_SIGMAS, STEP_FRACTION = 4.0, 0.4  # a jump this far beyond the typical one is a step
LOOKAHEAD_INTERVALS = SETTLE_INTERVALS + 1  # trend lookahead beyond a start-up: settle + decide
PLAN_TOLERANCE = 0.0  # a planned stage grows once its smoothed need exceeds what runs
PLAN_SUSTAIN = 1  # ...in one interval (the level already averages the noise)
PLAN_DRAIN_S = 20.0  # a backlog is drained within this once catch-up replicas are ready
STARTUP_PRIOR_S = 60.0  # replica start-up assumed until one has been measured
# Start-up priors per stage until measured (conservative: image pull and model load; a vLLM
# replica loading a 7B model takes a minute or two, a Whisper replica well under one).
STARTUP_PRIORS = {"audio": 45.0, "translation": 120.0}
STARTUP_LEARN_RATE = 0.5


@dataclass(frozen=True)
class Current:
    """What runs now: replicas per stage, the active translation model, the audio device."""

    replicas: Mapping[str, int]
    model: str
    # Ready replicas per stage (Deployment status); defaults to ``replicas``. The load signals
    # come from ready pods only, so sizing from them avoids re-adding replicas still starting.
    ready: Mapping[str, int] | None = None
    audio_device: Device = "cpu"
    translation_backend: str = "vllm"


@dataclass(frozen=True)
class History:
    """What the policy remembers between intervals (held by the timer; empty after a restart,
    which only makes it more cautious: no scale-down until a full window has been seen)."""

    started: float | None = None
    over_streak: Mapping[str, int] = field(default_factory=dict)
    # (time, {stage: recommended replicas}) for the stabilization window.
    recommendations: tuple[tuple[float, Mapping[str, int]], ...] = ()
    last_up: Mapping[str, float] = field(default_factory=dict)
    last_down: Mapping[str, float] = field(default_factory=dict)
    memory_high_streak: int = 0
    memory_low_since: float | None = None
    last_model_change: float | None = None
    # Queue depths seen last interval (to tell a draining backlog from a growing one).
    queues: Mapping[str, float] = field(default_factory=dict)
    queues_time: float | None = None
    # (time, active sessions) over the trend window: the demand's slope.
    sessions: tuple[tuple[float, float], ...] = ()
    # Ready replicas per stage at the last SETTLE_INTERVALS intervals.
    ready: tuple[Mapping[str, int], ...] = ()
    # Learned replica-utilisation per active session, per stage (the demand model).
    per_session: Mapping[str, float] = field(default_factory=dict)
    # Measured seconds from a scale-up to its replicas being ready, per stage, and the scale-up
    # being timed: (time, replicas it asked for).
    startup: Mapping[str, float] = field(default_factory=dict)
    pending_up: Mapping[str, tuple[tuple[float, int], ...]] = field(default_factory=dict)
    # Learned items one replica completes per second at full utilisation, per stage.
    per_replica: Mapping[str, float] = field(default_factory=dict)
    # Samples behind each learned figure (its running mean's weight; see _learn).
    learned: Mapping[str, int] = field(default_factory=dict)
    # Stages running catch-up replicas for a backlog (released once it has drained), and when
    # each stage last had a backlog (a latency breach inside the latency window after it is the
    # backlog's, already being drained, not a reason for more steady replicas).
    catch_up: Mapping[str, int] = field(default_factory=dict)
    backlog_at: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Plan:
    """A stage's replicas planned from its demand: what the sessions need, and catch-up."""

    demand: float  # replicas' worth of work the sessions offer (at 100% utilisation)
    need: float  # replicas at the target utilisation
    catch_up: float  # extra replicas to drain the backlog within PLAN_DRAIN_S
    backlog: float  # the backlog expected when new replicas are ready, in items
    drain_s: float  # seconds the backlog would take to drain with ``need`` replicas


@dataclass(frozen=True)
class StageDecision:
    stage: Stage
    current: int
    desired: int
    direction: Direction
    reason: str  # short, low-cardinality: the metric label
    message: str  # in words, for status and Events

    @property
    def changed(self) -> bool:
        return self.desired != self.current


@dataclass(frozen=True)
class Decision:
    time: float
    active: bool  # the ScalingActive condition
    condition_reason: str
    message: str
    stages: Mapping[str, StageDecision]
    history: History
    model: str | None = None  # new active translation model, when it changes
    model_reason: str = ""
    model_message: str = ""
    audio_device: Device | None = None
    audio_device_message: str = ""

    @property
    def changes(self) -> list[StageDecision]:
        return [d for d in self.stages.values() if d.changed]


def _fit(
    points: tuple[tuple[float, float], ...], significance: float = TREND_SIGNIFICANCE
) -> tuple[float, float] | None:
    """Least-squares (slope, fitted value at the last point) of a rise noise cannot explain.

    None unless there are MIN_TREND_POINTS samples and the slope is positive by more than
    ``significance`` standard errors.
    """
    n = len(points)
    if n < MIN_TREND_POINTS:
        return None
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var <= 0:
        return None
    slope = sum((t - mt) * (v - mv) for t, v in points) / var
    residual = sum((v - (mv + slope * (t - mt))) ** 2 for t, v in points) / max(1, n - 2)
    if slope <= 0 or slope <= significance * math.sqrt(residual / var):
        return None
    return slope, mv + slope * (points[-1][0] - mt)


def _since_step(trend: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
    """The samples after the last jump no noise explains (demand stepped there): all, if none.

    A jump is a change between consecutive samples more than STEP_SIGMAS times the typical
    (median) change and more than STEP_FRACTION of the level.
    """
    values = [v for _, v in trend]
    jumps = [abs(b - a) for a, b in itertools.pairwise(values)]
    if len(jumps) < 3:
        return trend
    typical = sorted(jumps)[len(jumps) // 2]
    for i in range(len(jumps) - 1, -1, -1):
        if jumps[i] > max(STEP_SIGMAS * typical, STEP_FRACTION * max(values[i], values[i + 1], 1.0)):
            return trend[i + 1 :]
    return trend


def _growth(trend: tuple[tuple[float, float], ...], sessions: float, lookahead_s: float) -> float:
    """Factor by which demand grows over ``lookahead_s`` at the least-squares slope of the trend.

    Only growth counts (a falling trend never hastens a scale-down), it needs MIN_TREND_POINTS
    samples so one noisy scrape makes no slope, and it is capped at MAX_GROWTH. The recent half
    of the window must rise at least half as steeply: a step in demand that already happened
    fits a slope over the whole window, but it is not going to continue.
    """
    if sessions <= 0 or len(_since_step(trend)) < len(trend):
        return 1.0
    whole = _fit(trend)
    recent = _fit(trend[len(trend) // 2 :], significance=0.0)
    if whole is None or recent is None or recent[0] < 0.5 * whole[0]:
        return 1.0
    slope, level = whole
    return min(MAX_GROWTH, max(1.0, (level + slope * lookahead_s) / max(level, 1e-9)))


def _learn(old: float | None, n: int, sample: float) -> tuple[float, int]:
    """A running mean of the first samples, then a moving average over the last 1/LEARN_RATE.

    Each sample is noisy (two scraped gauges divided); averaging many keeps the demand model's
    error small, and the moving average still follows a real change (another model, a slower node).
    """
    if old is None or n <= 0:
        return sample, 1
    n += 1
    return old + max(LEARN_RATE, 1.0 / n) * (sample - old), n


def _clamp(value: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, value))


def _ranges(spec: TranslationPipelineSpec) -> dict[str, tuple[int, int]]:
    return {
        "audio": (spec.audio.replicas.min, spec.audio.replicas.max),
        "translation": (spec.translation.replicas.min, spec.translation.replicas.max),
        "gateway": (spec.gateway.replicas.min, spec.gateway.replicas.max),
    }


def _level(trend: tuple[tuple[float, float], ...]) -> float:
    """The session count now, with the scrape noise averaged out but no lag on a step.

    The mean of the samples of the last LEVEL_WINDOW_S since demand last stepped (the fitted
    value now where they rise significantly): a step in demand is followed at once.
    """
    now_t = trend[-1][0]
    recent = tuple(p for p in _since_step(trend) if now_t - p[0] <= LEVEL_WINDOW_S)
    fit = _fit(recent)
    if fit is not None:
        return fit[1]
    return sum(v for _, v in recent) / len(recent)


def _until_ready(history: History, stage: str, now: float) -> float:
    """Seconds until replicas asked for now (or still starting) serve: the measured start-up."""
    startup = history.startup.get(stage, STARTUP_PRIORS.get(stage, STARTUP_PRIOR_S))
    batches = [t for t, _ in history.pending_up.get(stage, ())]
    return max(0.0, startup - (now - min(batches))) if batches else startup


def _plans(
    history: History,
    now: float,
    sessions: float,
    per_session: Mapping[str, float],
    per_replica: Mapping[str, float],
    depths: Mapping[str, float],
    targets: Mapping[str, float],
) -> dict[str, _Plan]:
    """Replicas planned from the demand, for stages whose cost per session and throughput are known.

    Sessions arrive before latency rises, so the need (sessions x learned cost / target) leads.
    A backlog is drained on purpose: the queue keeps growing at its current rate until new
    replicas are ready (one measured start-up), and catch-up replicas are added so that, served
    at the stage's measured throughput per replica, it drains while the sessions keep arriving.
    Captions are late until every stage has drained, so each stage drains by when the slowest
    backlogged stage can have drained (its start-up plus PLAN_DRAIN_S): catching up faster than
    that costs replicas and shortens no breach. Catch-up replicas go once the backlog has drained.
    """
    work: dict[str, tuple[float, float, float]] = {}  # stage: (backlog, replica-seconds, until ready)
    for stage in targets:
        if stage not in per_session or stage not in per_replica or sessions <= 0:
            continue
        depth = depths.get(stage, 0.0)
        growth = 0.0
        prev = history.queues.get(stage)
        if prev is not None and history.queues_time is not None and now > history.queues_time:
            growth = max(0.0, (depth - prev) / (now - history.queues_time))
        until_ready = _until_ready(history, stage, now)
        backlog = depth + growth * until_ready
        work[stage] = (backlog, backlog / per_replica[stage], until_ready)
    backlogged = [w[2] for w in work.values() if w[1] > 0]
    deadline = max(backlogged, default=0.0) + PLAN_DRAIN_S
    out: dict[str, _Plan] = {}
    for stage, (backlog, replica_s, until_ready) in work.items():
        demand = sessions * per_session[stage]
        need = demand / targets[stage]
        spare = need - demand
        drain_s = replica_s / spare if spare > 0 else math.inf
        catch_up = max(0.0, demand + replica_s / max(PLAN_DRAIN_S, deadline - until_ready) - need)
        out[stage] = _Plan(demand, need, catch_up, backlog, drain_s)
    return out


def model_chain(spec: TranslationPipelineSpec) -> list[str]:
    """The primary model, then the fallbacks in order, without repeats."""
    chain: list[str] = []
    for name in [spec.translation.model, *spec.translation.fallbackModels]:
        if name not in chain:
            chain.append(name)
    return chain


def required_signals(current: Current) -> tuple[str, ...]:
    """Signals without which no decision is safe for this pipeline."""
    names: tuple[str, ...] = (
        "caption_p95",
        "translation_p95",
        "sessions_active",
        "queue:audio",
        "queue:translation",
    )
    return names


def _hold(now: float, current: Current, history: History, reason: str, message: str) -> Decision:
    stages: dict[str, StageDecision] = {
        s: StageDecision(s, current.replicas.get(s, 0), current.replicas.get(s, 0), "none", reason, message)
        for s in STAGES
    }
    # Streaks restart: a breach seen before a data gap is not "sustained" across it.
    return Decision(
        time=now,
        active=False,
        condition_reason=reason,
        message=message,
        stages=stages,
        history=replace(history, over_streak={}, memory_high_streak=0),
    )


def decide(
    spec: TranslationPipelineSpec, signals: Signals, current: Current, history: History, now: float
) -> Decision:
    """One autoscaling step. Pure: the caller persists ``Decision.history`` for the next call."""
    scaling = spec.scaling
    slo = scaling.latencySLO.p95Seconds
    stabilization = scaling.scale_down_stabilization_seconds
    started = history.started if history.started is not None else now

    if signals.error:
        return _hold(
            now,
            current,
            replace(history, started=started),
            "PrometheusUnreachable",
            f"holding replicas: Prometheus at {scaling.prometheusUrl} unreachable ({signals.error})",
        )
    problems = signals.describe_problems(required_signals(current))
    if problems:
        return _hold(
            now,
            current,
            replace(history, started=started),
            "MetricsUnavailable",
            "holding replicas: no usable data for " + "; ".join(problems),
        )

    caption = signals.caption_p95.or_zero_if_idle() or 0.0
    translation_p95 = signals.translation_p95.or_zero_if_idle() or 0.0
    sessions = signals.sessions_active.value or 0.0
    q_audio = signals.queue("audio").value or 0.0
    q_translation = signals.queue("translation").value or 0.0
    waiting = signals.vllm_requests_waiting.value if signals.vllm_requests_waiting.ok else 0.0
    waiting = waiting or 0.0
    replicas: dict[str, int] = {s: max(0, int(current.replicas.get(s, 0))) for s in STAGES}
    ranges = _ranges(spec)

    # --- load ratio per stage (1.0 = at target) and why -----------------------------------
    load: dict[str, float] = {}
    why: dict[str, tuple[str, str]] = {}
    capacity = spec.gateway.maxSessionsPerReplica * max(1, replicas["gateway"])
    load["gateway"] = sessions / (capacity * GATEWAY_TARGET_UTILISATION)
    why["gateway"] = ("capacity", f"{sessions:.0f} sessions on {capacity} session slots")

    rtf = signals.audio_rtf.value if signals.audio_rtf.ok else None
    load["audio"] = (rtf or 0.0) / AUDIO_TARGET_RTF
    why["audio"] = ("realtime_factor", f"audio real-time factor {rtf or 0.0:.2f} > {AUDIO_TARGET_RTF}")
    budget = slo * TRANSLATION_BUDGET_SHARE
    load["translation"] = translation_p95 / budget
    why["translation"] = (
        "translation_latency",
        f"translation p95 {translation_p95:.2f}s > budget {budget:.2f}s",
    )
    kv = signals.kv_cache_usage.value if signals.kv_cache_usage.ok else None
    if kv is not None:
        # vLLM's KV-cache use grows with concurrent sequences: the translation stage's
        # utilisation. Where it is known it sizes the stage; latency (not linear in replicas)
        # only counts when it is over budget.
        over_budget = load["translation"] if load["translation"] > 1.0 else 0.0
        load["translation"] = max(kv / KV_CACHE_TARGET, over_budget)
        if kv / KV_CACHE_TARGET >= load["translation"]:
            why["translation"] = (
                "kv_cache",
                f"KV cache {kv:.0%} > target {KV_CACHE_TARGET:.0%}"
                + (f" with {waiting:.0f} requests waiting" if waiting else ""),
            )

    # The replicas the signals came from: ready now and in the last SETTLE_INTERVALS intervals
    # (rate windows lag). Sizing from these, not from the replica count just set, keeps the
    # policy from adding replicas again while the ones it added are starting or not yet measured.
    ready_now: dict[str, int] = {
        s: replicas[s]
        if current.ready is None
        else max(0, min(replicas[s], int(current.ready.get(s, replicas[s]))))
        for s in STAGES
    }
    source_replicas: dict[str, int] = {
        s: min([ready_now[s], *(r.get(s, ready_now[s]) for r in history.ready)]) for s in STAGES
    }

    # Start-up time per stage, measured from our own scale-ups to their replicas being ready.
    startup = dict(history.startup)
    pending_up: dict[str, tuple[tuple[float, int], ...]] = {}
    for stage, batches in history.pending_up.items():
        waiting_for: list[tuple[float, int]] = []
        for asked_at, asked in batches:
            if replicas[stage] < asked:
                continue  # scaled down (or bounded) before they were ready
            if ready_now[stage] >= asked:
                took = now - asked_at
                old = startup.get(stage)
                startup[stage] = took if old is None else old + STARTUP_LEARN_RATE * (took - old)
                continue
            waiting_for.append((asked_at, asked))
        if waiting_for:
            pending_up[stage] = tuple(waiting_for)

    # Demand model: replica-utilisation per session, learned while the utilisation signal is
    # in its linear range. When a stage saturates (the KV cache tops out at 100%, a queue grows)
    # it bounds how many replicas the current sessions need, so a backlog cannot inflate the
    # step beyond what draining it takes.
    per_session = dict(history.per_session)
    learned = dict(history.learned)
    targets = {"audio": AUDIO_TARGET_RTF, "translation": KV_CACHE_TARGET}
    utilisation = {"audio": rtf, "translation": kv}
    demand_load: dict[str, float] = {}
    for stage, u in utilisation.items():
        steady = ready_now[stage] == replicas[stage] and ready_now[stage] > 0
        if u is not None and sessions >= 1 and steady and LEARN_MIN_UTIL <= u <= LEARN_MAX_UTIL:
            sample = u * ready_now[stage] / sessions
            per_session[stage], learned[stage] = _learn(per_session.get(stage), learned.get(stage, 0), sample)
        if stage in per_session and sessions > 0:
            demand_load[stage] = (
                sessions * per_session[stage] / (max(1, source_replicas[stage]) * targets[stage])
            )

    depths = {"audio": q_audio, "translation": q_translation + waiting}
    # Throughput per replica at full utilisation, learned while the replica count is settled
    # (the rate window then covers the replicas it came from).
    per_replica = dict(history.per_replica)
    for stage, u in utilisation.items():
        rate = signals.rate(stage)
        settled = ready_now[stage] == replicas[stage] == source_replicas[stage] > 0
        if rate.ok and (rate.value or 0.0) > 0 and u is not None and u >= LEARN_MIN_UTIL and settled:
            sample = (rate.value or 0.0) / (ready_now[stage] * min(1.0, u))
            per_replica[stage], learned["rate:" + stage] = _learn(
                per_replica.get(stage), learned.get("rate:" + stage, 0), sample
            )
    trend = tuple((t, v) for t, v in history.sessions if now - t <= TREND_WINDOW_S) + ((now, sessions),)
    level = _level(trend)
    plans = _plans(history, now, level, per_session, per_replica, depths, targets)
    backed_up: dict[str, bool] = {
        s: depths.get(s, 0.0) > QUEUE_PER_REPLICA * max(1, replicas[s]) for s in STAGES
    }

    bound = demand_load.get("translation")
    if (
        why["translation"][0] == "translation_latency"
        and bound is not None
        and load["translation"] > bound * QUEUE_DRAIN_HEADROOM
    ):
        # Latency over budget that the demand does not explain is a backlog draining (it lags in
        # the rate window): it gets the same bound as a queue.
        load["translation"] = max(1.0 + 2 * TOLERANCE, bound * QUEUE_DRAIN_HEADROOM)

    # Planned stages: the sessions' need, plus catch-up replicas while a backlog would not drain.
    for stage, plan in plans.items():
        basis = max(1, source_replicas[stage])
        load[stage] = max(plan.need, plan.demand + plan.catch_up) / basis
        why[stage] = (
            "demand",
            (f"{level:.0f} sessions need {plan.need:.1f} {stage} replicas at {targets[stage]:.0%}"),
        )
        if plan.catch_up > 0:
            why[stage] = (
                "backlog",
                (
                    f"{plan.backlog:.0f} queued {stage} items would take "
                    f"{plan.drain_s:.0f}s to drain: {level:.0f} sessions need "
                    f"{plan.need:.1f} replicas plus {plan.catch_up:.1f} to catch up "
                    f"within {PLAN_DRAIN_S:.0f}s"
                ),
            )

    # The steady-state need, before queues, breaches and trends: what scale-down recommends.
    util_load = dict(load)
    for stage, plan in plans.items():
        util_load[stage] = plan.need / max(1, source_replicas[stage])

    # Backed-up queues: a stage with more than QUEUE_PER_REPLICA items per replica is over target
    # in proportion, whatever its other signals say (they lag; a queue does not) -- unless the
    # queue is already draining fast enough (capacity added earlier has caught up with demand).
    for stage, depth in depths.items():
        if stage in plans:
            continue  # the plan sizes this stage's backlog from its throughput
        qload = depth / (QUEUE_PER_REPLICA * max(1, replicas[stage]))
        prev = history.queues.get(stage)
        if prev is not None and history.queues_time is not None and now > history.queues_time:
            drain_rate = (prev - depth) / (now - history.queues_time)
            if drain_rate > 0 and depth / drain_rate <= DRAIN_TARGET_S:
                continue
        if stage in demand_load:
            qload = min(qload, demand_load[stage] * QUEUE_DRAIN_HEADROOM)
        if qload > load[stage] and qload > 1.0:
            load[stage] = qload
            why[stage] = ("queue", f"{depth:.0f} queued {stage} items on {replicas[stage]} replicas")

    # --- SLO breach: blame the bottleneck, not every stage ------------------------------------
    # The stage nearest to (or over) its own target explains the breach; ties go to the one
    # with the larger share of the latency. Latency is not linear in replicas, so a breach that
    # the stage's own load does not already explain adds a modest step (+20%, at least one).
    breach = caption / slo if slo > 0 else 0.0
    bottleneck: str | None = None
    if breach > 1.0:
        t_share = min(1.0, translation_p95 / caption) if caption > 0 else 0.0
        t_score = load["translation"] + t_share
        a_score = load["audio"] + (1.0 - t_share)
        bottleneck = "translation" if t_score >= a_score else "audio"
        bump = min(breach, 1.0 + 2 * TOLERANCE)
        # A breach within the latency window of a planned stage's backlog is that backlog's (the
        # histogram still holds its delays): the plan already drains it.
        backlog_seen = history.backlog_at.get(bottleneck)
        recent_backlog = bottleneck in plans and (
            backed_up[bottleneck]
            or (backlog_seen is not None and now - backlog_seen <= 4 * scaling.interval_seconds)
        )
        if bump > load[bottleneck] and not recent_backlog:
            load[bottleneck] = bump
            why[bottleneck] = (
                "latency_slo",
                (f"caption p95 {caption:.2f}s > SLO {slo:.2f}s, {bottleneck} is the bottleneck"),
            )

    # --- GPU memory / KV pressure -> smaller model before more replicas --------------------------
    chain = model_chain(spec)
    idx = chain.index(current.model) if current.model in chain else 0
    mem = signals.gpu_memory_fraction.value if signals.gpu_memory_fraction.ok else None
    high = scaling.gpuMemory.highWatermark
    low = scaling.gpuMemory.lowWatermark
    kv_pressure = kv is not None and kv >= KV_CACHE_SATURATED and waiting > 0
    memory_high = (mem is not None and mem > high) or kv_pressure
    mem_streak = history.memory_high_streak + 1 if memory_high else 0
    mem_low_since = history.memory_low_since
    if mem is not None and mem < low and not kv_pressure:
        mem_low_since = mem_low_since if mem_low_since is not None else now
    else:
        mem_low_since = None
    uses_gpu_model = current.translation_backend == "vllm"
    new_model: str | None = None
    model_reason = model_message = ""
    if uses_gpu_model and mem_streak >= UP_SUSTAIN and idx + 1 < len(chain):
        new_model = chain[idx + 1]
        model_reason = "gpu_memory" if (mem is not None and mem > high) else "kv_cache"
        cause = (
            f"GPU memory {mem:.0%} > highWatermark {high:.0%}"
            if model_reason == "gpu_memory"
            else f"KV cache {kv:.0%} with {waiting:.0f} requests waiting"
        )
        model_message = f"{cause}: translation model {current.model} -> {new_model}"
        mem_streak = 0
    elif (
        uses_gpu_model
        and idx > 0
        and mem_low_since is not None
        and now - mem_low_since >= stabilization
        and (history.last_model_change is None or now - history.last_model_change >= stabilization)
    ):
        new_model = chain[idx - 1]
        model_reason = "gpu_memory_relief"
        model_message = (
            f"GPU memory {mem:.0%} < lowWatermark {low:.0%} for {stabilization:.0f}s: "
            f"translation model {current.model} -> {new_model}"
        )
        mem_low_since = None

    # --- per-stage replica decisions --------------------------------------------------------
    # --- demand trend: size for where sessions will be when new replicas are ready ---------
    rising: dict[str, bool] = {}
    # A planned stage grows as soon as its smoothed need exceeds what runs, except within a
    # stabilization window of shrinking: coming back up then takes a rise beyond the tolerance
    # band (a need on a replica boundary, 4.0 +- noise, must not go 5, 4, 5 window after window).
    tolerance = {
        s: TOLERANCE if now - history.last_down.get(s, -math.inf) < stabilization else PLAN_TOLERANCE
        for s in STAGES
    }
    for s in STAGES:
        # Look as far ahead as the next replicas could serve after these: a start-up (measured),
        # the intervals their metrics take to settle, and one interval to decide.
        lookahead = history.startup.get(s, LOOKAHEAD_S) + LOOKAHEAD_INTERVALS * scaling.interval_seconds
        growth = _growth(trend, sessions, lookahead)
        rising[s] = growth > 1.0
        # Only ahead of a breach: a stage already over target is sized from what it sees now (a
        # step in demand looks like a slope to the fit, and would be counted twice).
        threshold = 1.0 + (tolerance[s] if s in plans else TOLERANCE)
        if growth > 1.0 and load[s] <= threshold < load[s] * growth:
            why[s] = (
                "demand_trend",
                (f"sessions rising ({sessions:.0f}, x{growth:.2f} in {lookahead:.0f}s)"),
            )
            load[s] *= growth

    over_streak: dict[str, int] = {}
    recommend: dict[str, int] = {}
    overs: dict[str, bool] = {}
    for s in STAGES:
        lo, hi = ranges[s]
        cur = replicas[s]
        # A planned stage's need comes from the smoothed session count, so noise is already out
        # of it: it grows as soon as the need exceeds what runs (the window still holds it).
        over = load[s] > 1.0 + (tolerance[s] if s in plans else TOLERANCE)
        overs[s] = over
        over_streak[s] = history.over_streak.get(s, 0) + 1 if over else 0
        # What this stage needs for its current demand (queues drained, no breach): the
        # scale-down window keeps the largest of these, so a drained backlog's extra replicas
        # are not held, but a demand seen within the window is.
        basis = source_replicas[s] if source_replicas[s] > 0 else cur
        need = math.ceil(basis * util_load[s] - 1e-9) if basis else lo
        recommend[s] = _clamp(max(need, 1) if util_load[s] > 0 or lo > 0 else need, lo, hi)
        if util_load[s] >= 1.0 - TOLERANCE:
            recommend[s] = max(recommend[s], _clamp(cur, lo, hi) if util_load[s] <= 1.0 + TOLERANCE else 0)

    devices = list(spec.audio.devices)
    next_devices = devices[devices.index("npu") + 1 :] if "npu" in devices else []

    window = tuple((t, r) for t, r in history.recommendations if now - t < stabilization)
    window = (*window, (now, recommend))
    full_window = now - started >= stabilization
    last_up = dict(history.last_up)
    catch_up = dict(history.catch_up)
    stages: dict[str, StageDecision] = {}
    calm = caption <= slo * DOWN_CALM
    for s in STAGES:
        lo, hi = ranges[s]
        cur = replicas[s]
        reason, message = why[s]
        if cur < lo or cur > hi:
            desired = _clamp(cur, lo, hi)
            stages[s] = StageDecision(
                s,
                cur,
                desired,
                "up" if desired > cur else "down",
                "bounds",
                f"{s} replicas {cur} outside [{lo}, {hi}]",
            )
            continue
        catching_up = s in plans and plans[s].catch_up > 0
        # A planned stage's need is already smoothed (the session level), so one interval over
        # is sustained enough.
        sustain = PLAN_SUSTAIN if s in plans else UP_SUSTAIN
        if over_streak[s] >= sustain or (overs[s] and (load[s] >= IMMEDIATE_LOAD or catching_up)):
            settle_s = MODEL_SETTLE_INTERVALS * scaling.interval_seconds
            if (
                s == "translation"
                and history.last_model_change is not None
                and now - history.last_model_change < settle_s
            ):
                # The new model's pods are starting; latency still shows the old one.
                stages[s] = StageDecision(
                    s,
                    cur,
                    cur,
                    "none",
                    "model_settling",
                    f"{message}; waiting {settle_s:.0f}s for the model change to show",
                )
                continue
            if (
                s == "translation"
                and uses_gpu_model
                and memory_high
                and idx + 1 < len(chain)
                and model_reason != "gpu_memory_relief"
            ):
                # Replicas of a model that does not fit would not help: the smaller model first
                # (switched now, or as soon as the memory pressure is confirmed).
                stages[s] = StageDecision(
                    s,
                    cur,
                    cur,
                    "none",
                    model_reason or "gpu_memory",
                    "GPU memory pressure: switching to a smaller model before adding translation replicas",
                )
                continue
            if s == "audio" and current.audio_device == "npu" and signals.npu_free == 0 and not next_devices:
                stages[s] = StageDecision(
                    s,
                    cur,
                    cur,
                    "none",
                    "npu_exhausted",
                    f"{message}, but no allocatable NPU is left and audio.devices names no other device",
                )
                continue
            if s in plans:
                # Planned from the demand: as many as it needs, in one step (the sessions are
                # counted, not inferred from a saturating signal, so no step limit is needed).
                wanted = math.ceil(load[s] * max(1, source_replicas[s]) - 1e-9)
            else:
                step = min(MAX_STEP_FACTOR, load[s])
                wanted = math.ceil(max(1, source_replicas[s]) * step)
            if source_replicas[s] < cur and wanted <= cur:
                stages[s] = StageDecision(
                    s,
                    cur,
                    cur,
                    "none",
                    "starting",
                    f"{message}; waiting for {cur - source_replicas[s]} new {s} "
                    "replicas to start and show in the metrics",
                )
                continue
            desired = _clamp(max(cur + 1, wanted), lo, hi)
            if desired > cur:
                last_up[s] = now
                pending_up[s] = (*pending_up.get(s, ()), (now, desired))
                if catching_up:
                    catch_up[s] = desired
                sustained = f"for {over_streak[s]} intervals" if over_streak[s] > 1 else "at once (far over)"
                over_streak[s] = 0
                stages[s] = StageDecision(
                    s, cur, desired, "up", reason, f"{message} {sustained}: {s} {cur} -> {desired}"
                )
                continue
            stages[s] = StageDecision(s, cur, cur, "none", "at_max", f"{message}, but {s} is at max {hi}")
            continue
        target = max(r.get(s, cur) for _, r in window)
        if s in plans:
            # Never below what the plan wants now (its trend lookahead included): shrinking to
            # the window's need while the trend already asks for more would flap.
            target = max(target, math.ceil(load[s] * max(1, source_replicas[s]) - 1e-9))
        if s in catch_up and not catching_up and not backed_up[s]:
            # The backlog has drained: the catch-up replicas go; the window's need stays.
            del catch_up[s]
            keep = _clamp(max(target, math.ceil(util_load[s] * max(1, source_replicas[s]) - 1e-9)), lo, hi)
            if keep < cur:
                stages[s] = StageDecision(
                    s,
                    cur,
                    keep,
                    "down",
                    "backlog_drained",
                    f"{s} backlog drained: catch-up replicas released, {s} {cur} -> {keep}",
                )
                continue
        if target < cur and calm and full_window and bottleneck != s and not rising[s]:
            stages[s] = StageDecision(
                s,
                cur,
                target,
                "down",
                "stabilized",
                f"{s} load {load[s]:.2f} of target for {stabilization:.0f}s: {s} {cur} -> {target}",
            )
            continue
        stages[s] = StageDecision(s, cur, cur, "none", "steady", f"{s} load {load[s]:.2f} of target")

    # --- NPU exhaustion: new audio replicas move along devices -----------------------------------
    audio_device: Device | None = None
    audio_device_message = ""
    audio = stages["audio"]
    if audio.direction == "up" and current.audio_device == "npu" and signals.npu_free == 0 and next_devices:
        audio_device = next_devices[0]
        audio_device_message = (
            f"no allocatable NPU left for {audio.desired - audio.current} more "
            f"audio replicas: audio moves npu -> {audio_device}"
        )

    new_history = History(
        started=started,
        over_streak=over_streak,
        # A scale-up is itself a recommendation: what was just added is kept for a full window.
        # (Catch-up replicas are not: they go once the backlog has drained.)
        recommendations=(
            *window[:-1],
            (
                now,
                {
                    s: max(recommend[s], stages[s].desired)
                    if stages[s].direction == "up" and s not in catch_up
                    else recommend[s]
                    for s in STAGES
                },
            ),
        ),
        last_up=last_up,
        last_down={
            **history.last_down,
            **{s: now for s in STAGES if stages[s].direction == "down" and stages[s].reason == "stabilized"},
        },
        memory_high_streak=mem_streak,
        memory_low_since=mem_low_since,
        last_model_change=now if new_model is not None else history.last_model_change,
        queues=depths,
        queues_time=now,
        per_session=per_session,
        ready=(*history.ready, ready_now)[-SETTLE_INTERVALS:],
        sessions=trend,
        startup=startup,
        pending_up=pending_up,
        per_replica=per_replica,
        learned=learned,
        catch_up=catch_up,
        backlog_at={**history.backlog_at, **{s: now for s in STAGES if backed_up[s]}},
    )
    changes = [d for d in stages.values() if d.changed]
    summary = "; ".join(d.message for d in changes) or "all stages within target"
    if new_model:
        summary = f"{model_message}; {summary}"
    return Decision(
        time=now,
        active=True,
        condition_reason="Scaling" if changes or new_model else "WithinTarget",
        message=summary,
        stages=stages,
        history=new_history,
        model=new_model,
        model_reason=model_reason,
        model_message=model_message,
        audio_device=audio_device,
        audio_device_message=audio_device_message,
    )

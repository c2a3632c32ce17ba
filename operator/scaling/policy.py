"""The autoscaler's decision: a pure function of (spec, signals, current state, history, clock).

No I/O and no clock reads here, so the same function runs in the operator's timer, in unit tests
on hand-made signal histories and in ``livetranslate bench autoscaling`` against the incumbents.
``decide()`` is a pipeline of named steps (``estimate``: how loaded each stage is; ``actions``:
what to do about it), each a pure function of what the steps before it returned; the policy's
tuning is one ``PolicyConfig`` (``config``), the per-pipeline figures come from the spec.

How it decides, per interval:

1. **No data, no action.** If a signal the decision needs is missing, stale or Prometheus is
   unreachable, nothing changes and ``ScalingActive=False`` says which signal and why.
2. **Load per stage**, as a ratio to its target (1.0 = at target), from signals that do not
   saturate: gateway = sessions / (maxSessionsPerReplica x replicas x its target); audio =
   real-time factor / its target; translation = KV-cache use / its target (the translation p95
   over its latency budget where there is no KV cache, and whenever it is over that budget). The
   targets are ``spec.scaling.targetUtilization``. Queues on a stage add to its ratio.
3. **Replicas from capacity.** Sessions arrive before latency rises. Where a stage's cost per
   session (replica-utilisation per session, learned while utilisation is in its linear range)
   and its throughput per replica are known, a replica carries ``target / cost`` sessions, and
   the stage needs the sessions forecast for when replicas asked for now can serve: the level
   (scrape noise averaged out, a step followed at once), plus the trend over the stage's measured
   warm-up and one interval, plus headroom: the SLO's percentile (p95: 1.645 standard
   deviations) of how far one sample of the sessions strays (``capacity``, ``demand``). A backlog
   gets catch-up replicas: enough to drain what will be queued by the time they are ready (one
   measured start-up) within ``plan_drain_s``, or by when the slowest backlogged stage can have
   drained, whichever is later; they are released once the backlog has drained.
4. **The bottleneck.** When caption p95 breaches the SLO, the stage whose own load and latency
   share explain it gets the breach (+20%, at least one replica) unless a backlog of that stage,
   being drained by the plan, explains it; the other stage is not scaled for it.
5. **Up fast, down on the forecast.** A planned stage grows as soon as its need exceeds what
   runs, other stages when over 1 + tolerance for ``up_sustain`` intervals or 1.5x over at once.
   Scale-down goes to the largest steady need (level plus headroom, no trend, a one-sample step
   not kept) recorded during ``scaleDownStabilization``, only after a full window, while caption
   p95 is within the SLO and sessions are not rising; while they keep falling (a trend, no
   step), the forecast stays below the window's needs and the stage goes to its need now. Within
   a window of a scale-down, coming back up takes a rise beyond the tolerance band. Always
   clamped to the stage's [min, max].
6. **Model placement.** GPU memory over ``highWatermark`` (or the KV cache saturated with
   requests waiting) for ``up_sustain`` intervals moves translation to the next
   ``fallbackModels`` entry *instead of* adding translation replicas that would not fit; GPU
   memory below ``lowWatermark`` for the whole stabilization window moves it one step back
   towards the primary model. With no fallback left, replicas are added (they land on other
   GPUs, where the scheduler finds ``nvidia.com/gpu`` free).
7. **NPU exhaustion.** Audio on NPU needing more replicas while the cluster has no allocatable
   NPU left moves audio to the next entry of ``audio.devices`` (GPU or CPU).
"""

from __future__ import annotations

from dataclasses import replace

from livetranslate.api import TargetUtilization, TranslationPipelineSpec
from livetranslate.operator.scaling import actions, estimate
from livetranslate.operator.scaling.config import DEFAULT_CONFIG, PolicyConfig
from livetranslate.operator.scaling.signals import STAGES, Signals
from livetranslate.operator.scaling.state import Current, Decision, History, StageDecision

# The default targets (spec.scaling.targetUtilization), under the names tests/scaling import.
AUDIO_TARGET_RTF = TargetUtilization().audio
KV_CACHE_TARGET = TargetUtilization().translation


def required_signals(current: Current) -> tuple[str, ...]:
    """Signals without which no decision is safe for this pipeline."""
    return ("caption_p95", "translation_p95", "sessions_active", "queue:audio", "queue:translation")


def _hold(ctx: estimate.Interval, current: Current, reason: str, message: str) -> Decision:
    replicas = {s: current.replicas.get(s, 0) for s in STAGES}
    stages: dict[str, StageDecision] = {
        s: StageDecision(s, replicas[s], replicas[s], "none", reason, message) for s in STAGES
    }
    # Streaks restart: a breach seen before a data gap is not "sustained" across it.
    history = replace(ctx.history, started=ctx.started, over_streak={}, memory_high_streak=0)
    return Decision(ctx.now, False, reason, message, stages, history)


def decide(
    spec: TranslationPipelineSpec,
    signals: Signals,
    current: Current,
    history: History,
    now: float,
    config: PolicyConfig = DEFAULT_CONFIG,
) -> Decision:
    """One autoscaling step. Pure: the caller persists ``Decision.history`` for the next call."""
    ctx = estimate.Interval(spec, history, now, config)
    # No data, no action: a signal the decision needs is missing, stale or unreachable.
    if signals.error:
        url = spec.scaling.prometheusUrl
        message = f"holding replicas: Prometheus at {url} unreachable ({signals.error})"
        return _hold(ctx, current, "PrometheusUnreachable", message)
    problems = signals.describe_problems(required_signals(current))
    if problems:
        message = "holding replicas: no usable data for " + "; ".join(problems)
        return _hold(ctx, current, "MetricsUnavailable", message)

    # How loaded each stage is (1.0 = at target): signals, the learned demand model and its plan,
    # queues, the SLO breach's bottleneck, and the sessions' trend.
    obs = estimate.observe(ctx, signals, current)
    learned = estimate.learn(ctx, obs, signals)
    plans = estimate.plan(ctx, obs, learned)
    demand = estimate.stage_demand(ctx, obs, learned, plans, estimate.signal_loads(ctx, obs))
    demand = estimate.refused_sessions(ctx, obs, signals, demand)
    breach = estimate.slo_pressure(ctx, obs, plans, demand.loads)
    outlook = estimate.demand_trend(ctx, obs, plans, breach.loads)

    # What to do about it: a smaller model before translation replicas that would not fit, each
    # stage up fast and down slow within its range, audio off an exhausted NPU pool.
    model = actions.gpu_memory(ctx, obs, current)
    npu = actions.npu_exits(spec, signals, current)
    scaled = actions.scale(ctx, obs, learned, plans, demand.steady, breach.bottleneck, model, outlook, npu)
    device, device_message = actions.device_fallback(scaled.stages, npu)
    remembered = actions.remember(ctx, obs, learned, model, scaled)
    return actions.explain(ctx, scaled, model, device, device_message, remembered)

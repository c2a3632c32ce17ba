"""The last steps of ``decide()``: from the load estimate to replicas, model and device.

GPU memory pressure moves translation to a smaller model before replicas are added; each stage
then grows, holds or shrinks (clamped to its range, scale-down stabilized); audio moves off an
exhausted NPU pool; what was decided is remembered for the next interval and put in words.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from livetranslate.api import Device, Stage, TranslationPipelineSpec
from livetranslate.operator.scaling.capacity import Plan
from livetranslate.operator.scaling.estimate import Interval, Learned, Loads, Observed, Outlook
from livetranslate.operator.scaling.signals import STAGES, Signals
from livetranslate.operator.scaling.state import Current, Decision, Direction, History, StageDecision

Window = tuple[tuple[float, Mapping[str, int]], ...]

PLANNED = frozenset({"demand", "demand_trend", "backlog"})
"""Reasons of scale-ups planned from capacity (the window keeps their steady need, not them)."""
SHRINKS = frozenset({"stabilized", "demand_falling"})
"""Reasons of scale-downs after which coming back up takes a rise beyond the tolerance."""


@dataclass(frozen=True)
class ModelStep:
    """The translation model's placement after GPU memory pressure (or relief)."""

    model: str | None  # the new active translation model, when it changes
    reason: str
    message: str
    high_streak: int  # intervals of memory pressure (0 once a smaller model is chosen)
    low_since: float | None  # when GPU memory went below lowWatermark, while it stays there
    # Translation may not grow: a smaller model comes first (switched now, or once confirmed).
    holds_translation: bool


@dataclass(frozen=True)
class Scaled:
    """Each stage's decision, and what the policy remembers of it."""

    stages: Mapping[str, StageDecision]
    window: Window  # the stabilization window's recommendations, this interval's last
    over_streak: Mapping[str, int]
    last_up: Mapping[str, float]
    pending_up: Mapping[str, tuple[tuple[float, int], ...]]
    catch_up: Mapping[str, int]


def _clamp(value: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, value))


def _replicas_for(load: float, source: int) -> int:
    return math.ceil(load * max(1, source) - 1e-9)


def model_chain(spec: TranslationPipelineSpec) -> list[str]:
    """The primary model, then the fallbacks in order, without repeats."""
    return list(dict.fromkeys([spec.translation.model, *spec.translation.fallbackModels]))


def gpu_memory(ctx: Interval, obs: Observed, current: Current) -> ModelStep:
    """GPU memory over ``highWatermark`` (or the KV cache saturated with requests waiting) for
    ``up_sustain`` intervals moves translation to the next fallback model; below
    ``lowWatermark`` for a stabilization window, one step back towards the primary."""
    cfg, history, now = ctx.cfg, ctx.history, ctx.now
    chain = model_chain(ctx.spec)
    idx = chain.index(current.model) if current.model in chain else 0
    high, low = ctx.spec.scaling.gpuMemory.highWatermark, ctx.spec.scaling.gpuMemory.lowWatermark
    mem, kv = obs.mem, obs.kv
    kv_pressure = kv is not None and kv >= cfg.kv_cache_saturated and obs.waiting > 0
    memory_high = (mem is not None and mem > high) or kv_pressure
    streak = history.memory_high_streak + 1 if memory_high else 0
    low_since = None
    if mem is not None and mem < low and not kv_pressure:
        low_since = history.memory_low_since if history.memory_low_since is not None else now
    gpu_model = current.translation_backend == "vllm"
    smaller = gpu_model and idx + 1 < len(chain)
    if smaller and streak >= cfg.up_sustain:
        reason = "gpu_memory" if (mem is not None and mem > high) else "kv_cache"
        cause = (
            f"GPU memory {mem:.0%} > highWatermark {high:.0%}"
            if reason == "gpu_memory"
            else f"KV cache {kv:.0%} with {obs.waiting:.0f} requests waiting"
        )
        message = f"{cause}: translation model {current.model} -> {chain[idx + 1]}"
        return ModelStep(chain[idx + 1], reason, message, 0, low_since, memory_high)
    changed = history.last_model_change
    stabilization = ctx.stabilization
    if (
        gpu_model
        and idx > 0
        and low_since is not None
        and now - low_since >= stabilization
        and (changed is None or now - changed >= stabilization)
    ):
        message = (
            f"GPU memory {mem:.0%} < lowWatermark {low:.0%} for {stabilization:.0f}s: "
            f"translation model {current.model} -> {chain[idx - 1]}"
        )
        return ModelStep(chain[idx - 1], "gpu_memory_relief", message, streak, None, False)
    return ModelStep(None, "", "", streak, low_since, smaller and memory_high)


def npu_exits(spec: TranslationPipelineSpec, signals: Signals, current: Current) -> list[Device] | None:
    """Where audio may move when it runs on NPU and the cluster has no allocatable NPU left: the
    entries after ``npu`` in ``audio.devices`` (empty: nowhere). None while NPU is not exhausted."""
    if current.audio_device != "npu" or signals.npu_free != 0:
        return None
    devices = list(spec.audio.devices)
    return devices[devices.index("npu") + 1 :] if "npu" in devices else []


def steady_need(
    ctx: Interval, obs: Observed, steady: Mapping[str, float], room: float = 0.0
) -> dict[str, int]:
    """What each stage needs for its current demand (queues drained, no breach): the scale-down
    window keeps the largest of these, so a drained backlog's extra replicas are not held, but
    a demand seen within the window is. ``room``: that share more to spare."""
    tolerance = ctx.cfg.tolerance
    need: dict[str, int] = {}
    for s in STAGES:
        lo, hi = ctx.range(s)
        cur, util = obs.replicas[s], steady[s] * (1.0 + room)
        basis = obs.source[s] if obs.source[s] > 0 else cur
        n = math.ceil(basis * util - 1e-9) if basis else lo
        need[s] = _clamp(max(n, 1) if util > 0 or lo > 0 else n, lo, hi)
        if util >= 1.0 - tolerance:
            need[s] = max(need[s], _clamp(cur, lo, hi) if util <= 1.0 + tolerance else 0)
    return need


def _scale_up(
    ctx: Interval,
    s: Stage,
    obs: Observed,
    loads: Loads,
    planned: bool,
    streak: int,
    model: ModelStep,
    npu: list[Device] | None,
) -> StageDecision:
    """A stage over target grows, unless what it would add cannot help yet."""
    cur, source = obs.replicas[s], obs.source[s]
    lo, hi = ctx.range(s)
    reason, message = loads.why[s]
    settle_s = ctx.cfg.model_settle_intervals * ctx.interval_s
    changed = ctx.history.last_model_change
    if s == "translation" and changed is not None and ctx.now - changed < settle_s:
        # The new model's pods are starting; latency still shows the old one.
        note = f"{message}; waiting {settle_s:.0f}s for the model change to show"
        return StageDecision(s, cur, cur, "none", "model_settling", note)
    if s == "translation" and model.holds_translation:
        # Replicas of a model that does not fit would not help: the smaller model first.
        note = "GPU memory pressure: switching to a smaller model before adding translation replicas"
        return StageDecision(s, cur, cur, "none", model.reason or "gpu_memory", note)
    if s == "audio" and npu is not None and not npu:
        note = f"{message}, but no allocatable NPU is left and audio.devices names no other device"
        return StageDecision(s, cur, cur, "none", "npu_exhausted", note)
    # Planned from the demand: as many as it needs, in one step (the sessions are counted, not
    # inferred from a saturating signal, so no step limit is needed).
    load = loads.ratio[s]
    wanted = (
        _replicas_for(load, source)
        if planned
        else math.ceil(max(1, source) * min(ctx.cfg.max_step_factor, load))
    )
    if source < cur and wanted <= cur:
        note = f"{message}; waiting for {cur - source} new {s} replicas to start and show in the metrics"
        return StageDecision(s, cur, cur, "none", "starting", note)
    desired = _clamp(max(cur + 1, wanted), lo, hi)
    if desired <= cur:
        return StageDecision(s, cur, cur, "none", "at_max", f"{message}, but {s} is at max {hi}")
    sustained = "" if planned else f" for {streak} intervals" if streak > 1 else " at once (far over)"
    note = f"{message}{sustained}: {s} {cur} -> {desired}"
    return StageDecision(s, cur, desired, "up", reason, note)


def _settle(
    ctx: Interval,
    s: Stage,
    obs: Observed,
    loads: Loads,
    steady: float,
    target: int,
    release: bool,
    may_shrink: bool,
    falling: float = 0.0,
) -> StageDecision:
    """A stage not over target holds, releases drained catch-up replicas, or shrinks to the
    largest need of the stabilization window (``target``); while the sessions keep falling
    (``falling`` sessions per second), to what they need now."""
    cur, source = obs.replicas[s], obs.source[s]
    lo, hi = ctx.range(s)
    if release:
        # The backlog has drained: the catch-up replicas go; the window's need stays.
        keep = _clamp(max(target, _replicas_for(steady, source)), lo, hi)
        if keep < cur:
            note = f"{s} backlog drained: catch-up replicas released, {s} {cur} -> {keep}"
            return StageDecision(s, cur, keep, "down", "backlog_drained", note)
    load = loads.ratio[s]
    if target < cur and may_shrink and falling < 0:
        note = (
            f"sessions falling {-falling * 60:.1f}/min, no step: the forecast stays below what runs "
            f"(load {load:.2f} of target), {s} {cur} -> {target}"
        )
        return StageDecision(s, cur, target, "down", "demand_falling", note)
    if target < cur and may_shrink:
        note = (
            f"{s} needed at most {target} replicas in the last {ctx.stabilization:.0f}s "
            f"(load {load:.2f} of target now): {s} {cur} -> {target}"
        )
        return StageDecision(s, cur, target, "down", "stabilized", note)
    return StageDecision(s, cur, cur, "none", "steady", f"{s} load {load:.2f} of target")


def scale(
    ctx: Interval,
    obs: Observed,
    learned: Learned,
    plans: Mapping[str, Plan],
    steady: Mapping[str, float],
    bottleneck: str | None,
    model: ModelStep,
    outlook: Outlook,
    npu: list[Device] | None,
) -> Scaled:
    """Up fast, down slow, always within [min, max] (the policy's step 5)."""
    cfg, history, now = ctx.cfg, ctx.history, ctx.now
    loads = outlook.loads
    need = steady_need(ctx, obs, steady)
    roomy = steady_need(ctx, obs, steady, room=cfg.tolerance)
    window = (*((t, r) for t, r in history.recommendations if now - t < ctx.stabilization), (now, need))
    calm = obs.caption <= ctx.slo
    full_window = now - ctx.started >= ctx.stabilization
    streaks: dict[str, int] = {}
    last_up, pending_up = dict(history.last_up), dict(learned.pending_up)
    catch_up = dict(history.catch_up)
    stages: dict[str, StageDecision] = {}
    for s in STAGES:
        lo, hi = ctx.range(s)
        cur = obs.replicas[s]
        over = loads.ratio[s] > outlook.threshold[s]
        streaks[s] = history.over_streak.get(s, 0) + 1 if over else 0
        catching_up = s in plans and plans[s].catch_up > 0
        # A planned stage's need is already smoothed (the session level), so one interval over
        # is sustained enough.
        sustain = 1 if s in plans else cfg.up_sustain
        if cur < lo or cur > hi:
            desired = _clamp(cur, lo, hi)
            direction: Direction = "up" if desired > cur else "down"
            stages[s] = StageDecision(
                s, cur, desired, direction, "bounds", f"{s} replicas {cur} outside [{lo}, {hi}]"
            )
        elif streaks[s] >= sustain or (over and (loads.ratio[s] >= cfg.immediate_load or catching_up)):
            stages[s] = d = _scale_up(ctx, s, obs, loads, s in plans, streaks[s], model, npu)
            if d.direction == "up":
                last_up[s] = now
                pending_up[s] = (*pending_up.get(s, ()), (now, d.desired))
                if catching_up:
                    catch_up[s] = d.desired
                streaks[s] = 0
        else:
            target = max(r.get(s, cur) for _, r in window)
            falling = obs.forecast.slope if s in plans else 0.0
            if falling < 0:
                # Falling for a whole trend window, no step: the forecast over the stabilization
                # window stays below what the window recorded, so the stage goes to its need now,
                # with the tolerance's room: this path skips the window's hold, and a trend read
                # into noise would otherwise shrink onto a replica boundary the next reading
                # crosses back over (6 of 30 noisy plateaus went down and up within a window; a
                # fall too steep for noise passed the same test, so no slope threshold tells them
                # apart).
                target = min(target, roomy[s])
            if s in plans:
                # Never below what the plan wants now (its trend lookahead included): shrinking
                # to the window's need while the trend already asks for more would flap.
                target = max(target, _replicas_for(loads.ratio[s], obs.source[s]))
            release = s in catch_up and not catching_up and not obs.backed_up[s]
            if release:
                del catch_up[s]
            may_shrink = calm and full_window and bottleneck != s and not outlook.rising[s]
            stages[s] = _settle(ctx, s, obs, loads, steady[s], target, release, may_shrink, falling)
    return Scaled(stages, window, streaks, last_up, pending_up, catch_up)


def device_fallback(
    stages: Mapping[str, StageDecision], npu: list[Device] | None
) -> tuple[Device | None, str]:
    """New audio replicas on an exhausted NPU pool move to the next entry of ``audio.devices``."""
    audio = stages["audio"]
    if audio.direction != "up" or not npu:
        return None, ""
    more = audio.desired - audio.current
    return npu[0], f"no allocatable NPU left for {more} more audio replicas: audio moves npu -> {npu[0]}"


def remember(ctx: Interval, obs: Observed, learned: Learned, model: ModelStep, scaled: Scaled) -> History:
    """What the next interval needs of this one."""
    now, history, stages = ctx.now, ctx.history, scaled.stages
    # A scale-up the load ratio asked for is itself a recommendation: what was just added is
    # kept for a full window. A planned one is not: the window keeps the plan's steady need (the
    # sessions as they stand, with headroom), and the part planned for a rise goes when the rise
    # stops; catch-up replicas go once the backlog has drained.
    need = scaled.window[-1][1]
    recommended: dict[str, int] = {
        s: max(need[s], stages[s].desired)
        if stages[s].direction == "up" and s not in scaled.catch_up and stages[s].reason not in PLANNED
        else need[s]
        for s in STAGES
    }
    stabilized: dict[str, float] = {
        s: now for s in STAGES if stages[s].direction == "down" and stages[s].reason in SHRINKS
    }
    return History(
        started=ctx.started,
        over_streak=scaled.over_streak,
        recommendations=(*scaled.window[:-1], (now, recommended)),
        last_up=scaled.last_up,
        last_down={**history.last_down, **stabilized},
        memory_high_streak=model.high_streak,
        memory_low_since=model.low_since,
        last_model_change=now if model.model is not None else history.last_model_change,
        queues=obs.depths,
        queues_time=now,
        per_session=learned.per_session,
        ready=(*history.ready, obs.ready)[-ctx.cfg.settle_intervals :],
        sessions=obs.samples,
        startup=learned.startup,
        pending_up=scaled.pending_up,
        per_replica=learned.per_replica,
        learned=learned.learned,
        catch_up=scaled.catch_up,
        backlog_at={**history.backlog_at, **{s: now for s in STAGES if obs.backed_up[s]}},
    )


def explain(
    ctx: Interval,
    scaled: Scaled,
    model: ModelStep,
    device: Device | None,
    device_message: str,
    history: History,
) -> Decision:
    """The decision in words: each change's message, a model change first."""
    changes = [d for d in scaled.stages.values() if d.changed]
    summary = "; ".join(d.message for d in changes) or "all stages within target"
    if model.model:
        summary = f"{model.message}; {summary}"
    return Decision(
        time=ctx.now,
        active=True,
        condition_reason="Scaling" if changes or model.model else "WithinTarget",
        message=summary,
        stages=scaled.stages,
        history=history,
        model=model.model,
        model_reason=model.reason,
        model_message=model.message,
        audio_device=device,
        audio_device_message=device_message,
    )

"""The autoscaling policy's own constants: one typed, frozen object, today's values as its defaults.

What a pipeline's spec says is not here: the policy reads it from the spec on every call (the
latency SLO, ``scaleDownStabilization``, ``interval``, the GPU memory watermarks,
``maxSessionsPerReplica``, the replica ranges, the model chain, the audio devices, and
``targetUtilization``: the utilisation each stage is sized for, which a cluster operator measures
for their hardware). What the policy can measure, it measures: each stage's cost per session,
throughput per replica and warm-up, and the sessions' level, trend and scatter; the headroom is
the SLO's own percentile of that scatter. What is left are the figures below, each with where its
value comes from. A benchmark or a test passes another ``PolicyConfig`` to ``decide()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class PolicyConfig:
    # --- Stages without a plan (no cost per session learned yet, or no KV cache to learn it from:
    # --- a new or idle pipeline, a non-vLLM translation backend, the gateway) ---------------------
    tolerance: float = 0.1
    """No action while load is within 1 +- this of target, and coming back up within a window of
    a scale-down takes a rise beyond it: Kubernetes HPA's default tolerance (10%), so the two
    behave alike where the policy knows no more than HPA does."""
    up_sustain: int = 2
    """Consecutive intervals over target before an unplanned stage grows, and of GPU memory
    pressure before the model steps down: one interval could be one noisy scrape, two are 30 s."""
    immediate_load: float = 1.5
    """A load this far over target acts at once: a 15 s scrape's noise is ~10%, not 50%."""
    max_step_factor: float = 4.0
    """At most this factor in one step for an unplanned stage: a saturated signal (RTF, KV cache
    at 100%) says "more", not how much; HPA allows x2 per 15 s, so this is two of its steps."""
    queue_per_replica: float = 4.0
    """Queued items per replica above which a stage is backed up: a replica's batch holds a few
    items at once, so more than four waiting is a queue, not a batch being filled."""
    drain_target_s: float = 60.0
    """A backlog that drains within this many seconds needs no more replicas: one rate window
    (four intervals), after which the latency histogram no longer holds it."""
    queue_drain_headroom: float = 1.25
    """A backlog may add this much over the replicas the learned demand explains (queued items
    say nothing of the demand; the learned cost does)."""
    translation_budget_share: float = 0.5
    """Translation's share of the caption-latency SLO where no KV cache says how loaded it is
    (non-vLLM backends): translation p95 against half the SLO, an equal share for each stage
    (the bench model's idle latencies, audio 0.45 s and translation 0.30 s, both fit well inside)."""
    kv_cache_saturated: float = 0.9
    """KV-cache use at which vLLM preempts running sequences (its scheduler's watermark; with
    requests waiting: memory pressure, as GPU memory over ``highWatermark`` is)."""
    backlog_blame_intervals: int = 4
    """Intervals after a planned stage's backlog in which a latency breach is that backlog's: the
    latency histogram's rate window is four intervals, so it still holds the backlog's delays."""

    # --- The forecast: level, trend, scatter ------------------------------------------------------
    trend_window_s: float = 180.0
    """Seconds of session history the trend is fitted over: twelve 15 s scrapes, longer than the
    slowest measured warm-up it forecasts over (translation, 90-120 s)."""
    min_trend_points: int = 4
    """Samples a trend needs, so one noisy scrape makes none."""
    trend_significance: float = 2.5
    """Standard errors a slope must clear to count as a trend: about 2% false trends on white
    noise (one-sided t, ten degrees of freedom for the window's twelve samples)."""
    recent_slope_share: float = 0.5
    """The recent half of the window must move at least this share as steeply, the same way: a
    step that already happened fits a slope over the whole window, but it does not continue."""
    level_window_s: float = 90.0
    """Seconds of session samples averaged into the level: six scrapes (the scatter / sqrt(6))."""
    step_sigmas: float = 4.0
    """A jump between samples this many typical (median) jumps wide is a step in demand..."""
    step_fraction: float = 0.4
    """...if it is also at least this share of the level (a step is followed at once)."""

    # --- Settling ---------------------------------------------------------------------------------
    model_settle_intervals: int = 4
    """Intervals after a model change before translation is resized: its pods start, and the
    latency histogram's rate window (four intervals) still shows the old model."""
    settle_intervals: int = 2
    """Intervals before a newly ready replica shows in the 30 s rate windows (two 15 s scrapes)."""

    # --- The learned figures (cost per session, throughput, warm-up) ---------------------------
    learn_min_util: float = 0.1
    """Lowest utilisation at which it is linear in sessions (and a sample is learned)."""
    learn_max_util: float = 0.9
    """Highest utilisation at which it is linear in sessions (above it, it saturates)."""
    learn_rate: float = 0.05
    """Weight of a new sample once learned: a moving average over the last ~20 samples."""
    startup_prior_s: float = 60.0
    """Warm-up assumed for a stage without its own prior until one has been measured."""
    startup_priors: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType({"audio": 45.0, "translation": 120.0})
    )
    """Warm-up assumed per stage until measured, conservatively (image pull and model load: a
    vLLM replica loading a 7B model takes a minute or two, a Whisper replica well under one)."""
    startup_learn_rate: float = 0.5
    """Weight of a new warm-up measurement against the last."""

    # --- The plan ---------------------------------------------------------------------------------
    plan_drain_s: float = 20.0
    """Seconds in which a backlog is drained once catch-up replicas are ready: captions are late
    until it has drained, and draining faster costs replicas for seconds that hardly count."""

    def startup_prior(self, stage: str) -> float:
        return self.startup_priors.get(stage, self.startup_prior_s)


DEFAULT_CONFIG = PolicyConfig()

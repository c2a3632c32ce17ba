"""The autoscaling policy's own tuning: one typed, frozen object, today's values as its defaults.

What a pipeline's spec says (the latency SLO, ``scaleDownStabilization``, ``interval``, the GPU
memory watermarks, ``maxSessionsPerReplica``, the replica ranges, the model chain, the audio
devices) is not here: the policy reads it from the spec on every call. These are the figures the
policy brings itself, chosen on the traces of ``livetranslate bench autoscaling`` (docs/scaling.md
explains the targets); a benchmark or a test passes another ``PolicyConfig`` to ``decide()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class PolicyConfig:
    # --- Targets the load ratios are measured against (1.0 = at target) ----------------------
    gateway_target_utilisation: float = 0.8
    """Share of the gateway's session slots in use at target: headroom for reconnect storms
    before sessions are refused."""
    audio_target_rtf: float = 0.75
    """Decoder time per audio second an audio replica is sized for. Audio runs hotter than
    translation: it has most of the replicas, and its decoder batches keep up to about RTF 0.8."""
    kv_cache_target: float = 0.68
    """vLLM KV-cache use a translation replica is sized for: room left for long segments."""
    kv_cache_saturated: float = 0.9
    """KV-cache use at which vLLM starts preempting requests (with requests waiting: memory
    pressure, like GPU memory over ``highWatermark``)."""
    translation_budget_share: float = 0.5
    """Translation's share of the caption-latency SLO (its latency budget)."""
    queue_per_replica: float = 4.0
    """Queued items per replica above which a stage is backed up."""

    # --- When to act ----------------------------------------------------------------------
    tolerance: float = 0.1
    """No action while load is within 1 +- this of target (and a latency breach adds at most
    twice this)."""
    up_sustain: int = 2
    """Consecutive intervals over target before an unplanned stage grows, and of GPU memory
    pressure before the model steps down."""
    immediate_load: float = 1.5
    """A load this far over target acts at once: no noise explains 50%."""
    max_step_factor: float = 4.0
    """At most this factor in one step, for stages without a plan."""
    drain_target_s: float = 60.0
    """A backlog that drains within this many seconds needs no more replicas."""
    queue_drain_headroom: float = 1.25
    """A backlog may add this much over the demand model's need."""
    down_calm: float = 1.0
    """Caption p95 must stay under this share of the SLO for a stage to shrink."""
    backlog_blame_intervals: int = 4
    """Intervals after a planned stage's backlog in which a latency breach is that backlog's
    (the latency histogram still holds its delays), not the bottleneck's."""

    # --- The demand trend -------------------------------------------------------------------
    trend_window_s: float = 180.0
    """Seconds of session history the demand's slope is fitted over."""
    min_trend_points: int = 4
    """Samples a slope needs, so one noisy scrape makes none."""
    trend_significance: float = 2.5
    """Standard errors a slope must clear to count as a trend."""
    recent_slope_share: float = 0.5
    """The recent half of the window must rise at least this share as steeply as the whole (a
    step that already happened fits a slope too, but does not continue)."""
    lookahead_s: float = 60.0
    """Trend lookahead until a stage's start-up has been measured."""
    max_growth: float = 1.5
    """The trend never asks for more than this factor of a stage's need."""
    level_window_s: float = 90.0
    """Seconds of session samples averaged into the demand level."""
    step_sigmas: float = 4.0
    """A jump between samples this many typical (median) jumps wide is a step in demand..."""
    step_fraction: float = 0.4
    """...if it is also at least this share of the level."""

    # --- Settling ---------------------------------------------------------------------------
    model_settle_intervals: int = 4
    """Intervals after a model change before translation is resized (its pods are starting)."""
    settle_intervals: int = 2
    """Intervals before a newly ready replica shows in the rate windows."""

    # --- The learned figures (demand model, throughput, start-up) -----------------------------
    learn_min_util: float = 0.1
    """Lowest utilisation at which it is linear in sessions (and a sample is learned)."""
    learn_max_util: float = 0.9
    """Highest utilisation at which it is linear in sessions."""
    learn_rate: float = 0.05
    """Weight of a new sample once learned: a moving average over the last ~20 samples."""
    startup_prior_s: float = 60.0
    """Replica start-up assumed for a stage without its own prior until one has been measured."""
    startup_priors: Mapping[str, float] = field(
        default_factory=lambda: MappingProxyType({"audio": 45.0, "translation": 120.0})
    )
    """Start-up assumed per stage until measured, conservatively (image pull and model load: a
    vLLM replica loading a 7B model takes a minute or two, a Whisper replica well under one)."""
    startup_learn_rate: float = 0.5
    """Weight of a new start-up measurement against the last."""

    # --- The plan (stages whose cost per session and throughput are known) --------------------
    plan_tolerance: float = 0.0
    """A planned stage grows once its smoothed need exceeds what runs..."""
    plan_sustain: int = 1
    """...in this many intervals (the session level already averages the noise)."""
    plan_drain_s: float = 20.0
    """Seconds in which a backlog is drained once catch-up replicas are ready."""

    @property
    def targets(self) -> dict[str, float]:
        """The utilisation each stage with a demand model is sized for."""
        return {"audio": self.audio_target_rtf, "translation": self.kv_cache_target}

    @property
    def lookahead_intervals(self) -> int:
        """Intervals a trend looks beyond a start-up: the settling ones, and one to decide."""
        return self.settle_intervals + 1

    def startup_prior(self, stage: str) -> float:
        return self.startup_priors.get(stage, self.startup_prior_s)


DEFAULT_CONFIG = PolicyConfig()

"""What the policy reads and returns besides the signals: what runs, what it remembers, what it decided.

Plain frozen data, shared by the policy's steps and re-exported by ``policy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from livetranslate.api import Device, Stage

Direction = Literal["up", "down", "none"]


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
    # Ready replicas per stage at the last ``settle_intervals`` intervals.
    ready: tuple[Mapping[str, int], ...] = ()
    # Learned replica-utilisation per active session, per stage (the demand model).
    per_session: Mapping[str, float] = field(default_factory=dict)
    # Measured seconds from a scale-up to its replicas being ready, per stage, and the scale-up
    # being timed: (time, replicas it asked for).
    startup: Mapping[str, float] = field(default_factory=dict)
    pending_up: Mapping[str, tuple[tuple[float, int], ...]] = field(default_factory=dict)
    # Learned items one replica completes per second at full utilisation, per stage.
    per_replica: Mapping[str, float] = field(default_factory=dict)
    # Samples behind each learned figure (its running mean's weight; see demand.learn).
    learned: Mapping[str, int] = field(default_factory=dict)
    # Stages running catch-up replicas for a backlog (released once it has drained), and when
    # each stage last had a backlog (a latency breach inside the latency window after it is the
    # backlog's, already being drained, not a reason for more steady replicas).
    catch_up: Mapping[str, int] = field(default_factory=dict)
    backlog_at: Mapping[str, float] = field(default_factory=dict)


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

"""How many sessions this translation replica sustains, measured, for the autoscaler.

Translation is stateless per request, but its work comes from sessions: the gateway sends each
session's sentences (and previews of the open one) with the session's id, one request in flight
per session (one worker per session, workloads/gateway/translator.py). So every interval the
service knows

* its *utilisation*: slot-seconds the primary engine spent in calls per wall second per dispatch
  slot (``batch.max_inflight_batches``, or the engine's own cap); at 1.0 every new segment waits
  for a slot, and the queue (with the latency of every session) starts to grow;
* the *sessions it carried*: the sessions that asked for a translation within ``SESSION_WINDOW_S``,
  times the share of the interval's requests it admitted (a replica that refuses a third of the
  requests carried two thirds of its askers' work, not all of it).

The shared estimate (workloads/capacity.py) learns what one session costs from these and
publishes ``TARGET_UTILISATION / cost`` sessions, never above the queue's ceiling
(``session_ceiling``), never below one. Pure logic, no clock.

Where the figures err: linear in sessions, batching makes the estimate pessimistic below
saturation (a batch of sixteen costs an engine less than sixteen lone calls); the gateway retries
a refused request, and each retry counts as another refusal, which lowers the share admitted
(pessimistic again); a session that fell silent counts for up to ``SESSION_WINDOW_S``
(optimistic, briefly, as a crowd leaves). At saturation, where refusals start and the autoscaler
reads the figure, utilisation is 1.0 and the sessions carried are what the replica sustains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# A talking session sends at least one request this often: the gateway closes a sentence at the
# latest after ``sentence_max_seconds`` (20 s by default, workloads/gateway/settings.py) and
# translates it whole; 10 s more covers the final's own latency and the translation call.
SESSION_WINDOW_S = 30.0


def slot_utilisation(busy_seconds: float, wall_seconds: float, slots: int) -> float:
    """Slot-seconds in engine calls per wall second per dispatch slot, in [0, 1]."""
    if wall_seconds <= 0 or slots <= 0:
        return 0.0
    return min(1.0, max(0.0, busy_seconds / (wall_seconds * slots)))


def session_ceiling(max_queue: int, targets: int) -> int:
    """The most sessions the queue can hold at once: each holds one request in flight, and a
    request one queue place per target language (``batch.max_queue`` places in all)."""
    return max(1, max_queue // max(1, targets))


@dataclass
class ActiveSessions:
    """The sessions that asked recently, and how much of what they asked for was admitted."""

    window_s: float = SESSION_WINDOW_S
    admitted: int = 0  # requests since the last ``carried``
    refused: int = 0
    _last_asked: dict[str, float] = field(default_factory=dict)

    def admit(self, session_id: str, now: float) -> None:
        self._last_asked[session_id] = now
        self.admitted += 1

    def refuse(self, session_id: str, now: float) -> None:
        self._last_asked[session_id] = now
        self.refused += 1

    def active(self, now: float) -> int:
        """Sessions with a request (admitted or not) within the window."""
        horizon = now - self.window_s
        self._last_asked = {s: t for s, t in self._last_asked.items() if t >= horizon}
        return len(self._last_asked)

    def carried(self, now: float) -> float:
        """Sessions carried since the last call: the active ones, in proportion to the requests
        admitted. Starts the next interval's counts."""
        asked = self.admitted + self.refused
        share = self.admitted / asked if asked else 1.0
        self.admitted = self.refused = 0
        return self.active(now) * share

"""How many real-time streams this audio replica sustains, measured, for admission.

Every RTF interval the service knows its decoders' utilisation (busy seconds per wall second per
worker, 1.0 = no spare time) and how many sessions it served. Their ratio is what one session
costs; the replica sustains ``TARGET_UTILISATION / cost`` sessions. A new session past that is
refused (the client hears which limit and why) instead of being admitted into a replica where
every session's captions would then fall behind together. The cost is a moving average over
intervals with enough load to be measured; until then only the configured cap applies. Pure
logic, no clock.

The estimate is linear in sessions, which batching makes pessimistic (a batched pass costs less
per session than a lone one); admission refuses only past the utilisation that means falling
behind real time, so the error lands on the side of admitting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TARGET_UTILISATION = 1.0  # past it the decoders cannot keep up with real time
MIN_UTILISATION = 0.05  # below it an interval's cost is mostly noise
LEARN_RATE = 0.3  # weight of a new interval in the moving average


@dataclass
class CapacityEstimate:
    static_cap: int  # the configured ceiling (LT_AUDIO_LIMITS__MAX_SESSIONS)
    cost: float | None = None  # utilisation per session, once measured
    last_utilisation: float = 0.0
    last_sessions: int = 0

    def observe(self, utilisation: float, sessions: int) -> None:
        self.last_utilisation, self.last_sessions = utilisation, sessions
        if sessions < 1 or utilisation < MIN_UTILISATION:
            return
        sample = utilisation / sessions
        self.cost = sample if self.cost is None else self.cost + LEARN_RATE * (sample - self.cost)

    @property
    def sessions(self) -> int:
        """Sessions admitted at most: the measured capacity, never above the configured cap,
        never below one."""
        if self.cost is None or self.cost <= 0:
            return self.static_cap
        return max(1, min(self.static_cap, math.floor(TARGET_UTILISATION / self.cost + 1e-9)))

    def refusal(self) -> str:
        """Why a new session is refused, in words a client (and its operator) can act on."""
        if self.cost is None or self.sessions >= self.static_cap:
            return f"this replica serves at most {self.static_cap} sessions; try another"
        return (
            f"this replica sustains about {self.sessions} real-time streams (its decoders were "
            f"{self.last_utilisation:.0%} busy with {self.last_sessions}); try another"
        )

"""The sessions one replica sustains, learned from how busy its sessions keep it.

Audio and translation both know, every measuring interval, their engine's utilisation (busy time
per wall second per worker or dispatch slot; 1.0 = no spare time) and how many sessions it served.
Their ratio is what one session costs, and a replica sustains ``TARGET_UTILISATION / cost``
sessions. The cost is a moving average over intervals with enough load to be measured; until
then only the configured cap applies. Pure logic, no clock: each stage says what its utilisation
and sessions are (workloads/audio/capacity.py, workloads/translate/capacity.py).

The estimate is linear in sessions, which batching makes pessimistic below saturation (a batched
call costs less per session than a lone one); at saturation, where admission and the autoscaler
read it, the sample is what the replica really carried.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TARGET_UTILISATION = 1.0  # past it the engine has no spare time: work waits, latency grows
MIN_UTILISATION = 0.05  # below it an interval's cost is mostly noise
LEARN_RATE = 0.3  # weight of a new interval in the moving average (about the last 3 intervals)


@dataclass
class CapacityEstimate:
    static_cap: int  # the configured ceiling
    cost: float | None = None  # utilisation per session, once measured
    last_utilisation: float = 0.0
    last_sessions: float = 0.0

    def observe(self, utilisation: float, sessions: float) -> None:
        self.last_utilisation, self.last_sessions = utilisation, sessions
        if sessions <= 0 or utilisation < MIN_UTILISATION:
            return
        sample = utilisation / sessions
        self.cost = sample if self.cost is None else self.cost + LEARN_RATE * (sample - self.cost)

    @property
    def sessions(self) -> int:
        """Sessions sustained at most: the measured capacity, never above the configured cap,
        never below one."""
        if self.cost is None or self.cost <= 0:
            return self.static_cap
        return max(1, min(self.static_cap, math.floor(TARGET_UTILISATION / self.cost + 1e-9)))

"""How many real-time streams this audio replica sustains, measured, for admission.

Every RTF interval the service knows its decoders' utilisation (busy seconds per wall second per
worker, 1.0 = no spare time) and how many sessions it served; the shared estimate
(workloads/capacity.py) learns what one session costs from them and how many the replica
sustains. A new session past that is refused (the client hears which limit and why) instead of
being admitted into a replica where every session's captions would then fall behind together.
The cap is ``LT_AUDIO_LIMITS__MAX_SESSIONS``.

The estimate is linear in sessions, which batching makes pessimistic (a batched pass costs less
per session than a lone one); admission refuses only past the utilisation that means falling
behind real time, so the error lands on the side of admitting.
"""

from __future__ import annotations

from dataclasses import dataclass

from livetranslate.workloads import capacity


@dataclass
class CapacityEstimate(capacity.CapacityEstimate):
    def refusal(self) -> str:
        """Why a new session is refused, in words a client (and its operator) can act on."""
        if self.cost is None or self.sessions >= self.static_cap:
            return f"this replica serves at most {self.static_cap} sessions; try another"
        return (
            f"this replica sustains about {self.sessions} real-time streams (its decoders were "
            f"{self.last_utilisation:.0%} busy with {self.last_sessions:g}); try another"
        )

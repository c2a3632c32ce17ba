"""Failure handling shared by the workloads: a circuit breaker per upstream and jittered backoff.

The gateway holds one breaker per upstream service (audio, translation) for all its sessions; the
translation service one per engine step of its fallback chain. After ``failures`` consecutive
failures the circuit opens and calls fail fast for ``reset_seconds`` (a dead service costs a
thousand sessions one timeout, not a thousand), then one trial call at a time decides: success
closes it, failure opens it for another period. Callers that would rather wait than fail wait on
``wait_ready``: they wake the moment a trial closes the circuit, not a backoff period later; a
caller backing off after its own failed call waits on ``pause``, which ends early in the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class CircuitBreaker:
    def __init__(
        self, name: str, failures: int, reset_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.threshold = failures
        self.reset_seconds = reset_seconds
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._trial_at: float | None = None
        self._closed = asyncio.Event()
        self._closed.set()
        self._succeeded = asyncio.Event()

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open`` (a trial may be made)."""
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.reset_seconds else "open"

    def allow(self) -> bool:
        """Whether a call may be made now (in half-open state: the one trial, taken by this call)."""
        if self.opened_at is None:
            return True
        now = self.clock()
        if now - self.opened_at < self.reset_seconds:
            return False
        # One trial at a time; a trial that never reports back frees the slot after a period.
        if self._trial_at is not None and now - self._trial_at < self.reset_seconds:
            return False
        self._trial_at = now
        return True

    def retry_in(self) -> float:
        """Seconds until ``allow`` may say yes again (0 when it may now)."""
        if self.opened_at is None:
            return 0.0
        due = self.opened_at + self.reset_seconds
        if self._trial_at is not None:
            due = max(due, self._trial_at + self.reset_seconds)
        return max(0.0, due - self.clock())

    async def wait_ready(self) -> None:
        """Until a call may be tried: when a trial closes the circuit, or when the next trial is due."""
        delay = self.retry_in()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), delay)

    async def pause(self, seconds: float, jitter: float) -> None:
        """A caller's backoff after its own failed call: ``seconds``, or until a call through this
        breaker (this caller's or another's) succeeds, then up to ``jitter`` more so the callers
        that waited do not all retry in the same instant."""
        succeeded = self._succeeded
        try:
            await asyncio.wait_for(succeeded.wait(), seconds)
        except TimeoutError:
            return
        await asyncio.sleep(random.uniform(0.0, jitter))

    def success(self) -> None:
        if self.opened_at is not None:
            log.info("circuit closed", extra={"fields": {"upstream": self.name}})
        if self.failures:  # the upstream is back: wake every pause; later pauses get a fresh event
            self._succeeded.set()
            self._succeeded = asyncio.Event()
        self.failures = 0
        self.opened_at = None
        self._trial_at = None
        self._closed.set()

    def failure(self) -> None:
        self.failures += 1
        self._trial_at = None
        if self.failures >= self.threshold or self.opened_at is not None:  # a failed trial reopens
            if self.opened_at is None:
                log.warning(
                    "circuit open", extra={"fields": {"upstream": self.name, "failures": self.failures}}
                )
            self.opened_at = self.clock()
            self._closed.clear()


class Backoff:
    """Exponential backoff with full jitter, so reconnecting sessions do not stampede."""

    def __init__(self, base: float, cap: float) -> None:
        self._base = base
        self._cap = cap
        self._attempt = 0

    def next(self) -> float:
        delay = min(self._cap, self._base * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 30)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._attempt = 0

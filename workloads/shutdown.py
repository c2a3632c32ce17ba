"""Drain on SIGTERM, then exit: shared by the services whose replicas hand live streams over.

Kubernetes removes a pod by sending SIGTERM and killing it ``terminationGracePeriodSeconds``
later. Uvicorn's own handler closes every socket at once, cutting each stream wherever its speaker
is; a service that can hand its streams to another replica installs this instead, and exits when
its drain says it has finished.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

log = logging.getLogger(__name__)

# Why a live stream or session was handed over when it was: at a pause; nobody speaking when the
# drain began; no pause within the per-stream bound; the whole drain's bound.
HANDOVER_REASONS = ("pause", "idle", "bound", "deadline")


class Drainable(Protocol):
    """A replica's drain: started once, telling its listeners when it has finished."""

    def start(self, reason: str) -> bool: ...

    def on_finished(self, callback: Callable[[], None]) -> None: ...


class ReplicaDrain:
    """One replica's drain: started once (``start``), finished when ``_run`` returns; what the
    gateway's and the audio service's drains share. ``gauge`` is 1 while it drains; ``handovers``
    counts handovers by reason (``HANDOVER_REASONS``)."""

    what = "streams"  # what ``live()`` counts, for the logs and ``status``

    def __init__(self, gauge: Gauge, handovers: Counter, pipeline: str) -> None:
        self.active = False
        self.reason = ""
        self.started_at: float | None = None
        self.finished = False
        self._task: asyncio.Task[None] | None = None
        self._on_finished: list[Callable[[], None]] = []
        self._gauge = gauge.labels(pipeline=pipeline)
        self._gauge.set(0)
        self._handovers = {r: handovers.labels(pipeline=pipeline, reason=r) for r in HANDOVER_REASONS}

    def live(self) -> int:
        raise NotImplementedError

    async def _run(self) -> None:
        raise NotImplementedError

    def on_finished(self, callback: Callable[[], None]) -> None:
        self._on_finished.append(callback)

    def start(self, reason: str) -> bool:
        """Begin draining (idempotent); False when a drain was already under way."""
        if self.active:
            return False
        self.active = True
        self.reason = reason
        self.started_at = time.monotonic()
        self._gauge.set(1)
        log.info(
            f"draining: refusing new {self.what}, handing live ones over",
            extra={"fields": {"trigger": reason, self.what: self.live()}},
        )
        self._task = asyncio.get_running_loop().create_task(self._drain(), name="drain")
        return True

    def handed_over(self, reason: str) -> None:
        self._handovers[reason].inc()

    def status(self) -> dict[str, Any]:
        return {
            "draining": self.active,
            "finished": self.finished,
            "trigger": self.reason or None,
            "seconds": round(time.monotonic() - self.started_at, 3) if self.started_at else None,
            self.what: self.live(),
        }

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _drain(self) -> None:
        await self._run()
        self.finished = True
        log.info(
            "drained", extra={"fields": {"seconds": round(time.monotonic() - (self.started_at or 0.0), 3)}}
        )
        for callback in self._on_finished:
            callback()


def install_sigterm(drain: Drainable) -> Callable[[], None]:
    """Drain on SIGTERM, then exit; returns what undoes it (at the app's shutdown).

    Installed from the app's lifespan, that is after uvicorn's own handler, which it keeps: when
    the drain has finished, the uvicorn server it belongs to is told to exit (its shutdown then
    finds no connection left). A second SIGTERM exits at once. Outside uvicorn, the previous
    handler (or the default action) runs once the drain has finished.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)
    got_signal = False

    def exit_now() -> None:
        server = getattr(previous, "__self__", None)
        if server is not None and hasattr(server, "should_exit"):
            server.should_exit = True  # uvicorn.Server: a graceful shutdown, exit status 0
            return
        if not got_signal:
            return  # drained by request under some other server: stay up, not ready
        restore()
        if callable(previous):
            previous(signal.SIGTERM, None)
        elif previous == signal.SIG_DFL:
            signal.raise_signal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        nonlocal got_signal
        if loop.is_closed():  # left behind by a server that is gone: act as if never installed
            signal.signal(signal.SIGTERM, previous)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:
                signal.raise_signal(signal.SIGTERM)
            return
        again, got_signal = got_signal, True
        loop.call_soon_threadsafe(exit_now if again else lambda: drain.start("SIGTERM"))

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is on_sigterm:
            signal.signal(signal.SIGTERM, previous)

    drain.on_finished(exit_now)
    signal.signal(signal.SIGTERM, on_sigterm)
    return restore

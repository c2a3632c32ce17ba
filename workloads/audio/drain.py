"""Safe drain of an audio replica: its live streams resume on other replicas, then it exits.

On SIGTERM (the operator scaled the stage down, a rollout, a node drain) the replica

* turns ``/readyz`` 503 and refuses a new stream with the error ``draining`` and close 1012, so
  the Service and the gateways go to another replica;
* hands each live stream back to its gateway at a moment that loses nothing: at its next pause
  (the utterance end is sent, so every word heard is in a final), or at once when nobody is
  speaking, or after ``drain_session_seconds`` without a pause. The stream gets the error
  ``draining`` and close 1012; the gateway opens a stream on another replica at once (no backoff,
  no outage shown to the listener) and sends it the audio since the last final, which it keeps
  for exactly this (its replay buffer). A stream handed over mid-utterance loses nothing either:
  the words not yet final are heard again by the next replica from that audio;
* exits once no stream is left, or after ``drain_seconds`` in all.

The gateway's own drain (workloads/gateway/drain.py) moves client sessions between gateway
replicas; this one moves the gateway's streams between audio replicas, under the same session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from livetranslate import metrics

if TYPE_CHECKING:
    from livetranslate.workloads.audio.service import AudioService

log = logging.getLogger(__name__)

CLOSE_RESTART = 1012  # "service restart": the gateway resumes the stream elsewhere at once
CLOSE_REASON = "audio replica draining, resume elsewhere"

# Why a stream was handed over when it was: at a pause; nobody speaking when the drain began;
# no pause within drain_session_seconds; the whole drain's bound.
REASONS = ("pause", "idle", "bound", "deadline")


class AudioDrain:
    """One audio replica's drain: started once, finished when its streams are gone or time is up."""

    def __init__(self, service: AudioService) -> None:
        self.service = service
        self.active = False
        self.reason = ""
        self.started_at: float | None = None
        self.finished = False
        self._task: asyncio.Task[None] | None = None
        self._on_finished: list[Callable[[], None]] = []
        pipeline = service.settings.pipeline
        self._gauge = metrics.audio_draining(service.registry).labels(pipeline=pipeline)
        self._gauge.set(0)
        counter = metrics.audio_handovers(service.registry)
        self._handovers = {r: counter.labels(pipeline=pipeline, reason=r) for r in REASONS}

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
            "draining: refusing new streams, handing live ones back",
            extra={"fields": {"trigger": reason, "streams": len(self.service.connections)}},
        )
        self._task = asyncio.get_running_loop().create_task(self._run(), name="audio-drain")
        return True

    def handed_over(self, reason: str) -> None:
        self._handovers[reason].inc()

    def status(self) -> dict[str, Any]:
        return {
            "draining": self.active,
            "finished": self.finished,
            "trigger": self.reason or None,
            "seconds": round(time.monotonic() - self.started_at, 3) if self.started_at else None,
            "streams": len(self.service.connections),
        }

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        svc, s = self.service, self.service.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.drain_seconds
        for conn in list(svc.connections):
            conn.request_handover(s.drain_session_seconds)
        # A stream that was being accepted as the drain began is refused or registered by now;
        # registered ones were asked above or ask themselves (AudioConnection._begin).
        while svc.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if svc.connections:
            log.warning(
                "drain time limit reached; closing the streams left",
                extra={"fields": {"streams": len(svc.connections), "seconds": s.drain_seconds}},
            )
            for conn in list(svc.connections):
                conn.hand_over_now("deadline")
            while svc.connections and loop.time() < deadline + 2.0:
                await asyncio.sleep(0.05)
        self.finished = True
        log.info(
            "drained", extra={"fields": {"seconds": round(time.monotonic() - (self.started_at or 0.0), 3)}}
        )
        for callback in self._on_finished:
            callback()

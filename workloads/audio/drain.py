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
from typing import TYPE_CHECKING

from livetranslate import metrics
from livetranslate.workloads.shutdown import ReplicaDrain

if TYPE_CHECKING:
    from livetranslate.workloads.audio.service import AudioService

log = logging.getLogger(__name__)

CLOSE_RESTART = 1012  # "service restart": the gateway resumes the stream elsewhere at once
CLOSE_REASON = "audio replica draining, resume elsewhere"


class AudioDrain(ReplicaDrain):
    """One audio replica's drain: finished when its streams are gone or time is up."""

    what = "streams"

    def __init__(self, service: AudioService) -> None:
        registry, pipeline = service.registry, service.settings.pipeline
        super().__init__(metrics.audio_draining(registry), metrics.audio_handovers(registry), pipeline)
        self.service = service

    def live(self) -> int:
        return len(self.service.connections)

    async def _run(self) -> None:
        svc, s = self.service, self.service.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.drain_seconds
        for conn in list(svc.connections):
            conn.request_handover(s.drain_session_seconds)
        # A stream that was being accepted as the drain began is refused (AudioConnection._begin).
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

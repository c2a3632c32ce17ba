"""Safe drain: a gateway replica being removed hands its live sessions to the others, then exits.

Kubernetes removes a pod by sending SIGTERM, taking it out of the Service's endpoints and killing
it ``terminationGracePeriodSeconds`` later. Uvicorn's own SIGTERM handling closes every socket at
once (1012), cutting each session wherever its speaker is. Instead, on SIGTERM (or
``POST /v1/admin/drain``) the replica

* turns ``/readyz`` 503 and refuses a new ``session.start`` with the error ``draining`` and close
  1012, so clients (and the Service) go to another replica;
* hands each live session over at a moment that loses nothing (``Handover``): at its next pause
  (the audio service's utterance end), or after ``drain_session_seconds`` without one. The
  session's audio stream is stopped between two events, so every final it produced is in the
  session log and the audio after the last one (heard, not finalised) is saved with the session
  as its tail; the sentences already closed are translated and sent; everything queued for the
  client is sent; then the state is saved, the lease released, and the socket closed with 1012.
  The client reconnects at once with its ``sessionId`` and ``lastSegmentId``; the replica that
  takes the session sends the tail to its own audio stream first and tells the client, in
  ``session.started`` (``audioSeconds``), from which second to send its audio again;
* exits once no session is left, or after ``drain_seconds`` in all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from livetranslate import metrics
from livetranslate.workloads.gateway.outbox import CLOSE_RESTART
from livetranslate.workloads.shutdown import ReplicaDrain

if TYPE_CHECKING:
    from livetranslate.workloads.gateway.service import Gateway
    from livetranslate.workloads.gateway.session import Session

log = logging.getLogger(__name__)

CLOSE_REASON = "replica draining, resume elsewhere"


class Drain(ReplicaDrain):
    """One gateway replica's drain: finished when its sessions are gone or time is up."""

    what = "sessions"

    def __init__(self, gw: Gateway) -> None:
        registry, pipeline = gw.registry, gw.config.pipeline
        super().__init__(metrics.gateway_draining(registry), metrics.session_handovers(registry), pipeline)
        self.gw = gw

    def live(self) -> int:
        return len(self.gw.sessions)

    async def _run(self) -> None:
        gw, s = self.gw, self.gw.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.drain_seconds
        # A handover goes through the session store: while it is away the sessions stay here
        # (live, their captions unaffected), for as long as the drain leaves room to hand over.
        if not await gw.store.settled(max(0.0, s.drain_seconds - s.drain_session_seconds - 2.0)):
            log.warning(
                "session store unreachable: handing the sessions over anyway, they resume once it is back"
            )
        for session in list(gw.sessions):
            session.request_handover(s.drain_session_seconds)
        while (gw.sessions or gw.starting) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if gw.sessions:
            log.warning(
                "drain time limit reached; closing the sessions left",
                extra={"fields": {"sessions": len(gw.sessions), "seconds": s.drain_seconds}},
            )
            for session in list(gw.sessions):
                if not session.handing_over:
                    self.handed_over("deadline")
                session.hand_over_now(CLOSE_REASON)
        # What the handovers saved must be written before the exit (the store may be away).
        if not await gw.store.settled(max(0.0, deadline + 2.0 - loop.time())):
            log.warning("session store unreachable at exit: the sessions' last writes are lost")
        # The last sockets finish their close handshake (a second at most) before the exit.
        while gw.connections and loop.time() < deadline + 2.0:
            await asyncio.sleep(0.05)


async def hand_over(session: Session, max_wait: float) -> None:
    """Hand ``session`` to another replica at its next pause, or after ``max_wait`` without one.

    At a pause nothing is cut: the sentence just spoken is closed, finalised and translated here,
    and the audio after it (the pause itself, maybe a breath of the next words) goes with the
    session as its tail. Without a pause the open sentence's finals are in the log, where the next
    replica picks the sentence up, and its unfinalised audio goes as the tail.
    """
    gw = session.gw
    reason = "idle"
    if session.mid_utterance:
        session.pause.clear()
        try:
            await asyncio.wait_for(session.pause.wait(), max_wait)
            reason = "pause"
        except TimeoutError:
            reason = "bound"
    if session.finished:
        return  # it ended (session.end) while it waited: nothing to hand over
    began = time.monotonic()
    session.handing_over = True
    await session.stop_audio()
    # At a pause the sentence just closed is worth its translation from here (nobody speaks);
    # mid-speech the listener's captions wait on it, so the next replica does what is left.
    await session.stop_translations(max(2.0, gw.settings.drain_session_seconds) if reason != "bound" else 2.0)
    await session.outbox.queue.drained(gw.settings.stuck_client_seconds)
    gw.drain.handed_over(reason)
    log.info(
        "session handed over",
        extra={
            "session_id": session.sid,
            "fields": {"reason": reason, "seconds": round(time.monotonic() - began, 3)},
        },
    )
    session.outbox.close(CLOSE_RESTART, CLOSE_REASON)

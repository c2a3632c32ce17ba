"""The live session a client connection carries (``Session``).

It owns what the connection feeds: the audio-service stream (reconnected and replayed from the
last final when the service comes back; session_audio.py), its ``SentenceTranslator`` (finals
grouped into sentences, each translated whole with the sentences before it as context, and the
open one re-translated as it grows; translator.py), and the state written through to the session
store (see sessions.py for the resume semantics). It reaches its client only through an ``Outbox``
(outbox.py): events to send, or a request to close; it holds no reference to the connection.

Its tasks (the audio stream, the translator, the lease, a handover) run in one TaskGroup from
``start`` to ``finish`` or ``abort`` (session_tasks.py): one that fails ends the session, the
client told ``internal_error``, and none outlives it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from livetranslate.protocol import (
    ERR_INTERNAL,
    AudioFinal,
    AudioUtteranceEnd,
    ErrorEvent,
    TranscriptFinal,
)
from livetranslate.workloads.gateway.audio import ReplayBuffer, pcm16_seconds
from livetranslate.workloads.gateway.drain import hand_over
from livetranslate.workloads.gateway.outbox import CLOSE_NORMAL, CLOSE_RESTART, Outages, Outbox
from livetranslate.workloads.gateway.service import Gateway
from livetranslate.workloads.gateway.session_audio import SessionAudio
from livetranslate.workloads.gateway.session_tasks import SessionTasks
from livetranslate.workloads.gateway.sessions import LEASE_SECONDS, AudioTail, SegmentRecord, SessionState
from livetranslate.workloads.gateway.translator import Closed, SentenceTranslator

log = logging.getLogger(__name__)

# What the client is told when one of its session's tasks failed unexpectedly. The session is saved
# (not ended) and the connection closed, so the client resumes it, as after any other close.
INTERNAL_ERROR_MESSAGE = "the session failed on the gateway; connect again to resume it"


class Session(SessionAudio):
    def __init__(self, gw: Gateway, outbox: Outbox, state: SessionState, owner: str) -> None:
        self.gw = gw
        self.outbox = outbox
        self.state = state
        self.owner = owner
        self.sid = state.sessionId
        # Audio since the last final's end: replayed to a new audio stream after an outage.
        self._buf = ReplayBuffer()
        self._buf_start = state.audioSeconds  # session seconds of the first byte in _buf
        self._buf_limit = int(gw.settings.audio_buffer_seconds * 32000)
        self._sent = 0  # bytes of _buf the current audio stream has been given
        # The current stream while its writer waits with everything sent: feed() hands it new
        # frames directly (AudioLink.send_now) instead of waking the writer task for each.
        self._idle_link = None
        self._audio_more = asyncio.Event()
        self._flush_requested = False
        self._arrivals = collections.deque()
        self._write_lock = asyncio.Lock()
        self._tasks = SessionTasks(self.sid, self._failed)
        self.outages = Outages(outbox)
        self._audio_done = asyncio.Event()
        self.finished = False
        self.superseded = False
        # Drain (drain.py): a handover stops the audio stream between two events, never inside one.
        self._events_lock = asyncio.Lock()
        self.speaking = False  # a partial with words since the last utterance end
        self.pause = asyncio.Event()  # set at each utterance end
        self.handing_over = False
        self._handover: asyncio.Task[None] | None = None
        self.translator = SentenceTranslator(
            gw, state, outbox.send, self._persist, self.outages.report, self.outages.recovered
        )

    @property
    def translate_backlog(self) -> int:
        return self.translator.backlog

    # ---------------------------------------------------------------- lifecycle

    @property
    def mid_utterance(self) -> bool:  # a pause now would cut what is being said
        return self.speaking or self.translator.assembler.open is not None

    async def start(self, resumed: bool, last_segment_id: int | None, group: asyncio.TaskGroup) -> None:
        """Replay what a resumed session's client missed, then run the session's tasks in a
        TaskGroup of their own, held by a task in ``group`` (the connection's)."""
        if resumed:
            await self._replay(last_segment_id)
            await self._restore_tail()
        work = {"audio": self._audio_loop(), "translate": self.translator.run(), "lease": self._lease_loop()}
        await self._tasks.open(group, work)

    def _failed(self, failure: BaseExceptionGroup[Exception]) -> None:
        """A task of the session failed (its siblings are cancelled by now): end the session as a
        failed start does, with ``internal_error``; it is saved and the client may resume it."""
        log.error("session task failed; ending the session", exc_info=failure, extra={"session_id": self.sid})
        self.outbox.send("error", ErrorEvent(code=ERR_INTERNAL, message=INTERNAL_ERROR_MESSAGE))
        self.outbox.close(CLOSE_NORMAL, "internal error")

    async def _replay(self, ack: int | None) -> None:
        """Send what the client missed; queue translations a previous owner never finished."""
        for rec in await self.gw.store.segments(self.sid):
            resend = rec.segmentId > ack if ack is not None else not rec.finalSent
            if resend:
                self._queue_final(rec, latency=None)
            self.translator.replay(rec, resend)
        self.translator.replay_done()

    async def _restore_tail(self) -> None:
        """Audio a draining replica heard but did not finalise (drain.py): it goes out first."""
        tail = await self.gw.store.take_tail(self.sid)
        if tail is None or abs(tail.start + pcm16_seconds(len(tail.pcm)) - self.state.audioSeconds) > 1e-3:
            return  # none, or left by an older handover: the session's audio went on since
        self._buf.append(tail.pcm)
        self._buf_start = tail.start
        self._arrivals.append((self.state.audioSeconds, time.monotonic()))

    def request_handover(self, max_wait: float) -> None:
        """The replica drains: go on with another one at the next pause, or after ``max_wait``.

        Before ``start`` has the session's tasks running this does nothing: the connection asks
        again once they run (Connection._start)."""
        if self._handover is None and not self.finished:
            self._handover = self._tasks.spawn("handover", hand_over(self, max_wait))

    async def stop_audio(self) -> None:
        """Stop the audio stream between two of its events: every final it sent is logged, and
        the audio after the last one stays in the replay buffer (the tail a handover saves)."""
        async with self._events_lock:
            audio = self._tasks.get("audio")
            if audio is not None:
                audio.cancel()
        if audio is not None and not (await asyncio.wait({audio}, timeout=5.0))[0]:
            log.warning("audio stream slow to close; handing over without waiting for it")

    async def stop_translations(self, timeout: float) -> None:
        """Translate the closed sentences, then stop; past ``timeout`` the next replica does."""
        self.translator.stop()
        task = self._tasks.get("translate")
        if task is not None and not (await asyncio.wait({task}, timeout=timeout))[0]:
            log.warning("translations unfinished at handover; the next replica does them")
            task.cancel()
            await asyncio.wait({task}, timeout=2.0)

    def hand_over_now(self, reason: str) -> None:
        """The drain's time is up: go now, as things are (what is unfinished goes with it)."""
        if self.finished or self.outbox.close_request is not None:
            return
        if self._handover is not None:  # waiting for a pause, or stuck on the way
            self._handover.cancel()
        self.handing_over = True
        self.outbox.close(CLOSE_RESTART, reason)

    async def _detach(self) -> None:
        """The end of a handover: save the session with its audio tail and let it go."""
        await self.stop_audio()  # between two events; done already unless the drain ran out of time
        await self._tasks.close(timeout=5.0)
        self.state.audioSeconds = self.audio_seconds
        try:
            if self._buf:
                pcm = self._buf.read(0, len(self._buf))
                await self.gw.store.put_tail(self.sid, AudioTail(start=self._buf_start, pcm=pcm))
            await self.gw.store.save(self.state)
        finally:
            await self.gw.store.release(self.sid, self.owner)

    async def finish(self, graceful_end: bool) -> None:
        """Flush the audio stream and the translations, then end or detach the session.

        Runs after a ``session.end`` and also after a dropped connection: the words spoken just
        before a drop become finals in the log, delivered when the client resumes.
        """
        if self.finished:
            return
        self.finished = True
        if self._handover is not None and not self.handing_over:
            self._handover.cancel()  # still waiting for a pause: the session ends here instead
        if self.superseded:
            await self.abort()
            return
        if self.handing_over:
            await self._detach()
            return
        try:
            await self._flush()
        finally:
            await self._tasks.close()  # whatever happened: the connection's group waits for them
        self.state.audioSeconds = self.audio_seconds
        try:
            if graceful_end:
                await self.gw.store.delete(self.sid)
            else:
                await self.gw.store.save(self.state)
        finally:
            await self.gw.store.release(self.sid, self.owner)

    async def _flush(self) -> None:
        """The audio stream's last finals, and the translations of every sentence closed."""
        s = self.gw.settings
        self._flush_requested = True
        self._audio_more.set()
        try:
            await asyncio.wait_for(self._audio_done.wait(), s.flush_timeout)
        except TimeoutError:
            log.warning(
                "audio flush timed out; the last unfinalised audio is lost",
                extra={"fields": {"seconds": round(pcm16_seconds(len(self._buf)), 2)}},
            )
        closed = await self.translator.finish()
        if closed:
            await self._close_sentences(closed)
            self.translator.submit(closed)
        self.translator.stop()
        # asyncio.wait, not wait_for: a translator that failed or was cancelled with its group
        # (session_tasks.py) has nothing left to wait for, and its end is not this caller's.
        translating = self._tasks.get("translate")
        if (
            translating is not None
            and not (await asyncio.wait({translating}, timeout=s.translate_timeout + 5))[0]
        ):
            log.warning("translations still pending at session end")

    def release(self) -> None:
        """After finish or abort: forget the finished tasks (see Connection._release)."""
        self._tasks.release()
        self._idle_link = None
        self._handover = None
        self.translator.release()

    async def abort(self) -> None:
        """Stop at once, keeping nothing: the session lives on with another connection."""
        await self._tasks.close()
        self.finished = True
        await self.gw.store.release(self.sid, self.owner)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 4)
            try:
                owned = await self.gw.store.refresh(self.sid, self.owner)
            except Exception as exc:  # noqa: BLE001 - the store being briefly away is not fatal
                log.warning("lease refresh failed", extra={"fields": {"error": str(exc)}})
                continue
            if not owned:
                # Another connection resumed this session (this one looked alive but was not):
                # stop without writing state the new owner now holds.
                log.warning("session taken over by another connection")
                self.superseded = True
                self.outbox.close(CLOSE_RESTART, "session resumed on another connection")
                return

    async def _on_final(self, event: AudioFinal) -> None:
        self._trim_to(event.end)
        text = event.text.strip()
        if not text:
            return
        arrived = self._arrival_of(event.end)
        seg_id = self.state.nextSegment
        self.state.nextSegment += 1
        self.state.audioSeconds = self.audio_seconds
        rec = SegmentRecord(
            segmentId=seg_id,
            text=text,
            start=event.start,
            end=event.end,
            speaker=event.speaker,
            language=event.language if self.state.sourceLanguage == "auto" else None,
        )
        closed = self.translator.add_final(rec, arrived)
        await self._close_sentences(closed, also=rec)
        latency = time.monotonic() - arrived if arrived is not None else None
        self._queue_final(rec, latency)
        self.translator.submit(closed)
        self.translator.want_partial()

    async def _on_utterance_end(self, event: AudioUtteranceEnd) -> None:
        spoken = event.language if self.state.sourceLanguage == "auto" else None
        moved = spoken is not None and spoken != self.state.spokenLanguage
        if moved:
            self.state.spokenLanguage = spoken  # the session's next audio stream starts from it
        voices = event.speakers is not None and event.speakers != self.state.speakers
        if voices:
            self.state.speakers = event.speakers  # its labels carry over to the next stream alike
        closed = self.translator.utterance_end()
        if closed:
            await self._close_sentences(closed)
            self.translator.submit(closed)
        elif moved or voices:
            await self.gw.store.save(self.state)
        self.speaking = False
        self.pause.set()

    async def _close_sentences(self, closed: list[Closed], also: SegmentRecord | None = None) -> None:
        """Log the closing finals (and ``also``, a new final) and the session's sentence count."""
        records = [c.record for c in closed if c.record is not also]
        for rec in [*records, *([also] if also is not None else [])]:
            await self._persist(rec)
        await self.gw.store.save(self.state)

    def _queue_final(self, rec: SegmentRecord, latency: float | None) -> None:
        ev = TranscriptFinal(
            segmentId=rec.segmentId,
            text=rec.text,
            start=rec.start,
            end=rec.end,
            speaker=rec.speaker,
            language=rec.language,
            latency=round(latency, 4) if latency is not None else None,
        )

        async def sent() -> None:
            if latency is not None:
                self.gw.caption_latency.observe(latency)
            rec.finalSent = True
            await self._persist(rec)

        self.outbox.send("final", ev, sent)

    async def _persist(self, rec: SegmentRecord) -> None:
        async with self._write_lock:
            try:
                await self.gw.store.put_segment(self.sid, rec)
            except Exception as exc:  # noqa: BLE001 - the live captions matter more than the log
                log.warning("session store write failed", extra={"fields": {"error": str(exc)}})

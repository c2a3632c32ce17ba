"""The live session a client connection carries (``Session``).

It owns what the connection feeds: the audio-service stream (reconnected and replayed from the
last final when the service comes back), its ``SentenceTranslator`` (finals grouped into sentences,
each translated whole with the sentences before it as context, and the open one re-translated as
it grows; translator.py), and the state written through to the session store (see sessions.py
for the resume semantics). It reaches its client only through an ``Outbox`` (outbox.py): events
to send, or a request to close; it holds no reference to the connection.

An audio frame's path (``feed``: replay buffer, forward to the audio stream) creates no task,
timer, pydantic model or metric sample: at 1,000 live sessions it runs 10,000 times a second, and
what it costs is CPU per frame (benchmarks/results/gateway.md).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

from livetranslate.protocol import (
    ERR_DRAINING,
    AudioError,
    AudioFinal,
    AudioFlushed,
    AudioPartial,
    AudioStart,
    AudioUtteranceEnd,
    ErrorEvent,
    TranscriptFinal,
    TranscriptPartial,
)
from livetranslate.workloads.gateway.audio import ReplayBuffer, pcm16_seconds
from livetranslate.workloads.gateway.drain import hand_over
from livetranslate.workloads.gateway.outbox import CLOSE_RESTART, Outages, Outbox
from livetranslate.workloads.gateway.service import Gateway
from livetranslate.workloads.gateway.sessions import LEASE_SECONDS, AudioTail, SegmentRecord, SessionState
from livetranslate.workloads.gateway.translator import Closed, SentenceTranslator, wait_for_breaker
from livetranslate.workloads.gateway.upstream import (
    AudioLink,
    UpstreamDraining,
    UpstreamRejected,
    UpstreamUnavailable,
)
from livetranslate.workloads.resilience import Backoff

log = logging.getLogger(__name__)

_UPSTREAM_CHUNK = 32000  # 1 s of 16 kHz PCM16 per frame to the audio service, at most
# The audio service closes a stream that got no audio for a while with this error code.
AUDIO_IDLE_TIMEOUT = "idle_timeout"
# Pause before opening a stream again after a draining audio replica refused one: the Service
# stops routing to it within a moment (it is not ready), so the next try finds another replica.
DRAINING_RETRY_SECONDS = 0.1


class _UpstreamIdle(UpstreamUnavailable):
    """The audio service closed a stream it got no audio on: not an outage."""


class Session:
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
        self._idle_link: AudioLink | None = None
        self._audio_more = asyncio.Event()
        self._flush_requested = False
        self._arrivals: collections.deque[tuple[float, float]] = collections.deque()
        self._write_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[Any]] = []
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
    def audio_seconds(self) -> float:
        return self._buf_start + pcm16_seconds(len(self._buf))

    @property
    def translate_backlog(self) -> int:
        return self.translator.backlog

    # ---------------------------------------------------------------- lifecycle

    @property
    def mid_utterance(self) -> bool:  # a pause now would cut what is being said
        return self.speaking or self.translator.assembler.open is not None

    async def start(self, resumed: bool, last_segment_id: int | None) -> None:
        if resumed:
            await self._replay(last_segment_id)
            await self._restore_tail()
        self._tasks = [
            asyncio.create_task(self._audio_loop(), name=f"audio-{self.sid}"),
            asyncio.create_task(self.translator.run(), name=f"translate-{self.sid}"),
            asyncio.create_task(self._lease_loop(), name=f"lease-{self.sid}"),
        ]

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
        """The replica drains: go on with another one at the next pause, or after ``max_wait``."""
        if self._handover is None and not self.finished:
            self._handover = asyncio.create_task(hand_over(self, max_wait), name=f"handover-{self.sid}")

    async def stop_audio(self) -> None:
        """Stop the audio stream between two of its events: every final it sent is logged, and
        the audio after the last one stays in the replay buffer (the tail a handover saves)."""
        async with self._events_lock:
            audio = self._tasks[0] if self._tasks else None
            if audio is not None:
                audio.cancel()
        if audio is not None and not (await asyncio.wait({audio}, timeout=5.0))[0]:
            log.warning("audio stream slow to close; handing over without waiting for it")

    async def stop_translations(self, timeout: float) -> None:
        """Translate the closed sentences, then stop; past ``timeout`` the next replica does."""
        self.translator.stop()
        if len(self._tasks) > 1:
            task = self._tasks[1]
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
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
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)
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
        translate_task = self._tasks[1] if len(self._tasks) > 1 else None
        if translate_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(translate_task), s.translate_timeout + 5)
            except TimeoutError:
                log.warning("translations still pending at session end")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.state.audioSeconds = self.audio_seconds
        try:
            if graceful_end:
                await self.gw.store.delete(self.sid)
            else:
                await self.gw.store.save(self.state)
        finally:
            await self.gw.store.release(self.sid, self.owner)

    def release(self) -> None:
        """After finish or abort: forget the finished tasks (see Connection._release)."""
        self._tasks = []
        self._idle_link = None
        self._handover = None
        self.translator.release()

    async def abort(self) -> None:
        """Stop at once, keeping nothing: the session lives on with another connection."""
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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

    # ---------------------------------------------------------------- audio

    def feed(self, pcm16: bytes) -> bool:
        """Add converted audio. False when the replay buffer overflowed (audio service away).

        The buffer holds at most ``audio_buffer_seconds``, sent or not: audio the service has but
        has not finalised yet (a long silence gives no finals) is otherwise never trimmed.
        """
        buf = self._buf
        was_sent = self._sent == len(buf)
        buf.append(pcm16)
        self._arrivals.append((self._buf_start + len(buf) / 32000, time.monotonic()))
        overflow = len(buf) - self._buf_limit
        if overflow <= 0:
            link = self._idle_link
            if (
                link is not None
                and was_sent
                and len(pcm16) <= _UPSTREAM_CHUNK
                and not self._flush_requested
                and link.send_now(pcm16)
            ):
                self._sent += len(pcm16)
            else:
                self._audio_more.set()
            return True
        overflow -= overflow % 2
        lost = overflow > self._sent  # audio the audio service never got
        buf.drop_front(overflow)
        self._buf_start += pcm16_seconds(overflow)
        self._sent = max(0, self._sent - overflow)
        while len(self._arrivals) > 1 and self._arrivals[0][0] < self._buf_start:
            self._arrivals.popleft()
        self._audio_more.set()
        return not lost

    def _trim_to(self, t: float) -> None:
        """Forget buffered audio up to session time ``t`` (a final covers it)."""
        n = round((t - self._buf_start) * 16000) * 2
        n = max(0, min(n, self._sent))
        if n:
            self._buf.drop_front(n)
            self._buf_start += pcm16_seconds(n)
            self._sent -= n

    def _arrival_of(self, t: float) -> float | None:
        """Wall-clock (monotonic) time at which the sample at session time ``t`` reached us.

        Finals come in session-time order, so frames that ended before ``t`` are never asked
        about again: dropping them keeps this O(1) per final instead of a scan of the last minute.
        """
        arrivals = self._arrivals
        while len(arrivals) > 1 and arrivals[0][0] < t - 1e-6:
            arrivals.popleft()
        return arrivals[0][1] if arrivals else None

    async def _audio_loop(self) -> None:
        gw, s = self.gw, self.gw.settings
        backoff = Backoff(s.retry_base_seconds, s.retry_max_seconds)
        try:
            # The audio stream opens with the first audio: a session that only listens (or a
            # muted microphone) holds no upstream connection.
            while not self._buf and not self._flush_requested:
                self._audio_more.clear()
                await self._audio_more.wait()
            if not self._buf:
                return
            while True:
                if not gw.config.audio_url:
                    self.outages.report("audio", "no audio service is configured")
                    return
                if not gw.audio_breaker.allow():
                    self.outages.report("audio", "audio service unavailable (circuit open)")
                    await wait_for_breaker(gw.audio_breaker, min(0.25, s.retry_base_seconds))
                    continue
                start = AudioStart(
                    type="start",
                    sessionId=self.sid,
                    language=self.state.sourceLanguage,
                    diarization=gw.config.diarization,
                    maxSpeakers=gw.config.max_speakers,
                    timeOffset=round(self._buf_start, 6),
                    languages=gw.config.detect_languages if self.state.sourceLanguage == "auto" else [],
                )
                try:
                    link = await AudioLink.open(gw.config.audio_url, start, s.connect_timeout)
                except UpstreamDraining:
                    await asyncio.sleep(DRAINING_RETRY_SECONDS)
                    continue
                except (UpstreamUnavailable, UpstreamRejected) as exc:
                    gw.audio_breaker.failure()
                    self.outages.report("audio", str(exc))
                    await gw.audio_breaker.pause(backoff.next(), min(0.25, s.retry_base_seconds))
                    continue
                gw.audio_breaker.success()
                backoff.reset()
                self.outages.recovered("audio")
                self._sent = 0  # a new stream starts from the replay buffer
                writer = asyncio.create_task(self._write_audio(link))
                reader = asyncio.create_task(self._read_audio(link))
                try:
                    await asyncio.gather(writer, reader)
                    return  # flushed: the session's audio is complete
                except _UpstreamIdle:
                    # The audio service let an idle stream go (a muted microphone): open a new
                    # one when audio comes again. Nothing is wrong, so the client hears nothing.
                    while self._sent >= len(self._buf) and not self._flush_requested:
                        self._audio_more.clear()
                        await self._audio_more.wait()
                    if self._flush_requested and self._sent >= len(self._buf):
                        return
                except UpstreamDraining:
                    # The audio replica handed the stream back (it drains): every final it made
                    # is here, and the audio after the last one is still in the replay buffer.
                    # Another replica resumes from there at once; the listener sees nothing.
                    log.info("audio stream handed back by a draining replica; resuming elsewhere")
                except UpstreamUnavailable as exc:
                    gw.audio_breaker.failure()
                    self.outages.report("audio", str(exc))
                    await gw.audio_breaker.pause(backoff.next(), min(0.25, s.retry_base_seconds))
                finally:
                    for t in (writer, reader):
                        t.cancel()
                    await asyncio.gather(writer, reader, return_exceptions=True)
                    await link.close()
        finally:
            self._audio_done.set()

    async def _write_audio(self, link: AudioLink) -> None:
        flushed = False
        while True:
            if self._sent < len(self._buf):
                chunk = self._buf.read(self._sent, _UPSTREAM_CHUNK)
                await link.send_audio(chunk)
                self._sent += len(chunk)  # after the await: trims during it adjusted _sent
                continue
            if self._flush_requested and not flushed:
                await link.flush()
                flushed = True
            self._audio_more.clear()
            if self._sent >= len(self._buf):
                if flushed:
                    return
                self._idle_link = link
                try:
                    await self._audio_more.wait()
                finally:
                    self._idle_link = None

    async def _read_audio(self, link: AudioLink) -> None:
        idle = False
        async for event in link.events():
            async with self._events_lock:
                if isinstance(event, AudioPartial):
                    if event.text.strip():
                        self.speaking = True
                        ev = TranscriptPartial(
                            segmentId=self.state.nextSegment,
                            text=event.text.strip(),
                            start=event.start,
                            end=event.end,
                        )
                        self.outbox.send("partial", ev)
                elif isinstance(event, AudioFinal):
                    await self._on_final(event)
                elif isinstance(event, AudioUtteranceEnd):
                    await self._on_utterance_end()
                elif isinstance(event, AudioError):
                    if event.code == AUDIO_IDLE_TIMEOUT:
                        idle = True
                        continue
                    if event.code == ERR_DRAINING:
                        raise UpstreamDraining(f"audio service: {event.message}")
                    self.outbox.send("error", ErrorEvent(code=event.code, message=event.message))
                elif isinstance(event, AudioFlushed):
                    return
        if idle:
            raise _UpstreamIdle("audio service closed an idle stream")
        raise UpstreamUnavailable("audio service closed the stream")

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

    async def _on_utterance_end(self) -> None:
        closed = self.translator.utterance_end()
        if closed:
            await self._close_sentences(closed)
            self.translator.submit(closed)
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

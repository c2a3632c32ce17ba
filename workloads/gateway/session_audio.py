"""The audio side of a live ``Session`` (``SessionAudio``, a part of it kept in its own module).

Everything between the client's audio frames and the audio service: the replay buffer the frames
go into (audio since the last final, replayed to a new stream after an outage), the stream they go
out on (opened with the first audio, reconnected when the service comes back), and the stream's
events, which the session turns into transcripts (``_on_final``, ``_on_utterance_end``). Each
stream's writer and reader run as a pair under one ``asyncio.TaskGroup``: when one ends the stream
the other is cancelled, and neither outlives the stream.

An audio frame's path (``feed``: replay buffer, forward to the audio stream) creates no task,
timer, pydantic model or metric sample: at 1,000 live sessions it runs 10,000 times a second, and
what it costs is CPU per frame (benchmarks/results/gateway.md).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Coroutine
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
    TranscriptPartial,
)
from livetranslate.workloads.gateway.audio import ReplayBuffer, pcm16_seconds
from livetranslate.workloads.gateway.outbox import Outages, Outbox
from livetranslate.workloads.gateway.service import Gateway
from livetranslate.workloads.gateway.sessions import SessionState
from livetranslate.workloads.gateway.translator import wait_for_breaker
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


class SessionAudio:
    """The replay buffer and the audio-service stream; ``Session`` sets these up and handles the
    stream's transcripts."""

    gw: Gateway
    state: SessionState
    sid: str
    outbox: Outbox
    outages: Outages
    speaking: bool
    _buf: ReplayBuffer
    _buf_start: float  # session seconds of the first byte in _buf
    _buf_limit: int
    _sent: int  # bytes of _buf the current audio stream has been given
    _idle_link: AudioLink | None
    _audio_more: asyncio.Event
    _audio_done: asyncio.Event
    _flush_requested: bool
    _arrivals: collections.deque[tuple[float, float]]
    _events_lock: asyncio.Lock

    @property
    def audio_seconds(self) -> float:
        return self._buf_start + pcm16_seconds(len(self._buf))

    async def _on_final(self, event: AudioFinal) -> None:
        raise NotImplementedError

    async def _on_utterance_end(self, event: AudioUtteranceEnd) -> None:
        raise NotImplementedError

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
                    spokenLanguage=self.state.spokenLanguage,
                    speakers=self.state.speakers if gw.config.diarization else None,
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
                try:
                    ended = await self._run_link(link)
                finally:
                    await link.close()
                if ended is None:
                    return  # flushed: the session's audio is complete
                if isinstance(ended, _UpstreamIdle):
                    # The audio service let an idle stream go (a muted microphone): open a new
                    # one when audio comes again. Nothing is wrong, so the client hears nothing.
                    while self._sent >= len(self._buf) and not self._flush_requested:
                        self._audio_more.clear()
                        await self._audio_more.wait()
                    if self._flush_requested and self._sent >= len(self._buf):
                        return
                elif isinstance(ended, UpstreamDraining):
                    # The audio replica handed the stream back (it drains): every final it made
                    # is here, and the audio after the last one is still in the replay buffer.
                    # Another replica resumes from there at once; the listener sees nothing.
                    log.info("audio stream handed back by a draining replica; resuming elsewhere")
                else:
                    gw.audio_breaker.failure()
                    self.outages.report("audio", str(ended))
                    await gw.audio_breaker.pause(backoff.next(), min(0.25, s.retry_base_seconds))
        finally:
            self._audio_done.set()

    async def _run_link(self, link: AudioLink) -> UpstreamUnavailable | None:
        """Feed ``link`` and read its events, the two under one TaskGroup: None once the session's
        audio is flushed, else why the stream ended (the first of the pair to end it).

        The pair catches the stream's end itself, so the group sees no error: on Python 3.11 one
        raised into it while it waits would leave this task marked cancelled. Any other exception
        cancels the pair and ends the session (session_tasks.py)."""
        ended: list[UpstreamUnavailable] = []
        pair: list[asyncio.Task[None]] = []
        async with asyncio.TaskGroup() as group:
            for role, work in (("write", self._write_audio(link)), ("read", self._read_audio(link))):
                pair.append(
                    group.create_task(self._link_part(work, ended, pair), name=f"audio-{role}-{self.sid}")
                )
        return ended[0] if ended else None

    @staticmethod
    async def _link_part(
        work: Coroutine[Any, Any, None], ended: list[UpstreamUnavailable], pair: list[asyncio.Task[None]]
    ) -> None:
        try:
            await work
        except UpstreamUnavailable as exc:  # the stream ended: the other of the pair stops too
            ended.append(exc)
            current = asyncio.current_task()
            for task in pair:
                if task is not current:
                    task.cancel()

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
                    await self._on_utterance_end(event)
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

"""One client WebSocket (``Connection``) and the live session it carries (``Session``).

A ``Connection`` owns the socket: accept, a receive task (validation, limits, audio conversion), a
send task (a bounded queue where superseded partials are dropped first and finals never are) and
cleanup. A ``Session`` owns what the connection feeds: the audio-service stream (reconnected and
replayed from the last final when the service comes back), its ``SentenceTranslator`` (finals
grouped into sentences, each translated whole with the sentences before it as context, and the
open one re-translated as it grows; translator.py), and the state written through to the session
store (see sessions.py for the resume semantics).

An audio frame's path (receive, rate limits, conversion, replay buffer, forward to the audio
stream) creates no task, timer, pydantic model or metric sample: at 1,000 live sessions it runs
10,000 times a second, and what it costs is CPU per frame (benchmarks/results/gateway.md).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import WebSocket
from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from livetranslate.logs import bind_log_context
from livetranslate.protocol import (
    ERR_BAD_AUDIO,
    ERR_BAD_MESSAGE,
    ERR_CAPACITY,
    ERR_FRAME_TOO_LARGE,
    ERR_INTERNAL,
    ERR_NOT_STARTED,
    ERR_RATE_LIMITED,
    ERR_UNSUPPORTED_LANGUAGE,
    ERR_UPSTREAM,
    AudioError,
    AudioFinal,
    AudioFlushed,
    AudioPartial,
    AudioStart,
    AudioUtteranceEnd,
    ErrorEvent,
    SessionEnd,
    SessionEnded,
    SessionStart,
    SessionStarted,
    TranscriptFinal,
    TranscriptPartial,
    client_message_adapter,
)
from livetranslate.workloads.gateway.audio import AudioConverter, ReplayBuffer, pcm16_seconds
from livetranslate.workloads.gateway.service import Gateway
from livetranslate.workloads.gateway.sessions import LEASE_SECONDS, SegmentRecord, SessionState
from livetranslate.workloads.gateway.translator import Closed, SentenceTranslator, wait_for_breaker
from livetranslate.workloads.gateway.upstream import AudioLink, UpstreamRejected, UpstreamUnavailable
from livetranslate.workloads.resilience import Backoff

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
_UPSTREAM_CHUNK = 32000  # 1 s of 16 kHz PCM16 per frame to the audio service, at most

OnSent = Callable[[], Awaitable[None]] | None
# The audio service closes a stream that got no audio for a while with this error code.
AUDIO_IDLE_TIMEOUT = "idle_timeout"


class _UpstreamIdle(UpstreamUnavailable):
    """The audio service closed a stream it got no audio on: not an outage."""


class SendQueue:
    """Events waiting for a client. Partials are superseded by newer ones; nothing else is dropped.

    ``limit`` bounds what a slow client can make us hold: past it, queued partials go first; if
    finals and translations alone still exceed ``hard_limit`` the client is declared stuck.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.hard_limit = limit * 4
        self._items: collections.deque[tuple[str, str, OnSent]] = collections.deque()
        self._ready = asyncio.Event()
        self.dropped_partials = 0

    @property
    def depth(self) -> int:
        return len(self._items)

    def put(self, kind: str, text: str, on_sent: OnSent = None) -> bool:
        """False when the client is stuck (too many events it must not lose are waiting)."""
        if kind.startswith("partial"):
            kept = [item for item in self._items if item[0] != kind]
            self.dropped_partials += len(self._items) - len(kept)
            self._items = collections.deque(kept)
        self._items.append((kind, text, on_sent))
        if len(self._items) > self.limit:
            kept = [item for item in self._items if not item[0].startswith("partial")]
            self.dropped_partials += len(self._items) - len(kept)
            self._items = collections.deque(kept)
        self._ready.set()
        return len(self._items) <= self.hard_limit

    async def get(self) -> tuple[str, str, OnSent]:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def clear(self) -> None:
        """Forget what a closed connection can no longer be sent (the session log keeps the
        finals and translations for a resume)."""
        self._items.clear()

    async def drained(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._items and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return not self._items


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = time.monotonic()

    def take(self, amount: float) -> float:
        """Take ``amount``; returns the seconds to wait until the bucket is back in credit."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= amount
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class Session:
    def __init__(self, gw: Gateway, conn: Connection, state: SessionState, owner: str) -> None:
        self.gw = gw
        self.conn = conn
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
        self._outage_reported = {"audio": False, "translation": False}
        self._audio_done = asyncio.Event()
        self.finished = False
        self.superseded = False
        self.translator = SentenceTranslator(gw, state, conn.send_event, self._persist,
                                             self._report_outage, self._recovered)

    @property
    def audio_seconds(self) -> float:
        return self._buf_start + pcm16_seconds(len(self._buf))

    @property
    def translate_backlog(self) -> int:
        return self.translator.backlog

    # ---------------------------------------------------------------- lifecycle

    async def start(self, resumed: bool, last_segment_id: int | None) -> None:
        if resumed:
            await self._replay(last_segment_id)
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

    async def finish(self, graceful_end: bool) -> None:
        """Flush the audio stream and the translations, then end or detach the session.

        Runs after a ``session.end`` and also after a dropped connection: the words spoken just
        before a drop become finals in the log, delivered when the client resumes.
        """
        if self.finished:
            return
        self.finished = True
        if self.superseded:
            await self.abort()
            return
        s = self.gw.settings
        self._flush_requested = True
        self._audio_more.set()
        try:
            await asyncio.wait_for(self._audio_done.wait(), s.flush_timeout)
        except TimeoutError:
            log.warning("audio flush timed out; the last unfinalised audio is lost",
                        extra={"fields": {"seconds": round(pcm16_seconds(len(self._buf)), 2)}})
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
                await self.conn.shutdown("session resumed on another connection")
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
            if (link is not None and was_sent and len(pcm16) <= _UPSTREAM_CHUNK
                    and not self._flush_requested and link.send_now(pcm16)):
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
                    self._report_outage("audio", "no audio service is configured")
                    return
                if not gw.audio_breaker.allow():
                    self._report_outage("audio", "audio service unavailable (circuit open)")
                    await wait_for_breaker(gw.audio_breaker, min(0.25, s.retry_base_seconds))
                    continue
                start = AudioStart(type="start", sessionId=self.sid, language=self.state.sourceLanguage,
                                   diarization=gw.config.diarization, maxSpeakers=gw.config.max_speakers,
                                   timeOffset=round(self._buf_start, 6),
                                   languages=gw.config.detect_languages if self.state.sourceLanguage == "auto" else [])
                try:
                    link = await AudioLink.open(gw.config.audio_url, start, s.connect_timeout)
                except (UpstreamUnavailable, UpstreamRejected) as exc:
                    gw.audio_breaker.failure()
                    self._report_outage("audio", str(exc))
                    await gw.audio_breaker.pause(backoff.next(), min(0.25, s.retry_base_seconds))
                    continue
                gw.audio_breaker.success()
                backoff.reset()
                self._recovered("audio")
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
                except UpstreamUnavailable as exc:
                    gw.audio_breaker.failure()
                    self._report_outage("audio", str(exc))
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
            if isinstance(event, AudioPartial):
                if event.text.strip():
                    ev = TranscriptPartial(segmentId=self.state.nextSegment, text=event.text.strip(),
                                           start=event.start, end=event.end)
                    self.conn.send_event("partial", ev)
            elif isinstance(event, AudioFinal):
                await self._on_final(event)
            elif isinstance(event, AudioUtteranceEnd):
                await self._on_utterance_end()
            elif isinstance(event, AudioError):
                if event.code == AUDIO_IDLE_TIMEOUT:
                    idle = True
                    continue
                self.conn.send_event("error", ErrorEvent(code=event.code, message=event.message))
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
        rec = SegmentRecord(segmentId=seg_id, text=text, start=event.start, end=event.end,
                            speaker=event.speaker,
                            language=event.language if self.state.sourceLanguage == "auto" else None)
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

    async def _close_sentences(self, closed: list[Closed], also: SegmentRecord | None = None) -> None:
        """Log the closing finals (and ``also``, a new final) and the session's sentence count."""
        records = [c.record for c in closed if c.record is not also]
        for rec in [*records, *([also] if also is not None else [])]:
            await self._persist(rec)
        await self.gw.store.save(self.state)

    def _queue_final(self, rec: SegmentRecord, latency: float | None) -> None:
        ev = TranscriptFinal(segmentId=rec.segmentId, text=rec.text, start=rec.start, end=rec.end,
                             speaker=rec.speaker, language=rec.language,
                             latency=round(latency, 4) if latency is not None else None)

        async def sent() -> None:
            if latency is not None:
                self.gw.caption_latency.observe(latency)
            rec.finalSent = True
            await self._persist(rec)

        self.conn.send_event("final", ev, sent)

    async def _persist(self, rec: SegmentRecord) -> None:
        async with self._write_lock:
            try:
                await self.gw.store.put_segment(self.sid, rec)
            except Exception as exc:  # noqa: BLE001 - the live captions matter more than the log
                log.warning("session store write failed", extra={"fields": {"error": str(exc)}})

    # ---------------------------------------------------------------- outages

    def _report_outage(self, upstream: str, detail: str) -> None:
        if not self._outage_reported[upstream]:
            self._outage_reported[upstream] = True
            log.warning("upstream unavailable", extra={"fields": {"upstream": upstream, "error": detail}})
            what = ("audio is buffered and replayed when it returns" if upstream == "audio"
                    else "translations are retried when it returns")
            self.conn.send_event("error", ErrorEvent(
                code=ERR_UPSTREAM, message=f"{upstream} service unavailable ({detail}); {what}"))

    def _recovered(self, upstream: str) -> None:
        if self._outage_reported[upstream]:
            self._outage_reported[upstream] = False
            log.info("upstream recovered", extra={"fields": {"upstream": upstream}})


class Connection:
    """One client WebSocket, from accept to close."""

    def __init__(self, ws: WebSocket, gw: Gateway) -> None:
        self.ws = ws
        self.gw = gw
        s = gw.settings
        self.id = uuid.uuid4().hex[:12]
        self.queue = SendQueue(s.send_queue_events)
        self.session: Session | None = None
        self.converter: AudioConverter | None = None
        self._messages = TokenBucket(s.max_messages_per_second, s.max_messages_per_second * 2)
        self._bytes: TokenBucket | None = None
        self._bad: collections.deque[float] = collections.deque()
        self._close: tuple[int, str] | None = None
        self._ended = False
        self._receiver: asyncio.Task[None] | None = None
        self._last_rx = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- run

    async def run(self) -> None:
        await self.ws.accept()
        self.gw.connections += 1
        bind_log_context(connection=self.id)
        self._receiver = asyncio.create_task(self._receive_loop())
        sender = asyncio.create_task(self._send_loop())
        try:
            await asyncio.wait({self._receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._receiver.cancel()
            await asyncio.gather(self._receiver, return_exceptions=True)
            if self.session is not None:
                try:
                    await self.session.finish(graceful_end=False)
                except Exception:
                    log.exception("session cleanup failed", extra={"session_id": self.session.sid})
                self.gw.sessions.discard(self.session)
            # Errors that explain a close (capacity, bad messages) reach the client before it.
            if not sender.done() and not (self._close and self._close[1].startswith("client too slow")):
                await self.queue.drained(2.0)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            self.gw.connections -= 1
            await self._close_socket()
            self._release()

    def _release(self) -> None:
        """Drop the references that tie this connection's objects into cycles.

        The idle timer's callback, the tasks (a task that ended in an exception holds its traceback,
        whose frames hold us), events left unsent and the session (which points back here) would
        otherwise leave each closed connection as cyclic garbage, about 140 objects freed only by
        a full collection. After a surge of sessions ends, that garbage is as large as the surge
        was, and the full collection that frees it stops the event loop for every live session.
        """
        self._idle_timer = None
        self._receiver = None
        self.queue.clear()  # their sent-callbacks hold the session
        if self.session is not None:
            self.session.release()
        self.session = None

    async def shutdown(self, reason: str) -> None:
        self._close = (1012, reason)
        if self._receiver is not None:
            self._receiver.cancel()

    async def _close_socket(self) -> None:
        code, reason = self._close or (CLOSE_NORMAL, "")
        if self.ws.application_state == WebSocketState.CONNECTED:
            try:
                # asyncio.timeout, not wait_for: wait_for runs the close as a task of its own, and
                # when the peer is gone that task keeps the exception whose traceback holds the
                # task, a cycle holding this connection (see _release).
                async with asyncio.timeout(2.0):
                    await self.ws.close(code, reason)
            except Exception as exc:  # noqa: BLE001 - the peer may be gone already
                log.debug("close failed", extra={"fields": {"error": str(exc)}})

    def send_event(self, kind: str, event: BaseModel, on_sent: OnSent = None) -> None:
        """Queue an event; ``kind`` "partial" (a transcript) and "partial:<lang>" (a sentence's
        translation so far) are superseded by the next event of the same kind."""
        if not self.queue.put(kind, event.model_dump_json(exclude_none=True), on_sent):
            self._fail(CLOSE_POLICY, "client too slow: send queue full")

    def _fail(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = (code, reason)
            log.info("closing connection", extra={"fields": {"code": code, "reason": reason}})
        if self._receiver is not None:
            self._receiver.cancel()

    async def _send_loop(self) -> None:
        stuck = self.gw.settings.stuck_client_seconds
        loop = asyncio.get_running_loop()
        while True:
            _kind, text, on_sent = await self.queue.get()
            # A timer, not wait_for: wait_for would wrap every send in a task of its own.
            timer = loop.call_later(stuck, self._fail, CLOSE_POLICY,
                                    f"client too slow: a send blocked for {stuck:.0f}s")
            try:
                await self.ws.send_text(text)
            except (WebSocketDisconnect, RuntimeError, OSError):
                self._fail(CLOSE_NORMAL, "")
                return
            finally:
                timer.cancel()
            if on_sent is not None:
                await on_sent()

    # ---------------------------------------------------------------- receive

    def _error(self, code: str, message: str, bad: bool = True) -> None:
        self.send_event("error", ErrorEvent(code=code, message=message))
        if not bad:
            return
        s = self.gw.settings
        now = time.monotonic()
        self._bad.append(now)
        while self._bad and self._bad[0] < now - s.bad_message_window:
            self._bad.popleft()
        if len(self._bad) > s.max_bad_messages:
            self._fail(CLOSE_POLICY, "too many bad messages")

    async def _receive_loop(self) -> None:
        s = self.gw.settings
        loop = asyncio.get_running_loop()
        # The idle limit is one timer per connection, re-armed only when it fires early, rather
        # than a wait_for per message (which wraps every receive in a new task and timer).
        self._last_rx = loop.time()
        self._idle_timer = loop.call_at(self._last_rx + s.start_timeout_seconds, self._idle_check)
        try:
            while True:
                msg = await self.ws.receive()
                self._last_rx = loop.time()
                if msg["type"] == "websocket.disconnect":
                    return
                await self._on_message(msg)
                # Once closing is decided, stop reading: a cancel only lands at the next real
                # suspension, and a backlog of queued frames never suspends.
                if self._ended or self._close is not None:
                    return
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()

    def _idle_check(self) -> None:
        s = self.gw.settings
        timeout = s.idle_timeout_seconds if self.session else s.start_timeout_seconds
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_rx >= timeout - 0.01:
            self._fail(CLOSE_POLICY, "idle timeout" if self.session else "no session.start received")
        else:
            self._idle_timer = loop.call_at(self._last_rx + timeout, self._idle_check)

    async def _on_message(self, msg: MutableMapping[str, Any]) -> None:
        if self._messages.take(1) > 1.0:
            self._error(ERR_RATE_LIMITED, f"more than {self.gw.settings.max_messages_per_second:.0f} "
                        "messages per second; message dropped")
            return
        data = msg.get("bytes")
        if data is not None:
            await self._on_binary(data)
        else:
            await self._on_text(msg.get("text") or "")

    async def _on_binary(self, data: bytes) -> None:
        s = self.gw.settings
        if len(data) > s.max_frame_bytes:
            self._error(ERR_FRAME_TOO_LARGE, f"binary frame of {len(data)} bytes; the limit is "
                        f"{s.max_frame_bytes}")
            return
        if self.session is None or self.converter is None:
            self._error(ERR_NOT_STARTED, "send session.start before audio")
            return
        if self._bytes is not None:
            wait = self._bytes.take(len(data))
            if wait > 0:
                await asyncio.sleep(wait)  # TCP backpressure: the client slows to what we allow
        try:
            pcm = self.converter.convert(data)
        except Exception as exc:  # noqa: BLE001 - a frame numpy/soxr cannot take is the client's
            self._error(ERR_BAD_AUDIO, f"cannot decode audio frame: {exc}")
            return
        if pcm and not self.session.feed(pcm):
            self.send_event("error", ErrorEvent(
                code=ERR_UPSTREAM, message="audio service away for longer than the replay buffer; "
                "the oldest buffered audio was dropped"))

    async def _on_text(self, text: str) -> None:
        s = self.gw.settings
        if len(text.encode()) > s.max_frame_bytes:
            self._error(ERR_FRAME_TOO_LARGE, "text frame over the frame size limit")
            return
        try:
            message = client_message_adapter.validate_json(text)
        except ValidationError as exc:
            self._error(ERR_BAD_MESSAGE, _describe(exc))
            return
        if isinstance(message, SessionStart):
            if self.session is not None:
                self._error(ERR_BAD_MESSAGE, "session already started on this connection")
                return
            await self._start(message)
        elif isinstance(message, SessionEnd):
            if self.session is None:
                self._error(ERR_NOT_STARTED, "no session to end")
                return
            await self._end()

    async def _start(self, start: SessionStart) -> None:
        gw, cfg = self.gw, self.gw.config
        if gw.at_capacity:
            self.send_event("error", ErrorEvent(
                code=ERR_CAPACITY, message=f"this gateway replica holds its maximum of "
                f"{cfg.max_sessions} sessions; retry shortly (another replica may have room)"))
            self._fail(CLOSE_TRY_AGAIN, "capacity exceeded")
            return
        sid = start.sessionId or uuid.uuid4().hex
        owner = f"{gw.replica_id}:{self.id}"
        for other in [x for x in gw.sessions if x.sid == sid and x.conn is not self]:
            # The client is back while its old socket still looks open here (a drop without
            # FIN): end the old connection now; its flush finishes before our claim succeeds.
            log.info("resume while the previous connection is open; closing that one",
                     extra={"session_id": sid})
            await other.conn.shutdown("session resumed on another connection")
        if not await gw.store.claim(sid, owner, gw.settings.resume_wait_seconds):
            log.warning("previous owner kept the session lease; taking it over", extra={"session_id": sid})
            await gw.store.take_over(sid, owner)
        state = await gw.store.load(sid)
        resumed = state is not None
        # A resume keeps the session's source language; a targetLanguages list in it replaces the
        # session's from the next segment on (a listener may change languages when it comes back).
        source = state.sourceLanguage if state else start.sourceLanguage or cfg.source_language
        asked = start.targetLanguages
        targets = asked if asked is not None else (state.targetLanguages if state else cfg.target_languages)
        problem = _unknown_targets(targets, cfg.target_languages) if state is None or asked is not None else None
        if state is None and source != cfg.source_language and cfg.source_language != "auto":
            problem = problem or f"sourceLanguage {source!r}: this pipeline transcribes {cfg.source_language!r}"
        if problem:
            await gw.store.release(sid, owner)
            self._error(ERR_UNSUPPORTED_LANGUAGE, problem, bad=False)
            return
        if state is None:
            state = SessionState(sessionId=sid, sourceLanguage=source, targetLanguages=list(targets))
            await gw.store.save(state)
        elif list(targets) != state.targetLanguages:
            log.info("resumed session changes its target languages", extra={"session_id": sid, "fields": {
                "from": state.targetLanguages, "to": list(targets)}})
            state.targetLanguages = list(targets)
            await gw.store.save(state)
        bind_log_context(session_id=sid)
        self.converter = AudioConverter(start.sampleRate, start.encoding, start.channels)
        self._bytes = TokenBucket(self.converter.bytes_per_second * gw.settings.max_audio_speed,
                                  self.converter.bytes_per_second * gw.settings.max_audio_speed)
        session = Session(gw, self, state, owner)
        self.session = session
        gw.sessions.add(session)
        self.send_event("control", SessionStarted(sessionId=sid, resumed=resumed, sampleRate=start.sampleRate,
                                                  targetLanguages=state.targetLanguages))
        try:
            await session.start(resumed, start.lastSegmentId)
        except Exception:
            log.exception("session start failed")
            self.send_event("error", ErrorEvent(code=ERR_INTERNAL, message="session could not start"))
            raise
        log.info("session started", extra={"fields": {"resumed": resumed, "sampleRate": start.sampleRate,
                                                      "encoding": start.encoding}})

    async def _end(self) -> None:
        assert self.session is not None and self.converter is not None
        tail = self.converter.convert(b"", last=True)
        if tail:
            self.session.feed(tail)
        await self.session.finish(graceful_end=True)
        self.send_event("control", SessionEnded(sessionId=self.session.sid))
        await self.queue.drained(self.gw.settings.stuck_client_seconds)
        self.gw.sessions.discard(self.session)
        self._ended = True
        log.info("session ended")


def _unknown_targets(targets: list[str], served: list[str]) -> str | None:
    """The error for target languages this pipeline does not translate to, if any."""
    unknown = [t for t in targets if t not in served]
    return f"targetLanguages {unknown}: this pipeline translates to {served} only" if unknown else None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "invalid message: " + "; ".join(parts)

"""One client WebSocket (``Connection``), from accept to close.

A ``Connection`` owns the socket: accept, a receive task (validation, limits, audio conversion), a
send task draining the ``Outbox`` (outbox.py: a bounded queue where superseded partials are
dropped first and finals never are) and cleanup. The live session it carries is a ``Session``
(session.py), which reaches the client only through that outbox. The two tasks, and the task
holding the session's own (session_tasks.py), run in one ``asyncio.TaskGroup``: none outlives
the connection, and one that fails is logged and ends it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import Coroutine, MutableMapping
from typing import Any

from fastapi import WebSocket
from pydantic import BaseModel, ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from livetranslate.logs import bind_log_context
from livetranslate.protocol import (
    ERR_BAD_AUDIO,
    ERR_BAD_MESSAGE,
    ERR_CAPACITY,
    ERR_DRAINING,
    ERR_FRAME_TOO_LARGE,
    ERR_INTERNAL,
    ERR_NOT_STARTED,
    ERR_RATE_LIMITED,
    ERR_UNSUPPORTED_LANGUAGE,
    ERR_UPSTREAM,
    ErrorEvent,
    SessionEnd,
    SessionEnded,
    SessionStart,
    SessionStarted,
    client_message_adapter,
    describe_invalid,
)
from livetranslate.workloads.gateway.audio import AudioConverter
from livetranslate.workloads.gateway.outbox import (
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_RESTART,
    CLOSE_TRY_AGAIN,
    OnSent,
    Outbox,
)
from livetranslate.workloads.gateway.service import Gateway
from livetranslate.workloads.gateway.session import Session
from livetranslate.workloads.gateway.sessions import SessionState, StoreUnavailable

log = logging.getLogger(__name__)


class _StartFailed(Exception):
    """The session could not start: logged, and the client told, where it happened."""


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


class Connection:
    """One client WebSocket, from accept to close."""

    def __init__(self, ws: WebSocket, gw: Gateway) -> None:
        self.ws = ws
        self.gw = gw
        s = gw.settings
        self.id = uuid.uuid4().hex[:12]
        self.outbox = Outbox(s.send_queue_events, on_close=self._stop_receiving)
        self.queue = self.outbox.queue
        self.session: Session | None = None
        self.converter: AudioConverter | None = None
        self._messages = TokenBucket(s.max_messages_per_second, s.max_messages_per_second * 2)
        self._bytes: TokenBucket | None = None
        self._bad: collections.deque[float] = collections.deque()
        self._ended = False
        self._group: asyncio.TaskGroup | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._last_rx = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- run

    async def run(self) -> None:
        await self.ws.accept()
        self.gw.connections += 1
        bind_log_context(connection=self.id)
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                receiver = group.create_task(
                    self._guard("receive", self._receive_loop()), name=f"receive-{self.id}"
                )
                self._receiver = receiver
                sender = group.create_task(self._guard("send", self._send_loop()), name=f"send-{self.id}")
                try:
                    await asyncio.wait({receiver, sender}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    await self._wind_down(receiver, sender)
        finally:
            self.gw.connections -= 1
            await self._close_socket()
            self._release()

    async def _guard(self, loop: str, work: Coroutine[Any, Any, None]) -> None:
        """Run the receive or the send loop. One that fails ends the connection, as its return does:
        the failure is logged here, not raised into the TaskGroup, which would cancel the cleanup."""
        try:
            await work
        except _StartFailed:
            pass
        except Exception:
            extra = {"session_id": self.session.sid} if self.session is not None else {}
            log.exception("connection %s loop failed", loop, extra=extra)

    async def _wind_down(self, receiver: asyncio.Task[None], sender: asyncio.Task[None]) -> None:
        """Stop reading, end or detach the session, send what is queued, stop sending."""
        receiver.cancel()
        await asyncio.gather(receiver, return_exceptions=True)
        if self.session is not None:
            if self.session.handing_over and self.converter is not None:
                # The resampler's last samples belong to the tail the next replica gets.
                self.session.feed(self.converter.convert(b"", last=True))
            try:
                await self.session.finish(graceful_end=False)
            except Exception:
                log.exception("session cleanup failed", extra={"session_id": self.session.sid})
            self.gw.sessions.discard(self.session)
        # Errors that explain a close (capacity, bad messages) reach the client before it.
        closing = self.outbox.close_request
        if not sender.done() and not (closing and closing[1].startswith("client too slow")):
            await self.queue.drained(2.0)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)

    def _release(self) -> None:
        """Drop the references that tie this connection's objects into cycles.

        The idle timer's callback, the tasks (a task that ended in an exception holds its traceback,
        whose frames hold us), events left unsent and the session (which points back here) would
        otherwise leave each closed connection as cyclic garbage, about 140 objects freed only by
        a full collection. After a surge of sessions ends, that garbage is as large as the surge
        was, and the full collection that frees it stops the event loop for every live session.
        """
        self._idle_timer = None
        self._group = None
        self._receiver = None
        self.outbox.on_close = None
        self.queue.clear()  # their sent-callbacks hold the session
        if self.session is not None:
            self.session.release()
        self.session = None

    async def _close_socket(self) -> None:
        code, reason = self.outbox.close_request or (CLOSE_NORMAL, "")
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
        self.outbox.send(kind, event, on_sent)

    def _fail(self, code: int, reason: str) -> None:
        self.outbox.close(code, reason)

    def _stop_receiving(self) -> None:
        """The outbox was asked to close (by us, the session or a full queue): stop reading."""
        if self._receiver is not None:
            self._receiver.cancel()

    async def _send_loop(self) -> None:
        stuck = self.gw.settings.stuck_client_seconds
        loop = asyncio.get_running_loop()
        while True:
            _kind, text, on_sent = await self.queue.get()
            # A timer, not wait_for: wait_for would wrap every send in a task of its own.
            timer = loop.call_later(
                stuck, self._fail, CLOSE_POLICY, f"client too slow: a send blocked for {stuck:.0f}s"
            )
            try:
                await self.ws.send_text(text)
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.queue.done()
                self._fail(CLOSE_NORMAL, "")
                return
            finally:
                timer.cancel()
            try:
                if on_sent is not None:
                    await on_sent()
            finally:
                self.queue.done()

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
                if self._ended or self.outbox.close_request is not None:
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
            self._error(
                ERR_RATE_LIMITED,
                f"more than {self.gw.settings.max_messages_per_second:.0f} "
                "messages per second; message dropped",
            )
            return
        data = msg.get("bytes")
        if data is not None:
            await self._on_binary(data)
        else:
            await self._on_text(msg.get("text") or "")

    async def _on_binary(self, data: bytes) -> None:
        s = self.gw.settings
        if len(data) > s.max_frame_bytes:
            self._error(
                ERR_FRAME_TOO_LARGE, f"binary frame of {len(data)} bytes; the limit is {s.max_frame_bytes}"
            )
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
            self.send_event(
                "error",
                ErrorEvent(
                    code=ERR_UPSTREAM,
                    message="audio service away for longer than the replay buffer; "
                    "the oldest buffered audio was dropped",
                ),
            )

    async def _on_text(self, text: str) -> None:
        s = self.gw.settings
        if len(text.encode()) > s.max_frame_bytes:
            self._error(ERR_FRAME_TOO_LARGE, "text frame over the frame size limit")
            return
        try:
            message = client_message_adapter.validate_json(text)
        except ValidationError as exc:
            self._error(ERR_BAD_MESSAGE, describe_invalid(exc))
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
        gw = self.gw
        if gw.drain.active:
            self.send_event(
                "error",
                ErrorEvent(
                    code=ERR_DRAINING,
                    message="this gateway replica is shutting down; connect again "
                    "(another replica takes the session)",
                ),
            )
            self._fail(CLOSE_RESTART, "replica draining")
            return
        gw.starting += 1
        try:
            await self._start_session(start)
        finally:
            gw.starting -= 1
        if self.session is not None and gw.drain.active:
            self.session.request_handover(gw.settings.drain_session_seconds)  # drain began meanwhile

    async def _start_session(self, start: SessionStart) -> None:
        gw, cfg = self.gw, self.gw.config
        if gw.at_capacity:
            gw.refusals.inc()
            self.send_event(
                "error",
                ErrorEvent(
                    code=ERR_CAPACITY,
                    message=f"this gateway replica holds its maximum of "
                    f"{cfg.max_sessions} sessions; retry shortly (another replica may have room)",
                ),
            )
            self._fail(CLOSE_TRY_AGAIN, "capacity exceeded")
            return
        sid = start.sessionId or uuid.uuid4().hex
        owner = f"{gw.replica_id}:{self.id}"
        for other in [x for x in gw.sessions if x.sid == sid and x.outbox is not self.outbox]:
            # The client is back while its old socket still looks open here (a drop without
            # FIN): end the old connection now; its flush finishes before our claim succeeds.
            log.info(
                "resume while the previous connection is open; closing that one", extra={"session_id": sid}
            )
            other.outbox.close(CLOSE_RESTART, "session resumed on another connection")
        try:
            state = await self._claim(sid, owner)
        except StoreUnavailable as exc:
            if start.sessionId is not None:
                # It may be a resume: without the store its log and numbering are unknown here,
                # and a fresh start under the same id would number finals the client has again.
                self.send_event(
                    "error",
                    ErrorEvent(
                        code=ERR_UPSTREAM,
                        message=f"{exc}: session {sid} cannot be resumed now; connect again shortly",
                    ),
                )
                self._fail(CLOSE_TRY_AGAIN, "session store unreachable")
                return
            # A new session needs nothing from the store: it starts, and becomes resumable once
            # the store is back (its writes wait for it).
            log.warning(
                "session store unreachable; starting a new session without it", extra={"session_id": sid}
            )
            state = None
        resumed = state is not None
        # A resume keeps the session's source language; a targetLanguages list in it replaces the
        # session's from the next segment on (a listener may change languages when it comes back).
        source = state.sourceLanguage if state else start.sourceLanguage or cfg.source_language
        asked = start.targetLanguages
        targets = asked if asked is not None else (state.targetLanguages if state else cfg.target_languages)
        problem = (
            _unknown_targets(targets, cfg.target_languages) if state is None or asked is not None else None
        )
        if state is None and source != cfg.source_language and cfg.source_language != "auto":
            problem = (
                problem or f"sourceLanguage {source!r}: this pipeline transcribes {cfg.source_language!r}"
            )
        if problem:
            await gw.store.release(sid, owner)
            self._error(ERR_UNSUPPORTED_LANGUAGE, problem, bad=False)
            return
        if state is None:
            state = SessionState(sessionId=sid, sourceLanguage=source, targetLanguages=list(targets))
            await gw.store.save(state)
        elif list(targets) != state.targetLanguages:
            log.info(
                "resumed session changes its target languages",
                extra={"session_id": sid, "fields": {"from": state.targetLanguages, "to": list(targets)}},
            )
            state.targetLanguages = list(targets)
            await gw.store.save(state)
        bind_log_context(session_id=sid)
        self.converter = AudioConverter(start.sampleRate, start.encoding, start.channels)
        self._bytes = TokenBucket(
            self.converter.bytes_per_second * gw.settings.max_audio_speed,
            self.converter.bytes_per_second * gw.settings.max_audio_speed,
        )
        session = Session(gw, self.outbox, state, owner)
        self.session = session
        gw.sessions.add(session)
        # audioSeconds: where the session's audio goes on. A client that still has what it sent
        # after that point (lost in flight when the last connection closed) sends it again.
        extra = {"audioSeconds": state.audioSeconds} if resumed else {}
        self.send_event(
            "control",
            SessionStarted(
                sessionId=sid,
                resumed=resumed,
                sampleRate=start.sampleRate,
                targetLanguages=state.targetLanguages,
                **extra,
            ),
        )
        assert self._group is not None
        try:
            await session.start(resumed, start.lastSegmentId, self._group)
        except Exception as exc:
            log.exception("session start failed")
            self.send_event("error", ErrorEvent(code=ERR_INTERNAL, message="session could not start"))
            raise _StartFailed from exc
        log.info(
            "session started",
            extra={
                "fields": {"resumed": resumed, "sampleRate": start.sampleRate, "encoding": start.encoding}
            },
        )

    async def _claim(self, sid: str, owner: str) -> SessionState | None:
        """Take the session's lease (waiting for a previous owner's flush) and read its state."""
        gw = self.gw
        if not await gw.store.claim(sid, owner, gw.settings.resume_wait_seconds):
            log.warning("previous owner kept the session lease; taking it over", extra={"session_id": sid})
            await gw.store.take_over(sid, owner)
        return await gw.store.load(sid)

    async def _end(self) -> None:
        assert self.session is not None and self.converter is not None
        if self.session.handing_over:
            # The session is on its way to another replica, where the client ends it again.
            log.info("session.end during a handover; the next replica ends the session")
            return
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

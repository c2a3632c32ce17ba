"""One gateway session on ``/v1/audio``: accept, receive, decode, send, clean up.

The connection owns three tasks: this coroutine receives frames, a decoder task runs the
session's decoder passes through the shared scheduler one at a time, and a sender task writes
events in order. A bad frame gets an ``error`` event; a client that keeps sending garbage, goes
idle, or sends only silence for too long is closed with a reason. Nothing here touches another
session's state, so one session's failure never disturbs another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect
from pydantic import BaseModel, ValidationError

from livetranslate.logs import bind_log_context
from livetranslate.protocol import (
    ERR_BAD_AUDIO,
    ERR_BAD_MESSAGE,
    ERR_CAPACITY,
    ERR_DRAINING,
    ERR_FRAME_TOO_LARGE,
    ERR_INTERNAL,
    ERR_NOT_STARTED,
    MAX_FRAME_BYTES,
    MODEL_SAMPLE_RATE,
    AudioError,
    AudioFinal,
    AudioFlush,
    AudioFlushed,
    AudioPartial,
    AudioReady,
    AudioStart,
    AudioUtteranceEnd,
    audio_client_adapter,
    describe_invalid,
)
from livetranslate.workloads.audio.diarization import SpeakerTracker
from livetranslate.workloads.audio.drain import CLOSE_REASON, CLOSE_RESTART
from livetranslate.workloads.audio.engines import Engine, Hypothesis
from livetranslate.workloads.audio.scheduler import Overloaded
from livetranslate.workloads.audio.service import AudioService
from livetranslate.workloads.audio.streaming import (
    DecodeRequest,
    PartialOut,
    StreamEvent,
    StreamSession,
    UtteranceEndOut,
)

log = logging.getLogger(__name__)

# Error codes of this service beyond the shared ones.
ERR_OVERLOADED = "overloaded"
ERR_IDLE = "idle_timeout"
ERR_SILENCE = "silence_timeout"
ERR_MODEL = "model_unavailable"
ERR_BACKLOG = "backlog"

CLOSE_NORMAL = 1000
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013
OVERLOAD_NOTICE_SECONDS = 5.0


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class AudioConnection:
    def __init__(self, ws: WebSocket, service: AudioService) -> None:
        self.ws = ws
        self.service = service
        self.settings = service.settings
        self.session_id = ""
        self.start: AudioStart | None = None
        self.stream: StreamSession | None = None
        self.tracker: SpeakerTracker | None = None
        self._out: asyncio.Queue[BaseModel | None] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._bad = 0
        self._flush_pending = False
        self._last_overload_notice = 0.0
        self._registered = False
        # The drain (drain.py): set when this stream is to be handed back to its gateway.
        self._handover = asyncio.Event()
        self._handover_reason = ""
        self._paused = asyncio.Event()  # an utterance end was sent
        self._handover_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        await self.ws.accept()
        sender = asyncio.create_task(self._sender(), name="audio-send")
        decoder: asyncio.Task[None] | None = None
        code, reason = CLOSE_NORMAL, "done"
        try:
            await self._await_start()
            decoder = asyncio.create_task(self._decoder(), name="audio-decode")
            await self._receive_until_handover(decoder)
        except _Close as close:
            code, reason = close.code, close.reason
        except WebSocketDisconnect:
            code, reason = 0, "client closed"
        except Exception:
            log.exception("audio session failed")
            await self._send(AudioError(code=ERR_INTERNAL, message="internal error; session closed"))
            code, reason = 1011, "internal error"
        finally:
            if decoder is not None:
                decoder.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await decoder
            await self._out.put(None)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(sender, timeout=5)
            if self._handover_task is not None:
                self._handover_task.cancel()
            if self._registered:
                self.service.sessions.discard(self.session_id)
                self.service.connections.discard(self)
                self.service.m_sessions.set(len(self.service.sessions))
            if code:
                with contextlib.suppress(Exception):
                    await self.ws.close(code=code, reason=reason[:120])
            log.info("audio session closed", extra={"fields": {"reason": reason, "code": code}})

    # ------------------------------------------------------------------ drain

    def request_handover(self, max_wait: float) -> None:
        """Hand this stream back to its gateway at its next pause, or after ``max_wait``."""
        if self._handover_task is None and not self._handover.is_set():
            self._handover_task = asyncio.get_running_loop().create_task(
                self._handover_at_pause(max_wait), name="audio-handover"
            )

    def hand_over_now(self, reason: str) -> None:
        if not self._handover.is_set():
            self._handover_reason = reason
            self._handover.set()

    async def _handover_at_pause(self, max_wait: float) -> None:
        """At a pause every word heard is in a final the gateway has (the utterance end follows
        them in order), so the next replica starts from silence. Without one, the gateway's
        replay of the audio since the last final lets the next replica hear the rest."""
        stream = self.stream
        reason = "idle"
        if stream is not None and not stream.between_utterances:
            self._paused.clear()
            try:
                await asyncio.wait_for(self._paused.wait(), max_wait)
                reason = "pause"
            except TimeoutError:
                reason = "bound"
        self.hand_over_now(reason)

    async def _receive_until_handover(self, decoder: asyncio.Task[None]) -> None:
        """The receive loop, ended by a handover as well as by the client."""
        receive = asyncio.create_task(self._receive_loop(decoder), name="audio-receive")
        handover = asyncio.create_task(self._handover.wait(), name="audio-handover-wait")
        try:
            await asyncio.wait({receive, handover}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (receive, handover):
                task.cancel()
            # Python 3.11's wait_for can swallow a cancel that lands as a frame arrives; the loop
            # then ends itself at its next frame (it checks the handover), so never wait forever.
            await asyncio.wait({receive, handover}, timeout=2.0)
        if receive.done() and not receive.cancelled() and receive.exception() is not None:
            raise receive.exception()  # type: ignore[misc]
        if self._handover.is_set():
            # The decoder stops between two passes' events (a pass under way is dropped: its
            # audio is in the gateway's replay), then the client hears why, after every event
            # already queued for it.
            decoder.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await decoder
            self.service.drain.handed_over(self._handover_reason)
            await self._send(
                AudioError(code=ERR_DRAINING, message=f"{CLOSE_REASON} ({self._handover_reason})")
            )
            raise _Close(CLOSE_RESTART, CLOSE_REASON)

    async def _send(self, event: BaseModel) -> None:
        await self._out.put(event)

    async def _sender(self) -> None:
        while (event := await self._out.get()) is not None:
            try:
                await self.ws.send_text(event.model_dump_json(exclude_none=True))
            except Exception:  # noqa: BLE001 - the peer is gone; the receive side notices and ends
                return

    async def _error(self, code: str, message: str, fatal: bool = False) -> None:
        await self._send(AudioError(code=code, message=message))
        if not fatal:
            self._bad += 1
            if self._bad >= self.settings.limits.max_bad_messages:
                raise _Close(CLOSE_POLICY, f"too many bad messages ({self._bad})")

    async def _receive(self) -> Mapping[str, Any]:
        timeout = self.settings.limits.idle_timeout_seconds
        while True:
            try:
                msg = await asyncio.wait_for(self.ws.receive(), timeout=timeout)
                break
            except TimeoutError:
                # A client waiting for its last finals after a flush is not idle.
                if self._flush_pending or (self.stream is not None and self.stream.in_flight):
                    continue
                await self._send(AudioError(code=ERR_IDLE, message=f"no data for {timeout:g} s; closing"))
                raise _Close(CLOSE_NORMAL, "idle timeout") from None
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        return msg

    # ------------------------------------------------------------------ start

    async def _await_start(self) -> None:
        while self.start is None:
            msg = await self._receive()
            if msg.get("bytes") is not None:
                await self._error(ERR_NOT_STARTED, "send a start message before audio")
                continue
            parsed = self._parse(msg.get("text") or "")
            if isinstance(parsed, str):
                await self._error(ERR_BAD_MESSAGE, f"expected a start message; {parsed}")
                continue
            if not isinstance(parsed, AudioStart):
                await self._error(ERR_NOT_STARTED, "send a start message first")
                continue
            await self._begin(parsed)

    async def _begin(self, start: AudioStart) -> None:
        svc = self.service
        if start.sampleRate != MODEL_SAMPLE_RATE:
            await self._send(
                AudioError(
                    code=ERR_BAD_AUDIO,
                    message=(
                        f"sampleRate {start.sampleRate} is not supported: send 16000 Hz mono PCM s16le "
                        "(the gateway resamples)"
                    ),
                )
            )
            raise _Close(CLOSE_POLICY, "unsupported sample rate")
        if svc.engine is None or svc.vad is None:
            why = "still loading" if svc.loading else (svc.load_error or "not loaded")
            await self._send(AudioError(code=ERR_MODEL, message=f"speech model unavailable: {why}"))
            raise _Close(CLOSE_TRY_AGAIN, "model unavailable")
        if svc.drain.active:
            await self._send(AudioError(code=ERR_DRAINING, message=CLOSE_REASON))
            raise _Close(CLOSE_RESTART, "replica draining")
        if len(svc.sessions) >= svc.capacity.sessions:
            # Past what it sustains every session's captions would fall behind: refuse the new one.
            svc.m_refusals.labels(pipeline=self.settings.pipeline, stage="audio", reason="capacity").inc()
            await self._send(AudioError(code=ERR_CAPACITY, message=svc.capacity.refusal()))
            raise _Close(CLOSE_TRY_AGAIN, "capacity exceeded")
        if start.diarization:
            try:
                self.tracker = (await svc.get_diarizer()).tracker(start.maxSpeakers, start.speakers)
            except Exception as exc:  # noqa: BLE001 - transcription still works without speakers
                log.warning("diarizer unavailable", extra={"fields": {"error": str(exc)}})
                await self._send(AudioError(code=ERR_MODEL, message=f"diarization unavailable: {exc}"))
        self.session_id = start.sessionId or uuid.uuid4().hex
        bind_log_context(session_id=self.session_id, pipeline=self.settings.pipeline)
        self.start = start
        self.stream = StreamSession(
            self.settings.streaming,
            svc.vad.stream() if self.settings.vad else _no_vad(),
            time_offset=start.timeOffset,
            use_vad=self.settings.vad,
            language=start.language,
            spoken_language=start.spokenLanguage,
        )
        svc.sessions.add(self.session_id)
        svc.connections.add(self)
        self._registered = True
        svc.m_sessions.set(len(svc.sessions))
        await self._send(AudioReady(device=svc.device, model=svc.model))
        log.info(
            "audio session started",
            extra={"fields": {"diarization": start.diarization, "timeOffset": start.timeOffset}},
        )

    @staticmethod
    def _parse(text: str) -> AudioStart | AudioFlush | str:
        """The message, or what is wrong with it (each problem naming its field)."""
        try:
            return audio_client_adapter.validate_json(text)
        except ValidationError as exc:
            return describe_invalid(exc)
        except ValueError as exc:
            return f"invalid message: {exc}"

    # ------------------------------------------------------------------ receive

    async def _receive_loop(self, decoder: asyncio.Task[None]) -> None:
        assert self.stream is not None
        stream = self.stream
        limits = self.settings.limits
        while not self._handover.is_set():
            msg = await self._receive()
            if decoder.done():
                raise _Close(1011, "decoder stopped")
            data = msg.get("bytes")
            if data is not None:
                if len(data) > MAX_FRAME_BYTES:
                    await self._error(
                        ERR_FRAME_TOO_LARGE, f"binary frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}"
                    )
                    continue
                if len(data) % 2:
                    await self._error(ERR_BAD_AUDIO, "odd-length frame: PCM s16le needs whole samples")
                    continue
                if not data:
                    continue
                samples = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
                stream.flushing = False
                stream.feed(samples)
                if stream.received - stream.last_voice_at > limits.silence_timeout_seconds:
                    await self._send(
                        AudioError(
                            code=ERR_SILENCE,
                            message=(f"no speech for {limits.silence_timeout_seconds:g} s; closing"),
                        )
                    )
                    raise _Close(CLOSE_NORMAL, "silence timeout")
                self._wake.set()
                continue
            parsed = self._parse(msg.get("text") or "")
            if isinstance(parsed, str):
                await self._error(ERR_BAD_MESSAGE, f'expected {{"type":"flush"}}; {parsed}')
            elif isinstance(parsed, AudioStart):
                await self._error(ERR_BAD_MESSAGE, "session already started")
            else:
                stream.flush()
                self._flush_pending = True
                self._wake.set()

    # ------------------------------------------------------------------ decode

    async def _decoder(self) -> None:
        assert self.stream is not None and self.start is not None
        stream, svc = self.stream, self.service
        engine = svc.engine
        assert engine is not None
        # What a detection pass (sourceLanguage auto) may choose among; None: every language.
        candidates = tuple(self.start.languages) if self.start.languages else None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                req = stream.next_request()
                for done, source in stream.take_ready():
                    await self._emit(done, source)
                if req is None:
                    break
                try:
                    beam = self.settings.final_beam_size if req.final else self.settings.beam_size
                    hyp = await svc.scheduler.run_batched(
                        _batch_call(engine, req.prompt, req.language, beam, req.word_times, candidates),
                        (req.prompt, req.language, beam, req.word_times, candidates),
                        req.audio,
                        urgent=req.final,
                    )
                except Overloaded as exc:
                    stream.abort()
                    await self._overloaded(str(exc))
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    stream.abort()
                    log.exception("decoder pass failed")
                    await self._send(AudioError(code=ERR_INTERNAL, message=f"decoder failed: {exc}"))
                    await asyncio.sleep(0.5)
                    break
                svc.record_pass(hyp.seconds)
                for out in stream.apply(req, hyp):
                    await self._emit(out, req)
                if stream.backlog > self.settings.limits.max_backlog_seconds:
                    await self._overloaded(f"{stream.backlog:.1f} s of audio waiting for the decoder")
            if self._flush_pending and stream.flushed:
                self._flush_pending = False
                await self._send(AudioFlushed())

    async def _overloaded(self, why: str) -> None:
        now = time.monotonic()
        if now - self._last_overload_notice >= OVERLOAD_NOTICE_SECONDS:
            self._last_overload_notice = now
            await self._send(AudioError(code=ERR_OVERLOADED, message=f"decoder overloaded: {why}"))
        # Retry after a short pause even if no new audio arrives (a flush may be waiting).
        asyncio.get_running_loop().call_later(0.2, self._wake.set)

    async def _emit(self, out: StreamEvent, req: DecodeRequest | None) -> None:
        """Send one event. Events go out in the order the session made them (the diarizer is
        awaited before the final is queued), so an utterance end always follows its final."""
        if isinstance(out, PartialOut):
            await self._send(AudioPartial(text=out.text, start=out.start, end=out.end))
            return
        if isinstance(out, UtteranceEndOut):
            speakers = self.tracker.export() if self.tracker is not None else None
            await self._send(AudioUtteranceEnd(end=out.end, language=out.language, speakers=speakers))
            self._paused.set()
            return
        speaker = None
        if self.tracker is not None and self.service.diarizer is not None and req is not None:
            diarizer, tracker = self.service.diarizer, self.tracker
            t0, t1 = out.stream_start - req.start, out.stream_end - req.start
            # The buffer starts afresh with each utterance: its start names the utterance.
            try:
                speaker = await self.service.scheduler.run(
                    lambda: diarizer.label(tracker, req.audio, t0, t1, utterance=req.start)
                )
            except Overloaded:
                speaker = None
            except Exception:  # a caption without a speaker beats no caption
                log.exception("diarization failed")
        await self._send(
            AudioFinal(text=out.text, start=out.start, end=out.end, speaker=speaker, language=out.language)
        )


_BatchKey = tuple[int, str | None, str | None, int, bool, tuple[str, ...] | None]
_BATCH_CALLS: dict[_BatchKey, Callable[[list[np.ndarray]], list[Hypothesis]]] = {}


def _batch_call(
    engine: Engine,
    prompt: str | None,
    language: str | None,
    beam: int,
    word_times: bool,
    candidates: tuple[str, ...] | None = None,
) -> Callable[[list[np.ndarray]], list[Hypothesis]]:
    """One callable per pass kind (engine, prompt, language, beam, word times, the languages a
    detection pass chooses among): equal ones batch."""
    key = (id(engine), prompt, language, beam, word_times, candidates)
    fn = _BATCH_CALLS.get(key)
    if fn is None:
        if len(_BATCH_CALLS) > 1024:  # prompts vary: keep the table small
            _BATCH_CALLS.clear()

        def fn(audios: list[np.ndarray]) -> list[Hypothesis]:
            return engine.transcribe_batch(audios, prompt, language, beam, word_times, candidates)

        _BATCH_CALLS[key] = fn
    return fn


class _NullVad:
    def feed(self, samples: np.ndarray) -> np.ndarray:
        return np.zeros(0, dtype=np.float32)


def _no_vad() -> Any:
    return _NullVad()

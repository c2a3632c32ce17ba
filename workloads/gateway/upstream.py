"""Clients of the two upstream services, with the failure handling a live session needs.

Audio: one WebSocket per session (``/v1/audio``). Translation: ``POST /v1/translate`` answered with
NDJSON, one line per language. Each upstream has one ``CircuitBreaker`` (workloads/resilience.py)
per gateway process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from collections.abc import AsyncIterator

import httpx
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.utils import apply_mask as _apply_mask_py

try:  # the C version websockets builds, as its own frames use
    from websockets.speedups import apply_mask  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - a websockets built without its extension
    apply_mask = _apply_mask_py

from livetranslate.protocol import (
    ERR_DRAINING,
    AnyAudioEvent,
    AudioError,
    AudioReady,
    AudioStart,
    TranslateRequest,
    TranslateResult,
    audio_server_adapter,
    describe_invalid,
)

log = logging.getLogger(__name__)


class UpstreamUnavailable(Exception):
    """The upstream cannot be reached or failed mid-call; worth retrying later."""


class UpstreamDraining(UpstreamUnavailable):
    """The upstream replica is draining (error ``draining``, close 1012): another replica takes
    the work at once. Not a failure of the service: no circuit-breaker failure, no backoff."""


class UpstreamRejected(Exception):
    """The upstream refused the request itself (4xx, or an error before ready); retrying won't help."""


def ws_url(base: str) -> str:
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://")
    if base.startswith("http://"):
        return "ws://" + base.removeprefix("http://")
    return base


AudioEvent = AnyAudioEvent


class MaskKeys:
    """Masking keys for the frames a client sends (RFC 6455 section 5.3: a fresh, unpredictable
    key per frame, from a strong source of entropy): 4 bytes at a time from a pool ``os.urandom``
    refills. websockets draws each key with a system call of its own, which was a tenth of the
    gateway's CPU at 1,000 live sessions; the pool makes it one call per ``keys`` frames. Only the
    event loop's thread takes keys."""

    def __init__(self, keys: int = 1024) -> None:
        self._size = 4 * keys
        self._pool = b""
        self._at = 0

    def take(self) -> bytes:
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(self._size), 0
        key = self._pool[self._at : self._at + 4]
        self._at += 4
        return key


_MASK_KEYS = MaskKeys()


def masked_binary_frame(payload: bytes, key: bytes) -> bytes:
    """One final binary frame from a client: FIN + opcode 2, the mask bit and length, the key, the
    masked payload (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x82, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x82, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, n)
    return head + key + apply_mask(payload, key)


CLOSE_RESTART = 1012  # "service restart": the audio replica drains (or restarts)


def _audio_event(raw: str | bytes) -> AudioEvent:
    """An event of the audio service's stream. One that breaks the contract makes the stream
    unusable, not the session: the session opens a new one from its replay buffer (the audio
    after the last final), so nothing is lost, and the breaker counts the failure."""
    try:
        return audio_server_adapter.validate_json(raw)
    except ValidationError as exc:
        raise UpstreamUnavailable(f"audio service sent an invalid event: {describe_invalid(exc)}") from None


def _lost(exc: BaseException) -> UpstreamUnavailable:
    """Why an audio stream ended under a send or a read. Closed with 1012, the replica is going
    away on purpose (drain.py of the audio service): the writer may meet the closed socket before
    the reader has read the ``draining`` error queued ahead of the close, and either way the
    stream resumes elsewhere at once, not as an outage."""
    received = exc.rcvd if isinstance(exc, ConnectionClosed) else None
    if received is not None and received.code == CLOSE_RESTART:
        return UpstreamDraining(f"audio service: {exc}")
    return UpstreamUnavailable(f"audio service: {exc}")


class AudioLink:
    """One open stream to the audio service, started and past its ``ready``."""

    def __init__(self, ws: ClientConnection, ready: AudioReady) -> None:
        self._ws = ws
        self.ready = ready

    @classmethod
    async def open(cls, base_url: str, start: AudioStart, timeout: float) -> AudioLink:
        try:
            # No compression (PCM does not deflate well and it costs CPU on every frame at both
            # ends) and no proxy lookup (an in-cluster service; the lookup walks the environment
            # on every connect).
            ws = await connect(
                ws_url(base_url) + "/v1/audio",
                open_timeout=timeout,
                max_size=4 * 1024 * 1024,
                close_timeout=2,
                compression=None,
                proxy=None,
            )
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            raise UpstreamUnavailable(f"audio service: {exc}") from exc
        except Exception as exc:  # an HTTP error status during the handshake (InvalidStatus)
            raise UpstreamUnavailable(f"audio service: {exc}") from exc
        try:
            await ws.send(start.model_dump_json())
            raw = await asyncio.wait_for(ws.recv(), timeout)
        except (OSError, TimeoutError, ConnectionClosed) as exc:
            await ws.close()
            raise UpstreamUnavailable(f"audio service did not get ready: {exc}") from exc
        try:
            event = _audio_event(raw)
        except UpstreamUnavailable:
            await ws.close()
            raise
        if isinstance(event, AudioError):
            await ws.close()
            if event.code == ERR_DRAINING:
                raise UpstreamDraining(f"audio service: {event.message}")
            raise UpstreamRejected(f"audio service: {event.code}: {event.message}")
        if not isinstance(event, AudioReady):
            await ws.close()
            raise UpstreamUnavailable(f"audio service sent {event.type} before ready")
        return cls(ws, event)

    async def send_audio(self, pcm16: bytes) -> None:
        try:
            await self._ws.send(pcm16)
        except (OSError, ConnectionClosed) as exc:
            raise _lost(exc) from exc

    def send_now(self, pcm16: bytes) -> bool:
        """Hand ``pcm16`` to the socket without a task switch, when that cannot block.

        The hot path of a live session: one client frame in, one frame out, with the writer task
        idle. ``send`` would go through an async context manager and a drain check per frame;
        here the frame is written straight away when the stream is open, no fragmented message
        is in flight and the socket is not applying backpressure. The frame is built here, with a
        key from the pool (``MaskKeys``), and written to the transport: the protocol keeps no
        state about the data frames a client sends, and it has nothing of its own waiting (the
        connection writes what the protocol produces in the same callback). False (nothing sent)
        means: use :meth:`send_audio`, which waits. A write that fails leaves the stream to fail
        its reader; the replay buffer still holds the audio for the next stream.
        """
        ws = self._ws
        if (
            ws.protocol.state is not State.OPEN
            or ws.send_in_progress is not None
            or ws.paused
            or ws.transport.is_closing()
        ):
            return False
        try:
            ws.transport.write(masked_binary_frame(pcm16, _MASK_KEYS.take()))
        except Exception as exc:  # noqa: BLE001 - a dead socket: the reader reports it
            log.debug("audio frame write failed", extra={"fields": {"error": str(exc)}})
        return True

    async def flush(self) -> None:
        try:
            await self._ws.send('{"type":"flush"}')
        except (OSError, ConnectionClosed) as exc:
            raise _lost(exc) from exc

    async def events(self) -> AsyncIterator[AudioEvent]:
        """Events until the service closes the stream (normally after ``flushed``)."""
        try:
            async for raw in self._ws:
                if isinstance(raw, bytes):
                    continue
                yield _audio_event(raw)
        except (OSError, ConnectionClosed) as exc:
            raise _lost(exc) from exc

    async def close(self) -> None:
        # Bounded: websockets waits without a limit for its write buffer to drain before the close
        # timeout starts, and a service that stopped reading would hold the session here.
        try:
            async with asyncio.timeout(3.0):
                await self._ws.close()
        except Exception as exc:  # noqa: BLE001 - closing a dead link has nothing left to report
            log.debug("audio link close failed", extra={"fields": {"error": str(exc)}})
            self._ws.transport.abort()


class TranslationClient:
    def __init__(self, base_url: str, http: httpx.AsyncClient, timeout: float) -> None:
        self._url = base_url.rstrip("/") + "/v1/translate"
        self._http = http
        self._timeout = timeout

    async def translate(self, request: TranslateRequest) -> AsyncIterator[TranslateResult]:
        """Results as the service streams them; raises UpstreamUnavailable on transport failure."""
        try:
            async with self._http.stream(
                "POST",
                self._url,
                content=request.model_dump_json(),
                headers={"content-type": "application/json", "accept": "application/x-ndjson"},
                timeout=httpx.Timeout(self._timeout, connect=min(self._timeout, 5.0)),
            ) as resp:
                if resp.status_code >= 500 or resp.status_code in (408, 429):
                    raise UpstreamUnavailable(f"translation service: HTTP {resp.status_code}")
                if resp.status_code >= 400:
                    body = (await resp.aread()).decode(errors="replace")[:300]
                    raise UpstreamRejected(f"translation service: HTTP {resp.status_code}: {body}")
                async for line in resp.aiter_lines():
                    if line.strip():
                        yield TranslateResult.model_validate_json(line)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"translation service: {type(exc).__name__}: {exc}") from exc

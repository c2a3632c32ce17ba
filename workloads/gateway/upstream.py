"""Clients of the two upstream services, with the failure handling a live session needs.

Audio: one WebSocket per session (``/v1/audio``). Translation: ``POST /v1/translate`` answered with
NDJSON, one line per language. Each upstream has one ``CircuitBreaker`` per gateway process: after
``failures`` consecutive failures new attempts fail fast for ``reset_seconds`` (so a dead service
costs a thousand sessions one timeout, not a thousand), then one trial call decides.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from livetranslate.protocol import (
    AudioError,
    AudioFinal,
    AudioFlushed,
    AudioPartial,
    AudioReady,
    AudioStart,
    TranslateRequest,
    TranslateResult,
    audio_server_adapter,
)

log = logging.getLogger(__name__)


class UpstreamUnavailable(Exception):
    """The upstream cannot be reached or failed mid-call; worth retrying later."""


class UpstreamRejected(Exception):
    """The upstream refused the request itself (4xx, or an error before ready); retrying won't help."""


class CircuitBreaker:
    def __init__(self, name: str, failures: int = 5, reset_seconds: float = 5.0) -> None:
        self.name = name
        self._threshold = failures
        self._reset = reset_seconds
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_at: float | None = None

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        return "half-open" if time.monotonic() - self._opened_at >= self._reset else "open"

    def allow(self) -> bool:
        if self._opened_at is None:
            return True
        now = time.monotonic()
        if now - self._opened_at < self._reset:
            return False
        # Half-open: one trial at a time; a trial that never reports back frees the slot later.
        if self._trial_at is not None and now - self._trial_at < self._reset:
            return False
        self._trial_at = now
        return True

    def success(self) -> None:
        if self._opened_at is not None:
            log.info("circuit closed", extra={"fields": {"upstream": self.name}})
        self._failures = 0
        self._opened_at = None
        self._trial_at = None

    def failure(self) -> None:
        self._failures += 1
        self._trial_at = None
        if self._failures >= self._threshold:
            if self._opened_at is None:
                log.warning("circuit open", extra={"fields": {"upstream": self.name}})
            self._opened_at = time.monotonic()


class Backoff:
    """Exponential backoff with full jitter, so reconnecting sessions do not stampede."""

    def __init__(self, base: float, cap: float) -> None:
        self._base = base
        self._cap = cap
        self._attempt = 0

    def next(self) -> float:
        delay = min(self._cap, self._base * 2 ** self._attempt)
        self._attempt = min(self._attempt + 1, 30)
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self._attempt = 0


def ws_url(base: str) -> str:
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://")
    if base.startswith("http://"):
        return "ws://" + base.removeprefix("http://")
    return base


AudioEvent = AudioReady | AudioPartial | AudioFinal | AudioError | AudioFlushed


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
            ws = await connect(ws_url(base_url) + "/v1/audio", open_timeout=timeout,
                               max_size=4 * 1024 * 1024, close_timeout=2, compression=None, proxy=None)
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
        event = audio_server_adapter.validate_json(raw)
        if isinstance(event, AudioError):
            await ws.close()
            raise UpstreamRejected(f"audio service: {event.code}: {event.message}")
        if not isinstance(event, AudioReady):
            await ws.close()
            raise UpstreamUnavailable(f"audio service sent {event.type} before ready")
        return cls(ws, event)

    async def send_audio(self, pcm16: bytes) -> None:
        try:
            await self._ws.send(pcm16)
        except (OSError, ConnectionClosed) as exc:
            raise UpstreamUnavailable(f"audio service: {exc}") from exc

    async def flush(self) -> None:
        try:
            await self._ws.send('{"type":"flush"}')
        except (OSError, ConnectionClosed) as exc:
            raise UpstreamUnavailable(f"audio service: {exc}") from exc

    async def events(self) -> AsyncIterator[AudioEvent]:
        """Events until the service closes the stream (normally after ``flushed``)."""
        try:
            async for raw in self._ws:
                if isinstance(raw, bytes):
                    continue
                yield audio_server_adapter.validate_json(raw)
        except (OSError, ConnectionClosed) as exc:
            raise UpstreamUnavailable(f"audio service: {exc}") from exc

    async def close(self) -> None:
        try:
            await self._ws.close()
        except Exception as exc:  # noqa: BLE001 - closing a dead link has nothing left to report
            log.debug("audio link close failed", extra={"fields": {"error": str(exc)}})


class TranslationClient:
    def __init__(self, base_url: str, http: httpx.AsyncClient, timeout: float) -> None:
        self._url = base_url.rstrip("/") + "/v1/translate"
        self._http = http
        self._timeout = timeout

    async def translate(self, request: TranslateRequest) -> AsyncIterator[TranslateResult]:
        """Results as the service streams them; raises UpstreamUnavailable on transport failure."""
        try:
            async with self._http.stream(
                "POST", self._url, content=request.model_dump_json(),
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

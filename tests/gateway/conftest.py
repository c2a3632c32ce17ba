"""Gateway fixtures: real uvicorn servers on loopback for the gateway and for two stand-ins that
speak exactly the internal protocols of livetranslate/protocol.py.

The audio stand-in is deterministic so tests can account for every second of audio: each full
second of session audio whose samples sit at a constant level ``k * 1000`` becomes the final
``"block k"`` (or ``texts[k]``; silence, k = 0, becomes nothing, as VAD would), partials report
the block being heard, and ``flush`` finalises a trailing partial block. Each final is an
utterance of its own (an ``utterance_end`` follows it, so each is a sentence) unless
``utterance_per_block`` is off: then an utterance ends at a silent block and at the flush. The translation stand-in answers
``"<lang>:<text>"`` for every language and records each request (to check the context sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse
from websockets.asyncio.client import connect

from livetranslate.protocol import AudioStart, TranslateRequest, TranslateResult
from livetranslate.workloads.gateway.app import create_app
from livetranslate.workloads.gateway.settings import GatewayConfig, GatewaySettings

BLOCK = 16000  # samples per block at 16 kHz: one second
LEVEL = 1000


def block_audio(levels: list[int], rate: int = 16000) -> bytes:
    """PCM16 at ``rate``: one second per level, constant sample value ``level * LEVEL``."""
    return b"".join(np.full(rate, k * LEVEL, dtype="<i2").tobytes() for k in levels)


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class Server:
    """A uvicorn server in this event loop that can be stopped and started again on its port."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.app = app
        self.port = port or 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            ws="websockets-sansio",
            ws_max_size=2 * 1024 * 1024,
            timeout_graceful_shutdown=5,
            lifespan="on",
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        for _ in range(200):
            if self._server.started:
                return
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.02)
        raise RuntimeError("server did not start")

    async def stop(self, force: bool = False) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        self._server.force_exit = force
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, 15)
        self._server = None


@dataclass
class FakeAudio:
    streams: int = 0
    starts: list[AudioStart] = field(default_factory=list)
    received_seconds: float = 0.0
    final_delay: float = 0.0
    idle_timeout: float | None = None  # like the real service: close a stream that gets no audio
    utterance_per_block: bool = True
    texts: dict[int, str] = field(default_factory=dict)
    languages: dict[int, str] = field(default_factory=dict)  # the language each level's final was detected in
    # Like a draining replica: the first stream is handed back (error "draining", close 1012) at
    # the utterance end after this many finals; the next ``refuse_draining`` starts are refused so.
    hand_back_after: int | None = None
    refuse_draining: int = 0
    hand_back_error: bool = True  # False: the close alone (as a writer meets it before the error)
    invalid_events: int = 0  # the first this many utterance ends break the contract (a bad language)
    # With diarization: what utterance ends report as the session's known speakers (the real
    # service reports its tracker's voices), each stream's i-th reply taking voices[: i + 1].
    speakers: dict[str, Any] | None = None

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/readyz")
        async def readyz() -> dict[str, str]:
            return {"status": "ok"}

        @app.websocket("/v1/audio")
        async def audio(ws: WebSocket) -> None:
            await ws.accept()
            start = AudioStart.model_validate_json(await ws.receive_text())
            self.starts.append(start)
            if self.streams == 1 and self.refuse_draining > 0:
                self.refuse_draining -= 1
                await ws.send_text(json.dumps({"type": "error", "code": "draining", "message": "draining"}))
                await ws.close(1012, "replica draining")
                return
            self.streams += 1
            hand_back = self.hand_back_after if self.streams == 1 else None
            finals = 0
            await ws.send_text(json.dumps({"type": "ready", "device": "cpu", "model": "fake"}))
            pending = np.zeros(0, dtype="<i2")
            t0 = start.timeOffset
            done = 0  # samples finalised in this stream
            speaking = False
            spoken: str | None = None  # like the real service: the last final's language

            async def utterance_end(at: float) -> None:
                nonlocal speaking
                if speaking:
                    speaking = False
                    language = spoken
                    if self.invalid_events > 0:
                        self.invalid_events -= 1
                        language = "not a language!"
                    end: dict[str, Any] = {"type": "utterance_end", "end": at, "language": language}
                    if start.diarization and self.speakers is not None:
                        end["speakers"] = {**self.speakers, "voices": self.speakers["voices"][:finals]}
                    await ws.send_text(json.dumps(end))
                    if hand_back is not None and finals >= hand_back:
                        if self.hand_back_error:
                            await ws.send_text(
                                json.dumps(
                                    {"type": "error", "code": "draining", "message": "draining (pause)"}
                                )
                            )
                        await ws.close(1012, "replica draining")
                        raise WebSocketDisconnect(1012)

            async def final(samples: np.ndarray, last: bool) -> None:
                nonlocal speaking, finals, spoken
                level = round(float(np.median(samples)) / LEVEL)
                begin = t0 + done / BLOCK
                end = begin + len(samples) / BLOCK
                if level:
                    if self.final_delay:
                        await asyncio.sleep(self.final_delay)
                    await ws.send_text(
                        json.dumps(
                            {
                                "type": "final",
                                "text": self.texts.get(level, f"block {level}"),
                                "start": begin,
                                "end": end,
                                "language": self.languages.get(level),
                            }
                        )
                    )
                    speaking = True
                    finals += 1
                    spoken = self.languages.get(level, spoken)
                if not level or self.utterance_per_block or last:
                    await utterance_end(end)

            try:
                while True:
                    try:
                        msg = await asyncio.wait_for(ws.receive(), self.idle_timeout)
                    except TimeoutError:
                        await ws.send_text(
                            json.dumps({"type": "error", "code": "idle_timeout", "message": "no audio"})
                        )
                        await ws.close(1000, "idle timeout")
                        return
                    if msg["type"] == "websocket.disconnect":
                        return
                    if msg.get("bytes") is not None:
                        data = np.frombuffer(msg["bytes"], dtype="<i2")
                        self.received_seconds += len(data) / BLOCK
                        pending = np.concatenate([pending, data])
                        while len(pending) >= BLOCK:
                            await final(pending[:BLOCK], False)
                            pending = pending[BLOCK:]
                            done += BLOCK
                        if len(pending):
                            level = round(float(np.median(pending)) / LEVEL)
                            begin = t0 + done / BLOCK
                            await ws.send_text(
                                json.dumps(
                                    {
                                        "type": "partial",
                                        "text": f"block {level}" if level else "",
                                        "start": begin,
                                        "end": begin + len(pending) / BLOCK,
                                    }
                                )
                            )
                    elif json.loads(msg["text"]).get("type") == "flush":
                        if len(pending) >= BLOCK // 10:
                            await final(pending, True)
                            done += len(pending)
                        pending = pending[:0]
                        await utterance_end(t0 + done / BLOCK)
                        await ws.send_text('{"type": "flushed"}')
            except WebSocketDisconnect:
                return

        return app


@dataclass
class FakeTranslation:
    requests: list[TranslateRequest] = field(default_factory=list)
    fail_languages: set[str] = field(default_factory=set)
    delay: float = 0.0

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/readyz")
        async def readyz() -> dict[str, str]:
            return {"status": "ok"}

        @app.post("/v1/translate")
        async def translate(request: Request) -> Any:
            try:
                req = TranslateRequest.model_validate_json(await request.body())
            except ValueError as exc:
                return JSONResponse({"error": str(exc)}, status_code=422)
            self.requests.append(req)

            async def lines() -> AsyncIterator[bytes]:
                for lang in req.targetLanguages:
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    if lang in self.fail_languages:
                        res = TranslateResult(
                            type="error",
                            segmentId=req.segmentId,
                            language=lang,
                            code="translation_failed",
                            message="refused by test",
                        )
                    else:
                        res = TranslateResult(
                            segmentId=req.segmentId, language=lang, text=f"{lang}:{req.text}", quality="ok"
                        )
                    yield (res.model_dump_json(exclude_none=True) + "\n").encode()

            return StreamingResponse(lines(), media_type="application/x-ndjson")

        return app


@dataclass
class Stack:
    audio: FakeAudio
    translation: FakeTranslation
    audio_server: Server
    translation_server: Server
    gateways: list[Server]
    make_gateway: Callable[..., Any]

    @property
    def ws_url(self) -> str:
        return self.gateways[0].url.replace("http://", "ws://") + "/v1/stream"


def gateway_config(audio_url: str, translation_url: str, **overrides: Any) -> GatewayConfig:
    fast: dict[str, Any] = {
        "target_languages": ["es", "fr"],
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.3,
        "breaker_reset_seconds": 0.3,
    }
    settings = GatewaySettings(audio_url=audio_url, translation_url=translation_url, **{**fast, **overrides})
    return GatewayConfig(settings, None)


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    audio, translation = FakeAudio(), FakeTranslation()
    audio_server, translation_server = Server(audio.app()), Server(translation.app())
    await audio_server.start()
    await translation_server.start()
    gateways: list[Server] = []

    async def make_gateway(**overrides: Any) -> Server:
        server = Server(create_app(gateway_config(audio_server.url, translation_server.url, **overrides)))
        await server.start()
        gateways.append(server)
        return server

    await make_gateway()
    st = Stack(audio, translation, audio_server, translation_server, gateways, make_gateway)
    try:
        yield st
    finally:
        for g in gateways:
            await g.stop(force=True)
        await audio_server.stop(force=True)
        await translation_server.stop(force=True)


class Client:
    """A test client of /v1/stream that records every event."""

    def __init__(self, url: str, **connect_kwargs: Any) -> None:
        self.url = url
        self.kwargs = connect_kwargs
        self.events: list[dict[str, Any]] = []
        self.ws: Any = None

    async def __aenter__(self) -> Self:
        self.ws = await connect(self.url, **self.kwargs)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ws.close()

    async def send_json(self, obj: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(obj))

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.events.append(event)
        return event

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.recv(max(0.01, deadline - loop.time()))
            if predicate(event):
                return event

    async def send_audio(self, pcm: bytes, chunk: int = 6400) -> None:
        for i in range(0, len(pcm), chunk):
            await self.ws.send(pcm[i : i + chunk])

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


class RedisProcess:
    """A real redis-server on one loopback port, which a test may stop and start again there
    (empty: no persistence)."""

    def __init__(self, workdir: Path) -> None:
        sock = free_socket()
        self.port = sock.getsockname()[1]
        sock.close()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A real redis-server for this test only."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis: RedisProcess) -> str:
    return redis.url


def drop(client: Client) -> None:
    """Lose the connection the way a network does: no close frame."""
    client.ws.transport.abort()

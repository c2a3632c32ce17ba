"""Deterministic stand-ins of the audio and translation stages, servable as a process of their own.

One app speaks both internal protocols (livetranslate/protocol.py) on one port: ``/v1/audio``
(WebSocket) and ``/v1/translate`` (NDJSON), so a gateway started with both URLs pointing at it has
a whole pipeline. They follow the gateway tests' stand-ins (tests/gateway/conftest.py), so every
second of audio is accounted for: each full second of session audio whose samples sit at a
constant level ``k * 1000`` becomes the final ``"block k"``; silence (k = 0) becomes nothing, as
VAD would, and ends the utterance (``utterance_end``) when someone spoke before it; partials
report the block being heard; ``flush`` finalises a trailing part block. Translations are
``"<lang>:<text>"``. Because a final depends only on the audio and the session clock, a session
handed from one gateway replica to another must give exactly the finals of one that was not.

Run: ``python -P -m livetranslate_testing.standins --port PORT [--translate-delay 0.05]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse

BLOCK = 16000  # samples per block at 16 kHz: one second
LEVEL = 1000


def block_pcm(levels: list[int], rate: int = 16000) -> bytes:
    """PCM16 at ``rate``: one second per level, constant sample value ``level * LEVEL``."""
    return b"".join(np.full(rate, k * LEVEL, dtype="<i2").tobytes() for k in levels)


def expected_finals(levels: list[int]) -> list[str]:
    """The finals a session of ``levels`` gives, in order (whole blocks only)."""
    return [f"block {k}" for k in levels if k]


class _AudioStream:
    """One ``/v1/audio`` stream: blocks in, finals and utterance ends out."""

    def __init__(self, ws: WebSocket, offset: float) -> None:
        self.ws = ws
        self.t0 = offset
        self.pending = np.zeros(0, dtype="<i2")
        self.done = 0  # samples finalised in this stream
        self.speaking = False

    async def _send(self, event: dict[str, Any]) -> None:
        await self.ws.send_text(json.dumps(event))

    async def _final(self, samples: np.ndarray, last: bool) -> None:
        level = round(float(np.median(samples)) / LEVEL)
        begin = self.t0 + self.done / BLOCK
        end = begin + len(samples) / BLOCK
        if level:
            await self._send({"type": "final", "text": f"block {level}", "start": begin, "end": end})
            self.speaking = True
        if (not level or last) and self.speaking:
            self.speaking = False
            await self._send({"type": "utterance_end", "end": end})

    async def audio(self, data: bytes) -> None:
        self.pending = np.concatenate([self.pending, np.frombuffer(data, dtype="<i2")])
        while len(self.pending) >= BLOCK:
            await self._final(self.pending[:BLOCK], False)
            self.pending = self.pending[BLOCK:]
            self.done += BLOCK
        if len(self.pending):
            level = round(float(np.median(self.pending)) / LEVEL)
            begin = self.t0 + self.done / BLOCK
            text = f"block {level}" if level else ""
            await self._send(
                {"type": "partial", "text": text, "start": begin, "end": begin + len(self.pending) / BLOCK}
            )

    async def flush(self) -> None:
        if len(self.pending) >= BLOCK // 10:
            await self._final(self.pending, True)
            self.done += len(self.pending)
        elif self.speaking:
            self.speaking = False
            await self._send({"type": "utterance_end", "end": self.t0 + self.done / BLOCK})
        self.pending = self.pending[:0]
        await self._send({"type": "flushed"})


def create_app(translate_delay: float = 0.0) -> FastAPI:
    app = FastAPI()

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ok"}

    @app.websocket("/v1/audio")
    async def audio(ws: WebSocket) -> None:
        await ws.accept()
        start = json.loads(await ws.receive_text())
        stream = _AudioStream(ws, float(start.get("timeOffset", 0.0)))
        await ws.send_text(json.dumps({"type": "ready", "device": "cpu", "model": "stand-in"}))
        try:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return
                if msg.get("bytes") is not None:
                    await stream.audio(msg["bytes"])
                elif json.loads(msg.get("text") or "{}").get("type") == "flush":
                    await stream.flush()
        except WebSocketDisconnect:
            return

    @app.post("/v1/translate")
    async def translate(request: Request) -> StreamingResponse:
        req = json.loads(await request.body())

        async def lines() -> AsyncIterator[bytes]:
            for lang in req["targetLanguages"]:
                if translate_delay:
                    await asyncio.sleep(translate_delay)
                res = {
                    "type": "translation",
                    "segmentId": req["segmentId"],
                    "language": lang,
                    "text": f"{lang}:{req['text']}",
                    "quality": "ok",
                }
                yield (json.dumps(res) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--translate-delay", type=float, default=0.0, help="seconds per language")
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    config = uvicorn.Config(
        create_app(args.translate_delay), log_config=None, access_log=False, ws="websockets-sansio"
    )
    asyncio.run(uvicorn.Server(config).serve(sockets=[sock]))


if __name__ == "__main__":
    main()

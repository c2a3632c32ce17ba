"""The captions page when its gateway replica drains: in a real headless Chromium, against a
scripted gateway (an aiohttp server on loopback) that closes the page's socket with 1012 as a
draining replica does, then takes the session back as the next replica would.

The page must come back at once (not after its reconnect backoff), with its session and last
final, and send its audio on from the second the resumed session says it has (``audioSeconds`` in
``session.started``): what was in flight when the socket closed goes again, and what the
microphone captured while the page was away is not lost.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import WSMsgType, web
from websockets.asyncio.client import connect

from livetranslate_testing.speech import write_wav
from tests.system.test_browser import DESKTOP, Page, PageGateway, chromium_or_skip, end, launch

pytestmark = pytest.mark.slow

RATE = 16000


class HandingGateway(PageGateway):
    """Records what each connection got; resumes the session at ``resume_at`` seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.conns: list[dict[str, Any]] = []
        self.resume_at = 0.0
        self.ws: web.WebSocketResponse | None = None

    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn: dict[str, Any] = {"opened": time.monotonic(), "start": None, "data": bytearray()}
        self.conns.append(conn)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                conn["data"] += msg.data
            elif msg.type == WSMsgType.TEXT:
                conn["start"] = json.loads(msg.data)
                self.ws = ws
                resumed = len(self.conns) > 1
                started = {"type": "session.started", "sessionId": "s-1", "resumed": resumed}
                await ws.send_json(started | ({"audioSeconds": self.resume_at} if resumed else {}))
                if not resumed:
                    await ws.send_json({"type": "transcript.final", "segmentId": 0, "text": "Hello.",
                                        "start": 0.0, "end": 0.5})  # fmt: skip
        return ws


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_the_page_resumes_at_once_and_resends_what_was_in_flight(tmp_path: Path) -> None:
    chromium = chromium_or_skip()
    # White noise as the microphone: every stretch of samples is unique, so a resend is exact.
    noise = np.random.default_rng(5).uniform(-0.5, 0.5, 20 * RATE).astype(np.float32)
    wav = write_wav(tmp_path / "noise.wav", noise)
    gw = HandingGateway()
    runner = web.AppRunner(gw.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with tempfile.TemporaryDirectory() as profile:
            proc, devtools = launch(chromium, profile, wav, "about:blank")
            try:
                async with connect(devtools, max_size=64 * 1024 * 1024) as cdp:
                    page = Page(cdp)
                    await page.call("Emulation.setDeviceMetricsOverride", **DESKTOP)
                    await page.call("Page.navigate", url=f"http://127.0.0.1:{port}/?autostart=1")
                    await page.until("window.__livetranslate && window.__livetranslate.state === 'live'", 30)
                    assert (await page.eval("document.getElementById('rate').textContent")) == "16.0 kHz"
                    await until(lambda: len(gw.conns[0]["data"]) >= 2 * 2 * RATE)

                    # The replica drains: 0.5 s before what it got is where its session goes on
                    # (say, its audio service heard no more); the rest was in flight.
                    first = gw.conns[0]
                    got = len(first["data"]) // 2
                    gw.resume_at = (got - RATE // 2) / RATE
                    closed_at = time.monotonic()
                    assert gw.ws is not None
                    await gw.ws.close(code=1012, message=b"replica draining, resume elsewhere")
                    await until(lambda: len(gw.conns) > 1 and gw.conns[1]["start"] is not None, 5)
                    second = gw.conns[1]
                    assert second["opened"] - closed_at < 0.4  # at once: no backoff for a handover
                    assert second["start"]["sessionId"] == "s-1" and second["start"]["lastSegmentId"] == 0
                    await until(lambda: len(second["data"]) >= 2 * RATE)

                    # Sent again from the second the session has, byte for byte.
                    at = round(gw.resume_at * RATE) * 2
                    resent = bytes(first["data"][at : at + RATE // 2 * 2])
                    assert len(resent) == RATE and bytes(second["data"][: len(resent)]) == resent
                    # And nothing captured since is missing: the session's audio runs on without a gap.
                    await asyncio.sleep(0.5)
                    frames = await page.eval("window.__livetranslate.framesCaptured")
                    await asyncio.sleep(0.3)  # what the page sent by then has arrived
                    sent = at // 2 + len(second["data"]) // 2
                    assert sent >= frames * round(0.04 * RATE), (sent, frames)
                    assert (await page.eval("window.__livetranslate.state")) == "live"
            finally:
                end(proc)
    finally:
        await runner.cleanup()

"""Drain with real processes: two gateway replicas sharing a real Redis, one removed mid-stream.

What Kubernetes does on scale-down, on loopback: the replica gets SIGTERM, and a Service
(``ServiceProxy``: new connections go to replicas whose /readyz says 200) stops sending it
clients. The replicas run as users run them (``livetranslate serve gateway``), in front of the
deterministic stand-in stages (livetranslate_testing/standins.py, a process of their own), and
``livetranslate stream --realtime`` (``stream_file``) plays a live speaker. The same session is
streamed once without a drain and once with one: a listener must not notice the difference
beyond one reconnect. The same with real speech and the real audio stage: test_drain_speech.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from livetranslate.stream import Wav, stream_file
from livetranslate_testing.replicas import (
    Fleet,
    ServiceProxy,
    TimedPrinter,
    account,
    gateways_behind_a_service,
)
from livetranslate_testing.standins import block_pcm, expected_finals

pytestmark = pytest.mark.slow

# Utterances of 1 to 4 seconds with a second of pause (0) after each: 18 s of live speech.
LEVELS = [1, 2, 3, 0, 4, 5, 6, 7, 0, 8, 9, 0, 10, 11, 12, 0, 13, 0]
CHUNK_MS = 100


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[Fleet, ServiceProxy]]:
    async with gateways_behind_a_service(tmp_path) as both:
        yield both


def speaker(url: str, printer: TimedPrinter) -> asyncio.Task[bool]:
    wav = Wav(block_pcm(LEVELS), 16000, 1)
    return asyncio.create_task(
        stream_file(wav, url, realtime=True, chunk_ms=CHUNK_MS, token=None, targets=None, printer=printer)
    )


async def refused_by(port: int) -> tuple[dict[str, Any], int | None]:
    """A new session straight at a replica (not through the Service): its first event, the close."""
    async with connect(f"ws://127.0.0.1:{port}/v1/stream") as ws:
        await ws.send(json.dumps({"type": "session.start"}))
        first = json.loads(await asyncio.wait_for(ws.recv(), 5))
        try:
            await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed:
            pass
        return first, ws.close_code


async def until_unready(port: int, timeout: float = 2.0) -> int:
    async with httpx.AsyncClient() as c:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = (await c.get(f"http://127.0.0.1:{port}/readyz")).status_code
            if status != 200 or loop.time() > deadline:
                return status
            await asyncio.sleep(0.02)


async def test_a_replica_drained_mid_stream_hands_its_session_over_without_loss(
    replicas: tuple[Fleet, ServiceProxy],
) -> None:
    fleet, proxy = replicas
    expected = expected_finals(LEVELS)

    plain = TimedPrinter()
    assert await speaker(proxy.url, plain), plain.notes
    assert account(plain.finals, expected)["lost"] == 0

    drained = TimedPrinter()
    task = speaker(proxy.url, drained)
    while not any(f["text"] == "block 4" for f in drained.finals):  # an utterance has 3 s to go
        assert not task.done(), drained.notes
        await asyncio.sleep(0.02)
    a = proxy.routed[-1]
    [b] = [p for p in fleet.ports if p != a]
    fleet.sigterm(a)  # the kubelet's SIGTERM

    # At once: not ready (the Service stops sending clients), and a new session is sent away.
    assert await until_unready(a) == 503
    first, close_code = await refused_by(a)
    assert first["type"] == "error" and first["code"] == "draining", first
    assert close_code == 1012

    # It exits by itself once its session is handed over (well before the grace period).
    assert await fleet.wait_exit(a, 15) == 0, fleet.log(a)[-20:]
    assert await asyncio.wait_for(task, 60), drained.notes

    # One reconnect, to the other replica, and it did not count as a failure.
    assert drained.handovers == 1 and drained.reconnects == 0, drained.notes
    assert proxy.routed[-2:] == [a, b]
    # Every final exactly once, in order, the same as without the drain.
    assert account(drained.finals, expected) == account(plain.finals, expected)
    assert account(drained.finals, expected) | {"expected": 0, "received": 0} == {
        "expected": 0, "received": 0, "lost": 0, "duplicated": 0, "unexpected": 0, "out_of_order": 0,
    }  # fmt: skip
    seen = [(f["segmentId"], f["text"], f["start"], f["end"]) for f in drained.finals]
    assert seen == [(f["segmentId"], f["text"], f["start"], f["end"]) for f in plain.finals]
    # Each sentence translated exactly once, whole, as without the drain.
    sentences = [(t["sentenceId"], t["segmentIds"], t["text"]) for t in drained.translations]
    assert sentences == [(t["sentenceId"], t["segmentIds"], t["text"]) for t in plain.translations]
    # No final waited more than 2 s longer than it did without the drain.
    late = drained.latencies(CHUNK_MS / 1000)
    base = plain.latencies(CHUNK_MS / 1000)
    extra = max(late[i] - base[i] for i in base)
    assert extra < 2.0, (extra, late, base)
    # The replica handed the session over at the pause that ended the utterance.
    [handed] = [line for line in fleet.log(a) if line.get("msg") == "session handed over"]
    assert handed["reason"] == "pause", handed

"""Drain, in-process: the rules of a replica that is being removed (workloads/gateway/drain.py).

Gateways run in this event loop (conftest.py) against the deterministic audio stand-in with an
utterance per pause (a silent block), two of them sharing a real Redis where a session moves.
The drain through real processes and real speech is in test_drain.py and test_drain_speech.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from livetranslate.stream import Wav, stream_file
from livetranslate.workloads.gateway.drain import CLOSE_REASON
from livetranslate_testing.replicas import ServiceProxy, TimedPrinter, account
from tests.gateway.conftest import BLOCK, LEVEL, Client, Server, Stack, block_audio

TOKEN = "admin-s3cret"


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://") + "/v1/stream"


def handovers(server: Server, reason: str) -> float:
    value = server.app.state.gateway.registry.get_sample_value(
        "livetranslate_session_handovers_total", {"pipeline": "local", "reason": reason}
    )
    return float(value or 0.0)


async def drain(server: Server, token: str | None = TOKEN) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient() as c:
        return await c.post(server.url + "/v1/admin/drain", headers=headers)


async def closed(client: Client, timeout: float = 10.0) -> tuple[int | None, str | None]:
    """Read events until the gateway closes the socket; its close code and reason."""
    try:
        while True:
            await client.recv(timeout)
    except ConnectionClosed:
        return client.ws.close_code, client.ws.close_reason


async def exited(server: Server, timeout: float = 10.0) -> bool:
    task = server._task
    assert task is not None
    await asyncio.wait_for(asyncio.shield(task), timeout)
    return task.done()


async def started(url: str, **start: Any) -> Client:
    client = Client(url)
    await client.__aenter__()
    await client.send_json({"type": "session.start", "targetLanguages": ["es"], **start})
    first = await client.recv()
    assert first["type"] == "session.started", first
    return client


@pytest.fixture
async def two(stack: Stack, redis_url: str) -> tuple[Server, Server]:
    stack.audio.utterance_per_block = False  # an utterance ends at a silent block, as at a pause
    a = await stack.make_gateway(redis_url=redis_url, admin_token=TOKEN)
    b = await stack.make_gateway(redis_url=redis_url, admin_token=TOKEN)
    return a, b


async def test_the_drain_endpoint_is_off_without_a_token_and_guarded_with_one(stack: Stack) -> None:
    assert (await drain(stack.gateways[0])).status_code == 404
    guarded = await stack.make_gateway(admin_token=TOKEN)
    assert (await drain(guarded, token="wrong")).status_code == 401
    assert (await drain(guarded, token=None)).status_code == 401
    r = await drain(guarded)
    assert r.status_code == 202 and r.json()["draining"] is True
    # Nothing to hand over: the replica exits by itself.
    assert await exited(guarded)


async def test_a_draining_replica_is_unready_refuses_sessions_and_hands_over_at_the_pause(
    two: tuple[Server, Server],
) -> None:
    a, b = two
    talker = await started(ws_url(a))
    await talker.send_audio(block_audio([1, 2]))  # mid-utterance: no pause yet
    await talker.until(lambda e: e["type"] == "transcript.final" and e["text"] == "block 2")
    assert (await drain(a)).status_code == 202
    async with httpx.AsyncClient() as c:
        ready = await c.get(a.url + "/readyz")
        assert ready.status_code == 503 and "draining" in ready.json()["checks"], ready.text
        metrics = (await c.get(a.url + "/metrics")).text
    assert 'livetranslate_gateway_draining{pipeline="local"} 1.0' in metrics
    # A new session is refused with a reason, and sent elsewhere (1012), not dropped.
    async with Client(ws_url(a)) as newcomer:
        await newcomer.send_json({"type": "session.start"})
        error = await newcomer.until(lambda e: e["type"] == "error")
        assert error["code"] == "draining", error
        assert await closed(newcomer) == (1012, "replica draining")
    # The live session goes on until its pause, then is handed over with its sentence translated.
    await asyncio.sleep(0.5)
    assert talker.ws.close_code is None
    await talker.send_audio(block_audio([0]))
    assert await closed(talker) == (1012, CLOSE_REASON)
    sentence = [e for e in talker.of("translation")]
    assert [(e["segmentIds"], e["text"]) for e in sentence] == [([0, 1], "es:block 1 block 2")]
    assert await exited(a)
    assert handovers(a, "pause") == 1
    # It goes on at the other replica: same numbering, nothing resent.
    resumed = await started(ws_url(b), sessionId=talker.events[0]["sessionId"], lastSegmentId=1)
    assert resumed.events[0]["resumed"] is True and resumed.events[0]["audioSeconds"] == 3.0
    await resumed.send_audio(block_audio([3]))
    await resumed.send_json({"type": "session.end"})
    await resumed.until(lambda e: e["type"] == "session.ended")
    assert [(e["segmentId"], e["text"]) for e in resumed.of("transcript.final")] == [(2, "block 3")]
    await resumed.__aexit__()
    await talker.__aexit__()


async def test_a_quiet_session_is_handed_over_at_once(two: tuple[Server, Server]) -> None:
    a, b = two
    quiet = await started(ws_url(a))
    await quiet.send_audio(block_audio([1, 0]))  # said something, then a pause
    await quiet.until(lambda e: e["type"] == "translation")
    loop = asyncio.get_running_loop()
    began = loop.time()
    await drain(a)
    assert await closed(quiet) == (1012, CLOSE_REASON)
    assert loop.time() - began < 1.0
    assert await exited(a)
    assert handovers(a, "idle") == 1
    back = await started(ws_url(b), sessionId=quiet.events[0]["sessionId"], lastSegmentId=0)
    assert back.events[0]["resumed"] is True and back.events[0]["audioSeconds"] == 2.0
    await back.send_json({"type": "session.end"})
    await back.until(lambda e: e["type"] == "session.ended")
    assert not back.of("transcript.final") and not back.of("translation")  # nothing sent twice
    await back.__aexit__()
    await quiet.__aexit__()


async def test_session_end_while_waiting_for_a_pause_ends_the_session_on_the_replica(
    two: tuple[Server, Server],
) -> None:
    a, _ = two
    client = await started(ws_url(a))
    await client.send_audio(block_audio([1, 2]))
    await client.until(lambda e: e["type"] == "transcript.final" and e["text"] == "block 2")
    await drain(a)
    await client.send_json({"type": "session.end"})
    await client.until(lambda e: e["type"] == "session.ended")
    assert [e["text"] for e in client.of("translation")] == ["es:block 1 block 2"]
    assert sum(handovers(a, r) for r in ("pause", "idle", "bound", "deadline")) == 0
    assert await exited(a)
    await client.__aexit__()


async def test_without_a_pause_the_session_goes_after_the_bound_with_its_unfinalised_audio(
    stack: Stack, redis_url: str
) -> None:
    stack.audio.utterance_per_block = False
    a = await stack.make_gateway(redis_url=redis_url, admin_token=TOKEN, drain_session_seconds=0.5)
    b = await stack.make_gateway(redis_url=redis_url)
    talker = await started(ws_url(a))
    await talker.send_audio(block_audio([1, 2]) + np.full(BLOCK // 2, 3 * LEVEL, dtype="<i2").tobytes())
    await talker.until(lambda e: e["type"] == "transcript.partial" and e["text"] == "block 3")
    await drain(a)
    assert await closed(talker) == (1012, CLOSE_REASON)
    assert handovers(a, "bound") == 1
    assert not talker.of("translation")  # the sentence is still open: the next replica finishes it
    sid = talker.events[0]["sessionId"]
    resumed = await started(ws_url(b), sessionId=sid, lastSegmentId=1)
    # The half block the first replica heard but did not finalise went with the session: the
    # client sends only the rest, and block 3 comes whole, on the session clock.
    assert resumed.events[0]["audioSeconds"] == 2.5
    await resumed.send_audio(np.full(BLOCK // 2, 3 * LEVEL, dtype="<i2").tobytes() + block_audio([0]))
    await resumed.send_json({"type": "session.end"})
    await resumed.until(lambda e: e["type"] == "session.ended")
    finals = [(e["segmentId"], e["text"], e["start"], e["end"]) for e in resumed.of("transcript.final")]
    assert finals == [(2, "block 3", 2.0, 3.0)]
    # The sentence that spans both replicas is translated once, whole.
    assert [(e["segmentIds"], e["text"]) for e in resumed.of("translation")] == [
        ([0, 1, 2], "es:block 1 block 2 block 3")
    ]
    await resumed.__aexit__()
    await talker.__aexit__()


async def test_when_the_drain_runs_out_of_time_the_sessions_left_go_as_they_are(
    stack: Stack, redis_url: str
) -> None:
    stack.audio.utterance_per_block = False
    a = await stack.make_gateway(
        redis_url=redis_url, admin_token=TOKEN, drain_session_seconds=30, drain_seconds=0.5
    )
    b = await stack.make_gateway(redis_url=redis_url)
    talker = await started(ws_url(a))
    await talker.send_audio(block_audio([1]) + np.full(BLOCK // 2, 2 * LEVEL, dtype="<i2").tobytes())
    await talker.until(lambda e: e["type"] == "transcript.partial" and e["text"] == "block 2")
    loop = asyncio.get_running_loop()
    began = loop.time()
    await drain(a)
    assert await closed(talker) == (1012, CLOSE_REASON)
    assert loop.time() - began < 3.0  # well inside any grace period
    assert handovers(a, "deadline") == 1
    assert await exited(a)
    resumed = await started(ws_url(b), sessionId=talker.events[0]["sessionId"], lastSegmentId=0)
    assert resumed.events[0]["audioSeconds"] == 1.5
    await resumed.send_audio(np.full(BLOCK // 2, 2 * LEVEL, dtype="<i2").tobytes())
    await resumed.send_json({"type": "session.end"})
    await resumed.until(lambda e: e["type"] == "session.ended")
    assert [(e["segmentId"], e["text"]) for e in resumed.of("transcript.final")] == [(1, "block 2")]
    await resumed.__aexit__()
    await talker.__aexit__()


async def test_a_client_ahead_of_the_replica_sends_again_what_was_in_flight(
    stack: Stack, redis_url: str
) -> None:
    """``livetranslate stream`` sends a file as fast as the transcripts follow: seconds of audio
    are on their way when the replica closes. The resumed session says which second it has, and
    the client goes on from there: every block still becomes its final, once."""
    stack.audio.utterance_per_block = False
    # The replica reads no faster than 3x real time: the client's lead waits in the socket.
    a = await stack.make_gateway(
        redis_url=redis_url, admin_token=TOKEN, drain_session_seconds=0.2, max_audio_speed=3.0
    )
    b = await stack.make_gateway(redis_url=redis_url)
    proxy = ServiceProxy([a.port, b.port])
    await proxy.start()
    levels = [*range(1, 31), 0]
    printer = TimedPrinter()
    try:
        task = asyncio.create_task(
            stream_file(
                Wav(block_audio(levels), 16000, 1), proxy.url, realtime=False, chunk_ms=100,
                token=None, targets=None, printer=printer,
            )
        )  # fmt: skip
        await until_final(printer, "block 2")
        assert (await drain(proxy_backend(proxy, a))).status_code == 202
        assert await asyncio.wait_for(task, 30), printer.notes
    finally:
        await proxy.close()
    assert printer.handovers == 1, printer.notes
    assert account(printer.finals, [f"block {k}" for k in levels if k]) == {
        "expected": 30, "received": 30, "lost": 0, "duplicated": 0, "unexpected": 0, "out_of_order": 0,
    }  # fmt: skip


def proxy_backend(proxy: ServiceProxy, server: Server) -> Server:
    assert proxy.routed and proxy.routed[0] == server.port, proxy.routed
    return server


async def until_final(printer: TimedPrinter, text: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not any(f["text"] == text for f in printer.finals):
        assert loop.time() < deadline, printer.notes
        await asyncio.sleep(0.01)

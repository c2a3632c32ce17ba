"""The session store (Redis) going away: live sessions keep their captions, new ones start."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import websockets

from tests.gateway.conftest import Client, RedisProcess, Stack, block_audio, drop


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples in a /metrics page."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


async def store_metrics(gw_url: str) -> tuple[float, float]:
    async with httpx.AsyncClient(base_url=gw_url) as http:
        text = (await http.get("/metrics")).text
    return metric(text, "livetranslate_session_store_errors_total"), metric(
        text, "livetranslate_session_store_deferred_writes"
    )


async def translated_then_redis_stops(gw_url: str, redis: RedisProcess) -> tuple[Client, str]:
    """A session on ``gw_url`` whose first final is translated, then Redis stops."""
    c = Client(gw_url.replace("http://", "ws://") + "/v1/stream")
    await c.__aenter__()
    await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
    sid = (await c.recv())["sessionId"]
    await c.send_audio(block_audio([1]))
    await c.until(lambda e: e["type"] == "translation" and e["segmentId"] == 0)
    redis.stop()
    return c, sid


async def resume_and_end(url: str, sid: str, ack: int, block: int) -> Client:
    """Resume ``sid`` (its finals up to ``ack`` received), send one block, end the session."""
    b = Client(url)
    async with b:
        await b.send_json({"type": "session.start", "sessionId": sid, "lastSegmentId": ack})
        started = await b.recv()
        assert started["type"] == "session.started" and started["resumed"] is True, started
        await b.send_audio(block_audio([block]))
        await b.send_json({"type": "session.end"})
        await b.until(lambda e: e["type"] == "session.ended")
    assert not b.of("error"), b.of("error")
    return b


async def test_a_live_session_keeps_its_captions_while_redis_is_down(
    stack: Stack, redis: RedisProcess
) -> None:
    """Redis restarting (a pod rescheduled, a failover) used to end every live session with
    internal_error. The captions need nothing from it: they go on, the session's writes wait, and
    once Redis is back (empty here: no persistence) they are written and the session resumes on
    another replica with its numbering."""
    one = await stack.make_gateway(redis_url=redis.url)
    two = await stack.make_gateway(redis_url=redis.url)
    c, sid = await translated_then_redis_stops(one.url, redis)
    await c.send_audio(block_audio([2, 3]))
    await c.until(lambda e: e["type"] == "translation" and e["segmentId"] == 2, timeout=20)
    assert not c.of("error"), c.of("error")
    errors, waiting = await store_metrics(one.url)
    assert errors >= 1 and waiting >= 3, (errors, waiting)  # the state and two finals at least
    redis.start()
    deadline = time.monotonic() + 10
    while (await store_metrics(one.url))[1] and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert (await store_metrics(one.url))[1] == 0
    drop(c)
    b = await resume_and_end(two.url.replace("http://", "ws://") + "/v1/stream", sid, ack=2, block=4)
    assert [e["segmentId"] for e in b.of("transcript.final")] == [3]


async def test_new_sessions_start_and_resumes_wait_while_redis_is_down(
    stack: Stack, redis: RedisProcess
) -> None:
    gw = await stack.make_gateway(redis_url=redis.url)
    url = gw.url.replace("http://", "ws://") + "/v1/stream"
    redis.stop()
    async with Client(url) as c:
        await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
        assert (await c.recv())["type"] == "session.started"
        await c.send_audio(block_audio([1]))
        await c.until(lambda e: e["type"] == "translation" and e["segmentId"] == 0, timeout=20)
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended")
    assert not c.of("error")
    # A sessionId may be a resume: its log is in the store, so the client is told to come back.
    async with Client(url) as r:
        await r.send_json({"type": "session.start", "sessionId": "earlier-session"})
        error = await r.recv()
        assert error["type"] == "error" and error["code"] == "upstream_unavailable", error
        assert "session store unreachable" in error["message"] and "connect again" in error["message"]
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await r.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013


async def test_a_drain_waits_for_redis_before_it_hands_sessions_over(
    stack: Stack, redis: RedisProcess
) -> None:
    """A handover goes through Redis: a replica drained while it is away keeps its sessions live
    until it answers, then hands them over with their state written, and they resume on another
    replica with their numbering (instead of a resume refused until this replica has exited with
    the state unwritten, and a fresh session under the same id afterwards)."""
    token = "admin-s3cret"
    one = await stack.make_gateway(redis_url=redis.url, admin_token=token, drain_session_seconds=0.5)
    two = await stack.make_gateway(redis_url=redis.url)
    c, sid = await translated_then_redis_stops(one.url, redis)
    await c.send_audio(block_audio([2]))
    await c.until(lambda e: e["type"] == "translation" and e["segmentId"] == 1)
    async with httpx.AsyncClient() as http:
        drained = await http.post(one.url + "/v1/admin/drain", headers={"authorization": f"Bearer {token}"})
    assert drained.status_code == 202
    await asyncio.sleep(1.5)  # past drain_session_seconds: still here, Redis is away
    assert c.ws.close_code is None
    redis.start()
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await c.recv(timeout=15)
    assert c.ws.close_code == 1012
    b = await resume_and_end(two.url.replace("http://", "ws://") + "/v1/stream", sid, ack=1, block=3)
    assert [e["segmentId"] for e in b.of("transcript.final")] == [2]
    assert not c.of("error")

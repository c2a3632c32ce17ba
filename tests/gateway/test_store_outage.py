"""The session store (Redis) going away: live sessions keep their captions, new ones start."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.gateway.conftest import Client, Stack, block_audio, drop, free_socket


class RedisProcess:
    """A real redis-server on one loopback port that a test can stop and start again."""

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
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
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
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisProcess(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


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


async def test_a_live_session_keeps_its_captions_while_redis_is_down(
    stack: Stack, redis: RedisProcess
) -> None:
    """Redis restarting (a pod rescheduled, a failover) used to end every live session with
    internal_error. The captions need nothing from it: they go on, the session's writes wait, and
    once Redis is back (empty here: no persistence) they are written and the session resumes on
    another replica with its numbering."""
    one = await stack.make_gateway(redis_url=redis.url)
    two = await stack.make_gateway(redis_url=redis.url)
    c = Client(one.url.replace("http://", "ws://") + "/v1/stream")
    await c.__aenter__()
    await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
    sid = (await c.recv())["sessionId"]
    await c.send_audio(block_audio([1]))
    await c.until(lambda e: e["type"] == "translation" and e["segmentId"] == 0)
    redis.stop()
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
    b = Client(two.url.replace("http://", "ws://") + "/v1/stream")
    async with b:
        await b.send_json({"type": "session.start", "sessionId": sid, "lastSegmentId": 2})
        started = await b.recv()
        assert started["type"] == "session.started" and started["resumed"] is True, started
        await b.send_audio(block_audio([4]))
        await b.send_json({"type": "session.end"})
        await b.until(lambda e: e["type"] == "session.ended")
    assert [e["segmentId"] for e in b.of("transcript.final")] == [3]
    assert not b.of("error")


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
    c = Client(one.url.replace("http://", "ws://") + "/v1/stream")
    await c.__aenter__()
    await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
    sid = (await c.recv())["sessionId"]
    await c.send_audio(block_audio([1]))
    await c.until(lambda e: e["type"] == "translation" and e["segmentId"] == 0)
    redis.stop()
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
    b = Client(two.url.replace("http://", "ws://") + "/v1/stream")
    async with b:
        await b.send_json({"type": "session.start", "sessionId": sid, "lastSegmentId": 1})
        started = await b.recv()
        assert started["type"] == "session.started" and started["resumed"] is True, started
        await b.send_audio(block_audio([3]))
        await b.send_json({"type": "session.end"})
        await b.until(lambda e: e["type"] == "session.ended")
    assert [e["segmentId"] for e in b.of("transcript.final")] == [2]
    assert not c.of("error") and not b.of("error")

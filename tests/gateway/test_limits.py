"""Every bad input of the issue's point 4 and the backpressure rules of point 5."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from livetranslate.workloads.gateway.outbox import SendQueue
from tests.gateway.conftest import Client, Stack, block_audio


async def gateway_url(stack: Stack, **overrides: object) -> str:
    server = await stack.make_gateway(**overrides)
    return server.url.replace("http://", "ws://") + "/v1/stream"


async def test_tokens_checked_before_accept(stack: Stack, tmp_path: Path) -> None:
    tokens = tmp_path / "auth"
    tokens.mkdir()
    (tokens / "alice").write_text("s3cret-alice\n")
    (tokens / "..data").mkdir()  # what a Secret mount also holds: ignored
    url = await gateway_url(stack, auth_dir=str(tokens))
    for kwargs in ({}, {"additional_headers": {"Authorization": "Bearer wrong"}}):
        with pytest.raises(InvalidStatus) as refused:
            async with Client(url, **kwargs):
                pass
        assert refused.value.response.status_code == 401
    async with Client(url, additional_headers={"Authorization": "Bearer s3cret-alice"}) as c:
        await c.send_json({"type": "session.start"})
        assert (await c.recv())["type"] == "session.started"
    async with Client(url + "?token=s3cret-alice") as c:  # browsers cannot set headers
        await c.send_json({"type": "session.start"})
        assert (await c.recv())["type"] == "session.started"


async def test_origins_checked_before_accept(stack: Stack) -> None:
    url = await gateway_url(stack, allowed_origins=["https://captions.example.org"])
    with pytest.raises(InvalidStatus) as refused:
        async with Client(url, origin="https://evil.example.com"):
            pass
    assert refused.value.response.status_code == 403
    host = url.split("/")[2]
    for origin in ("https://captions.example.org", f"http://{host}"):  # listed, and same origin
        async with Client(url, origin=origin) as c:
            await c.send_json({"type": "session.start"})
            assert (await c.recv())["type"] == "session.started"


async def test_garbage_gets_error_events_and_the_session_goes_on(stack: Stack) -> None:
    async with Client(stack.ws_url) as c:
        await c.ws.send(b"\x00\x01")
        assert (await c.recv())["code"] == "session_not_started"
        await c.ws.send("this is not json")
        assert (await c.recv())["code"] == "bad_message"
        await c.send_json({"type": "session.stop"})
        assert (await c.recv())["code"] == "bad_message"
        await c.send_json({"type": "session.start", "sampleRate": 4000})
        err = await c.recv()
        assert err["code"] == "bad_message" and "sampleRate" in err["message"]
        await c.send_json({"type": "session.end"})
        assert (await c.recv())["code"] == "session_not_started"
        await c.send_json({"type": "session.start", "targetLanguages": ["de"]})
        err = await c.recv()
        assert err["code"] == "unsupported_language" and "de" in err["message"]
        await c.send_json({"type": "session.start", "sourceLanguage": "fr", "targetLanguages": ["es"]})
        err = await c.recv()
        assert err["code"] == "unsupported_language" and "this pipeline transcribes 'en'" in err["message"]
        await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
        assert (await c.recv())["type"] == "session.started"
        await c.send_json({"type": "session.start"})
        assert (await c.recv())["code"] == "bad_message"
        await c.ws.send(b"\x00" * (1024 * 1024 + 2))
        assert (await c.recv())["code"] == "frame_too_large"
        # Still a working session after all that.
        await c.send_audio(block_audio([6]))
        await c.send_json({"type": "session.end"})
        final = await c.until(lambda e: e["type"] == "transcript.final")
        assert final["text"] == "block 6"


async def test_persistent_garbage_closes_with_1008(stack: Stack) -> None:
    async with Client(stack.ws_url) as c:
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(12):
                await c.ws.send("{")
            while True:
                await c.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert "bad messages" in closed.value.rcvd.reason
    assert len(c.of("error")) >= 10


async def test_message_rate_limit(stack: Stack) -> None:
    url = await gateway_url(stack, max_messages_per_second=20)
    async with Client(url) as c:
        await c.send_json({"type": "session.start"})
        await c.recv()
        for _ in range(120):
            await c.ws.send(b"\x00\x00")
        err = await c.until(lambda e: e["type"] == "error")
        assert err["code"] == "rate_limited"


async def test_audio_faster_than_allowed_is_slowed_not_refused(stack: Stack) -> None:
    url = await gateway_url(stack, max_audio_speed=4.0)
    async with Client(url) as c:
        await c.send_json({"type": "session.start"})
        await c.recv()
        loop = asyncio.get_running_loop()
        began = loop.time()
        await c.send_audio(block_audio([1, 2, 3, 4, 5, 6, 7, 8]), chunk=3200)
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended", timeout=20)
        took = loop.time() - began
    assert [e["text"] for e in c.of("transcript.final")] == [f"block {k}" for k in range(1, 9)]
    assert not c.of("error")
    # 8 s of audio at 4x is 2 s, minus the 1 s burst: the gateway made the client wait.
    assert took >= 0.8


async def test_capacity_exceeded_is_a_clear_error(stack: Stack) -> None:
    url = await gateway_url(stack, max_sessions=1)
    async with Client(url) as first:
        await first.send_json({"type": "session.start"})
        assert (await first.recv())["type"] == "session.started"
        async with Client(url) as second:
            await second.send_json({"type": "session.start"})
            err = await second.recv()
            assert err["code"] == "capacity_exceeded" and "maximum of 1" in err["message"]
            with pytest.raises(ConnectionClosed) as closed:
                await second.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        # The autoscaler sees the cap and the refusal (counted as demand, issue 25).
        base = url.replace("ws://", "http://").split("/v1/stream")[0]
        async with httpx.AsyncClient() as http:
            text = (await http.get(base + "/metrics")).text
        assert re.search(r'livetranslate_stage_capacity_sessions\{[^}]*stage="gateway"[^}]*\} 1\.0', text), (
            text
        )
        assert re.search(r'livetranslate_admission_refusals_total\{[^}]*reason="capacity"[^}]*\} 1\.0', text)


async def test_no_session_start_closes_the_socket(stack: Stack) -> None:
    url = await gateway_url(stack, start_timeout_seconds=0.5)
    async with Client(url) as c:
        with pytest.raises(ConnectionClosed) as closed:
            await c.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_send_queue_drops_superseded_partials_never_finals() -> None:
    q = SendQueue(limit=4)
    for i in range(10):
        assert q.put("partial", json.dumps({"i": i}))
    assert q.depth == 1 and q.dropped_partials == 9  # only the newest partial is worth sending
    q.put("final", "f0")
    q.put("partial", "p-new")
    q.put("translation", "t0")
    q.put("final", "f1")
    q.put("final", "f2")  # over the limit: partials go first
    assert [item[1] for item in q._items] == ["f0", "t0", "f1", "f2"]
    ok = True
    for i in range(20):
        ok = q.put("final", f"x{i}")
        if not ok:
            break
    assert not ok, "a client that never reads is declared stuck"
    assert all(item[0] != "partial" for item in q._items)


class StuckSocket:
    """A client socket that takes a session.start and audio, then never drains what it is sent."""

    def __init__(self, messages: list[dict[str, object]], writable: int) -> None:
        from starlette.websockets import WebSocketState

        self.application_state = WebSocketState.CONNECTED
        self._messages = messages
        self._writable = writable
        self.sent: list[str] = []
        self.closed: tuple[int, str] | None = None

    async def accept(self) -> None:
        return None

    async def receive(self) -> dict[str, object]:
        if self._messages:
            return self._messages.pop(0)
        await asyncio.Event().wait()  # a quiet client
        raise AssertionError

    async def send_text(self, text: str) -> None:
        if len(self.sent) >= self._writable:
            await asyncio.Event().wait()  # the socket buffer is full and stays full
        self.sent.append(text)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


async def test_a_client_that_stops_reading_is_closed(stack: Stack) -> None:
    from livetranslate.workloads.gateway.connection import Connection
    from livetranslate.workloads.gateway.service import Gateway
    from tests.gateway.conftest import gateway_config

    gw = Gateway(
        gateway_config(stack.audio_server.url, stack.translation_server.url, stuck_client_seconds=1.0)
    )
    ws = StuckSocket(
        [
            {"type": "websocket.receive", "text": '{"type": "session.start"}'},
            {"type": "websocket.receive", "bytes": block_audio([1, 2, 3])},
        ],
        writable=2,
    )
    try:
        await asyncio.wait_for(Connection(ws, gw).run(), 15)  # type: ignore[arg-type]
    finally:
        await gw.close()
    assert ws.closed is not None and ws.closed[0] == 1008 and "too slow" in ws.closed[1]
    # The session it held was detached (resumable), not lost: its finals are in the store.
    [sid] = [json.loads(t)["sessionId"] for t in ws.sent if '"session.started"' in t]
    assert [s.text for s in await gw.store.segments(sid)] == ["block 1", "block 2", "block 3"]


async def test_garbage_after_the_close_decision_is_not_read(stack: Stack) -> None:
    """A burst of garbage already queued when the gateway decides to close is not answered too."""
    async with Client(stack.ws_url) as c:
        for _ in range(60):
            await c.ws.send("{")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await c.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert len(c.of("error")) == 11  # max_bad_messages (10) tolerated, the 11th closes


async def test_silence_without_finals_keeps_the_replay_buffer_bounded(stack: Stack) -> None:
    """Audio the service got but never finalised (silence) is held for replay only up to the limit."""
    server = await stack.make_gateway(audio_buffer_seconds=2.0)
    url = server.url.replace("http://", "ws://") + "/v1/stream"
    async with Client(url) as c:
        await c.send_json({"type": "session.start", "targetLanguages": []})
        await c.recv()
        for second in range(1, 7):  # six seconds of silence, as a microphone sends it: no final
            await c.send_audio(block_audio([0]))
            for _ in range(200):
                if stack.audio.received_seconds >= second:
                    break
                await asyncio.sleep(0.02)
        session = next(iter(server.app.state.gateway.sessions))
        assert len(session._buf) <= 2 * 32000
        assert not c.of("error")  # nothing the service had not got was dropped
        await c.send_audio(block_audio([3]))
        final = await c.until(lambda e: e["type"] == "transcript.final")
        assert final["text"] == "block 3" and final["start"] == pytest.approx(6.0)

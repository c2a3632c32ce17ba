"""Resume: a dropped connection, the same or another replica, no final lost or sent twice."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from tests.gateway.conftest import BLOCK, LEVEL, Client, Stack, block_audio, drop


def half_block(level: int) -> bytes:
    return np.full(BLOCK // 2, level * LEVEL, dtype="<i2").tobytes()


def finals_of(*clients: Client) -> list[tuple[int, str, float, float]]:
    return [
        (e["segmentId"], e["text"], e["start"], e["end"]) for c in clients for e in c.of("transcript.final")
    ]


async def first_half(url: str) -> tuple[Client, str]:
    """Two whole blocks (finals 0 and 1, delivered) and half a block still being heard, then a drop."""
    a = Client(url)
    await a.__aenter__()
    await a.send_json({"type": "session.start", "targetLanguages": ["es"]})
    sid = (await a.recv())["sessionId"]
    await a.send_audio(block_audio([1, 2]))
    await a.until(lambda e: e["type"] == "translation" and e["segmentId"] == 1)
    await a.send_audio(half_block(3))
    await a.until(lambda e: e["type"] == "transcript.partial" and e["text"] == "block 3")
    drop(a)
    return a, sid


async def second_half(url: str, sid: str, ack: int | None) -> Client:
    b = Client(url)
    await b.__aenter__()
    start: dict[str, Any] = {"type": "session.start", "sessionId": sid}
    if ack is not None:
        start["lastSegmentId"] = ack
    await b.send_json(start)
    started = await b.recv()
    assert started["type"] == "session.started" and started["resumed"] is True
    assert started["sessionId"] == sid and started["targetLanguages"] == ["es"]
    await b.send_audio(block_audio([4]))
    await b.send_json({"type": "session.end"})
    await b.until(lambda e: e["type"] == "session.ended")
    await b.__aexit__()
    return b


EXPECTED = [
    (0, "block 1", 0.0, 1.0),
    (1, "block 2", 1.0, 2.0),
    (2, "block 3", 2.0, 2.5),
    (3, "block 4", 2.5, 3.5),
]


async def test_resume_after_a_drop_with_acknowledgement(stack: Stack) -> None:
    a, sid = await first_half(stack.ws_url)
    b = await second_half(stack.ws_url, sid, ack=1)
    # The words heard when the connection dropped were finalised and delivered on resume; the
    # new audio continues the session clock and the numbering.
    assert finals_of(a, b) == EXPECTED
    seen = [(e["segmentId"], e["language"]) for c in (a, b) for e in c.of("translation")]
    assert sorted(seen) == [(i, "es") for i in range(4)]


async def test_resume_resends_what_the_client_did_not_get(stack: Stack) -> None:
    _, sid = await first_half(stack.ws_url)
    # This client says it only got segment 0: segment 1 comes again, with its translation.
    b = await second_half(stack.ws_url, sid, ack=0)
    assert [f[0] for f in finals_of(b)] == [1, 2, 3]
    assert sorted(e["segmentId"] for e in b.of("translation")) == [1, 2, 3]


async def test_resume_without_acknowledgement_uses_delivery_records(stack: Stack) -> None:
    a, sid = await first_half(stack.ws_url)
    b = await second_half(stack.ws_url, sid, ack=None)
    assert finals_of(a, b) == EXPECTED


async def test_resume_on_another_replica_through_redis(stack: Stack, redis_url: str) -> None:
    one = await stack.make_gateway(redis_url=redis_url)
    two = await stack.make_gateway(redis_url=redis_url)
    url_one = one.url.replace("http://", "ws://") + "/v1/stream"
    url_two = two.url.replace("http://", "ws://") + "/v1/stream"
    a, sid = await first_half(url_one)
    # Straight to the other replica: it waits for the first to finish finalising the dropped
    # audio (the session lease), then resumes from the shared state.
    b = await second_half(url_two, sid, ack=1)
    assert finals_of(a, b) == EXPECTED
    # The context of the resumed session's first new request came from Redis.
    last = max(stack.translation.requests, key=lambda r: r.segmentId)
    assert last.segmentId == 3 and [c.source for c in last.context] == ["block 1", "block 2", "block 3"]


async def test_a_session_resumed_on_another_replica_keeps_its_speakers(stack: Stack, redis_url: str) -> None:
    """The voices the audio service knows travel with the session's state in Redis: the other
    replica's audio stream starts from them, so the speakers keep their labels."""
    stack.audio.speakers = {
        "embedder": "resemblyzer",
        "voices": [{"label": f"S{i}", "seconds": 1.5, "embedding": "ADwAPA=="} for i in (1, 2, 3)],
    }
    one = await stack.make_gateway(redis_url=redis_url, diarization=True)
    two = await stack.make_gateway(redis_url=redis_url, diarization=True)
    a, sid = await first_half(one.url.replace("http://", "ws://") + "/v1/stream")
    await second_half(two.url.replace("http://", "ws://") + "/v1/stream", sid, ack=1)
    assert not a.of("error")
    carried = [None if s.speakers is None else len(s.speakers.voices) for s in stack.audio.starts]
    assert carried[0] is None and carried[-1] == 3, carried  # 3 finals heard by the first stream


async def test_session_state_survives_the_replica_it_started_on(stack: Stack, redis_url: str) -> None:
    one = await stack.make_gateway(redis_url=redis_url)
    two = await stack.make_gateway(redis_url=redis_url)
    a, sid = await first_half(one.url.replace("http://", "ws://") + "/v1/stream")
    await asyncio.sleep(0.5)
    await one.stop()  # the first replica goes away (a rollout) after its flush
    b = await second_half(two.url.replace("http://", "ws://") + "/v1/stream", sid, ack=1)
    assert finals_of(a, b) == EXPECTED


async def test_unknown_session_id_starts_a_new_session(stack: Stack) -> None:
    async with Client(stack.ws_url) as c:
        await c.send_json({"type": "session.start", "sessionId": "my-own-id"})
        started = await c.recv()
        assert started["sessionId"] == "my-own-id" and started["resumed"] is False


async def test_resume_while_the_old_socket_still_looks_open(stack: Stack) -> None:
    """A client whose old connection died without a FIN comes back: the replica closes the old
    one at once instead of making the client wait for a timeout."""
    a = Client(stack.ws_url)
    await a.__aenter__()
    await a.send_json({"type": "session.start", "targetLanguages": ["es"]})
    sid = (await a.recv())["sessionId"]
    await a.send_audio(block_audio([1]))
    await a.until(lambda e: e["type"] == "transcript.final")
    loop = asyncio.get_running_loop()
    began = loop.time()
    b = await second_half(stack.ws_url, sid, ack=0)
    assert loop.time() - began < 5
    # The old connection was closed by the replica (1012: go elsewhere), not left to time out.
    await asyncio.wait_for(a.ws.wait_closed(), timeout=3)
    assert a.ws.close_code == 1012, (a.ws.close_code, a.ws.close_reason)
    assert [f[1] for f in finals_of(a, b)] == ["block 1", "block 4"]
    await a.__aexit__()


async def test_a_resume_may_change_the_target_languages(stack: Stack) -> None:
    a, sid = await first_half(stack.ws_url)
    # A language this pipeline does not serve is refused, and the session is not lost by it.
    async with Client(stack.ws_url) as bad:
        await bad.send_json({"type": "session.start", "sessionId": sid, "targetLanguages": ["de"]})
        error = await bad.until(lambda e: e["type"] == "error")
        assert error["code"] == "unsupported_language" and "['de']" in error["message"]
    b = Client(stack.ws_url)
    await b.__aenter__()
    await b.send_json(
        {"type": "session.start", "sessionId": sid, "lastSegmentId": 1, "targetLanguages": ["fr"]}
    )
    started = await b.recv()
    assert started["resumed"] is True and started["targetLanguages"] == ["fr"]
    await b.send_audio(block_audio([4]))
    await b.send_json({"type": "session.end"})
    await b.until(lambda e: e["type"] == "session.ended")
    await b.__aexit__()
    assert finals_of(a, b) == EXPECTED
    # Segments 0-1 were translated before the change; what is translated after it is in French.
    assert sorted((e["segmentId"], e["language"]) for e in a.of("translation")) == [(0, "es"), (1, "es")]
    assert {e["language"] for e in b.of("translation") if e["segmentId"] == 3} == {"fr"}


async def test_a_resumed_session_keeps_its_growing_context_window(stack: Stack) -> None:
    # The window of earlier segments sent as context grows append-only to 2 * 3 - 1 (so the
    # engine's prefix cache keeps hitting); after a resume it must come from the stored segments.
    a = Client(stack.ws_url)
    await a.__aenter__()
    await a.send_json({"type": "session.start", "targetLanguages": ["es"]})
    sid = (await a.recv())["sessionId"]
    await a.send_audio(block_audio([1, 2, 3, 4]))
    await a.until(lambda e: e["type"] == "translation" and e["segmentId"] == 3)
    drop(a)
    b = Client(stack.ws_url)
    await b.__aenter__()
    await b.send_json({"type": "session.start", "sessionId": sid, "lastSegmentId": 3})
    assert (await b.recv())["resumed"] is True
    await b.send_audio(block_audio([5, 6]))
    await b.send_json({"type": "session.end"})
    await b.until(lambda e: e["type"] == "session.ended")
    await b.__aexit__()
    reqs = {r.segmentId: r for r in stack.translation.requests if r.sessionId == sid}
    assert [c.source for c in reqs[4].context] == [f"block {k}" for k in (1, 2, 3, 4)]
    assert [c.source for c in reqs[5].context] == [f"block {k}" for k in (1, 2, 3, 4, 5)]

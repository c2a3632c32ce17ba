"""Upstreams dying and coming back mid-session: the client is told, the session stays open, audio
is buffered and replayed, translations are retried; nothing is lost or doubled."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.server import ServerConnection, serve

from livetranslate.protocol import AudioReady, AudioStart
from livetranslate.workloads.gateway.upstream import AudioLink, MaskKeys
from tests.gateway.conftest import Client, Stack, block_audio


async def test_a_frame_goes_out_at_once_unless_the_socket_pushes_back() -> None:
    """The hot path: an idle stream takes a frame without a task switch, in order; it declines
    (and the caller falls back to the waiting send) under backpressure or once closed."""
    got: list[bytes | str] = []
    done = asyncio.Event()

    async def audio_service(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(AudioReady(device="cpu", model="tiny.en").model_dump_json())
        async for message in ws:
            got.append(message)
        done.set()

    async with serve(audio_service, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        link = await AudioLink.open(f"http://127.0.0.1:{port}", AudioStart(type="start", sessionId="s"), 5.0)
        assert link.send_now(b"\x01\x00" * 800) and link.send_now(b"\x02\x00" * 800)
        # The frames are built here: each length encoding (7-bit, 16-bit, 64-bit) reaches a real
        # server, which refuses unmasked or malformed client frames.
        sizes = (10, 125, 126, 65535, 65536, 70000)
        assert all(link.send_now(bytes([n % 251]) * n) for n in sizes)
        link._ws.pause_writing()  # what the transport calls over its high-water mark
        assert not link.send_now(b"\x03\x00")
        link._ws.resume_writing()
        await link.send_audio(b"\x03\x00")  # the waiting path, after the fast ones
        await link.close()
        assert not link.send_now(b"\x04\x00")
        await asyncio.wait_for(done.wait(), 5)
    assert got == [b"\x01\x00" * 800, b"\x02\x00" * 800, *(bytes([n % 251]) * n for n in sizes), b"\x03\x00"]


def test_mask_keys_are_fresh_four_bytes_from_a_refilled_pool() -> None:
    keys = MaskKeys(keys=8)
    taken = [keys.take() for _ in range(40)]  # five refills
    assert all(len(k) == 4 for k in taken)
    assert len(set(taken)) > 35  # random 32-bit keys: a repeat among 40 is a 2e-7 event


async def test_audio_service_restarts_mid_session(stack: Stack) -> None:
    async with Client(stack.ws_url) as c:
        await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
        await c.recv()
        await c.send_audio(block_audio([1, 2]))
        await c.until(lambda e: e["type"] == "transcript.final" and e["segmentId"] == 1)
        await stack.audio_server.stop(force=True)
        error = await c.until(lambda e: e["type"] == "error")
        assert error["code"] == "upstream_unavailable" and "audio" in error["message"]
        # Spoken while the audio service is away: held by the gateway.
        await c.send_audio(block_audio([3, 4]))
        await asyncio.sleep(0.5)
        await stack.audio_server.start()
        await c.send_audio(block_audio([5]))
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended", timeout=20)
    finals = [(e["segmentId"], e["text"], e["start"]) for e in c.of("transcript.final")]
    assert finals == [
        (0, "block 1", 0.0),
        (1, "block 2", 1.0),
        (2, "block 3", 2.0),
        (3, "block 4", 3.0),
        (4, "block 5", 4.0),
    ]
    # The replacement stream started at the last final's end, in session time.
    assert stack.audio.starts[-1].timeOffset == 2.0
    assert sorted(e["segmentId"] for e in c.of("translation")) == [0, 1, 2, 3, 4]


async def test_sessions_waiting_on_an_open_circuit_resume_as_soon_as_a_trial_succeeds(stack: Stack) -> None:
    # Slow pacing: a 1 s circuit period, backoff from 1 s up to 8 s. Sessions that found the
    # circuit open must not each sleep out a backoff period once the audio service is back.
    gateway = await stack.make_gateway(
        breaker_reset_seconds=1.0, retry_base_seconds=1.0, retry_max_seconds=8.0
    )
    url = gateway.url.replace("http://", "ws://") + "/v1/stream"
    await stack.audio_server.stop(force=True)
    clients = [Client(url) for _ in range(6)]
    for i, c in enumerate(clients):
        await c.__aenter__()
        await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
        await c.recv()
        await c.send_audio(block_audio([i + 1]))
    for c in clients:
        assert (await c.until(lambda e: e["type"] == "error"))["code"] == "upstream_unavailable"
    await asyncio.sleep(5.0)  # the circuit opened and every session is waiting (or backing off)
    loop = asyncio.get_running_loop()
    await stack.audio_server.start()
    back = loop.time()

    async def resumed(c: Client) -> float:
        await c.until(lambda e: e["type"] == "transcript.final", timeout=15)
        return loop.time() - back

    times = sorted(await asyncio.gather(*(resumed(c) for c in clients)))
    # A trial that succeeds once the circuit half-opens wakes the sessions waiting on it. Measured
    # on an idle machine: the first resumed 0.1-0.2 s after the restart, the last 0.9-2.7 s (a
    # 3.0 s bound failed once at 3.01 s on a loaded machine). Each session sleeping out its own
    # backoff (1 s doubling up to 8 s, randomized) would leave the last several seconds behind.
    assert times[-1] < 4.0, times
    for c in clients:
        await c.__aexit__()


async def test_audio_service_down_at_session_start(stack: Stack) -> None:
    await stack.audio_server.stop(force=True)
    async with Client(stack.ws_url) as c:
        await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
        assert (await c.recv())["type"] == "session.started"
        await c.send_audio(block_audio([7]))
        assert (await c.recv())["code"] == "upstream_unavailable"
        await stack.audio_server.start()
        final = await c.until(lambda e: e["type"] == "transcript.final", timeout=15)
        assert (final["segmentId"], final["text"]) == (0, "block 7")


async def test_translation_service_restarts_mid_session(stack: Stack) -> None:
    async with Client(stack.ws_url) as c:
        await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
        await c.recv()
        await c.send_audio(block_audio([1]))
        await c.until(lambda e: e["type"] == "translation")
        await stack.translation_server.stop(force=True)
        await c.send_audio(block_audio([2, 3]))
        # Finals keep coming without translation; the client learns why.
        await c.until(lambda e: e["type"] == "transcript.final" and e["segmentId"] == 2)
        if not any(e["code"] == "upstream_unavailable" for e in c.of("error")):
            await c.until(lambda e: e["type"] == "error" and e["code"] == "upstream_unavailable")
        await stack.translation_server.start()
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended", timeout=20)
    assert sorted(e["segmentId"] for e in c.of("translation")) == [0, 1, 2]
    assert all(e["text"] == f"es:block {e['segmentId'] + 1}" for e in c.of("translation"))


async def test_a_language_that_fails_is_reported_per_segment(stack: Stack) -> None:
    stack.translation.fail_languages = {"fr"}
    async with Client(stack.ws_url) as c:
        await c.send_json({"type": "session.start"})
        await c.recv()
        await c.send_audio(block_audio([1]))
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended")
    assert [(e["language"], e["text"]) for e in c.of("translation")] == [("es", "es:block 1")]
    [err] = c.of("error")
    assert (err["code"], err["segmentId"], err["language"]) == ("translation_failed", 0, "fr")


async def test_an_idle_stream_closed_by_the_audio_service_is_not_an_outage(stack: Stack) -> None:
    stack.audio.idle_timeout = 0.5
    async with Client(stack.ws_url) as c:
        await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
        await c.recv()
        await c.send_audio(block_audio([1]))
        await c.until(lambda e: e["type"] == "translation")
        await asyncio.sleep(1.5)  # the microphone is muted; the audio service drops the stream
        await c.send_audio(block_audio([2]))
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended")
    assert not c.of("error")
    assert [(e["segmentId"], e["text"], e["start"]) for e in c.of("transcript.final")] == [
        (0, "block 1", 0.0),
        (1, "block 2", 1.0),
    ]
    assert stack.audio.streams == 2


VOICES = {
    "embedder": "resemblyzer",
    "voices": [{"label": f"S{i}", "seconds": 2.0, "embedding": "ADwAPA=="} for i in (1, 2, 3)],
}


async def test_a_new_audio_stream_keeps_the_speakers_the_session_knows(stack: Stack) -> None:
    """With diarization the audio service reports the session's voices at each utterance end; the
    session's next stream (reopened after a muted pause here; a handover or a resume alike)
    starts from them, so a voice heard before keeps its label instead of being numbered afresh."""
    stack.audio.idle_timeout = 0.5
    stack.audio.speakers = VOICES
    server = await stack.make_gateway(diarization=True)
    async with Client(server.url.replace("http://", "ws://") + "/v1/stream") as c:
        await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
        await c.recv()
        await c.send_audio(block_audio([1, 2]))
        await c.until(lambda e: e["type"] == "translation" and e["segmentId"] == 1)
        await asyncio.sleep(1.5)  # muted: the audio service drops the stream
        await c.send_audio(block_audio([3]))
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended")
    assert not c.of("error")
    carried = [
        None if s.speakers is None else [v.label for v in s.speakers.voices] for s in stack.audio.starts
    ]
    assert carried == [None, ["S1", "S2"]]


async def test_a_new_audio_stream_starts_from_the_language_the_session_settled_on(stack: Stack) -> None:
    """With sourceLanguage auto the audio service settles the session's language over several
    utterances; a session's next stream (reopened after a muted pause here; a handover or a resume
    alike) starts from it instead of detecting afresh, where one unsure utterance could flip it."""
    stack.audio.idle_timeout = 0.5
    stack.audio.texts = {2: "buenos días."}
    stack.audio.languages = {2: "es"}
    server = await stack.make_gateway(source_language="auto", target_languages=["en"])
    async with Client(server.url.replace("http://", "ws://") + "/v1/stream") as c:
        await c.send_json({"type": "session.start", "sourceLanguage": "auto"})
        await c.recv()
        await c.send_audio(block_audio([2]))
        await c.until(lambda e: e["type"] == "translation")
        await asyncio.sleep(1.5)  # muted: the audio service drops the stream
        await c.send_audio(block_audio([2]))
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended")
    assert not c.of("error")
    assert [s.spokenLanguage for s in stack.audio.starts] == [None, "es"]


async def test_an_invalid_event_from_the_audio_service_reopens_the_stream_and_loses_nothing(
    stack: Stack,
) -> None:
    """An event that breaks the audio protocol (here an utterance end whose language is not a
    language tag) used to end the listener's session with internal_error. The stream is what is
    broken: the gateway opens a new one from the audio after the last final."""
    stack.audio.invalid_events = 1
    async with Client(stack.ws_url) as c:
        await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
        await c.recv()
        await c.send_audio(block_audio([1, 2, 3]))
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended")
    assert "internal_error" not in [e["code"] for e in c.of("error")], c.of("error")
    assert [(e["segmentId"], e["text"]) for e in c.of("transcript.final")] == [
        (0, "block 1"),
        (1, "block 2"),
        (2, "block 3"),
    ]
    assert stack.audio.streams == 2


@pytest.mark.parametrize("with_error", [True, False], ids=["error-then-close", "close-only"])
async def test_a_stream_handed_back_by_a_draining_audio_replica_resumes_at_once(
    stack: Stack, with_error: bool
) -> None:
    """An audio replica that drains hands the stream back at a pause (error "draining", 1012) and
    the next start may still reach it; the gateway opens the stream again at once from the audio
    after the last final, counts no failure (no outage) and tells the listener nothing. The close
    alone says as much: the gateway's writer can meet it before its reader reads the error (once
    in 393 handovers of the drain benchmark, which then showed the listener an outage)."""
    stack.audio.hand_back_error = with_error
    stack.audio.hand_back_after = 2
    stack.audio.refuse_draining = 2
    async with Client(stack.ws_url) as c:
        await c.send_json({"type": "session.start", "targetLanguages": ["es"]})
        await c.recv()
        await c.send_audio(block_audio([1, 2, 3, 4]))
        await c.send_json({"type": "session.end"})
        await c.until(lambda e: e["type"] == "session.ended")
    assert not c.of("error"), c.of("error")
    assert [(e["segmentId"], e["text"], e["start"]) for e in c.of("transcript.final")] == [
        (i, f"block {i + 1}", float(i)) for i in range(4)
    ]
    assert sorted(e["segmentId"] for e in c.of("translation")) == [0, 1, 2, 3]
    # Two refused starts and the resumed stream, from the end of the last final.
    assert stack.audio.streams == 2 and len(stack.audio.starts) == 4
    assert stack.audio.starts[-1].timeOffset == 2.0

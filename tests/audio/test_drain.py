"""An audio replica removed while real speech streams through it (workloads/audio/drain.py).

Two audio services as users run them (``livetranslate serve audio``, Whisper tiny.en from the
package index) behind a Service stand-in that routes by ``/readyz``, one gateway and a real Redis.
The replica the speaker's stream is on gets SIGTERM mid-sentence, as the kubelet sends it when the
operator scales the stage down. A listener must not notice: no error and no reconnect on their
side, the numbering runs on, every final once and in order, the words as right as without the
drain, each sentence translated once, no final more than 2 s later than without the drain; the
drained replica exits by itself, with status 0, well inside its grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from livetranslate.protocol import ERR_DRAINING, AudioStart
from livetranslate_testing import speech
from livetranslate_testing.replicas import (
    AudioReplicas,
    Fleet,
    ServiceProxy,
    TimedPrinter,
    assert_listener_unaffected,
    speaker,
)

pytestmark = pytest.mark.slow

SENTENCES = speech.SENTENCES[:6]


@pytest.fixture(scope="module")
def talk() -> tuple[np.ndarray, list[tuple[float, float, str, str]]]:
    speech.require_tools()
    return speech.compose([speech.Utterance(t, "en-us", pause_after=1.0) for t in SENTENCES])


@pytest.fixture
async def stages(tmp_path: Path) -> AsyncIterator[tuple[AudioReplicas, ServiceProxy, Fleet]]:
    audio = await asyncio.to_thread(AudioReplicas, tmp_path, 2)
    try:
        service = ServiceProxy(audio.ports)
        await service.start()
        fleet = Fleet(tmp_path, replicas=1, audio_url=f"http://127.0.0.1:{service.port}")
        try:
            await asyncio.to_thread(fleet.start)
            yield audio, service, fleet
        finally:
            fleet.stop()
            await service.close()
    finally:
        audio.stop()


async def test_real_speech_keeps_every_word_when_its_audio_replica_is_drained(
    stages: tuple[AudioReplicas, ServiceProxy, Fleet],
    talk: tuple[np.ndarray, list[tuple[float, float, str, str]]],
) -> None:
    audio, service, fleet = stages
    samples, spans = talk
    script = " ".join(SENTENCES)
    url = f"ws://127.0.0.1:{fleet.ports[0]}/v1/stream"

    plain = TimedPrinter()
    assert await speaker(url, samples, plain), plain.notes

    drained = TimedPrinter()
    task = speaker(url, samples, drained)
    third = spans[2]
    while drained.heard_until < third[0] + 0.5:  # the speaker is inside the third sentence
        assert not task.done(), drained.notes
        await asyncio.sleep(0.02)
    a = service.routed[-1]
    [b] = [p for p in audio.ports if p != a]
    signalled = time.monotonic()
    os.kill(audio.procs[a].pid, 15)  # what the kubelet sends the pod's process
    assert await audio.wait_exit(a, 40) == 0, audio.log(a)[-20:]
    exited_after = time.monotonic() - signalled
    assert await asyncio.wait_for(task, 90), drained.notes

    # The drained replica handed the stream back at a pause (or its bound) and exited by itself,
    # inside drain_seconds (20 s) plus its shutdown; the stream went on on the other replica.
    [handed] = [line for line in audio.log(a) if line.get("msg") == "audio session closed"][-1:]
    assert handed["code"] == 1012, handed
    assert exited_after < 25, exited_after
    assert service.routed[-1] == b and a in service.routed, service.routed
    # The listener saw nothing of it: no error, no reconnect of their own session.
    assert drained.reconnects == 0 and drained.handovers == 0, drained.notes
    assert_listener_unaffected(plain, drained, script)


async def test_a_draining_audio_replica_refuses_new_streams_and_hands_live_ones_back(
    stages: tuple[AudioReplicas, ServiceProxy, Fleet],
    talk: tuple[np.ndarray, list[tuple[float, float, str, str]]],
) -> None:
    """Between SIGTERM and its exit the replica is not ready, refuses a new stream with the error
    ``draining`` and close 1012, and hands a live one back the same way once its speaker pauses."""
    audio, _, _ = stages
    samples, spans = talk
    pcm = speech.to_pcm16(samples)
    a = audio.ports[0]
    base = f"ws://127.0.0.1:{a}/v1/audio"

    async with websockets.connect(base) as live:
        await live.send(AudioStart(type="start", sessionId="live").model_dump_json())
        assert json.loads(await live.recv())["type"] == "ready"
        step = speech.SAMPLE_RATE * 2 // 10  # 100 ms of PCM16
        first_end = int(spans[0][1] * speech.SAMPLE_RATE) * 2
        sent = 0
        while sent < first_end - 8 * step:  # well inside the first sentence
            await live.send(pcm[sent : sent + step])
            sent += step
        events = []
        while not any(e["type"] == "partial" and e["text"] for e in events):  # the speaker is heard
            events.append(json.loads(await live.recv()))
        os.kill(audio.procs[a].pid, 15)
        async with httpx.AsyncClient() as client:
            for _ in range(50):
                r = await client.get(f"http://127.0.0.1:{a}/readyz", timeout=2)
                if r.status_code == 503:
                    break
                await asyncio.sleep(0.02)
        assert r.status_code == 503 and "draining" in r.json()["checks"], r.text
        async with websockets.connect(base) as late:
            await late.send(AudioStart(type="start", sessionId="late").model_dump_json())
            refused = json.loads(await late.recv())
            assert refused["type"] == "error" and refused["code"] == ERR_DRAINING, refused
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await late.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        # The speaker goes on to the end of the sentence and pauses: the stream's last events are
        # its finals, the utterance end, then the error that hands it back.
        feeder = asyncio.create_task(_feed(live, pcm[sent : first_end + 2 * speech.SAMPLE_RATE * 2], step))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                events.append(json.loads(await live.recv()))
        feeder.cancel()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    kinds = [e["type"] for e in events if e["type"] != "partial"]
    assert kinds[-2:] == ["utterance_end", "error"] and events[-1]["code"] == ERR_DRAINING, events
    assert "(pause)" in events[-1]["message"], events[-1]
    heard = " ".join(e["text"] for e in events if e["type"] == "final")
    assert speech.word_error_rate(SENTENCES[0], heard) < 0.3, heard
    assert await audio.wait_exit(a, 25) == 0, audio.log(a)[-20:]
    assert "drained" in [line.get("msg") for line in audio.log(a)]


async def _feed(ws: Any, pcm: bytes, step: int) -> None:
    """Audio at real time, as a gateway forwards a microphone."""
    for i in range(0, len(pcm), step):
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(pcm[i : i + step])
        await asyncio.sleep(0.1)


async def test_a_stream_with_no_pause_is_handed_back_at_the_drains_bound(
    tmp_path: Path, talk: tuple[np.ndarray, list[tuple[float, float, str, str]]]
) -> None:
    """A speaker who never pauses (here: audio that stops mid-word, so no silence ever ends the
    utterance) is not waited for past the drain's bound: the stream is handed back with the reason
    ``deadline`` and the replica exits by itself, inside drain_seconds plus its shutdown."""
    samples, spans = talk
    pcm = speech.to_pcm16(samples)
    env = {"LT_AUDIO_DRAIN_SECONDS": "1.5", "LT_AUDIO_DRAIN_SESSION_SECONDS": "60"}
    audio = await asyncio.to_thread(AudioReplicas, tmp_path, 1, env)
    try:
        port = audio.ports[0]
        async with websockets.connect(f"ws://127.0.0.1:{port}/v1/audio") as live:
            await live.send(AudioStart(type="start", sessionId="talker").model_dump_json())
            assert json.loads(await live.recv())["type"] == "ready"
            await live.send(pcm[: int(spans[0][1] * speech.SAMPLE_RATE) * 2 - 16000])  # 0.5 s short
            events: list[dict[str, Any]] = []
            while not any(e["type"] == "partial" and e["text"] for e in events):
                events.append(json.loads(await live.recv()))
            signalled = time.monotonic()
            os.kill(audio.procs[port].pid, 15)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    events.append(json.loads(await live.recv()))
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        assert events[-1]["code"] == ERR_DRAINING and "(deadline)" in events[-1]["message"], events[-1]
        assert 1.0 <= time.monotonic() - signalled < 5.0
        assert await audio.wait_exit(port, 25) == 0, audio.log(port)[-20:]
        msgs = [line.get("msg") for line in audio.log(port)]
        assert "drain time limit reached; closing the streams left" in msgs, msgs
    finally:
        audio.stop()

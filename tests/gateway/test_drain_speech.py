"""Drain with real speech: espeak-ng sentences through the real audio stage (Whisper tiny.en) and
two gateway replicas sharing a real Redis; the replica the speaker is on is removed mid-sentence.

Whisper's finals depend on when it decodes, so two runs of the same audio need not cut it into the
same finals; what a listener must get is checked instead: the numbering runs on without a gap or a
repeat, every final comes once and in order on the session clock, the words are as right as
without the drain, each sentence is translated once, and no final comes more than 2 s later than
the latest did without the drain. The stand-in stages give the exact comparison: test_drain.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from livetranslate_testing import speech
from livetranslate_testing.replicas import (
    AudioReplicas,
    Fleet,
    ServiceProxy,
    TimedPrinter,
    assert_listener_unaffected,
    gateways_behind_a_service,
    speaker,
)

pytestmark = pytest.mark.slow

SENTENCES = speech.SENTENCES[:6]


@pytest.fixture(scope="module")
def talk() -> tuple[np.ndarray, list[tuple[float, float, str, str]]]:
    speech.require_tools()
    return speech.compose([speech.Utterance(t, "en-us", pause_after=1.0) for t in SENTENCES])


@pytest.fixture(scope="module")
def audio_stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The audio service as users run it, with the tiny.en weights the package index ships."""
    audio = AudioReplicas(tmp_path_factory.mktemp("audio"), 1)
    try:
        yield f"http://127.0.0.1:{audio.ports[0]}"
    finally:
        audio.stop()


@pytest.fixture
async def replicas(tmp_path: Path, audio_stage: str) -> AsyncIterator[tuple[Fleet, ServiceProxy]]:
    async with gateways_behind_a_service(tmp_path, audio_url=audio_stage) as both:
        yield both


async def test_real_speech_keeps_every_word_when_its_replica_is_drained_mid_sentence(
    replicas: tuple[Fleet, ServiceProxy], talk: tuple[np.ndarray, list[tuple[float, float, str, str]]]
) -> None:
    fleet, proxy = replicas
    samples, spans = talk
    script = " ".join(SENTENCES)

    plain = TimedPrinter()
    assert await speaker(proxy.url, samples, plain), plain.notes

    drained = TimedPrinter()
    task = speaker(proxy.url, samples, drained)
    third = spans[2]
    while drained.heard_until < third[0] + 0.5:  # the speaker is inside the third sentence
        assert not task.done(), drained.notes
        await asyncio.sleep(0.02)
    a = proxy.routed[-1]
    [b] = [p for p in fleet.ports if p != a]
    fleet.sigterm(a)
    assert await fleet.wait_exit(a, 30) == 0, fleet.log(a)[-20:]
    assert await asyncio.wait_for(task, 90), drained.notes

    assert drained.handovers == 1 and drained.reconnects == 0, drained.notes
    assert proxy.routed[-2:] == [a, b]
    [handed] = [line for line in fleet.log(a) if line.get("msg") == "session handed over"]
    assert handed["reason"] in ("pause", "bound"), handed
    assert_listener_unaffected(plain, drained, script)

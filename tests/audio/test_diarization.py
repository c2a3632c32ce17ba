"""Speaker labels through the service: a two-voice dialogue gets two stable labels."""

from __future__ import annotations

import numpy as np
import pytest

from livetranslate.workloads.audio.client import stream_audio
from livetranslate_testing import speech

from .conftest import Server

pytestmark = pytest.mark.slow


def _speaker_at(finals: list[dict[str, object]], t0: float, t1: float) -> set[str]:
    return {str(f["speaker"]) for f in finals if float(f["start"]) < t1 and float(f["end"]) > t0}  # type: ignore[arg-type]


async def test_two_voices_get_two_stable_labels(
    audio_server: Server, dialogue: tuple[np.ndarray, list[tuple[float, float, str, str]]]
) -> None:
    audio, spans = dialogue
    result = await stream_audio(
        audio_server.ws, audio, speed=2.0, session_id="dia", diarization=True, max_speakers=4
    )
    finals = result.finals
    assert result.events[-1]["type"] == "flushed", result.of("error")
    assert finals and all(f.get("speaker") for f in finals), finals
    labels = [_speaker_at(finals, s[0], s[1]) for s in spans]
    assert all(len(lab) == 1 for lab in labels), (labels, finals)  # one label per turn
    first, second, third, fourth = (next(iter(lab)) for lab in labels)
    assert first != second  # two voices, two labels
    assert first == third and second == fourth  # and each keeps its label
    assert speech.word_error_rate(" ".join(s[2] for s in spans), result.text) <= 0.3


async def test_without_diarization_finals_carry_no_speaker(
    audio_server: Server, dialogue: tuple[np.ndarray, list[tuple[float, float, str, str]]]
) -> None:
    audio, _ = dialogue
    result = await stream_audio(audio_server.ws, audio[: 16000 * 4], speed=4.0, session_id="nodia")
    assert result.finals and all("speaker" not in f for f in result.finals)


async def test_the_next_stream_of_a_session_keeps_its_speakers_labels(
    audio_server: Server, dialogue: tuple[np.ndarray, list[tuple[float, float, str, str]]]
) -> None:
    """A session's audio stream ends (a draining replica hands it over, a muted pause closes it)
    and the next one starts from the speakers the utterance ends reported: the second voice,
    speaking first on the new stream, is still S2 (a fresh stream would call it S1)."""
    audio, spans = dialogue

    def turn(i: int) -> np.ndarray:
        return audio[int((spans[i][0] - 0.3) * 16000) : int((spans[i][1] + 0.8) * 16000)]

    def turns(*order: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """The turns in this order, and each one's speech span in the stream's own time."""
        at, out = 0.0, []
        for i in order:
            length = len(turn(i)) / 16000
            out.append((at + 0.3, at + length - 0.8))
            at += length
        return np.concatenate([turn(i) for i in order]), out

    samples, heard = turns(0, 1)
    first = await stream_audio(audio_server.ws, samples, speed=2.0, session_id="carry", diarization=True)
    assert [_speaker_at(first.finals, *span) for span in heard] == [{"S1"}, {"S2"}], first.finals
    ends = first.of("utterance_end")
    known = ends[-1].get("speakers") if ends else None
    assert known and [v["label"] for v in known["voices"]] == ["S1", "S2"], ends
    samples, heard = turns(3, 2)  # the second voice speaks first now
    second = await stream_audio(
        audio_server.ws,
        samples,
        speed=2.0,
        session_id="carry",
        diarization=True,
        start_extra={"speakers": known},
    )
    assert [_speaker_at(second.finals, *span) for span in heard] == [{"S2"}, {"S1"}], second.finals

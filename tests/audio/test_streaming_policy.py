"""The streaming policy as pure logic: LocalAgreement, never-revised finals, session time, filters.

The hypotheses here are scripted (this tier tests the policy's rules, which must hold for any
decoder output); the tests against the real model are in test_service.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pydantic
import pytest

from livetranslate.config import Endpoints, ResolvedPipeline
from livetranslate.protocol import SpeakerMemory
from livetranslate.workloads.audio.diarization import SpeakerTracker
from livetranslate.workloads.audio.engines import Hypothesis, Word, is_glued
from livetranslate.workloads.audio.settings import AudioSettings, StreamingSettings, load_settings
from livetranslate.workloads.audio.streaming import (
    AudioBuffer,
    FinalOut,
    PartialOut,
    StreamEvent,
    StreamSession,
    UtteranceEndOut,
)
from livetranslate.workloads.audio.vad import VadStream
from livetranslate.workloads.audio.words import continues_word, is_hallucination, norm_word

SR = 16000


# A scripted word: text, start, end, and optionally True for a word glued to the one before.
_W = tuple[str, float, float] | tuple[str, float, float, bool]


def _hyp(*words: _W, probability: float = 0.9) -> Hypothesis:
    """A scripted pass; a fourth item True marks a word glued to the one before ("'clock")."""
    return Hypothesis(
        words=[Word(w[0], w[1], w[2], probability, glued=len(w) > 3 and bool(w[3])) for w in words],
        text=" ".join(w[0] for w in words),
        avg_logprob=-0.2,
    )


def _session(min_agree_seconds: float = 1.0, **extra: float) -> StreamSession:
    return StreamSession(
        StreamingSettings(step_seconds=0.5, min_agree_seconds=min_agree_seconds, **extra),
        VadStream(None),
        use_vad=False,
    )


def _feed(s: StreamSession, seconds: float) -> None:
    s.feed(np.zeros(int(seconds * SR), dtype=np.float32))


def test_buffer_keeps_time_addressing_across_trims() -> None:
    buf = AudioBuffer()
    buf.append(np.arange(SR * 5, dtype=np.float32))
    buf.trim_to(2.0)
    assert buf.start == pytest.approx(2.0)
    assert buf.slice(2.0, 2.0 + 1 / SR)[0] == 2 * SR
    buf.append(np.arange(SR * 10, dtype=np.float32))  # grows past the initial capacity
    assert buf.end == pytest.approx(15.0)
    assert buf.slice(5.0, 5.0 + 1 / SR)[0] == 0


def test_agreed_words_become_final_and_the_rest_stays_partial() -> None:
    s = _session()
    _feed(s, 1.0)
    req = s.next_request()
    assert req is not None and not req.final
    out = s.apply(req, _hyp(("The", 0.1, 0.3), ("meeting", 0.3, 0.7), ("will", 0.7, 0.9)))
    assert [type(o) for o in out] == [PartialOut]
    assert s.next_request() is None  # not enough new audio for the next step
    _feed(s, 0.6)
    req = s.next_request()
    assert req is not None
    out = s.apply(
        req, _hyp(("The", 0.1, 0.3), ("meeting", 0.3, 0.7), ("will", 0.7, 0.9), ("start", 0.9, 1.4))
    )
    finals = [o for o in out if isinstance(o, FinalOut)]
    partials = [o for o in out if isinstance(o, PartialOut)]
    assert [f.text for f in finals] == ["The meeting will"]
    assert finals[0].start == pytest.approx(0.1) and finals[0].end == pytest.approx(0.9)
    assert partials[-1].text == "start"


def test_passes_keep_their_step_when_audio_comes_in_tenths_of_a_second() -> None:
    # Stream time is a sum of 0.1 s chunks (12.4 - 12.1 == 0.29999999999999893): a 0.3 s step
    # compared without tolerance waited for a fourth chunk every other pass (0.4 s apart).
    s = StreamSession(StreamingSettings(step_seconds=0.3), VadStream(None), use_vad=False)
    pass_ends = []
    for _ in range(150):
        _feed(s, 0.1)
        req = s.next_request()
        if req is not None:
            pass_ends.append(req.end)
            s.apply(req, Hypothesis())
    gaps = np.diff(pass_ends)
    assert len(pass_ends) == 50 and gaps == pytest.approx(np.full(len(gaps), 0.3))


def test_speech_without_a_pause_is_finalised_at_the_buffer_cap() -> None:
    # Someone talks on without a pause: a final pass at every max_buffer_seconds of audio keeps
    # the buffer bounded, on the chunk that reaches the cap (sixty 0.1 s chunks sum to
    # 5.999999999999995 s, which an exact comparison let run one step past the cap).
    s = StreamSession(
        StreamingSettings(step_seconds=0.3, max_buffer_seconds=6.0, trim_seconds=25.0),
        VadStream(None),
        use_vad=False,
    )
    final_ends = []
    for _ in range(200):
        _feed(s, 0.1)
        req = s.next_request()
        if req is not None:
            if req.final:
                final_ends.append(req.end)
            s.apply(req, _hyp(("talking", req.end - req.start - 0.5, req.end - req.start - 0.2)))
        assert s.buffer.end - s.buffer.start <= 6.0 + 1e-6
    assert final_ends == pytest.approx([6.0, 12.0, 18.0])


def test_unsure_agreement_waits_until_the_utterance_is_long_enough() -> None:
    s = _session(min_agree_seconds=2.0, agree_min_probability=0.5)
    words = (("For", 0.1, 0.3), ("me", 0.3, 0.7), ("then", 0.7, 0.9))
    for _ in range(2):  # two agreeing but unsure passes over 1.0 s and 1.6 s: too early to commit
        _feed(s, 0.6 if s.received else 1.0)
        req = s.next_request()
        assert req is not None
        assert not [o for o in s.apply(req, _hyp(*words, probability=0.3)) if isinstance(o, FinalOut)]
    _feed(s, 0.6)
    req = s.next_request()
    assert req is not None
    out = s.apply(req, _hyp(*words, probability=0.3))
    assert [o.text for o in out if isinstance(o, FinalOut)] == ["For me then"]


def test_sure_agreement_commits_early_but_not_at_the_buffer_edge() -> None:
    s = _session(min_agree_seconds=2.0, agree_min_probability=0.5, agree_margin_seconds=0.3)
    _feed(s, 1.0)
    req = s.next_request()
    assert req is not None and not req.word_times  # nothing to agree with yet: no alignment pass
    s.apply(req, _hyp(("Please", 0.1, 0.4), ("open", 0.4, 0.7), ("the", 0.7, 0.9)))
    _feed(s, 0.5)
    req = s.next_request()
    assert req is not None and req.word_times
    out = s.apply(
        req, _hyp(("Please", 0.1, 0.4), ("open", 0.4, 0.7), ("the", 0.7, 0.9), ("quarter", 0.9, 1.35))
    )
    # "quarter" ends within 0.3 s of the audio's end: it may still be "quarterly"
    assert [o.text for o in out if isinstance(o, FinalOut)] == ["Please open the"]


def test_a_final_is_never_revised_by_later_hypotheses() -> None:
    s = _session()
    texts: list[str] = []
    script = [
        [("We", 0.0, 0.2), ("need", 0.2, 0.5)],
        [("We", 0.0, 0.2), ("need", 0.2, 0.5), ("to", 0.5, 0.6)],
        # the decoder changes its mind about committed words: they must not come back
        [("He", 0.0, 0.2), ("needs", 0.2, 0.5), ("to", 0.5, 0.6), ("finish", 0.6, 1.0)],
        [("We", 0.0, 0.2), ("need", 0.2, 0.5), ("to", 0.5, 0.6), ("finish", 0.6, 1.0), ("it.", 1.0, 1.3)],
    ]
    for words in script:
        _feed(s, 0.6)
        req = s.next_request()
        assert req is not None
        texts += [o.text for o in s.apply(req, _hyp(*words)) if isinstance(o, FinalOut)]
    _feed(s, 0.2)  # audio no pass has heard yet: the end of stream needs a final pass
    s.flush()
    req = s.next_request()
    assert req is not None and req.final
    texts += [o.text for o in s.apply(req, _hyp(*script[-1])) if isinstance(o, FinalOut)]
    assert " ".join(texts).split() == ["We", "need", "to", "finish", "it."]


def test_end_of_stream_finalises_what_was_heard() -> None:
    s = _session()
    _feed(s, 1.0)
    req = s.next_request()
    assert req is not None
    s.apply(req, _hyp(("Hello", 0.1, 0.5)))
    _feed(s, 0.3)
    s.flush()
    req = s.next_request()
    assert req is not None and req.final
    out = s.apply(req, _hyp(("Hello", 0.1, 0.5), ("there.", 0.5, 0.9)))
    assert [o.text for o in out if isinstance(o, FinalOut)] == ["Hello there."]
    # the final pass of the utterance ends it, after its final
    assert _kinds(out) == ["final", "end"] and out[-1] == UtteranceEndOut(1.3)
    assert s.flushed


def test_an_utterance_end_the_last_pass_heard_is_final_without_another_pass() -> None:
    s = _session()
    _feed(s, 1.0)
    req = s.next_request()
    assert req is not None
    s.apply(req, _hyp(("Hello", 0.1, 0.5), ("there.", 0.5, 0.9)))
    s.flush()  # nothing arrived after that pass
    assert s.next_request() is None
    ready = s.take_ready()
    assert [o.text for o, _ in ready if isinstance(o, FinalOut)] == ["Hello there."]
    assert all(src is req for _, src in ready)  # the audio the final came from (diarization)
    # then the utterance is over: said once, after its final, at the utterance's end
    assert isinstance(ready[0][0], FinalOut) and ready[-1][0] == UtteranceEndOut(1.0)
    assert [o for o, _ in ready if isinstance(o, UtteranceEndOut)] == [UtteranceEndOut(1.0)]
    assert s.flushed and s.take_ready() == []


class _ScriptedVad(VadStream):
    """Voiced in the given frame ranges, silent elsewhere."""

    def __init__(self, *voiced: range) -> None:
        super().__init__(None)
        self.voiced = voiced
        self.frames = 0

    def feed(self, samples: np.ndarray) -> np.ndarray:
        probs = super().feed(samples)
        index = range(self.frames, self.frames + len(probs))
        self.frames += len(probs)
        return np.array([any(i in r for r in self.voiced) for i in index], dtype=np.float32)


def test_an_utterance_end_on_a_chunk_boundary_needs_no_extra_wait_or_pass() -> None:
    # 25 VAD frames (0.8 s) plus the 0.2 s tail pad is 1.0000000000000004 s; ten 0.1 s chunks
    # are 0.9999999999999999 s. Compared exactly, the closing pass waited for the next chunk
    # and the utterance's end then asked for a final pass the closing one had made needless.
    s = StreamSession(StreamingSettings(step_seconds=0.3), _ScriptedVad(range(25)))
    words = (("Hello", 0.1, 0.5), ("there.", 0.5, 0.8))
    pass_ends, finals = [], []
    for _ in range(20):
        _feed(s, 0.1)
        req = s.next_request()
        if req is not None:
            assert not req.final
            pass_ends.append(req.end)
            finals += [o.text for o in s.apply(req, _hyp(*words)) if isinstance(o, FinalOut)]
        finals += [o.text for o, _ in s.take_ready() if isinstance(o, FinalOut)]
    assert pass_ends == pytest.approx([0.3, 0.6, 0.9, 1.0])
    assert finals == ["Hello there."]


def _run(
    s: StreamSession, chunks: int, script: Callable[[float, float], Hypothesis], flush: bool = True
) -> list[StreamEvent]:
    """Feed ``chunks`` of 0.1 s, run every pass the session asks for at once (``script`` gives the
    hypothesis of a pass over stream seconds [start, end)), and return the events in order."""
    events: list[StreamEvent] = []

    def drain() -> None:
        while (req := s.next_request()) is not None:
            events.extend(o for o, _ in s.take_ready())
            events.extend(s.apply(req, script(req.start, req.end)))
        events.extend(o for o, _ in s.take_ready())

    for _ in range(chunks):
        _feed(s, 0.1)
        drain()
    if flush:
        s.flush()
        drain()
    return events


def _texts(events: list[StreamEvent]) -> list[str]:
    return [o.text for o in events if isinstance(o, FinalOut)]


def _kinds(events: list[StreamEvent]) -> list[str]:
    """Finals and utterance ends in the order they were made."""
    return [
        "final" if isinstance(o, FinalOut) else "end"
        for o in events
        if isinstance(o, FinalOut | UtteranceEndOut)
    ]


def test_a_word_whisper_splits_in_two_is_never_split_across_finals() -> None:
    # faster-whisper gives "8 o'clock" as " o" + "'clock" and "can't" as " can" + "'t". The pass
    # at 1.6 s agrees with the one before up to "o": committing that would leave the next final
    # to start with "'clock"; the commit holds back to "8" instead.
    sentence: list[_W] = [
        ("The", 0.0, 0.2),
        ("train", 0.2, 0.4),
        ("leaves", 0.4, 0.6),
        ("at", 0.6, 0.7),
        ("8", 0.7, 0.8),
        ("o", 0.8, 0.9),
        ("'clock", 0.9, 1.1, True),
        ("and", 1.1, 1.2),
        ("we", 1.2, 1.4),
        ("can", 1.4, 1.6),
        ("'t", 1.6, 1.7, True),
        ("be", 1.7, 1.8),
        ("late.", 1.8, 2.0),
    ]
    s = _session()
    events: list[StreamEvent] = []
    for seconds, heard in ((1.0, 6), (0.6, 8), (0.6, 13)):  # each pass hears a little more
        _feed(s, seconds)
        req = s.next_request()
        assert req is not None
        events += s.apply(req, _hyp(*sentence[:heard]))
    _feed(s, 0.3)
    s.flush()
    req = s.next_request()
    assert req is not None and req.final
    events += s.apply(req, _hyp(*sentence))
    finals = _texts(events)
    assert finals == ["The train leaves at 8", "o'clock and", "we can't be late."]  # not "... at 8 o"
    # the partial shows the word whole as well
    assert "o'clock and" in [o.text for o in events if isinstance(o, PartialOut)]


def test_a_commit_never_ends_on_a_word_left_open() -> None:
    # "well-" waits for its rest ("known"): an agreement up to it holds back to the word before.
    script = [("We", 0.0, 0.2), ("fixed", 0.2, 0.5), ("the", 0.5, 0.6), ("well-", 0.6, 0.8)]
    s = _session()
    _feed(s, 1.2)
    req = s.next_request()
    assert req is not None
    s.apply(req, _hyp(*script))
    _feed(s, 0.6)
    req = s.next_request()
    assert req is not None
    out = s.apply(req, _hyp(*script, ("known", 0.8, 1.1, True), ("bugs.", 1.1, 1.3)))
    assert _texts(out) == ["We fixed the"]
    assert [o.text for o in out if isinstance(o, PartialOut)] == ["well-known bugs."]


def test_numbers_and_compounds_read_without_inner_spaces() -> None:
    s = _session()
    _feed(s, 1.5)
    s.flush()
    req = s.next_request()
    assert req is not None and req.final
    out = s.apply(
        req,
        _hyp(
            ("Inflation", 0.0, 0.4),
            ("rose", 0.4, 0.6),
            ("to", 0.6, 0.7),
            ("12", 0.7, 0.9),
            (".5", 0.9, 1.1, True),
            ("percent,", 1.1, 1.3),
            ("a", 1.3, 1.35),
            ("twenty", 1.35, 1.4),
            ("-", 1.4, 1.42, True),
        ),
    )
    # the dangling hyphen of a cut-off word goes at the end of an utterance: nothing follows it
    assert _texts(out) == ["Inflation rose to 12.5 percent, a twenty"]


def test_a_full_buffer_keeps_a_word_left_open_for_the_next_buffer() -> None:
    # The cap forces a final at 3.0 s while "twenty-" waits for "first": that word stays in the
    # buffer, so the next pass hears "twenty-first" whole; the forced final ends no utterance.
    s = StreamSession(
        StreamingSettings(step_seconds=0.5, max_buffer_seconds=3.0, trim_seconds=25.0),
        VadStream(None),
        use_vad=False,
    )
    spoken: list[_W] = [
        ("In", 0.0, 0.3),
        ("the", 0.3, 0.6),
        ("new", 0.6, 1.0),
        ("century", 1.0, 1.6),
        ("we", 1.6, 2.0),
        ("saw", 2.0, 2.5),
        ("twenty-", 2.55, 2.95),
        ("first", 2.95, 3.4, True),
        ("steps.", 3.4, 3.9),
    ]

    def heard(start: float, end: float) -> Hypothesis:
        # A pass hears the words that start in its audio; the first word of a pass is glued to
        # nothing (a buffer cut at "twenty-" would hear " first" as a word of its own).
        words: list[_W] = []
        for text, t0, t1, *glued in spoken:
            if start - 0.01 <= t0 < end:
                words.append((text, t0 - start, min(t1, end) - start, any(glued) and bool(words)))
        return _hyp(*words)

    events = _run(s, 40, heard)
    assert " ".join(_texts(events)) == "In the new century we saw twenty-first steps."
    assert _kinds(events)[-1] == "end" and _kinds(events).count("end") == 1  # only at the flush


def test_each_utterance_ends_once_after_its_final() -> None:
    # Two utterances with a pause between them: each gets exactly one utterance end, after its
    # final and at its own end, whichever way it was finalised.
    s = StreamSession(StreamingSettings(step_seconds=0.3), _ScriptedVad(range(25), range(70, 95)))
    events = _run(s, 45, lambda start, end: _hyp(("Hello", 0.1, 0.4), ("there.", 0.4, 0.6)))
    assert _kinds(events) == ["final", "end", "final", "end"]
    ends = [o.end for o in events if isinstance(o, UtteranceEndOut)]
    finals = [o for o in events if isinstance(o, FinalOut)]
    assert finals[0].end <= ends[0] < finals[1].start <= finals[1].end <= ends[1]


def test_an_utterance_with_nothing_left_to_hear_still_ends() -> None:
    # Speech stops right where the buffer cap forced its final: no pass and no final are left,
    # but the utterance end is still said (once); the forced final itself ends nothing.
    s = StreamSession(
        StreamingSettings(step_seconds=0.5, max_buffer_seconds=3.0, trim_seconds=25.0),
        VadStream(None),
        use_vad=False,
    )
    events = _run(s, 30, lambda start, end: _hyp(("Talking", 0.1, end - start - 0.4)), flush=False)
    assert _kinds(events) == ["final"]
    s.flush()
    assert s.next_request() is None
    ready = s.take_ready()
    assert ready == [(UtteranceEndOut(3.0), None)]
    assert s.flushed and s.take_ready() == []


def test_glued_is_read_from_the_space_the_decoder_wrote() -> None:
    assert is_glued("'clock", 1) and is_glued(".5", 3) and is_glued("-known", 2)
    assert not is_glued(" o", 1) and not is_glued(" -", 1)
    assert not is_glued("Hello", 0)  # nothing before it in the pass
    # written without spaces: every word is glued (joined without a space) but may end a commit
    assert is_glued("的", 1) and not continues_word(Word("的", 0, 1, glued=True))
    assert continues_word(Word("'clock", 0, 1, glued=True))


def test_times_are_session_seconds_with_the_offset() -> None:
    s = StreamSession(StreamingSettings(), VadStream(None), time_offset=100.0, use_vad=False)
    _feed(s, 1.0)
    s.flush()
    req = s.next_request()
    assert req is not None
    out = s.apply(req, _hyp(("Hi.", 0.2, 0.6)))
    final = next(o for o in out if isinstance(o, FinalOut))
    assert (final.start, final.end) == (pytest.approx(100.2), pytest.approx(100.6))


def test_silence_with_vad_asks_for_no_decoding() -> None:
    from livetranslate.workloads.audio.vad import SileroVad

    s = StreamSession(StreamingSettings(), SileroVad().stream())
    for _ in range(50):
        _feed(s, 0.1)
        assert s.next_request() is None
    assert s.buffer.end - s.buffer.start <= 0.5  # idle audio is not kept


@pytest.mark.parametrize("text", ["Thank you.", "Subtitles by the Amara.org community", "you"])
def test_known_hallucinations_on_unsure_decodes_are_dropped(text: str) -> None:
    hyp = Hypothesis(words=[Word(text, 0, 1)], text=text, no_speech_prob=0.5, avg_logprob=-0.9)
    assert is_hallucination(hyp, voiced_seconds=0.4)


def test_real_thank_you_in_a_sentence_is_kept() -> None:
    text = "Thank you all for coming to the town hall this evening."
    hyp = Hypothesis(
        words=[Word(w, 0, 1) for w in text.split()], text=text, no_speech_prob=0.01, avg_logprob=-0.2
    )
    assert not is_hallucination(hyp, voiced_seconds=3.0)


def test_speaker_labels_are_stable_and_bounded() -> None:
    rng = np.random.default_rng(0)
    a, b, c = (v / np.linalg.norm(v) for v in rng.normal(size=(3, 64)))
    tracker = SpeakerTracker(max_speakers=2, threshold=0.75)
    assert [tracker.assign(x) for x in (a, b, a, b)] == ["S1", "S2", "S1", "S2"]
    assert tracker.assign(c) in {"S1", "S2"}  # max 2 speakers: the nearest one
    assert tracker.speakers == 2


def test_a_voice_first_heard_in_this_utterance_is_refined_not_split() -> None:
    rng = np.random.default_rng(1)
    a, b, noise = (v / np.linalg.norm(v) for v in rng.normal(size=(3, 64)))
    short_b = 0.6 * b + 0.8 * noise  # an embedding of too little speech: cosine 0.6 to b
    short_b /= np.linalg.norm(short_b)
    tracker = SpeakerTracker(max_speakers=4, threshold=0.75)
    assert tracker.assign(a, 3.0, utterance=0.0) == "S1"
    # A new voice opens S2 from a short clip; more of it in the same utterance matches neither
    # centroid well, yet is the same provisional voice, and the longer clip now dominates S2.
    assert tracker.assign(short_b, 0.7, utterance=4.0) == "S2"
    assert tracker.assign(b, 2.5, utterance=4.0) == "S2"
    assert tracker.speakers == 2
    assert tracker.assign(b, 2.0, utterance=8.0) == "S2"  # later turns find the refined centroid
    # Outside the utterance that opened it a voice is no longer provisional: a third voice opens S3.
    assert tracker.assign(noise, 2.0, utterance=12.0) == "S3"
    # Without an utterance every call stands alone, as before.
    assert tracker.assign(-a, 1.0) == "S4"


def test_a_short_clip_needs_less_similarity_to_match_a_known_voice() -> None:
    rng = np.random.default_rng(2)
    a, other = (v / np.linalg.norm(v) for v in rng.normal(size=(2, 64)))
    other -= np.dot(other, a) * a
    other /= np.linalg.norm(other)
    near_a = 0.72 * a + np.sqrt(1 - 0.72**2) * other  # cosine 0.72 to a, under the 0.75 threshold
    tracker = SpeakerTracker(max_speakers=4, threshold=0.75)
    assert tracker.assign(a, 3.0, utterance=0.0) == "S1"
    # 0.8 s of speech (a returning voice's first final) is a noisy embedding: it still matches.
    assert tracker.assign(near_a, 0.8, utterance=4.0) == "S1"
    # The same similarity from 1.5 s or more of speech is another voice.
    fresh = SpeakerTracker(max_speakers=4, threshold=0.75)
    assert fresh.assign(a, 3.0, utterance=0.0) == "S1"
    assert fresh.assign(near_a, 2.0, utterance=4.0) == "S2"
    assert tracker.match_threshold(0.6) == pytest.approx(0.69)
    assert tracker.match_threshold(1.5) == tracker.match_threshold(5.0) == pytest.approx(0.75)


def test_a_new_stream_seeded_with_the_sessions_speakers_keeps_their_labels() -> None:
    """A session's next audio stream (a handover, a resume, a reopen after a pause) starts from
    the speakers the last one knew: the voice the last stream called S2 is S2 again, even when
    it speaks first; a fresh tracker would call it S1."""
    rng = np.random.default_rng(3)
    a, b = (v / np.linalg.norm(v) for v in rng.normal(size=(2, 256)))
    first = SpeakerTracker(max_speakers=4, threshold=0.75)
    assert first.export() is None  # nothing heard yet: nothing to carry
    assert [first.assign(x, 2.0, utterance=t) for t, x in enumerate((a, b, a))] == ["S1", "S2", "S1"]
    memory = first.export()
    assert memory is not None and [v.label for v in memory.voices] == ["S1", "S2"]
    # over the wire and back: what the gateway keeps and sends with the next start
    memory = SpeakerMemory.model_validate_json(memory.model_dump_json())
    assert len(memory.model_dump_json()) < 1600  # two 256-float voices in float16, base64
    second = SpeakerTracker(max_speakers=4, threshold=0.75)
    assert second.seed(memory) is None
    assert [second.assign(x, 1.0, utterance=10 + t) for t, x in enumerate((b, a))] == ["S2", "S1"]
    fresh = SpeakerTracker(max_speakers=4, threshold=0.75)
    assert fresh.assign(b, 1.0) == "S1"
    # at most max_speakers of them are taken
    small = SpeakerTracker(max_speakers=1, threshold=0.75)
    assert small.seed(memory) is None and small.speakers == 1


def test_speakers_that_cannot_be_compared_are_not_taken() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(size=64)
    source = SpeakerTracker(max_speakers=4, threshold=0.75)
    source.assign(a / np.linalg.norm(a), 2.0)
    memory = source.export()
    assert memory is not None
    other = SpeakerTracker(max_speakers=4, threshold=0.75, embedder="pyannote")
    assert "resemblyzer" in (other.seed(memory) or "") and other.speakers == 0
    voice = memory.voices[0]
    for bad, why in (
        (voice.model_copy(update={"label": "S2"}), "labelled S2"),
        (voice.model_copy(update={"embedding": "AAAA"}), "finite float16"),  # all zeros
        (voice.model_copy(update={"embedding": "AAA="}), "finite float16"),  # odd bytes
        (voice.model_copy(update={"embedding": "AAD8"}), "finite float16"),  # float16 -inf
    ):
        tracker = SpeakerTracker(max_speakers=4, threshold=0.75)
        assert why in (tracker.seed(memory.model_copy(update={"voices": [bad]})) or ""), why
        assert tracker.speakers == 0
    # seeded voices of another size than this embedder's: numbered afresh, not a crash
    tracker = SpeakerTracker(max_speakers=4, threshold=0.75)
    assert tracker.seed(memory) is None
    b = rng.normal(size=256)
    assert tracker.assign(b / np.linalg.norm(b), 2.0) == "S1" and tracker.speakers == 1
    with pytest.raises(pydantic.ValidationError):
        SpeakerMemory.model_validate(
            {"embedder": "resemblyzer", "voices": [{**voice.model_dump(), "embedding": "$$$$"}]}
        )


def test_settings_come_from_the_pipeline_unless_the_environment_overrides(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolved = ResolvedPipeline.model_validate(
        {
            "name": "town-hall",
            "spec": {
                "sourceLanguage": "en",
                "targetLanguages": ["es"],
                "audio": {"model": "/models/small", "diarization": {"enabled": True, "maxSpeakers": 3}},
            },
            "placement": {"audioDevice": "gpu"},
            "endpoints": Endpoints(audio="http://a", translation="http://t", gateway="http://g").model_dump(),
        }
    )
    s = load_settings(resolved)
    assert (s.pipeline, s.model, s.device, s.diarization, s.max_speakers) == (
        "town-hall",
        "/models/small",
        "gpu",
        True,
        3,
    )
    monkeypatch.setenv("LT_AUDIO_DEVICE", "cpu")
    monkeypatch.setenv("LT_AUDIO_STREAMING__STEP_SECONDS", "0.25")
    s = load_settings(resolved)
    assert s.device == "cpu" and s.streaming.step_seconds == 0.25 and s.model == "/models/small"
    assert json.loads(AudioSettings().model_dump_json())["limits"]["max_sessions"] >= 1


@pytest.mark.parametrize(
    "words",
    [
        ("Встреча", "начнётся", "через", "пять", "минут."),  # Russian
        ("Η", "συνάντηση", "θα", "ξεκινήσει", "σύντομα."),  # Greek
        ("会", "议", "五", "分", "钟", "后", "开", "始。"),  # Chinese, as Whisper splits it: by character
        ("नमस्ते", "आप", "कैसे", "हैं", "दोस्त"),  # Hindi: vowel signs are marks
    ],
    ids=["ru", "el", "zh", "hi"],
)
def test_words_of_every_script_agree_and_commit_before_the_pause(words: tuple[str, ...]) -> None:
    s = _session()
    step = 1.4 / len(words)
    unspaced = words[0] == "会"
    timed = [(w, 0.1 + i * step, 0.1 + (i + 1) * step, unspaced and i > 0) for i, w in enumerate(words)]
    _feed(s, 1.0)
    req = s.next_request()
    assert req is not None
    s.apply(req, _hyp(*timed[:-1]))
    _feed(s, 0.6)
    req = s.next_request()
    assert req is not None
    finals = [o for o in s.apply(req, _hyp(*timed)) if isinstance(o, FinalOut)]
    # the words both passes heard are final while the speaker is still talking
    assert finals and finals[0].text.startswith(words[0]), finals
    assert all(norm_word(w) for w in words)
    if unspaced:  # read as written: no spaces between the characters
        assert " " not in finals[0].text and finals[0].text.startswith("会议五分"), finals


def test_a_final_never_runs_past_the_end_of_a_sentence() -> None:
    s = _session()
    words: list[_W] = [
        ("for", 0.1, 0.3),
        ("joining", 0.3, 0.6),
        ("us.", 0.6, 0.8),
        ("Let's", 0.9, 1.1),
        ("ask", 1.1, 1.3),
        ("Dr.", 1.3, 1.5),
        ("Smith", 1.5, 1.7),
        ("about", 1.7, 1.9),
        ("12", 1.9, 2.0),
        (".5", 2.0, 2.1, True),
        ("percent.", 2.1, 2.4),
        ("Then", 2.5, 2.7),
    ]
    _feed(s, 3.0)
    req = s.next_request()
    assert req is not None
    s.apply(req, _hyp(*words))
    _feed(s, 0.6)
    req = s.next_request()
    assert req is not None
    finals = [o.text for o in s.apply(req, _hyp(*words, ("we", 2.7, 2.9))) if isinstance(o, FinalOut)]
    # one final per sentence; an abbreviation and a decimal's glued rest do not end one
    assert finals[:2] == ["for joining us.", "Let's ask Dr. Smith about 12.5 percent."], finals


def test_the_final_pass_of_an_utterance_splits_its_sentences_too() -> None:
    s = _session()
    _feed(s, 1.0)
    s.flush()
    events: list[StreamEvent] = []
    while (req := s.next_request()) is not None:
        events += s.apply(
            req, _hyp(("Thank", 0.1, 0.3), ("you.", 0.3, 0.5), ("Next", 0.6, 0.8), ("item", 0.8, 0.95))
        )
    events += [o for o, _ in s.take_ready()]
    assert [o.text for o in events if isinstance(o, FinalOut)] == ["Thank you.", "Next item"]
    assert isinstance(events[-1], UtteranceEndOut)


def test_a_glued_rest_of_a_word_already_final_is_dropped() -> None:
    s = _session()
    first: list[_W] = [("a", 0.1, 0.2), ("series", 0.2, 0.5), ("of", 0.5, 0.6), ("posts", 0.6, 1.0)]
    _feed(s, 1.6)
    req = s.next_request()
    assert req is not None
    s.apply(req, _hyp(*first))
    _feed(s, 0.6)
    req = s.next_request()
    assert req is not None
    finals = [o.text for o in s.apply(req, _hyp(*first, ("social", 1.3, 1.9))) if isinstance(o, FinalOut)]
    assert finals == ["a series of posts"], finals
    # later passes re-segment the committed word: "post" + "-son", then "social media"
    rest: list[_W] = [
        ("post", 0.6, 0.95),
        ("-son", 0.95, 1.25, True),
        ("social", 1.3, 1.6),
        ("media", 1.6, 2.0),
        ("and", 2.0, 2.2),
        ("events", 2.2, 2.6),
    ]
    out = []
    for n in (4, 6):
        _feed(s, 0.6)
        req = s.next_request()
        assert req is not None
        out += s.apply(req, _hyp(*first[:3], *rest[:n]))
    texts = [o.text for o in out if isinstance(o, (FinalOut, PartialOut)) and o.text]
    assert texts and all(not t.startswith("-") for t in texts), texts


def test_a_whole_sentence_the_decoder_repeats_after_its_final_is_dropped() -> None:
    """Whisper loops on a long utterance's trailing audio: it writes the sentence just committed
    again, timed after it. A listener read "which could happen as early as this summer." three
    times in a benchmark session; a repeat as long as the committed tail is dropped, not only the
    last few words."""
    s = _session()
    said = "which could happen as early as this summer."
    first: list[_W] = [(w, 0.1 + 0.3 * i, 0.35 + 0.3 * i) for i, w in enumerate(said.split())]
    finals: list[str] = []
    for extra in ([], [("So", 2.6, 2.8)]):
        _feed(s, 1.5)
        req = s.next_request()
        assert req is not None
        finals += [o.text for o in s.apply(req, _hyp(*first, *extra)) if isinstance(o, FinalOut)]
    assert finals == [said], finals
    # The next passes hear the same words again, placed in the audio after them.
    again: list[_W] = [(w, 2.6 + 0.2 * i, 2.8 + 0.2 * i) for i, w in enumerate(said.split())]
    for _ in range(3):
        _feed(s, 0.6)
        req = s.next_request()
        assert req is not None
        finals += [o.text for o in s.apply(req, _hyp(*first, *again)) if isinstance(o, FinalOut)]
    assert finals == [said], finals

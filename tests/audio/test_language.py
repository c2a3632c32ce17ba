"""Language detection per utterance, with the session's language moving only on evidence
(workloads/audio/language.py), and how a streaming session uses it: pure, no model."""

from __future__ import annotations

import numpy as np

from livetranslate.workloads.audio.engines import Hypothesis, Word
from livetranslate.workloads.audio.language import LanguageTracker
from livetranslate.workloads.audio.settings import StreamingSettings
from livetranslate.workloads.audio.streaming import FinalOut, StreamSession, UtteranceEndOut
from livetranslate.workloads.audio.vad import VadStream


def test_a_fixed_language_is_never_detected() -> None:
    t = LanguageTracker(fixed="es")
    assert not t.detecting and t.for_pass() == "es"
    t.observe("en", 0.99, 3.0)
    assert t.current() == "es" and t.end_utterance() == "es"


def test_two_agreeing_passes_or_one_sure_long_one_confirm_an_utterance() -> None:
    t = LanguageTracker()
    assert t.detecting and t.for_pass() is None  # the engine detects
    t.observe("es", 0.6, 0.6)
    assert t.confirmed is None and t.for_pass() is None
    t.observe("es", 0.7, 1.0)
    assert t.confirmed == "es" and t.for_pass() == "es"  # the rest of the utterance decodes in es
    t.observe("pt", 0.99, 2.0)  # no later pass flips it
    assert t.current() == "es" and t.end_utterance() == "es"
    assert t.for_pass() is None  # the next utterance is detected afresh
    t.observe("en", 0.95, 1.2)
    assert t.confirmed is None, "one sure pass confirms only the session's language"
    t.observe("en", 0.9, 1.6)
    assert t.confirmed == "en"  # two that agree confirm another
    t.end_utterance()
    t.observe("es", 0.95, 1.2)
    assert t.confirmed == "es"  # the session's language (es) is confirmed by one sure pass
    # a sure detection of too little voice does not confirm alone
    t2 = LanguageTracker()
    t2.observe("en", 0.95, 0.5)
    assert t2.confirmed is None and t2.current() == "en"


def test_the_session_language_switches_only_after_two_utterances() -> None:
    t = LanguageTracker()
    for lang in ("en", "es", "en", "es", "es"):
        t.observe(lang, 0.9, 1.5)
        t.observe(lang, 0.9, 2.0)
        assert t.end_utterance() == lang  # each confirmed utterance keeps its own language
        if lang == "en":
            assert t.session == "en"
    assert t.session == "es"  # two Spanish utterances in a row moved it


def test_an_unsure_short_utterance_takes_the_session_language() -> None:
    t = LanguageTracker()
    t.observe("en", 0.9, 2.0)
    t.end_utterance()
    t.observe("nn", 0.3, 0.4)  # "OK": a guess no better than noise
    assert t.current() == "en" and t.end_utterance() == "en"
    assert LanguageTracker().current() is None  # nothing known: no language claimed


def test_a_new_stream_starts_from_the_language_the_session_settled_on() -> None:
    """A session's next stream (handed over, resumed, reopened after a pause) is seeded with the
    spoken language the last one settled on: an unsure first utterance takes it, and one sure
    utterance in another language does not move it (the hysteresis holds across streams)."""
    t = LanguageTracker(session="es")
    t.observe("en", 0.45, 0.4)  # a short unsure "OK"
    assert t.current() == "es" and t.end_utterance() == "es"
    t.observe("en", 0.9, 1.5)
    t.observe("en", 0.9, 2.0)
    assert t.end_utterance() == "en" and t.session == "es"
    fresh = LanguageTracker()
    fresh.observe("en", 0.45, 0.4)
    assert fresh.end_utterance() == "en", "without the seed the unsure guess takes the session"


def test_an_utterance_end_reports_the_session_language_of_an_auto_session() -> None:
    seeded = StreamSession(
        StreamingSettings(step_seconds=0.5),
        VadStream(None),
        use_vad=False,
        language="auto",
        spoken_language="es",
    )
    fixed = StreamSession(StreamingSettings(step_seconds=0.5), VadStream(None), use_vad=False, language="en")
    for s, expected in ((seeded, "es"), (fixed, None)):
        s.feed(np.zeros(8000, dtype=np.float32))
        s.flush()
        ends = []
        for _ in range(4):
            req = s.next_request()
            if req is None:
                break
            ends += [o for o in s.apply(req, _hyp([], "en", 0.3)) if isinstance(o, UtteranceEndOut)]
        assert [e.language for e in ends] == [expected]


def _hyp(words: list[tuple[str, float, float]], language: str, probability: float) -> Hypothesis:
    return Hypothesis(
        words=[Word(w, a, b, 0.9) for w, a, b in words],
        text=" ".join(w for w, _, _ in words),
        avg_logprob=-0.2,
        language=language,
        language_probability=probability,
    )


def test_an_auto_session_detects_then_decodes_in_the_confirmed_language() -> None:
    s = StreamSession(
        StreamingSettings(step_seconds=0.5, min_agree_seconds=1.0),
        VadStream(None),
        use_vad=False,
        language="auto",
    )
    words = [("Buenos", 0.1, 0.5), ("días", 0.5, 0.9), ("a", 0.9, 1.0), ("todos", 1.0, 1.4)]
    s.feed(np.zeros(16000, dtype=np.float32))
    req = s.next_request()
    assert req is not None and req.language is None
    s.apply(req, _hyp(words[:3], "es", 0.7))
    s.feed(np.zeros(9600, dtype=np.float32))
    req = s.next_request()
    assert req is not None and req.language is None
    out = s.apply(req, _hyp(words, "es", 0.8))
    finals = [o for o in out if isinstance(o, FinalOut)]
    assert finals and all(f.language == "es" for f in finals)
    s.feed(np.zeros(8000, dtype=np.float32))
    req = s.next_request()
    assert req is not None and req.language == "es"  # confirmed: no more detection passes
    # a session in a known language sends it on every pass, and its finals name none
    fixed = StreamSession(StreamingSettings(), VadStream(None), use_vad=False, language="en")
    fixed.feed(np.zeros(16000, dtype=np.float32))
    req = fixed.next_request()
    assert req is not None and req.language == "en"


def test_an_auto_session_commits_no_word_before_its_language_is_confirmed() -> None:
    """Two passes agree on the words but not on the language: nothing is final yet (a final is
    never revised, and it would carry a guess); once confirmed, the words go in that language."""
    s = StreamSession(
        StreamingSettings(step_seconds=0.5, min_agree_seconds=0.5),
        VadStream(None),
        use_vad=False,
        language="auto",
    )
    words = [("Of", 0.1, 0.3), ("course", 0.3, 0.8), ("our", 0.9, 1.1), ("total", 1.1, 1.5)]
    s.feed(np.zeros(16000, dtype=np.float32))
    out: list[list[FinalOut]] = []
    for seconds, language in ((1.0, "es"), (1.6, "en"), (2.1, "en")):
        req = s.next_request()
        assert req is not None and req.language is None
        finals = [o for o in s.apply(req, _hyp(words, language, 0.6)) if isinstance(o, FinalOut)]
        out.append(finals)
        s.feed(np.zeros(8000, dtype=np.float32))
    assert out[0] == out[1] == [], "the words agree, the language does not yet"
    assert out[2] and all(f.language == "en" for f in out[2])

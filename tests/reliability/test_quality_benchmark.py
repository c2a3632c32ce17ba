"""The quality benchmark measures what a listener reads: its corpus holds what the issue asks for,
its audio puts sentence ends where it says, and its figures come out right from known event
streams (a translation is matched to the sentence whose end it covers, split words are found,
latencies start when the audio was sent)."""

from __future__ import annotations

import shutil
from typing import Any

import numpy as np
import pytest

from tests.reliability.conftest import load_benchmark

bench_quality = load_benchmark("bench_quality")

Spoken = bench_quality.Spoken


def spoken(*spans: tuple[float, float, int]) -> list[Any]:
    return [
        Spoken(i, utt, f"sentence {i}.", f"frase {i}.", "en-us", a, b) for i, (a, b, utt) in enumerate(spans)
    ]


def final(sid: int, text: str, start: float, end: float, latency: float = 0.3) -> dict[str, Any]:
    return {
        "type": "transcript.final",
        "segmentId": sid,
        "text": text,
        "start": start,
        "end": end,
        "latency": latency,
    }


def translation(sentence: int, ids: list[int], text: str, partial: bool = False) -> dict[str, Any]:
    ev = {
        "type": "translation.partial" if partial else "translation",
        "sentenceId": sentence,
        "segmentIds": ids,
        "language": "es",
        "text": text,
    }
    if not partial:
        ev |= {"segmentId": ids[-1], "quality": "ok"}
    return ev


def log_of(events: list[tuple[float, dict[str, Any]]], seconds: float = 8.0) -> Any:
    """A session whose chunk k (100 ms) left 20 ms after its last sample was spoken."""
    log = bench_quality.SessionLog(sent_at=[round((k + 1) * 0.1 + 0.02, 4) for k in range(int(seconds * 10))])
    log.arrivals = [bench_quality.Arrival(t, min(t, seconds), ev) for t, ev in events]
    return log


# Two utterances: "Good morning, everyone. Let's get started." and "Is it eight o'clock now?"
SPOKEN = spoken((0.5, 2.0, 0), (2.2, 4.0, 0), (5.0, 7.0, 1))
FINALS = [
    final(0, "Good morning,", 0.5, 1.2),
    final(1, "everyone.", 1.2, 2.0),
    final(2, "Let's get", 2.2, 3.0),
    final(3, "started.", 3.0, 3.95),
    final(4, "Is it eight o", 5.0, 6.0),
    final(5, "'clock now?", 6.0, 7.0),
]


def test_sentence_mode_figures_from_a_known_event_stream() -> None:
    events = [
        (1.6, FINALS[0]),
        (1.9, translation(0, [0], "Buenos días,", partial=True)),
        (2.5, FINALS[1]),
        (2.8, translation(0, [0, 1], "Buenos días a todos.")),
        (3.5, FINALS[2]),
        (4.5, FINALS[3]),
        (4.9, translation(1, [2, 3], "Empecemos.")),
        (6.5, FINALS[4]),
        (7.6, FINALS[5]),
        (8.0, translation(2, [4, 5], "¿Son las ocho?")),
        (8.1, {"type": "session.ended"}),
    ]
    fig = bench_quality.session_figures(log_of(events), SPOKEN)
    assert fig.finals == 6 and fig.translation_events == 3 and fig.partial_events == 1
    assert fig.translations == ["Buenos días a todos.", "Empecemos.", "¿Son las ocho?"]
    # Sentence ends 2.0, 4.0, 7.0 s: their audio left at 2.02, 4.02, 7.02 s.
    assert fig.sentence_latency == pytest.approx([0.78, 0.88, 0.98])
    # Each final's end -> the first translation (the partial, for final 0) naming it.
    assert fig.first_latency == pytest.approx([1.9 - 1.22, 0.78, 4.9 - 3.02, 0.88, 8.0 - 6.02, 0.98])
    assert fig.caption_latency == pytest.approx([0.3] * 6)
    assert fig.split_words == 1 and "'clock" in fig.split_examples[0]
    assert fig.unmatched_sentences == 0 and fig.finals_untranslated == 0
    assert [m["translation"] for m in fig.matches] == fig.translations


def test_one_translation_per_final_is_matched_to_the_final_that_ends_the_sentence() -> None:
    events: list[tuple[float, dict[str, Any]]] = []
    for k, f in enumerate(FINALS):
        arrived = f["end"] + 0.5
        events += [(arrived, f), (arrived + 0.2, translation(k, [k], f"t{k}"))]
    fig = bench_quality.session_figures(log_of(events), SPOKEN)
    assert fig.translation_events == 6
    # Sentence 0 ends at 2.0 s: final 1 (1.2-2.0) covers it, final 2 (2.2-) is only within tolerance.
    assert fig.sentence_latency == pytest.approx([2.7 - 2.02, 4.65 - 4.02, 7.7 - 7.02])
    row = bench_quality.aggregate([fig], SPOKEN, calls=6.0)
    assert row["translations_per_sentence"] == 2.0 and row["calls_per_sentence"] == 2.0
    assert row["finals_per_sentence"] == 2.0


def test_matching_prefers_the_span_holding_the_end_then_the_one_ending_there() -> None:
    sentences = spoken((0.0, 2.0, 0), (3.0, 9.0, 1), (10.0, 20.0, 2))
    spans = [(1.0, 2.0, 5.0), (2.0, 3.0, 4.0), (3.4, 8.6, 9.5)]
    # 2.0 s lies in both of the first two spans: the one ending there wins over an earlier arrival;
    # 9.0 s is 0.4 s past the third span (tolerance 0.5 s); nothing covers 20 s.
    assert bench_quality.match_sentences(sentences, spans) == [0, 2, None]


def test_a_sentence_whose_words_were_lost_is_counted_not_timed() -> None:
    events = [(2.5, FINALS[0]), (2.6, FINALS[1]), (3.0, translation(0, [0, 1], "Buenos días a todos."))]
    fig = bench_quality.session_figures(log_of(events), SPOKEN)
    assert len(fig.sentence_latency) == 1 and fig.unmatched_sentences == 2
    assert [m["latency"] is None for m in fig.matches] == [False, True, True]


def test_split_words_need_a_word_continued_across_the_boundary() -> None:
    vocabulary = {"about", "the", "meeting", "o'clock", "eight", "well", "known", "twelve", "thousand"}
    finals = [
        "It is a",
        "bout the meeting",
        "at eight o",
        "'clock",
        "well-",
        "known",
        "2.",
        "5 percent",
        "twelve",
        ",000 people",
        "at 9.",
        "We start.",
    ]
    assert bench_quality.split_boundaries(finals, vocabulary) == [0, 2, 4, 6, 8]
    assert bench_quality.split_boundaries(["the meeting.", "The meeting"], vocabulary) == []


def test_words_spell_what_whisper_writes_as_symbols() -> None:
    assert bench_quality.words("It cost $12,000 on the 21st, 60% at 9:30, 8 o'clock on the 3rd.") == [
        "it",
        "cost",
        "twelve",
        "thousand",
        "dollars",
        "on",
        "the",
        "twenty",
        "first",
        "sixty",
        "percent",
        "at",
        "nine",
        "thirty",
        "eight",
        "o'clock",
        "on",
        "the",
        "third",
    ]
    assert bench_quality.wer("Twelve thousand dollars.", "$12,000") == 0.0
    assert bench_quality.wer("one two three four", "one two four") == pytest.approx(0.25)
    assert bench_quality.wer("one two", "") == 1.0


def test_document_scores_ignore_segmentation() -> None:
    refs = ["Buenos días a todos.", "Empecemos ya."]
    assert bench_quality.doc_scores(["Buenos días", "a todos. Empecemos ya."], refs) == {
        "chrf": 100.0,
        "bleu": 100.0,
    }
    worse = bench_quality.doc_scores(["Buenos días a todo el mundo."], refs)
    assert 0 < worse["chrf"] < 100 and worse["bleu"] < 100
    assert bench_quality.split_sentences("Hi there. Is it? Yes! ok") == ["Hi there.", "Is it?", "Yes!", "ok"]


def test_translation_calls_are_read_from_the_gateways_counter_when_it_has_one() -> None:
    text = (
        "# HELP livetranslate_translation_requests_total Calls\n"
        "# TYPE livetranslate_translation_requests_total counter\n"
        'livetranslate_translation_requests_total{pipeline="p",kind="final"} 7.0\n'
        'livetranslate_translation_requests_total{pipeline="p",kind="partial"} 5.0\n'
        'livetranslate_translation_requests_created{pipeline="p",kind="final"} 1.7e9\n'
    )
    assert bench_quality.counter_value(text) == ("livetranslate_translation_requests", 12.0)
    # What the gateway exposes: calls per sentence as a histogram, whose sum is the calls made.
    hist = (
        "# TYPE livetranslate_sentence_translation_calls histogram\n"
        'livetranslate_sentence_translation_calls_bucket{pipeline="p",le="1.0"} 2.0\n'
        'livetranslate_sentence_translation_calls_bucket{pipeline="p",le="+Inf"} 3.0\n'
        'livetranslate_sentence_translation_calls_count{pipeline="p"} 3.0\n'
        'livetranslate_sentence_translation_calls_sum{pipeline="p"} 5.0\n'
    )
    assert bench_quality.counter_value(hist + text) == ("livetranslate_sentence_translation_calls", 5.0)
    assert bench_quality.counter_value("# nothing\n") is None


def test_the_corpus_holds_what_the_benchmark_promises() -> None:
    utterances = bench_quality.load_corpus()
    pairs = [p for u in utterances for p in u["sentences"]]
    english = " ".join(en for en, _ in pairs)
    assert len(pairs) >= 40 and all(en.strip() and es.strip() for en, es in pairs)
    assert len({u["voice"] for u in utterances}) >= 6
    assert sum(len(u["sentences"]) >= 2 for u in utterances) >= 5
    lengths = sorted(len(en.split()) for en, _ in pairs)
    assert lengths[-3] > 25 and lengths[-1] > 40  # past the gateway's default 40-word bound
    assert "o'clock" in english and "percent" in english and "?" in english and "March" in english
    subset = bench_quality.load_corpus(limit=3)
    assert [len(u["sentences"]) for u in subset] == [2, 1]


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="needs espeak-ng and sox (scripts/bootstrap.sh)",
)
def test_the_audio_puts_sentence_ends_where_the_figures_say() -> None:
    session = bench_quality.build_session(bench_quality.load_corpus(limit=3))
    first, second, third = session.sentences
    assert first.utterance == second.utterance != third.utterance
    # Inside an utterance: INTRA_PAUSE_S of silence, then the next sentence's voice.
    assert second.start - first.end == pytest.approx(bench_quality.INTRA_PAUSE_S, abs=0.002)
    gap = session.samples[int((first.end + 0.011) * 16000) : int((second.start - 0.001) * 16000)]
    assert np.abs(gap).max() == 0.0
    voiced = session.samples[int((first.end - 0.05) * 16000) : int(first.end * 16000)]
    assert np.abs(voiced).max() > bench_quality.VOICED
    assert third.start > second.end + 0.5  # the utterance's pause
    loud = bench_quality.noisy(session)
    again = bench_quality.noisy(session)
    assert np.array_equal(loud.samples, again.samples)
    noise = loud.samples - session.samples
    snr = 10 * np.log10(
        np.mean(session.samples.astype(np.float64) ** 2) / np.mean(noise.astype(np.float64) ** 2)
    )
    assert snr == pytest.approx(bench_quality.SNR_DB, abs=0.5)


def test_unknown_modes_are_refused() -> None:
    with pytest.raises(SystemExit) as exc:
        bench_quality.main(["--modes", "word"])
    assert exc.value.code == 2

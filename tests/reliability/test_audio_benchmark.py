"""The audio benchmark's latency alignment pairs each shown word with the right spoken word, also
when the benchmark speaks its sentences more than once (``--repeat``)."""

from __future__ import annotations

import pytest

from tests.reliability.conftest import load_benchmark

bench_audio = load_benchmark("bench_audio")

SENTENCE = ["the", "meeting", "will", "start", "in", "five", "minutes"]
PERIOD = 62.5  # one repeat of the benchmark's sentences, in seconds


def spoken(repeats: int) -> list[tuple[str, float]]:
    return [(w, r * PERIOD + 0.5 * (k + 1)) for r in range(repeats) for k, w in enumerate(SENTENCE)]


def test_repeated_sentences_align_within_their_own_repeat() -> None:
    ref = spoken(2)
    # Both repeats shown 0.6 s after their words end, the first with its last two words misheard.
    # A text-only alignment takes the longest common run first (the whole second repeat, matched
    # to the first repeat's words) and reports 63.1 s for each of its words.
    shown = [(w, t + 0.6) for w, t in ref]
    shown[5], shown[6] = ("fine", shown[5][1]), ("minute", shown[6][1])
    lat = bench_audio.latencies(shown, ref)
    assert len(lat) == len(ref) - 2
    assert lat == pytest.approx([0.6] * len(lat))


def test_a_word_shown_too_late_or_too_early_is_not_matched() -> None:
    ref = [("hello", 1.0), ("world", 2.0)]
    late = [("hello", 1.0 + bench_audio.MAX_LAG_SECONDS + 1), ("world", 2.5)]
    assert bench_audio.latencies(late, ref) == pytest.approx([0.5])
    early = [("hello", 1.0 - bench_audio.MAX_LEAD_SECONDS - 1), ("world", 2.5)]
    assert bench_audio.latencies(early, ref) == pytest.approx([0.5])


def test_substituted_and_inserted_words_leave_the_rest_aligned() -> None:
    ref = spoken(1)
    shown = [
        ("the", 1.0),
        ("meeting", 1.5),
        ("well", 2.0),
        ("uh", 2.1),
        ("start", 2.5),
        ("in", 3.0),
        ("five", 3.5),
        ("minutes", 4.0),
    ]
    pairs = bench_audio.align_in_time(ref, shown)
    assert [ref[i][0] for i, _ in pairs] == ["the", "meeting", "start", "in", "five", "minutes"]
    assert [shown[j][0] for _, j in pairs] == ["the", "meeting", "start", "in", "five", "minutes"]


def test_a_decoder_looping_on_its_own_output_shows_as_a_long_repeat() -> None:
    # What the peer printed once it collapsed: words, then only dots.
    assert bench_audio.longest_repeat("to the airport leave every 20 minutes. . . . . . . . . .") == 9
    assert bench_audio.longest_repeat("that that is is it") == 2
    assert bench_audio.longest_repeat("") == 0


def test_the_peers_simulation_needs_the_peer() -> None:
    with pytest.raises(SystemExit) as exc:
        bench_audio.main(["--peer-unaware", "1"])
    assert exc.value.code == 2


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_seeded_replay_repeats_its_figures() -> None:
    # Real speech through the real engine and streaming policy, replayed twice with one seed.
    speech = bench_audio.speech
    audio, spans = speech.compose(
        [
            speech.Utterance(t, voice)
            for t, voice in zip(speech.SENTENCES[:2], bench_audio.VOICES, strict=False)
        ]
    )
    reference = " ".join(s[2] for s in spans)
    ref_words = bench_audio.reference_word_ends(audio)
    first, again = (bench_audio.latency_breakdown(audio, reference, ref_words, {}, seed=7) for _ in range(2))
    for key in ("wer", "words", "passes", "final_p50", "final_p95", "decode_seconds_p50"):
        assert first[key] == again[key], key
    assert first["seed"] == 7 and first["words"] >= 10 and first["wer"] < 0.3

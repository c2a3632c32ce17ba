"""The languages benchmark measures what it says: its Spanish corpus is long enough to claim a
WER, its parallel corpus covers every pair it measures, the switching session alternates as
declared, and detection is scored per utterance from known event streams."""

from __future__ import annotations

import json
from typing import Any

from livetranslate.capabilities import packaged_pairs
from livetranslate_testing.speech import normalize
from tests.reliability.conftest import load_benchmark

bench_languages = load_benchmark("bench_languages")
quality = bench_languages.quality


def test_the_spanish_corpus_holds_enough_speech_to_claim_a_wer() -> None:
    doc = json.loads(bench_languages.SPANISH.read_text(encoding="utf-8"))
    sentences = [s for u in doc["utterances"] for s in u["sentences"]]
    assert sum(len(normalize(es)) for es, _ in sentences) >= 500
    assert {u["voice"] for u in doc["utterances"]} == {"es", "es-419"}
    assert all(es.strip() and en.strip() and es != en for es, en in sentences)
    # Unicode words survive normalisation: an accent is part of the word
    assert normalize("¿Cuándo podremos mudarnos?") == ["cuándo", "podremos", "mudarnos"]


def test_every_measured_pair_has_text_on_both_sides_and_the_route_it_is_labelled_with() -> None:
    doc = json.loads(bench_languages.PARALLEL.read_text(encoding="utf-8"))
    assert len(doc["sentences"]) >= 20
    pairs = packaged_pairs()
    for source, target in bench_languages.PAIRS:
        assert all(s[source].strip() and s[target].strip() for s in doc["sentences"])
        assert pairs.route(source, target) is not None, (source, target)
    vias = {(s, t): pairs.route(s, t).via for s, t in bench_languages.PAIRS}  # type: ignore[union-attr]
    assert vias[("en", "es")] is None and vias[("en", "fr")] == "es" and vias[("it", "en")] == "es"


def test_the_switching_session_alternates_in_the_declared_runs() -> None:
    utterances = bench_languages.auto_utterances(None)
    languages = [u["language"] for u in utterances]
    runs: list[int] = []
    for i, lang in enumerate(languages):
        if i and lang == languages[i - 1]:
            runs[-1] += 1
        else:
            runs.append(1)
    assert runs == list(bench_languages.AUTO_RUNS) and languages[0] == "en"
    # every sentence carries what was spoken, its English and its Spanish
    for u in utterances:
        for spoken, en, es in u["sentences"]:
            assert spoken == (en if u["language"] == "en" else es)


class _Session:
    """Three utterances: 0-2 s, 3-5 s, 6-8 s."""

    def __init__(self) -> None:
        self.sentences = [quality.Spoken(i, i, "x", "y", "es", 3.0 * i, 3.0 * i + 2.0) for i in range(3)]

    def utterances(self) -> list[list[Any]]:
        return [[s] for s in self.sentences]


def _final(text: str, start: float, end: float, language: str) -> Any:
    return quality.Arrival(
        end + 0.5,
        end,
        {
            "type": "transcript.final",
            "segmentId": int(start),
            "text": text,
            "start": start,
            "end": end,
            "language": language,
        },
    )


def test_detection_counts_an_utterance_right_only_when_every_final_in_it_is() -> None:
    log = quality.SessionLog()
    log.arrivals = [
        _final("good morning", 0.0, 1.0, "en"),
        _final("everyone", 1.0, 2.1, "en"),
        _final("buenos", 3.0, 4.0, "es"),
        _final("días", 4.0, 5.0, "en"),  # half wrong
        _final("hola", 6.1, 7.9, "es"),
    ]
    got = bench_languages.detection([log], _Session(), ["en", "es", "es"])
    assert (got["utterances"], got["right"], got["finals"], got["finals_right"]) == (3, 2, 5, 4)
    assert got["share"] == round(2 / 3, 4) and got["wrong_examples"] == ["es: es:buenos | en:días"]
    # an utterance nobody transcribed is not right either
    log.arrivals = log.arrivals[:2]
    assert bench_languages.detection([log], _Session(), ["en", "es", "es"])["right"] == 1

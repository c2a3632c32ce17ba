"""What a listener reads: transcript and translation quality of live sessions through
`livetranslate up`, next to what the same models do offline.

A meeting of 51 English sentences (``benchmarks/corpus/meeting.json``: numbers, names, questions,
idioms, pronouns that need the previous sentence, a time, percentages, dates; three sentences
longer than 25 words, one past the gateway's 40-word bound; ten utterances hold two sentences) is
spoken by seven espeak-ng voices, about 215 s with pauses between utterances, and once more with
white noise at 10 dB SNR (seeded). The Spanish references were written by hand.

Live runs start `livetranslate up` as a user does (``bench_e2e.start_up``), once per translation
unit the gateway offers (``LT_GATEWAY_TRANSLATION_UNIT``: ``sentence``, the default, and
``final``, the previous behaviour of one translation per final), and stream N identical sessions
at once in real time over the gateway's WebSocket (100 ms chunks, sent as a microphone would: a
chunk leaves once its last sample has been spoken). Every event is recorded with its arrival time
and the audio sent by then. Per run:

* WER of the session's finals, joined, against the English (jiwer, on ``speech.normalize``d words;
  "$12,000" and "21st" are spelt out first, as the speakers said them);
* document chrF and BLEU (sacrebleu) of the final ``translation`` events joined in sentenceId
  order against the references joined in corpus order: segmentation does not matter;
* translations per spoken sentence (``translation`` events / corpus sentences) and translation
  calls per sentence from the gateway's ``/metrics`` where it counts them;
* sentence -> translation: from the moment the audio holding a sentence's last voiced sample was
  sent to the arrival of the ``translation`` covering that sentence's end. A translation covers
  the time span of its finals (``segmentIds`` -> the finals' start .. end). A corpus sentence
  whose speech ends at ``e`` matches, among the final translations whose span widened by
  ``MATCH_TOLERANCE_S`` either side contains ``e``, the one nearest: distance from ``e`` to the
  span (0 inside it), then distance from ``e`` to the span's end (where two spans touch, the one
  that ends there), then the earliest arrival. A sentence that no translation covers (its words
  lost) is counted as unmatched, not timed. Two sentences one translation covers share it: the
  earlier one waited longer, and that is what its listener saw;
* end of speech of each final (the audio at its ``end`` sent) -> the first ``translation.partial``
  or ``translation`` whose ``segmentIds`` include it;
* the gateway-measured final-caption latency (``latency`` on ``transcript.final``);
* words split across finals (``split_boundaries``).

The offline ceiling: the same tiny.en engine class and settings the audio service loads,
transcribing each utterance whole; that transcript cut into sentences at sentence-final
punctuation (never across utterances) and each sentence sent alone to the translation service
(``livetranslate serve translate``, Apertium, as ``bench_translate`` starts it). The MT-only
ceiling: the same service on the correct English sentences. Nothing here fails on a figure; the
targets are printed beside them.

    PYTHONSAFEPATH=1 .venv/bin/python benchmarks/bench_quality.py --both --sessions 8
    PYTHONSAFEPATH=1 .venv/bin/python benchmarks/bench_quality.py --sentences 6 --clean --sessions 1 \\
        --out /tmp/quality-smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import os
import re
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from livetranslate_testing.figures import (
    loadavg,
    provenance,
    provenance_line,
    rounded_percentile,
    write_result,
)
from livetranslate_testing.speech import SAMPLE_RATE, add_noise, normalize, speak, to_pcm16

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parent / "corpus" / "meeting.json"
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "quality"
TARGET = "es"
SNR_DB = 10.0
NOISE_SEED = 21
CHUNK_SECONDS = 0.1
MATCH_TOLERANCE_S = 0.5
INTRA_PAUSE_S = 0.2  # silence between two sentences of one utterance
VOICED = 0.01  # |sample| above which a 10 ms frame counts as speech (espeak-ng peaks near 0.5)
UNIT_ENV = "LT_GATEWAY_TRANSLATION_UNIT"
# The gateway's count of its calls to the translation service, first found wins: a histogram of
# calls per sentence (its _sum is the calls), or a plain counter.
CALL_METRICS = ("livetranslate_sentence_translation_calls", "livetranslate_translation_requests")

TARGETS = {
    "chrf_gap": "live chrF within 2.5 points of the offline ceiling",
    "translations_per_sentence": "<= 1.3 translations per sentence",
    "sentence_p95": "p95 sentence -> translation <= 1.5 s",
    "first_p95": "p95 end of speech -> first translation <= 1.2 s",
    "caption_p95": "final caption p95 about 1.0 s",
    "split_words": "0 words split across finals",
}


def _sibling(name: str) -> ModuleType:
    """Another benchmark script (benchmarks/ is not a package), for its helpers."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------ the corpus


@dataclass(frozen=True)
class Spoken:
    """A corpus sentence as spoken: session seconds of its speech, and its reference texts."""

    index: int
    utterance: int
    text: str  # as spoken
    reference: str  # its translation, written by hand
    voice: str
    start: float
    end: float  # the last voiced 10 ms frame


@dataclass(frozen=True)
class Session:
    """What every session streams: the audio, and where each sentence and utterance lies in it."""

    samples: np.ndarray
    sentences: list[Spoken]

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    def utterances(self) -> list[list[Spoken]]:
        groups: dict[int, list[Spoken]] = {}
        for s in self.sentences:
            groups.setdefault(s.utterance, []).append(s)
        return [groups[k] for k in sorted(groups)]


def load_corpus(path: Path = CORPUS, limit: int | None = None) -> list[dict[str, Any]]:
    """The corpus's utterances, cut after ``limit`` sentences (a smoke run's subset)."""
    utterances: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))["utterances"]
    out: list[dict[str, Any]] = []
    left = limit if limit is not None else math.inf
    for u in utterances:
        if left <= 0:
            break
        sentences = u["sentences"][: int(min(left, len(u["sentences"])))]
        out.append({**u, "sentences": sentences})
        left -= len(sentences)
    return out


def speech_end(samples: np.ndarray, start: float, end: float) -> float:
    """The end of the last voiced 10 ms frame within [start, end) (espeak-ng trails silence)."""
    frame = SAMPLE_RATE // 100
    a, b = int(start * SAMPLE_RATE), int(end * SAMPLE_RATE)
    loud = np.flatnonzero(np.abs(samples[a:b]) > VOICED)
    if not len(loud):
        return end
    return (a + (int(loud[-1]) // frame + 1) * frame) / SAMPLE_RATE


def build_session(utterances: list[dict[str, Any]], lead_silence: float = 0.5) -> Session:
    """The utterances one after another, each followed by its ``pause``. Within an utterance the
    sentences are joined by ``INTRA_PAUSE_S`` of silence, shorter than the audio service's 0.35 s
    utterance silence, so sentence ends inside an utterance happen; espeak-ng alone leaves 0.34 s
    after a period, too close to that bound to say which side a VAD puts it. (``speech.compose``
    joins whole utterances with their pauses; here each sentence is spoken alone and its trailing
    silence cut, so where every sentence ends is known to the sample.)"""
    parts = [np.zeros(int(lead_silence * SAMPLE_RATE), dtype=np.float32)]
    at = len(parts[0])
    sentences: list[Spoken] = []
    for k, u in enumerate(utterances):
        pairs = u["sentences"]
        for j, (text, reference) in enumerate(pairs):
            audio = speak(text, u["voice"])
            voiced = round(speech_end(audio, 0.0, len(audio) / SAMPLE_RATE) * SAMPLE_RATE)
            sentences.append(
                Spoken(
                    len(sentences),
                    k,
                    text,
                    reference,
                    u["voice"],
                    round(at / SAMPLE_RATE, 3),
                    round((at + voiced) / SAMPLE_RATE, 3),
                )
            )
            if j < len(pairs) - 1:
                audio = np.concatenate(
                    [audio[:voiced], np.zeros(int(INTRA_PAUSE_S * SAMPLE_RATE), np.float32)]
                )
            parts.append(audio)
            at += len(audio)
        parts.append(np.zeros(int(float(u["pause"]) * SAMPLE_RATE), dtype=np.float32))
        at += len(parts[-1])
    return Session(np.concatenate(parts), sentences)


def noisy(session: Session, snr_db: float = SNR_DB, seed: int = NOISE_SEED) -> Session:
    return Session(add_noise(session.samples, snr_db, seed), session.sentences)


# --------------------------------------------------------------------------------- text figures

_ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def _ordinal(number: int) -> str:
    words = normalize(str(number))
    last = words[-1]
    words[-1] = _ORDINALS.get(last) or (last[:-1] + "ieth" if last.endswith("y") else last + "th")
    return " ".join(words)


def words(text: str) -> list[str]:
    """``speech.normalize`` after spelling what Whisper writes as symbols the way it was said:
    "$12,000" -> 12 thousand dollars, "21st" -> twenty first."""
    text = re.sub(r"\$(\d[\d,]*)", r"\1 dollars", text)
    text = re.sub(r"\b(\d+),000\b", r"\1 thousand", text)
    text = re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", lambda m: _ordinal(int(m.group(1))), text)
    return normalize(text)


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    ref, hyp = " ".join(words(reference)), " ".join(words(hypothesis))
    if not ref:
        return 0.0 if not hyp else 1.0
    if not hyp:
        return 1.0
    return float(jiwer.wer(ref, hyp))


def doc_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Document chrF and BLEU: all hypotheses joined against all references joined, so neither
    where a system cut its sentences nor how many it made changes the score."""
    import sacrebleu

    hyp = " ".join(" ".join(h.split()) for h in hypotheses if h.strip())
    ref = " ".join(" ".join(r.split()) for r in references)
    return {
        "chrf": round(sacrebleu.corpus_chrf([hyp], [[ref]]).score, 2),
        "bleu": round(sacrebleu.corpus_bleu([hyp], [[ref]]).score, 2),
    }


_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_SPLIT.split(text.strip()) if s]


_GLUED_START = re.compile(r"^\s*(?:['’]\w|-\w|[.,]\d|%)")


def _token(text: str, last: bool) -> str:
    parts = text.split()
    if not parts:
        return ""
    return re.sub(r"[^a-z0-9']", "", (parts[-1] if last else parts[0]).lower())


def split_boundaries(finals: Sequence[str], vocabulary: set[str]) -> list[int]:
    """Indexes i where final i and final i+1 share a word. A boundary counts when the next final
    starts glued to the previous one ("'clock", "-based", ".5", ",000", "%"), when this one ends
    open on a word the next continues ("well-" + "known", "2." + "5"), or when the two words at
    the boundary written together make a word of the reference that one of them alone is not
    ("o" + "clock"-style pieces, "a" + "bout")."""
    out: list[int] = []
    for i in range(len(finals) - 1):
        this, nxt = finals[i].strip(), finals[i + 1].strip()
        if not this or not nxt:
            continue
        glued = bool(_GLUED_START.match(nxt))
        open_end = bool(re.search(r"\w-$", this) and re.match(r"\w", nxt)) or bool(
            re.search(r"\d[.,]$", this) and re.match(r"\d", nxt)
        )
        a, b = _token(this, last=True), _token(nxt, last=False)
        joined = bool(
            a
            and b
            and len(a + b) >= 4
            and (a + b) in vocabulary
            and (a not in vocabulary or b not in vocabulary)
        )
        if glued or open_end or joined:
            out.append(i)
    return out


# ---------------------------------------------------------------------------- a session's events


@dataclass
class Arrival:
    t: float  # seconds since the first chunk's due time (monotonic clock)
    audio_sent: float  # seconds of session audio sent by then
    event: dict[str, Any]


@dataclass
class SessionLog:
    arrivals: list[Arrival] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)  # per chunk, seconds since t0, once sent
    chunk_seconds: float = CHUNK_SECONDS
    error: str | None = None

    def sent_time(self, audio_t: float) -> float:
        """When the chunk holding the audio just before session second ``audio_t`` was sent."""
        if not self.sent_at:
            return math.nan
        k = max(0, math.ceil(round(audio_t / self.chunk_seconds, 6)) - 1)
        return self.sent_at[min(k, len(self.sent_at) - 1)]


def _ids(ev: dict[str, Any]) -> list[int]:
    ids = ev.get("segmentIds")
    if isinstance(ids, list) and ids:
        return [int(x) for x in ids]
    return [int(ev["segmentId"])] if ev.get("segmentId") is not None else []


@dataclass
class Figures:
    """One session's raw figures; ``aggregate`` pools several."""

    finals_text: str = ""
    finals: int = 0
    translations: list[str] = field(default_factory=list)  # final translations, sentenceId order
    translation_events: int = 0
    partial_events: int = 0
    quality: dict[str, int] = field(default_factory=dict)
    sentence_latency: list[float] = field(default_factory=list)
    first_latency: list[float] = field(default_factory=list)
    caption_latency: list[float] = field(default_factory=list)
    unmatched_sentences: int = 0
    finals_untranslated: int = 0
    split_words: int = 0
    split_examples: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Per corpus sentence: the translation matched to it and how long after its speech it came.
    matches: list[dict[str, Any]] = field(default_factory=list)


def match_sentences(
    spoken: Sequence[Spoken], spans: Sequence[tuple[float, float, float]]
) -> list[int | None]:
    """For each spoken sentence, the index into ``spans`` ((start, end, arrival) of each final
    translation) of the translation that covers its end, or None (see the module docstring)."""
    out: list[int | None] = []
    for s in spoken:
        best: tuple[float, float, float, int] | None = None
        for j, (a, b, arrived) in enumerate(spans):
            if not a - MATCH_TOLERANCE_S <= s.end <= b + MATCH_TOLERANCE_S:
                continue
            outside = max(a - s.end, s.end - b, 0.0)
            key = (round(outside, 6), round(abs(b - s.end), 6), arrived, j)
            if best is None or key < best:
                best = key
        out.append(best[3] if best is not None else None)
    return out


def session_figures(log: SessionLog, spoken: Sequence[Spoken], target: str = TARGET) -> Figures:
    fig = Figures()
    if log.error:
        fig.errors.append(log.error)
    finals: dict[int, dict[str, Any]] = {}
    final_translations: dict[int, tuple[Arrival, dict[str, Any]]] = {}
    first_seen: dict[int, float] = {}  # segmentId -> arrival of the first translation covering it
    vocabulary = {w for s in spoken for w in words(s.text)}
    for arr in log.arrivals:
        ev = arr.event
        kind = ev.get("type")
        if kind == "transcript.final":
            sid = int(ev["segmentId"])
            if sid in finals:
                continue
            finals[sid] = ev
            if isinstance(ev.get("latency"), int | float):
                fig.caption_latency.append(float(ev["latency"]))
        elif kind in ("translation", "translation.partial") and ev.get("language", target) == target:
            for sid in _ids(ev):
                first_seen.setdefault(sid, arr.t)
            if kind == "translation.partial":
                fig.partial_events += 1
                continue
            fig.translation_events += 1
            q = str(ev.get("quality") or "none")
            fig.quality[q] = fig.quality.get(q, 0) + 1
            key = int(ev["sentenceId"]) if ev.get("sentenceId") is not None else int(ev.get("segmentId", -1))
            final_translations.setdefault(key, (arr, ev))
        elif kind == "error":
            fig.errors.append(f"{ev.get('code')}: {ev.get('message')}")
    ordered = [finals[k] for k in sorted(finals)]
    fig.finals = len(ordered)
    fig.finals_text = " ".join(str(f.get("text", "")) for f in ordered).strip()
    fig.translations = [str(final_translations[k][1].get("text", "")) for k in sorted(final_translations)]
    # Sentence -> its translation.
    spans: list[tuple[float, float, float]] = []
    texts_of: list[str] = []
    for k in sorted(final_translations):
        arr, ev = final_translations[k]
        covered = [finals[i] for i in _ids(ev) if i in finals]
        if covered:
            spans.append(
                (min(float(f["start"]) for f in covered), max(float(f["end"]) for f in covered), arr.t)
            )
            texts_of.append(str(ev.get("text", "")))
    for s, j in zip(spoken, match_sentences(spoken, spans), strict=True):
        if j is None:
            fig.unmatched_sentences += 1
            fig.matches.append({"sentence": s.index, "end": s.end, "latency": None, "translation": None})
        else:
            fig.sentence_latency.append(spans[j][2] - log.sent_time(s.end))
            fig.matches.append(
                {
                    "sentence": s.index,
                    "end": s.end,
                    "latency": round(fig.sentence_latency[-1], 3),
                    "translation": texts_of[j],
                }
            )
    # End of each final's speech -> first translation of it.
    for f in ordered:
        sid = int(f["segmentId"])
        if sid in first_seen:
            fig.first_latency.append(first_seen[sid] - log.sent_time(float(f["end"])))
        elif str(f.get("text", "")).strip():
            fig.finals_untranslated += 1
    texts = [str(f.get("text", "")) for f in ordered]
    for i in split_boundaries(texts, vocabulary):
        fig.split_words += 1
        if len(fig.split_examples) < 5:
            fig.split_examples.append(f"{texts[i][-24:]!r} | {texts[i + 1][:24]!r}")
    return fig


def aggregate(
    figs: Sequence[Figures], spoken: Sequence[Spoken], calls: float | None = None
) -> dict[str, Any]:
    """Pooled latencies, mean (and range) of the per-session scores, counts per spoken sentence."""
    n = max(len(figs), 1)
    sentences = len(spoken) * n
    said = " ".join(s.text for s in spoken)
    references = [s.reference for s in spoken]
    wers = [wer(said, f.finals_text) for f in figs]
    scores = [doc_scores(f.translations, references) for f in figs]

    def pooled(name: str) -> list[float]:
        return [x for f in figs for x in getattr(f, name)]

    def spread(values: list[float], digits: int) -> dict[str, float | None]:
        if not values:
            return {"mean": None, "min": None, "max": None}
        return {
            "mean": round(sum(values) / len(values), digits),
            "min": round(min(values), digits),
            "max": round(max(values), digits),
        }

    quality: Counter[str] = Counter()
    for f in figs:
        quality.update(f.quality)
    sent, first, cap = pooled("sentence_latency"), pooled("first_latency"), pooled("caption_latency")
    return {
        "sessions": len(figs),
        "wer": spread(wers, 4),
        "chrf": spread([s["chrf"] for s in scores], 2),
        "bleu": spread([s["bleu"] for s in scores], 2),
        "finals_per_sentence": round(sum(f.finals for f in figs) / sentences, 3),
        "translations_per_sentence": round(sum(f.translation_events for f in figs) / sentences, 3),
        "partials_per_sentence": round(sum(f.partial_events for f in figs) / sentences, 3),
        "calls_per_sentence": round(calls / sentences, 3) if calls is not None else None,
        "sentence_latency_s": {
            "p50": rounded_percentile(sent, 0.5),
            "p95": rounded_percentile(sent, 0.95),
            "n": len(sent),
        },
        "first_translation_latency_s": {
            "p50": rounded_percentile(first, 0.5),
            "p95": rounded_percentile(first, 0.95),
            "n": len(first),
        },
        "caption_latency_s": {
            "p50": rounded_percentile(cap, 0.5),
            "p95": rounded_percentile(cap, 0.95),
            "n": len(cap),
        },
        "unmatched_sentences": sum(f.unmatched_sentences for f in figs),
        "finals_untranslated": sum(f.finals_untranslated for f in figs),
        "split_words": sum(f.split_words for f in figs),
        "split_examples": [e for f in figs for e in f.split_examples][:5],
        "quality": dict(quality),
        "errors": [e for f in figs for e in f.errors][:10],
    }


# ------------------------------------------------------------------------------------ live runs


async def stream_session(
    url: str,
    pcm: bytes,
    delay: float,
    source: str = "en",
    targets: Sequence[str] = (TARGET,),
    grace_s: float = 120.0,
) -> SessionLog:
    """One session in real time; every event recorded as it arrives."""
    from websockets.asyncio.client import connect

    log = SessionLog()
    await asyncio.sleep(delay)
    step = int(SAMPLE_RATE * CHUNK_SECONDS) * 2
    audio_s = len(pcm) / (2 * SAMPLE_RATE)
    sent_bytes = 0
    try:
        async with connect(url, max_size=4 * 1024 * 1024, open_timeout=30) as ws:
            await ws.send(
                json.dumps(
                    {
                        "type": "session.start",
                        "sampleRate": SAMPLE_RATE,
                        "encoding": "pcm_s16le",
                        "channels": 1,
                        "sourceLanguage": source,
                        "targetLanguages": list(targets),
                    }
                )
            )
            started = json.loads(await ws.recv())
            if started.get("type") != "session.started":
                log.error = f"no session.started: {started}"
                return log
            t0 = time.monotonic()

            async def send() -> None:
                nonlocal sent_bytes
                for k, i in enumerate(range(0, len(pcm), step)):
                    # Like a microphone: a chunk leaves once its last sample has been spoken.
                    await asyncio.sleep(max(0.0, t0 + (k + 1) * CHUNK_SECONDS - time.monotonic()))
                    await ws.send(pcm[i : i + step])
                    sent_bytes += len(pcm[i : i + step])
                    log.sent_at.append(time.monotonic() - t0)
                await ws.send(json.dumps({"type": "session.end"}))

            sender = asyncio.create_task(send())
            try:
                async with asyncio.timeout(audio_s + grace_s):
                    async for raw in ws:
                        now = time.monotonic() - t0
                        ev = json.loads(raw)
                        log.arrivals.append(Arrival(round(now, 4), sent_bytes / (2 * SAMPLE_RATE), ev))
                        if ev.get("type") == "session.ended":
                            break
                    else:
                        log.error = "connection closed before session.ended"
            except TimeoutError:
                log.error = f"no session.ended within {grace_s:g} s of the audio's end"
            finally:
                if not sender.done():
                    sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
    except (OSError, ValueError) as exc:  # websockets' errors derive from these
        log.error = f"{type(exc).__name__}: {exc}"
    return log


async def run_sessions(
    url: str, pcm: bytes, n: int, source: str = "en", targets: Sequence[str] = (TARGET,)
) -> list[SessionLog]:
    return list(
        await asyncio.gather(*(stream_session(url, pcm, i * 0.37, source, targets) for i in range(n)))
    )


def counter_value(text: str, names: Sequence[str] = CALL_METRICS) -> tuple[str, float] | None:
    """The first of ``names`` that the Prometheus exposition ``text`` holds, summed over its label
    sets (a histogram's ``_sum``), or None."""
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in names:
        family = families.get(name) or families.get(name.removesuffix("_total"))
        if family is not None:
            if family.type == "histogram":
                return name, sum(s.value for s in family.samples if s.name.endswith("_sum"))
            return name, sum(s.value for s in family.samples if not s.name.endswith("_created"))
    return None


def read_counter(metrics_url: str, names: Sequence[str] = CALL_METRICS) -> tuple[str, float] | None:
    import httpx

    try:
        return counter_value(httpx.get(metrics_url, timeout=5.0).text, names)
    except (httpx.HTTPError, ValueError):
        return None


@contextlib.contextmanager
def unit_env(unit: str) -> Iterator[None]:
    """``bench_e2e.start_up`` hands this process's environment to `livetranslate up`."""
    before = os.environ.get(UNIT_ENV)
    os.environ[UNIT_ENV] = unit
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(UNIT_ENV, None)
        else:
            os.environ[UNIT_ENV] = before


@contextlib.contextmanager
def up_running(log: Path, spec: Path | None = None, mode: str = "sentence") -> Iterator[tuple[str, str]]:
    """`livetranslate up` (with ``spec`` if given, translating by ``mode``) until the block ends:
    its WebSocket and metrics URLs."""
    from livetranslate.procs import stop

    with unit_env(mode):
        proc, url = _sibling("bench_e2e").start_up(log, *(["-f", str(spec)] if spec else []))
    try:
        yield url, url.replace("ws://", "http://").replace("/v1/stream", "/metrics")
    finally:
        stop(proc, 60)


def live_runs(
    modes: Sequence[str],
    conditions: dict[str, Session],
    sessions: int,
    tmp: Path,
    spec: Path | None = None,
    source: str = "en",
    target: str = TARGET,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per gateway translation unit, `livetranslate up` (with ``spec`` if given) and ``sessions``
    real-time sessions of each condition from ``source`` into ``target``."""
    rows: list[dict[str, Any]] = []
    examples: dict[str, Any] = {}
    warm = next(iter(conditions.values()))
    warm_pcm = to_pcm16(warm.samples[: int(min(warm.seconds, 12.0) * SAMPLE_RATE)])
    for mode in modes:
        with up_running(tmp / f"up-{mode}.log", spec, mode) as (url, metrics_url):
            asyncio.run(
                run_sessions(url, warm_pcm, 1, source, [target])
            )  # the first decoder passes are slower
            for condition, session in conditions.items():
                load = loadavg()
                before = read_counter(metrics_url)
                print(
                    f"{mode}/{condition}: {sessions} session(s) x {session.seconds:.0f} s in real time "
                    f"(load {load[0]})",
                    flush=True,
                )
                logs = asyncio.run(run_sessions(url, to_pcm16(session.samples), sessions, source, [target]))
                after = read_counter(metrics_url)
                calls = after[1] - before[1] if before and after and before[0] == after[0] else None
                figs = [session_figures(lg, session.sentences, target) for lg in logs]
                row = {
                    "mode": mode,
                    "condition": condition,
                    **aggregate(figs, session.sentences, calls),
                    "calls_metric": after[0] if after else None,
                    "loadavg_at_start": load,
                    "loadavg_after": loadavg(),
                }
                rows.append(row)
                examples[f"{mode}/{condition}"] = {
                    "finals": figs[0].finals_text if figs else "",
                    "translations": figs[0].translations if figs else [],
                    "sentences": figs[0].matches if figs else [],
                }
                print(json.dumps({k: v for k, v in row.items() if k not in ("split_examples",)}), flush=True)
    return rows, examples


# ------------------------------------------------------------------------------ offline ceilings


def translate_events(
    base: str, texts: Sequence[str], target: str = TARGET, source: str = "en"
) -> list[dict[str, Any]]:
    """Each text alone through the translation service (its Apertium path and clean-up): the
    final ``translation`` event for ``target`` of each (empty when none came), with ``seconds``."""
    import httpx

    out: list[dict[str, Any]] = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for i, text in enumerate(texts):
            body = {
                "sessionId": "quality-offline",
                "segmentId": i,
                "text": text,
                "sourceLanguage": source,
                "targetLanguages": [target],
            }
            got: dict[str, Any] = {}
            began = time.monotonic()
            with client.stream("POST", "/v1/translate", json=body) as resp:
                for line in resp.iter_lines():
                    if line.strip():
                        ev = json.loads(line)
                        if ev.get("type") == "translation" and ev.get("language") == target:
                            got = ev
            out.append({**got, "seconds": time.monotonic() - began})
    return out


def translate_all(base: str, texts: Sequence[str], target: str = TARGET, source: str = "en") -> list[str]:
    return [str(ev.get("text", "")) for ev in translate_events(base, texts, target, source)]


def transcribe_utterances(
    conditions: dict[str, Session], model: str, language: str = "en"
) -> dict[str, list[str]]:
    """Each utterance decoded whole by the engine and settings the audio service loads."""
    from livetranslate.workloads.audio.engines import FasterWhisperEngine, resolve_model_path
    from livetranslate.workloads.audio.settings import AudioSettings

    settings = AudioSettings()
    engine = FasterWhisperEngine(
        resolve_model_path(model),
        "cpu",
        settings.compute_type or "int8",
        1,
        2,
        settings.final_beam_size,
        model,
    )
    out: dict[str, list[str]] = {}
    for condition, session in conditions.items():
        texts = []
        for utt in session.utterances():
            a = max(0, int((utt[0].start - 0.2) * SAMPLE_RATE))
            b = min(len(session.samples), int((utt[-1].end + 0.4) * SAMPLE_RATE))
            texts.append(engine.transcribe(session.samples[a:b], language=language, word_times=False).text)
        out[condition] = texts
    return out


def ceilings(
    conditions: dict[str, Session], tmp: Path, model: str, source: str = "en", target: str = TARGET
) -> dict[str, Any]:
    from livetranslate.procs import stop

    spoken = next(iter(conditions.values())).sentences
    said = [s.text for s in spoken]
    references = [s.reference for s in spoken]
    transcripts = transcribe_utterances(conditions, model, source)
    proc, base = _sibling("bench_translate").serve_translate(
        {"LT_TRANSLATE_BACKEND": "apertium"}, tmp, "quality-translate"
    )
    try:
        mt = translate_all(base, said, target, source)
        result: dict[str, Any] = {"mt_only": {**doc_scores(mt, references), "translations": mt}}
        for condition, texts in transcripts.items():
            sentences = [s for t in texts for s in split_sentences(t)]
            translated = translate_all(base, sentences, target, source)
            result[condition] = {
                "wer": round(wer(" ".join(said), " ".join(texts)), 4),
                **doc_scores(translated, references),
                "sentences": len(sentences),
                "transcript": texts,
                "translations": translated,
            }
    finally:
        stop(proc)
    return result


# -------------------------------------------------------------------------------------- reports


def _num(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" ok" if ok else " MISS")


def table(result: dict[str, Any]) -> list[str]:
    ceil = result["ceilings"]
    model = result.get("model", "tiny.en")
    lines = [
        (
            "| mode | audio | sessions | WER | chrF (ceiling) | BLEU | translations / sentence | calls / sentence "
            "| sentence -> translation p50 / p95 | end of speech -> first translation p50 / p95 "
            "| caption p50 / p95 | split words | unmatched | load |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["runs"]:
        c = ceil.get(r["condition"], {})
        chrf = r["chrf"]["mean"]
        gap = (c["chrf"] - chrf) if chrf is not None and c.get("chrf") is not None else None
        s, f, cap = r["sentence_latency_s"], r["first_translation_latency_s"], r["caption_latency_s"]
        lines.append(
            f"| {r['mode']} | {r['condition']} | {r['sessions']} | {_num(r['wer']['mean'], 3)} "
            f"| {_num(chrf, 1)} ({_num(c.get('chrf'), 1)}){_mark(None if gap is None else gap <= 2.5)} "
            f"| {_num(r['bleu']['mean'], 1)} "
            f"| {_num(r['translations_per_sentence'])}{_mark(r['translations_per_sentence'] <= 1.3)} "
            f"| {_num(r['calls_per_sentence'])} "
            f"| {_num(s['p50'])} / {_num(s['p95'])} s{_mark(None if s['p95'] is None else s['p95'] <= 1.5)} "
            f"| {_num(f['p50'])} / {_num(f['p95'])} s{_mark(None if f['p95'] is None else f['p95'] <= 1.2)} "
            f"| {_num(cap['p50'])} / {_num(cap['p95'])} s "
            f"| {r['split_words']}{_mark(r['split_words'] == 0)} | {r['unmatched_sentences']} "
            f"| {r['loadavg_at_start'][0]:.2f} |"
        )
    lines += ["", "| offline ceiling | WER | chrF | BLEU | sentences |", "| --- | --- | --- | --- | --- |"]
    for name in ("clean", "noisy"):
        if name in ceil:
            c = ceil[name]
            lines.append(
                f"| {model} per utterance + Apertium per sentence, {name} | {c['wer']:.3f} "
                f"| {c['chrf']:.1f} | {c['bleu']:.1f} | {c['sentences']} |"
            )
    mt = ceil["mt_only"]
    lines.append(
        f"| Apertium on the correct English (MT only) | 0 | {_num(mt['chrf'], 1)} | {_num(mt['bleu'], 1)} "
        f"| {len(mt['translations'])} |"
    )
    return lines


def markdown(result: dict[str, Any]) -> str:
    c = result["corpus"]
    head = [
        "# What a listener reads: live transcript and translation quality",
        "",
        (
            f"{provenance_line(result)}. {c['sentences']} sentences in "
            f"{c['utterances']} utterances, {c['words']} words, {c['audio_seconds']} s, {len(c['voices'])} espeak-ng "
            f"voices; noisy = white noise at {c['snr_db']:g} dB SNR (seed {c['noise_seed']}). `livetranslate up`: "
            f"faster-whisper {result.get('model', 'tiny.en')} int8 streaming on CPU, Apertium en->es. Every session "
            "streams in real "
            "time; chrF and BLEU are document-level (sacrebleu) against hand-written Spanish. "
            f"`{result['command']}`"
        ),
        "",
    ]
    if result.get("subset"):
        head += [f"**Smoke run on a subset ({c['sentences']} sentences): not the recorded figures.**", ""]
    how = (
        "Sentence -> translation: from the send of the audio holding a sentence's last voiced sample to "
        "the `translation` whose finals' time span covers it (nearest span within "
        f"{MATCH_TOLERANCE_S} s); end of speech -> first translation: per final, its `end` sent -> the "
        "first `translation.partial` or `translation` naming it; caption: the gateway's `latency` on "
        "`transcript.final`. Calls / sentence: the gateway's own counter where it exposes one."
    )
    targets = ["", "Targets (ok / MISS beside each figure): " + "; ".join(TARGETS.values()) + ".", "", how]
    return "\n".join(head + table(result) + targets) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    audio = parser.add_mutually_exclusive_group()
    audio.add_argument("--clean", dest="audio", action="store_const", const="clean")
    audio.add_argument("--noise", dest="audio", action="store_const", const="noise")
    audio.add_argument("--both", dest="audio", action="store_const", const="both")
    parser.set_defaults(audio="both")
    parser.add_argument("--sessions", type=int, default=8, help="concurrent identical real-time sessions")
    parser.add_argument(
        "--modes",
        default="sentence,final",
        help=f"gateway translation units to compare ({UNIT_ENV}), comma-separated",
    )
    parser.add_argument(
        "--sentences", type=int, default=None, help="the corpus's first K sentences (smoke runs)"
    )
    parser.add_argument("--no-ceiling", action="store_true", help="skip the offline ceilings")
    parser.add_argument(
        "--model",
        default="tiny.en",
        help="Whisper model of the audio service and the ceiling (tiny.en, base, or a path)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="results stem: writes STEM.json and STEM.md (default benchmarks/results/quality)",
    )
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.sessions < 1 or any(m not in ("sentence", "final") for m in modes):
        parser.error("--sessions must be >= 1 and --modes a list of sentence, final")
    utterances = load_corpus(limit=args.sentences)
    clean = build_session(utterances)
    conditions: dict[str, Session] = {}
    if args.audio in ("clean", "both"):
        conditions["clean"] = clean
    if args.audio in ("noise", "both"):
        conditions["noisy"] = noisy(clean)
    command = shlex.join(["benchmarks/bench_quality.py", *(argv if argv is not None else sys.argv[1:])])
    result: dict[str, Any] = {
        **provenance("quality", "python -P " + command),
        "subset": args.sentences is not None,
        "corpus": {
            "path": str(CORPUS.relative_to(ROOT)),
            "sentences": len(clean.sentences),
            "utterances": len(utterances),
            "words": sum(len(words(s.text)) for s in clean.sentences),
            "audio_seconds": round(clean.seconds, 2),
            "voices": sorted({u["voice"] for u in utterances}),
            "snr_db": SNR_DB,
            "noise_seed": NOISE_SEED,
            "sentence_ends": [s.end for s in clean.sentences],
        },
        "targets": TARGETS,
        "match_tolerance_s": MATCH_TOLERANCE_S,
        "model": args.model,
    }
    # `livetranslate up` passes its environment on: the audio service loads this model.
    os.environ["LT_AUDIO_MODEL"] = args.model
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        result["ceilings"] = {} if args.no_ceiling else ceilings(conditions, Path(tmp), args.model)
        result["ceilings"].setdefault("mt_only", {"chrf": None, "bleu": None, "translations": []})
        runs, examples = live_runs(modes, conditions, args.sessions, Path(tmp)) if modes else ([], {})
    result["runs"] = runs
    result["examples"] = examples
    result["loadavg_after"] = loadavg()
    write_results(args.out, result, markdown(result))
    return 0


def write_results(stem: Path, result: dict[str, Any], md: str) -> None:
    """STEM.json (the figures, through ``figures.write_result``: ``result`` starts with
    ``figures.provenance()``) and STEM.md (the report), and the report on stdout."""
    json_path, md_path = Path(f"{stem}.json"), Path(f"{stem}.md")
    write_result(json_path, result)
    md_path.write_text(md)
    print(md)
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    sys.exit(main())

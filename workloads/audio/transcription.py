"""What every speech-to-text engine shares: the interface the audio service calls, what one decoder
pass returns, and how a pass's words get their times and know whether they continue the word before.

Both engines return word-level timings, because the streaming policy commits words, trims the
buffer at word ends and reports segment times in session seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

SAMPLE_RATE = 16000
PACKAGED_MODEL = "tiny.en"


@dataclass(frozen=True)
class Word:
    """A word with times relative to the start of the audio that was decoded."""

    text: str
    start: float
    end: float
    probability: float = 1.0
    segment: int = 0  # index into Hypothesis.segments
    # The decoder wrote no space before this word: it continues the previous one ("o" "'clock",
    # "12" ".5", "well" "-known"), so a final must not end between the two.
    glued: bool = False


@dataclass(frozen=True)
class SegmentStats:
    """What the decoder says about its own confidence in one segment."""

    text: str
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 1.0


@dataclass
class Hypothesis:
    """One decoder pass: words plus the signals the hallucination filter needs."""

    words: list[Word] = field(default_factory=list)
    text: str = ""
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 1.0
    seconds: float = 0.0  # wall time of the pass
    segments: list[SegmentStats] = field(default_factory=list)
    # The language the pass decoded in: the one asked for, or (asked for none) the one the model
    # detected, with the detection's probability (1.0 when it was asked for).
    language: str | None = None
    language_probability: float = 1.0


class Engine(Protocol):
    name: str
    device: str
    model: str

    def transcribe(
        self,
        audio: np.ndarray,
        prompt: str | None = None,
        language: str | None = None,
        beam_size: int | None = None,
        word_times: bool = True,
        candidates: Sequence[str] | None = None,
    ) -> Hypothesis:
        """One pass. ``language`` None: the model detects it, among ``candidates`` when given
        (the languages the pipeline can do something with), and the hypothesis says which."""
        ...

    def transcribe_batch(
        self,
        audios: list[np.ndarray],
        prompt: str | None = None,
        language: str | None = None,
        beam_size: int | None = None,
        word_times: bool = True,
        candidates: Sequence[str] | None = None,
    ) -> list[Hypothesis]: ...


def max_new_tokens(seconds: float) -> int:
    """A token budget no real speech exceeds (about 4 words/s): it cuts decoder loops short."""
    return int(10 + 8 * seconds)


def is_glued(raw: str, index: int) -> bool:
    """Whether a decoder word, as the decoder wrote it (before stripping), has no space before it.

    Whisper's word splitter (faster-whisper's and OpenVINO GenAI's, both after openai/whisper)
    starts a new word at a token with a leading space or at a punctuation token, and merges
    punctuation into the word after it: "o'clock" comes out as " o" and "'clock". Only the missing
    space tells the second part belongs to the first. The first word of a pass has nothing in
    that pass to continue. In scripts written without spaces (Chinese, Japanese, Thai) every word
    is glued: it joins the previous one without a space, but a commit may still end before it
    (``words.continues_word``).
    """
    return index > 0 and bool(raw) and not raw[0].isspace()


def append_words(hyp: Hypothesis, words: Iterable[tuple[str, float, float, float]], segment: int = 0) -> None:
    """Add a decoder's words (raw text with its leading space, start, end, probability) to ``hyp``;
    blank ones are dropped."""
    for raw, start, end, probability in words:
        if raw.strip():
            hyp.words.append(
                Word(raw.strip(), start, end, probability, segment, is_glued(raw, len(hyp.words)))
            )


def spread_words(
    text: str, chunks: Any, duration: float, start: float = 0.0, end: float | None = None
) -> list[Word]:
    """Word times when the engine gives only chunk (or no) timestamps: spread evenly by length.

    Rough, but enough for LocalAgreement (which compares words, not times) and for trimming.
    Words split at whitespace are whole words, so none of them is glued to the one before.
    """
    spans: list[tuple[str, float, float]] = []
    if chunks:
        spans = [
            (str(c.text), float(c.start_ts), float(c.end_ts if c.end_ts >= 0 else duration)) for c in chunks
        ]
    elif text:
        spans = [(text, start, duration if end is None else end)]
    words: list[Word] = []
    for chunk_text, t0, t1 in spans:
        parts = chunk_text.split()
        total = sum(len(p) for p in parts) or 1
        t = t0
        for p in parts:
            d = (t1 - t0) * len(p) / total
            words.append(Word(p, t, t + d))
            t += d
    return words

"""Words as the streaming agreement sees them: normalised for comparison in any script, joined
into text, kept whole at a commit, and filtered for what Whisper invents on silence and noise.
Pure functions over the engine's ``Word`` and ``Hypothesis``; streaming.py applies them."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from livetranslate.text import UNSPACED
from livetranslate.workloads.audio.engines import Hypothesis, SegmentStats, Word

# Whisper's well-known inventions on silence, music and noise. A match on a whole utterance is
# dropped when the decoder itself was unsure; phrases that never occur in live speech always are.
_HALLUCINATED_PHRASES = {
    "thank you",
    "thank you very much",
    "thanks for watching",
    "thank you for watching",
    "thanks for listening",
    "you",
    "bye",
    "bye bye",
    "okay",
    "oh",
    "so",
    "hmm",
    "uh",
    "um",
    "please subscribe",
    "like and subscribe",
}
_NEVER_LIVE = (
    "subtitles by",
    "amara org",
    "transcribed by",
    "translated by",
    "captions by",
    "www ",
    "copyright",
    "subscribe to my channel",
)
PUNCT_END = (".", "?", "!", ",", ";", ":")
# A word that ends like this may be waiting for its glued rest: "twenty-" for "first", "o'" for
# "clock", and a number's "12." or "12," for "5" or "000" (at the end of a buffer the decoder
# writes "12." and a pass later " 12" + ".5"). A commit never ends on it while more may follow.
_OPEN_END = re.compile(r"(?:[-'\u2019\u2011]|\d[.,])$")
HYPHENS = ("-", "\u2011")


def norm_word(text: str) -> str:
    """A word as the agreement compares it: case-folded letters, marks, digits and apostrophes of
    any script (Cyrillic, Greek, Arabic, Devanagari's vowel signs, and the characters Whisper
    splits Chinese and Japanese into; an ASCII-only rule made every such word empty, and nothing
    committed before a pause)."""
    folded = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")
    return "".join(c for c in folded if c == "'" or unicodedata.category(c)[0] in "LMN")


def norm_text(text: str) -> str:
    return " ".join(w for w in (norm_word(t) for t in text.split()) if w)


def continues_word(word: Word) -> bool:
    """Whether ``word`` is the rest of the word before it ("'clock" after "o"), so no commit may
    end between the two; a glued character of an unspaced script starts a word of its own."""
    return word.glued and not UNSPACED.match(word.text)


def join_words(words: Sequence[Word]) -> str:
    """Words as text: a glued word ("'clock" after "o") follows the one before without a space."""
    return "".join(w.text if i == 0 or w.glued else " " + w.text for i, w in enumerate(words))


def whole_word_prefix(words: Sequence[Word], n: int) -> int:
    """The length of the longest prefix of ``words[:n]`` that ends on a word boundary.

    A commit of ``words[:n]`` would split a word when ``words[n]`` is glued to the word before
    it, or when the last word leaves its end open; such a boundary is held back to the previous
    whole-word boundary (the held words come back in the next hypothesis).
    """
    while n > 0 and ((n < len(words) and continues_word(words[n])) or _OPEN_END.search(words[n - 1].text)):
        n -= 1
    return n


def is_hallucination(hyp: Hypothesis | SegmentStats, voiced_seconds: float) -> bool:
    """True when a hypothesis (or one of its segments) looks invented rather than heard."""
    text = norm_text(hyp.text or " ".join(w.text for w in getattr(hyp, "words", [])))
    if not text:
        return False
    if hyp.compression_ratio > 2.4:  # the same words over and over
        return True
    if hyp.no_speech_prob > 0.6 and hyp.avg_logprob < -1.0:
        return True
    padded = f" {text} "
    if any(f" {p}" in padded for p in _NEVER_LIVE):
        return True
    if text in _HALLUCINATED_PHRASES:
        return hyp.no_speech_prob > 0.2 or hyp.avg_logprob < -0.6 or voiced_seconds < 0.5
    return False


def heard_words(hyp: Hypothesis, duration: float, voiced_seconds: float) -> list[Word]:
    """The words of a hypothesis that were plausibly heard.

    Whisper fails by segment: a segment that is a known hallucination, repeats itself, or repeats
    an earlier segment of the same pass (a decoder loop over a short buffer) is dropped whole,
    while the segments that carry real speech are kept. Words squeezed into the last 50 ms of
    the buffer are cut too: speech cannot start where the audio ends, loops can.
    """
    if not hyp.segments:
        return [] if is_hallucination(hyp, voiced_seconds) else list(hyp.words)
    seen: list[str] = []
    keep: set[int] = set()
    for i, seg in enumerate(hyp.segments):
        text = norm_text(seg.text)
        repeated = bool(text) and any(text == s or (len(text) > 12 and text in s) for s in seen)
        if not repeated and not is_hallucination(seg, voiced_seconds):
            keep.add(i)
        seen.append(text)
    return [w for w in hyp.words if w.segment in keep and w.start < duration - 0.05]

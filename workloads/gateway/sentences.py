"""Sentences: the unit a listener reads, assembled from the finals the audio service commits.

The audio service commits words as soon as two decoder passes agree on them, about 2 words at a
time: right for captions, wrong for translation. A fragment translated alone loses agreement,
idioms and capitals ("Buenos días, | Todo el mundo y gracias | Para"); measured on a 40-sentence
meeting, fragment-by-fragment translation scored chrF 48.6 against 58.5 for the same engines
translating whole sentences. So the gateway groups consecutive finals into sentences and
translates each once, whole.

A sentence closes
* on sentence-final punctuation at the end of a final (not after a known abbreviation),
* at the end of an utterance (the speaker paused: the audio service says so),
* before a final in another detected language (``sourceLanguage: auto``), or
* at a bound of words or seconds, cut after the last final that ends a clause (comma, semicolon,
  colon, dash) where one exists, so a speaker who never pauses still gets translations.

Boundaries fall between finals, never inside one: a sentence's ``segmentIds`` name the finals it
covers, and a resumed session rebuilds its open sentence from the session log. Pure logic, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from livetranslate.text import ends_sentence, join_texts

TranslationUnit = Literal["sentence", "final"]

_CLAUSE_END = re.compile(r"[,;:—–、，；：]+[\"'”’»)\]]*$|\s[-–—]$")


def ends_clause(text: str) -> bool:
    return bool(_CLAUSE_END.search(text.rstrip()))


def count_words(text: str) -> int:
    """Words for the length bound; a script written without spaces counts a word per 2 chars."""
    words = text.split()
    if len(words) <= 1 and len(text) > 8:
        return len(text) // 2
    return len(words)


@dataclass
class Piece:
    """One final as far as sentences are concerned."""

    segment_id: int
    text: str
    start: float
    end: float
    language: str | None = None  # the detected spoken language (sourceLanguage auto)


@dataclass
class Sentence:
    id: int
    pieces: list[Piece] = field(default_factory=list)
    # Why it closed: "punctuation", "utterance", "bound", "language", "final" (one per final), "flush".
    reason: str = ""

    @property
    def segment_ids(self) -> list[int]:
        return [p.segment_id for p in self.pieces]

    @property
    def text(self) -> str:
        return join_texts([p.text for p in self.pieces])

    @property
    def start(self) -> float:
        return self.pieces[0].start if self.pieces else 0.0

    @property
    def end(self) -> float:
        return self.pieces[-1].end if self.pieces else 0.0

    @property
    def words(self) -> int:
        return sum(count_words(p.text) for p in self.pieces)

    @property
    def language(self) -> str | None:
        """The detected language of its finals (a sentence never mixes two)."""
        return next((p.language for p in self.pieces if p.language), None)


@dataclass(frozen=True)
class SentenceRules:
    unit: TranslationUnit = "sentence"
    max_words: int = 40
    max_seconds: float = 20.0


class SentenceAssembler:
    """Groups one session's finals into sentences, in order.

    Ids are consecutive: ``next_id`` is the id of the open sentence (or of the next to open), and
    moves on only when a sentence closes, so the id a ``translation.partial`` names is the id its
    ``translation`` will have, also across a resume (the session state keeps ``next_id``).
    """

    def __init__(self, rules: SentenceRules, next_id: int = 0) -> None:
        self.rules = rules
        self.next_id = next_id
        self.open: Sentence | None = None

    def restore(self, pieces: list[Piece]) -> None:
        """Continue the sentence a previous connection left open (a resumed session)."""
        self.open = Sentence(self.next_id, list(pieces)) if pieces else None

    def add(self, piece: Piece) -> list[Sentence]:
        """Add a final; returns the sentences it closed (usually none or one)."""
        closed: list[Sentence] = []
        if (
            self.open is not None
            and piece.language
            and self.open.language
            and piece.language != self.open.language
        ):
            closed = self._close("language")  # the speaker changed language: a new sentence
        if self.open is None:
            self.open = Sentence(self.next_id)
        sentence = self.open
        sentence.pieces.append(piece)
        return closed + self._close_rules(sentence, piece)

    def _close_rules(self, sentence: Sentence, piece: Piece) -> list[Sentence]:
        if self.rules.unit == "final":
            return self._close("final")
        if ends_sentence(piece.text):
            return self._close("punctuation")
        if sentence.words >= self.rules.max_words or sentence.end - sentence.start >= self.rules.max_seconds:
            return self._cut()
        return []

    def utterance_end(self) -> list[Sentence]:
        """The speaker paused: the open sentence is complete."""
        return self._close("utterance") if self.open is not None and self.open.pieces else []

    def flush(self) -> list[Sentence]:
        return self._close("flush") if self.open is not None and self.open.pieces else []

    def _close(self, reason: str) -> list[Sentence]:
        sentence, self.open = self.open, None
        if sentence is None or not sentence.pieces:
            return []
        sentence.reason = reason
        self.next_id = sentence.id + 1
        return [sentence]

    def _cut(self) -> list[Sentence]:
        """Past the bound: close after the last clause boundary, keep the rest open."""
        sentence = self.open
        assert sentence is not None
        cut = next(
            (i for i in range(len(sentence.pieces) - 2, -1, -1) if ends_clause(sentence.pieces[i].text)), None
        )
        if cut is None:
            return self._close("bound")
        rest = sentence.pieces[cut + 1 :]
        sentence.pieces = sentence.pieces[: cut + 1]
        sentence.reason = "bound"
        self.next_id = sentence.id + 1
        self.open = Sentence(self.next_id, rest)
        return [sentence]

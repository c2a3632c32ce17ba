"""Which language a session with ``sourceLanguage: auto`` is speaking, utterance by utterance.

Whisper detects the language of each pass from its first audio (faster-whisper: the language
token's probability after one encoder pass). One pass over half a second of speech is a guess, so:

* An utterance's passes run with detection until its language is **confirmed**: two passes agree
  on it, or one pass over at least ``SURE_SECONDS`` of voice is at least ``SURE_PROBABILITY``
  sure of the session's language (another language always needs two passes that agree: one
  sure pass put a Spanish sentence in French). From then on the utterance decodes in that
  language (no more detection cost, and no pass can flip a half-spoken sentence into another
  language), and its words commit only from then on, so every final carries it.
* The **session language** changes with hysteresis: it follows the first utterance, and later
  switches only when ``SWITCH_UTTERANCES`` utterances in a row were confirmed in another
  language. An utterance that never got a confident detection (a short "OK", "sí") takes the
  session language: the evidence of one mumbled word does not move a conversation.

Finals carry the language of their utterance as far as it is known when they are committed:
the confirmed one, else the best guess so far. Pure logic, no model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SURE_PROBABILITY = 0.8
SURE_SECONDS = 1.0
GUESS_PROBABILITY = 0.5  # below this a detection is not a guess worth reporting
SWITCH_UTTERANCES = 2


@dataclass
class LanguageTracker:
    """Per-session state; ``fixed`` set means the session's language is known (no detection)."""

    fixed: str | None = None
    session: str | None = None  # the session language (hysteresis), None before any evidence
    confirmed: str | None = None  # this utterance's language, once confirmed
    _votes: list[tuple[str, float]] = field(default_factory=list)
    _switch: tuple[str, int] | None = None  # candidate language, utterances in a row

    @property
    def detecting(self) -> bool:
        return self.fixed is None

    def for_pass(self) -> str | None:
        """The language to decode the next pass in; None asks the engine to detect it."""
        return self.fixed or self.confirmed

    def observe(self, language: str | None, probability: float, voiced_seconds: float) -> None:
        """One pass's detection (the engine's language and its probability)."""
        if self.fixed or self.confirmed or not language:
            return
        previous = self._votes[-1] if self._votes else None
        self._votes.append((language, probability))
        familiar = self.session is None or language == self.session
        sure = familiar and probability >= SURE_PROBABILITY and voiced_seconds >= SURE_SECONDS - 1e-6
        agreed = (
            previous is not None
            and previous[0] == language
            and min(previous[1], probability) >= GUESS_PROBABILITY
        )
        if sure or agreed:
            self.confirmed = language

    def current(self) -> str | None:
        """The language a final committed now carries."""
        if self.fixed:
            return self.fixed
        if self.confirmed:
            return self.confirmed
        if self._votes and self._votes[-1][1] >= SURE_PROBABILITY:
            return self._votes[-1][0]
        if self.session:
            return self.session
        # The session's first words: the best guess, however unsure (a final is never revised).
        best = max(self._votes, key=lambda v: v[1], default=None)
        return best[0] if best else None

    def end_utterance(self) -> str | None:
        """The utterance is over: returns its language and moves the session's with hysteresis."""
        if self.fixed:
            return self.fixed
        language = self.confirmed
        if language is not None:
            if self.session is None or language == self.session:
                self.session, self._switch = language, None
            else:
                streak = self._switch[1] + 1 if self._switch and self._switch[0] == language else 1
                self._switch = (language, streak)
                if streak >= SWITCH_UTTERANCES:
                    self.session, self._switch = language, None
        else:
            language = self.current()
        self.confirmed, self._votes = None, []
        return language

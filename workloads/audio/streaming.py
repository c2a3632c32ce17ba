"""The streaming policy of one session: VAD-gated rolling buffer, partials, LocalAgreement finals.

Pure logic, no I/O and no threads, so every rule is tested without a model. The connection feeds
PCM in, asks for the next decode request, has the shared scheduler run it, and applies the
hypothesis, which yields partial and final events:

- VAD (silero) opens an utterance at the first voiced frame and closes it after
  ``min_silence_seconds`` of silence; nothing is decoded while nobody speaks, which is both the
  cheapest and the most effective guard against Whisper hallucinating on silence.
- While someone speaks, the buffer (the utterance so far) is re-decoded every ``step_seconds`` of
  new audio. Words that two consecutive hypotheses agree on (LocalAgreement-2) are committed and
  sent as a final once they have ``agree_margin_seconds`` of audio after them (and, early in an
  utterance, a confident decoder); the rest is the partial.
- When the voice stops, one pass covers the whole utterance at once; if the silence lasts, that
  hypothesis becomes the final of everything left, with no further pass (end-of-utterance
  commit). Otherwise (the decoder was busy) a final pass over the utterance runs.
- A final is never revised: committed words are cut out of later hypotheses by time and by
  n-gram overlap, and the buffer is trimmed at a committed word once it grows long.
- A final ends on a whole word: Whisper splits "o'clock", "12.5" and "well-known" into a word
  and a glued rest ("'clock"), so no commit ends before a glued word or after a word that
  leaves its end open ("twenty-"); glued words join without a space.
- A final never runs past the end of a sentence: words that hold one are committed as one final
  per sentence, so the gateway closes and translates a sentence as soon as its final arrives.
- Every utterance that ends (a pause, or the end of the stream) yields an ``UtteranceEndOut``
  after its last final, so the gateway knows a sentence without closing punctuation is over.
- Times are stream seconds inside this class; events carry session seconds (``time_offset`` +
  stream time) so a resumed session continues its clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from livetranslate.text import ends_sentence
from livetranslate.workloads.audio.engines import Hypothesis, Word
from livetranslate.workloads.audio.language import LanguageTracker
from livetranslate.workloads.audio.settings import StreamingSettings
from livetranslate.workloads.audio.vad import FRAME_SECONDS, VadStream
from livetranslate.workloads.audio.words import (
    HYPHENS,
    PUNCT_END,
    continues_word,
    heard_words,
    join_words,
    norm_word,
    whole_word_prefix,
)

SAMPLE_RATE = 16000
# Trailing unvoiced sounds (a final "s" or "t") sit after the last frame VAD calls voiced.
TAIL_PAD_SECONDS = 0.2
# Shortest voiced audio worth a decoder pass.
MIN_DECODE_SECONDS = 0.3
# Committed words remembered for dropping what a later pass hears again: the last few words at
# the buffer's edge, and whole sentences Whisper repeats when it loops on trailing audio (a
# benchmark session read an 8-word sentence three times). 24 covers two sentences of the corpus.
REHEARD_WORDS = 24
# Stream times are sums of chunk lengths, so 12.4 - 12.1 is 0.29999999999999893: every
# threshold comparison allows this much, or a 0.3 s step waits for a fourth 0.1 s chunk.
TIME_EPS = 1e-6


@dataclass(frozen=True)
class DecodeRequest:
    audio: np.ndarray
    start: float  # stream seconds of audio[0]
    end: float
    final: bool  # commit everything (end of utterance, end of stream, or a full buffer)
    prompt: str | None
    utterance_start: float  # stream seconds where the current utterance began
    # Whether this pass may commit words (and so needs exact word times); early passes of an
    # utterance only feed partials and the next agreement, which compares text.
    word_times: bool = True
    # The language to decode in; None asks the engine to detect it (sourceLanguage auto, until
    # the utterance's language is confirmed: workloads/audio/language.py).
    language: str | None = "en"


@dataclass(frozen=True)
class PartialOut:
    text: str
    start: float  # session seconds
    end: float


@dataclass(frozen=True)
class FinalOut:
    text: str
    start: float  # session seconds
    end: float
    stream_start: float  # stream seconds, for slicing the request audio (diarization)
    stream_end: float
    language: str | None = None  # the detected spoken language (sessions with sourceLanguage auto)


@dataclass(frozen=True)
class UtteranceEndOut:
    """The voice stopped (or the stream ended): the utterance's finals are all out.

    It follows the utterance's last final, so a consumer that groups finals into sentences can
    close one that has no closing punctuation; a full buffer that forces a final mid-utterance
    makes none.
    """

    end: float  # session seconds
    language: str | None = None  # the session's spoken language after it ("auto" sessions)


StreamEvent = PartialOut | FinalOut | UtteranceEndOut


class AudioBuffer:
    """A growable float32 buffer addressed by stream time; trimming from the front is O(1)."""

    def __init__(self) -> None:
        self._data = np.zeros(SAMPLE_RATE * 4, dtype=np.float32)
        self._head = 0  # index of the first kept sample
        self._tail = 0  # index after the last sample
        self.start = 0.0  # stream seconds of the first kept sample

    @property
    def end(self) -> float:
        return self.start + (self._tail - self._head) / SAMPLE_RATE

    def append(self, samples: np.ndarray) -> None:
        n = len(samples)
        if self._tail + n > len(self._data):
            kept = self._tail - self._head
            size = len(self._data)
            while kept + n > size // 2:
                size *= 2
            fresh = np.zeros(size, dtype=np.float32)
            fresh[:kept] = self._data[self._head : self._tail]
            self._data, self._head, self._tail = fresh, 0, kept
        self._data[self._tail : self._tail + n] = samples
        self._tail += n

    def trim_to(self, t: float) -> None:
        """Drop audio before stream time ``t``."""
        drop = round((t - self.start) * SAMPLE_RATE)
        drop = max(0, min(drop, self._tail - self._head))
        self._head += drop
        self.start += drop / SAMPLE_RATE

    def slice(self, t0: float, t1: float) -> np.ndarray:
        a = self._head + max(0, round((t0 - self.start) * SAMPLE_RATE))
        b = self._head + max(0, round((t1 - self.start) * SAMPLE_RATE))
        return self._data[a : min(b, self._tail)].copy()

    def nbytes(self) -> int:
        return int(self._data.nbytes)


class StreamSession:
    """Streaming state of one session; not thread-safe (the connection serialises calls)."""

    def __init__(
        self,
        settings: StreamingSettings,
        vad: VadStream,
        time_offset: float = 0.0,
        use_vad: bool = True,
        language: str = "en",
        spoken_language: str | None = None,
    ) -> None:
        self.settings = settings
        # "auto": each utterance's language is detected and confirmed, the session's follows with
        # hysteresis (from ``spoken_language`` where an earlier stream of the session found one);
        # any other code is decoded as given.
        if language == "auto":
            self.language = LanguageTracker(session=spoken_language)
        else:
            self.language = LanguageTracker(fixed=language)
        self.time_offset = time_offset
        self._vad = vad
        self._use_vad = use_vad
        self.buffer = AudioBuffer()
        self.received = 0.0  # stream seconds received
        self._vad_time = 0.0  # stream seconds the VAD has looked at
        self.in_speech = not use_vad
        self._speech_start = 0.0
        self._voice_end = 0.0
        self.last_voice_at = 0.0  # stream seconds of the last voiced frame (silence timeout)
        self._utterance_ends: deque[float] = deque()
        self._committed_end = 0.0
        self._committed_tail: list[str] = []  # normalised words, for overlap removal
        self._prompt_words: list[Word] = []  # committed words of this utterance cut from the buffer
        self._prev: list[Word] = []  # previous hypothesis past the committed point (stream times)
        self._prev_req: DecodeRequest | None = None  # the pass _prev came from
        # Events made without a decoder pass (an utterance end the last pass already covered),
        # with the pass whose audio they came from (None if there was none); the connection
        # drains them.
        self._ready: list[tuple[StreamEvent, DecodeRequest | None]] = []
        self._utterance_words: list[Word] = []  # committed words still inside the buffer
        self._last_request_end = 0.0
        self._last_partial = ""
        self.in_flight = False
        self.flushing = False
        self.decoded_seconds = 0.0  # audio covered by decoder passes, for the real-time factor

    # ------------------------------------------------------------------ input

    def feed(self, samples: np.ndarray) -> None:
        self.buffer.append(samples)
        self.received += len(samples) / SAMPLE_RATE
        if not self._use_vad:
            self.last_voice_at = self.received
            return
        s = self.settings
        for prob in self._vad.feed(samples):
            frame_start = self._vad_time
            self._vad_time += FRAME_SECONDS
            if prob >= s.vad_threshold:
                if not self.in_speech:
                    self.in_speech = True
                    self._speech_start = frame_start
                    if not self._utterance_ends:  # else the pending end still needs _prev
                        self._prev, self._prev_req = [], None
                self._voice_end = self._vad_time
                self.last_voice_at = self._vad_time
            elif (
                self.in_speech
                and prob < s.vad_neg_threshold
                and self._vad_time - self._voice_end >= s.min_silence_seconds - TIME_EPS
            ):
                self.in_speech = False
                self._utterance_ends.append(min(self._voice_end + TAIL_PAD_SECONDS, self._vad_time))
        if not self.in_speech and not self._utterance_ends and not self.in_flight:
            # Nobody speaks and nothing is pending: keep only the pre-roll.
            keep_from = max(self._committed_end, self.received - s.preroll_seconds)
            if keep_from > self.buffer.start:
                self.buffer.trim_to(keep_from)

    def flush(self) -> None:
        """End of stream: whatever is being said is an utterance that ends now."""
        self.flushing = True
        if self.in_speech:
            self.in_speech = False
            self._utterance_ends.append(self.received)

    @property
    def backlog(self) -> float:
        """Seconds of voiced audio received but not yet covered by a decoder pass."""
        if not self.in_speech and not self._utterance_ends:
            return 0.0
        return max(0.0, self.received - max(self._last_request_end, self.buffer.start))

    @property
    def between_utterances(self) -> bool:
        """Nobody speaks and everything heard is final: no utterance open, ending or decoding."""
        return not self.in_speech and not self._utterance_ends and not self.in_flight and not self._ready

    @property
    def flushed(self) -> bool:
        return self.flushing and not self._utterance_ends and not self.in_flight

    # ------------------------------------------------------------------ decoding

    def next_request(self) -> DecodeRequest | None:
        """The decoder pass this session needs now, if any (at most one in flight)."""
        if self.in_flight:
            return None
        s = self.settings
        start = self.buffer.start
        if self._utterance_ends:
            end = self._utterance_ends[0]
            if end - max(start, self._committed_end) < 0.1 - TIME_EPS:  # nothing left to hear
                self._utterance_ends.popleft()
                source = self._prev_req
                self._ready.append((self._finish_utterance(end), source))
                return self.next_request()
            if self._prev_req is not None and self._prev_req.end >= end - TIME_EPS:
                # The last pass already heard the whole utterance (it ran during the silence
                # that ended it): its hypothesis is what a final pass would decode, so finalise
                # it now instead of paying a decoder pass (and a queue wait) for it.
                self._utterance_ends.popleft()
                self._finalize_prev(end)
                return self.next_request()
            return self._request(start, end, final=True)
        if not self.in_speech:
            return None
        end = self.received
        voiced_from = max(start, self._speech_start if self._use_vad else start)
        # Once the voice has stopped (plus the tail pad), one pass over all of it right away,
        # whatever the step: if the silence lasts, that pass becomes the utterance's final.
        heard = self._voice_end + TAIL_PAD_SECONDS
        # (25 VAD frames plus the pad is 1.0000000000000004 s, ten 0.1 s chunks 0.9999999999999999)
        closing = self._use_vad and end >= heard - TIME_EPS and heard > self._last_request_end + TIME_EPS
        too_short = end - voiced_from < MIN_DECODE_SECONDS - TIME_EPS
        too_soon = end - self._last_request_end < s.step_seconds - TIME_EPS
        if too_short or (too_soon and not closing):
            return None
        return self._request(start, end, final=end - start >= s.max_buffer_seconds - TIME_EPS)

    def _request(self, start: float, end: float, final: bool) -> DecodeRequest:
        self.in_flight = True
        self._last_request_end = end
        prompt = join_words(self._prompt_words[-40:]) or None
        utterance_start = max(start, self._speech_start)
        # Agreement needs a previous hypothesis: the first pass of an utterance only feeds the
        # partial and the next comparison, so it skips the word-alignment pass.
        may_commit = final or bool(self._prev)
        return DecodeRequest(
            self.buffer.slice(start, end),
            start,
            end,
            final,
            prompt,
            utterance_start=utterance_start,
            word_times=may_commit,
            language=self.language.for_pass(),
        )

    def abort(self) -> None:
        """The pass asked for could not run (queue full, decoder error): ask again later."""
        self.in_flight = False

    def apply(self, req: DecodeRequest, hyp: Hypothesis) -> list[StreamEvent]:
        """Turn a hypothesis of ``req`` into events; marks the session free for the next pass."""
        self.in_flight = False
        self.decoded_seconds += req.end - req.start
        voiced = req.end - max(req.start, req.utterance_start)
        if req.language is None:  # a detection pass
            self.language.observe(hyp.language, hyp.language_probability, voiced)
        words = [
            Word(w.text, req.start + w.start, min(req.start + w.end, req.end), w.probability, glued=w.glued)
            for w in heard_words(hyp, req.end - req.start, voiced)
        ]
        fresh = self._drop_committed(words)
        out: list[StreamEvent] = []
        if req.final:
            self._prev, self._prev_req = [], None
            end_of_utterance = bool(self._utterance_ends) and self._utterance_ends[0] == req.end
            if end_of_utterance:
                out += self._commit_sentences(fresh, utterance_end=True)
            else:
                # A full buffer: keep listening to the same utterance with context. A last word
                # left open ("twenty-") stays in the buffer, so the next pass hears it whole.
                n = whole_word_prefix(fresh, len(fresh)) or len(fresh)
                out += self._commit_sentences(fresh[:n])
                cut = fresh[n].start if n < len(fresh) else req.end
                self._committed_end = max(self._committed_end, cut)
                self._prompt_words += self._utterance_committed_words(cut)
                self.buffer.trim_to(cut)
            if self._last_partial:
                self._last_partial = ""
                out.append(PartialOut("", self._session(req.end), self._session(req.end)))
            if end_of_utterance:
                self._utterance_ends.popleft()
                out.append(self._finish_utterance(req.end))
            return out
        agreed = (
            self._confident(self._agreement(self._prev, fresh), voiced, req.end) if req.word_times else []
        )
        agreed = agreed[: whole_word_prefix(fresh, len(agreed))]
        if self.language.detecting and not self.language.confirmed:
            # Words wait for their utterance's language (a final is never revised): the passes
            # after confirmation decode them again in it, and the first final carries it.
            agreed = []
        pending = fresh
        if agreed and (len(agreed) >= self.settings.min_final_words or agreed[-1].text.endswith(PUNCT_END)):
            out += self._commit_sentences(agreed)
            pending = fresh[len(agreed) :]
        self._prev, self._prev_req = pending, req
        text = join_words(pending)
        if text != self._last_partial:
            self._last_partial = text
            if pending:
                out.append(PartialOut(text, self._session(pending[0].start), self._session(pending[-1].end)))
            else:
                out.append(PartialOut("", self._session(req.end), self._session(req.end)))
        if (
            req.end - self.buffer.start > self.settings.trim_seconds + TIME_EPS
            and self._committed_end > self.buffer.start
        ):
            cut = self._committed_end
            self._prompt_words += self._utterance_committed_words(cut)
            self.buffer.trim_to(cut)
        return out

    def take_ready(self) -> list[tuple[StreamEvent, DecodeRequest | None]]:
        """Events made without a decoder pass, each with the pass whose audio it came from."""
        ready, self._ready = self._ready, []
        return ready

    def _finalize_prev(self, end: float) -> None:
        req = self._prev_req
        assert req is not None
        n = sum(1 for w in self._prev if w.start < end)
        while n < len(self._prev) and continues_word(self._prev[n]):  # a word the end cuts stays whole
            n += 1
        self._ready += [(final, req) for final in self._commit_sentences(self._prev[:n], utterance_end=True)]
        if self._last_partial:
            self._last_partial = ""
            self._ready.append((PartialOut("", self._session(end), self._session(end)), req))
        self._ready.append((self._finish_utterance(end), req))

    # ------------------------------------------------------------------ helpers

    def _session(self, t: float) -> float:
        return round(self.time_offset + t, 3)

    def _finish_utterance(self, end: float) -> UtteranceEndOut:
        self.language.end_utterance()
        self._committed_end = max(self._committed_end, end)
        self._committed_tail = []
        self._prompt_words = []
        self._utterance_words = []
        self._prev, self._prev_req = [], None
        if self.buffer.start < end:
            self.buffer.trim_to(end)
        # The pass a final came from may place its last word past the end VAD saw (or the end
        # cut a word it kept whole): the utterance ends after its last final.
        spoken = None if self.language.fixed else self.language.session
        return UtteranceEndOut(self._session(self._committed_end), spoken)

    def _utterance_committed_words(self, cut: float) -> list[Word]:
        """Committed words of this utterance before ``cut`` not yet in the prompt."""
        words = [w for w in self._utterance_words if w.end <= cut + TIME_EPS]
        self._utterance_words = [w for w in self._utterance_words if w.end > cut + TIME_EPS]
        return words

    def _drop_committed(self, words: list[Word]) -> list[Word]:
        """Words of a hypothesis past the committed point, without re-heard committed words."""
        fresh = [w for w in words if (w.start + w.end) / 2 > self._committed_end]
        if fresh and self._committed_tail and fresh[0].start - self._committed_end < 1.0:
            tail = self._committed_tail
            for n in range(min(len(tail), len(fresh)), 0, -1):
                if tail[-n:] == [norm_word(w.text) for w in fresh[:n]]:
                    fresh = fresh[n:]
                    break
        # A glued rest whose head is already final ("posts" committed, then a pass hears
        # "post" + "-son"): a final is never revised, and the rest alone would start the next
        # final inside a word. It goes.
        while fresh and len(fresh) < len(words) and self._committed_tail and continues_word(fresh[0]):
            fresh = fresh[1:]
        return fresh

    def _confident(self, agreed: list[Word], voiced: float, end: float) -> list[Word]:
        """The agreed prefix that may be committed now.

        A word needs ``agree_margin_seconds`` of audio after it: one cut by the buffer's end
        ("slide" of "slides") agrees with itself one step later. And two passes over a second of
        audio agree on wrong words too often ("For me, then" for "The meeting will"); those carry
        a low probability, right ones rarely do. So while the utterance is shorter than
        ``min_agree_seconds`` the prefix also stops at the first word under
        ``agree_min_probability``; after that, agreement alone commits.
        """
        s = self.settings
        for i, w in enumerate(agreed):
            if w.end > end - s.agree_margin_seconds:
                return agreed[:i]
            if voiced < s.min_agree_seconds and w.probability < s.agree_min_probability:
                return agreed[:i]
        return agreed

    @staticmethod
    def _agreement(prev: list[Word], cur: list[Word]) -> list[Word]:
        agreed: list[Word] = []
        for a, b in zip(prev, cur, strict=False):
            if norm_word(a.text) != norm_word(b.text) or not norm_word(b.text):
                break
            agreed.append(b)
        return agreed

    def _commit_sentences(self, words: list[Word], utterance_end: bool = False) -> list[FinalOut]:
        """Finals of ``words``, one per sentence they hold: a final never runs past a sentence's
        end ("...for joining us. Let's" is two), so the gateway can close each sentence on its
        own final and translate it at once instead of waiting for the next one to end."""
        groups: list[list[Word]] = [[]]
        for i, w in enumerate(words):
            groups[-1].append(w)
            if ends_sentence(w.text) and i + 1 < len(words) and not continues_word(words[i + 1]):
                groups.append([])
        finals = [
            self._commit(g, utterance_end=utterance_end and i == len(groups) - 1)
            for i, g in enumerate(groups)
            if g
        ]
        return [f for f in finals if f is not None]

    def _commit(self, words: list[Word], utterance_end: bool = False) -> FinalOut | None:
        """A final of ``words``. At the end of an utterance nothing will follow a dangling
        hyphen ("twenty-"), so it goes."""
        words = [w for w in words if w.text.strip()]
        text = join_words(words).strip()
        if utterance_end:
            text = text.rstrip("".join(HYPHENS)).rstrip()
        if not text:
            return None
        # Word times jitter between passes: a final never starts before the previous one ended.
        start = max(words[0].start, self._committed_end, 0.0)
        self._committed_end = max(self._committed_end, words[-1].end)
        self._committed_tail = (self._committed_tail + [norm_word(w.text) for w in words])[-REHEARD_WORDS:]
        self._utterance_words = [*self._utterance_words, *words]
        end = max(words[-1].end, start)
        language = self.language.current() if self.language.detecting else None
        return FinalOut(text, self._session(start), self._session(end), start, end, language)

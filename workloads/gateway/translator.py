"""One session's translations: finals grouped into sentences, each translated once, whole.

``SentenceTranslator`` takes the session's finals in order, groups them into sentences
(sentences.py) and runs one worker task that asks the translation service for

* each closed sentence, whole, for every target language, with the session's earlier sentences
  and their translations as context; sent as ``translation`` and kept in the session log on the
  sentence's closing final (so a resume neither loses nor repeats one); and
* the open sentence as far as it has been heard (``translation.partial``): on a new final only,
  at most one request in flight, never while closed sentences wait, and no more often than
  ``partial_min_interval_seconds``. So partials cost at most one engine call per final, and under
  load they are the first thing to go.

The translator reaches the client only through ``outbox`` (the connection's send queue) and the
store only through the ``persist``/``save_state`` callables the session hands it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError

from livetranslate.capabilities import primary
from livetranslate.protocol import (
    ERR_TRANSLATION_FAILED,
    ContextSegment,
    ErrorEvent,
    TranslateRequest,
    TranslationEvent,
    TranslationPartial,
    context_span,
    context_window,
)
from livetranslate.workloads.gateway.outbox import OnSent
from livetranslate.workloads.gateway.sentences import Piece, Sentence, SentenceAssembler, SentenceRules
from livetranslate.workloads.gateway.sessions import SegmentRecord, SessionState
from livetranslate.workloads.gateway.upstream import UpstreamRejected, UpstreamUnavailable
from livetranslate.workloads.resilience import Backoff, CircuitBreaker

if TYPE_CHECKING:
    from livetranslate.workloads.gateway.service import Gateway

log = logging.getLogger(__name__)

Send = Callable[[str, BaseModel, OnSent], None]  # Outbox.send (outbox.py)


async def wait_for_breaker(breaker: CircuitBreaker, jitter: float) -> None:
    """Wait while an upstream's circuit is open: until a trial (this session's or another's)
    closes it, then a moment of jitter so the sessions that waited do not all retry in the same
    instant. A fixed backoff here would add up to its cap to every outage."""
    await breaker.wait_ready()
    await asyncio.sleep(random.uniform(0.0, jitter))


def _drop_event(kind: str, event: BaseModel, on_sent: OnSent) -> None:
    return None


async def _no_persist(rec: SegmentRecord) -> None:
    return None


def _no_report(upstream: str, detail: str) -> None:
    return None


def _no_recovered(upstream: str) -> None:
    return None


@dataclass
class Closed:
    """A closed sentence, from closing to its last translation sent."""

    sentence: Sentence
    record: SegmentRecord  # the closing final's log record: it holds the sentence's translations
    speech_end_at: float | None  # monotonic time the sentence's last audio reached the gateway
    closed_at: float | None  # monotonic time it closed; None when restored from the log


class SentenceTranslator:
    def __init__(
        self,
        gw: Gateway,
        state: SessionState,
        outbox: Send,
        persist: Callable[[SegmentRecord], Awaitable[None]],
        report_outage: Callable[[str, str], None],
        recovered: Callable[[str], None],
    ) -> None:
        s = gw.settings
        self.gw = gw
        self.state = state
        self._outbox = outbox
        self._persist = persist
        self._report_outage = report_outage
        self._recovered = recovered
        self.rules = SentenceRules(
            unit=s.translation_unit, max_words=s.sentence_max_words, max_seconds=s.sentence_max_seconds
        )
        self.assembler = SentenceAssembler(self.rules, state.nextSentence)
        self._partials = s.partial_translations and s.translation_unit == "sentence"
        # Records of the open sentence's finals, with the time each one's last audio arrived.
        self._open: dict[int, tuple[SegmentRecord, float | None]] = {}
        self._jobs: collections.deque[Closed | None] = collections.deque()
        self._context: collections.deque[Closed] = collections.deque(
            maxlen=max(1, context_span(gw.config.context_segments))
        )
        self._calls: dict[int, int] = {}  # sentence id -> translation requests made for it
        self._wake = asyncio.Event()
        self._partial_wanted = False
        self._last_partial_at = 0.0
        self._last_final_at = time.monotonic()
        self._finishing = False

    @property
    def backlog(self) -> int:
        return sum(1 for job in self._jobs if job is not None)

    # ---------------------------------------------------------------- input

    def add_final(self, rec: SegmentRecord, arrived: float | None) -> list[Closed]:
        """A new final; returns the sentences it closed. Their closing records are changed (the
        caller persists them, then sends the final, then calls ``submit``)."""
        self._last_final_at = time.monotonic()
        self._open[rec.segmentId] = (rec, arrived)
        closed = self._closed(
            self.assembler.add(Piece(rec.segmentId, rec.text, rec.start, rec.end, rec.language))
        )
        if self.assembler.open is not None:
            self._partial_wanted = True
        return closed

    def utterance_end(self) -> list[Closed]:
        return self._closed(self.assembler.utterance_end())

    def _closed(self, sentences: list[Sentence]) -> list[Closed]:
        out = []
        now = time.monotonic()
        for sentence in sentences:
            entries = [self._open.pop(i) for i in sentence.segment_ids if i in self._open]
            if not entries:
                continue
            record, arrived = entries[-1]
            record.sentenceId = sentence.id
            out.append(Closed(sentence, record, arrived, now))
        self.state.nextSentence = self.assembler.next_id
        if self.assembler.open is None:
            self._partial_wanted = False
        return out

    def submit(self, closed: list[Closed]) -> None:
        """Queue closed sentences for translation (after their finals were queued to the client)."""
        if not self.state.targetLanguages:
            self._context.extend(closed)
            return
        self._jobs.extend(closed)
        self._wake.set()

    def want_partial(self) -> None:
        if self._partial_wanted:
            self._wake.set()

    # ---------------------------------------------------------------- resume

    def replay(self, rec: SegmentRecord, resend: bool) -> None:
        """One record of a resumed session's log, in order (its final was re-queued if resend)."""
        self._open[rec.segmentId] = (rec, None)
        if rec.sentenceId is None:
            return
        # The log is the truth: a state saved before a sentence closed may name an older id.
        self.assembler.next_id = max(self.assembler.next_id, rec.sentenceId + 1)
        self.state.nextSentence = self.assembler.next_id
        entries = list(self._open.values())
        self._open.clear()
        sentence = Sentence(
            rec.sentenceId,
            [Piece(r.segmentId, r.text, r.start, r.end, r.language) for r, _ in entries],
            reason="restored",
        )
        closed = Closed(sentence, rec, None, None)
        for lang, text in rec.translations.items():
            if resend or lang not in rec.translationsSent:
                self._queue_translation(closed, lang, text, quality=None, latency=None)
        if any(
            lang not in rec.translations and lang not in rec.translationErrors
            for lang in self.state.targetLanguages
        ):
            self._jobs.append(closed)
        else:
            self._context.append(closed)

    def replay_done(self) -> None:
        """The finals after the last closed sentence are the open sentence; it goes on."""
        self.assembler.restore(
            [Piece(r.segmentId, r.text, r.start, r.end, r.language) for r, _ in self._open.values()]
        )
        if self._jobs:
            self._wake.set()

    def release(self) -> None:
        """After the session ended: drop the callables that point back at the session and its
        connection, which would otherwise keep both alive as cyclic garbage (see
        ``Connection._release``)."""
        self._outbox = _drop_event
        self._persist = _no_persist
        self._report_outage = _no_report
        self._recovered = _no_recovered
        self._jobs.clear()
        self._context.clear()
        self._open.clear()

    # ---------------------------------------------------------------- worker

    async def finish(self) -> list[Closed]:
        """Session end: close what is open and stop once every closed sentence is translated."""
        self._finishing = True
        closed = self._closed(self.assembler.flush())
        return closed

    def stop(self) -> None:
        self._jobs.append(None)
        self._wake.set()

    async def run(self) -> None:
        while True:
            if self._jobs:
                job = self._jobs.popleft()
                if job is None:
                    return
                await self._translate(job)
                continue
            if self._partial_due():
                await self._translate_partial()
                continue
            self._wake.clear()
            timeout = self._next_timeout()
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                await self._close_if_idle()

    def _partial_at(self) -> float:
        """When the wanted partial may go out: ``partial_settle_seconds`` after the final that
        asked for it (the audio service sends an utterance's end right after its last final, and a
        preview of a sentence that closes a moment later is a wasted engine call), and
        ``partial_min_interval_seconds`` after the previous partial."""
        s = self.gw.settings
        return max(
            self._last_final_at + s.partial_settle_seconds,
            self._last_partial_at + s.partial_min_interval_seconds,
        )

    def _partial_due(self) -> bool:
        return (
            self._partials
            and self._partial_wanted
            and not self._finishing
            and self.assembler.open is not None
            and bool(self.state.targetLanguages)
            and time.monotonic() >= self._partial_at() - 1e-3
            and self.gw.translation is not None
            and self.gw.translation_breaker.allow()
        )

    def _next_timeout(self) -> float | None:
        if self.assembler.open is None:
            return None
        now = time.monotonic()
        deadline = self._last_final_at + self.gw.settings.sentence_idle_seconds
        partial_at = self._partial_at()
        if self._partials and self._partial_wanted and partial_at > now:
            deadline = min(deadline, partial_at)
        return max(0.0, deadline - now)

    async def _close_if_idle(self) -> None:
        """No final for a while and no utterance end heard: the sentence is over all the same."""
        if time.monotonic() - self._last_final_at < self.gw.settings.sentence_idle_seconds - 1e-3:
            return
        closed = self._closed(self.assembler.utterance_end())
        for c in closed:
            c.sentence.reason = "idle"
            await self._persist(c.record)
        self.submit(closed)

    def _context_for(self, sentence_id: int) -> list[ContextSegment]:
        window = context_window(sentence_id, self.gw.config.context_segments)
        return [
            ContextSegment(source=c.sentence.text, translations=dict(c.record.translations))
            for c in self._context
            if c.sentence.id in window
        ]

    def _count_call(self, sentence_id: int) -> None:
        self._calls[sentence_id] = self._calls.get(sentence_id, 0) + 1

    def _source_of(self, sentence: Sentence) -> str:
        """The language a sentence is translated from: the session's, or (sourceLanguage auto)
        the one detected in its finals."""
        return sentence.language or self.state.sourceLanguage

    def _spoken_in(self, sentence: Sentence, targets: list[str]) -> tuple[list[str], list[str]]:
        """``targets`` split into those the sentence is already spoken in (sent as they are, with
        quality "source") and those to translate."""
        source = sentence.language
        if source is None:
            return [], list(targets)
        same = [t for t in targets if primary(t) == primary(source)]
        return same, [t for t in targets if t not in same]

    async def _translate_partial(self) -> None:
        sentence = self.assembler.open
        assert sentence is not None and self.gw.translation is not None
        self._partial_wanted = False
        self._last_partial_at = time.monotonic()
        ids, text = sentence.segment_ids, sentence.text
        same, targets = self._spoken_in(sentence, list(self.state.targetLanguages))
        for lang in same:
            self._outbox(
                f"partial:{lang}",
                TranslationPartial(sentenceId=sentence.id, segmentIds=ids, language=lang, text=text),
                None,
            )
        if not targets:
            return
        request = TranslateRequest(
            sessionId=self.state.sessionId,
            segmentId=sentence.id,
            text=text[:4000],
            sourceLanguage=self._source_of(sentence),
            targetLanguages=targets,
            context=self._context_for(sentence.id),
            partial=True,
        )
        self._count_call(sentence.id)
        try:
            async for result in self.gw.translation.translate(request):
                if result.type != "translation" or result.segmentId != sentence.id or not result.text:
                    continue
                self._outbox(
                    f"partial:{result.language}",
                    TranslationPartial(
                        sentenceId=sentence.id, segmentIds=ids, language=result.language, text=result.text
                    ),
                    None,
                )
        except (UpstreamUnavailable, UpstreamRejected, ValidationError) as exc:
            # A preview is not worth a retry: the sentence's own translation reports outages.
            log.debug("partial translation failed", extra={"fields": {"error": str(exc)}})

    async def _translate(self, job: Closed) -> None:
        gw, s = self.gw, self.gw.settings
        rec, sentence = job.record, job.sentence
        remaining = [
            lang
            for lang in self.state.targetLanguages
            if lang not in rec.translations and lang not in rec.translationErrors
        ]
        same, remaining = self._spoken_in(sentence, remaining)
        for lang in same:  # spoken in a target language already: the transcript is its text
            rec.translations[lang] = sentence.text
            await self._persist(rec)
            latency = time.monotonic() - job.closed_at if job.closed_at is not None else None
            self._queue_translation(job, lang, sentence.text, "source", latency)
        context = self._context_for(sentence.id)
        backoff = Backoff(s.retry_base_seconds, s.retry_max_seconds)
        deadline: float | None = None
        while remaining:
            if self._finishing and deadline is None:
                deadline = time.monotonic() + s.translate_timeout
            if deadline is not None and time.monotonic() > deadline:
                await self._failed_all(job, remaining, "translation service unavailable at session end")
                break
            if gw.translation is None:
                await self._failed_all(job, remaining, "no translation service is configured")
                break
            if not gw.translation_breaker.allow():
                self._report_outage("translation", "translation service unavailable (circuit open)")
                await wait_for_breaker(gw.translation_breaker, min(0.25, s.retry_base_seconds))
                continue
            request = TranslateRequest(
                sessionId=self.state.sessionId,
                segmentId=sentence.id,
                text=sentence.text[:4000],
                sourceLanguage=self._source_of(sentence),
                targetLanguages=list(remaining),
                context=context,
            )
            self._count_call(sentence.id)
            try:
                async for result in gw.translation.translate(request):
                    lang = result.language
                    if lang not in remaining or result.segmentId != sentence.id:
                        continue
                    remaining.remove(lang)
                    if result.type == "error":
                        await self._failed(
                            job,
                            lang,
                            result.message or "translation failed",
                            result.code or ERR_TRANSLATION_FAILED,
                        )
                    else:
                        rec.translations[lang] = result.text
                        latency = time.monotonic() - job.closed_at if job.closed_at is not None else None
                        await self._persist(rec)
                        self._queue_translation(job, lang, result.text, result.quality, latency)
                gw.translation_breaker.success()
                self._recovered("translation")
                await self._failed_all(job, remaining, "the translation service returned no result")
                remaining = []
            except UpstreamRejected as exc:
                gw.translation_breaker.success()  # it answered: alive, just refused this request
                await self._failed_all(job, remaining, str(exc))
                break
            except (UpstreamUnavailable, ValidationError) as exc:
                gw.translation_breaker.failure()
                self._report_outage("translation", str(exc))
                await gw.translation_breaker.pause(backoff.next(), min(0.25, s.retry_base_seconds))
        calls = self._calls.pop(sentence.id, 0)
        if calls:
            gw.sentence_calls.observe(calls)
        self._context.append(job)

    def _queue_translation(
        self, job: Closed, lang: str, text: str, quality: str | None, latency: float | None
    ) -> None:
        rec = job.record
        ev = TranslationEvent(
            sentenceId=job.sentence.id,
            segmentIds=job.sentence.segment_ids,
            segmentId=rec.segmentId,
            language=lang,
            text=text,
            quality=quality,
            latency=round(latency, 4) if latency is not None else None,
        )
        closed_at, speech_end_at = job.closed_at, job.speech_end_at

        async def sent() -> None:
            now = time.monotonic()
            if closed_at is not None:
                self.gw.translation_latency.observe(now - closed_at)
            if speech_end_at is not None:
                self.gw.sentence_latency.observe(now - speech_end_at)
            if lang not in rec.translationsSent:
                rec.translationsSent.append(lang)
            await self._persist(rec)

        self._outbox("translation", ev, sent)

    async def _failed_all(self, job: Closed, langs: list[str], message: str) -> None:
        for lang in list(langs):
            await self._failed(job, lang, message)

    async def _failed(self, job: Closed, lang: str, message: str, code: str = ERR_TRANSLATION_FAILED) -> None:
        rec = job.record
        rec.translationErrors[lang] = message
        self._outbox(
            "error",
            ErrorEvent(
                code=code, message=message, segmentId=rec.segmentId, sentenceId=job.sentence.id, language=lang
            ),
            None,
        )
        await self._persist(rec)  # in the session's translate task: a store error ends it, not lost

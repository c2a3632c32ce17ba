"""The fallback chain one segment goes through for one target language.

The engines that serve the pair are tried in order (primary, then the configured fallbacks; a
partial gets the primary only). On each: micro-batched, cleaned, checked; a failed check is retried
once on the same engine, then the segment is handed to the next engine. When every engine's output
failed a check, the least-bad one is sent flagged ``degraded:<check>`` rather than nothing; when no
engine gave any output, an error with a code. Either way the caller gets exactly one result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from livetranslate.capabilities import primary
from livetranslate.protocol import (
    ERR_TRANSLATION_FAILED,
    ERR_UNSUPPORTED_LANGUAGE,
    ERR_UPSTREAM,
    TranslateResult,
)

from ..resilience import CircuitBreaker
from .batching import CircuitOpen, MicroBatcher, QueueFull
from .engines import Engine, EngineError, Output, UnsupportedError
from .quality import Check, Job, check, clean_apertium, cleanup
from .service_metrics import ServiceMetrics

log = logging.getLogger(__name__)


@dataclass
class Step:
    """One engine of the chain with its own queue and circuit breaker."""

    engine: Engine
    batcher: MicroBatcher
    breaker: CircuitBreaker


def error_result(job: Job, code: str, message: str) -> TranslateResult:
    return TranslateResult(
        type="error", segmentId=job.segment_id, language=job.target, code=code, message=message
    )


@dataclass
class _Tried:
    """What the engines tried so far left behind: the least-bad refused output, the last error."""

    best: tuple[str, str, str] | None = None  # (text, failed check, backend)
    last_error: BaseException | None = None

    def keep(self, text: str, failed: str, backend: str) -> None:
        """An empty output never replaces a refused one that said something."""
        if text.strip() and (self.best is None or failed != "empty"):
            self.best = (text, failed, backend)

    def fallback_reason(self) -> str:
        if self.last_error is not None:
            return self.last_error.__class__.__name__
        return f"quality:{self.best[1] if self.best else 'unknown'}"

    def outcome(self, job: Job) -> TranslateResult:
        """The one result once every engine was tried."""
        if self.best is not None:
            # Every engine failed a check: show the least-bad output, flagged, rather than nothing.
            res = TranslateResult(
                segmentId=job.segment_id,
                language=job.target,
                text=self.best[0],
                quality=f"degraded:{self.best[1]}",
            )
            res.backend = self.best[2]  # type: ignore[attr-defined]
            return res
        if isinstance(self.last_error, EngineError):
            return error_result(job, self.last_error.code, str(self.last_error))
        if isinstance(self.last_error, QueueFull):
            return error_result(job, ERR_UPSTREAM, str(self.last_error))
        return error_result(job, ERR_TRANSLATION_FAILED, f"translation failed: {self.last_error}")


class FallbackChain:
    """Runs a job through ``steps`` (the first is the primary engine) and counts what happened."""

    def __init__(self, steps: list[Step], metrics: ServiceMetrics, pipeline: str) -> None:
        self.steps = steps
        self.metrics = metrics
        self.pipeline = pipeline

    async def translate(self, job: Job, model: str | None) -> TranslateResult:
        """``model`` is what the primary engine is asked for; fallbacks serve their own."""
        if job.source != "auto" and primary(job.source) == primary(job.target):
            return TranslateResult(
                segmentId=job.segment_id, language=job.target, text=job.text, quality="same_language"
            )
        reasons = [s.engine.unsupported(job.source, job.target) for s in self.steps]
        usable = [s for s, r in zip(self.steps, reasons, strict=True) if r is None]
        if job.partial:
            usable = usable[:1]
        if not usable:
            return error_result(job, ERR_UNSUPPORTED_LANGUAGE, f"{job.source}->{job.target}: {reasons[0]}")
        tried = _Tried()
        for pos, step in enumerate(usable):
            if pos > 0:
                self.metrics.fallbacks.labels(
                    self.pipeline, usable[pos - 1].engine.name, step.engine.name, tried.fallback_reason()
                ).inc()
            asked = model if step is self.steps[0] else None
            result = await self._on_engine(step, job, asked, pos, tried)
            if result is not None:
                return result
        return tried.outcome(job)

    async def _on_engine(
        self, step: Step, job: Job, model: str | None, pos: int, tried: _Tried
    ) -> TranslateResult | None:
        """Up to two attempts on one engine: the accepted result, or None to go on down the chain."""
        # Deterministic engines (Apertium) give the same answer twice: no point retrying a check.
        tries = 2 if step.engine.name != "apertium" and not job.partial else 1
        for attempt in range(2):
            try:
                outcome = await step.batcher.submit(job, model, attempt)
            except QueueFull as exc:
                outcome = exc
            if isinstance(outcome, Output):
                result = self._checked(step, job, outcome, pos, attempt, tried)
                if result is not None or attempt + 1 >= tries:
                    return result
                continue
            tried.last_error = outcome
            if isinstance(outcome, UnsupportedError | CircuitOpen | QueueFull):
                return None
            if not isinstance(outcome, EngineError):
                log.error("engine raised", exc_info=outcome, extra={"fields": {"backend": step.engine.name}})
        return None

    def _checked(
        self, step: Step, job: Job, outcome: Output, pos: int, attempt: int, tried: _Tried
    ) -> TranslateResult | None:
        """The engine's output cleaned and checked: a result when it passes, else kept in ``tried``."""
        backend = step.engine.name
        text = clean_apertium(outcome.text) if backend == "apertium" else cleanup(outcome.text, job.target)
        verdict = check(job.text, text, job.source, job.target, truncated=outcome.truncated)
        if verdict.ok:
            quality = f"pivot:{outcome.via}" if outcome.via else "ok"
            if pos > 0:
                quality = "fallback"
            elif attempt > 0:
                quality = "retried"
            res = TranslateResult(segmentId=job.segment_id, language=job.target, text=text, quality=quality)
            res.backend = backend  # type: ignore[attr-defined]
            return res
        self._refused(backend, job, verdict, attempt)
        if verdict.reason == "runaway":
            # Keep what a caption can show: about the source's length, cut at a word.
            limit = 3 * len(job.text) + 40
            text = text[:limit].rsplit(" ", 1)[0] if len(text) > limit else text
        tried.keep(text, verdict.reason, backend)
        tried.last_error = None
        return None

    def _refused(self, backend: str, job: Job, verdict: Check, attempt: int) -> None:
        self.metrics.rejections.labels(self.pipeline, backend, verdict.reason).inc()
        log.info(
            "translation refused by a quality check",
            extra={
                "session_id": job.session_id,
                "segment_id": job.segment_id,
                "language": job.target,
                "fields": {
                    "backend": backend,
                    "check": verdict.reason,
                    "detail": verdict.detail,
                    "attempt": attempt,
                },
            },
        )

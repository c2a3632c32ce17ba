"""The translation service's logic: the engines' lifecycle and health, model switching, admission,
and one result per target language.

Stateless by design: the gateway sends each final segment with its session's recent context, so
any replica can serve any segment and the stage scales horizontally. For every target language a
segment goes through the chain (primary engine, then the configured fallbacks; chain.py):
micro-batched, cleaned, checked, retried or handed on; whatever happens, the gateway gets one line
per target (a translation with its ``quality``, or an error with a code), never silence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry

from livetranslate.protocol import (
    ERR_TRANSLATION_FAILED,
    ERR_UPSTREAM,
    TranslateRequest,
    TranslateResult,
    context_span,
)

from ..capacity import CapacityEstimate
from ..resilience import CircuitBreaker
from .apertium import ApertiumEngine
from .batching import MicroBatcher, QueueFull
from .capacity import ActiveSessions, session_ceiling, slot_utilisation
from .chain import FallbackChain, Step, error_result
from .engine_metrics import STAT_GPU_RESERVED, STAT_HOST_RSS, STAT_KV_CACHE, STAT_RUNNING, STAT_WAITING
from .engines import Engine, OpenAIEngine
from .quality import Job
from .service_metrics import ServiceMetrics
from .settings import BackendName, TranslateSettings
from .vllm import VllmEngine

log = logging.getLogger(__name__)

__all__ = ["ModelSwitchError", "QueueFull", "TranslationService"]


class ModelSwitchError(Exception):
    """The model asked for is not allowed for this pipeline, or the engine does not serve it."""


def build_engine(kind: BackendName, settings: TranslateSettings) -> Engine:
    ctx = settings.context_segments or 0
    if kind == "vllm":
        return VllmEngine(settings.vllm, ctx)
    if kind == "openai":
        return OpenAIEngine(settings.openai, ctx)
    return ApertiumEngine(settings.apertium, settings.source_language, settings.target_languages or [])


class TranslationService:
    def __init__(
        self,
        settings: TranslateSettings,
        registry: CollectorRegistry | None = None,
        engines: list[Engine] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry()
        self.pipeline = settings.pipeline or "local"
        self.metrics = ServiceMetrics(self.registry, self.pipeline)
        backend = settings.backend or "apertium"
        if engines is None:
            kinds: list[BackendName] = [backend] + [k for k in settings.fallback if k != backend]
            engines = [build_engine(k, settings) for k in kinds]
            engines += [
                OpenAIEngine(endpoint, settings.context_segments or 0, name=f"fallback-{i + 1}")
                for i, endpoint in enumerate(settings.fallback_endpoints)
            ]
        self.steps = [self._step(e) for e in engines]
        self.primary = self.steps[0]
        self.chain = FallbackChain(self.steps, self.metrics, self.pipeline)
        self.model: str | None = settings.model if self.primary.engine.name != "apertium" else None
        self.allowed_models = [x for x in [settings.model, *(settings.fallback_models or [])] if x]
        self.problems: list[str] = []
        self._background: list[asyncio.Task[None]] = []
        self._set_model_info()
        targets = len(settings.target_languages or [])
        self.capacity = CapacityEstimate(static_cap=session_ceiling(settings.batch.max_queue, targets))
        self.asking = ActiveSessions()
        self._publish_capacity()  # the ceiling until measured: a value before the first request
        # At zero from the start, so the first refusal is a rise that rate() sees.
        self.metrics.admission_refusals.labels(
            pipeline=self.pipeline, stage="translation", reason="queue_full"
        )

    def _step(self, engine: Engine) -> Step:
        b = self.settings.batch
        breaker = CircuitBreaker(engine.name, self.settings.breaker.failures, self.settings.breaker.reset_s)
        batcher = MicroBatcher(
            engine,
            window_ms=b.window_ms,
            max_batch=b.max_batch,
            max_queue=b.max_queue,
            # The engine's cap lets batches grow; with batching off, concurrency is all there is.
            max_inflight=(
                b.max_inflight_batches
                if b.max_batch == 1
                else min(b.max_inflight_batches, engine.max_inflight or b.max_inflight_batches)
            ),
            breaker=breaker,
            on_batch=self._on_batch,
            on_depth=lambda _depth: self._report_depth(),
        )
        return Step(engine, batcher, breaker)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        for step in self.steps:
            await step.engine.start()
            step.batcher.start()
        await self.refresh()
        self._recheck_languages()
        self._background.append(asyncio.create_task(self._poll(), name="translate-poll"))
        self._background.append(asyncio.create_task(self._measure_capacity(), name="translate-capacity"))

    async def close(self) -> None:
        for t in self._background:
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for step in self.steps:
            await step.batcher.close()
            await step.engine.close()

    def _recheck_languages(self) -> None:
        """Re-check the pipeline's languages against what this image really has installed."""
        src, targets = self.settings.source_language, self.settings.target_languages or []
        if not src or src == "auto":
            return
        for t in targets:
            reasons = [s.engine.unsupported(src, t) for s in self.steps]
            if all(reasons):
                self.problems.append(f"{src}->{t}: {reasons[0]}")
        if self.problems:
            log.error(
                "pipeline languages this service cannot serve", extra={"fields": {"problems": self.problems}}
            )

    def sync_local_metrics(self) -> None:
        """Gauges known without asking an engine (cheap enough for every scrape)."""
        for step in self.steps:
            labels = (self.pipeline, step.engine.name)
            self.metrics.breaker_open.labels(*labels).set(0.0 if step.breaker.state == "closed" else 1.0)
            if isinstance(step.engine, ApertiumEngine):
                self.metrics.restarts.labels(*labels).set(step.engine.restarts)
        self._report_depth()

    async def refresh(self) -> None:
        """Ask every engine for its health and usage; mirror it into metrics."""
        for step in self.steps:
            st = await step.engine.check()
            labels = (self.pipeline, step.engine.name)
            self.metrics.engine_up.labels(*labels).set(1.0 if st.ready else 0.0)
            self.metrics.engine_sleeping.labels(*labels).set(1.0 if st.sleeping else 0.0)
            self.metrics.breaker_open.labels(*labels).set(0.0 if step.breaker.state == "closed" else 1.0)
            stats = st.stats
            for stat, gauge in (
                (STAT_KV_CACHE, self.metrics.kv_cache),
                (STAT_WAITING, self.metrics.waiting),
                (STAT_RUNNING, self.metrics.running),
            ):
                if stat in stats:
                    gauge.labels(*labels).set(stats[stat])
            for kind in (STAT_GPU_RESERVED, STAT_HOST_RSS):  # the stat names are the kind labels
                if kind in stats:
                    self.metrics.memory.labels(*labels, kind).set(stats[kind])
            if isinstance(step.engine, ApertiumEngine):
                self.metrics.restarts.labels(*labels).set(step.engine.restarts)

    async def _poll(self) -> None:
        interval = self.settings.vllm.metrics_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
                for step in self.steps:
                    if isinstance(step.engine, VllmEngine):
                        await step.engine.maybe_sleep()
                        self.metrics.engine_sleeping.labels(self.pipeline, "vllm").set(
                            1.0 if step.engine.state.sleeping else 0.0
                        )
            except Exception:  # the poller must survive any one bad round
                log.exception("engine poll failed")

    async def _measure_capacity(self) -> None:
        """Every interval: the primary engine's slot utilisation and the sessions carried, into
        the capacity estimate (capacity.py). The primary's, because its queue is the one that
        admits or refuses; a fallback is often another service's capacity, not this replica's."""
        batcher = self.primary.batcher
        last_at = time.monotonic()
        last_busy = batcher.busy_seconds(last_at)
        while True:
            await asyncio.sleep(self.settings.capacity_interval_s)
            now = time.monotonic()
            busy = batcher.busy_seconds(now)
            utilisation = slot_utilisation(busy - last_busy, now - last_at, batcher.max_inflight)
            last_busy, last_at = busy, now
            self.capacity.observe(utilisation, self.asking.carried(now))
            self._publish_capacity()

    def _publish_capacity(self) -> None:
        self.metrics.capacity.labels(pipeline=self.pipeline, stage="translation").set(self.capacity.sessions)

    # ------------------------------------------------------------ model switching

    def _set_model_info(self) -> None:
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(
            self.pipeline, self.primary.engine.name, self.model or self.primary.engine.name
        ).set(1.0)

    async def set_model(self, model: str) -> str | None:
        """Switch the primary engine's model for new segments; segments in flight finish on the old.

        Each queued job carries the model it was admitted with, so nothing in flight is re-routed
        or dropped. vLLM serves the one model it was started with: a model it does not list is
        refused (the operator then rolls the engine with the new --model and the pods pick the
        model up from the pipeline file).
        """
        engine = self.primary.engine
        if not isinstance(engine, OpenAIEngine):
            raise ModelSwitchError(f"the {engine.name} backend has no models to switch")
        if self.allowed_models and model not in self.allowed_models:
            raise ModelSwitchError(
                f"{model!r} is not spec.translation.model or one of its fallbackModels "
                f"({', '.join(self.allowed_models)})"
            )
        await engine.check()
        if engine.served_models and model not in engine.served_models:
            raise ModelSwitchError(
                f"the {engine.name} engine at {engine.base} serves "
                f"{', '.join(engine.served_models)}, not {model!r}"
            )
        previous, self.model = self.model, model
        self._set_model_info()
        log.info("translation model switched", extra={"fields": {"from": previous, "to": model}})
        return previous

    # ------------------------------------------------------------ state for routes

    @property
    def ready(self) -> bool:
        return self.primary.engine.state.ready

    @property
    def accepting(self) -> bool:
        """Take new segments while some engine of the chain can serve them, or is coming back."""
        return any(s.engine.state.ready or s.engine.state.recovering for s in self.steps)

    def readiness(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "backend": self.primary.engine.name,
            "model": self.model,
            "engines": [
                {
                    "backend": s.engine.name,
                    "ready": s.engine.state.ready,
                    "detail": s.engine.state.detail,
                    "sleeping": s.engine.state.sleeping,
                    "circuit": s.breaker.state,
                }
                for s in self.steps
            ],
            "problems": self.problems,
        }

    def queue_depth(self) -> int:
        return sum(s.batcher.depth for s in self.steps)

    def _report_depth(self) -> None:
        self.metrics.queue.labels(self.pipeline, "translation").set(self.queue_depth())

    def _on_batch(self, backend: str, size: int, seconds: float) -> None:
        self.metrics.batch.labels(self.pipeline, backend).observe(size)
        self.metrics.batch_seconds.labels(self.pipeline, backend).observe(seconds)

    # ------------------------------------------------------------ translation

    def admit(self, req: TranslateRequest) -> None:
        """Refuse the whole request up front when the queue cannot take all its targets."""
        try:
            self.primary.batcher.reserve(len(req.targetLanguages))
        except QueueFull:
            self.asking.refuse(req.sessionId, time.monotonic())
            self.metrics.refused.labels(self.pipeline, "queue_full").inc()
            self.metrics.admission_refusals.labels(
                pipeline=self.pipeline, stage="translation", reason="queue_full"
            ).inc()
            raise
        self.asking.admit(req.sessionId, time.monotonic())

    async def translate(self, req: TranslateRequest) -> AsyncIterator[TranslateResult]:
        """One result per target language, yielded as each is ready (targets run concurrently)."""
        received = time.monotonic()
        span = context_span(self.settings.context_segments or 0)
        context = tuple(req.context[-span:]) if span else ()
        tasks = [
            asyncio.create_task(
                self._target(
                    Job(req.text, req.sourceLanguage, t, context, req.sessionId, req.segmentId, req.partial),
                    received,
                )
            )
            for t in req.targetLanguages
        ]
        try:
            for fut in asyncio.as_completed(tasks):
                yield await fut
        finally:
            for t in tasks:
                t.cancel()

    async def _target(self, job: Job, received: float) -> TranslateResult:
        try:
            result = await asyncio.wait_for(
                self.chain.translate(job, self.model), self.settings.request_timeout_s
            )
        except TimeoutError:
            result = error_result(
                job, ERR_TRANSLATION_FAILED, f"no translation within {self.settings.request_timeout_s:g} s"
            )
        except QueueFull as exc:
            result = error_result(job, ERR_UPSTREAM, str(exc))
        elapsed = time.monotonic() - received
        result.latencySeconds = round(elapsed, 4)
        backend = getattr(result, "backend", None) or self.primary.engine.name
        if result.type == "translation":
            self.metrics.latency.labels(self.pipeline, backend).observe(elapsed)
        self.metrics.results.labels(self.pipeline, result.type, result.quality or result.code or "").inc()
        if result.type == "error":
            log.warning(
                "segment not translated",
                extra={
                    "session_id": job.session_id,
                    "segment_id": job.segment_id,
                    "language": job.target,
                    "fields": {"code": result.code, "error": result.message},
                },
            )
        return result
